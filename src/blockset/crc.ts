/**
 * The crc layer: a CRC-32 (IEEE) of every block, recorded on put (over the full, zero-padded
 * block) and checked on every read. The expected CRC travels down with the read
 * (`expectedCrc32`), so the store or the distributor can reject a bad copy and try another
 * replica; this layer checks again before returning, so bad bytes are never returned as data
 * (`block_unavailable` instead). Content: one little-endian uint32 per index; an unset index holds
 * the CRC of the all-zero block.
 * @module
 */

import { crc32, type INodeRef, invalid } from "../core/mod.ts";
import type { BlockCallOptions } from "../storage/mod.ts";
import { LayerKind } from "./blockset.ts";
import { Layer, type PendingLoad, type PutPlan, type StackContext } from "./layer.ts";
import { PackedEntries } from "./packed.ts";

const CRC_BYTES = 4;

function crcEntry(value: number): Uint8Array {
  const entry = new Uint8Array(CRC_BYTES);
  new DataView(entry.buffer).setUint32(0, value, true);
  return entry;
}

/** Checks each block against its recorded CRC. */
export class CrcLayer extends Layer {
  readonly kind = LayerKind.Crc;
  readonly #crcs: PackedEntries;

  constructor(context: StackContext, sub: Layer) {
    super(context, sub);
    this.#crcs = new PackedEntries(crcEntry(context.zeroBlockCrc32));
  }

  #crcAt(index: number): number {
    const entry = this.#crcs.view(index);
    return new DataView(entry.buffer, entry.byteOffset, CRC_BYTES).getUint32(0, true);
  }

  protected ownLength(): number {
    return this.#crcs.length;
  }

  override expectedCrc32(index: number): number | undefined {
    return this.#crcAt(index);
  }

  async getBlock(index: number, options?: BlockCallOptions): Promise<Uint8Array> {
    this.checkReadIndex(index);
    const expected = this.#crcAt(index);
    const ref = this.primaryRef(index);
    const data = await this.sub!.getBlock(index, { ...options, expectedCrc32: expected });
    // The layers below already checked; this check is the one that must never be skipped.
    if (crc32(data) !== expected) throw this.context.crcFailure(ref, `block ${index}`);
    return data;
  }

  protected planOwnPut(_inode: INodeRef, index: number, block: Uint8Array, plan: PutPlan): void {
    const entry = crcEntry(crc32(block));
    plan.commits.push(() => this.#crcs.set(index, entry));
  }

  protected truncateOwn(length: number): void {
    this.#crcs.resize(length);
  }

  protected trimOwn(fromIndex: number, toIndex: number): void {
    this.#crcs.unset(fromIndex, toIndex);
  }

  protected ownRefTables(): readonly PackedEntries[] {
    return [];
  }

  protected encodeOwn(fromIndex: number, toIndex: number): Uint8Array {
    return this.#crcs.copyRange(fromIndex, toIndex);
  }

  protected decodeOwn(content: Uint8Array): PendingLoad {
    if (content.length % CRC_BYTES !== 0) {
      throw invalid(`crc layer: ${content.length} bytes is not a whole number of 4-byte CRCs`);
    }
    return {
      count: content.length / CRC_BYTES,
      apply: (fromIndex) => this.#crcs.writeRange(fromIndex, content),
    };
  }
}
