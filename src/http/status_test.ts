import assert from "node:assert/strict";
import { clusterSection, liveReport, volumeReports } from "./report_fixture.ts";
import { nodeStatus, renderStatus } from "./status.ts";

/** The top-level keys of `/status`, in order (docs/http.md). */
const STATUS_KEYS = ["node", "store", "metadata", "nbd", "aoe", "volumes", "cluster"];

const startedAtMs = liveReport().node.startedAtMs;

Deno.test("status: every section of a working node, volumes joined with what is open here", () => {
  const status = nodeStatus({
    live: liveReport(),
    volumes: volumeReports(),
    metadataError: null,
    nowMs: startedAtMs + 90_500,
  });
  assert.deepEqual(status.node, {
    uuid: "6dd1f036-fe4c-4f22-96a1-3e2aac9f99a9",
    version: "1.2.3",
    dataDir: "/var/lib/torus",
    pid: 4242,
    startedAt: "2024-01-02T03:04:05.000Z",
    uptimeSeconds: 90.5,
  });
  assert.deepEqual(status.store, {
    name: "current",
    kind: "file",
    blockSizeBytes: 524288,
    totalBlocks: 127,
    usedBlocks: 3,
    totalBytes: 127 * 524288,
    usedBytes: 3 * 524288,
    failed: false,
    failure: null,
  });
  assert.deepEqual(status.metadata, {
    kind: "embedded",
    path: "/var/lib/torus/metadata/kv.sqlite",
    usable: true,
    error: null,
  });
  assert.equal(status.nbd?.address, "127.0.0.1:10809");
  assert.equal(status.nbd?.connections, 2);
  assert.equal(status.nbd?.connectionsAccepted, 9);
  assert.deepEqual(status.nbd?.openVolumes.map((v) => [v.name, v.handles, v.state]), [
    ["db", 2, "open"],
  ]);
  assert.deepEqual(
    status.volumes?.map((v) => [v.name, v.open, v.locked, v.cloneOf]),
    [["db", true, true, null], ["db3", false, true, "db@monday"], ["free", false, false, null]],
  );
});

Deno.test("status: a failed store, no NBD, etcd that does not answer", () => {
  const live = liveReport({
    store: {
      ...liveReport().store!,
      totalBlocks: null,
      usedBlocks: null,
      failure: "block store current failed: flush failed: EIO",
    },
    metadata: { kind: "etcd", endpoints: ["10.0.0.1:2379", "10.0.0.2:2379"] },
    nbd: null,
    aoe: [],
    openVolumes: [],
  });
  const status = nodeStatus({
    live,
    volumes: null,
    metadataError: "no answer to the volume list within 5000 ms",
    nowMs: startedAtMs,
  });
  const store = status.store!;
  assert.equal(store.failed, true);
  assert.equal(store.failure, "block store current failed: flush failed: EIO");
  assert.equal(store.totalBytes, null);
  assert.equal(store.usedBytes, null);
  assert.deepEqual(status.metadata, {
    kind: "etcd",
    endpoints: ["10.0.0.1:2379", "10.0.0.2:2379"],
    usable: false,
    error: "no answer to the volume list within 5000 ms",
  });
  assert.equal(status.nbd, null);
  assert.equal(status.volumes, null);
  assert.equal(status.node.uptimeSeconds, 0);
});

Deno.test("status: the document has every key of the schema in docs/http.md and nothing undefined", () => {
  const text = renderStatus({
    live: liveReport(),
    volumes: volumeReports(),
    metadataError: null,
    nowMs: startedAtMs + 1,
  });
  assert.ok(text.endsWith("}\n"));
  const parsed = JSON.parse(text);
  assert.deepEqual(Object.keys(parsed), STATUS_KEYS);
  assert.deepEqual(parsed.aoe, [], "no --aoe: no targets");
  assert.equal(parsed.cluster, null, "a single node has no cluster section");
  assert.deepEqual(Object.keys(parsed.node), [
    "uuid",
    "version",
    "dataDir",
    "pid",
    "startedAt",
    "uptimeSeconds",
  ]);
  assert.deepEqual(Object.keys(parsed.store), [
    "name",
    "kind",
    "blockSizeBytes",
    "totalBlocks",
    "usedBlocks",
    "totalBytes",
    "usedBytes",
    "failed",
    "failure",
  ]);
  assert.deepEqual(Object.keys(parsed.nbd), [
    "address",
    "connections",
    "connectionsAccepted",
    "openVolumes",
  ]);
  assert.deepEqual(Object.keys(parsed.nbd.openVolumes[0]), [
    "name",
    "id",
    "sizeBytes",
    "generation",
    "handles",
    "state",
    "failure",
    "writtenBytes",
    "fencingToken",
  ]);
  assert.deepEqual(Object.keys(parsed.volumes[0]), [
    "name",
    "id",
    "type",
    "sizeBytes",
    "cloneOf",
    "lockHolder",
    "open",
    "locked",
  ]);
  // A 64-bit token survives as text, not as a rounded number.
  assert.equal(parsed.nbd.openVolumes[0].fencingToken, "18446744073709551615");
});

Deno.test("status: a cluster node shows its peer address, the ring, the peers, the distributor and the rebalance", () => {
  const parsed = JSON.parse(renderStatus({
    live: liveReport({ cluster: clusterSection() }),
    volumes: volumeReports(),
    metadataError: null,
    nowMs: startedAtMs + 1,
  }));
  assert.deepEqual(Object.keys(parsed.cluster), [
    "peerAddress",
    "ring",
    "peers",
    "heartbeats",
    "distributor",
    "rebalance",
    "scrub",
    "fence",
  ]);
  assert.equal(parsed.cluster.peerAddress, "tdp://10.0.0.1:40000");
  assert.deepEqual(parsed.cluster.ring, {
    version: 4,
    type: "ketama",
    replication: 2,
    members: ["a", "b", "c"],
  });
  assert.deepEqual(parsed.cluster.peers.map((p: { uuid: string }) => p.uuid), ["a", "b"]);
  assert.deepEqual(parsed.cluster.distributor.peerBlocks, { b: 6 });
  assert.equal(parsed.cluster.rebalance.rebalancing, true);
  assert.equal(parsed.cluster.rebalance.passScannedBlocks, 5);
  assert.equal(parsed.cluster.peers[1].rebalancing, true);
  assert.equal(parsed.cluster.scrub.damagedBlocks, 3);
});

Deno.test("status: a cluster client has no store and no data dir, and says so with null", () => {
  const live = liveReport({
    node: { ...liveReport().node, dataDir: null },
    store: null,
  });
  const status = nodeStatus({ live, volumes: null, metadataError: null, nowMs: startedAtMs });
  assert.equal(status.store, null);
  assert.equal(status.node.dataDir, null);
  assert.deepEqual(
    Object.keys(
      JSON.parse(renderStatus({ live, volumes: null, metadataError: null, nowMs: startedAtMs })),
    ),
    STATUS_KEYS,
  );
});
