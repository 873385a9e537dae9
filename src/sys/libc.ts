/**
 * libc through Deno FFI: one lazily opened `libc.so.6` and a typed wrapper per call that throws a
 * {@link SysError} (a TorusError naming the call, errno and description) on failure.
 *
 * Blocking rules (a synchronous FFI call stops the whole event loop):
 * - Calls that can wait on a disk for long (pread/pwrite, fsync/fdatasync, msync) are
 *   `nonblocking` FFI calls: they run on a worker thread and return a Promise.
 * - Synchronous calls are only those that touch metadata or tables (open, close, ftruncate,
 *   fallocate, posix_fadvise, flock, fcntl locks, lseek, mmap, munmap, mallopt), and `preadv2`
 *   with RWF_NOWAIT ({@link preadNowait}), which copies what the page cache holds and fails
 *   rather than wait for a disk. Small writes are batched through Linux AIO (aio.ts).
 *   `preadSync`/`pwriteSync` exist for benchmarks (the fastest way to move bytes, as a baseline)
 *   and tests, `pwriteFullSync` for a few bytes written once (a lock file's owner line); the
 *   storage engine never calls them.
 *
 * errno is thread-local and a nonblocking call runs on a pool thread, so its errno cannot be read
 * afterwards. For positional I/O (idempotent) a failed nonblocking call is repeated once on a
 * dedicated worker thread (io_repeat.ts), never on the main thread: a repeat that succeeds means
 * the condition was transient; a repeat that fails tells the errno. A transient errno (EINTR,
 * EAGAIN) is retried the same way a few times. fsync-class calls are never repeated (after a
 * writeback error the kernel reports it once, so a repeat could falsely succeed): they fail
 * without errno.
 *
 * Buffers: every `buffer` parameter takes a Uint8Array whose memory must stay put while a
 * nonblocking call uses it. Callers keep the array referenced until the Promise settles (an
 * async frame does that), and {@link pinned} moves V8's small on-heap arrays off the heap first.
 * @module
 */

import { assert } from "../core/mod.ts";
import { Errno, errnoName, SysError } from "./errno.ts";
import { repeatPread, repeatPwrite, type RepeatResult } from "./io_repeat.ts";

/** open(2) flags (Linux, x86-64 and arm64). */
export const OpenFlags = {
  O_RDONLY: 0,
  O_WRONLY: 1,
  O_RDWR: 2,
  O_CREAT: 0o100,
  O_EXCL: 0o200,
  O_TRUNC: 0o1000,
  O_APPEND: 0o2000,
  O_CLOEXEC: 0o2000000,
} as const;

/** mmap(2) protection and flag bits, msync(2) flags. */
export const MmapFlags = {
  PROT_READ: 1,
  PROT_WRITE: 2,
  MAP_SHARED: 1,
  MAP_PRIVATE: 2,
  MS_ASYNC: 1,
  MS_INVALIDATE: 2,
  MS_SYNC: 4,
} as const;

/** flock(2) operations. */
export const FlockOps = { LOCK_SH: 1, LOCK_EX: 2, LOCK_NB: 4, LOCK_UN: 8 } as const;

/** posix_fadvise(2) advice values. */
export const Advice = {
  POSIX_FADV_NORMAL: 0,
  POSIX_FADV_RANDOM: 1,
  POSIX_FADV_SEQUENTIAL: 2,
  POSIX_FADV_WILLNEED: 3,
  POSIX_FADV_DONTNEED: 4,
} as const;

/** lseek(2) whence values. */
export const Whence = { SEEK_SET: 0, SEEK_CUR: 1, SEEK_END: 2 } as const;

