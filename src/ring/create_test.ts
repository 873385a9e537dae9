import assert from "node:assert/strict";
import { ErrorCode, isTorusError, RING_MEMBERS_MAX, SeededRandom } from "../core/mod.ts";
import { emptyPeerInfo, type Ring as RingMessage, RingCodec } from "../models/mod.ts";
import {
  createRing,
  ringFromMessage,
  type RingType,
  RingType as Types,
  ringTypeFromName,
  ringTypeNames,
} from "./mod.ts";
import { testPeers, testRefs } from "./ring_contract.ts";

function isInvalid(error: unknown): boolean {
  return isTorusError(error, ErrorCode.Invalid);
}

function message(fields: Partial<RingMessage>): RingMessage {
  return { type: Types.Ketama, version: 1, replicationFactor: 2, peers: [], attrs: {}, ...fields };
}

Deno.test("ringTypeFromName: knows every name and lists them when it does not", () => {
  for (const [id, name] of Object.entries(ringTypeNames)) {
    assert.equal(ringTypeFromName(name), Number(id));
  }
  assert.throws(
    () => ringTypeFromName("Ketama"),
    (error: unknown) =>
      isInvalid(error) && (error as Error).message ===
        'unknown ring type "Ketama": expected one of empty, single, mod, union, ketama',
  );
  for (const bad of ["", "modulo", "ketama ", "__proto__", "toString"]) {
    assert.throws(() => ringTypeFromName(bad), isInvalid);
  }
});

Deno.test("createRing: refuses bad combinations with invalid", () => {
  const peers = testPeers(3, 1);
  const cases: [RingType, { version: number; replication: number; peers: typeof peers }][] = [
    [Types.Empty, { version: 1, replication: 0, peers: peers.slice(0, 1) }],
    [Types.Single, { version: 1, replication: 1, peers }],
    [Types.Single, { version: 1, replication: 1, peers: [] }],
    [Types.Mod, { version: 1, replication: 0, peers }],
    [Types.Ketama, { version: 1, replication: -1, peers }],
    [Types.Ketama, { version: 1, replication: 1.5, peers }],
    [Types.Ketama, { version: -1, replication: 1, peers }],
    [Types.Ketama, { version: 2 ** 32, replication: 1, peers }],
    [Types.Ketama, { version: 1, replication: 2 ** 32, peers }],
    [Types.Mod, { version: 1, replication: 1, peers: [peers[0]!, peers[0]!] }],
    [Types.Mod, { version: 1, replication: 1, peers: [emptyPeerInfo("")] }],
    [Types.Union, { version: 1, replication: 1, peers }],
    [7 as RingType, { version: 1, replication: 1, peers }],
  ];
  for (const [type, options] of cases) assert.throws(() => createRing(type, options), isInvalid);
});

Deno.test("createRing: a ring may have up to RING_MEMBERS_MAX peers, not more", () => {
  const many = Array.from({ length: RING_MEMBERS_MAX + 1 }, (_, i) => emptyPeerInfo(`p${i}`));
  assert.throws(
    () => createRing(Types.Mod, { version: 1, replication: 2, peers: many }),
    isInvalid,
  );
  const ring = createRing(Types.Mod, { version: 1, replication: 2, peers: many.slice(1) });
  assert.equal(ring.getPeers(testRefs(1, 1)[0]!).peers.length, RING_MEMBERS_MAX);
});

Deno.test("ringFromMessage: reads replication 0 as 1 for mod, ketama and single", () => {
  const peers = testPeers(2, 2);
  for (const type of [Types.Mod, Types.Ketama]) {
    assert.equal(ringFromMessage(message({ type, peers, replicationFactor: 0 })).replication, 1);
  }
  const single = message({ type: Types.Single, peers: peers.slice(0, 1), replicationFactor: 0 });
  assert.equal(ringFromMessage(single).replication, 1);
  const empty = message({ type: Types.Empty, replicationFactor: 0 });
  assert.equal(ringFromMessage(empty).replication, 0);
});

