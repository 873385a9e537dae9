/**
 * Batched writes through Linux native AIO (io_setup, io_submit, io_getevents, called through
 * syscall(2)): many small buffered writes, to any offsets of any files, in one system call.
 *
 * Why: a nonblocking FFI call costs a hop to a pool thread and back, and most of the main
 * thread's time on 4 KiB writes went to those hops (docs/benchmarks.md): the storage engine
 * writes each journal record in place and then its slot's sums, two calls per 4 KiB. Here every
 * write issued in one turn of the event loop (and every write issued while a batch runs) goes to
 * the kernel in one `io_submit`, made as one nonblocking call. For a buffered (page-cache) file
 * the kernel does each write inside `io_submit` and posts its completion at once, so the events
 * are reaped right after it returns by a synchronous `io_getevents` with a zero timeout; an
 * event not posted yet (a file opened with O_DIRECT) is waited for by a nonblocking call.
 *
 * Invariants:
 * - The event loop never waits on a disk: `io_submit` (which copies the bytes and may wait for
 *   page reclaim or writeback throttling) and any waiting `io_getevents` run on a pool thread.
 * - One batch is in the kernel at a time; writes issued meanwhile form the next one. Writes of
 *   one batch must not overlap (the FileIo contract: callers never overlap writes in flight).
 * - A write the kernel refused, failed or did short is done again by the plain nonblocking path
 *   (libc.ts `pwriteFull`), which repeats short writes and learns the errno of a failure: the
 *   errors callers see are the same as without AIO. Where AIO is missing (another architecture,
 *   `io_setup` refused, `fs.aio-max-nr` used up) every write takes that path.
 * - Buffers stay referenced by the batch until their write completed.
 *
 * Large writes (over {@link BATCHED_WRITE_BYTES_MAX}) have a writer (an AIO context and queue) of
 * their own, so a small write never waits behind their copies. They are not spread over pool
 * threads: ext4 holds a file's inode lock through a buffered write's copy, so parallel writes to
 * one file copy one at a time while the others spin on the lock. `perf` of `torus serve` under 1
 * MiB sequential writes put 19% of its CPU in that spinning (`rwsem_spin_on_owner`) when each large
 * write had its own nonblocking pwrite; one batch at a time halved the context switches per write
 * and cut the CPU per MiB by about a fifth (docs/benchmarks.md).
 * @module
 */

import { pinned, pwriteFull } from "./libc.ts";

/** Writes larger than this go to the large writes' own writer. */
export const BATCHED_WRITE_BYTES_MAX = 64 * 1024;
/** Writes submitted in one io_submit. */
const BATCH_WRITES_MAX = 128;
/** Events the AIO context holds (at most one batch is in flight). */
const CONTEXT_EVENTS = 2 * BATCH_WRITES_MAX;
const IOCB_BYTES = 64;
const EVENT_BYTES = 32;
const IOCB_CMD_PWRITE = 1;

/** syscall(2) numbers of the AIO calls per architecture (asm-generic numbering on arm64). */
const AIO_SYSCALLS: Partial<Record<string, { setup: bigint; submit: bigint; getevents: bigint }>> =
  {
    x86_64: { setup: 206n, submit: 209n, getevents: 208n },
    aarch64: { setup: 0n, submit: 2n, getevents: 4n },
  };

