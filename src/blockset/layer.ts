/**
 * The machinery every layer shares: index checks, the two-phase put, range marshalling and
 * loading, and the walks over the whole stack (refs, INode ids). Each concrete layer (base.ts,
 * crc.ts, replication.ts) keeps only its own per-index metadata and says how to plan a put, read a
 * block, and encode or decode its content.
 *
 * Invariants:
 * - Every layer of a stack has the same length (asserted on every `length()`); only operations on
 *   the top of a stack keep it so. A sub blockset is for reading: mutating it directly breaks the
 *   layers above, which the assertion then reports.
 * - A put is all-or-nothing in memory: every copy is written to the store first, and the layers
 *   record their metadata only after all writes succeeded, in one synchronous step. Concurrent
 *   puts therefore never leave layers that disagree about an index.
 * - A layer reads its own metadata for an index synchronously when a call starts, so a read that
 *   races with a put sees one consistent version of that index.
 * - `loadRange` checks all content before applying any of it.
 * @module
 */

import {
  assert,
  type BlockRef,
  BLOCKSET_BLOCKS_MAX,
  blockUnavailable,
  crc32,
  ErrorCode,
  type INodeRef,
  invalid,
  isTorusError,
  notExist,
} from "../core/mod.ts";
import type { BlockLayer } from "../models/mod.ts";
import type { BlockCallOptions, BlockStore } from "../storage/mod.ts";
import type { Blockset, LayerKind } from "./blockset.ts";
import type { PackedEntries } from "./packed.ts";
import { addINodeIds, RefAllocator, setRefs } from "./refs.ts";

/** Options of a blockset stack. */
export interface BlocksetOptions {
  /**
   * Called once per copy whose bytes fail the CRC the crc layer recorded (the data is then not
   * returned). The hook for the `torus_blockset_crc_failed_blocks` metric.
   */
  onCrcFailure?: (ref: BlockRef) => void;
}

/** What all layers of one stack share. */
export class StackContext {
  readonly store: BlockStore;
  readonly blockSizeBytes: number;
  readonly allocator: RefAllocator = new RefAllocator();
  readonly #onCrcFailure: ((ref: BlockRef) => void) | undefined;
  #zeroBlockCrc32: number | undefined;

  constructor(store: BlockStore, options: BlocksetOptions) {
    assert(Number.isSafeInteger(store.blockSizeBytes) && store.blockSizeBytes > 0, "block size");
    this.store = store;
    this.blockSizeBytes = store.blockSizeBytes;
    this.#onCrcFailure = options.onCrcFailure;
  }

  /** CRC-32 of an all-zero block: what an unset index holds in a crc layer. */
  get zeroBlockCrc32(): number {
    this.#zeroBlockCrc32 ??= crc32(new Uint8Array(this.blockSizeBytes));
    return this.#zeroBlockCrc32;
  }

  /** Reports a copy that failed its CRC and returns the error to throw. */
  crcFailure(ref: BlockRef, what: string): Error {
    this.#onCrcFailure?.(ref);
    return blockUnavailable(`${what} (${ref}) fails its CRC`);
  }

  /**
   * Reads `ref` from the store, asking the store to check `expectedCrc32` and checking it again
   * here (a store that ignores the option must not leak bad bytes). A missing block is
   * `block_unavailable`: the blockset says it exists, so its absence is a fault, not a `not_exist`.
   */
  async readCopy(
    ref: BlockRef,
    expectedCrc32: number | undefined,
    options: BlockCallOptions | undefined,
  ): Promise<Uint8Array> {
    const callOptions: BlockCallOptions = { ...options };
    if (expectedCrc32 === undefined) delete callOptions.expectedCrc32;
    else callOptions.expectedCrc32 = expectedCrc32;
    let data: Uint8Array;
    try {
      data = await this.store.getBlock(ref, callOptions);
    } catch (error) {
      if (!isTorusError(error, ErrorCode.NotExist)) throw error;
      throw blockUnavailable(`block ${ref} is missing from store ${this.store.name}`, {
        cause: error,
      });
    }
    if (data.length !== this.blockSizeBytes) {
      throw blockUnavailable(`block ${ref} came back with ${data.length} bytes`);
    }
    if (expectedCrc32 !== undefined && crc32(data) !== expectedCrc32) {
      throw this.crcFailure(ref, "block");
    }
    return data;
  }
}

