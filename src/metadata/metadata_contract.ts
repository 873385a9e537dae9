/**
 * The contract of the metadata service, run against every KvStore driver: the in-memory store
 * (unit tests beside this file), the embedded store and real etcd (tests/metadata/). Each test
 * works under its own random prefix, so drivers that share a server can run the suite in parallel.
 *
 * A backend opens one or more KvStore connections to the same data (several connections stand
 * for several processes). Lease tests use real expiry with the shortest TTL the driver honours.
 * @module
 */

import assert from "node:assert/strict";
import {
  BlockRef,
  type Clock,
  ErrorCode,
  INodeRef,
  isTorusError,
  logger,
  SeededRandom,
  systemClock,
  testSeed,
} from "../core/mod.ts";
import {
  emptyPeerInfo,
  type PeerInfo,
  PeerInfoCodec,
  type Ring as RingMessage,
  RingCodec,
  VolumeCodec,
} from "../models/mod.ts";
import type { KvStore } from "./kv.ts";
import { decodeU64, encodeU64 } from "./keys.ts";
import type { MetadataService, StaleRecord, StaleRecordChange } from "./metadata.ts";
import { createMetadataService } from "./service.ts";
import { encodeStaleMarks, STALE_REFS_MAX, StaleMarkMetadataImpl } from "./stale_marks.ts";

/** Connections to one backing store, created per test. */
export interface ContractBackend {
  /** A new connection (as another process would open). */
  open(): Promise<KvStore>;
  /** Releases the backing store (connections are closed by the suite). */
  close(): Promise<void>;
}

/** Options of {@link metadataServiceContract}. */
export interface MetadataContractOptions {
  /** Shortest lease TTL the driver honours (etcd rounds up to whole seconds, minimum 2 s). */
  readonly leaseTtlMs: number;
  /** How long an expired lease may take to delete its keys. */
  readonly expiryTimeoutMs: number;
  /** When set, every test is registered as ignored, with this reason in its name. */
  readonly ignoreReason?: string;
}

/** A clock that runs with the system clock plus an offset the test moves. */
class OffsetClock implements Clock {
  offsetMs = 0;
  nowMs(): number {
    return systemClock.nowMs() + this.offsetMs;
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return systemClock.sleep(ms, signal);
  }
  after(ms: number, fire: () => void): () => void {
    return systemClock.after(ms, fire);
  }
}

interface Fixture {
  mds: MetadataService;
  clock: OffsetClock;
  prefix: string;
  /** A second service on the same data, through its own connection. */
  other(): Promise<MetadataService>;
}

const encoder = new TextEncoder();

function ketamaRing(version: number, peers: PeerInfo[] = [], replication = 2): RingMessage {
  return { type: 4, version, replicationFactor: replication, peers, attrs: {} };
}

const initOptions = {
  blockSizeBytes: 4096,
  defaultBlockSpec: [{ kind: 1, options: "" }, { kind: 0, options: "" }],
  ring: ketamaRing(1),
};

