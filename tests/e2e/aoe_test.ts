/**
 * `torus aoe` and `torus serve --aoe` as real processes, driven by the strict test initiator over
 * a veth pair (root only: network namespaces and AF_PACKET; skipped with the reason otherwise):
 * - a single node in its own namespace: discovery, IDENTIFY, writes in both LBA forms read back
 *   byte-exact through AoE and, after a SIGTERM, through `torus serve --nbd` on the data dir;
 * - with --write-cache, SIGKILL after an ATA FLUSH: the flushed sectors survive, later ones are
 *   old or new;
 * - a cluster client (`torus aoe -C`): the volume lock keeps a second target and an NBD writer
 *   off, the data reads back through `torus blk nbdserve`, also with a storage node SIGKILLed;
 * - `torus serve --aoe` in a namespace: its /metrics counts AoE traffic and malformed frames,
 *   and the target still answers after them.
 *
 * Each test runs under a {@link NetnsLab} that kills the processes it started and removes its
 * namespaces and links however the test ends. Data is random from one seed (SEED=n replays it).
 */

import assert from "node:assert/strict";
import { AOE_SECTOR_BYTES, formatMac, PacketFramePort } from "../../src/block/aoe/mod.ts";
import { SeededRandom, testSeed, VERSION } from "../../src/core/mod.ts";
import {
  assertSameSectors,
  badFrames,
  bannerAddress,
  checkRanges,
  connectNbd,
  discoverOnly,
  planRanges,
  readThroughNbd,
  runTorusIn,
  type SectorRange,
  sendBadFrames,
  startTorusIn,
  VolumeModel,
  withInitiator,
  writeRanges,
} from "../support/aoe_session.ts";
import { linkInfo, type NetnsLab, netnsTest } from "../support/netns.ts";
import { type MetricFamily, parseExposition } from "../support/prometheus_text.ts";
import { ctlOk, runTorus, startServe, startTorusProcess } from "../support/torus_process.ts";
import { freePort } from "../support/etcd.ts";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";
import { E2eNode, MiB } from "./e2e_support.ts";

const seed = testSeed();
const VOLUME_BYTES = 64 * MiB;
const VOLUME_SECTORS = VOLUME_BYTES / AOE_SECTOR_BYTES;
/** The block store of every single node (the volume is 64 MiB). */
const STORE_SIZE = "256MiB";

/** A temp dir removed when disposed. */
async function tempDir(): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempDir({ prefix: "torus-aoe-e2e-" });
  return {
    path,
    [Symbol.asyncDispose]: () => Deno.remove(path, { recursive: true }).catch(() => {}),
  };
}

/** A new data dir with its single-node cluster and one block volume, made by torus ctl. */
/**
 * A fresh data dir with volume "vol" of `size`, and `torus ARGS` (given the interface) started with
 * that data dir in a namespace of its own, on end a of a new veth pair; the test has end b.
 */
async function startInNamespace(
  lab: NetnsLab,
  dataDir: string,
  size: string,
  args: (iface: string) => string[],
) {
  await createVolume(dataDir, "vol", size);
  const namespace = await lab.addNamespace();
  const pair = await lab.addVethPair({ namespaceA: namespace });
  const process = await startTorusIn(lab, namespace, [
    ...args(pair.a.name),
    ...["--data-dir", dataDir, "--size", STORE_SIZE],
  ]);
  return { namespace, pair, process };
}

async function createVolume(dataDir: string, name: string, size: string): Promise<void> {
  await ctlOk(dataDir, ["init"]);
  await ctlOk(dataDir, ["volume", "create-block", name, size]);
}

