/**
 * A memory BlockStore that can "lose power": it keeps the state as of the last completed flush
 * and the operations since, and {@link CrashableStore.crash} returns a store holding the durable
 * state plus a random subset of the later operations (each range write applied or not per
 * sector, puts and deletes applied or not), as a disk could after a power cut. It promises no
 * order between unflushed operations, so a layer that passes with it relies only on flushes.
 * @module
 */

import type { BlockRef, Random } from "../../src/core/mod.ts";
import {
  type BlockCallOptions,
  type BlockStore,
  MemoryBlockStore,
  type RangeWriteOptions,
} from "../../src/storage/mod.ts";

type Op =
  | { kind: "put"; ref: BlockRef; data: Uint8Array }
  | { kind: "delete"; ref: BlockRef }
  | {
    kind: "range";
    ref: BlockRef;
    offset: number;
    data: Uint8Array | null;
    length: number;
    fresh: boolean;
  };

/** See the module doc. */
export class CrashableStore implements BlockStore {
  readonly kind = "memory";
  readonly name = "crashable";
  readonly blockSizeBytes: number;
  readonly #live: MemoryBlockStore;
  readonly #totalBlocks: number;
  /** Durable blocks: ref key → (ref, bytes). */
  #durable = new Map<string, { ref: BlockRef; data: Uint8Array }>();
  #pending: Op[] = [];
  /** Operations counted so far (for tests that crash after N operations). */
  opCount = 0;

  /** Delays every operation by a random number of event-loop turns, to vary interleavings. */
  readonly #delays: Random | null;

  constructor(options: { blockSizeBytes: number; totalBlocks: number; delays?: Random }) {
    this.blockSizeBytes = options.blockSizeBytes;
    this.#totalBlocks = options.totalBlocks;
    this.#delays = options.delays ?? null;
    this.#live = new MemoryBlockStore(options);
  }

