import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../core/mod.ts";
import {
  type BlockLayer,
  BlockLayerCodec,
  BlockRefCodec,
  BlockRequestCodec,
  BlockResponseCodec,
  type Codec,
  CountsRequestCodec,
  DeleteBlockRequestCodec,
  DeleteBlockResponseCodec,
  FlushRequestCodec,
  HelloRequestCodec,
  HelloResponseCodec,
  type INode,
  INodeCodec,
  INodeRefCodec,
  ListRefsRequestCodec,
  ListRefsResponseCodec,
  type PeerInfo,
  PeerInfoCodec,
  PutBlockRequestCodec,
  PutResponseCodec,
  ReadAtRequestCodec,
  ReadAtResponseCodec,
  RebalanceCheckRequestCodec,
  RebalanceCheckResponseCodec,
  RebalanceInfoCodec,
  RingCodec,
  StoreResponseCodec,
  TORUS_STORAGE_SERVICE,
  torusStorageMethods,
  VolumeCodec,
  WriteAtRequestCodec,
  ZeroAtRequestCodec,
} from "./mod.ts";

const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;
const U32_MAX = 2 ** 32 - 1;

const peer: PeerInfo = {
  uuid: "0c1d5f0e-8a3b-4f7e-9d2a-1b2c3d4e5f60",
  address: "tdp://127.0.0.1:40000",
  lastSeen: I64_MIN,
  totalBlocks: U64_MAX,
  usedBlocks: 1n,
  timedOut: true,
  rebalanceInfo: {
    lastRebalanceFinish: -1n,
    lastRebalanceBlocks: U64_MAX,
    rebalancing: true,
    ringVersion: U64_MAX,
  },
  protocolVersion: 2n,
};

const inode: INode = {
  volume: 0xff_ffff_ffffn,
  inode: U64_MAX,
  filesize: U64_MAX,
  attrs: { "": "", "clé ✓": "värde", long: "x".repeat(1000) },
  blocks: [
    { type: 0, content: new Uint8Array() },
    { type: U32_MAX, content: new Uint8Array(1 << 20).fill(0xab) },
  ],
};