await netnsTest(
  `e2e aoe: torus aoe, a single node in its own namespace, is discovered, identifies itself, ` +
    `and serves writes in both LBA forms that read back through AoE and after SIGTERM through ` +
    `torus serve --nbd (seed ${seed})`,
  async (lab) => {
    const random = new SeededRandom(seed);
    await using dir = await tempDir();
    const dataDir = `${dir.path}/data`;
    const { pair, process: target } = await startInNamespace(lab, dataDir, "64MiB", (iface) => [
      ...["aoe", "vol", iface, "1", "2"],
    ]);
    assert.match(target.output(), new RegExp(`AoE: +vol on ${pair.a.name} \\(.*\\) as e1\\.2`));
    const model = new VolumeModel(VOLUME_SECTORS);
    const ranges = planRanges(random, VOLUME_SECTORS, 40);
    const targetMac = (await linkInfo(pair.a)).mac;
    await withInitiator(pair.b, async (initiator) => {
      const info = await discoverOnly(initiator, 1, 2);
      assert.equal(formatMac(info.mac), targetMac, "the reply comes from the target's end");
      const identify = await initiator.identify(info);
      assert.equal(identify.lba48Sectors, VOLUME_SECTORS, "LBA48 capacity is the volume's");
      assert.equal(identify.sectors, VOLUME_SECTORS);
      assert.equal(identify.model, "torus AoE");
      assert.equal(identify.serial, "vol", "the serial is the volume's name");
      assert.equal(identify.firmwareRevision, VERSION.split("-")[0]);
      assert.ok(identify.lba48Supported && identify.flushCacheExtSupported, "LBA48 and FLUSH EXT");
      await writeRanges(initiator, info, model, random, ranges);
      await checkRanges(initiator, info, model, ranges);
      await initiator.flush(info);
    });
    assert.equal(await target.signal("SIGTERM"), 0, `torus aoe on SIGTERM:\n${target.output()}`);
    await using serve = await startServe(dataDir, { size: STORE_SIZE });
    const image = await readThroughNbd(serve.nbd, "vol");
    assertSameSectors(image, model.image, "the volume read through torus serve --nbd");
  },
  { timeoutMs: 90_000 },
);

/**
 * Ranges for writes after the last flush: none overlapping another (so each sector has one
 * old and one new version), half of them starting inside a range written before the flush.
 */
function unflushedRanges(random: SeededRandom, flushed: readonly SectorRange[]): SectorRange[] {
  const taken = new Set<number>();
  const out: SectorRange[] = [];
  for (const candidate of planRanges(random, VOLUME_SECTORS, 40)) {
    const over = flushed[random.int(flushed.length)]!;
    const range = random.chance(0.5)
      ? { ...candidate, lba: Math.min(over.lba, VOLUME_SECTORS - candidate.sectors) }
      : candidate;
    const sectors = Array.from({ length: range.sectors }, (_, i) => range.lba + i);
    if (sectors.some((s) => taken.has(s))) continue;
    for (const s of sectors) taken.add(s);
    out.push(range);
  }
  return out;
}

/**
 * Fails unless every sector of `image` is the flushed version, or, for a sector written after the
 * flush, the flushed or the newer one: never anything else.
 */