// syscall(2) is variadic; every argument here is an integer or a pointer, which the x86-64 and
// arm64 calling conventions pass in the same registers as fixed 64-bit parameters.
const symbols = {
  io_setup: { name: "syscall", parameters: ["i64", "u64", "buffer"], result: "i64" },
  io_submit: {
    name: "syscall",
    parameters: ["i64", "u64", "i64", "buffer"],
    result: "i64",
    nonblocking: true,
  },
  io_getevents: {
    name: "syscall",
    parameters: ["i64", "u64", "i64", "i64", "buffer", "buffer"],
    result: "i64",
  },
  io_getevents_wait: {
    name: "syscall",
    parameters: ["i64", "u64", "i64", "i64", "buffer", "buffer"],
    result: "i64",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/**
 * The system calls an AIO writer makes: libc's, or a test's stand-ins
 * ({@link wrapAioCallsForTesting}).
 */
export type AioCalls = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** One write waiting for, or in, a batch. */
interface QueuedWrite {
  fd: number;
  bytes: Uint8Array;
  offsetBytes: number;
  resolve(): void;
  reject(error: unknown): void;
}

/** One AIO context and the queue of writes that feeds it. */
class AioWriter {
  readonly #calls: AioCalls;
  readonly #numbers: { setup: bigint; submit: bigint; getevents: bigint };
  readonly #context: bigint;
  #queue: QueuedWrite[] = [];
  #running = false;
  #scheduled = false;
  /** The id of the next write submitted (ids name writes in events; never reused). */
  #nextId = 1;
  // One batch at a time, so these are reused: the kernel copies the control blocks in io_submit.
  readonly #iocbs = new DataView(new ArrayBuffer(IOCB_BYTES * BATCH_WRITES_MAX));
  readonly #iocbPointers = new BigUint64Array(BATCH_WRITES_MAX);
  readonly #events = new Uint8Array(EVENT_BYTES * BATCH_WRITES_MAX);
  readonly #noWait = new Uint8Array(16);

  constructor(
    calls: AioCalls,
    numbers: { setup: bigint; submit: bigint; getevents: bigint },
    context: bigint,
  ) {
    this.#calls = calls;
    this.#numbers = numbers;
    this.#context = context;
    const base = pointerValue(new Uint8Array(this.#iocbs.buffer));
    for (let i = 0; i < BATCH_WRITES_MAX; i++) {
      this.#iocbPointers[i] = base + BigInt(i * IOCB_BYTES);
    }
  }

  /** Opens a context, or null when this kernel or architecture has none to give. */
  static open(): AioWriter | null {
    const numbers = AIO_SYSCALLS[Deno.build.arch];
    if (numbers === undefined) return null;
    try {
      const libcCalls = Deno.dlopen("libc.so.6", symbols).symbols;
      const calls = wrapCalls === null ? libcCalls : wrapCalls(libcCalls);
      const context = new BigUint64Array(1);
      const result = calls.io_setup(
        numbers.setup,
        BigInt(CONTEXT_EVENTS),
        new Uint8Array(context.buffer),
      );
      if (Number(result) !== 0) return null;
      return new AioWriter(calls, numbers, context[0]!);
    } catch {
      return null;
    }
  }

  write(fd: number, bytes: Uint8Array, offsetBytes: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ fd, bytes: pinned(bytes), offsetBytes, resolve, reject });
      this.#schedule();
    });
  }

  /**
   * Starts a batch once the current turn's microtasks ran, so writes issued one after another
   * in this turn (each awaiting a cached read first, say) share it.
   */
  #schedule(): void {
    if (this.#running || this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      void this.#run();
    });
  }

  async #run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, BATCH_WRITES_MAX);
        await this.#submit(batch).catch((error) => {
          for (const write of batch) write.reject(error);
        });
      }
    } finally {
      this.#running = false;
    }
  }

  /** Submits `batch`, settles each write from its event, and redoes the rest the plain way. */
  async #submit(batch: readonly QueuedWrite[]): Promise<void> {
    const firstId = this.#nextId;
    this.#nextId += batch.length;
    batch.forEach((write, i) => this.#fillIocb(i, firstId + i, write));
    const submitted = Math.max(
      0,
      Number(
        await this.#calls.io_submit(
          this.#numbers.submit,
          this.#context,
          BigInt(batch.length),
          new Uint8Array(this.#iocbPointers.buffer),
        ),
      ),
    );
    const written = new Array<boolean>(batch.length).fill(false);
    let settled = 0;
    while (settled < submitted) {
      let events = this.#reapPosted(submitted - settled);
      if (events === 0) events = await this.#reapWaiting(submitted - settled);
      // A failed io_getevents: what is left is written again the plain way (idempotent), and
      // its late events are ignored, since their ids belong to no later batch.
      if (events < 0) break;
      for (let e = 0; e < events; e++) {
        const view = new DataView(this.#events.buffer, e * EVENT_BYTES, EVENT_BYTES);
        const index = Number(view.getBigUint64(0, true)) - firstId;
        if (index < 0 || index >= batch.length) continue;
        written[index] = Number(view.getBigInt64(16, true)) === batch[index]!.bytes.length;
        settled++;
      }
    }
    await Promise.all(batch.map((write, i) => written[i] ? write.resolve() : settlePlainly(write)));
  }

  /** Reaps the events already posted (up to `wanted`) without waiting: their count, or -1. */
  #reapPosted(wanted: number): number {
    return Number(
      this.#calls.io_getevents(
        this.#numbers.getevents,
        this.#context,
        0n,
        BigInt(wanted),
        this.#events,
        this.#noWait,
      ),
    );
  }

  /** Waits on a pool thread for at least one of `wanted` events: their count, or -1. */
  async #reapWaiting(wanted: number): Promise<number> {
    return Number(
      await this.#calls.io_getevents_wait(
        this.#numbers.getevents,
        this.#context,
        1n,
        BigInt(wanted),
        this.#events,
        null,
      ),
    );
  }

  #fillIocb(index: number, id: number, write: QueuedWrite): void {
    const view = this.#iocbs;
    const at = index * IOCB_BYTES;
    view.setBigUint64(at, BigInt(id), true); // aio_data: which write this is
    view.setUint32(at + 8, 0, true); // aio_key
    view.setUint32(at + 12, 0, true); // aio_rw_flags
    view.setUint16(at + 16, IOCB_CMD_PWRITE, true); // aio_lio_opcode
    view.setInt16(at + 18, 0, true); // aio_reqprio
    view.setUint32(at + 20, write.fd, true); // aio_fildes
    view.setBigUint64(at + 24, pointerValue(write.bytes), true); // aio_buf
    view.setBigUint64(at + 32, BigInt(write.bytes.length), true); // aio_nbytes
    view.setBigInt64(at + 40, BigInt(write.offsetBytes), true); // aio_offset
    view.setBigUint64(at + 48, 0n, true); // aio_reserved2
    view.setUint32(at + 56, 0, true); // aio_flags
    view.setUint32(at + 60, 0, true); // aio_resfd
  }
}