Deno.test("ringFromMessage: rejects unknown types, stray attrs and bad peers with invalid", () => {
  const peers = testPeers(2, 3);
  const bad = [
    message({ type: 5, peers }),
    message({ type: 99, peers }),
    message({ type: -1, peers }),
    message({ type: Types.Mod, peers, attrs: { old: new Uint8Array() } }),
    message({ type: Types.Ketama, peers: [peers[0]!, peers[0]!] }),
    message({ type: Types.Ketama, peers: [emptyPeerInfo("")] }),
    message({ type: Types.Empty, peers }),
    message({ type: Types.Single, peers }),
    message({ type: Types.Union, peers }),
  ];
  for (const m of bad) assert.throws(() => ringFromMessage(m), isInvalid);
});

Deno.test("RingCodec.decode + ringFromMessage: truncated and garbage bytes are invalid", () => {
  const ring = createRing(Types.Ketama, { version: 3, replication: 2, peers: testPeers(3, 4) });
  const bytes = RingCodec.encode(ring.toMessage());
  let accepted = 0;
  for (let length = 0; length < bytes.length; length++) {
    try {
      // A prefix may still parse (protobuf fields are independent); whatever parses must be
      // a valid ring or be refused with invalid, never another error.
      ringFromMessage(RingCodec.decode(bytes.subarray(0, length)));
      accepted++;
    } catch (error) {
      assert.ok(isInvalid(error), `length ${length}: ${error}`);
    }
  }
  assert.ok(accepted < bytes.length);
  const random = new SeededRandom(5);
  for (let i = 0; i < 500; i++) {
    try {
      ringFromMessage(RingCodec.decode(random.bytes(1 + random.int(64))));
    } catch (error) {
      assert.ok(isInvalid(error), `garbage ${i}: ${error}`);
    }
  }
});

Deno.test("describe: type, version, replication and one line per peer", () => {
  const peers = [
    { ...emptyPeerInfo("u-1"), address: "10.0.0.1:40000", totalBlocks: 100n },
    emptyPeerInfo("u-2"),
  ];
  const ring = createRing(Types.Ketama, { version: 4, replication: 2, peers });
  assert.equal(
    ring.describe(),
    "Ring: ketama\nVersion: 4\nReplication: 2\nPeers:\n" +
      "\tu-1  address=10.0.0.1:40000  totalBlocks=100\n\tu-2  address=-  totalBlocks=0",
  );
  const empty = createRing(Types.Empty, { version: 1, replication: 0, peers: [] });
  assert.equal(empty.describe(), "Ring: empty\nVersion: 1\nReplication: 0\nPeers: (none)");
});

Deno.test("ringFromMessage: member UUIDs go through the one parser (checked, lowercase)", () => {
  const [a, b] = testPeers(2, 6);
  const upper = { ...a!, uuid: a!.uuid.toUpperCase() };
  const ring = ringFromMessage(message({ peers: [upper, b!] }));
  assert.deepEqual(ring.memberUuids(), [a!.uuid, b!.uuid]);
  const bad = [
    [a!, upper],
    [emptyPeerInfo("not-a-uuid")],
    [emptyPeerInfo("x".repeat(255))],
    [emptyPeerInfo("tdp://10.0.0.1:40000")],
    [{ ...a!, address: "10.0.0.1:1\x1b[2J" }],
  ];
  for (const peers of bad) {
    assert.throws(() => ringFromMessage(message({ peers })), isInvalid, peers[0]!.uuid);
  }
});

Deno.test("describe escapes what a ring member carries, so it cannot drive a terminal", () => {
  const [a] = testPeers(1, 8);
  const ring = createRing(Types.Ketama, {
    version: 2,
    replication: 2,
    peers: [{ ...a!, address: "h:1\x1b[2J\n\tforged" }],
  });
  assert.match(ring.describe(), /address=h:1\\x1b\[2J\\x0a\\x09forged {2}totalBlocks=/);
  assert.equal(ring.describe().split("\n").length, 5);
});
