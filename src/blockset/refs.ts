/**
 * Tables of packed 24-byte BlockRefs (the content of base and rep layers) and the allocator that
 * names new blocks.
 *
 * Uniqueness: a new ref is (write epoch, index) with the index taken from a counter that only
 * grows within one blockset instance (shared by every layer of the stack, so extra copies never
 * collide with primaries). When the instance starts writing an epoch that refs it loaded may
 * already use, and whenever it loads refs of the epoch it is writing, the counter jumps past the
 * highest index of that epoch found. What no instance can see is a ref of the same epoch that
 * another instance wrote and then dropped (trim, truncate) before marshalling: an epoch must
 * therefore be written by one instance (the file layer takes a fresh INode id per epoch).
 * @module
 */

import {
  assert,
  BLOCK_REF_BYTES,
  BlockRef,
  type INodeRef,
  invalid,
  U64_MAX,
  VOLUME_ID_MAX,
} from "../core/mod.ts";
import type { PackedEntries } from "./packed.ts";

/** The unset (all-zero) packed ref. */
export const UNSET_REF: Uint8Array = new Uint8Array(BLOCK_REF_BYTES);

const volumeFieldHighMask = 0xffffff00; // bits 40-63 of the volume field in its high word

function isZeroEntry(view: DataView, offset: number): boolean {
  for (let i = 0; i < BLOCK_REF_BYTES; i += 4) {
    if (view.getUint32(offset + i, true) !== 0) return false;
  }
  return true;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Checks a packed ref table from marshalled content: whole entries, and every set ref a data
 * block (type 0). Returns the largest INode id of a set ref (0n if none). Throws `invalid`.
 */
export function checkRefTable(bytes: Uint8Array, what: string): bigint {
  if (bytes.length % BLOCK_REF_BYTES !== 0) {
    throw invalid(`${what}: ${bytes.length} bytes is not a whole number of 24-byte refs`);
  }
  const view = viewOf(bytes);
  let maxInode = 0n;
  for (let offset = 0; offset < bytes.length; offset += BLOCK_REF_BYTES) {
    if ((view.getUint32(offset + 4, true) & volumeFieldHighMask) !== 0) {
      throw invalid(`${what}: ref ${offset / BLOCK_REF_BYTES} is not a data block ref`);
    }
    const inode = view.getBigUint64(offset + 8, true);
    if (inode > maxInode) maxInode = inode;
  }
  return maxInode;
}

/** The highest index of a set ref of `epoch` in a packed table, or 0n if it holds none. */
export function maxIndexOfEpoch(bytes: Uint8Array, epoch: INodeRef): bigint {
  const view = viewOf(bytes);
  const volumeLow = epoch.volume % 2 ** 32;
  const volumeHigh = Math.floor(epoch.volume / 2 ** 32);
  let maxIndex = 0n;
  for (let offset = 0; offset < bytes.length; offset += BLOCK_REF_BYTES) {
    if (view.getUint32(offset, true) !== volumeLow) continue;
    if (view.getUint32(offset + 4, true) !== volumeHigh) continue;
    if (view.getBigUint64(offset + 8, true) !== epoch.inode) continue;
    if (isZeroEntry(view, offset)) continue;
    const index = view.getBigUint64(offset + 16, true);
    if (index > maxIndex) maxIndex = index;
  }
  return maxIndex;
}

/** Every set ref of a packed table, decoded. */
export function setRefs(bytes: Uint8Array): BlockRef[] {
  const view = viewOf(bytes);
  const refs: BlockRef[] = [];
  for (let offset = 0; offset < bytes.length; offset += BLOCK_REF_BYTES) {
    if (!isZeroEntry(view, offset)) refs.push(BlockRef.fromBytes(bytes, offset));
  }
  return refs;
}

/** Adds the INode id of every set ref of a packed table to `into`. */
export function addINodeIds(bytes: Uint8Array, into: Set<bigint>): void {
  const view = viewOf(bytes);
  for (let offset = 0; offset < bytes.length; offset += BLOCK_REF_BYTES) {
    if (!isZeroEntry(view, offset)) into.add(view.getBigUint64(offset + 8, true));
  }
}

/** Names new blocks for one blockset stack; see the module doc for the uniqueness argument. */
export class RefAllocator {
  readonly #tables: PackedEntries[] = [];
  #nextIndex = 1n;
  #epoch: INodeRef | null = null;
  /** Largest INode id among refs loaded from content (refs allocated here are not counted). */
  #maxLoadedInode = 0n;

  /** Adds a ref table to scan when the epoch changes. */
  register(table: PackedEntries): void {
    assert(table.entryBytes === BLOCK_REF_BYTES, "ref allocator: not a ref table");
    this.#tables.push(table);
  }

  /** Accounts for refs loaded from content, whose largest INode id is `maxInode`. */
  observe(bytes: Uint8Array, maxInode: bigint): void {
    if (maxInode > this.#maxLoadedInode) this.#maxLoadedInode = maxInode;
    if (this.#epoch !== null) this.#skipPast(maxIndexOfEpoch(bytes, this.#epoch));
  }

  /** A ref never handed out before by this stack and not present in it, in epoch `inode`. */
  next(inode: INodeRef): BlockRef {
    assert(inode.volume <= VOLUME_ID_MAX, "ref allocator: bad volume");
    if (this.#epoch === null || !this.#epoch.equals(inode)) {
      this.#epoch = inode;
      // INode ids only grow, so a fresh epoch is above every loaded id and needs no scan.
      if (inode.inode <= this.#maxLoadedInode) {
        for (const table of this.#tables) this.#skipPast(maxIndexOfEpoch(table.viewAll(), inode));
      }
    }
    if (this.#nextIndex > U64_MAX) throw invalid(`block indexes of ${inode} are exhausted`);
    const ref = inode.blockRef(this.#nextIndex);
    this.#nextIndex++;
    return ref;
  }

  #skipPast(index: bigint): void {
    if (index >= this.#nextIndex) this.#nextIndex = index + 1n;
  }
}
