import assert from "node:assert/strict";
import { BlockRef, ErrorCode, INodeRef, isTorusError, U64_MAX } from "../core/mod.ts";
import {
  BlockRefCodec,
  blockRefFromMessage,
  blockRefToMessage,
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
