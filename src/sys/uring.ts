/**
 * Reads that miss the page cache, batched through io_uring (io_uring_setup, io_uring_enter through
 * syscall(2), rings mapped with mmap): the reads of one turn go to the kernel with one
 * `io_uring_enter` that submits them and waits for all of them, made as one nonblocking FFI call.
 *
 * Why: each nonblocking pread is a hop to a pool thread that then sleeps in the disk read; under
 * random reads of a volume larger than memory those hops and wakeups cost about twice the CPU of
 * the reads themselves (measured: 48-50 µs of process CPU per 4 KiB cold read through pread
 * against 24 µs through io_uring batches, where the kernel's own workers wait for the disk).
 *
 * Invariants:
 * - The event loop never waits on a disk: the enter that waits runs on a pool thread.
 * - RINGS rings, each carrying one batch at a time, so a slow read holds back only its batch's
 *   ring; reads issued while every ring is busy form the next batches.
 * - The kernel reads into the ring's own buffers, copied to the caller's after completion: a ring
 *   whose completions cannot all be collected is dropped with its buffers, so a late completion
 *   can never write into memory a caller got back. A dropped ring stays referenced until the
 *   process ends: were its buffers collected, the allocator would hand their memory to the next
 *   caller's buffer, and a late read would land there. Reads over {@link URING_READ_BYTES_MAX}
 *   take the plain path.
 * - A read that failed or came back short is finished by the plain nonblocking `preadFull`, which
 *   names the errno of a failure and reads to the end: callers see exactly what preadFull gives.
 *   Where io_uring is missing or refused (old kernel, seccomp, `kernel.io_uring_disabled`), every
 *   read takes that path.
 * @module
 */

import { MmapFlags, preadFull } from "./libc.ts";

/** Reads larger than this are plain preads (the ring's buffers hold this much per read). */
export const URING_READ_BYTES_MAX = 64 * 1024;
/** Reads per batch (one io_uring_enter). */
const BATCH_READS_MAX = 16;
/** Rings, hence batches in flight at once. */
const RINGS = 4;
const RING_ENTRIES = 32;
const SQE_BYTES = 64;
const CQE_BYTES = 16;
const IORING_OP_READ = 22;
/** io_uring_enter calls a batch may take (more only when waits are interrupted). */
const ENTER_ATTEMPTS = 4;
const IORING_ENTER_GETEVENTS = 1;
const IORING_OFF_SQES = 0x10000000n;
const MAP_POPULATE = 0x8000;

/** syscall(2) numbers (the same on x86-64 and arm64). */
const SYS_IO_URING_SETUP = 425n;
const SYS_IO_URING_ENTER = 426n;

