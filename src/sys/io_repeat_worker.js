/**
 * Repeats a failed positional read or write on this worker's own thread, where a synchronous
 * libc call may block as long as the disk makes it, and answers with the result and errno.
 *
 * Why it exists: a nonblocking FFI call runs on one of Deno's pool threads, whose errno the main
 * thread cannot read afterwards. Repeating a failed pread/pwrite synchronously on the main thread
 * would learn the errno, but a failing disk can take seconds per call (SCSI retries), which would
 * stop the whole event loop. Here the repeat blocks this worker only.
 *
 * Plain JavaScript on purpose (as src/metadata/embedded_worker.js): `deno test` type-checks every
 * TypeScript worker graph each time a worker starts, and this file stays small and obvious.
 *
 * Requests: {id, op: "pread", fd, lengthBytes, offsetBytes} | {id, op: "pwrite", fd, bytes,
 * offsetBytes}. Replies: {id, result, errno, bytes?}: `result` is the call's return value (-1 on
 * failure, then `errno` is set), `bytes` the data a successful pread read (transferred).
 * @module
 */

const libc = Deno.dlopen("libc.so.6", {
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  __errno_location: { parameters: [], result: "pointer" },
});

/** This thread's errno, read right after a failed call. */
function lastErrno() {
  const location = libc.symbols.__errno_location();
  return location === null ? 0 : new Deno.UnsafePointerView(location).getInt32();
}

/** @param {{id: number, op: string, fd: number, offsetBytes: number, lengthBytes?: number, bytes?: Uint8Array}} request */
function repeat(request) {
  const offset = BigInt(request.offsetBytes);
  if (request.op === "pread") {
    const bytes = new Uint8Array(request.lengthBytes ?? 0);
    const result = Number(libc.symbols.pread(request.fd, bytes, BigInt(bytes.length), offset));
    const errno = result < 0 ? lastErrno() : 0;
    self.postMessage({ id: request.id, result, errno, bytes }, [bytes.buffer]);
    return;
  }
  const bytes = request.bytes ?? new Uint8Array(0);
  const result = Number(libc.symbols.pwrite(request.fd, bytes, BigInt(bytes.length), offset));
  const errno = result < 0 ? lastErrno() : 0;
  self.postMessage({ id: request.id, result, errno });
}

self.onmessage = (event) => repeat(event.data);
