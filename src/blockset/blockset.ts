/**
 * The Blockset boundary: a file seen as an array of blocks, built as a stack of layers
 * (`rep=3,crc,base`: top layer first). The bottom layer (`base`) maps each index to the BlockRef
 * of its data; layers above add per-block information (`crc`: a CRC-32 per block, verified on every
 * read; `rep`: extra copies under other refs). Blocksets read and write blocks through a
 * BlockStore (the distributor in a node, a memory store in unit tests) and hold only metadata.
 *
 * Contract (blockset_contract.ts runs it against every stack):
 * - `putBlock(inode, i, data)` writes `data` under a fresh BlockRef of write epoch `inode` and
 *   records it at index i; i may be < length (overwrite) or == length (append); i > length and
 *   data longer than a block are `invalid`. Shorter data is zero-padded. A put that fails (or
 *   loses a race with a truncate) leaves the blockset as it was.
 * - `getBlock(i)` returns the block at i; an unset (zero) entry reads as a zero-filled block
 *   without a store call; i >= length throws `not_exist`; data failing a layer's check, or a set
 *   block the store no longer has, throws `block_unavailable` (never returned as data).
 * - `truncate(n)` grows with unset entries or cuts; `trim(from, to)` unsets [from, to), which must
 *   lie within [0, length) (`invalid` otherwise), as must the range of `marshalRange`.
 * - `marshal()` into INode.blocks and `unmarshalBlockset` back give an equal blockset.
 *   `marshalRange(from, to)` marshals only indexes [from, to) (the unit of a chunked block map, so
 *   a sync rewrites only the chunks that changed) and `loadRange(from, layers)` puts such a chunk
 *   back at index `from`.
 * @module
 */

import type { BlockRef, INodeRef } from "../core/mod.ts";
import type { BlockCallOptions } from "../storage/mod.ts";
import type { BlockLayer } from "../models/mod.ts";

/** Layer kinds as serialized in BlockLayer.type. */
export const LayerKind = {
  Base: 0,
  Crc: 1,
  Rep: 2,
} as const;
export type LayerKind = typeof LayerKind[keyof typeof LayerKind];

/** One parsed entry of a layer spec: `rep=3` is `{ kind: Rep, options: "3" }`. */
export interface LayerSpec {
  readonly kind: LayerKind;
  readonly options: string;
}

/** A stack of block layers presenting a file as an array of blocks. */
export interface Blockset {
  /** Kind of the top layer. */
  readonly kind: LayerKind;
  /** Number of block indexes. */
  length(): number;
  /** The block at `index` (a fresh buffer). */
  getBlock(index: number, options?: BlockCallOptions): Promise<Uint8Array>;
  /** Writes `data` as the block at `index` under a new ref of write epoch `inode`. */
  putBlock(
    inode: INodeRef,
    index: number,
    data: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void>;
  /** Sets the number of indexes: new ones are unset, cut ones are forgotten. */
  truncate(length: number): void;
  /** Unsets the indexes in [fromIndex, toIndex). */
  trim(fromIndex: number, toIndex: number): void;
  /** Every set BlockRef of every layer (data refs and extra copies), for GC liveness. */
  getAllBlockRefs(): BlockRef[];
  /** INode ids of every set ref, for GC liveness. */
  getLiveINodes(): Set<bigint>;
  /** The layers from this one down to base, for INode.blocks. */
  marshal(): BlockLayer[];
  /** The layers for indexes [fromIndex, toIndex) only (a chunk of a chunked block map). */
  marshalRange(fromIndex: number, toIndex: number): BlockLayer[];
  /**
   * Replaces indexes [fromIndex, fromIndex + n) with the n entries of a `marshalRange` result,
   * growing the blockset if needed. Throws `invalid` if the layer kinds or encodings differ.
   */
  loadRange(fromIndex: number, layers: readonly BlockLayer[]): void;
  /** The layer below this one, or null for base. */
  subBlockset(): Blockset | null;
}
