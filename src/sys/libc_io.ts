/**
 * The libc calls for sockets, readiness polling, host name resolution and ioctl, in a table of
 * their own beside libc.ts's file calls (the same library, opened lazily on first use).
 *
 * Blocking rules as in libc.ts: calls that can wait (poll, getaddrinfo, an ioctl that waits such
 * as NBD_DO_IT) are `nonblocking` FFI calls, which run on a worker thread, return a Promise and
 * lose errno (it is thread-local); every other call here returns at once (sockets are used with
 * MSG_DONTWAIT or O_NONBLOCK) and its errno is read on the main thread right after it failed.
 * @module
 */

import { assert } from "../core/mod.ts";
import { errnoName, SysError } from "./errno.ts";
import { strerror } from "./libc.ts";

const symbols = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  // fcntl is variadic; with F_GETFL/F_SETFL its third argument is an int, which the x86-64 and
  // arm64 calling conventions pass in the same register as a fixed 64-bit parameter.
  fcntl_int: { name: "fcntl", parameters: ["i32", "i32", "i64"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  getaddrinfo: {
    parameters: ["buffer", "buffer", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  freeaddrinfo: { parameters: ["pointer"], result: "void" },
  gai_strerror: { parameters: ["i32"], result: "pointer" },
  // ioctl is variadic too; every request used here takes an integer (unsigned long) argument.
  ioctl: { parameters: ["i32", "usize", "usize"], result: "i32" },
  ioctl_wait: {
    name: "ioctl",
    parameters: ["i32", "usize", "usize"],
    result: "i32",
    nonblocking: true,
  },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type LibcIo = Deno.DynamicLibrary<typeof symbols>["symbols"];

let library: Deno.DynamicLibrary<typeof symbols> | null = null;

/** The symbols, opened on first use (so modules that never call them need no --allow-ffi). */
export function libcIo(): LibcIo {
  library ??= Deno.dlopen("libc.so.6", symbols);
  return library.symbols;
}

/** The calling (main) thread's errno; valid right after a failed synchronous call. */
export function lastErrno(): number {
  const location = libcIo().__errno_location();
  assert(location !== null, "__errno_location returned NULL");
  return new Deno.UnsafePointerView(location).getInt32();
}

/** The error of a synchronous call that just failed (reads errno at once unless given). */
export function callFailure(call: string, detail: string, errno = lastErrno()): SysError {
  return new SysError(
    call,
    errno,
    `${call}(${detail}) failed: ${errnoName(errno)} ${strerror(errno)}`,
  );
}

/** The description of a getaddrinfo error code. */
export function gaiStrerror(code: number): string {
  const text = libcIo().gai_strerror(code);
  return text === null ? `error ${code}` : Deno.UnsafePointerView.getCString(text);
}
