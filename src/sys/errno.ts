/**
 * Linux errno values (x86-64 and arm64 share these numbers) with their symbolic names, and the
 * error thrown by every failed libc call: a TorusError whose code is derived from the errno and
 * whose one-line message names the call, the errno and the C library's description.
 * @module
 */

import { type ErrorCode, ErrorCode as Codes, TorusError } from "../core/mod.ts";

/** errno numbers torus cares about (file, memory-mapping, socket and ioctl calls). */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ELOOP: 40,
  ENODATA: 61,
  EOVERFLOW: 75,
  ENOTSOCK: 88,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTUNREACH: 113,
  EALREADY: 114,
  EINPROGRESS: 115,
  EDQUOT: 122,
} as const;

const namesByNumber: ReadonlyMap<number, string> = new Map(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

/** The symbolic name of `errno` (`ENOSPC`), or `errno N` for numbers not in {@link Errno}. */
export function errnoName(errno: number): string {
  return namesByNumber.get(errno) ?? `errno ${errno}`;
}

/** The TorusError code an errno maps to, so callers can react without knowing errno values. */
export function errnoCode(errno: number): ErrorCode {
  switch (errno) {
    case Errno.ENOENT:
      return Codes.NotExist;
    case Errno.EEXIST:
      return Codes.Exists;
    case Errno.ENOSPC:
    case Errno.EDQUOT:
    case Errno.EFBIG:
      return Codes.OutOfSpace;
    case Errno.EAGAIN:
    case Errno.EINTR:
    case Errno.EBUSY:
      return Codes.Again;
    case Errno.EINVAL:
    case Errno.EBADF:
    case Errno.EISDIR:
    case Errno.ENOTDIR:
    case Errno.ENAMETOOLONG:
    case Errno.EACCES:
    case Errno.EPERM:
    case Errno.EROFS:
      return Codes.Invalid;
    case Errno.ENOSYS:
    case Errno.EOPNOTSUPP:
    case Errno.ENOTTY:
    case Errno.ENODEV:
      return Codes.NotSupported;
    default:
      return Codes.Unavailable;
  }
}

/**
 * A failed libc call. `errno` is null when it could not be observed: errno is thread-local, and a
 * `nonblocking` FFI call runs on a worker thread whose errno the main thread cannot read.
 */
export class SysError extends TorusError {
  override name = "SysError";
  /** The libc function that failed (`pwrite`). */
  readonly call: string;
  /** The errno the call left, when known. */
  readonly errno: number | null;

  constructor(call: string, errno: number | null, message: string) {
    super(errno === null ? Codes.Unavailable : errnoCode(errno), message);
    this.call = call;
    this.errno = errno;
  }
}
