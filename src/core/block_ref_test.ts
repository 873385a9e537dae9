import assert from "node:assert/strict";
import {
  BLOCK_REF_BYTES,
  BLOCK_TYPE_MAX,
  BlockRef,
  BlockType,
  ErrorCode,
  INODE_REF_BYTES,
  INodeRef,
  isTorusError,
  U64_MAX,
  VOLUME_ID_MAX,
} from "./mod.ts";

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function isInvalid(error: unknown): boolean {
  assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
  return true;
}

Deno.test("BlockRef is 24 bytes little-endian: volume bits 0-39, type bits 40-63, inode, index", () => {
  const ref = new BlockRef({
    type: 0xabcdef,
    volume: 0x01_2345_6789,
    inode: 0x0011_2233_4455_6677n,
    index: 0x8899_aabb_ccdd_eeffn,
  });
  assert.equal(
    hex(ref.toBytes()),
    "8967452301efcdab" + "7766554433221100" + "ffeeddccbbaa9988",
  );
  assert.equal(ref.volumeField(), 0xabcdef_01_2345_6789n);
  assert.equal(ref.toBytes().length, BLOCK_REF_BYTES);
});

Deno.test("INodeRef is 16 bytes little-endian: volume, inode", () => {
  const ref = new INodeRef(0x01_0203_0405, 0x0607_0809_0a0b_0c0dn);
  assert.equal(hex(ref.toBytes()), "0504030201000000" + "0d0c0b0a09080706");
  assert.equal(ref.toBytes().length, INODE_REF_BYTES);
  assert.ok(INodeRef.fromBytes(ref.toBytes()).equals(ref));
});

Deno.test("maximum field values encode and decode exactly", () => {
  const ref = new BlockRef({
    type: BLOCK_TYPE_MAX,
    volume: VOLUME_ID_MAX,
    inode: U64_MAX,
    index: U64_MAX,
  });
  assert.equal(hex(ref.toBytes()), "ff".repeat(24));
  const back = BlockRef.fromBytes(ref.toBytes());
  assert.deepEqual(
    [back.type, back.volume, back.inode, back.index],
    [BLOCK_TYPE_MAX, VOLUME_ID_MAX, U64_MAX, U64_MAX],
  );
  assert.ok(back.equals(ref));
  const inode = new INodeRef(VOLUME_ID_MAX, U64_MAX);
  assert.ok(INodeRef.fromBytes(inode.toBytes()).equals(inode));
});

Deno.test("out-of-range and inexact fields are rejected as invalid", () => {
  const good = { volume: 1, inode: 1n, index: 1n };
  const bad: Record<string, unknown>[] = [
    { volume: VOLUME_ID_MAX + 1 },
    { volume: -1 },
    { volume: 1.5 },
    { volume: Number.NaN },
    { inode: -1n },
    { inode: U64_MAX + 1n },
    { inode: 2 ** 53 },
    { inode: 0.5 },
    { index: U64_MAX + 1n },
    { index: -1 },
    { type: BLOCK_TYPE_MAX + 1 },
    { type: -1 },
    { type: 0.5 },
  ];
  for (const fields of bad) {
    assert.throws(
      () => new BlockRef({ ...good, ...fields } as never),
      isInvalid,
      JSON.stringify(fields, (_, v) => typeof v === "bigint" ? `${v}n` : v),
    );
  }
  assert.throws(() => new INodeRef(VOLUME_ID_MAX + 1, 1n), isInvalid);
  assert.throws(() => new INodeRef(1, U64_MAX + 1n), isInvalid);
  assert.throws(() => new INodeRef(1, 2 ** 60), isInvalid);
  // Exact numbers are accepted where bigints are expected.
  assert.equal(new BlockRef({ volume: 1, inode: 2 ** 53 - 1, index: 3 }).inode, 2n ** 53n - 1n);
});

Deno.test("fromBytes rejects truncated input and bad offsets, and reads at an offset", () => {
  const ref = new BlockRef({ volume: 5, inode: 6n, index: 7n });
  const bytes = ref.toBytes();
  for (let length = 0; length < BLOCK_REF_BYTES; length++) {
    assert.throws(() => BlockRef.fromBytes(bytes.subarray(0, length)), isInvalid);
  }
  const padded = new Uint8Array(30);
  padded.set(bytes, 5);
  assert.ok(BlockRef.fromBytes(padded, 5).equals(ref));
  assert.ok(BlockRef.fromBytes(padded.subarray(5)).equals(ref));
  for (const offset of [-1, 7, 1.5, Number.NaN]) {
    assert.throws(() => BlockRef.fromBytes(padded, offset), isInvalid);
  }
  for (const length of [0, 15, 17, 24]) {
    assert.throws(() => INodeRef.fromBytes(new Uint8Array(length)), isInvalid);
  }
  // An INodeRef has no type bits: a volume field above 40 bits is not an INodeRef.
  const typed = new INodeRef(1, 1n).toBytes();
  typed[5] = 1;
  assert.throws(() => INodeRef.fromBytes(typed), isInvalid);
});

Deno.test("toString prints `br <volume field hex> : <inode hex> : <index hex>`", () => {
  const ref = new BlockRef({ type: BlockType.INode, volume: 0x2a, inode: 0xbeefn, index: 1n });
  assert.equal(String(ref), "br 1000000002a : beef : 1");
  assert.equal(String(BlockRef.ZERO), "br 0 : 0 : 0");
  assert.equal(String(new INodeRef(255, 16n)), "vol ff inode 10");
});

Deno.test("keys are unique per ref and equal for equal refs", () => {
  const refs = [
    new BlockRef({ volume: 1, inode: 23n, index: 4n }),
    new BlockRef({ volume: 12, inode: 3n, index: 4n }),
    new BlockRef({ volume: 1, inode: 2n, index: 34n }),
    new BlockRef({ type: 1, volume: 1, inode: 2n, index: 34n }),
    new BlockRef({ volume: 11, inode: 2n, index: 34n }),
    BlockRef.ZERO,
  ];
  assert.equal(new Set(refs.map((ref) => ref.key)).size, refs.length);
  const same = new BlockRef({ volume: 1, inode: 23, index: 4 });
  assert.equal(same.key, refs[0]!.key);
  assert.ok(same.equals(refs[0]!));
  assert.ok(!refs[2]!.equals(refs[3]!));
});

Deno.test("ZERO is the all-zero ref and the only ref that says so", () => {
  assert.equal(hex(BlockRef.ZERO.toBytes()), "00".repeat(24));
  assert.ok(BlockRef.ZERO.isZero());
  assert.ok(BlockRef.fromBytes(new Uint8Array(24)).isZero());
  assert.ok(!new BlockRef({ type: 1, volume: 0, inode: 0n, index: 0n }).isZero());
  assert.ok(!new BlockRef({ volume: 0, inode: 0n, index: 1n }).isZero());
});

Deno.test("refs convert between INodeRef and BlockRef and from the raw volume field", () => {
  const inode = new INodeRef(9, 10n);
  const ref = inode.blockRef(11n, BlockType.INode);
  assert.equal(ref.type, BlockType.INode);
  assert.ok(ref.inodeRef().equals(inode));
  assert.ok(BlockRef.fromVolumeField(ref.volumeField(), 10n, 11n).equals(ref));
  assert.throws(() => BlockRef.fromVolumeField(1n << 64n, 0n, 0n), isInvalid);
  assert.throws(() => BlockRef.fromVolumeField(-1n, 0n, 0n), isInvalid);
  const target = new Uint8Array(30);
  ref.writeTo(target, 3);
  assert.ok(BlockRef.fromBytes(target, 3).equals(ref));
});