function checkOldOrNew(
  image: Uint8Array,
  flushed: Uint8Array,
  newer: Uint8Array,
  unflushed: readonly SectorRange[],
): void {
  const written = new Set(
    unflushed.flatMap((r) => Array.from({ length: r.sectors }, (_, i) => r.lba + i)),
  );
  for (let s = 0; s < VOLUME_SECTORS; s++) {
    const at = (bytes: Uint8Array) =>
      bytes.subarray(s * AOE_SECTOR_BYTES, (s + 1) * AOE_SECTOR_BYTES);
    const actual = at(image);
    if (sameBytes(actual, at(flushed))) continue;
    assert.ok(
      written.has(s),
      `sector ${s} was flushed but does not read back as flushed (seed ${seed})`,
    );
    const what = actual.every((byte) => byte === 0) ? "zeros" : "other bytes";
    assert.ok(
      sameBytes(actual, at(newer)),
      `sector ${s} holds neither what was flushed there nor what was written later, but ${what} ` +
        `(seed ${seed})`,
    );
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

await netnsTest(
  `e2e aoe: SIGKILL of torus aoe --write-cache after an ATA FLUSH: every flushed sector reads ` +
    `back through torus serve --nbd, and each sector written later is old or new, never garbage ` +
    `(seed ${seed})`,
  async (lab) => {
    const random = new SeededRandom(seed ^ 0x5eed);
    await using dir = await tempDir();
    const dataDir = `${dir.path}/data`;
    // A write cache with no periodic flush: only the initiator's FLUSH makes writes durable.
    const { pair, process: target } = await startInNamespace(lab, dataDir, "64MiB", (iface) => [
      ...["aoe", "vol", iface, "1", "2", "--write-cache", "--sync-interval", "0"],
    ]);
    const model = new VolumeModel(VOLUME_SECTORS);
    const flushedRanges = planRanges(random, VOLUME_SECTORS, 40);
    const laterRanges = unflushedRanges(random, flushedRanges);
    const flushed = await withInitiator(pair.b, async (initiator) => {
      const info = await discoverOnly(initiator, 1, 2);
      await writeRanges(initiator, info, model, random, flushedRanges);
      await initiator.flush(info);
      const image = model.image.slice();
      await writeRanges(initiator, info, model, random, laterRanges);
      return image;
    });
    assert.equal(await target.signal("SIGKILL"), -1, "torus aoe was killed");
    await using serve = await startServe(dataDir, { size: STORE_SIZE });
    const image = await readThroughNbd(serve.nbd, "vol");
    checkOldOrNew(image, flushed, model.image, laterRanges);
  },
  { timeoutMs: 60_000 },
);

/** An etcd (the run's shared one, or a private one) with a cluster of its own, and its nodes. */
async function startCluster(nodeCount: number): Promise<
  { meta: string[]; nodes: E2eNode[] } & AsyncDisposable
> {
  const etcd = await testEtcd();
  const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-e2e-${crypto.randomUUID()}/`];
  const nodes: E2eNode[] = [];
  const dispose = async () => {
    for (const node of nodes) await node[Symbol.asyncDispose]();
    await etcd[Symbol.asyncDispose]();
  };
  try {
    const init = await runTorus(["ctl", "init", ...meta]);
    assert.equal(init.code, 0, `torus ctl init: ${init.stderr}`);
    // One at a time, as an operator adds them: each join is its own ring version.
    for (let i = 0; i < nodeCount; i++) {
      const peer = ["--peer-address", `tdp://127.0.0.1:${freePort()}`, "--auto-join"];
      nodes.push(await E2eNode.start({ args: [...meta, ...peer] }));
    }
  } catch (error) {
    await dispose();
    throw error;
  }
  return { meta, nodes, [Symbol.asyncDispose]: dispose };
}

const clusterName = "e2e aoe: torus aoe -C, a cluster client of three nodes at replication 2: " +
  "a second target and an NBD writer are refused by the volume lock, and what the initiator " +
  `flushed reads back through torus blk nbdserve, also with a storage node SIGKILLed (seed ${seed})`;