async function assertCode(promise: Promise<unknown>, code: string, pattern?: RegExp) {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTorusError(error), `expected a TorusError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    assert.ok(!error.message.includes("\n"), "error messages are one line");
    return true;
  });
}

async function waitFor(what: string, timeoutMs: number, check: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Registers the metadata-service contract tests for one driver. */
export function metadataServiceContract(
  name: string,
  setup: () => Promise<ContractBackend>,
  options: MetadataContractOptions,
): void {
  const seed = testSeed();
  const random = new SeededRandom(seed);
  const test = (title: string, body: (f: Fixture) => Promise<void>) => {
    const ignored = options.ignoreReason ? ` (ignored: ${options.ignoreReason})` : "";
    Deno.test({
      name: `metadata contract (${name}, seed=${seed}): ${title}${ignored}`,
      ignore: options.ignoreReason !== undefined,
      // Every test closes what it opened: no timer, socket or worker may outlive it.
      sanitizeOps: true,
      sanitizeResources: true,
      fn: () => runTest(body),
    });
  };
  const runTest = async (body: (f: Fixture) => Promise<void>) => {
    const backend = await setup();
    const services: MetadataService[] = [];
    const id = random.nextU32().toString(16);
    const prefix = `/torus-contract/${id}/torus/`;
    const clock = new OffsetClock();
    const open = async () => {
      const service = createMetadataService(await backend.open(), {
        prefix,
        clock,
        random: new SeededRandom(random.nextU32()),
      });
      services.push(service);
      return service;
    };
    try {
      await body({ mds: await open(), clock, prefix, other: open });
    } finally {
      const first = services[0];
      if (first) await first.kv.deletePrefix(`/torus-contract/${id}/`).catch(() => {});
      for (const service of services) await service.close();
      await backend.close();
    }
  };
  registerClusterTests(test);
  registerRingTests(test);
  registerPeerTests(test, options);
  registerVolumeTests(test);
  registerLockTests(test, options);
  registerSnapshotTests(test);
  registerStaleMarkTests(test);
}

type TestFn = (title: string, body: (f: Fixture) => Promise<void>) => void;

function registerClusterTests(test: TestFn): void {
  test("an uninitialised cluster says so on every read", async ({ mds }) => {
    assert.equal(await mds.cluster.isInitialised(), false);
    const notInit = /cluster not initialised: run `torus ctl init`/;
    await assertCode(mds.cluster.globalMetadata(), ErrorCode.NotExist, notInit);
    await assertCode(mds.cluster.getRing(), ErrorCode.NotExist, notInit);
    await assertCode(mds.volumes.listVolumes(), ErrorCode.NotExist, notInit);
    await assertCode(mds.volumes.createBlockVolume("v", 4096), ErrorCode.NotExist, notInit);
  });

  test("init writes the original's layout and refuses a second init", async ({ mds, prefix }) => {
    await mds.cluster.init(initOptions);
    assert.equal(await mds.cluster.isInitialised(), true);
    const global = await mds.kv.get(`${prefix}meta/globalmetadata`);
    assert.equal(
      new TextDecoder().decode(global!.value),
      '{"BlockSize":4096,"DefaultBlockSpec":[{"Kind":1,"Options":""},{"Kind":0,"Options":""}]}',
    );
    const minter = await mds.kv.get(`${prefix}meta/volumeminter`);
    assert.deepEqual(minter!.value, encodeU64(1n));
    const ring = RingCodec.decode((await mds.kv.get(`${prefix}meta/the-one-ring`))!.value);
    assert.deepEqual([ring.type, ring.version, ring.replicationFactor], [4, 1, 2]);
    assert.deepEqual(await mds.cluster.globalMetadata(), {
      blockSizeBytes: 4096,
      defaultBlockSpec: initOptions.defaultBlockSpec,
    });
    await assertCode(mds.cluster.init(initOptions), ErrorCode.Exists, /already initialised/);
  });

  test("init mints a cluster id: stable, and new after a wipe", async ({ mds }) => {
    await assertCode(mds.cluster.clusterId(), ErrorCode.NotExist, /not initialised/);
    await mds.cluster.init(initOptions);
    const id = await mds.cluster.clusterId();
    assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(await mds.cluster.clusterId(), id);
    await mds.cluster.wipe();
    await mds.cluster.init(initOptions);
    assert.notEqual(await mds.cluster.clusterId(), id);
  });

  test("init rejects bad block sizes and specs without base", async ({ mds }) => {
    for (const blockSizeBytes of [0, 100, 4097, 2 ** 30]) {
      await assertCode(mds.cluster.init({ ...initOptions, blockSizeBytes }), ErrorCode.Invalid);
    }
    const noBase = { ...initOptions, defaultBlockSpec: [{ kind: 1, options: "" }] };
    await assertCode(mds.cluster.init(noBase), ErrorCode.Invalid, /base/);
    assert.equal(await mds.cluster.isInitialised(), false);
  });

  test("wipe deletes the prefix and nothing beside it", async ({ mds, prefix }) => {
    await mds.cluster.init(initOptions);
    await mds.volumes.createBlockVolume("a", 4096);
    const base = prefix.slice(0, -1); // ".../torus"
    await mds.kv.put(`${base}-sibling/key`, encoder.encode("keep"));
    await mds.kv.put(base, encoder.encode("keep"));
    assert.ok((await mds.cluster.wipe()) >= 5);
    assert.deepEqual(await mds.kv.range(prefix), []);
    assert.equal(await mds.cluster.isInitialised(), false);
    assert.ok(await mds.kv.get(`${base}-sibling/key`));
    assert.ok(await mds.kv.get(base));
  });
}

function registerRingTests(test: TestFn): void {
  test("setRing accepts exactly version + 1 and never regresses", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    await mds.cluster.setRing(ketamaRing(2));
    assert.equal((await mds.cluster.getRing()).version, 2);
    for (const version of [2, 1, 0, 4]) {
      await assertCode(mds.cluster.setRing(ketamaRing(version)), ErrorCode.CompareFailed);
    }
    assert.equal((await mds.cluster.getRing()).version, 2);
  });

  test("concurrent setRing of the same successor: exactly one wins", async ({ mds, other }) => {
    await mds.cluster.init(initOptions);
    const others = await Promise.all([other(), other(), other()]);
    const results = await Promise.allSettled(
      [mds, ...others].map((s, i) => s.cluster.setRing(ketamaRing(2, [], i + 1))),
    );
    assert.equal(results.filter((r) => r.status === "fulfilled").length, 1);
    for (const r of results) {
      if (r.status === "rejected") {
        assert.ok(isTorusError(r.reason));
        assert.ok([ErrorCode.Again, ErrorCode.CompareFailed].includes(r.reason.code as "again"));
      }
    }
    assert.equal((await mds.cluster.getRing()).version, 2);
  });

  test("updateRing retries lost races so every change lands", async ({ mds, other }) => {
    await mds.cluster.init(initOptions);
    const others = await Promise.all([other(), other()]);
    const bump = (s: MetadataService) =>
      s.cluster.updateRing((r) => ({ ...r, version: r.version + 1 }));
    await Promise.all([mds, ...others, mds].map(bump));
    assert.equal((await mds.cluster.getRing()).version, 5);
    await assertCode(
      mds.cluster.updateRing((r) => ({ ...r, version: r.version + 2 })),
      ErrorCode.CompareFailed,
    );
  });

  test("watchRing delivers the current ring, then newer ones, skipping junk", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const seen: number[] = [];
    const sub = await mds.cluster.watchRing((ring) => seen.push(ring.version));
    assert.deepEqual(seen, [1]);
    const writer = await f.other();
    await writer.cluster.setRing(ketamaRing(2));
    await writer.kv.put(`${prefix}meta/the-one-ring`, encoder.encode("\xff garbage"));
    await writer.kv.put(`${prefix}meta/the-one-ring`, RingCodec.encode(ketamaRing(1)));
    await writer.kv.put(`${prefix}meta/the-one-ring-other`, RingCodec.encode(ketamaRing(9)));
    await writer.kv.put(`${prefix}meta/the-one-ring`, RingCodec.encode(ketamaRing(3)));
    await waitFor("ring 3", 5_000, () => Promise.resolve(seen.includes(3)));
    assert.deepEqual(seen, [1, 2, 3]);
    await sub.unsubscribe();
    await writer.kv.put(`${prefix}meta/the-one-ring`, RingCodec.encode(ketamaRing(4)));
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(seen, [1, 2, 3]);
  });
}

function peer(uuid: string, address: string): PeerInfo {
  return { ...emptyPeerInfo(uuid), address, totalBlocks: 100n, usedBlocks: 7n };
}

/** Peer UUIDs of the tests, in sorted order. */
const uuidA = "0a0a0a0a-0000-4000-8000-00000000000a";
const uuidB = "0b0b0b0b-0000-4000-8000-00000000000b";
const uuidC = "0c0c0c0c-0000-4000-8000-00000000000c";

function registerPeerTests(test: TestFn, options: MetadataContractOptions): void {
  test("peers register under a lease with a timestamp; stale ones are hidden", async (f) => {
    const { mds, clock } = f;
    const lease = await mds.leases.grant(60_000);
    const before = BigInt(Date.now()) * 1_000_000n;
    await mds.peers.registerPeer(peer(uuidB, "tdp://127.0.0.1:2"), lease);
    await mds.peers.registerPeer(peer(uuidA, "tdp://127.0.0.1:1"), lease);
    const peers = await mds.peers.listPeers();
    assert.deepEqual(peers.map((p) => p.uuid), [uuidA, uuidB]);
    assert.ok(peers[0]!.lastSeen >= before);
    assert.equal(peers[0]!.totalBlocks, 100n);
    clock.offsetMs = 60_000;
    assert.deepEqual(await mds.peers.listPeers(), []);
    assert.equal((await mds.peers.listPeers({ includeStale: true })).length, 2);
    await mds.peers.unregisterPeer(uuidA);
    assert.equal((await mds.peers.listPeers({ includeStale: true })).length, 1);
    await mds.leases.revoke(lease);
    assert.deepEqual(await mds.peers.listPeers({ includeStale: true }), []);
  });

  test("a registration vanishes when its lease expires; renewOrGrant re-registers", async (f) => {
    const { mds } = f;
    const lease = await mds.leases.grant(options.leaseTtlMs);
    await mds.peers.registerPeer(peer(uuidA, "tdp://h:1"), lease);
    await waitFor("registration expiry", options.expiryTimeoutMs, async () => {
      return (await mds.peers.listPeers()).length === 0;
    });
    await assertCode(mds.leases.keepAlive(lease), ErrorCode.NotExist);
    await assertCode(mds.peers.registerPeer(peer(uuidA, "tdp://h:1"), lease), ErrorCode.NotExist);
    const renewed = await mds.leases.renewOrGrant(lease, 60_000);
    assert.notEqual(renewed, lease);
    assert.equal(await mds.leases.renewOrGrant(renewed, 60_000), renewed);
    await mds.peers.registerPeer(peer(uuidA, "tdp://h:1"), renewed);
    assert.equal((await mds.peers.listPeers()).length, 1);
  });

  test("balanced ring versions outlive registrations and never go back", async (f) => {
    const { mds, prefix } = f;
    assert.deepEqual(await mds.peers.balancedRings(), new Map());
    await mds.peers.recordBalanced(uuidA, 3);
    await mds.peers.recordBalanced(uuidB, 7);
    await mds.peers.recordBalanced(uuidA, 2); // older: ignored
    assert.deepEqual(await mds.peers.balancedRings(), new Map([[uuidA, 3], [uuidB, 7]]));
    await mds.peers.recordBalanced(uuidA, 4);
    assert.equal((await mds.peers.balancedRings()).get(uuidA), 4);
    await mds.kv.put(`${prefix}balanced/${uuidB}`, encoder.encode("junk"));
    assert.deepEqual(await mds.peers.balancedRings(), new Map([[uuidA, 4]]));
    await assertCode(mds.peers.recordBalanced(uuidA, -1), ErrorCode.Invalid);
    await assertCode(mds.peers.recordBalanced("not-a-uuid", 1), ErrorCode.Invalid);
  });

  test("undecodable registrations are skipped, bad uuids rejected", async ({ mds, prefix }) => {
    const lease = await mds.leases.grant(60_000);
    await mds.kv.put(`${prefix}nodes/junk`, encoder.encode("\xff\xff\xff"));
    await mds.peers.registerPeer(peer(uuidA, "tdp://h:1"), lease);
    assert.deepEqual((await mds.peers.listPeers()).map((p) => p.uuid), [uuidA]);
    for (const bad of ["a/b", "not-a-uuid", "x".repeat(255), "tdp://h:1"]) {
      await assertCode(mds.peers.registerPeer(peer(bad, ""), lease), ErrorCode.Invalid);
    }
    await assertCode(mds.peers.registerPeer(peer(uuidB, "h:1\x1b[2J"), lease), ErrorCode.Invalid);
    await assertCode(mds.peers.registerPeer(peer(uuidB, ""), 0n), ErrorCode.Invalid);
    assert.match(mds.peers.newUuid(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-/);
  });

  test("a UUID registers in its lowercase form: one node, one key", async ({ mds, prefix }) => {
    const lease = await mds.leases.grant(60_000);
    await mds.peers.registerPeer(peer(uuidA.toUpperCase(), "tdp://h:1"), lease);
    await mds.peers.registerPeer(peer(uuidA, "tdp://h:2"), lease);
    const peers = await mds.peers.listPeers();
    assert.deepEqual(peers.map((p) => [p.uuid, p.address]), [[uuidA, "tdp://h:2"]]);
    assert.deepEqual((await mds.kv.range(`${prefix}nodes/`)).map((e) => e.key), [
      `${prefix}nodes/${uuidA}`,
    ]);
    await mds.peers.unregisterPeer(uuidA.toUpperCase());
    assert.deepEqual(await mds.peers.listPeers(), []);
  });

  test("forged records are skipped: key and value disagree, bad UUID or address", async (f) => {
    const { mds, prefix } = f;
    const lease = await mds.leases.grant(60_000);
    await mds.peers.registerPeer(peer(uuidA, "tdp://h:1"), lease);
    const stamped = (p: PeerInfo) => ({ ...p, lastSeen: BigInt(Date.now()) * 1_000_000n });
    const forged: [string, PeerInfo][] = [
      [uuidB, peer(uuidA, "tdp://h:1")],
      [uuidB.toUpperCase(), peer(uuidB, "tdp://h:2")],
      ["not-a-uuid", peer("not-a-uuid", "tdp://h:3")],
      [uuidC, peer(uuidC, "tdp://h:4\x1b[2J\x1b[Hforged")],
    ];
    for (const [key, value] of forged) {
      await mds.kv.put(`${prefix}nodes/${key}`, PeerInfoCodec.encode(stamped(value)));
    }
    const peers = await mds.peers.listPeers();
    assert.deepEqual(peers.map((p) => [p.uuid, p.address]), [[uuidA, "tdp://h:1"]]);
  });
}

function registerVolumeTests(test: TestFn): void {
  test("create writes the original's keys; ids start at 2", async ({ mds, prefix }) => {
    await mds.cluster.init(initOptions);
    const info = await mds.volumes.createBlockVolume("vol", 10_240);
    assert.deepEqual(info, { id: 2, name: "vol", type: "block", sizeBytes: 10_240, parent: null });
    const value = async (key: string) => (await mds.kv.get(`${prefix}${key}`))!.value;
    assert.deepEqual(await value("volumes/vol"), encodeU64(2n));
    assert.deepEqual(await value("meta/volumeminter"), encodeU64(2n));
    assert.deepEqual(await value("volumemeta/2/inode"), encodeU64(1n));
    assert.deepEqual(await value("volumemeta/2/blockinode"), new INodeRef(2, 1n).toBytes());
    assert.ok(await mds.kv.get(`${prefix}volumeid/2`));
    assert.deepEqual(await mds.volumes.getVolume("vol"), info);
    assert.deepEqual(await mds.volumes.getVolumeById(2), info);
  });

  test("a failed create consumes no volume id", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    await mds.volumes.createBlockVolume("a", 4096);
    await assertCode(mds.volumes.createBlockVolume("a", 4096), ErrorCode.Exists, /"a"/);
    for (const bad of ["bad/name", "db\u200b", "-x", "a@b", "caf\u00e9"]) {
      await assertCode(mds.volumes.createBlockVolume(bad, 4096), ErrorCode.Invalid);
    }
    await assertCode(mds.volumes.createBlockVolume("b", 0), ErrorCode.Invalid);
    await assertCode(mds.volumes.createBlockVolume("b", 513), ErrorCode.Invalid, /512-byte/);
    assert.equal((await mds.volumes.createBlockVolume("b", 4096)).id, 3);
    assert.equal((await mds.volumes.listVolumes()).highestId, 3);
  });

  test("concurrent creates get distinct ids; one name is created once", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const services = [mds, await f.other(), await f.other()];
    const made = await Promise.all(
      [0, 1, 2, 3, 4, 5].map((i) => services[i % 3]!.volumes.createBlockVolume(`v${i}`, 4096)),
    );
    assert.deepEqual(made.map((v) => v.id).sort((a, b) => a - b), [2, 3, 4, 5, 6, 7]);
    const same = await Promise.allSettled(
      services.map((s) => s.volumes.createBlockVolume("same", 4096)),
    );
    assert.equal(same.filter((r) => r.status === "fulfilled").length, 1);
    assert.equal((await mds.volumes.listVolumes()).highestId, 8);
  });

  test("list is sorted; get after delete and re-create is never stale", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    await mds.volumes.createBlockVolume("zeta", 4096);
    await mds.volumes.createBlockVolume("alpha", 8192);
    const listed = await mds.volumes.listVolumes();
    assert.deepEqual(listed.volumes.map((v) => v.name), ["alpha", "zeta"]);
    assert.equal((await mds.volumes.getVolume("zeta")).id, 2);
    await mds.volumes.deleteVolume("zeta");
    await assertCode(mds.volumes.getVolume("zeta"), ErrorCode.NotExist, /"zeta"/);
    await assertCode(mds.volumes.getVolumeById(2), ErrorCode.NotExist);
    await mds.volumes.createBlockVolume("zeta", 4096);
    assert.equal((await mds.volumes.getVolume("zeta")).id, 4);
    await assertCode(mds.volumes.deleteVolume("nope"), ErrorCode.NotExist, /"nope"/);
  });

  test("invalid volume records come apart; older names stay listable, deletable", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    await mds.volumes.createBlockVolume("good", 4096);
    // A volume an older build accepted (a zero-width space), written as that build did.
    const old = { name: "good\u200b", id: 3n, type: "block", maxBytes: 4096n };
    await mds.kv.put(`${prefix}volumes/${old.name}`, encodeU64(3n));
    await mds.kv.put(`${prefix}volumeid/3`, VolumeCodec.encode(old));
    await mds.kv.put(`${prefix}volumeid/9`, VolumeCodec.encode({ ...old, name: "x", id: 4n }));
    await mds.kv.put(`${prefix}volumeid/a`, encoder.encode("\xff\xff"));
    const listed = await mds.volumes.listVolumes();
    assert.deepEqual(listed.volumes.map((v) => v.name), ["good", "good\u200b"]);
    assert.deepEqual(listed.invalid.map((r) => r.key), [
      `${prefix}volumeid/9`,
      `${prefix}volumeid/a`,
    ]);
    assert.match(listed.invalid[0]!.reason, /stored under another key/);
    await mds.volumes.deleteVolume("good\u200b");
    assert.deepEqual((await mds.volumes.listVolumes()).volumes.map((v) => v.name), ["good"]);
  });

  test("deleting volume 2 does not touch volume 0x20 (trailing /)", async ({ mds, prefix }) => {
    await mds.cluster.init(initOptions);
    await mds.volumes.createBlockVolume("two", 4096);
    await mds.kv.put(`${prefix}meta/volumeminter`, encodeU64(0x1fn));
    const twenty = await mds.volumes.createBlockVolume("thirty-two", 4096);
    assert.equal(twenty.id, 0x20);
    await mds.blockVolumes.commitINodeIndex(0x20);
    await mds.snapshots.saveSnapshot(0x20, "s");
    const before = await mds.kv.range(`${prefix}volumemeta/20/`);
    await mds.volumes.deleteVolume("two");
    assert.deepEqual(await mds.kv.range(`${prefix}volumemeta/2/`), []);
    assert.deepEqual(await mds.kv.range(`${prefix}volumemeta/20/`), before);
    assert.equal(await mds.blockVolumes.getINodeIndex(0x20), 3n, "the snapshot took one more");
    assert.equal((await mds.snapshots.listSnapshots(0x20)).length, 1);
  });

  test("INode counters hand out unique increasing ids", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    assert.equal(await mds.blockVolumes.getINodeIndex(id), 1n);
    const second = await f.other();
    const ids = await Promise.all(
      [0, 1, 2, 3, 4, 5, 6, 7].map((i) => (i % 2 ? mds : second).blockVolumes.commitINodeIndex(id)),
    );
    assert.deepEqual(ids.sort((a, b) => Number(a - b)), [2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n]);
    assert.equal(await mds.blockVolumes.getINodeIndex(id), 9n);
    await assertCode(mds.blockVolumes.commitINodeIndex(99), ErrorCode.NotExist);
    await assertCode(mds.blockVolumes.getINodeIndex(99), ErrorCode.NotExist);
    await assertCode(mds.blockVolumes.getHead(99), ErrorCode.NotExist);
  });

  test("volume ids survive the LE encoding beyond 32 bits", async ({ mds, prefix }) => {
    await mds.cluster.init(initOptions);
    await mds.kv.put(`${prefix}meta/volumeminter`, encodeU64(0x1_2345_6789n));
    const big = await mds.volumes.createBlockVolume("big", 4096);
    assert.equal(big.id, 0x1_2345_678a);
    const stored = await mds.kv.get(`${prefix}volumes/big`);
    assert.equal(decodeU64(stored!.value, "id"), 0x1_2345_678an);
    assert.ok(await mds.kv.get(`${prefix}volumemeta/12345678a/blockinode`));
  });
}

function registerLockTests(test: TestFn, options: MetadataContractOptions): void {
  test("the lock fences publication of the head to its acquisition", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const lease = await mds.leases.grant(60_000);
    assert.deepEqual(await mds.blockVolumes.lockStatus(id), { state: "free" });
    const writer = await mds.blockVolumes.lock(id, { uuid: "writer", lease });
    assert.equal(writer.volumeId, id);
    assert.equal(writer.holder, "writer");
    assert.equal(writer.lease, lease);
    assert.ok(writer.fencingToken > 0n);
    assert.deepEqual(await mds.blockVolumes.lockStatus(id), {
      state: "locked",
      holder: "writer",
      lease,
      fencingToken: writer.fencingToken,
    });
    await assertCode(mds.blockVolumes.lock(id, { uuid: "other", lease }), ErrorCode.Locked);
    await assertCode(mds.blockVolumes.lock(id, { uuid: "writer", lease }), ErrorCode.Locked);
    await mds.blockVolumes.publishHead(writer, new INodeRef(id, 2n));
    assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 2n));
    // Handles that are not this acquisition: another holder, or a token that is not its own.
    const other = { ...writer, holder: "other" };
    const forged = { ...writer, fencingToken: writer.fencingToken + 1n };
    for (const handle of [other, forged]) {
      const stolen = mds.blockVolumes.publishHead(handle, new INodeRef(id, 3n));
      await assertCode(stolen, ErrorCode.Locked, /held by writer with fencing token/);
      await assertCode(mds.blockVolumes.unlock(handle), ErrorCode.Locked);
    }
    await assertCode(mds.volumes.deleteVolume("v"), ErrorCode.Locked, /in use/);
    await mds.blockVolumes.unlock(writer);
    await assertCode(
      mds.blockVolumes.publishHead(writer, new INodeRef(id, 4n)),
      ErrorCode.Locked,
      /was lost \(it is free\)/,
    );
    await assertCode(mds.blockVolumes.unlock(writer), ErrorCode.Locked);
    assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 2n));
    await mds.volumes.deleteVolume("v");
  });

  test("lock arguments and lock handles are checked", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const lease = await mds.leases.grant(60_000);
    await assertCode(mds.blockVolumes.lock(id, { uuid: "w", lease: 0n }), ErrorCode.Invalid);
    await assertCode(mds.blockVolumes.lock(77, { uuid: "w", lease }), ErrorCode.NotExist);
    const lock = await mds.blockVolumes.lock(id, { uuid: "w", lease });
    const foreign = mds.blockVolumes.publishHead(lock, new INodeRef(id + 1, 2n));
    await assertCode(foreign, ErrorCode.Invalid);
    for (
      const bad of [
        { ...lock, fencingToken: 0n },
        { ...lock, fencingToken: -5n },
        { ...lock, fencingToken: 2n ** 64n },
        { ...lock, holder: "a/b" },
        { ...lock, volumeId: -1 },
      ]
    ) {
      await assertCode(mds.blockVolumes.publishHead(bad, new INodeRef(id, 2n)), ErrorCode.Invalid);
      await assertCode(mds.blockVolumes.unlock(bad), ErrorCode.Invalid);
    }
    assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 1n));
  });

  test("an expired lease releases the lock and its holder can no longer publish", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const lease = await mds.leases.grant(options.leaseTtlMs);
    const old = await mds.blockVolumes.lock(id, { uuid: "old", lease });
    await mds.blockVolumes.publishHead(old, new INodeRef(id, 2n));
    await waitFor("lock release", options.expiryTimeoutMs, async () => {
      return (await mds.blockVolumes.lockStatus(id)).state === "free";
    });
    const second = await f.other();
    const newLease = await second.leases.grant(60_000);
    const taken = await second.blockVolumes.lock(id, { uuid: "new", lease: newLease });
    assert.ok(taken.fencingToken > old.fencingToken);
    const fenced = mds.blockVolumes.publishHead(old, new INodeRef(id, 3n));
    await assertCode(fenced, ErrorCode.Locked, /held by new/);
    await second.blockVolumes.publishHead(taken, new INodeRef(id, 4n));
    assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 4n));
  });

  test(
    "a holder whose lease expired and who locked again with the same UUID cannot publish or " +
      "unlock from the old acquisition",
    async ({ mds }) => {
      await mds.cluster.init(initOptions);
      const { id } = await mds.volumes.createBlockVolume("v", 4096);
      const shortLease = await mds.leases.grant(options.leaseTtlMs);
      const first = await mds.blockVolumes.lock(id, { uuid: "writer", lease: shortLease });
      await mds.blockVolumes.publishHead(first, new INodeRef(id, 2n));
      await waitFor("lock release", options.expiryTimeoutMs, async () => {
        return (await mds.blockVolumes.lockStatus(id)).state === "free";
      });
      const lease = await mds.leases.grant(60_000);
      const again = await mds.blockVolumes.lock(id, { uuid: "writer", lease });
      assert.ok(again.fencingToken > first.fencingToken, "a new acquisition has a larger token");
      const stale = mds.blockVolumes.publishHead(first, new INodeRef(id, 3n));
      await assertCode(stale, ErrorCode.Locked, /was lost/);
      await assertCode(mds.blockVolumes.unlock(first), ErrorCode.Locked, /was lost/);
      assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 2n));
      const status = await mds.blockVolumes.lockStatus(id);
      assert.deepEqual(status, {
        state: "locked",
        holder: "writer",
        lease,
        fencingToken: again.fencingToken,
      }, "the stale unlock released nothing");
      await mds.blockVolumes.publishHead(again, new INodeRef(id, 4n));
      await mds.blockVolumes.unlock(again);
      assert.deepEqual(await mds.blockVolumes.getHead(id), new INodeRef(id, 4n));
    },
  );

  test("a lock watch delivers the locks held, then each lock taken, with its token", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const a = (await mds.volumes.createBlockVolume("a", 4096)).id;
    const b = (await mds.volumes.createBlockVolume("b", 4096)).id;
    const lease = await mds.leases.grant(60_000);
    const first = await mds.blockVolumes.lock(a, { uuid: "one", lease });
    const seen: string[] = [];
    const sub = await mds.blockVolumes.watchLocks((lock) => {
      seen.push(`v${lock.volumeId} ${lock.fencingToken}`);
    });
    assert.deepEqual(seen, [`v${a} ${first.fencingToken}`], "the lock held at the start");
    const writer = await f.other();
    const writerLease = await writer.leases.grant(60_000);
    const onB = await writer.blockVolumes.lock(b, { uuid: "two", lease: writerLease });
    // Neither a release, nor a head, nor a key that only looks like a lock is a lock taken.
    await mds.blockVolumes.unlock(first);
    await writer.blockVolumes.publishHead(onB, new INodeRef(b, 2n));
    await writer.kv.put(`${prefix}volumemeta/${a.toString(16)}/blocklock/x`, encoder.encode("x"));
    await writer.kv.put(`${prefix}volumemeta/zz/blocklock`, encoder.encode("x"));
    const again = await writer.blockVolumes.lock(a, { uuid: "two", lease: writerLease });
    await waitFor("the second lock of a", 5_000, () => Promise.resolve(seen.length >= 3));
    assert.deepEqual(seen, [
      `v${a} ${first.fencingToken}`,
      `v${b} ${onB.fencingToken}`,
      `v${a} ${again.fencingToken}`,
    ]);
    assert.ok(again.fencingToken > first.fencingToken);
    await sub.unsubscribe();
    await writer.blockVolumes.unlock(again);
    await writer.blockVolumes.lock(a, { uuid: "three", lease: writerLease });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(seen.length, 3, "nothing after unsubscribe");
  });

  test("after a revoke and a re-lock with the same UUID, the old handle is fenced", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const lease = await mds.leases.grant(60_000);
    const first = await mds.blockVolumes.lock(id, { uuid: "writer", lease });
    await mds.leases.revoke(lease);
    assert.deepEqual(await mds.blockVolumes.lockStatus(id), { state: "free" });
    await assertCode(mds.blockVolumes.lock(id, { uuid: "writer", lease }), ErrorCode.NotExist);
    const second = await f.other();
    const again = await second.blockVolumes.lock(id, {
      uuid: "writer",
      lease: await second.leases.grant(60_000),
    });
    await assertCode(mds.blockVolumes.publishHead(first, new INodeRef(id, 9n)), ErrorCode.Locked);
    await assertCode(mds.blockVolumes.unlock(first), ErrorCode.Locked);
    assert.equal((await mds.blockVolumes.lockStatus(id)).state, "locked");
    await second.blockVolumes.unlock(again);
  });

  test("fencing tokens of a volume grow with every acquisition", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const other = await f.other();
    const tokens: bigint[] = [];
    for (let i = 0; i < 4; i++) {
      const service = i % 2 ? other : mds;
      const lock = await service.blockVolumes.lock(id, {
        uuid: "same-holder",
        lease: await service.leases.grant(60_000),
      });
      tokens.push(lock.fencingToken);
      // Unrelated changes in between must not matter.
      await service.volumes.createBlockVolume(`noise${i}`, 4096);
      await service.blockVolumes.unlock(lock);
    }
    for (let i = 1; i < tokens.length; i++) assert.ok(tokens[i]! > tokens[i - 1]!, `${tokens}`);
  });
}

function registerSnapshotTests(test: TestFn): void {
  test("a snapshot without a writer seals the head's contents and moves on", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const first = await mds.snapshots.saveSnapshot(id, "empty");
    assert.deepEqual(first.inodeRef, new INodeRef(id, 1n));
    assert.equal(first.sizeBytes, 4096);
    // The head moved to a new generation whose contents are generation 1's (its base).
    assert.deepEqual(await mds.blockVolumes.headState(id), {
      volume: await mds.volumes.getVolumeById(id),
      head: new INodeRef(id, 2n),
      base: 1n,
    });
    // A second snapshot before any writer came: the same contents, so the same generation.
    const second = await mds.snapshots.saveSnapshot(id, "still-empty");
    assert.deepEqual(second.inodeRef, new INodeRef(id, 1n));
    assert.deepEqual((await mds.blockVolumes.headState(id)).head, new INodeRef(id, 3n));
    await assertCode(mds.snapshots.saveSnapshot(id, "empty"), ErrorCode.Exists);
    const listed = await mds.snapshots.listSnapshots(id);
    assert.deepEqual(listed.map((s) => s.name), ["empty", "still-empty"]);
    assert.deepEqual(await mds.snapshots.getSnapshot(id, "empty"), first);
    const raw = JSON.parse(new TextDecoder().decode(
      (await mds.kv.get(`${prefix}volumemeta/${id.toString(16)}/snapshots/empty`))!.value,
    ));
    assert.equal(raw.Name, "empty");
    assert.equal(raw.INodeRef, btoa(String.fromCharCode(...new INodeRef(id, 1n).toBytes())));
    assert.equal(raw.Size, 4096);
    assert.ok(Math.abs(Date.parse(raw.When) - Date.now()) < 60_000);
    // A writer holds it: the snapshot is the writer's to take.
    const lease = await mds.leases.grant(60_000);
    await mds.blockVolumes.lock(id, { uuid: "w", lease });
    await assertCode(mds.snapshots.saveSnapshot(id, "busy"), ErrorCode.Locked);
  });

  test("a writer seals its generation, fenced to its lock", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 8192);
    await mds.snapshots.saveSnapshot(id, "base"); // head 2, base 1
    const lease = await mds.leases.grant(60_000);
    const lock = await mds.blockVolumes.lock(id, { uuid: "w", lease });
    await mds.blockVolumes.clearBase(lock); // the writer wrote generation 2's root
    assert.equal((await mds.blockVolumes.headState(id)).base, null);
    const next = await mds.blockVolumes.commitINodeIndex(id);
    const options = { ending: 2n, next, snapshotName: "s1", sizeBytes: 8192 };
    const sealed = await mds.blockVolumes.sealGeneration(lock, options);
    assert.deepEqual(sealed.inodeRef, new INodeRef(id, 2n));
    assert.deepEqual((await mds.blockVolumes.headState(id)).head, new INodeRef(id, next));
    await assertCode(
      mds.blockVolumes.sealGeneration(lock, { ...options, snapshotName: "s1" }),
      ErrorCode.Exists,
    );
    // The head is no longer `ending`: a stale seal is refused.
    await assertCode(
      mds.blockVolumes.sealGeneration(lock, { ...options, snapshotName: "s2" }),
      ErrorCode.Invalid,
    );
    // A lost lock seals nothing, even when the same holder locks again.
    await mds.leases.revoke(lease);
    const again = await mds.blockVolumes.lock(id, {
      uuid: "w",
      lease: await mds.leases.grant(60_000),
    });
    const stale = { ending: next, next: next + 1n, snapshotName: "s3", sizeBytes: 8192 };
    await assertCode(mds.blockVolumes.sealGeneration(lock, stale), ErrorCode.Locked);
    await assertCode(mds.blockVolumes.clearBase(lock), ErrorCode.Locked);
    assert.equal((await mds.snapshots.listSnapshots(id)).length, 2);
    await mds.blockVolumes.sealGeneration(again, stale);
  });

  test("restore needs the volume unlocked and bases a new generation on the snapshot", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const start = await mds.snapshots.saveSnapshot(id, "start");
    await mds.blockVolumes.growVolume(id, 8192);
    const lease = await mds.leases.grant(60_000);
    const lock = await mds.blockVolumes.lock(id, { uuid: "w", lease });
    await assertCode(mds.snapshots.restoreSnapshot(id, "start"), ErrorCode.Locked);
    await mds.blockVolumes.unlock(lock);
    const head = await mds.snapshots.restoreSnapshot(id, "start");
    assert.ok(head.inode > start.inodeRef.inode);
    const state = await mds.blockVolumes.headState(id);
    assert.deepEqual(state.head, head);
    assert.equal(state.base, start.inodeRef.inode);
    assert.equal(state.volume.sizeBytes, 4096, "the snapshot's size comes back");
    await assertCode(mds.snapshots.restoreSnapshot(id, "missing"), ErrorCode.NotExist);
  });

  test("growing: only up, fenced to the writer or needing the volume free", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    assert.equal((await mds.blockVolumes.growVolume(id, 8192)).sizeBytes, 8192);
    await assertCode(mds.blockVolumes.growVolume(id, 4096), ErrorCode.Invalid, /shrink/);
    await assertCode(mds.blockVolumes.growVolume(id, 8193), ErrorCode.Invalid);
    const lease = await mds.leases.grant(60_000);
    const lock = await mds.blockVolumes.lock(id, { uuid: "w", lease });
    await assertCode(mds.blockVolumes.growVolume(id, 16384), ErrorCode.Locked);
    assert.equal((await mds.blockVolumes.growVolume(id, 16384, lock)).sizeBytes, 16384);
    assert.equal((await mds.volumes.getVolumeById(id)).sizeBytes, 16384);
    await mds.leases.revoke(lease);
    await assertCode(mds.blockVolumes.growVolume(id, 32768, lock), ErrorCode.Locked);
    await assertCode(mds.blockVolumes.growVolume(99, 32768), ErrorCode.NotExist);
  });

  test("clones: made from a snapshot, which they keep alive", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const source = await mds.volumes.createBlockVolume("src", 4096);
    const snap = await mds.snapshots.saveSnapshot(source.id, "gold");
    await mds.blockVolumes.growVolume(source.id, 8192);
    const clone = await mds.volumes.createClone("copy", source.id, "gold");
    assert.deepEqual(clone.parent, {
      volumeId: source.id,
      generation: snap.inodeRef.inode,
      snapshot: "gold",
    });
    assert.equal(clone.sizeBytes, 4096, "a clone has its snapshot's size");
    assert.deepEqual(await mds.volumes.getVolume("copy"), clone);
    assert.deepEqual((await mds.snapshots.getSnapshot(source.id, "gold")).clones, [clone.id]);
    await assertCode(mds.snapshots.deleteSnapshot(source.id, "gold"), ErrorCode.Locked, /clone/);
    await assertCode(mds.volumes.deleteVolume("src"), ErrorCode.Locked, /clone/);
    await assertCode(mds.volumes.createClone("copy", source.id, "gold"), ErrorCode.Exists);
    await assertCode(mds.volumes.createClone("other", source.id, "nope"), ErrorCode.NotExist);
    await assertCode(mds.volumes.createClone("other", 99, "gold"), ErrorCode.NotExist);
    const second = await mds.volumes.createClone("copy2", source.id, "gold");
    await mds.volumes.deleteVolume("copy");
    assert.deepEqual((await mds.snapshots.getSnapshot(source.id, "gold")).clones, [second.id]);
    await assertCode(mds.volumes.deleteVolume("src"), ErrorCode.Locked);
    await mds.volumes.deleteVolume("copy2");
    await mds.snapshots.deleteSnapshot(source.id, "gold");
    await mds.volumes.deleteVolume("src");
  });

  test("requests reach the writer and its reply comes back", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    await assertCode(mds.requests.send(id, { op: "grow", sizeBytes: 8192 }), ErrorCode.Again);
    const lease = await mds.leases.grant(60_000);
    const lock = await mds.blockVolumes.lock(id, { uuid: "w", lease });
    const seen: unknown[] = [];
    const serving = await mds.requests.serve(id, (request) => {
      seen.push(request);
      if (request.op === "snapshot" && request.name === "bad") {
        return Promise.resolve({ ok: false, code: ErrorCode.Exists, message: "taken" });
      }
      return Promise.resolve({ ok: true });
    });
    try {
      const other = await f.other();
      assert.deepEqual(await other.requests.send(id, { op: "snapshot", name: "s" }), { ok: true });
      assert.deepEqual(await other.requests.send(id, { op: "snapshot", name: "bad" }), {
        ok: false,
        code: ErrorCode.Exists,
        message: "taken",
      });
      assert.deepEqual(seen, [{ op: "snapshot", name: "s" }, { op: "snapshot", name: "bad" }]);
      // Nothing is left behind.
      assert.deepEqual(await mds.kv.range(mds.keys.requestsDir(id)), []);
      assert.deepEqual(await mds.kv.range(mds.keys.repliesDir(id)), []);
    } finally {
      await serving.unsubscribe();
    }
    // Nobody answers, then the writer leaves: `again`, so the caller can act itself.
    const pending = mds.requests.send(id, { op: "grow", sizeBytes: 8192 }, { timeoutMs: 30_000 });
    await mds.blockVolumes.unlock(lock);
    await assertCode(pending, ErrorCode.Again);
  });

  test("a writer that never answers makes a request fail in time", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const lease = await mds.leases.grant(60_000);
    await mds.blockVolumes.lock(id, { uuid: "silent", lease });
    await assertCode(
      mds.requests.send(id, { op: "snapshot", name: "s" }, { timeoutMs: 500 }),
      ErrorCode.Unavailable,
      /silent/,
    );
    assert.deepEqual(await mds.kv.range(mds.keys.requestsDir(id)), []);
  });

  test("deleting a missing snapshot is not_exist; unknown volumes too", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    await assertCode(mds.snapshots.deleteSnapshot(id, "nope"), ErrorCode.NotExist, /"nope"/);
    await mds.snapshots.saveSnapshot(id, "s");
    await mds.snapshots.deleteSnapshot(id, "s");
    assert.deepEqual(await mds.snapshots.listSnapshots(id), []);
    await assertCode(mds.snapshots.saveSnapshot(99, "s"), ErrorCode.NotExist);
    await assertCode(mds.snapshots.listSnapshots(99), ErrorCode.NotExist);
    await assertCode(mds.snapshots.saveSnapshot(id, "a@b"), ErrorCode.Invalid);
    await mds.volumes.deleteVolume("v");
    await assertCode(mds.snapshots.listSnapshots(id), ErrorCode.NotExist);
  });
}

const NODE_A = "6f1a52b4-3c1e-4d5f-9a1b-0c2d3e4f5a6b";
const NODE_B = "0b8e2c1d-4a5f-4e6b-8c7d-9e0f1a2b3c4d";
const NODE_C = "c0ffee00-1111-4222-8333-444455556666";
const NODE_NAMES: Record<string, string> = { [NODE_A]: "A", [NODE_B]: "B", [NODE_C]: "C" };

/** Data refs of `volume`, INode 7, at `indexes`. */
function refsOf(volume: number, ...indexes: number[]): BlockRef[] {
  return indexes.map((index) => new BlockRef({ volume, inode: 7n, index }));
}

/** `v<id> <node letter> <indexes>|whole|removed`, to compare records and changes at a glance. */
function describeStale(record: StaleRecord | StaleRecordChange): string {
  const node = NODE_NAMES[record.node] ?? record.node;
  const what = "removed" in record && record.removed
    ? "removed"
    : record.wholeVolume
    ? "whole"
    : record.refs.map((ref) => String(ref.index)).join(",");
  return `v${record.volumeId.toString(16)} ${node} ${what}`;
}

async function staleOf(mds: MetadataService, volumeId: number): Promise<string[]> {
  return (await mds.staleMarks.list(volumeId)).map(describeStale);
}

function literally(text: string): RegExp {
  return new RegExp(text.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&"));
}

/** A stale record value built by hand: version, flags, count, then the refs' bytes. */
function staleValue(version: number, flags: number, count: number, refs: BlockRef[]): Uint8Array {
  const bytes = new Uint8Array(6 + refs.length * 24);
  bytes[0] = version;
  bytes[1] = flags;
  new DataView(bytes.buffer).setUint32(2, count, true);
  refs.forEach((ref, i) => ref.writeTo(bytes, 6 + i * 24));
  return bytes;
}

function registerStaleMarkTests(test: TestFn): void {
  test("stale marks: add, list, remove and clear, in the documented layout", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    assert.deepEqual(await mds.staleMarks.list(id), []);
    await mds.staleMarks.add(id, NODE_A.toUpperCase(), refsOf(id, 3, 1, 3));
    const key = `${prefix}stale/${id.toString(16)}/${NODE_A}`;
    assert.equal(mds.keys.staleRecord(id, NODE_A), key);
    const stored = await mds.kv.get(key);
    assert.ok(stored);
    assert.deepEqual([...stored.value.subarray(0, 6)], [1, 0, 2, 0, 0, 0]);
    assert.equal(stored.value.length, 6 + 2 * 24);
    assert.deepEqual(stored.value.subarray(6, 30), refsOf(id, 1)[0]!.toBytes());
    const [record] = await mds.staleMarks.list(id);
    assert.deepEqual(
      [record!.volumeId, record!.node, record!.wholeVolume, record!.refs.map((r) => r.key)],
      [id, NODE_A, false, refsOf(id, 1, 3).map((r) => r.key)],
    );
    // Idempotent: marks already recorded write nothing.
    await mds.staleMarks.add(id, NODE_A, refsOf(id, 1));
    await mds.staleMarks.add(id, NODE_A, []);
    assert.equal((await mds.kv.get(key))!.modRevision, stored.modRevision);
    await mds.staleMarks.add(id, NODE_B, refsOf(id, 2));
    await mds.staleMarks.add(id, NODE_A, refsOf(id, 2));
    assert.deepEqual(await staleOf(mds, id), ["v2 B 2", "v2 A 1,2,3"], "sorted by node");
    // Removing refs not marked is a no-op; removing the last ref deletes the key.
    await mds.staleMarks.remove(id, NODE_A, refsOf(id, 1, 9));
    assert.deepEqual(await staleOf(mds, id), ["v2 B 2", "v2 A 2,3"]);
    await mds.staleMarks.remove(id, NODE_A, refsOf(id, 3, 2));
    assert.equal(await mds.kv.get(key), null);
    await mds.staleMarks.remove(id, NODE_A, refsOf(id, 2));
    assert.deepEqual(await staleOf(mds, id), ["v2 B 2"]);
    await mds.staleMarks.clear(id, NODE_B);
    await mds.staleMarks.clear(id, NODE_B);
    assert.deepEqual(await mds.staleMarks.list(id), []);
    assert.deepEqual(await mds.kv.range(mds.keys.staleDir()), []);
  });

  test("stale marks: ids, UUIDs and refs of another volume are refused", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const marks = mds.staleMarks;
    await assertCode(marks.add(id, NODE_A, refsOf(id + 1, 1)), ErrorCode.Invalid, /another volume/);
    await assertCode(
      marks.add(id, NODE_A, [...refsOf(id, 1), ...refsOf(99, 1)]),
      ErrorCode.Invalid,
      /another volume/,
    );
    await assertCode(marks.remove(id, NODE_A, refsOf(id + 1, 1)), ErrorCode.Invalid);
    for (const node of ["", "a/b", "not-a-uuid", "00000000-0000-0000-0000-000000000000"]) {
      await assertCode(marks.add(id, node, refsOf(id, 1)), ErrorCode.Invalid, /UUID/);
      await assertCode(marks.clear(id, node), ErrorCode.Invalid, /UUID/);
    }
    for (const volumeId of [0, -1, 1.5, 2 ** 40]) {
      await assertCode(marks.add(volumeId, NODE_A, []), ErrorCode.Invalid, /volume id/);
      await assertCode(marks.list(volumeId), ErrorCode.Invalid, /volume id/);
    }
    // A volume that does not exist gets no marks.
    await assertCode(marks.add(99, NODE_A, refsOf(99, 1)), ErrorCode.NotExist, /volume id 99/);
    assert.deepEqual(await marks.list(99), []);
    assert.deepEqual(await mds.kv.range(mds.keys.staleDir()), []);
  });

  test("stale marks: concurrent adds and removes merge, every one lands", async (f) => {
    const { mds } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const services = [mds, await f.other(), await f.other()];
    await Promise.all(
      Array.from(
        { length: 9 },
        (_, i) => services[i % 3]!.staleMarks.add(id, NODE_A, refsOf(id, 2 * i, 2 * i + 1)),
      ),
    );
    const all = Array.from({ length: 18 }, (_, i) => i);
    assert.deepEqual(await staleOf(mds, id), [`v2 A ${all.join(",")}`]);
    await Promise.all(
      all.filter((i) => i % 2 === 0).map((i, n) =>
        services[n % 3]!.staleMarks.remove(id, NODE_A, refsOf(id, i))
      ),
    );
    assert.deepEqual(await staleOf(mds, id), [
      `v2 A ${all.filter((i) => i % 2 === 1).join(",")}`,
    ]);
  });

  test("stale marks: past the most refs a record turns whole-volume", async ({ mds }) => {
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const context = {
      kv: mds.kv,
      keys: mds.keys,
      clock: systemClock,
      random: new SeededRandom(1),
      log: logger("metadata"),
    };
    assert.throws(() => new StaleMarkMetadataImpl(context, { refsMax: 0 }), /1\.\.32768/);
    const small = new StaleMarkMetadataImpl(context, { refsMax: 4 });
    await small.add(id, NODE_A, refsOf(id, 1, 2, 3));
    await small.add(id, NODE_A, refsOf(id, 3, 4));
    assert.deepEqual(await staleOf(mds, id), ["v2 A 1,2,3,4"]);
    await small.add(id, NODE_A, refsOf(id, 5));
    assert.deepEqual(await staleOf(mds, id), ["v2 A whole"]);
    const key = mds.keys.staleRecord(id, NODE_A);
    const whole = (await mds.kv.get(key))!;
    assert.deepEqual([...whole.value], [1, 1, 0, 0, 0, 0]);
    // A whole-volume record covers every add and only `clear` ends it.
    await small.add(id, NODE_A, refsOf(id, 6));
    await small.remove(id, NODE_A, refsOf(id, 1, 5, 6));
    assert.equal((await mds.kv.get(key))!.modRevision, whole.modRevision);
    await small.clear(id, NODE_A);
    assert.deepEqual(await staleOf(mds, id), []);
    // The built-in maximum: a full record (about 768 KiB) is stored and read back whole.
    const many = Array.from(
      { length: STALE_REFS_MAX },
      (_, index) => new BlockRef({ volume: id, inode: 2n, index }),
    );
    await mds.staleMarks.add(id, NODE_B, many);
    const [full] = await mds.staleMarks.list(id);
    assert.equal(full!.refs.length, STALE_REFS_MAX);
    assert.equal(full!.wholeVolume, false);
    assert.equal(full!.refs[STALE_REFS_MAX - 1]!.index, BigInt(STALE_REFS_MAX - 1));
    await mds.staleMarks.add(id, NODE_B, refsOf(id, 1));
    assert.deepEqual(await staleOf(mds, id), ["v2 B whole"]);
  });

  test("stale marks: deleteVolume deletes the volume's marks and no other's", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const two = await mds.volumes.createBlockVolume("two", 4096);
    await mds.kv.put(`${prefix}meta/volumeminter`, encodeU64(0x1fn));
    const twenty = await mds.volumes.createBlockVolume("thirty-two", 4096);
    assert.deepEqual([two.id, twenty.id], [2, 0x20]);
    await mds.staleMarks.add(2, NODE_A, refsOf(2, 1));
    await mds.staleMarks.add(2, NODE_B, refsOf(2, 1));
    await mds.staleMarks.add(0x20, NODE_A, refsOf(0x20, 1));
    await mds.volumes.deleteVolume("two");
    assert.deepEqual(await mds.kv.range(`${prefix}stale/2/`), []);
    assert.deepEqual(await staleOf(mds, 0x20), ["v20 A 1"]);
    await assertCode(mds.staleMarks.add(2, NODE_A, refsOf(2, 1)), ErrorCode.NotExist);
    assert.deepEqual(await mds.kv.range(`${prefix}stale/2/`), []);
    await mds.cluster.wipe();
    assert.deepEqual(await mds.kv.range(mds.keys.staleDir()), []);
  });

  test("stale marks: a watch delivers the records, then every change in order", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const directory = `${prefix}stale/${id.toString(16)}/`;
    await mds.staleMarks.add(id, NODE_A, refsOf(id, 1));
    await mds.kv.put(`${directory}${NODE_C}`, encoder.encode("garbage"));
    const seen: string[] = [];
    const sub = await mds.staleMarks.watch((change) => seen.push(describeStale(change)));
    assert.deepEqual(seen, ["v2 A 1"], "the undecodable record of C is skipped");
    const writer = await f.other();
    await writer.staleMarks.add(id, NODE_B, refsOf(id, 2));
    await writer.staleMarks.add(id, NODE_A, refsOf(id, 3));
    await writer.kv.put(`${directory}${NODE_B}`, staleValue(9, 0, 0, []));
    await writer.kv.put(
      `${prefix}stale/zz/${NODE_B}`,
      encodeStaleMarks({
        refs: [],
        wholeVolume: true,
      }),
    );
    await writer.kv.put(
      `${directory}${NODE_B.toUpperCase()}`,
      encodeStaleMarks({
        refs: [],
        wholeVolume: true,
      }),
    );
    await writer.staleMarks.remove(id, NODE_A, refsOf(id, 1, 3));
    await writer.staleMarks.clear(id, NODE_B);
    // An undecodable record is replaced by a whole-volume one: every block is suspect.
    await writer.staleMarks.add(id, NODE_C, refsOf(id, 4));
    await waitFor("C's record", 5_000, () => Promise.resolve(seen.length >= 6));
    assert.deepEqual(seen, [
      "v2 A 1",
      "v2 B 2",
      "v2 A 1,3",
      "v2 A removed",
      "v2 B removed",
      "v2 C whole",
    ]);
    await sub.unsubscribe();
    await writer.staleMarks.add(id, NODE_A, refsOf(id, 5));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(seen.length, 6);
  });

  test("stale marks: garbage is refused by list and remove, naming the key", async (f) => {
    const { mds, prefix } = f;
    await mds.cluster.init(initOptions);
    const { id } = await mds.volumes.createBlockVolume("v", 4096);
    const key = mds.keys.staleRecord(id, NODE_C);
    const garbage: [Uint8Array, RegExp][] = [
      [new Uint8Array(0), /shorter than/],
      [encoder.encode("garbage"), /unknown format version/],
      [staleValue(2, 0, 1, refsOf(id, 1)), /unknown format version 2/],
      [staleValue(1, 2, 1, refsOf(id, 1)), /unknown flags/],
      [staleValue(1, 0, 2, refsOf(id, 1)), /do not hold exactly 2 refs/],
      [staleValue(1, 0, 1, refsOf(id, 1, 2)), /do not hold exactly 1 refs/],
      [staleValue(1, 0, STALE_REFS_MAX + 1, []), /more than 32768/],
      [staleValue(1, 1, 1, refsOf(id, 1)), /whole-volume record lists refs/],
      [staleValue(1, 0, 0, []), /marks nothing/],
      [staleValue(1, 0, 2, refsOf(id, 2, 1)), /not sorted and distinct/],
      [staleValue(1, 0, 2, refsOf(id, 1, 1)), /not sorted and distinct/],
      [staleValue(1, 0, 1, refsOf(id + 1, 1)), /not a block of volume id 2/],
    ];
    for (const [value, reason] of garbage) {
      await mds.kv.put(key, value);
      await assertCode(mds.staleMarks.list(id), ErrorCode.Invalid, literally(key));
      await assertCode(mds.staleMarks.list(id), ErrorCode.Invalid, reason);
      await assertCode(mds.staleMarks.remove(id, NODE_C, refsOf(id, 1)), ErrorCode.Invalid);
    }
    // `add` cannot tell what the garbage meant: the whole volume becomes suspect.
    await mds.staleMarks.add(id, NODE_C, refsOf(id, 1));
    assert.deepEqual(await staleOf(mds, id), ["v2 C whole"]);
    await mds.staleMarks.clear(id, NODE_C);
    // Keys that no builder makes are refused too.
    const whole = encodeStaleMarks({ refs: [], wholeVolume: true });
    for (const bad of [NODE_C.toUpperCase(), "x", `${NODE_C}/x`]) {
      const badKey = `${prefix}stale/${id.toString(16)}/${bad}`;
      await mds.kv.put(badKey, whole);
      await assertCode(mds.staleMarks.list(id), ErrorCode.Invalid, literally(badKey));
      await mds.kv.delete(badKey);
    }
    assert.deepEqual(await mds.staleMarks.list(id), []);
  });
}