/** What one put writes, and how each layer records it once written. */
export interface PutPlan {
  /** Refs to write the block under. */
  readonly refs: BlockRef[];
  /** Run in order, synchronously, after every write succeeded. */
  readonly commits: (() => void)[];
}

/** Content of one layer, checked and ready to apply. */
export interface PendingLoad {
  /** Number of indexes in the content; undefined when the content does not say (rep=1). */
  readonly count: number | undefined;
  /** Writes the content's `count` indexes at `fromIndex` (growing the layer). */
  apply(fromIndex: number, count: number): void;
}

/** Throws `invalid` unless `value` is an index (a safe integer >= 0). */
export function checkIndexArgument(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalid(`${what} must be a non-negative integer, got ${value}`);
  }
}

/** Base class of base, crc and rep layers. */
export abstract class Layer implements Blockset {
  abstract readonly kind: LayerKind;
  protected readonly context: StackContext;
  protected readonly sub: Layer | null;

  constructor(context: StackContext, sub: Layer | null) {
    this.context = context;
    this.sub = sub;
  }

  /** Number of indexes of this layer's own metadata. */
  protected abstract ownLength(): number;
  /**
   * Allocates this layer's refs for a put of `block` (full size, private) and queues how to record
   * them.
   */
  protected abstract planOwnPut(
    inode: INodeRef,
    index: number,
    block: Uint8Array,
    plan: PutPlan,
  ): void;
  /** Resizes this layer's own metadata. */
  protected abstract truncateOwn(length: number): void;
  /** Unsets this layer's own metadata in [from, to). */
  protected abstract trimOwn(fromIndex: number, toIndex: number): void;
  /** This layer's ref tables (primaries, extra copies), for walks over every ref. */
  protected abstract ownRefTables(): readonly PackedEntries[];
  /** This layer's content for indexes [from, to). */
  protected abstract encodeOwn(fromIndex: number, toIndex: number): Uint8Array;
  /** Checks content of this layer's kind; throws `invalid`. */
  protected abstract decodeOwn(content: Uint8Array): PendingLoad;
  /** See {@link Blockset.getBlock}. */
  abstract getBlock(index: number, options?: BlockCallOptions): Promise<Uint8Array>;
  /** The ref of the primary copy of `index` (BlockRef.ZERO when unset). */
  primaryRef(index: number): BlockRef {
    assert(this.sub !== null, "base layer must override primaryRef");
    return this.sub.primaryRef(index);
  }

  /** The CRC recorded for `index` by this layer or one below, if any. */
  expectedCrc32(index: number): number | undefined {
    return this.sub?.expectedCrc32(index);
  }

  length(): number {
    const length = this.ownLength();
    assert(this.sub === null || this.sub.length() === length, "blockset layers disagree on length");
    return length;
  }

  subBlockset(): Blockset | null {
    return this.sub;
  }

  /** This layer and every layer below it, top first. */
  protected stack(): Layer[] {
    return this.sub === null ? [this] : [this, ...this.sub.stack()];
  }

  /** Throws `invalid` for a bad index and `not_exist` for one at or beyond the length. */
  protected checkReadIndex(index: number): void {
    checkIndexArgument(index, "block index");
    const length = this.length();
    if (index >= length) throw notExist(`block index ${index} is beyond the length ${length}`);
  }

