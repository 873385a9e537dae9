/** Key layout and value encodings: the original's formats, and garbage rejected cleanly. */

import assert from "node:assert/strict";
import { checkName, ErrorCode, INodeRef, isTorusError } from "../core/mod.ts";
import {
  checkPrefix,
  decodeGlobalMetadata,
  decodeSnapshot,
  decodeU64,
  decodeVolumeId,
  DEFAULT_METADATA_PREFIX,
  encodeGlobalMetadata,
  encodeSnapshot,
  encodeU64,
  MetadataKeys,
} from "./keys.ts";

const encoder = new TextEncoder();

function throwsInvalid(fn: () => unknown) {
  assert.throws(fn, (e: unknown) => isTorusError(e, ErrorCode.Invalid));
}

Deno.test("keys keep the original layout under the default prefix", () => {
  const keys = new MetadataKeys();
  assert.equal(DEFAULT_METADATA_PREFIX, "/github.com/coreos/torus/");
  assert.equal(keys.globalMetadata(), "/github.com/coreos/torus/meta/globalmetadata");
  assert.equal(keys.volumeMinter(), "/github.com/coreos/torus/meta/volumeminter");
  assert.equal(keys.ring(), "/github.com/coreos/torus/meta/the-one-ring");
  assert.equal(
    keys.node("6F1A52B4-3C1E-4D5F-9A1B-0C2D3E4F5A6B"),
    "/github.com/coreos/torus/nodes/6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b",
  );
  assert.equal(keys.volumeName("db"), "/github.com/coreos/torus/volumes/db");
  assert.equal(keys.volumeRecord(42), "/github.com/coreos/torus/volumeid/2a");
  assert.equal(keys.inodeCounter(42), "/github.com/coreos/torus/volumemeta/2a/inode");
  assert.equal(keys.head(42), "/github.com/coreos/torus/volumemeta/2a/blockinode");
  assert.equal(keys.lock(42), "/github.com/coreos/torus/volumemeta/2a/blocklock");
  assert.equal(keys.snapshot(42, "s1"), "/github.com/coreos/torus/volumemeta/2a/snapshots/s1");
});

Deno.test("every directory key ends with / so volume 2 is not a prefix of volume 20", () => {
  const keys = new MetadataKeys("/p/");
  for (const dir of [keys.nodesDir(), keys.volumeNamesDir(), keys.volumeIdsDir()]) {
    assert.ok(dir.endsWith("/"), dir);
  }
  assert.equal(keys.volumeMetaDir(2), "/p/volumemeta/2/");
  assert.ok(!keys.lock(0x20).startsWith(keys.volumeMetaDir(2)));
  assert.ok(keys.snapshotsDir(2).endsWith("/"));
});

Deno.test("prefixes must start and end with / and names are key-safe", () => {
  for (const bad of ["", "p/", "/p", "/a//b/", "/a\nb/"]) throwsInvalid(() => checkPrefix(bad));
  assert.equal(checkPrefix("/a/b/"), "/a/b/");
  for (const bad of ["", "a/b", "a@b", "a b", "x\u0000", "n".repeat(256)]) {
    throwsInvalid(() => checkName(bad, "volume"));
  }
  assert.equal(checkName("db-01_x.y", "volume"), "db-01_x.y");
  throwsInvalid(() => new MetadataKeys("/p/").node("a/b"));
  throwsInvalid(() => new MetadataKeys("/p/").node("u-1"));
  // Lookups reach names of older builds; only "/" and oversized names are refused.
  assert.equal(new MetadataKeys("/p/").volumeName("db\u200b"), "/p/volumes/db\u200b");
  throwsInvalid(() => new MetadataKeys("/p/").volumeName("a/b"));
});

Deno.test("counters are 8 bytes little-endian; empty reads as 0; other lengths are invalid", () => {
  assert.deepEqual(encodeU64(0x0102n), Uint8Array.of(2, 1, 0, 0, 0, 0, 0, 0));
  assert.equal(decodeU64(encodeU64(2n ** 64n - 1n), "c"), 2n ** 64n - 1n);
  assert.equal(decodeU64(new Uint8Array(0), "c"), 0n);
  throwsInvalid(() => decodeU64(new Uint8Array(7), "c"));
  throwsInvalid(() => decodeU64(new Uint8Array(9), "c"));
  assert.equal(decodeVolumeId(encodeU64(0xff_ffff_ffffn), "v"), 2 ** 40 - 1);
  throwsInvalid(() => decodeVolumeId(encodeU64(2n ** 40n), "v"));
  throwsInvalid(() => decodeVolumeId(encodeU64(0n), "v"));
});

Deno.test("global metadata round-trips as the original's JSON", () => {
  const global = {
    blockSizeBytes: 524288,
    defaultBlockSpec: [{ kind: 1, options: "" }, {
      kind: 0,
      options: "",
    }],
  };
  const bytes = encodeGlobalMetadata(global);
  assert.equal(
    new TextDecoder().decode(bytes),
    '{"BlockSize":524288,"DefaultBlockSpec":[{"Kind":1,"Options":""},{"Kind":0,"Options":""}]}',
  );
  assert.deepEqual(decodeGlobalMetadata(bytes), global);
  // The original omitted empty Options in some writers; absent reads as "".
  const sparse = encoder.encode('{"BlockSize":4096,"DefaultBlockSpec":[{"Kind":0}]}');
  assert.deepEqual(decodeGlobalMetadata(sparse).defaultBlockSpec, [{ kind: 0, options: "" }]);
});

