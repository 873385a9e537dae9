/**
 * The BlockStore boundary: a set of immutable, fixed-size blocks keyed by BlockRef.
 * Implementations: memory.ts (in-process), file.ts (slots in a data file + a persistent index).
 * The distributor (src/distributor) is also a BlockStore, over the whole cluster.
 *
 * Contract (checked by storage_contract.ts against every implementation):
 * - `putBlock` copies the caller's bytes; `getBlock` returns a fresh buffer. Nothing handed in or
 *   out aliases internal memory, so a caller mutating a buffer never changes a stored block.
 * - Blocks are exactly `blockSizeBytes`; shorter input is zero-padded, longer is `invalid`.
 * - Putting an existing ref replaces its bytes atomically (repair of a bad copy): a reader sees
 *   the old or the new block, never a mix.
 * - Missing refs: `getBlock` and `deleteBlock` throw `not_exist`; `hasBlock` answers false.
 * - A stored block that fails its checksum, or `expectedCrc32`, is never returned:
 *   `block_unavailable`.
 * - Capacity is `totalBlocks()`; a put of a new ref beyond it throws `out_of_space`.
 * - After `flush()` resolves, every put and delete before it survives a crash of the process.
 * - After `close()`, every call throws `closed`.
 *
 * Range operations (the small-I/O path of block volumes, docs/adr/0004-block-volume-write-path.md):
 * - `readAt` fills a caller's buffer from a byte range of a block, reading only the sectors it
 *   covers and verifying each against the checksum written with it: a damaged sector makes only
 *   the reads that cover it fail (`block_unavailable`), never the rest of the block.
 * - `writeAt` and `zeroAt` change a byte range of a block in place, creating the block (all
 *   zeros) when the ref is absent (`out_of_space` when that needs room there is not). With
 *   `fresh` the block is first reset to zeros even if the ref holds bytes: the volume layer
 *   allocates a block anew that way, whatever an abandoned earlier life of it left behind.
 *   With `mustExist` (and not `fresh`) a range write to an absent ref throws `not_exist` and
 *   stores nothing: a holder that lacks the block refuses instead of making zeros around the
 *   range (the distributor then copies the whole block there first).
 * - `putBlock` with `ifAbsent` throws `exists` and changes nothing when the ref is stored (the
 *   rebalancer's copy never overwrites bytes a writer put there since). Like every change, it is
 *   decided in call order with the other calls of the ref: a put or range write of the ref
 *   called before it counts as stored, a delete called before it as absent.
 * - Range writes and whole-block puts and deletes of one ref take effect in call order. A range
 *   write resolves once a read issued after it returns its bytes.
 * - After a crash, a range write not covered by a flush reads back, per sector, as its old or its
 *   new bytes: never a mix inside a sector, never garbage, never a checksum error.
 * - Every operation above is one that can be sent to the R holders of a block (the cluster's
 *   distributor is a BlockStore too).
 * @module
 */

import type { BlockRef } from "../core/mod.ts";

/** Per-call options. */
export interface BlockCallOptions {
  /** Aborts a call that waits (network stores); local stores check it before starting. */
  signal?: AbortSignal;
  /** Deadline of a call that waits on the network (peer stores); local stores ignore it. */
  timeoutMs?: number;
  /**
   * getBlock only: the CRC-32 (IEEE) the caller expects (the blockset's crc layer knows it).
   * A copy that does not match is never returned: a store with one copy throws
   * `block_unavailable`; the distributor tries the next replica and repairs the bad one.
   */
  expectedCrc32?: number;
  /**
   * Changes only: the writer's fencing token (its volume lock's, growing with every acquisition).
   * A store that fences its volume's writes (a cluster's data nodes) refuses a token lower than
   * one it has accepted for that volume, with `locked`; 0 or absent is no token (internal copies:
   * rebalance, repair). Local stores ignore it.
   */
  fenceToken?: number;
  /**
   * Changes only: the version of the ring the sender placed this change by (the distributor's).
   * A cluster node that knows a newer ring refuses it with `compare_failed`; 0 or absent is no
   * version (local calls, the scrubber's repairs). Local stores ignore it.
   */
  ringVersion?: number;
  /**
   * Changes only: the caller never changes the bytes it passes with this call, now or later (the
   * distributor's own copy of a write). A store that would copy them, because it sends them after
   * the call returned (a peer store's queued frame outlives a call that timed out), may keep
   * them as they are. Absent: the caller may change its buffer once the call returns.
   */
  unchangingData?: boolean;
}

/** Options of range writes. */
export interface RangeWriteOptions extends BlockCallOptions {
  /** Reset the block to zeros before this write, even when the ref holds bytes. */
  fresh?: boolean;
  /**
   * Refuse with `not_exist`, storing nothing, when the ref is absent, instead of creating the
   * block as zeros. `fresh` wins: a fresh write creates the block either way.
   */
  mustExist?: boolean;
}

/** Options of whole-block puts. */
export interface PutOptions extends BlockCallOptions {
  /** Refuse with `exists`, changing nothing, when the ref is already stored. */
  ifAbsent?: boolean;
}

/** A store of fixed-size blocks, whole or by byte range. */
export interface BlockStore {
  /** Implementation name: `memory`, `file`, `distributor`. */
  readonly kind: string;
  /** Store name (`current` for a node's main store), used in metric labels. */
  readonly name: string;
  /** Size of every block. */
  readonly blockSizeBytes: number;

  /** Returns a copy of the block. */
  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array>;
  /**
   * Stores a copy of `data` under `ref`, replacing any previous bytes of that ref (unless
   * `ifAbsent`: then `exists` when the ref is stored).
   */
  putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void>;
  /** Whether `ref` is stored (without reading or verifying its bytes). */
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean>;
  /** Fills `into` with `into.length` bytes of `ref` at `offsetBytes` (within the block). */
  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void>;
  /**
   * Optional: `readAt` completed now, without waiting, when the bytes are in memory. True when
   * `into` holds exactly what `readAt` would have returned (verified the same way); false when it
   * could not be done without waiting or failed in any way, with `into` in any state, nothing
   * counted and no error: the caller then calls `readAt`, which waits and reports. It saves a
   * cached read the promises and event-loop turns of the asynchronous path (the small-read path
   * of block volumes, ADR 0004). A wrapper offers it only when it would pass reads through
   * unchanged (ForwardingStore does not, so a subclass that changes `readAt` is never bypassed).
   */
  readCachedAt?(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean;
  /**
   * Writes `data` into `ref` at `offsetBytes`, creating the block when absent (unless
   * `mustExist`: then `not_exist`).
   */
  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void>;
  /**
   * Zeroes `lengthBytes` of `ref` at `offsetBytes`, creating the block when absent (unless
   * `mustExist`: then `not_exist`).
   */
  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void>;
  /** Removes `ref`; its slot becomes free. */
  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void>;
  /**
   * Every stored ref, as of the start of the iteration (a snapshot: puts and deletes during the
   * iteration do not disturb it).
   */
  blockRefs(): AsyncIterable<BlockRef>;
  /** Blocks stored now. */
  usedBlocks(): number;
  /** Capacity in blocks. */
  totalBlocks(): number;
  /** Makes every completed put and delete durable. */
  flush(): Promise<void>;
  /** Flushes and releases the store. Idempotent. */
  close(): Promise<void>;
}