  async putBlock(
    inode: INodeRef,
    index: number,
    data: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    checkIndexArgument(index, "block index");
    this.#checkPutIndex(index);
    const blockSize = this.context.blockSizeBytes;
    if (data.length > blockSize) {
      throw invalid(`block of ${data.length} bytes exceeds the block size ${blockSize}`);
    }
    // One private, zero-padded copy: the caller may reuse its buffer as soon as we return.
    const block = new Uint8Array(blockSize);
    block.set(data);
    const plan: PutPlan = { refs: [], commits: [] };
    for (const layer of this.stack()) layer.planOwnPut(inode, index, block, plan);
    const store = this.context.store;
    await Promise.all(plan.refs.map((ref) => store.putBlock(ref, block, options)));
    // A truncate may have run while the writes were in flight.
    this.#checkPutIndex(index);
    for (const commit of plan.commits) commit();
  }

  #checkPutIndex(index: number): void {
    const length = this.length();
    if (index > length) {
      throw invalid(`block index ${index} is beyond the length ${length} (append at ${length})`);
    }
    if (index >= BLOCKSET_BLOCKS_MAX) {
      throw invalid(`block index ${index} exceeds the limit of ${BLOCKSET_BLOCKS_MAX} blocks`);
    }
  }

  truncate(length: number): void {
    checkIndexArgument(length, "blockset length");
    if (length > BLOCKSET_BLOCKS_MAX) {
      throw invalid(`blockset length ${length} exceeds the limit of ${BLOCKSET_BLOCKS_MAX}`);
    }
    for (const layer of this.stack()) layer.truncateOwn(length);
  }

  trim(fromIndex: number, toIndex: number): void {
    this.#checkRange(fromIndex, toIndex, "trim");
    for (const layer of this.stack()) layer.trimOwn(fromIndex, toIndex);
  }

  #checkRange(fromIndex: number, toIndex: number, what: string): void {
    checkIndexArgument(fromIndex, `${what} start`);
    checkIndexArgument(toIndex, `${what} end`);
    const length = this.length();
    if (fromIndex > toIndex || toIndex > length) {
      throw invalid(`${what} range [${fromIndex}, ${toIndex}) is not within [0, ${length})`);
    }
  }

  getAllBlockRefs(): BlockRef[] {
    return this.stack().flatMap((layer) =>
      layer.ownRefTables().flatMap((table) => setRefs(table.viewAll()))
    );
  }

  getLiveINodes(): Set<bigint> {
    const inodes = new Set<bigint>();
    for (const layer of this.stack()) {
      for (const table of layer.ownRefTables()) addINodeIds(table.viewAll(), inodes);
    }
    return inodes;
  }

  marshal(): BlockLayer[] {
    return this.marshalRange(0, this.length());
  }

  marshalRange(fromIndex: number, toIndex: number): BlockLayer[] {
    this.#checkRange(fromIndex, toIndex, "marshal");
    return this.stack().map((layer) => ({
      type: layer.kind,
      content: layer.encodeOwn(fromIndex, toIndex),
    }));
  }

  loadRange(fromIndex: number, layers: readonly BlockLayer[]): void {
    checkIndexArgument(fromIndex, "load start");
    const stack = this.stack();
    const kinds = stack.map((layer) => layer.kind).join(",");
    const given = layers.map((layer) => layer.type).join(",");
    if (kinds !== given) {
      throw invalid(`block layers of kinds [${given}] do not match this blockset's [${kinds}]`);
    }
    const pending = stack.map((layer, i) => layer.decodeOwn(layers[i]!.content));
    const count = pending[pending.length - 1]!.count;
    assert(count !== undefined, "base layer content always has a count");
    const mismatch = pending.findIndex((load) => load.count !== undefined && load.count !== count);
    if (mismatch >= 0) {
      throw invalid(
        `block layer ${mismatch} holds ${pending[mismatch]!.count} indexes, base holds ${count}`,
      );
    }
    if (fromIndex + count > BLOCKSET_BLOCKS_MAX) {
      throw invalid(`loading ${count} blocks at ${fromIndex} exceeds ${BLOCKSET_BLOCKS_MAX}`);
    }
    for (const load of pending) load.apply(fromIndex, count);
  }
}