/** Every codec with non-default values that reach each field's limits. */
const samples: [Codec<unknown>, unknown][] = [
  [INodeCodec, inode],
  [BlockLayerCodec, { type: 2, content: new Uint8Array([0, 1, 255]) }],
  [VolumeCodec, {
    name: "vol-ü",
    id: U64_MAX,
    type: "block",
    maxBytes: 1n << 40n,
    parentVolume: 0n,
    parentInode: 0n,
    parentSnapshot: "",
  }],
  [VolumeCodec, {
    name: "clone",
    id: 9n,
    type: "block",
    maxBytes: 512n,
    parentVolume: (1n << 40n) - 1n,
    parentInode: U64_MAX,
    parentSnapshot: "s-1",
  }],
  [PeerInfoCodec, peer],
  [PeerInfoCodec, { ...peer, lastSeen: I64_MAX, rebalanceInfo: null }],
  // A present sub-message with only defaults stays present (not null) after a round trip.
  [PeerInfoCodec, { ...peer, rebalanceInfo: RebalanceInfoCodec.empty() }],
  [RebalanceInfoCodec, {
    lastRebalanceFinish: I64_MIN,
    lastRebalanceBlocks: 0n,
    rebalancing: false,
    ringVersion: 0n,
  }],
  [RingCodec, {
    type: 4,
    version: U32_MAX,
    replicationFactor: 3,
    peers: [peer, { ...peer, uuid: "b", rebalanceInfo: null }],
    attrs: { weights: new Uint8Array([1, 2, 3]), empty: new Uint8Array() },
  }],
  [BlockRefCodec, { volume: U64_MAX, inode: U64_MAX, block: U64_MAX }],
  [INodeRefCodec, { volume: 2n, inode: U64_MAX }],
  [BlockRequestCodec, {
    blockRef: { volume: 1n, inode: 2n, block: 3n },
    checkCrc32: true,
    expectedCrc32: U32_MAX,
  }],
  [BlockRequestCodec, { blockRef: null, checkCrc32: false, expectedCrc32: 0 }],
  [BlockResponseCodec, {
    ok: false,
    data: new Uint8Array(),
    errorCode: "block_unavailable",
    errorMessage: "gone",
    usedBlocks: 0n,
    totalBlocks: U64_MAX,
  }],
  [PutBlockRequestCodec, {
    refs: [{ volume: 1n, inode: 2n, block: 3n }, { volume: 0n, inode: 0n, block: 0n }],
    blocks: [new Uint8Array(512).fill(7), new Uint8Array()],
    fenceToken: U64_MAX,
    ifAbsent: true,
    ringVersion: U64_MAX,
  }],
  [PutResponseCodec, { ok: true, err: "", errorCode: "", usedBlocks: 3n, totalBlocks: 4n }],
  [RebalanceCheckRequestCodec, { blockRefs: [{ volume: 5n, inode: 6n, block: 7n }] }],
  [RebalanceCheckResponseCodec, {
    valid: [true, false, true],
    status: -(2 ** 31),
    errorCode: "",
    errorMessage: "",
    usedBlocks: 1n,
    totalBlocks: 2n,
  }],
  [DeleteBlockRequestCodec, { refs: [], fenceToken: 7n, ringVersion: 0n }],
  [DeleteBlockRequestCodec, {
    refs: [{ volume: 1n, inode: 2n, block: 3n }],
    fenceToken: 0n,
    ringVersion: (1n << 53n) + 1n,
  }],
  [DeleteBlockResponseCodec, {
    ok: false,
    errorCode: "not_exist",
    errorMessage: "no such block",
    usedBlocks: 0n,
    totalBlocks: 0n,
  }],
  [HelloRequestCodec, {
    protocolVersion: 1,
    clusterId: "c-ü",
    blockSizeBytes: U32_MAX,
    nodeName: "n",
  }],
  [HelloResponseCodec, {
    errorCode: "invalid",
    errorMessage: 'cluster "a" is not this node\'s cluster "b"',
    protocolVersion: U32_MAX,
    clusterId: "b",
    blockSizeBytes: 4096,
    nodeName: "",
    usedBlocks: U64_MAX,
    totalBlocks: U64_MAX,
    instance: "7c1e-é",
  }],
  [ReadAtRequestCodec, {
    blockRef: { volume: 1n, inode: 2n, block: 3n },
    offsetBytes: U32_MAX,
    lengthBytes: 1,
  }],
  [ReadAtResponseCodec, {
    data: new Uint8Array([1, 0, 2]),
    errorCode: "",
    errorMessage: "",
    usedBlocks: 9n,
    totalBlocks: 10n,
  }],
  [WriteAtRequestCodec, {
    blockRef: { volume: U64_MAX, inode: 0n, block: 1n },
    offsetBytes: 7,
    data: new Uint8Array(4096).fill(3),
    fresh: true,
    fenceToken: (1n << 53n) + 1n,
    mustExist: false,
    ringVersion: 1n,
  }],
  [ZeroAtRequestCodec, {
    blockRef: null,
    offsetBytes: 0,
    lengthBytes: U32_MAX,
    fresh: false,
    fenceToken: 0n,
    mustExist: true,
    ringVersion: U64_MAX,
  }],
  [FlushRequestCodec, {}],
  [CountsRequestCodec, {}],
  [StoreResponseCodec, {
    errorCode: "outcome_unknown",
    errorMessage: "é",
    usedBlocks: 0n,
    totalBlocks: 1n,
  }],
  [ListRefsRequestCodec, {}],
  [ListRefsResponseCodec, {
    refs: [{ volume: 1n, inode: 2n, block: 3n }, { volume: 0n, inode: 0n, block: 0n }],
    errorCode: "",
    errorMessage: "",
    usedBlocks: 2n,
    totalBlocks: 8n,
  }],
];

const allCodecs: Codec<unknown>[] = [...new Set(samples.map(([codec]) => codec))];

for (const [codec, value] of samples) {
  Deno.test(`${codec.typeName} round-trips edge values exactly`, () => {
    const bytes = codec.encode(value);
    assert.equal(Object.getPrototypeOf(bytes), Uint8Array.prototype, "a plain Uint8Array");
    assert.deepEqual(codec.decode(bytes), value);
    assert.deepEqual(codec.encode(codec.decode(bytes)), bytes);
  });
}

Deno.test("every codec's empty() encodes to nothing and decodes from nothing", () => {
  assert.equal(allCodecs.length, 27);
  for (const codec of allCodecs) {
    assert.equal(codec.encode(codec.empty()).length, 0, codec.typeName);
    assert.deepEqual(codec.decode(new Uint8Array()), codec.empty(), codec.typeName);
  }
});

