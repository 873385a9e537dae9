/**
 * Read-only views of a block volume: a sealed generation (a snapshot, the parent of a clone, the
 * source of a dump) as a {@link Device} that refuses writes, and the arithmetic shared with the
 * writable volume (splitting a byte range into per-block pieces, merging extents).
 * @module
 */

import { closed, ErrorCode, invalid, isTorusError, TorusError } from "../core/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import type { Device, DeviceCallOptions, DeviceExtent } from "./device.ts";
import { dataRef, ENTRY_UNWRITTEN, ENTRY_ZERO } from "./volume_format.ts";
import type { VolumeMap } from "./volume_map.ts";

/** One block's share of a byte range. */
export interface BlockPiece {
  readonly index: number;
  readonly offsetInBlock: number;
  readonly lengthBytes: number;
  /** Offset of the piece in the caller's buffer. */
  readonly bufferOffset: number;
}

/** Splits `[offsetBytes, offsetBytes + lengthBytes)` at block boundaries. */
export function* blockPieces(
  offsetBytes: number,
  lengthBytes: number,
  blockSizeBytes: number,
): Generator<BlockPiece> {
  let position = offsetBytes;
  const end = offsetBytes + lengthBytes;
  while (position < end) {
    const index = Math.floor(position / blockSizeBytes);
    const offsetInBlock = position - index * blockSizeBytes;
    const pieceBytes = Math.min(blockSizeBytes - offsetInBlock, end - position);
    yield { index, offsetInBlock, lengthBytes: pieceBytes, bufferOffset: position - offsetBytes };
    position += pieceBytes;
  }
}

/** Joins adjacent extents with the same `zero` (input in order, contiguous). */
export function mergeExtents(extents: readonly DeviceExtent[]): DeviceExtent[] {
  const merged: DeviceExtent[] = [];
  for (const extent of extents) {
    if (extent.lengthBytes === 0) continue;
    const last = merged.at(-1);
    if (last !== undefined && last.zero === extent.zero) {
      merged[merged.length - 1] = { ...last, lengthBytes: last.lengthBytes + extent.lengthBytes };
    } else {
      merged.push(extent);
    }
  }
  return merged;
}

/** Where the never-written blocks of a clone read from: its parent snapshot. */
export interface ReadSource {
  /** Fills `into` from block `index` at `offsetInBlock`; zeros beyond the source's size. */
  readBlockRange(index: number, offsetInBlock: number, into: Uint8Array): Promise<void>;
  /** Like {@link Device.extents}; the range may reach beyond the source's size (zeros there). */
  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]>;
}

/** Options of {@link VolumeReader}. */
export interface VolumeReaderOptions {
  readonly store: BlockStore;
  /** The map of a generation that no longer changes. */
  readonly map: VolumeMap;
  readonly sizeBytes: number;
  readonly parent: ReadSource | null;
  /** Called once by close() (the service forgets the view there). */
  readonly onClose?: () => Promise<void>;
}

/** A sealed generation of a volume, read-only. */
export class VolumeReader implements Device, ReadSource {
  readonly readOnly = true;
  readonly preferredBlockSizeBytes = 4096;
  readonly sizeBytes: number;
  readonly volume: number;
  readonly generation: number;
  readonly #store: BlockStore;
  readonly #map: VolumeMap;
  readonly #blockSizeBytes: number;
  readonly #parent: ReadSource | null;
  readonly #onClose: (() => Promise<void>) | undefined;
  #closed = false;

  constructor(options: VolumeReaderOptions) {
    this.#store = options.store;
    this.#map = options.map;
    this.volume = options.map.volume;
    this.generation = options.map.generation;
    this.sizeBytes = options.sizeBytes;
    this.#blockSizeBytes = options.map.geometry.blockSizeBytes;
    this.#parent = options.parent;
    this.#onClose = options.onClose;
  }

  #check(offsetBytes: number, lengthBytes: number): void {
    if (this.#closed) throw closed(`snapshot of volume ${this.volume} is closed`);
    if (
      !Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) ||
      offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > this.sizeBytes
    ) {
      throw invalid(
        `range of ${lengthBytes} bytes at ${offsetBytes} is outside the volume ` +
          `(${this.sizeBytes} bytes)`,
      );
    }
  }

  async readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    this.#check(offsetBytes, into.length);
    options?.signal?.throwIfAborted();
    const reads: Promise<void>[] = [];
    for (const piece of blockPieces(offsetBytes, into.length, this.#blockSizeBytes)) {
      const target = into.subarray(piece.bufferOffset, piece.bufferOffset + piece.lengthBytes);
      reads.push(this.readBlockRange(piece.index, piece.offsetInBlock, target));
    }
    await Promise.all(reads);
  }

  async readBlockRange(index: number, offsetInBlock: number, into: Uint8Array): Promise<void> {
    const start = index * this.#blockSizeBytes + offsetInBlock;
    // Beyond this generation's size (a clone larger than its parent): zeros.
    const inside = Math.max(0, Math.min(into.length, this.sizeBytes - start));
    if (inside < into.length) into.fill(0, inside);
    if (inside === 0) return;
    const target = into.subarray(0, inside);
    const entry = this.#map.entryIfLoaded(index) ?? await this.#map.entry(index);
    if (entry === ENTRY_ZERO || (entry === ENTRY_UNWRITTEN && this.#parent === null)) {
      target.fill(0);
    } else if (entry === ENTRY_UNWRITTEN) {
      await this.#parent!.readBlockRange(index, offsetInBlock, target);
    } else {
      await this.#store.readAt(dataRef(this.volume, entry, index), offsetInBlock, target);
    }
  }

  async extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    if (this.#closed) throw closed(`snapshot of volume ${this.volume} is closed`);
    const extents: DeviceExtent[] = [];
    for (const piece of blockPieces(offsetBytes, lengthBytes, this.#blockSizeBytes)) {
      const start = piece.index * this.#blockSizeBytes + piece.offsetInBlock;
      if (start >= this.sizeBytes) {
        extents.push({ offsetBytes: start, lengthBytes: piece.lengthBytes, zero: true });
        continue;
      }
      const entry = await this.#map.entry(piece.index);
      if (entry === ENTRY_UNWRITTEN && this.#parent !== null) {
        extents.push(...await this.#parent.extents(start, piece.lengthBytes));
      } else {
        const zero = entry === ENTRY_ZERO || entry === ENTRY_UNWRITTEN;
        extents.push({ offsetBytes: start, lengthBytes: piece.lengthBytes, zero });
      }
    }
    return mergeExtents(extents);
  }

  writeAt(): Promise<void> {
    return Promise.reject(this.#readOnly());
  }

  trim(): Promise<void> {
    return Promise.reject(this.#readOnly());
  }

  writeZeroes(): Promise<void> {
    return Promise.reject(this.#readOnly());
  }

  flush(): Promise<void> {
    if (this.#closed) return Promise.reject(closed(`snapshot of volume ${this.volume} is closed`));
    return Promise.resolve();
  }

  #readOnly(): TorusError {
    if (this.#closed) return closed(`snapshot of volume ${this.volume} is closed`);
    return new TorusError(
      ErrorCode.ReadOnly,
      `volume ${this.volume} generation ${this.generation} is a snapshot: read-only`,
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#onClose?.();
  }
}

/** Whether `error` says a block is missing. */
export function isMissing(error: unknown): boolean {
  return isTorusError(error, ErrorCode.NotExist);
}