const symbols = {
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  pread: {
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  pread_sync: { name: "pread", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: {
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  // Synchronous, but only with RWF_NOWAIT (see preadNowait): it never waits for a disk.
  preadv2: { parameters: ["i32", "buffer", "i32", "i64", "i32"], result: "isize" },
  pwrite_sync: { name: "pwrite", parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  fsync: { parameters: ["i32"], result: "i32", nonblocking: true },
  fdatasync: { parameters: ["i32"], result: "i32", nonblocking: true },
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
  posix_fadvise: { parameters: ["i32", "i64", "i64", "i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  flock: { parameters: ["i32", "i32"], result: "i32" },
  // fcntl is variadic; its third argument here is always a `struct flock *`, which the x86-64
  // and arm64 Linux calling conventions pass as they pass a fixed pointer parameter.
  fcntl_lock: { name: "fcntl", parameters: ["i32", "i32", "buffer"], result: "i32" },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  msync: { parameters: ["pointer", "usize", "i32"], result: "i32", nonblocking: true },
  mallopt: { parameters: ["i32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof symbols>["symbols"];

let library: Deno.DynamicLibrary<typeof symbols> | null = null;

/** The libc symbols, opened on first use (so modules that never call libc need no --allow-ffi). */
function libc(): Libc {
  library ??= Deno.dlopen("libc.so.6", symbols);
  return library.symbols;
}

/** The calling (main) thread's errno; valid right after a failed synchronous call. */
function lastErrno(): number {
  const location = libc().__errno_location();
  assert(location !== null, "__errno_location returned NULL");
  return new Deno.UnsafePointerView(location).getInt32();
}

/** The C library's description of `errno` (`No space left on device`). */
export function strerror(errno: number): string {
  const text = libc().strerror(errno);
  return text === null ? "unknown error" : Deno.UnsafePointerView.getCString(text);
}

/** The error of a synchronous call that just failed (reads errno at once). */
function failure(call: string, detail: string, errno = lastErrno()): SysError {
  return new SysError(
    call,
    errno,
    `${call}(${detail}) failed: ${errnoName(errno)} ${strerror(errno)}`,
  );
}

/**
 * Ensures `buffer`'s bytes live outside V8's moving heap, so a worker thread may use its address
 * while JavaScript runs. V8 keeps typed arrays of up to 64 bytes inside the heap, where the
 * garbage collector may move them; reading `.buffer` makes V8 move them off-heap for good.
 */
export function pinned(buffer: Uint8Array): Uint8Array {
  void buffer.buffer;
  return buffer;
}

function toNumber(value: number | bigint): number {
  return typeof value === "bigint" ? Number(value) : value;
}

const encoder = new TextEncoder();

/** open(2): returns a file descriptor. Synchronous: opening a local file does no data I/O. */
export function open(path: string, flags: number, mode = 0o644): number {
  const cPath = encoder.encode(`${path}\0`);
  const fd = libc().open(cPath, flags | OpenFlags.O_CLOEXEC, mode);
  if (fd < 0) throw failure("open", path);
  return fd;
}

/** close(2). */
export function close(fd: number): void {
  if (libc().close(fd) < 0) throw failure("close", `fd ${fd}`);
}

/**
 * One pread(2) on the main thread: bytes read, 0 at end of file. For benchmarks and tests only:
 * it blocks the event loop for as long as the disk takes.
 */
export function preadSync(fd: number, buffer: Uint8Array, offsetBytes: number): number {
  const result = toNumber(
    libc().pread_sync(fd, buffer, BigInt(buffer.byteLength), BigInt(offsetBytes)),
  );
  if (result < 0) throw failure("pread", describeIo(fd, buffer, offsetBytes));
  return result;
}

/**
 * One pwrite(2) on the main thread: bytes written. For benchmarks and tests only: it blocks the
 * event loop for as long as the disk takes.
 */
export function pwriteSync(fd: number, buffer: Uint8Array, offsetBytes: number): number {
  const result = toNumber(
    libc().pwrite_sync(fd, buffer, BigInt(buffer.byteLength), BigInt(offsetBytes)),
  );
  if (result < 0) throw failure("pwrite", describeIo(fd, buffer, offsetBytes));
  return result;
}

function describeIo(fd: number, buffer: Uint8Array, offsetBytes: number): string {
  return `fd ${fd}, ${buffer.byteLength} bytes at ${offsetBytes}`;
}

/** Attempts of a positional call that keeps failing with a transient errno (EINTR, EAGAIN). */
const IO_ATTEMPTS_MAX = 3;

function isTransient(errno: number): boolean {
  return errno === Errno.EINTR || errno === Errno.EAGAIN;
}

/**
 * Runs a nonblocking positional call; when it fails, repeats it on the repeat worker to learn
 * the errno (see the module doc), retrying transient errnos up to IO_ATTEMPTS_MAX times.
 */
async function positional(
  call: "pread" | "pwrite",
  attempt: () => Promise<number | bigint>,
  repeat: () => Promise<RepeatResult>,
  detail: () => string,
): Promise<number> {
  for (let attempts = 1;; attempts++) {
    const result = toNumber(await attempt());
    if (result >= 0) return result;
    const repeated = await repeat();
    if (repeated.result >= 0) return repeated.result;
    if (!isTransient(repeated.errno) || attempts >= IO_ATTEMPTS_MAX) {
      throw failure(call, detail(), repeated.errno);
    }
  }
}

/** preadv2(2) flag: fail with EAGAIN instead of waiting for data not in the page cache. */
const RWF_NOWAIT = 0x8;
/** Reads of more than this take a pool thread anyway: copying them would hold the event loop. */
export const NOWAIT_READ_BYTES_MAX = 64 * 1024;
/** The one iovec of preadNowait (the main thread makes one call at a time). */
const nowaitIovec = new BigUint64Array(2);
const nowaitIovecBytes = new Uint8Array(nowaitIovec.buffer);

/**
 * Reads what the page cache already holds, on the main thread without waiting: `preadv2` with
 * RWF_NOWAIT returns at once with the bytes it could copy from memory, and fails with EAGAIN
 * when the first of them is not cached (it would have to wait for the disk or a lock). Returns
 * the bytes read (0 at end of file), or -1 when nothing could be read that way (not cached, a
 * file system without RWF_NOWAIT, any error): the caller then reads with {@link preadFull},
 * which reports real errors. Only for up to {@link NOWAIT_READ_BYTES_MAX} bytes.
 */
export function preadNowait(fd: number, buffer: Uint8Array, offsetBytes: number): number {
  if (buffer.length === 0 || buffer.length > NOWAIT_READ_BYTES_MAX) return -1;
  nowaitIovec[0] = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(pinned(buffer))));
  nowaitIovec[1] = BigInt(buffer.length);
  const result = toNumber(
    libc().preadv2(fd, nowaitIovecBytes, 1, BigInt(offsetBytes), RWF_NOWAIT),
  );
  return result < 0 ? -1 : result;
}

/** One nonblocking pread(2): bytes read, 0 at end of file. */
export function pread(fd: number, buffer: Uint8Array, offsetBytes: number): Promise<number> {
  pinned(buffer);
  return positional(
    "pread",
    () => libc().pread(fd, buffer, BigInt(buffer.byteLength), BigInt(offsetBytes)),
    () => repeatPread(fd, buffer, offsetBytes),
    () => describeIo(fd, buffer, offsetBytes),
  );
}

/** One nonblocking pwrite(2): bytes written. */
export function pwrite(fd: number, buffer: Uint8Array, offsetBytes: number): Promise<number> {
  pinned(buffer);
  return positional(
    "pwrite",
    () => libc().pwrite(fd, buffer, BigInt(buffer.byteLength), BigInt(offsetBytes)),
    () => repeatPwrite(fd, buffer, offsetBytes),
    () => describeIo(fd, buffer, offsetBytes),
  );
}

/**
 * Reads until `buffer` is full or the file ends (pread may return short counts); returns the
 * bytes read, less than `buffer.length` only at end of file. Nonblocking.
 */
export async function preadFull(
  fd: number,
  buffer: Uint8Array,
  offsetBytes: number,
): Promise<number> {
  let done = await pread(fd, buffer, offsetBytes);
  while (done > 0 && done < buffer.length) {
    const more = await pread(fd, buffer.subarray(done), offsetBytes + done);
    if (more === 0) break;
    done += more;
  }
  return done;
}

/** Writes all of `buffer` at `offsetBytes` (repeating short writes). Nonblocking. */
export async function pwriteFull(
  fd: number,
  buffer: Uint8Array,
  offsetBytes: number,
): Promise<void> {
  let done = await pwrite(fd, buffer, offsetBytes);
  while (done < buffer.length) {
    const more = await pwrite(fd, buffer.subarray(done), offsetBytes + done);
    if (more === 0) throw failure("pwrite", describeIo(fd, buffer, offsetBytes), Errno.ENOSPC);
    done += more;
  }
}

/**
 * Writes all of a small `buffer` synchronously, on the main thread. Only for a few bytes written
 * once outside any hot path (a lock file's owner line); the storage engine never calls it.
 */
export function pwriteFullSync(fd: number, buffer: Uint8Array, offsetBytes: number): void {
  let done = pwriteSync(fd, buffer, offsetBytes);
  while (done < buffer.length) {
    const more = pwriteSync(fd, buffer.subarray(done), offsetBytes + done);
    if (more === 0) throw failure("pwrite", describeIo(fd, buffer, offsetBytes), Errno.ENOSPC);
    done += more;
  }
}

function lostErrno(call: string, detail: string): SysError {
  return new SysError(
    call,
    null,
    `${call}(${detail}) failed (errno is lost on the FFI worker thread; assume an I/O error)`,
  );
}

/** fsync(2), nonblocking: data and metadata of `fd` reach stable storage. */
export async function fsync(fd: number): Promise<void> {
  if (await libc().fsync(fd) < 0) throw lostErrno("fsync", `fd ${fd}`);
}

/** fdatasync(2), nonblocking: data (and the metadata needed to read it) reach stable storage. */
export async function fdatasync(fd: number): Promise<void> {
  if (await libc().fdatasync(fd) < 0) throw lostErrno("fdatasync", `fd ${fd}`);
}

/** ftruncate(2). Synchronous: it changes metadata only (files here are grown sparse). */
export function ftruncate(fd: number, lengthBytes: number): void {
  if (libc().ftruncate(fd, BigInt(lengthBytes)) < 0) {
    throw failure("ftruncate", `fd ${fd}, ${lengthBytes} bytes`);
  }
}

/**
 * fallocate(2) with mode 0: reserves disk space for a range so later writes into it cannot fail
 * with ENOSPC. Synchronous: filesystems with extents (ext4, xfs) record unwritten extents without
 * writing data. Returns false when the filesystem does not support it (the caller carries on).
 */
export function fallocate(fd: number, offsetBytes: number, lengthBytes: number): boolean {
  if (libc().fallocate(fd, 0, BigInt(offsetBytes), BigInt(lengthBytes)) === 0) return true;
  const errno = lastErrno();
  if (errno === Errno.EOPNOTSUPP || errno === Errno.ENOSYS) return false;
  throw failure("fallocate", `fd ${fd}, ${lengthBytes} bytes at ${offsetBytes}`, errno);
}

/**
 * posix_fadvise(2) over a range (`lengthBytes` 0 = to the end of the file). Synchronous: it only
 * updates readahead state or drops clean cached pages. posix_fadvise returns its error number
 * instead of setting errno.
 */
export function fadvise(
  fd: number,
  options: { offsetBytes?: number; lengthBytes?: number; advice: number },
): void {
  const offset = BigInt(options.offsetBytes ?? 0);
  const errno = libc().posix_fadvise(fd, offset, BigInt(options.lengthBytes ?? 0), options.advice);
  if (errno !== 0) throw failure("posix_fadvise", `fd ${fd}, advice ${options.advice}`, errno);
}

/** The size of the file behind `fd` (lseek to its end; the offset is unused by pread/pwrite). */
export function fileSizeBytes(fd: number): number {
  const size = toNumber(libc().lseek(fd, 0n, Whence.SEEK_END));
  if (size < 0) throw failure("lseek", `fd ${fd}, SEEK_END`);
  return size;
}

/**
 * flock(2) without waiting: true when the lock was taken, false when another open file holds it.
 */
export function tryFlock(fd: number, operation: number): boolean {
  if (libc().flock(fd, operation | FlockOps.LOCK_NB) === 0) return true;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN) return false;
  throw failure("flock", `fd ${fd}`, errno);
}

/**
 * Releases a flock(2) lock now. Closing the descriptor is not enough while another process holds
 * a copy of it: a child forked to run a command keeps the open file (and its lock) until exec.
 */
export function unlockFlock(fd: number): void {
  if (libc().flock(fd, FlockOps.LOCK_UN) < 0) throw failure("flock", `fd ${fd}, LOCK_UN`);
}

/** fcntl(2) commands of POSIX record locks (`F_GETLK`, `F_SETLK`) and lock types. */
const RecordLock = { F_GETLK: 5, F_SETLK: 6, F_WRLCK: 1, F_UNLCK: 2 } as const;
/**
 * Size of `struct flock` on Linux x86-64 and arm64: type i16 at 0, whence i16 at 2, start i64 at
 * 8, len i64 at 16, pid i32 at 24 (checked with offsetof).
 */
const FLOCK_STRUCT_BYTES = 32;

/** A `struct flock` for a write lock over the whole file (start 0, length 0 = to the end). */
function wholeFileWriteLock(): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(FLOCK_STRUCT_BYTES);
  const view = new DataView(bytes.buffer);
  view.setInt16(0, RecordLock.F_WRLCK, true);
  return { bytes, view };
}

/**
 * fcntl(F_SETLK) of a POSIX write lock over the whole of `fd`'s file, without waiting: true when
 * taken, false when another process holds a lock on it. The lock belongs to the process (not the
 * descriptor) and goes when the process closes any descriptor of the file or exits.
 */
export function trySetWriteLock(fd: number): boolean {
  if (libc().fcntl_lock(fd, RecordLock.F_SETLK, wholeFileWriteLock().bytes) === 0) return true;
  const errno = lastErrno();
  if (errno === Errno.EAGAIN || errno === Errno.EACCES) return false;
  throw failure("fcntl", `fd ${fd}, F_SETLK`, errno);
}

/**
 * fcntl(F_GETLK): the pid of a process holding a lock that keeps this process from write-locking
 * `fd`'s whole file, or null when none does (it may have been released a moment ago). The pid
 * comes from the kernel, so it is never stale.
 */
export function writeLockHolderPid(fd: number): number | null {
  const { bytes, view } = wholeFileWriteLock();
  if (libc().fcntl_lock(fd, RecordLock.F_GETLK, bytes) < 0) {
    throw failure("fcntl", `fd ${fd}, F_GETLK`);
  }
  return view.getInt16(0, true) === RecordLock.F_UNLCK ? null : view.getInt32(24, true);
}

/** A memory mapping made by {@link mmap}. */
export interface Mapping {
  readonly pointer: Deno.PointerObject;
  readonly lengthBytes: number;
}

/** mmap(2) of `lengthBytes` of `fd` from `offsetBytes`. Synchronous: it only sets up tables. */
export function mmap(
  fd: number,
  options: { lengthBytes: number; prot: number; flags: number; offsetBytes?: number },
): Mapping {
  assert(options.lengthBytes > 0, "mmap of zero bytes");
  const pointer = libc().mmap(
    null,
    BigInt(options.lengthBytes),
    options.prot,
    options.flags,
    fd,
    BigInt(options.offsetBytes ?? 0),
  );
  // MAP_FAILED is (void *) -1.
  if (pointer === null || Deno.UnsafePointer.value(pointer) === 0xffff_ffff_ffff_ffffn) {
    throw failure("mmap", `fd ${fd}, ${options.lengthBytes} bytes`);
  }
  return { pointer, lengthBytes: options.lengthBytes };
}

/** A Uint8Array over `lengthBytes` of a mapping from `offsetBytes` (aliases the mapping). */
export function mappedBytes(
  mapping: Mapping,
  offsetBytes: number,
  lengthBytes: number,
): Uint8Array {
  assert(
    offsetBytes >= 0 && lengthBytes >= 0 && offsetBytes + lengthBytes <= mapping.lengthBytes,
    "mappedBytes outside the mapping",
  );
  const buffer = Deno.UnsafePointerView.getArrayBuffer(mapping.pointer, lengthBytes, offsetBytes);
  return new Uint8Array(buffer);
}

/** munmap(2). Any view made by {@link mappedBytes} must be dropped before. */
export function munmap(mapping: Mapping): void {
  if (libc().munmap(mapping.pointer, BigInt(mapping.lengthBytes)) < 0) {
    throw failure("munmap", `${mapping.lengthBytes} bytes`);
  }
}

/** msync(2), nonblocking, of `lengthBytes` from page-aligned `offsetBytes` of a mapping. */
export async function msync(
  mapping: Mapping,
  options: { offsetBytes: number; lengthBytes: number; flags: number },
): Promise<void> {
  assert(options.offsetBytes % 4096 === 0, "msync offset must be page-aligned");
  const start = Deno.UnsafePointer.offset(mapping.pointer, options.offsetBytes);
  assert(start !== null, "msync offset outside the mapping");
  if (await libc().msync(start, BigInt(options.lengthBytes), options.flags) < 0) {
    throw lostErrno("msync", `${options.lengthBytes} bytes`);
  }
}

/** mallopt(3) parameters (glibc). */
const MallocParam = { M_TRIM_THRESHOLD: -1, M_MMAP_THRESHOLD: -3 } as const;
/** glibc's largest mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2). */
const MMAP_THRESHOLD_MAX_BYTES = 32 * 1024 * 1024;
/** Freed heap memory glibc keeps before giving it back to the kernel. */
const TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024;
let mallocTuned = false;

/**
 * Makes glibc malloc keep and reuse the memory of large buffers. Every block read returns a
 * fresh block-sized buffer (V8 allocates its memory with calloc); by default glibc serves such
 * sizes with mmap and gives them back with munmap, so each read faults in 128 new pages per
 * 512 KiB, which measured 2-3x slower than reading into reused memory on this VM
 * (docs/adr/0001-block-file-io.md). The same holds for every block-sized copy, so main.ts calls
 * this at the start of every torus process (the cluster's client, which has no store, copies each
 * block it sends to the holders). Process-wide and idempotent; the cost is memory that stays
 * mapped (up to TRIM_THRESHOLD_BYTES of free heap) after a burst.
 */
export function tuneMallocForLargeBuffers(): void {
  if (mallocTuned) return;
  mallocTuned = true;
  // mallopt returns 1 on success; a libc without these knobs simply keeps its defaults.
  libc().mallopt(MallocParam.M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX_BYTES);
  libc().mallopt(MallocParam.M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
}
