/**
 * A seeded simulation of a whole cluster in one process: three nodes (a SimDisk each, behind the
 * node's FencedStore, served over TDP on the SimNetwork), a writer (the distributor at level
 * `all`, durable stale marks in memory, min copies 1), and a schedule drawn from the seed of
 * writes, reads, flushes and faults: nodes cut off and back, nodes losing power (their unflushed
 * changes, in part) and restarting, and delays on every write to the network; with
 * `ringChanges`, a fourth node is added to the ring and taken out again (rings A→B→A), each node
 * and the writer seeing each ring after its own delay, every node's rebalancer on, and the
 * writer told which nodes have not recorded the current ring as applied (`unsettled`). Time is a
 * ManualClock; nothing else moves, so a seed replays the same run.
 *
 * After every read and at the end it checks what the cluster promised:
 * - a read returns a version that may be current: the last acknowledged write of the block, or
 *   one whose outcome is unknown (it failed) written after it; never an older one;
 * - after a successful flush, every acknowledged write survives the faults that follow, as long
 *   as no two nodes lost power since the last successful flush (then unflushed ones may go, and
 *   a block whose every copy may lack changes may be unavailable at the end);
 * - at the end, with every node back and a flush done, both holders of every block hold the same
 *   bytes, the ones a read returns.
 * Blocks are written whole, each write with its own version number in the bytes, so a read tells
 * exactly which write it sees.
 * @module
 */

import {
  BlockRef,
  ErrorCode,
  errorMessage,
  isTorusError,
  ManualClock,
  SeededRandom,
  setLogSink,
} from "../../src/core/mod.ts";
import {
  DialingPeerDirectory,
  Distributor,
  type PeerServer,
  Rebalancer,
  TdpProtocol,
} from "../../src/distributor/mod.ts";
import { MemoryStaleMarks } from "../../src/distributor/test_cluster.ts";
import type { PeerInfo } from "../../src/models/mod.ts";
import {
  createRing,
  isModifiable,
  type ModifiableRing,
  type Ring,
  RingType,
} from "../../src/ring/mod.ts";
import { FencedStore, MemoryFenceRecords } from "../../src/server/mod.ts";
import { SimDisk } from "./sim_disk.ts";
import { SimNetwork } from "./sim_network.ts";

const BLOCK = 4096;
const NODES = 3;
const REFS = 12;
const CLUSTER = "sim";

/** What the run did, and the first broken promise (null when none). */
export interface SimResult {
  readonly seed: number;
  readonly steps: number;
  readonly failure: string | null;
  readonly log: readonly string[];
}

interface SimNode {
  readonly uuid: string;
  readonly disk: SimDisk;
  server: PeerServer | null;
  cut: boolean;
  /** The ring as this node has seen it (a watch lags behind the change). */
  ring: Ring;
  rebalancer: Rebalancer | null;
  /** The rebalancer's clients of the other nodes. */
  peers: DialingPeerDirectory | null;
  /** The highest fencing token per volume, kept durably beside the node's store. */
  readonly fences: MemoryFenceRecords;
  /** The running node's fence (null while it is down). */
  fence: FencedStore | null;
}

/** Per block: the versions a read may see. */
interface BlockModel {
  /** Versions that may be current (the last acknowledged one, and unknown ones after it). */
  possible: Set<number>;
  /** Every version written since the last successful flush, and the possible set then. */
  sinceFlush: Set<number>;
  atFlush: Set<number>;
  /** A write since the last flush counted with one fresh copy (the other holder marked). */
  degradedSinceFlush: boolean;
  /**
   * Versions an earlier writer left unflushed when a node had lost power: a new writer cannot
   * tell which its holders kept, so any of them may be read (and holders may differ) until the
   * block is written again. Null when there are none.
   */
  uncertain: Set<number> | null;
}

function versionBytes(ref: BlockRef, version: number): Uint8Array {
  const bytes = new Uint8Array(BLOCK);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, version, true);
  view.setUint32(4, Number(ref.index), true);
  bytes.fill((version * 31) & 0xff, 8);
  return bytes;
}

function versionOf(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
}