Deno.test("wire bytes keep the original's field numbers", () => {
  const hex = (bytes: Uint8Array) =>
    Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.equal(hex(BlockRefCodec.encode({ volume: 1n, inode: 2n, block: 3n })), "080110021803");
  const minimal: INode = { volume: 2n, inode: 3n, filesize: 4n, attrs: { a: "b" }, blocks: [] };
  // volume=1, inode=2, filesize=4 (3, 5, 6 reserved), attrs=7 as a map entry.
  assert.equal(hex(INodeCodec.encode(minimal)), "0802100320043a060a0161120162");
  assert.equal(
    hex(
      INodeCodec.encode({
        ...minimal,
        attrs: {},
        blocks: [{ type: 1, content: new Uint8Array([9]) }],
      }),
    ),
    "080210032004" + "4205" + "0801120109",
  );
  assert.equal(
    hex(
      PeerInfoCodec.encode({
        ...peer,
        uuid: "",
        address: "",
        rebalanceInfo: null,
        totalBlocks: 0n,
        usedBlocks: 0n,
        timedOut: false,
        protocolVersion: 0n,
        lastSeen: -1n,
      }),
    ),
    "18ffffffffffffffffff01",
  );
});

Deno.test("decoded bytes are copies that share nothing with the input", () => {
  const layer: BlockLayer = { type: 1, content: new Uint8Array([1, 2, 3, 4]) };
  const encoded = BlockLayerCodec.encode(layer);
  layer.content.fill(0);
  const decoded = BlockLayerCodec.decode(encoded);
  assert.deepEqual(decoded.content, new Uint8Array([1, 2, 3, 4]));
  encoded.fill(0xee);
  assert.deepEqual(decoded.content, new Uint8Array([1, 2, 3, 4]));
  const request = PutBlockRequestCodec.encode({
    refs: [],
    blocks: [new Uint8Array([5, 6])],
    fenceToken: 0n,
  });
  const blocks = PutBlockRequestCodec.decode(request).blocks;
  blocks[0]!.fill(0);
  assert.deepEqual(PutBlockRequestCodec.decode(request).blocks[0], new Uint8Array([5, 6]));
  assert.equal(Object.getPrototypeOf(blocks[0]), Uint8Array.prototype);
});

