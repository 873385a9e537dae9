/**
 * Counters a block store keeps about its own work, read by the node's metrics (`/metrics`,
 * `torus_storage_*`). They are plain numbers bumped on the hot path (no allocation); a reader
 * takes them as they are at that moment.
 *
 * What counts: an operation that the store started and finished. A call refused before it
 * started (a closed or failed store, a range outside the block) counts nowhere; a get or range
 * read of a missing ref is not a failure either (the caller asked for nothing stored).
 * @module
 */

import type { TorusError } from "../core/mod.ts";
import type { BlockStore } from "./block_store.ts";

/** A block store that reports its work and whether it failed (the file engine). */
export interface MonitoredBlockStore extends BlockStore {
  readonly stats: BlockStoreStats;
  /** Why the store failed (it refuses every call from then on), or null while it works. */
  readonly failure: TorusError | null;
}

/** The counters of {@link newBlockStoreStats}; see the module doc. */
export interface BlockStoreStats {
  /** Whole-block gets and range reads that returned their bytes. */
  readBlocks: number;
  /** Bytes those reads returned. */
  readBytes: number;
  /** Gets and range reads that failed (an unreadable copy, a checksum mismatch, an I/O error). */
  failedBlocks: number;
  /** Whole-block puts, range writes and zeroings that took effect. */
  writtenBlocks: number;
  /** Bytes those writes covered (a zeroing counts its length). */
  writtenBytes: number;
  /** Puts, range writes and zeroings that failed (out of space, an I/O error). */
  failedWrittenBlocks: number;
  /** Blocks deleted. */
  deletedBlocks: number;
  /** Flushes that completed (asked for, or started by the store on its own). */
  flushes: number;
}

/** Zeroed counters. */
export function newBlockStoreStats(): BlockStoreStats {
  return {
    readBlocks: 0,
    readBytes: 0,
    failedBlocks: 0,
    writtenBlocks: 0,
    writtenBytes: 0,
    failedWrittenBlocks: 0,
    deletedBlocks: 0,
    flushes: 0,
  };
}