Deno.test("garbage, truncated and oversized global metadata is invalid, never a crash", () => {
  const good = '{"BlockSize":4096,"DefaultBlockSpec":[{"Kind":0,"Options":""}]}';
  const cases = [
    "",
    "\xff\xfe",
    good.slice(0, 20),
    "[]",
    "null",
    '{"BlockSize":"4096","DefaultBlockSpec":[]}',
    '{"BlockSize":-1,"DefaultBlockSpec":[]}',
    '{"BlockSize":1e300,"DefaultBlockSpec":[]}',
    '{"BlockSize":4096,"DefaultBlockSpec":{}}',
    '{"BlockSize":4096,"DefaultBlockSpec":[null]}',
    '{"BlockSize":4096,"DefaultBlockSpec":[{"Kind":1.5}]}',
    '{"BlockSize":4096,"DefaultBlockSpec":[{"Kind":0,"Options":7}]}',
  ];
  for (const text of cases) throwsInvalid(() => decodeGlobalMetadata(encoder.encode(text)));
  throwsInvalid(() => decodeGlobalMetadata(Uint8Array.of(0xc3, 0x28)));
  const huge = encoder.encode(`{"BlockSize":4096,"DefaultBlockSpec":[${"[],".repeat(100_000)}[]]}`);
  throwsInvalid(() => decodeGlobalMetadata(huge));
});

Deno.test("snapshots round-trip as the original's JSON; garbage is invalid", () => {
  const snapshot = {
    name: "s",
    whenMs: 1_700_000_000_123,
    inodeRef: new INodeRef(2, 7n),
    sizeBytes: null,
    clones: [],
  };
  const bytes = encodeSnapshot(snapshot);
  const raw = JSON.parse(new TextDecoder().decode(bytes));
  assert.deepEqual(Object.keys(raw), ["Name", "When", "INodeRef"]);
  // Size and clones, when known, ride along under their own names.
  const full = { ...snapshot, sizeBytes: 4096, clones: [9, 12] };
  const fullRaw = JSON.parse(new TextDecoder().decode(encodeSnapshot(full)));
  assert.deepEqual(Object.keys(fullRaw), ["Name", "When", "INodeRef", "Size", "Clones"]);
  assert.deepEqual(decodeSnapshot(encodeSnapshot(full)), full);
  assert.equal(raw.When, "2023-11-14T22:13:20.123Z");
  assert.equal(raw.INodeRef, "AgAAAAAAAAAHAAAAAAAAAA==");
  assert.deepEqual(decodeSnapshot(bytes), snapshot);
  // Go's RFC3339Nano with nanoseconds and an offset parses too.
  const go = encoder.encode(
    '{"Name":"g","When":"2016-08-02T10:00:00.123456789-07:00","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA=="}',
  );
  assert.equal(decodeSnapshot(go).whenMs, Date.parse("2016-08-02T17:00:00.123Z"));
  const bad = [
    "{}",
    '{"Name":"s","When":"nope","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA=="}',
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"AgAA"}',
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"!!!"}',
    '{"Name":1,"When":"2016-08-02T10:00:00Z","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA=="}',
    new TextDecoder().decode(bytes).slice(0, 30),
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA==","Size":-1}',
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA==","Size":0.5}',
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA==","Clones":[0]}',
    '{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"AgAAAAAAAAAHAAAAAAAAAA==","Clones":"x"}',
  ];
  for (const text of bad) throwsInvalid(() => decodeSnapshot(encoder.encode(text)));
  const long = btoa("x".repeat(1000));
  throwsInvalid(() =>
    decodeSnapshot(
      encoder.encode(`{"Name":"s","When":"2016-08-02T10:00:00Z","INodeRef":"${long}"}`),
    )
  );
});

Deno.test("stale record keys: built and parsed alike, anything else refused", () => {
  const keys = new MetadataKeys("/p/");
  const node = "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b";
  assert.equal(keys.staleDir(), "/p/stale/");
  assert.equal(keys.staleVolumeDir(0x2a), "/p/stale/2a/");
  assert.equal(keys.staleRecord(0x2a, node.toUpperCase()), `/p/stale/2a/${node}`);
  assert.ok(!keys.staleRecord(0x20, node).startsWith(keys.staleVolumeDir(2)));
  assert.deepEqual(keys.parseStaleRecord(`/p/stale/2a/${node}`), { volumeId: 0x2a, node });
  const top = 2 ** 40 - 1;
  assert.deepEqual(keys.parseStaleRecord(keys.staleRecord(top, node)), { volumeId: top, node });
  for (const volumeId of [0, -1, 1.5, 2 ** 40, Number.NaN]) {
    throwsInvalid(() => keys.staleVolumeDir(volumeId));
  }
  for (const bad of ["u-1", "a/b", "", "00000000-0000-0000-0000-000000000000"]) {
    throwsInvalid(() => keys.staleRecord(2, bad));
  }
  for (
    const bad of [
      `/q/stale/2/${node}`,
      `/p/stale/2/`,
      `/p/stale/2/${node}/x`,
      `/p/stale/02/${node}`,
      `/p/stale/0/${node}`,
      `/p/stale/2A/${node}`,
      `/p/stale/10000000000/${node}`,
      `/p/stale/2/${node.toUpperCase()}`,
      `/p/stale/2/{${node}}`,
      `/p/stale/${node}`,
    ]
  ) {
    throwsInvalid(() => keys.parseStaleRecord(bad));
  }
});