Deno.test("encode rejects integers its field type cannot hold instead of wrapping them", () => {
  const badRefs = [
    { volume: -1n, inode: 0n, block: 0n },
    { volume: 0n, inode: 1n << 64n, block: 0n },
    { volume: 0n, inode: 0n, block: 5 as unknown as bigint },
  ];
  for (const ref of badRefs) {
    assert.throws(() => BlockRefCodec.encode(ref), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      return true;
    });
  }
  for (const type of [-1, 2 ** 32, 1.5, Number.NaN]) {
    assert.throws(
      () => BlockLayerCodec.encode({ type, content: new Uint8Array() }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
  const tooOld = { ...peer, lastSeen: I64_MIN - 1n };
  assert.throws(
    () => PeerInfoCodec.encode(tooOld),
    (e: unknown) => isTorusError(e, ErrorCode.Invalid),
  );
  const nested = { refs: [{ volume: 0n, inode: -5n, block: 0n }], blocks: [], fenceToken: 0n };
  assert.throws(
    () => PutBlockRequestCodec.encode(nested),
    (e: unknown) => isTorusError(e, ErrorCode.Invalid),
  );
});

function assertValueOrInvalid(codec: Codec<unknown>, bytes: Uint8Array, what: string): boolean {
  try {
    codec.decode(bytes);
    return true;
  } catch (error) {
    assert.ok(
      isTorusError(error, ErrorCode.Invalid),
      `${codec.typeName} ${what}: ${String(error)}`,
    );
    assert.ok(!(error as Error).message.includes("\n"), "one line");
    return false;
  }
}

Deno.test("truncated messages are invalid or a shorter valid message, never a crash", () => {
  for (const [codec, value] of samples) {
    const bytes = codec.encode(value);
    // Keep this quick for the 1 MiB sample: cut at the first 300 and last 300 lengths.
    const cuts = new Set<number>();
    for (let i = 0; i < Math.min(bytes.length, 300); i++) cuts.add(i);
    for (let i = Math.max(0, bytes.length - 300); i < bytes.length; i++) cuts.add(i);
    for (const length of cuts) {
      assertValueOrInvalid(codec, bytes.subarray(0, length), `cut ${length}`);
    }
  }
  // Cutting inside the last field's bytes can never be a valid message.
  const bytes = BlockLayerCodec.encode({ type: 1, content: new Uint8Array(10) });
  assert.equal(
    assertValueOrInvalid(BlockLayerCodec, bytes.subarray(0, bytes.length - 1), "cut"),
    false,
  );
});

Deno.test("oversized lengths and varints are invalid", () => {
  const cases = [
    new Uint8Array([0x12, 0xff, 0xff, 0xff, 0xff, 0x07, 1, 2]), // content claims 2 GiB
    new Uint8Array([0x08, ...new Array(11).fill(0xff)]), // an 11-byte varint
    new Uint8Array([0x0f]), // wire type 7 does not exist
    new Uint8Array([0x12, 0x80]), // a length that never ends
  ];
  for (const bytes of cases) {
    assert.equal(assertValueOrInvalid(BlockLayerCodec, bytes, "oversized"), false);
    assert.equal(assertValueOrInvalid(INodeCodec, bytes, "oversized"), false);
  }
});

const garbageSeed = testSeed();
Deno.test(`random garbage decodes to a value or invalid for every codec (seed=${garbageSeed})`, () => {
  const random = new SeededRandom(garbageSeed);
  for (let round = 0; round < 2000; round++) {
    const bytes = random.bytes(random.int(48));
    for (const codec of allCodecs) assertValueOrInvalid(codec, bytes, `round ${round}`);
  }
});

Deno.test("the TorusStorage method table pairs each RPC with its codecs", () => {
  assert.equal(TORUS_STORAGE_SERVICE, "models.TorusStorage");
  assert.deepEqual(Object.keys(torusStorageMethods), [
    "Block",
    "PutBlock",
    "RebalanceCheck",
    "DeleteBlock",
    "Hello",
    "ReadAt",
    "WriteAt",
    "ZeroAt",
    "Flush",
    "Counts",
    "ListRefs",
  ]);
  assert.equal(torusStorageMethods.PutBlock.request.typeName, "models.PutBlockRequest");
  assert.equal(torusStorageMethods.DeleteBlock.response.typeName, "models.DeleteBlockResponse");
  assert.equal(torusStorageMethods.WriteAt.response.typeName, "models.StoreResponse");
  const streaming = Object.entries(torusStorageMethods).filter(([, m]) => m.responseStream);
  assert.deepEqual(streaming.map(([name]) => name), ["ListRefs"]);
});

Deno.test("fields added to the original's messages leave its bytes unchanged", () => {
  const hex = (bytes: Uint8Array) =>
    Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const ref = { volume: 1n, inode: 2n, block: 3n };
  // An original request (no new fields set) encodes exactly as the original's did.
  assert.equal(
    hex(BlockRequestCodec.encode({ blockRef: ref, checkCrc32: false, expectedCrc32: 0 })),
    "0a06080110021803",
  );
  // A reply of ours read by the original: ok=1 and data=2 where they always were.
  const reply = BlockResponseCodec.encode({
    ok: true,
    data: new Uint8Array([9]),
    errorCode: "",
    errorMessage: "",
    usedBlocks: 1n,
    totalBlocks: 2n,
  });
  assert.equal(hex(reply), "0801120109" + "2801" + "3002");
});

Deno.test("ring_version has its own field number on every change request", () => {
  const hex = (bytes: Uint8Array) =>
    Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  // PutBlockRequest 5, DeleteBlockRequest 3, WriteAtRequest and ZeroAtRequest 7; varint 1.
  const put = PutBlockRequestCodec.encode({
    refs: [],
    blocks: [],
    fenceToken: 0n,
    ringVersion: 1n,
  });
  assert.equal(hex(put), "2801");
  assert.equal(
    hex(DeleteBlockRequestCodec.encode({ refs: [], fenceToken: 0n, ringVersion: 1n })),
    "1801",
  );
  const range = { blockRef: null, offsetBytes: 0, fresh: false, fenceToken: 0n, ringVersion: 1n };
  assert.equal(hex(WriteAtRequestCodec.encode({ ...range, data: new Uint8Array() })), "3801");
  assert.equal(hex(ZeroAtRequestCodec.encode({ ...range, lengthBytes: 0 })), "3801");
  // A request without the field (an older sender) reads as no version.
  assert.equal(PutBlockRequestCodec.decode(new Uint8Array([0x18, 0x02])).ringVersion, 0n);
  assert.equal(PutBlockRequestCodec.decode(new Uint8Array([0x18, 0x02])).fenceToken, 2n);
});