  async #delay(): Promise<void> {
    if (this.#delays === null) return;
    for (let turns = this.#delays.int(3); turns > 0; turns--) {
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
  }

  /** Operations of one ref still take effect in call order, as the contract says. */
  readonly #chains = new Map<string, Promise<unknown>>();

  #inOrder<T>(ref: BlockRef, body: () => Promise<T>): Promise<T> {
    const previous = this.#chains.get(ref.key) ?? Promise.resolve();
    const run = previous.catch(() => {}).then(async () => {
      await this.#delay();
      return await body();
    });
    const tail = run.catch(() => {});
    this.#chains.set(ref.key, tail);
    void tail.then(() => {
      if (this.#chains.get(ref.key) === tail) this.#chains.delete(ref.key);
    });
    return run;
  }

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.#inOrder(ref, () => this.#live.getBlock(ref, options));
  }
  readAt(
    ref: BlockRef,
    offset: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.#inOrder(ref, () => this.#live.readAt(ref, offset, into, options));
  }
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.#live.hasBlock(ref, options);
  }
  blockRefs(): AsyncIterable<BlockRef> {
    return this.#live.blockRefs();
  }
  usedBlocks(): number {
    return this.#live.usedBlocks();
  }
  totalBlocks(): number {
    return this.#live.totalBlocks();
  }

  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    const copy = new Uint8Array(this.blockSizeBytes);
    copy.set(data);
    return this.#inOrder(ref, async () => {
      await this.#live.putBlock(ref, copy, options);
      this.#noteOp({ kind: "put", ref, data: copy });
    });
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.#inOrder(ref, async () => {
      await this.#live.deleteBlock(ref, options);
      this.#noteOp({ kind: "delete", ref });
    });
  }

  writeAt(
    ref: BlockRef,
    offset: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    const copy = data.slice();
    return this.#inOrder(ref, async () => {
      await this.#live.writeAt(ref, offset, copy, options);
      const fresh = options?.fresh ?? false;
      this.#noteOp({ kind: "range", ref, offset, data: copy, length: copy.length, fresh });
    });
  }

  zeroAt(
    ref: BlockRef,
    offset: number,
    length: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#inOrder(ref, async () => {
      await this.#live.zeroAt(ref, offset, length, options);
      const fresh = options?.fresh ?? false;
      this.#noteOp({ kind: "range", ref, offset, data: null, length, fresh });
    });
  }

  async flush(): Promise<void> {
    // Operations that completed before the flush started are covered by it.
    const covered = this.#pending;
    this.#pending = [];
    await this.#delay();
    if (this.flushGate !== null) await this.flushGate;
    await this.#live.flush();
    for (const op of covered) applyOp(this.#durable, op, this.blockSizeBytes, null);
  }

  close(): Promise<void> {
    return this.#live.close();
  }

  /**
   * What the disk would hold after a power cut now: the durable state plus a random subset of the
   * operations since the last flush (range writes kept or dropped per 4 KiB sector). Synchronous,
   * so a test can take it in the middle of any operation (see {@link onOperation}).
   */
  crashState(random: Random): CrashState {
    const state = this.#durableCopy();
    for (const op of this.#pending) {
      if (op.kind !== "range" && random.chance(0.5)) continue;
      applyOp(state, op, this.blockSizeBytes, random);
    }
    return state;
  }

  /**
   * A power cut that keeps exactly the unflushed operations on refs `keep` accepts (an
   * adversarial cut: e.g. every map write survives and no data write does).
   */
  crashStateKeeping(keep: (ref: BlockRef) => boolean): CrashState {
    const state = this.#durableCopy();
    for (const op of this.#pending) {
      if (keep(op.ref)) applyOp(state, op, this.blockSizeBytes, null);
    }
    return state;
  }

  #durableCopy(): CrashState {
    return new Map(
      [...this.#durable].map(([key, value]) => [key, { ref: value.ref, data: value.data.slice() }]),
    );
  }

  /** While set, every flush waits for it before it completes (tests hold a flush open). */
  flushGate: Promise<void> | null = null;

  /** A store holding `state` as durable (the machine after the power came back). */
  static async restore(
    state: CrashState,
    options: { blockSizeBytes: number; totalBlocks: number },
  ): Promise<CrashableStore> {
    const store = new CrashableStore(options);
    for (const { ref, data } of state.values()) {
      await store.#live.putBlock(ref, data);
      store.#durable.set(ref.key, { ref, data: data.slice() });
    }
    return store;
  }

  /** Called after every completed write operation (puts, deletes, range writes). */
  onOperation: ((ref: BlockRef) => void) | null = null;

  #noteOp(op: Op): void {
    this.opCount++;
    this.#pending.push(op);
    this.onOperation?.(op.ref);
  }
}

/** Blocks on "disk" after a simulated power cut. */
export type CrashState = Map<string, { ref: BlockRef; data: Uint8Array }>;

const SECTOR_BYTES = 4096;

/** Applies `op` to `state`; with `random`, a range write lands per sector or not at all. */
function applyOp(
  state: CrashState,
  op: Op,
  blockSizeBytes: number,
  random: Random | null,
): void {
  if (op.kind === "put") {
    state.set(op.ref.key, { ref: op.ref, data: op.data.slice() });
    return;
  }
  if (op.kind === "delete") {
    state.delete(op.ref.key);
    return;
  }
  let entry = state.get(op.ref.key);
  if (entry === undefined) {
    // A range write that created its block: after a crash the block exists or not.
    if (random !== null && random.chance(0.3)) return;
    entry = { ref: op.ref, data: new Uint8Array(blockSizeBytes) };
    state.set(op.ref.key, entry);
  } else if (op.fresh) {
    if (random !== null && random.chance(0.3)) return;
    entry.data.fill(0);
  }
  const end = op.offset + op.length;
  for (
    let sector = Math.floor(op.offset / SECTOR_BYTES) * SECTOR_BYTES;
    sector < end;
    sector += SECTOR_BYTES
  ) {
    if (random !== null && random.chance(0.5)) continue;
    const from = Math.max(sector, op.offset);
    const to = Math.min(sector + SECTOR_BYTES, end);
    if (op.data === null) entry.data.fill(0, from, to);
    else entry.data.set(op.data.subarray(from - op.offset, to - op.offset), from);
  }
}
