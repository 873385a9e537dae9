/**
 * Block and INode identities. A BlockRef names one immutable block: 24 bytes little-endian,
 * `[0:8]` the volume field (bits 0-39 volume id, bits 40-63 block type), `[8:16]` the INode id,
 * `[16:24]` the index. An INodeRef is the first 16 bytes of that layout with type 0.
 * 64-bit fields are bigint so arithmetic is exact; the 40-bit volume id fits a safe integer.
 * @module
 */

import { assert } from "./assert.ts";
import { invalid } from "./errors.ts";

/** Largest volume id: 40 bits. */
export const VOLUME_ID_MAX = 2 ** 40 - 1;
/** Largest block type: 24 bits. */
export const BLOCK_TYPE_MAX = 2 ** 24 - 1;
/** Largest INode id and index: unsigned 64 bits. */
export const U64_MAX = (1n << 64n) - 1n;

/** Byte length of the binary BlockRef. */
export const BLOCK_REF_BYTES = 24;
/** Byte length of the binary INodeRef. */
export const INODE_REF_BYTES = 16;

/** Block types stored in the top 24 bits of the volume field. */
export const BlockType = {
  /** Volume data. */
  Data: 0,
  /** A chunk of a serialized INode; index 0 is a block volume's root (src/block/volume_format.ts). */
  INode: 1,
  /** A chunk of a block volume's block map (src/block/volume_format.ts). */
  Map: 2,
} as const;
export type BlockType = typeof BlockType[keyof typeof BlockType];

/** Checks and returns a volume id (0 ..= 2^40-1). */
export function checkVolumeId(volume: number): number {
  if (!Number.isSafeInteger(volume) || volume < 0 || volume > VOLUME_ID_MAX) {
    throw invalid(`volume id out of range: ${volume}`);
  }
  return volume;
}

/** Checks and returns an unsigned 64-bit id. */
export function checkU64(value: bigint, what: string): bigint {
  if (typeof value !== "bigint" || value < 0n || value > U64_MAX) {
    throw invalid(`${what} out of range: ${String(value)}`);
  }
  return value;
}

function checkBlockType(type: number): number {
  if (!Number.isSafeInteger(type) || type < 0 || type > BLOCK_TYPE_MAX) {
    throw invalid(`block type out of range: ${type}`);
  }
  return type;
}

function toBigint(value: bigint | number, what: string): bigint {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw invalid(`${what} is not an exact integer: ${value}`);
    return BigInt(value);
  }
  return value;
}

/** Identity of one version of a file's INode: (volume, INode id). */
export class INodeRef {
  readonly volume: number;
  readonly inode: bigint;

  constructor(volume: number, inode: bigint | number) {
    this.volume = checkVolumeId(volume);
    this.inode = checkU64(toBigint(inode, "inode id"), "inode id");
  }

  /** 16 bytes: volume LE, INode LE. */
  toBytes(): Uint8Array {
    const bytes = new Uint8Array(INODE_REF_BYTES);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(0, BigInt(this.volume), true);
    view.setBigUint64(8, this.inode, true);
    return bytes;
  }