const symbols = {
  io_uring_setup: { name: "syscall", parameters: ["i64", "u32", "buffer"], result: "i64" },
  io_uring_enter: {
    name: "syscall",
    parameters: ["i64", "i32", "u32", "u32", "u32", "pointer", "u64"],
    result: "i64",
    nonblocking: true,
  },
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  close: { parameters: ["i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

type UringSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];
/** io_uring_enter as rings call it: libc's, or a test's ({@link wrapUringEnterForTesting}). */
export type UringEnter = UringSymbols["io_uring_enter"];

/** One read waiting for, or in, a batch. */
interface QueuedRead {
  fd: number;
  into: Uint8Array;
  offsetBytes: number;
  resolve(bytes: number): void;
  reject(error: unknown): void;
}

/** One io_uring: its submission and completion rings, mapped. */
class Ring {
  readonly #enter: UringEnter;
  readonly #fd: number;
  readonly #sqes: DataView;
  readonly #sqTail: Uint32Array;
  readonly #sqMask: number;
  readonly #sqArray: Uint32Array;
  readonly #cqHead: Uint32Array;
  readonly #cqTail: Uint32Array;
  readonly #cqMask: number;
  readonly #cqes: DataView;
  /** Where the kernel puts each read of a batch (URING_READ_BYTES_MAX apiece). */
  readonly #buffers = new Uint8Array(BATCH_READS_MAX * URING_READ_BYTES_MAX);
  readonly #buffersAddress = BigInt(
    Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#buffers)),
  );

  private constructor(calls: UringSymbols, enter: UringEnter, fd: number, params: DataView) {
    this.#enter = enter;
    this.#fd = fd;
    const sqEntries = params.getUint32(0, true);
    const cqEntries = params.getUint32(4, true);
    // struct io_sqring_offsets at 40, struct io_cqring_offsets at 80 (linux/io_uring.h).
    const sq = (field: number) => params.getUint32(40 + 4 * field, true);
    const cq = (field: number) => params.getUint32(80 + 4 * field, true);
    // One mapping holds both rings (IORING_FEAT_SINGLE_MMAP, Linux 5.4).
    const ringBytes = Math.max(sq(6) + 4 * sqEntries, cq(5) + CQE_BYTES * cqEntries);
    const rings = Deno.UnsafePointerView.getArrayBuffer(
      map(calls, fd, ringBytes, 0n),
      ringBytes,
    );
    const sqes = map(calls, fd, SQE_BYTES * sqEntries, IORING_OFF_SQES);
    this.#sqes = new DataView(Deno.UnsafePointerView.getArrayBuffer(sqes, SQE_BYTES * sqEntries));
    this.#sqTail = new Uint32Array(rings, sq(1), 1);
    this.#sqMask = new Uint32Array(rings, sq(2), 1)[0]!;
    this.#sqArray = new Uint32Array(rings, sq(6), sqEntries);
    this.#cqHead = new Uint32Array(rings, cq(0), 1);
    this.#cqTail = new Uint32Array(rings, cq(1), 1);
    this.#cqMask = new Uint32Array(rings, cq(2), 1)[0]!;
    this.#cqes = new DataView(rings, cq(5), CQE_BYTES * cqEntries);
  }

  /** A ring of RING_ENTRIES entered through `enter`, or null when the kernel refuses one. */
  static open(calls: UringSymbols, enter: UringEnter): Ring | null {
    const params = new Uint8Array(120);
    const fd = Number(calls.io_uring_setup(SYS_IO_URING_SETUP, RING_ENTRIES, params));
    if (fd < 0) return null;
    try {
      const view = new DataView(params.buffer);
      const singleMmap = (view.getUint32(20, true) & 1) !== 0;
      if (!singleMmap) throw new Error("io_uring without IORING_FEAT_SINGLE_MMAP");
      return new Ring(calls, enter, fd, view);
    } catch {
      calls.close(fd);
      return null;
    }
  }

  /** The bytes the kernel read for the batch's read `index`. */
  bytesOf(index: number, length: number): Uint8Array {
    const at = index * URING_READ_BYTES_MAX;
    return this.#buffers.subarray(at, at + length);
  }

  /**
   * Submits `batch` and waits (on a pool thread) for all of it; returns each read's result
   * (bytes, or a negative errno), in batch order. Null when not every completion could be
   * collected (the ring must then be dropped).
   */
  async run(batch: readonly QueuedRead[]): Promise<number[] | null> {
    let tail = this.#sqTail[0]!;
    batch.forEach((read, i) => {
      const index = tail & this.#sqMask;
      this.#fillSqe(index, i, read);
      this.#sqArray[index] = index;
      tail = (tail + 1) >>> 0;
    });
    Atomics.store(this.#sqTail, 0, tail);
    const count = batch.length;
    const results = new Array<number>(count).fill(-1);
    let seen = 0;
    let submit = count;
    // The first enter submits and waits for all; a wait cut short (a signal) is repeated.
    for (let attempt = 0; seen < count && attempt < ENTER_ATTEMPTS; attempt++) {
      const entered = Number(
        await this.#enter(
          SYS_IO_URING_ENTER,
          this.#fd,
          submit,
          count - seen,
          IORING_ENTER_GETEVENTS,
          null,
          0n,
        ),
      );
      if (entered >= 0) submit = 0;
      seen += this.#reap(results);
    }
    return seen === count ? results : null;
  }

  #reap(results: number[]): number {
    let head = Atomics.load(this.#cqHead, 0);
    const tail = Atomics.load(this.#cqTail, 0);
    let reaped = 0;
    while (head !== tail) {
      const at = (head & this.#cqMask) * CQE_BYTES;
      const index = Number(this.#cqes.getBigUint64(at, true));
      if (index < results.length) results[index] = this.#cqes.getInt32(at + 8, true);
      head = (head + 1) >>> 0;
      reaped++;
    }
    Atomics.store(this.#cqHead, 0, head);
    return reaped;
  }

  #fillSqe(index: number, userData: number, read: QueuedRead): void {
    const view = this.#sqes;
    const at = index * SQE_BYTES;
    for (let i = 0; i < SQE_BYTES; i += 8) view.setBigUint64(at + i, 0n, true);
    view.setUint8(at, IORING_OP_READ); // opcode
    view.setInt32(at + 4, read.fd, true); // fd
    view.setBigUint64(at + 8, BigInt(read.offsetBytes), true); // off
    view.setBigUint64(
      at + 16,
      this.#buffersAddress + BigInt(userData * URING_READ_BYTES_MAX),
      true,
    ); // addr: the ring's buffer of this read
    view.setUint32(at + 24, read.into.length, true); // len
    view.setBigUint64(at + 32, BigInt(userData), true); // user_data
  }
}

function map(calls: UringSymbols, fd: number, bytes: number, offset: bigint): Deno.PointerObject {
  const pointer = calls.mmap(
    null,
    BigInt(bytes),
    MmapFlags.PROT_READ | MmapFlags.PROT_WRITE,
    MmapFlags.MAP_SHARED | MAP_POPULATE,
    fd,
    offset,
  );
  // MAP_FAILED is (void *)-1.
  if (pointer === null || Deno.UnsafePointer.value(pointer) === 0xffffffffffffffffn) {
    throw new Error("mmap of an io_uring failed");
  }
  return pointer;
}

/** The rings and the queue of reads that feeds them. */
class UringReader {
  readonly #free: Ring[];
  /** Rings not dropped (free or running a batch). */
  #rings: number;
  #queue: QueuedRead[] = [];
  #scheduled = false;

  constructor(rings: Ring[]) {
    this.#free = rings;
    this.#rings = rings.length;
  }

  static open(): UringReader | null {
    if (Deno.build.os !== "linux") return null;
    try {
      const calls = Deno.dlopen("libc.so.6", symbols).symbols;
      const enter = wrapEnter === null ? calls.io_uring_enter : wrapEnter(calls.io_uring_enter);
      const rings: Ring[] = [];
      for (let i = 0; i < RINGS; i++) {
        const ring = Ring.open(calls, enter);
        if (ring === null) break;
        rings.push(ring);
      }
      return rings.length === 0 ? null : new UringReader(rings);
    } catch {
      return null;
    }
  }

  read(fd: number, into: Uint8Array, offsetBytes: number): Promise<number> {
    if (this.#rings === 0) return preadFull(fd, into, offsetBytes);
    return new Promise((resolve, reject) => {
      this.#queue.push({ fd, into, offsetBytes, resolve, reject });
      this.#schedule();
    });
  }

  /** Starts batches once this turn's microtasks ran, so the reads of the turn share them. */
  #schedule(): void {
    if (this.#scheduled || this.#free.length === 0 || this.#queue.length === 0) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      // A lone read with no batch in flight (queue depth 1) gains nothing from a ring (one hop
      // either way) and would wait for the kernel to hand it on: it is a plain pread.
      if (this.#queue.length === 1 && this.#free.length === this.#rings) {
        const read = this.#queue.pop()!;
        preadFull(read.fd, read.into, read.offsetBytes).then(read.resolve, read.reject);
        return;
      }
      while (this.#free.length > 0 && this.#queue.length > 0) {
        const ring = this.#free.pop()!;
        const batch = this.#queue.splice(0, BATCH_READS_MAX);
        void this.#runBatch(ring, batch);
      }
    });
  }

  async #runBatch(ring: Ring, batch: QueuedRead[]): Promise<void> {
    let results: number[] | null = null;
    try {
      results = await ring.run(batch);
    } catch {
      results = null;
    }
    if (results !== null) this.#free.push(ring);
    else this.#drop(ring);
    this.#schedule();
    for (const [i, read] of batch.entries()) {
      const got = results?.[i] ?? -1;
      if (got > 0) read.into.set(ring.bytesOf(i, got));
      if (got === read.into.length || got === 0) {
        read.resolve(got);
      } else {
        // Failed (the plain read names the errno) or short (it reads on to the end).
        const done = Math.max(got, 0);
        preadFull(read.fd, read.into.subarray(done), read.offsetBytes + done).then(
          (more) => read.resolve(done + more),
          read.reject,
        );
      }
    }
  }

  /**
   * Drops a ring whose completions could not all be read, buffers and all: a late one could
   * land in a later batch. Kept referenced, so the kernel can only ever write into its buffers.
   * With no ring left, what waits takes the plain path.
   */
  #drop(ring: Ring): void {
    droppedRings.push(ring);
    if (--this.#rings > 0) return;
    for (const read of this.#queue.splice(0)) {
      preadFull(read.fd, read.into, read.offsetBytes).then(read.resolve, read.reject);
    }
  }
}

let reader: UringReader | null | undefined;
let disabled = false;
let wrapEnter: ((enter: UringEnter) => UringEnter) | null = null;
/** Rings dropped with reads possibly in flight: kept so their buffers are never reused. */
const droppedRings: Ring[] = [];

function uringReader(): UringReader | null {
  if (disabled) return null;
  if (reader === undefined) reader = UringReader.open();
  return reader;
}

/** Whether reads here go through io_uring batches. */
export function uringAvailable(): boolean {
  return uringReader() !== null;
}

/** Turns io_uring reads off (true) or on again, for tests and benchmarks. */
export function disableUringForTesting(off: boolean): void {
  disabled = off;
}

/**
 * Makes the rings opened next enter through `wrap(libc's io_uring_enter)` (null: libc's own again)
 * and lets the current rings go (their descriptors stay open): tests fail, delay or
 * watch the enters with it, to reach the paths a healthy kernel never takes. Production never
 * sets it, and it is read only when rings open.
 */
export function wrapUringEnterForTesting(wrap: ((enter: UringEnter) => UringEnter) | null): void {
  wrapEnter = wrap;
  reader = undefined;
}

/**
 * Reads until `into` is full or the file ends (as {@link preadFull}), nonblocking: through the
 * next io_uring batch where there is one, else a plain pread.
 */
export function batchedPreadFull(
  fd: number,
  into: Uint8Array,
  offsetBytes: number,
): Promise<number> {
  const uring = into.length > 0 && into.length <= URING_READ_BYTES_MAX ? uringReader() : null;
  if (uring === null) return preadFull(fd, into, offsetBytes);
  return uring.read(fd, into, offsetBytes);
}