/** Does a write the batch did not finish with a plain nonblocking pwrite, and settles it. */
function settlePlainly(write: QueuedWrite): Promise<void> {
  return pwriteFull(write.fd, write.bytes, write.offsetBytes).then(write.resolve, write.reject);
}

function pointerValue(bytes: Uint8Array): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes)));
}

let writer: AioWriter | null | undefined;
let largeWriter: AioWriter | null | undefined;
let disabled = false;
let wrapCalls: ((calls: AioCalls) => AioCalls) | null = null;

/** The process's AIO writer, opened on first use; null where AIO is not available. */
function aioWriter(): AioWriter | null {
  if (disabled) return null;
  if (writer === undefined) writer = AioWriter.open();
  return writer;
}

/** The process's writer of large writes, opened on first use; null where AIO is not available. */
function largeAioWriter(): AioWriter | null {
  if (disabled) return null;
  if (largeWriter === undefined) largeWriter = AioWriter.open();
  return largeWriter;
}

/** Whether writes here go through AIO batches (false where the kernel or architecture refuses). */
export function aioAvailable(): boolean {
  return aioWriter() !== null;
}

/**
 * Turns batching off (true) or on again for this process, for tests and benchmarks that compare
 * the two paths; with it off every write is a plain nonblocking pwrite.
 */
export function disableAioForTesting(off: boolean): void {
  disabled = off;
}

/**
 * Makes the writer opened next call `wrap(libc's calls)` (null: libc's own again) and lets the
 * current one go (its context stays until the process ends, like every context): tests fail,
 * shorten or delay io_submit and io_getevents with it, to reach the paths a healthy kernel never
 * takes. Production never sets it, and a writer reads it only when it opens.
 */
export function wrapAioCallsForTesting(wrap: ((calls: AioCalls) => AioCalls) | null): void {
  wrapCalls = wrap;
  writer = undefined;
  largeWriter = undefined;
}

/**
 * Writes all of `bytes` at `offsetBytes` of `fd`, nonblocking: small writes go through the next
 * AIO batch, large ones through the next batch of the large writes' writer, and every write where
 * AIO is missing through its own pwrite.
 */
export function batchedPwrite(fd: number, bytes: Uint8Array, offsetBytes: number): Promise<void> {
  const aio = bytes.length <= BATCHED_WRITE_BYTES_MAX ? aioWriter() : largeAioWriter();
  if (aio === null || bytes.length === 0) return pwriteFull(fd, bytes, offsetBytes);
  return aio.write(fd, bytes, offsetBytes);
}