  /** Decodes 16 bytes; rejects other lengths and volume fields with type bits. */
  static fromBytes(bytes: Uint8Array): INodeRef {
    if (bytes.length !== INODE_REF_BYTES) {
      throw invalid(`INodeRef must be ${INODE_REF_BYTES} bytes, got ${bytes.length}`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const volumeField = view.getBigUint64(0, true);
    if (volumeField > BigInt(VOLUME_ID_MAX)) {
      throw invalid(`INodeRef volume out of range: ${volumeField}`);
    }
    return new INodeRef(Number(volumeField), view.getBigUint64(8, true));
  }

  equals(other: INodeRef): boolean {
    return this.volume === other.volume && this.inode === other.inode;
  }

  /** The BlockRef of block `index` written under this INode. */
  blockRef(index: bigint | number, type: BlockType = BlockType.Data): BlockRef {
    return new BlockRef({ type, volume: this.volume, inode: this.inode, index });
  }

  /** `vol <hex> inode <hex>`, for logs. */
  toString(): string {
    return `vol ${this.volume.toString(16)} inode ${this.inode.toString(16)}`;
  }
}

/** Fields of a BlockRef; numbers are accepted where they are exact. */
export interface BlockRefFields {
  type?: number;
  volume: number;
  inode: bigint | number;
  index: bigint | number;
}

/** Identity of one immutable block. Value object: compare with `equals` or `key`. */
export class BlockRef {
  readonly type: number;
  readonly volume: number;
  readonly inode: bigint;
  readonly index: bigint;
  #key: string | undefined;

  constructor(fields: BlockRefFields) {
    this.type = checkBlockType(fields.type ?? BlockType.Data);
    this.volume = checkVolumeId(fields.volume);
    this.inode = checkU64(toBigint(fields.inode, "inode id"), "inode id");
    this.index = checkU64(toBigint(fields.index, "block index"), "block index");
  }

  /** The all-zero ref: "no block" (a zero-filled block) in blocksets. Never a stored block. */
  static readonly ZERO: BlockRef = new BlockRef({ volume: 0, inode: 0n, index: 0n });

  /** Whether this is the all-zero ref. */
  isZero(): boolean {
    return this.type === 0 && this.volume === 0 && this.inode === 0n && this.index === 0n;
  }

  /** The raw 64-bit volume field: volume id | type << 40. */
  volumeField(): bigint {
    return BigInt(this.volume) | (BigInt(this.type) << 40n);
  }

  /** The INodeRef this block was written under. */
  inodeRef(): INodeRef {
    return new INodeRef(this.volume, this.inode);
  }

  /** 24 bytes, little-endian (see module doc). */
  toBytes(): Uint8Array {
    const bytes = new Uint8Array(BLOCK_REF_BYTES);
    this.writeTo(bytes, 0);
    return bytes;
  }

  /** Writes the 24-byte form into `target` at `offset` (no allocation, for codecs). */
  writeTo(target: Uint8Array, offset: number): void {
    assert(offset >= 0 && offset + BLOCK_REF_BYTES <= target.length, "BlockRef.writeTo: no room");
    const view = new DataView(target.buffer, target.byteOffset + offset, BLOCK_REF_BYTES);
    view.setBigUint64(0, this.volumeField(), true);
    view.setBigUint64(8, this.inode, true);
    view.setBigUint64(16, this.index, true);
  }

  /** Decodes 24 bytes at `offset` of `bytes`. */
  static fromBytes(bytes: Uint8Array, offset = 0): BlockRef {
    if (!Number.isSafeInteger(offset) || offset < 0 || bytes.length - offset < BLOCK_REF_BYTES) {
      throw invalid(`BlockRef needs ${BLOCK_REF_BYTES} bytes at offset ${offset}`);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset, BLOCK_REF_BYTES);
    return BlockRef.fromVolumeField(
      view.getBigUint64(0, true),
      view.getBigUint64(8, true),
      view.getBigUint64(16, true),
    );
  }

  /** Builds a ref from the raw volume field (as carried in protobuf BlockRef.volume). */
  static fromVolumeField(volumeField: bigint, inode: bigint, index: bigint): BlockRef {
    checkU64(volumeField, "volume field");
    return new BlockRef({
      type: Number(volumeField >> 40n),
      volume: Number(volumeField & BigInt(VOLUME_ID_MAX)),
      inode,
      index,
    });
  }

  /** A compact string unique per ref, for Map and Set keys. */
  get key(): string {
    this.#key ??= `${this.type}.${this.volume}.${this.inode}.${this.index}`;
    return this.#key;
  }

  equals(other: BlockRef): boolean {
    return this.key === other.key;
  }

  /** `br <volume field hex> : <inode hex> : <index hex>`, as the original logged it. */
  toString(): string {
    const hex = (n: bigint) => n.toString(16);
    return `br ${hex(this.volumeField())} : ${hex(this.inode)} : ${hex(this.index)}`;
  }
}
