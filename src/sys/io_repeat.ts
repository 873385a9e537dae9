/**
 * Learning the errno of a failed nonblocking pread/pwrite without blocking the event loop: the
 * call is repeated synchronously on a worker thread (io_repeat_worker.js), which reads its own
 * errno. A repeat that succeeds means the condition was transient; a repeat that fails tells the
 * errno.
 *
 * Invariants:
 * - The main thread never makes the repeat itself (a failing disk can hold a call for seconds).
 * - One worker serves every repeat in flight, in order; it is started on the first failure and
 *   stopped as soon as no repeat is waiting, so a healthy process runs no extra thread and a
 *   burst of failures (a dying disk) starts one worker, not one per call.
 * - Repeats are for positional I/O only: it is idempotent, so doing it twice is harmless. fsync
 *   class calls are never repeated (after a writeback error the kernel reports it once).
 * @module
 */

import { assert } from "../core/mod.ts";

/** What a repeated call returned on the worker thread. */
export interface RepeatResult {
  /** The call's return value: bytes moved, or -1 on failure. */
  result: number;
  /** The errno of a failed repeat (0 when it succeeded). */
  errno: number;
}

interface Reply extends RepeatResult {
  id: number;
  bytes?: Uint8Array;
}

interface Waiting {
  resolve(reply: Reply): void;
  reject(error: Error): void;
}

let worker: Worker | null = null;
const waiting = new Map<number, Waiting>();
let nextId = 1;

function startWorker(): Worker {
  const started = new Worker(new URL("./io_repeat_worker.js", import.meta.url).href, {
    type: "module",
  });
  started.onmessage = (event: MessageEvent<Reply>) => settle(event.data);
  started.onerror = (event: ErrorEvent) => {
    event.preventDefault();
    failAll(new Error(`the I/O repeat worker died: ${event.message}`));
  };
  return started;
}

function settle(reply: Reply): void {
  const entry = waiting.get(reply.id);
  waiting.delete(reply.id);
  stopWhenIdle();
  entry?.resolve(reply);
}

function failAll(error: Error): void {
  const entries = [...waiting.values()];
  waiting.clear();
  stopWhenIdle();
  for (const entry of entries) entry.reject(error);
}

function stopWhenIdle(): void {
  if (waiting.size > 0 || worker === null) return;
  worker.terminate();
  worker = null;
}

function request(message: Record<string, unknown>, transfer: Transferable[] = []): Promise<Reply> {
  worker ??= startWorker();
  const id = nextId++;
  const reply = new Promise<Reply>((resolve, reject) => waiting.set(id, { resolve, reject }));
  worker.postMessage({ ...message, id }, transfer);
  return reply;
}

/**
 * Repeats pread(fd, into, offsetBytes) on the worker thread; on success the bytes read are
 * copied into `into`.
 */
export async function repeatPread(
  fd: number,
  into: Uint8Array,
  offsetBytes: number,
): Promise<RepeatResult> {
  const reply = await request({ op: "pread", fd, lengthBytes: into.length, offsetBytes });
  if (reply.result > 0) {
    assert(reply.bytes !== undefined && reply.result <= into.length, "bad pread repeat reply");
    into.set(reply.bytes.subarray(0, reply.result));
  }
  return { result: reply.result, errno: reply.errno };
}

/** Repeats pwrite(fd, bytes, offsetBytes) on the worker thread (with a copy of `bytes`). */
export async function repeatPwrite(
  fd: number,
  bytes: Uint8Array,
  offsetBytes: number,
): Promise<RepeatResult> {
  const copy = bytes.slice();
  const reply = await request({ op: "pwrite", fd, bytes: copy, offsetBytes }, [copy.buffer]);
  return { result: reply.result, errno: reply.errno };
}
