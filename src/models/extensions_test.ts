import assert from "node:assert/strict";
import { BlockRef, ErrorCode, INodeRef, isTorusError, U64_MAX } from "../core/mod.ts";
import {
  BlockRefCodec,
  blockRefFromMessage,
  blockRefToMessage,
  checkedPeerInfo,
  emptyPeerInfo,
  INodeRefCodec,
  inodeRefFromMessage,
  inodeRefToMessage,
  PeerInfoCodec,
} from "./mod.ts";

Deno.test("BlockRef messages carry the raw volume field, type bits included", () => {
  const ref = new BlockRef({ type: 1, volume: 2 ** 40 - 1, inode: U64_MAX, index: 7n });
  const message = blockRefToMessage(ref);
  assert.deepEqual(message, { volume: (1n << 40n) | (2n ** 40n - 1n), inode: U64_MAX, block: 7n });
  const back = blockRefFromMessage(BlockRefCodec.decode(BlockRefCodec.encode(message)));
  assert.ok(back.equals(ref));
  assert.equal(back.type, 1);
  assert.ok(blockRefFromMessage(BlockRefCodec.empty()).isZero());
});

Deno.test("INodeRef messages round-trip and reject volumes above 40 bits", () => {
  const ref = new INodeRef(2 ** 40 - 1, U64_MAX);
  const back = inodeRefFromMessage(
    INodeRefCodec.decode(INodeRefCodec.encode(inodeRefToMessage(ref))),
  );
  assert.ok(back.equals(ref));
  assert.throws(
    () => inodeRefFromMessage({ volume: 1n << 40n, inode: 1n }),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid),
  );
});

Deno.test("emptyPeerInfo sets only the uuid and encodes to just that field", () => {
  const info = emptyPeerInfo("abc");
  assert.deepEqual(info, { ...PeerInfoCodec.empty(), uuid: "abc" });
  assert.deepEqual(PeerInfoCodec.encode(info), new Uint8Array([0x0a, 3, 0x61, 0x62, 0x63]));
});

Deno.test("checkedPeerInfo normalises the UUID and refuses forged UUIDs and addresses", () => {
  const uuid = "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b";
  const peer = { ...emptyPeerInfo(uuid.toUpperCase()), address: "tdp://10.0.0.1:40000" };
  assert.deepEqual(checkedPeerInfo(peer), { ...peer, uuid });
  const client = emptyPeerInfo(uuid);
  assert.equal(checkedPeerInfo(client), client);
  const isInvalid = (e: unknown) => isTorusError(e, ErrorCode.Invalid);
  for (const bad of ["not-a-uuid", "tdp://10.0.0.1:40000", "x".repeat(255), ""]) {
    assert.throws(() => checkedPeerInfo(emptyPeerInfo(bad), "ring member"), isInvalid);
  }
  for (
    const address of ["tdp://h:1\x1b[2J", "tdp://h:1 forged", "tdp://h\u202e:1", "a".repeat(1025)]
  ) {
    assert.throws(() => checkedPeerInfo({ ...client, address }), isInvalid);
  }
});