/** What a run may do besides writes, reads, flushes, cuts, power losses and delays. */
export interface SimOptions {
  /** Add a fourth node to the ring and take it out again, with every node's rebalancer on. */
  readonly ringChanges?: boolean;
  /**
   * Hand the volume to a new writer now and then (a higher fencing token, fenceVolume and the
   * adoption of marks); the earlier one is left running, as a stopped process that resumes, and
   * tries writes that must all fail and never be read.
   */
  readonly handoffs?: boolean;
}

/** Runs the simulation of `seed` for `steps` steps. */
export async function runSimulation(
  seed: number,
  steps: number,
  options: SimOptions = {},
): Promise<SimResult> {
  const random = new SeededRandom(seed);
  const clock = new ManualClock(1_700_000_000_000);
  const network = new SimNetwork(clock);
  network.delayMs = () => (random.chance(0.3) ? random.int(5) : 0);
  // Each host dials through its own view of the network, so cuts and partitions know both ends.
  const protocolOf = (host: string) => new TdpProtocol(network.as(host), clock);
  const log: string[] = [];
  const trace = Deno.env.get("TORUS_SIM_TRACE") !== undefined;
  const note = (text: string) => {
    const line = `[${clock.nowMs() - 1_700_000_000_000} ms] ${text}`;
    log.push(line);
    // TORUS_SIM_TRACE=1 prints the log as it goes (for a run that never ends).
    if (trace) console.error(line);
  };
  // The nodes' and the writer's log lines join the run's log (without their wall-clock time).
  setLogSink((line) => note(line.slice(line.indexOf(" ") + 1)));

  const nodes: SimNode[] = [];
  const peers: PeerInfo[] = [];
  // One node more than the ring starts with: a ring change adds it, another takes it out again.
  for (let i = 0; i <= NODES; i++) {
    const uuid = `node-${i}`;
    peers.push({
      uuid,
      address: `tdp://${uuid}:40000`,
      lastSeen: 0n,
      totalBlocks: 64n,
      usedBlocks: 0n,
      timedOut: false,
      rebalanceInfo: null,
      protocolVersion: 2n,
    });
  }
  const small = createRing(RingType.Ketama, {
    version: 1,
    replication: 2,
    peers: peers.slice(0, NODES),
  });
  if (!isModifiable(small)) throw new Error("ketama rings change");
  let ring: ModifiableRing = small;
  for (const peer of peers) {
    nodes.push({
      uuid: peer.uuid,
      disk: new SimDisk(BLOCK, 64),
      server: null,
      cut: false,
      ring,
      rebalancer: null,
      peers: null,
      fences: new MemoryFenceRecords(),
      fence: null,
    });
  }
  let writerRing: Ring = ring;
  // The ring version each node last finished applying, as heartbeats record it in the metadata
  // service (it outlives a power loss): what tells the writer which nodes may keep copies the
  // ring puts elsewhere.
  const balanced = new Map<string, number>();
  const recordBalanced = () => {
    for (const node of nodes) {
      const progress = node.rebalancer?.progress();
      if (progress === undefined || progress.rebalancing) continue;
      balanced.set(node.uuid, Math.max(balanced.get(node.uuid) ?? -1, progress.ringVersion));
    }
  };
  const unsettled = (): string[] => {
    const members = new Set(writerRing.memberUuids());
    return nodes.filter((node) =>
      members.has(node.uuid)
        ? (balanced.get(node.uuid) ?? -1) < writerRing.version
        : node.disk.usedBlocks() > 0
    ).map((node) => node.uuid);
  };
  const identity = (name: string) => ({
    clusterId: CLUSTER,
    blockSizeBytes: BLOCK,
    nodeName: name,
  });
  const marks = new MemoryStaleMarks();
  /** The token of the volume's lock in the metadata service (the writer's, once it took it). */
  let lockToken = 1;
  const start = async (node: SimNode) => {
    const fenced = await FencedStore.open(
      node.disk.store(),
      node.fences,
      () => node.ring.version,
    );
    // A node follows the volume locks (ClusterMember's lock watch): it starts with the lock
    // held now.
    await fenced.learn(9, lockToken);
    node.fence = fenced;
    const protocol = protocolOf(node.uuid);
    node.server = await protocol.listen(`tdp://${node.uuid}:40000`, {
      identity: identity(node.uuid),
      store: fenced,
    });
    node.peers = new DialingPeerDirectory(
      [protocol],
      (uuid) => `tdp://${uuid}:40000`,
      { identity: identity(node.uuid), callTimeoutMs: 200 },
      () => Promise.resolve(),
      clock,
    );
    node.rebalancer = new Rebalancer({
      self: node.uuid,
      local: fenced,
      ring: () => node.ring,
      peers: node.peers,
      clock,
      rateBytesPerSecond: 0,
      callTimeoutMs: 200,
      isStale: (ref, uuid) => marks.isStale(ref, uuid),
    });
    node.rebalancer.start();
  };
  const stop = async (node: SimNode) => {
    network.cut(node.uuid);
    if (node.rebalancer !== null) await drive(node.rebalancer.stop());
    node.rebalancer = null;
    if (node.peers !== null) await drive(node.peers.close());
    node.peers = null;
    if (node.server !== null) await drive(node.server.close());
    node.server = null;
    node.fence = null;
  };
  /** Each node (and the writer) sees a new ring after its own delay, as a watch delivers it. */
  const changeRing = (next: ModifiableRing) => {
    ring = next;
    for (const node of nodes) {
      void clock.sleep(random.int(40)).then(() => {
        if (node.ring.version < next.version) node.ring = next;
        node.rebalancer?.ringChanged();
      }).catch(() => {});
    }
    void clock.sleep(random.int(40)).then(() => {
      if (writerRing.version < next.version) writerRing = next;
    }).catch(() => {});
  };
  const directory = new DialingPeerDirectory(
    [protocolOf("writer")],
    (uuid) => `tdp://${uuid}:40000`,
    { identity: identity("writer"), callTimeoutMs: 200 },
    () => Promise.resolve(),
    clock,
  );
  const makeWriter = () =>
    new Distributor({
      blockSizeBytes: BLOCK,
      self: null,
      local: null,
      ring: () => writerRing,
      refreshRing: () => {
        writerRing = ring;
        return Promise.resolve();
      },
      // Blocks may be where an older ring put them at any time in this run.
      moving: () => true,
      unsettled,
      // Registered nodes out of the ring: the ones running (a node's registration lapses when it
      // is down).
      outsideRing: () => {
        const members = new Set(writerRing.memberUuids());
        return nodes.filter((n) => !members.has(n.uuid) && n.server !== null).map((n) => n.uuid);
      },
      peers: directory,
      readLevel: "block",
      writeLevel: "all",
      readCacheBytes: 0,
      peerTimeoutMs: 100,
      clock,
      staleMarks: marks,
      minCopies: 1,
    });
  let writer = makeWriter();
  let token = 1;
  /** The writer the volume was taken from last, still running; and its token. */
  let stale: Distributor | null = null;
  let staleToken = 0;
  /** Versions only a stale writer wrote: never to be read. */
  const forbidden = new Set<number>();
  for (const node of nodes) await start(node);

  const refs = Array.from(
    { length: REFS },
    (_, i) => new BlockRef({ volume: 9, inode: 1n, index: BigInt(i) }),
  );
  const model = new Map<string, BlockModel>(
    refs.map((ref) => [ref.key, {
      possible: new Set([0]),
      sinceFlush: new Set(),
      atFlush: new Set([0]),
      degradedSinceFlush: false,
      uncertain: null,
    }]),
  );
  let nextVersion = 1;
  let powerLossesSinceFlush = new Set<string>();
  let failure: string | null = null;
  let partitioned = false;

  /** Runs `call` while time moves on in steps of 1 ms (deadlines fire); at most 30 s. */
  const drive = async <T>(
    call: Promise<T>,
  ): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> => {
    let settled: { ok: true; value: T } | { ok: false; error: unknown } | null = null;
    call.then((value) => settled = { ok: true, value }, (error) => settled = { ok: false, error });
    for (let ms = 0; settled === null && ms < 30_000; ms++) await clock.advance(1);
    return settled ?? { ok: false, error: new Error("did not settle in 30 simulated seconds") };
  };

  // Acknowledged, unflushed writes are on every holder, or (min copies 1) on one with the other
  // marked: a power loss of every fresh copy may take them, as a disk's cache would.
  const allowed = (entry: BlockModel): Set<number> => {
    const losses = powerLossesSinceFlush.size;
    const base = losses === 0 || (losses === 1 && !entry.degradedSinceFlush)
      ? entry.possible
      : new Set([...entry.possible, ...entry.sinceFlush, ...entry.atFlush]);
    return entry.uncertain === null ? base : new Set([...base, ...entry.uncertain]);
  };

  const takeOver = async (): Promise<void> => {
    const result = await drive(writer.takeOver(9, BigInt(token)));
    note(`writer ${token} takes the volume: ${result.ok ? "ok" : errorMessage(result.error)}`);
    if (!result.ok) return;
    // Every node it reached flushed what the earlier writer left. Unless a node lost power since
    // the last flush (then the holders may disagree, and nobody can tell which copy is newer),
    // that is a flush point.
    for (const e of model.values()) {
      if (powerLossesSinceFlush.size > 0 && e.sinceFlush.size > 0) {
        e.uncertain = new Set([
          ...(e.uncertain ?? []),
          ...e.possible,
          ...e.sinceFlush,
          ...e.atFlush,
        ]);
      }
      e.atFlush = new Set(e.possible);
      e.sinceFlush = new Set();
      e.degradedSinceFlush = false;
    }
    powerLossesSinceFlush = new Set();
  };
  await takeOver();

  const checkRead = (ref: BlockRef, bytes: Uint8Array, when: string) => {
    const version = versionOf(bytes);
    if (forbidden.has(version)) {
      failure ??=
        `${when}: ${ref} read version ${version}, written by a writer that lost the volume`;
    }
    const entry = model.get(ref.key)!;
    const ok = allowed(entry);
    if (!ok.has(version)) {
      failure ??= `${when}: ${ref} read version ${version}, may be one of ${[...ok].join(",")}`;
    }
  };

  let step = 0;
  for (; step < steps && failure === null; step++) {
    const roll = random.int(100);
    if (trace) note(`step ${step}: roll ${roll}`);
    const ref = refs[random.int(REFS)]!;
    const entry = model.get(ref.key)!;
    if (roll < 40 && stale !== null && random.chance(0.2)) {
      const version = nextVersion++;
      // Every node learnt the new writer's token from the lock watch (a node that was down, before
      // it served again): the version must never be read. Without the watch, a holder the new
      // writer could not reach when it took the volume took such changes (ADR 0005 §7).
      forbidden.add(version);
      const result = await drive(
        stale.putBlock(ref, versionBytes(ref, version), { fenceToken: staleToken }),
      );
      note(
        `stale writer ${staleToken}: put ${ref} v${version}: ${
          result.ok ? "ok" : errorMessage(result.error)
        }`,
      );
      // Fenced nodes refuse it; it may land where the new writer has not reached yet (above), and
      // even succeed with the other holder silent: the stale writer here has no lease to tell it
      // (a real one checks its lease's deadline before it acknowledges).
    } else if (roll < 40) {
      const version = nextVersion++;
      entry.sinceFlush.add(version);
      const result = await drive(
        writer.putBlock(ref, versionBytes(ref, version), { fenceToken: token }),
      );
      if (result.ok) {
        entry.possible = new Set([version]);
        entry.uncertain = null;
      } else entry.possible.add(version);
      if (writerRing.getHolders(ref).some((uuid) => marks.isStale(ref, uuid))) {
        entry.degradedSinceFlush = true;
      }
      note(`put ${ref} v${version}: ${result.ok ? "ok" : errorMessage(result.error)}`);
      if (trace) note(`  copies: ${await copiesOf(ref)}; unsettled: ${unsettled().join(",")}`);
    } else if (roll < 65) {
      const result = await drive(writer.getBlock(ref));
      if (result.ok) checkRead(ref, result.value, `step ${step}`);
      else if (isTorusError(result.error, ErrorCode.NotExist) && !allowed(entry).has(0)) {
        failure = `step ${step}: ${ref} not found, but version(s) ${[
          ...allowed(entry),
        ]} were written`;
      }
      note(`get ${ref}: ${result.ok ? `v${versionOf(result.value)}` : errorMessage(result.error)}`);
    } else if (roll < 80) {
      const result = await drive(writer.flush());
      if (result.ok) {
        for (const e of model.values()) {
          e.atFlush = new Set(e.possible);
          e.sinceFlush = new Set();
          e.degradedSinceFlush = false;
        }
        powerLossesSinceFlush = new Set();
      }
      note(`flush: ${result.ok ? "ok" : errorMessage(result.error)}`);
      if (!result.ok && isTorusError(result.error, ErrorCode.OutcomeUnknown)) {
        // The flush says acknowledged changes may be gone (reported once, as fsync does): what
        // was written since the last good flush may read old until it is written again.
        for (const e of model.values()) {
          if (e.sinceFlush.size === 0) continue;
          e.uncertain = new Set([
            ...(e.uncertain ?? []),
            ...e.possible,
            ...e.sinceFlush,
            ...e.atFlush,
          ]);
        }
      }
    } else if (roll < 97 || !(options.ringChanges || options.handoffs)) {
      await fault(random.int(5));
    } else if (options.handoffs) {
      // The writer stops (its lease runs out); the next one takes the volume with a higher token.
      stale = writer;
      staleToken = token;
      token++;
      writer = makeWriter();
      // The new writer holds the lock: every running node learns its token from the lock watch
      // (the watch's lag is not modelled); a node that is down learns it when it starts.
      lockToken = token;
      for (const node of nodes) await node.fence?.learn(9, lockToken);
      await takeOver();
    } else {
      const added = ring.memberUuids().includes(peers[NODES]!.uuid);
      changeRing(added ? ring.removePeers([peers[NODES]!.uuid]) : ring.addPeers([peers[NODES]!]));
      note(`ring version ${ring.version}: ${added ? "without" : "with"} ${peers[NODES]!.uuid}`);
    }
    await clock.advance(random.int(50));
    recordBalanced();
    // TORUS_SIM_WATCH=N (with TORUS_SIM_TRACE) follows the copies of block N step by step.
    const watched = Deno.env.get("TORUS_SIM_WATCH");
    if (trace && watched !== undefined) {
      note(
        `  watch: ${await copiesOf(refs[Number(watched)]!)}; stale: ${
          nodes.filter((n) => marks.isStale(refs[Number(watched)]!, n.uuid)).map((n) => n.uuid)
        }; holders: ${writerRing.getHolders(refs[Number(watched)]!)}`,
      );
    }
  }

  /** Which version each node holds of `ref` (for TORUS_SIM_TRACE). */
  async function copiesOf(ref: BlockRef): Promise<string> {
    const copies: string[] = [];
    for (const node of nodes) {
      if (await node.disk.has(ref)) {
        copies.push(`${node.uuid}=v${versionOf(await node.disk.get(ref))}`);
      }
    }
    return copies.join(" ");
  }

  async function fault(kind: number): Promise<void> {
    const node = nodes[random.int(nodes.length)]!;
    if (trace) note(`fault ${kind} at ${node.uuid}`);
    const faulty = nodes.filter((n) => n.cut || n.server === null);
    if (kind === 4) {
      // Two hosts that cannot reach each other while both reach the rest: two nodes (their
      // rebalancers), or a node and the writer.
      const others = [...nodes.filter((n) => n !== node).map((n) => n.uuid), "writer"];
      const other = others[random.int(others.length)]!;
      network.partition(node.uuid, other);
      partitioned = true;
      note(`partition ${node.uuid} | ${other}`);
    } else if (kind === 0 && faulty.length === 0) {
      network.cut(node.uuid);
      node.cut = true;
      note(`cut ${node.uuid}`);
    } else if (kind === 1 && faulty.length === 0) {
      await stop(node);
      const lost = await node.disk.crash(random);
      powerLossesSinceFlush.add(node.uuid);
      note(`power loss at ${node.uuid} (${lost} unflushed change(s) lost)`);
    } else {
      for (const n of faulty) {
        network.heal(n.uuid);
        n.cut = false;
        if (n.server === null) await start(n);
        note(`${n.uuid} back`);
      }
      if (partitioned) note("partitions healed");
      network.join();
      partitioned = false;
    }
  }

  // The end: every node back and on the newest ring, the partitions healed, the rebalancers done,
  // a flush; then every block read (a torn copy is repaired from a good one), a flush that waits
  // for those repairs, and every block's holders compared.
  for (const n of nodes) {
    network.heal(n.uuid);
    n.cut = false;
    if (n.server === null) await start(n);
  }
  network.join();
  await clock.advance(5_000);
  for (let wait = 0; wait < 60; wait++) {
    if (nodes.every((n) => n.rebalancer?.progress().rebalancing === false)) break;
    await clock.advance(1_000);
  }
  let flushed = false;
  for (let attempt = 0; attempt < 5 && !flushed; attempt++) {
    const result = await drive(writer.flush());
    flushed = result.ok;
    if (!result.ok) note(`final flush: ${errorMessage(result.error)}`);
    await clock.advance(2_000);
  }
  const anyDegraded = [...model.values()].some((e) => e.degradedSinceFlush);
  const losses = powerLossesSinceFlush.size;
  const withinPromise = losses === 0 || (losses === 1 && !anyDegraded);
  if (failure === null && !flushed && withinPromise) {
    failure = "the final flush failed with every node back and at most one power loss";
  }
  const read = new Map<string, Uint8Array>();
  if (failure === null && flushed) {
    for (const ref of refs) {
      const result = await drive(writer.getBlock(ref));
      const entry = model.get(ref.key)!;
      note(
        `end: get ${ref}: ${
          result.ok ? `v${versionOf(result.value)}` : errorMessage(result.error)
        }`,
      );
      if (result.ok) {
        checkRead(ref, result.value, "end");
        read.set(ref.key, result.value);
        continue;
      }
      // Beyond what R = 2 promises (two nodes lost power since the last good flush, or one did
      // and it had the only fresh copy): a block whose every copy may lack changes, or is torn,
      // is unavailable rather than served old.
      const beyond = losses >= 2 || losses === 1 && entry.degradedSinceFlush;
      const unavailableNow = isTorusError(result.error, ErrorCode.Unavailable) ||
        isTorusError(result.error, ErrorCode.BlockUnavailable);
      const absent = isTorusError(result.error, ErrorCode.NotExist) && allowed(entry).has(0);
      if (!absent && !(beyond && unavailableNow)) {
        failure = `end: ${ref}: ${errorMessage(result.error)}`;
      }
    }
    const repaired = await drive(writer.flush());
    if (!repaired.ok) note(`flush after the reads: ${errorMessage(repaired.error)}`);
  }
  const settledAll = nodes.every((n) => n.rebalancer?.progress().rebalancing === false);
  for (const ref of refs) {
    const value = read.get(ref.key);
    if (value === undefined || !settledAll || model.get(ref.key)!.uncertain !== null) continue;
    for (const holder of ring.getHolders(ref)) {
      const disk = nodes.find((n) => n.uuid === holder)!.disk;
      const there = await disk.has(ref)
        ? (disk.isTorn(ref) ? "torn" : `v${versionOf(await disk.get(ref))}`)
        : "nothing";
      if (there !== `v${versionOf(value)}`) {
        failure ??= `end: ${ref} is v${versionOf(value)} but ${holder} holds ${there}`;
      }
    }
  }
  const torn = nodes.reduce((n, node) => n + node.disk.tornCopies, 0);
  if (torn > 0) note(`${torn} cop${torn === 1 ? "y" : "ies"} came back torn from power losses`);
  const closing = writer.close().catch(() => {});
  await drive(closing);
  if (stale !== null) await drive(stale.close().catch(() => {}));
  await drive(directory.close());
  for (const n of nodes) await stop(n);
  setLogSink((line) => Deno.stderr.writeSync(new TextEncoder().encode(line + "\n")));

  return { seed, steps: step, failure, log };
}