if (!etcdAvailable()) {
  Deno.test({ name: `${clusterName} (skipped: etcd not installed)`, ignore: true, fn() {} });
} else {
  await netnsTest(clusterName, async (lab) => {
    const random = new SeededRandom(seed ^ 0xc1);
    await using cluster = await startCluster(3);
    const { meta } = cluster;
    const sectors = 16 * MiB / AOE_SECTOR_BYTES;
    const created = await runTorus(["ctl", "volume", "create-block", "vol", "16MiB", ...meta]);
    assert.equal(created.code, 0, created.stderr);
    // Both ends in the test's namespace: the client must reach etcd and the nodes on loopback.
    const pair = await lab.addVethPair();
    const other = await lab.addVethPair();
    const target = await startTorusIn(lab, null, [
      ...["aoe", "vol", pair.a.name, "1", "2", ...meta],
      ...["--host", "127.0.0.1", "--port", "0"],
    ]);
    assert.match(target.output(), /cluster: +ring version \d+, 3 nodes, replication 2/);
    const model = new VolumeModel(sectors);
    const ranges = planRanges(random, sectors, 40);
    await withInitiator(pair.b, async (initiator) => {
      const info = await discoverOnly(initiator, 1, 2);
      await writeRanges(initiator, info, model, random, ranges);
      await initiator.flush(info);
      await checkRanges(initiator, info, model, ranges);
    });
    // The client's own status server: no store, its target and what it carried.
    const httpPort = Number(/HTTP: +http:\/\/127\.0\.0\.1:(\d+)/.exec(target.output())?.[1]);
    assert.ok(httpPort > 0, `the banner names the HTTP server:\n${target.output()}`);
    const status = await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json() as {
      store: unknown;
      node: { dataDir: unknown };
      aoe: { address: string; counters: { bytesWritten: number } }[];
    };
    assert.equal(status.store, null, "a client has no store");
    assert.equal(status.node.dataDir, null);
    assert.equal(status.aoe[0]?.address, "e1.2");
    const written = ranges.reduce((sum, range) => sum + range.sectors * 512, 0);
    assert.equal(status.aoe[0]?.counters.bytesWritten, written, "every byte written counted");
    const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    assert.match(
      metrics,
      new RegExp(`^torus_aoe_written_bytes_total\\{target="e1\\.2",[^}]*\\} ${written}$`, "m"),
    );
    assert.equal((await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status, 200);

    const nbdPort = freePort();
    await using nbdserve = await startTorusProcess(
      ["blk", "nbdserve", ...meta, "-l", `127.0.0.1:${nbdPort}`],
      /Ready\./,
    );
    const nbd = { hostname: "127.0.0.1", port: nbdPort };
    // Both wait out the lock's hand-over time before refusing: side by side, they wait once.
    const [second] = await Promise.all([
      runTorusIn(null, ["aoe", "vol", other.a.name, "1", "3", ...meta]),
      assert.rejects(connectNbd(nbd, "vol"), /locked|in use elsewhere/, "an NBD writer is refused"),
    ]);
    assert.equal(second.code, 1, `a second target of the volume did not fail:\n${second.output}`);
    const lines = second.output.trimEnd().split("\n");
    assert.equal(lines.length, 1, `one line of error:\n${second.output}`);
    assert.match(lines[0]!, /^torus aoe: .*(locked|in use)/, "the error names the lock");

    assert.equal(await target.signal("SIGTERM"), 0, `torus aoe -C on SIGTERM:\n${target.output()}`);
    assertSameSectors(await readThroughNbd(nbd, "vol"), model.image, "read through nbdserve");
    await cluster.nodes[0]!.stop("SIGKILL");
    assertSameSectors(
      await readThroughNbd(nbd, "vol"),
      model.image,
      "read through nbdserve with a storage node SIGKILLed",
    );
    assert.equal(await nbdserve.stop(), 0, nbdserve.output());
  }, { timeoutMs: 90_000 });
}

/** The node's /metrics, fetched inside `namespace` (where its HTTP server is). */
async function scrape(
  lab: NetnsLab,
  namespace: string,
  http: { hostname: string; port: number },
): Promise<Map<string, MetricFamily>> {
  const url = `http://${http.hostname}:${http.port}/metrics`;
  const fetched = await lab.run(namespace, ["curl", "-sS", "--max-time", "5", url]);
  const text = new TextDecoder().decode(fetched.stdout);
  assert.ok(fetched.success, `curl ${url}: ${new TextDecoder().decode(fetched.stderr)}`);
  return parseExposition(text);
}

/** The counter `torus_aoe_NAME_total` of target `address`. */
function aoeCounter(families: Map<string, MetricFamily>, name: string, address: string): number {
  const family = families.get(`torus_aoe_${name}_total`);
  assert.ok(family !== undefined, `no torus_aoe_${name}_total in /metrics`);
  const series = [...family.samples].filter(([key]) => key.includes(`target="${address}"`));
  assert.equal(series.length, 1, `one torus_aoe_${name}_total series of ${address}`);
  return series[0]![1];
}

await netnsTest(
  `e2e aoe: torus serve --aoe next to NBD in its own namespace: /metrics counts the target's ` +
    `traffic and the malformed frames it dropped, which it answers as the protocol says and ` +
    `survives (seed ${seed})`,
  async (lab) => {
    const random = new SeededRandom(seed ^ 0x4e7);
    await using dir = await tempDir();
    const dataDir = `${dir.path}/data`;
    const sectors = 16 * MiB / AOE_SECTOR_BYTES;
    const started = await startInNamespace(lab, dataDir, "16MiB", (iface) => [
      ...["serve", "--aoe", `vol:${iface}:3.4`, "--nbd", "127.0.0.1:0"],
      ...["--host", "127.0.0.1", "--port", "0"],
    ]);
    const { namespace, pair, process: serve } = started;
    assert.match(serve.output(), new RegExp(`AoE: +vol on ${pair.a.name} \\(.*\\) as e3\\.4`));
    const http = bannerAddress(serve.output(), "HTTP");
    const model = new VolumeModel(sectors);
    const ranges = planRanges(random, sectors, 12);
    const bytes = ranges.reduce((sum, range) => sum + range.sectors * AOE_SECTOR_BYTES, 0);
    const info = await withInitiator(pair.b, async (initiator) => {
      const info = await discoverOnly(initiator, 3, 4);
      await writeRanges(initiator, info, model, random, ranges);
      await initiator.flush(info);
      await checkRanges(initiator, info, model, ranges);
      return info;
    });
    const before = await scrape(lab, namespace, http);
    const counter = (families: Map<string, MetricFamily>, name: string) =>
      aoeCounter(families, name, "e3.4");
    assert.equal(counter(before, "written_bytes"), bytes, "bytes written");
    assert.ok(counter(before, "read_bytes") >= bytes, "bytes read");
    assert.ok(counter(before, "flushes") >= 1, "the ATA FLUSH");
    // Each range was written and read back, at most sectorsPerFrame sectors to a frame.
    const frames = 2 * bytes / (info.sectorsPerFrame * AOE_SECTOR_BYTES);
    assert.ok(counter(before, "frames_received") >= frames, "frames received");
    assert.equal(counter(before, "frames_malformed"), 0, "no malformed frame yet");

    const port = PacketFramePort.open(pair.b.name);
    const bad = badFrames(info, port.mac, random);
    const answers = await sendBadFrames(port, bad, 500);
    for (const frame of bad.filter((f) => f.tag >= 0)) {
      assert.equal(answers.get(frame.tag) ?? null, frame.expectedError, `answer to ${frame.what}`);
    }
    const after = await scrape(lab, namespace, http);
    const rose = (name: string) => counter(after, name) - counter(before, name);
    assert.ok(rose("frames_received") >= bad.length, "every bad frame reached the target");
    assert.ok(
      rose("frames_malformed") >= 3,
      `malformed frames counted: ${rose("frames_malformed")}`,
    );
    assert.ok(rose("aoe_errors") >= 3, `AoE error replies counted: ${rose("aoe_errors")}`);

    await withInitiator(pair.b, async (initiator) => {
      const identify = await initiator.identify(await discoverOnly(initiator, 3, 4));
      assert.equal(identify.lba48Sectors, sectors, "the target still answers IDENTIFY");
    });
    assert.equal(await serve.signal("SIGTERM"), 0, `torus serve on SIGTERM:\n${serve.output()}`);
  },
  { timeoutMs: 60_000 },
);
