/**
 * The rebalance benchmark of the cluster issue, in one run:
 *
 * 1. References, measured in the same run: raw TCP (loopback throughput in this process,
 *    Deno.listen/Deno.connect, 512 KiB writes, the bytes counted at the reader), the goal's
 *    reference; and the storage of the file system the nodes' data dirs are on, since a rebuild
 *    reads blocks from one node's files and writes and syncs them into another's: sequential
 *    writes of 512 KiB with an fdatasync every SYNC_EVERY_BLOCKS blocks (the cadence a rebuilding
 *    node's store is flushed at), and sequential 512 KiB reads of a file in the page cache and of
 *    one dropped from it (posix_fadvise DONTNEED, checked with fincore). The rebuild's ratio to
 *    each, and to the smallest ("the bound"), shows which resource it is held by.
 * 2. Rebuild after a node loss: three `torus serve` nodes at replication 2 with
 *    `--rebalance-rate 0`, a volume written whole with fio; one node SIGKILLed and forced out
 *    (`torus ctl peer remove --force`), then timed until the two left each hold one copy of every
 *    block (their /status: rebalance pass complete under the new ring, store usage). Bytes moved
 *    are the sum of their rebalancers' `sentBytes`. Goal: at least half of raw TCP. The disk
 *    under the data dirs is watched meanwhile (/sys/dev/block/MAJ:MIN/stat): bytes read and
 *    written, busy time; and the nodes' store flushes are counted. A last line says where the
 *    rebuild stood: the nodes' CPU per MB moved (and the most the machine's cores carry at that
 *    cost), the disk's busy share, and whether the blocks came from the page cache.
 * 3. Client latency during a rebalance: fio 4k randread QD1 through one node's NBD server, first
 *    on a quiet cluster, then while a fourth node joins (`--auto-join`) and blocks move to it, at
 *    the default `--rebalance-rate` (100MiB) and unbounded (0) (or the `--rates` given), one fresh
 *    cluster each. fio logs every read's completion latency with a Unix timestamp, so the
 *    percentiles are of the reads that completed while the nodes were moving blocks (from the
 *    first node seeing the new ring to the end of the last node's pass), not of the whole run.
 *
 * Prints Markdown tables; results in docs/benchmarks.md.
 *
 *   deno run -A scripts/bench_rebuild.ts [--volume-mib N] [--runtime S] [--quick]
 *                                        [--only rebuild|latency] [--rates 100MiB,0]
 * @module
 */

import { parseArgs } from "node:util";
import { freePort } from "../tests/support/etcd.ts";
import { hasCommand } from "../tests/support/packages.ts";
import { testEtcd } from "../tests/support/test_etcd.ts";
import { runTorus, type ServeProcess, startServe } from "../tests/support/torus_process.ts";
import {
  Advice,
  close,
  fadvise,
  fdatasync,
  open,
  OpenFlags,
  preadFull,
  pwriteFull,
} from "../src/sys/libc.ts";
import {
  fioArgs,
  formatSpread,
  labelledTable,
  median,
  wholeNumberFlag,
  workloads,
} from "./bench_nbd_report.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
/** Throughput is printed in MB/s (10^6 bytes a second). */
const MB = 1_000_000;
/** The default `--rebalance-rate` of `torus serve`. */
const DEFAULT_RATE = "100MiB";
/** How long blocks may take to move after a ring change before the bench gives up. */
const MOVE_TIMEOUT_MS = 180_000;
/** How often the nodes' /status is read while blocks move. */
const POLL_MS = 100;

interface Config {
  readonly volumeBytes: number;
  /** Seconds of the quiet fio run. */
  readonly runtimeSeconds: number;
  /** Raw TCP runs of about a second each, and storage reference rounds. */
  readonly tcpRounds: number;
  /** The size of the storage references' file (the volume, at least 256 MiB). */
  readonly storageBytes: number;
  /** The `--rebalance-rate` of each latency cluster. */
  readonly rates: readonly string[];
  /** Only this part after raw TCP (`rebuild` or `latency`); null for both. */
  readonly only: "rebuild" | "latency" | null;
}

function onlyOf(text: string | undefined): Config["only"] {
  if (text === undefined) return null;
  if (text === "rebuild" || text === "latency") return text;
  throw new Error("--only wants rebuild or latency");
}

function configOf(args: string[]): Config {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      "volume-mib": { type: "string" },
      runtime: { type: "string" },
      only: { type: "string" },
      rates: { type: "string" },
    },
  });
  const quick = values.quick;
  const volumeBytes = wholeNumberFlag(values["volume-mib"], quick ? 64 : 256, "volume-mib") * MiB;
  return {
    volumeBytes,
    storageBytes: Math.max(256 * MiB, volumeBytes),
    runtimeSeconds: wholeNumberFlag(values.runtime, quick ? 3 : 10, "runtime"),
    tcpRounds: quick ? 1 : 3,
    only: onlyOf(values.only),
    rates: (values.rates ?? `${DEFAULT_RATE},0`).split(",").map((rate) => rate.trim())
      .filter((rate) => rate !== ""),
  };
}

function log(text: string): void {
  console.error(`bench_rebuild: ${text}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last lines of a process's output. */
function tail(text: string, lines = 25): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

async function loadAverage(): Promise<string> {
  try {
    return (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Raw TCP

/** Bytes a second one connection moves on loopback in this process for about `ms`. */
async function tcpThroughput(ms: number): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = listener.accept();
  const writer = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const reader = await accepting;
  listener.close();
  let received = 0;
  const reading = (async () => {
    const buffer = new Uint8Array(MiB);
    for (;;) {
      const n = await reader.read(buffer);
      if (n === null) return;
      received += n;
    }
  })();
  const chunk = new Uint8Array(512 * KiB);
  crypto.getRandomValues(chunk.subarray(0, 65_536));
  for (let i = 65_536; i < chunk.length; i += 65_536) chunk.copyWithin(i, 0, 65_536);
  const started = performance.now();
  try {
    while (performance.now() - started < ms) {
      for (let offset = 0; offset < chunk.length;) {
        offset += await writer.write(chunk.subarray(offset));
      }
    }
    await writer.closeWrite();
    await reading;
  } finally {
    writer.close();
    reader.close();
  }
  return received / ((performance.now() - started) / 1000);
}

// ---------------------------------------------------------------------------------------------
// 1b. Storage references

/** The block size of the nodes' stores (the default) and of the storage references' I/O. */
const BLOCK_BYTES = 512 * KiB;

/**
 * Blocks the write reference writes between two fdatasyncs: the cadence a node's store is synced
 * at while it takes a rebuild's copies. A pusher's rebalancer (src/distributor/rebalancer.ts)
 * looks at its refs in batches of BATCH_REFS_DEFAULT (512); per batch it copies to each other
 * holder the refs that holder lacks (COPY_CONCURRENCY, 8, in flight), then calls that holder's
 * `flush`, which on the file store (src/storage/file.ts `#syncAndRetire`) is an fdatasync of the
 * data file and of the sums file, then the map entries written and the map file fdatasynced.
 * Whole-block puts never trigger a flush of their own (the store's flush after
 * UNFLUSHED_BYTES_SOFT_MAX counts journal bytes of range writes only). In this rebuild (three
 * nodes at replication 2, one lost) the two left hold every block, and a pusher's batch of 512
 * refs has about half that the other lacks (the refs it shared with the lost node): one flush of
 * the holder per about 256 blocks (128 MiB) received. The rebuild row counts the flushes.
 */
const SYNC_EVERY_BLOCKS = 256;

/** What one round of the storage references measured. */
interface StorageRound {
  /** Sequential 512 KiB writes of a new file, an fdatasync every SYNC_EVERY_BLOCKS and at the end. */
  readonly writeBytesPerSecond: number;
  /** Sequential 512 KiB reads of that file while it is in the page cache. */
  readonly cachedReadBytesPerSecond: number;
  /** The same after posix_fadvise DONTNEED dropped it; null when that could not be checked. */
  readonly uncachedReadBytesPerSecond: number | null;
  /** Shares of the file in the page cache (fincore) before each read; null without fincore. */
  readonly residentBeforeCached: number | null;
  readonly residentBeforeUncached: number | null;
}

/** Share of `path`'s bytes in the page cache (fincore, which does not read the file). */
async function residentShare(path: string): Promise<number | null> {
  if (!hasCommand("fincore")) return null;
  const text = await output("fincore", [
    "--bytes",
    "--noheadings",
    "--raw",
    "--output",
    "RES,SIZE",
    path,
  ]);
  const [resident, size] = text.trim().split(/\s+/).map(Number);
  if (resident === undefined || size === undefined || !(size > 0)) return null;
  return resident / size;
}

/**
 * A dropped file whose share still cached is above this is no uncached reference (a file system
 * that keeps its pages, or memory pressure making nothing of it either way).
 */
const EVICTED_SHARE_MAX = 0.02;

/**
 * One round of the storage references on a new file `path` of `bytes` in the nodes' file system:
 * write, read cached, drop from the page cache, read again; the file is removed after.
 */
async function storageRound(path: string, bytes: number): Promise<StorageRound> {
  const block = new Uint8Array(BLOCK_BYTES);
  // Incompressible bytes, as fio writes them through the volume.
  for (let i = 0; i < block.length; i += 65_536) {
    crypto.getRandomValues(block.subarray(i, i + 65_536));
  }
  const blocks = Math.ceil(bytes / BLOCK_BYTES);
  const fd = open(path, OpenFlags.O_RDWR | OpenFlags.O_CREAT | OpenFlags.O_TRUNC);
  try {
    let started = performance.now();
    for (let i = 0; i < blocks; i++) {
      await pwriteFull(fd, block, i * BLOCK_BYTES);
      if ((i + 1) % SYNC_EVERY_BLOCKS === 0) await fdatasync(fd);
    }
    await fdatasync(fd);
    const writeBytesPerSecond = blocks * BLOCK_BYTES / ((performance.now() - started) / 1000);

    const readAll = async () => {
      started = performance.now();
      for (let i = 0; i < blocks; i++) {
        const n = await preadFull(fd, block, i * BLOCK_BYTES);
        if (n !== BLOCK_BYTES) throw new Error(`${path}: read ${n} bytes of block ${i}`);
      }
      return blocks * BLOCK_BYTES / ((performance.now() - started) / 1000);
    };
    const residentBeforeCached = await residentShare(path);
    const cachedReadBytesPerSecond = await readAll();
    // Its pages are clean (synced above), so DONTNEED drops them all; fincore tells if it did.
    fadvise(fd, { advice: Advice.POSIX_FADV_DONTNEED });
    const residentBeforeUncached = await residentShare(path);
    const evicted = residentBeforeUncached !== null && residentBeforeUncached <= EVICTED_SHARE_MAX;
    const uncachedReadBytesPerSecond = evicted ? await readAll() : null;
    return {
      writeBytesPerSecond,
      cachedReadBytesPerSecond,
      uncachedReadBytesPerSecond,
      residentBeforeCached,
      residentBeforeUncached,
    };
  } finally {
    close(fd);
    await Deno.remove(path).catch(() => {});
  }
}

/** The storage references of the run, one entry per kind, a value per round. */
interface StorageReferences {
  readonly fileBytes: number;
  readonly dir: string;
  readonly rounds: readonly StorageRound[];
}

async function storageReferences(dir: string, config: Config): Promise<StorageReferences> {
  const rounds: StorageRound[] = [];
  for (let i = 0; i < config.tcpRounds; i++) {
    rounds.push(await storageRound(`${dir}/storage-reference-${i}`, config.storageBytes));
  }
  return { fileBytes: config.storageBytes, dir, rounds };
}

// ---------------------------------------------------------------------------------------------
// The disk under the data dirs

/** Counters of a block device (/sys/dev/block/MAJ:MIN/stat; sectors are 512 bytes there). */
interface DiskCounters {
  readonly readBytes: number;
  readonly writeBytes: number;
  /** Milliseconds the device had I/O in flight (field 10, io_ticks). */
  readonly busyMs: number;
}

/** The stat file of the block device `path` is on, or null (no such device: tmpfs, overlay). */
function diskStatPathOf(path: string): string | null {
  const dev = Deno.statSync(path).dev;
  // Linux's dev_t: major in bits 8-19 (and 32-43), minor in bits 0-7 and 20-31.
  const major = ((dev >> 8) & 0xfff) + Math.floor(dev / 2 ** 32) * 0x1000;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  const stat = `/sys/dev/block/${major}:${minor}/stat`;
  try {
    Deno.statSync(stat);
    return stat;
  } catch {
    return null;
  }
}

function diskCountersOf(statPath: string | null): DiskCounters | null {
  if (statPath === null) return null;
  try {
    const fields = Deno.readTextFileSync(statPath).trim().split(/\s+/).map(Number);
    if (fields.length < 10 || fields.some((f) => !Number.isFinite(f))) return null;
    return { readBytes: fields[2]! * 512, writeBytes: fields[6]! * 512, busyMs: fields[9]! };
  } catch {
    return null;
  }
}

/** The disk's work between two readings (null if either is missing). */
function diskDelta(from: DiskCounters | null, to: DiskCounters | null): DiskCounters | null {
  if (from === null || to === null) return null;
  return {
    readBytes: to.readBytes - from.readBytes,
    writeBytes: to.writeBytes - from.writeBytes,
    busyMs: to.busyMs - from.busyMs,
  };
}

// ---------------------------------------------------------------------------------------------
// The cluster

/** What the bench reads of a node's /status. */
interface NodeStatus {
  readonly usedBlocks: number;
  readonly blockSizeBytes: number;
  /** The ring the node follows. */
  readonly ringVersion: number;
  readonly rebalance: {
    readonly rebalancing: boolean;
    /** The ring version of the pass running now, or of the last one. */
    readonly ringVersion: number;
    readonly lastFinishMs: number | null;
    readonly sentBytes: number;
    readonly passes: number;
  };
}

interface StatusJson {
  store?: { usedBlocks?: number | null; blockSizeBytes?: number };
  cluster?: {
    ring?: { version?: number };
    rebalance?: NodeStatus["rebalance"] | null;
  } | null;
}

async function statusOf(node: ServeProcess): Promise<NodeStatus> {
  if (node.http === undefined) throw new Error(`${node.dataDir}: no HTTP address`);
  const response = await fetch(`http://${node.http.hostname}:${node.http.port}/status`);
  const text = await response.text();
  if (!response.ok) throw new Error(`/status of ${node.dataDir}: ${response.status} ${text}`);
  const json: StatusJson = JSON.parse(text);
  const usedBlocks = json.store?.usedBlocks;
  const ringVersion = json.cluster?.ring?.version;
  const rebalance = json.cluster?.rebalance;
  if (typeof usedBlocks !== "number" || typeof ringVersion !== "number" || !rebalance) {
    throw new Error(`/status of ${node.dataDir} lacks the store or the rebalancer: ${text}`);
  }
  return {
    usedBlocks,
    blockSizeBytes: json.store?.blockSizeBytes ?? 512 * KiB,
    ringVersion,
    rebalance,
  };
}

/** Flushes the node's store completed since it started (its /metrics); NaN when not there. */
async function flushesOf(node: ServeProcess): Promise<number> {
  if (node.http === undefined) return NaN;
  const response = await fetch(`http://${node.http.hostname}:${node.http.port}/metrics`);
  const text = await response.text();
  const match = /^torus_storage_flushes\{[^}]*\} (\d+)$/m.exec(text);
  return response.ok && match ? Number(match[1]) : NaN;
}

async function uuidOf(node: ServeProcess): Promise<string> {
  return (await Deno.readTextFile(`${node.dataDir}/metadata/uuid`)).trim();
}

/** etcd, `torus ctl init`, nodes at one `--rebalance-rate`, and a volume `bench`. */
class BenchCluster {
  readonly nodes: ServeProcess[] = [];
  /** Nodes that exited, with their exit code; and those the bench killed on purpose. */
  readonly #exited = new Map<ServeProcess, number>();
  readonly #killed = new Set<ServeProcess>();
  /** The metadata flags (-C, --metadata-prefix) of commands run on this cluster. */
  readonly meta: readonly string[];
  readonly #dispose: () => Promise<void>;
  readonly #dir: string;
  readonly #rate: string;
  readonly #storeBytes: number;

  private constructor(
    dir: string,
    meta: string[],
    rate: string,
    storeBytes: number,
    dispose: () => Promise<void>,
  ) {
    this.#dir = dir;
    this.meta = meta;
    this.#rate = rate;
    this.#storeBytes = storeBytes;
    this.#dispose = dispose;
  }

  static async start(
    dir: string,
    config: Config,
    rate: string,
    nodes: number,
  ): Promise<BenchCluster> {
    const etcd = await testEtcd();
    const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-bench-${crypto.randomUUID()}/`];
    // Room for the whole volume on every node (two nodes left hold all of it) and some spare.
    const storeBytes = Math.max(256 * MiB, 2 * config.volumeBytes);
    const cluster = new BenchCluster(
      dir,
      meta,
      rate,
      storeBytes,
      async () => {
        await etcd[Symbol.asyncDispose]();
      },
    );
    try {
      await cluster.ctl(["init"]);
      for (let i = 0; i < nodes; i++) await cluster.addNode();
      await cluster.ctl(["volume", "create-block", "bench", `${config.volumeBytes}`]);
      return cluster;
    } catch (error) {
      await cluster.stop().catch(() => {});
      throw error;
    }
  }

  async ctl(args: string[]): Promise<void> {
    const result = await runTorus(["ctl", ...args, ...this.meta]);
    if (result.code !== 0) throw new Error(`torus ctl ${args.join(" ")}: ${result.stderr}`);
  }

  /** Starts one more node (it joins the ring). */
  async addNode(): Promise<ServeProcess> {
    const node = await startServe(`${this.#dir}/node${this.nodes.length}`, {
      size: `${this.#storeBytes}`,
      args: [
        ...this.meta,
        "--peer-address",
        `tdp://127.0.0.1:${freePort()}`,
        "--auto-join",
        "--rebalance-rate",
        this.#rate,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
      ],
      readyTimeoutMs: 120_000,
    });
    this.nodes.push(node);
    void node.child.status.then((status) => this.#exited.set(node, status.code));
    return node;
  }

  /** SIGKILLs `node` (its exit is then no failure). */
  async kill(node: ServeProcess): Promise<void> {
    this.#killed.add(node);
    await node.kill();
  }

  /** A node that exited without being killed, with the end of its output; null while none. */
  failure(): Error | null {
    for (const [node, code] of this.#exited) {
      if (this.#killed.has(node)) continue;
      return new Error(`node ${node.dataDir} exited with ${code}:\n${tail(node.output())}`);
    }
    return null;
  }

  /** The end of every node's output, for an error message. */
  tails(): string {
    return this.nodes.map((node) => `--- ${node.dataDir}:\n${tail(node.output())}`).join("\n");
  }

  /** The NBD URI of the volume on node `i`. */
  uri(i: number): string {
    const node = this.nodes[i]!;
    return `nbd://${node.nbd.hostname}:${node.nbd.port}/bench`;
  }

  async stop(): Promise<void> {
    this.nodes.forEach((node) => this.#killed.add(node));
    for (const node of this.nodes) await node.stop().catch(() => {});
    await this.#dispose();
  }
}

async function output(command: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${command} failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

/** Writes the whole volume through node 0 (fio, 1 MiB sequential writes, a FLUSH at the end). */
async function fill(cluster: BenchCluster, config: Config): Promise<void> {
  const workload = workloads.find((w) => w.name === "1M seq write QD8")!;
  const started = performance.now();
  await output("fio", fioArgs({ uri: cluster.uri(0), workload, sizeBytes: config.volumeBytes }));
  log(
    `filled ${config.volumeBytes / MiB} MiB in ${
      ((performance.now() - started) / 1000).toFixed(1)
    } s`,
  );
}

/**
 * Waits until no node rebalances and the blocks all nodes hold are the same in three reads half
 * a second apart, at least `atLeastBlocks`: the total.
 */
async function settledBlocks(nodes: readonly ServeProcess[], atLeastBlocks: number) {
  const deadline = Date.now() + 120_000;
  let last = -1;
  let same = 0;
  for (;;) {
    const statuses = await Promise.all(nodes.map(statusOf));
    const total = statuses.reduce((sum, s) => sum + s.usedBlocks, 0);
    const quiet = statuses.every((s) => !s.rebalance.rebalancing);
    same = total === last && quiet && total >= atLeastBlocks ? same + 1 : 0;
    if (same >= 2) return total;
    if (Date.now() > deadline) {
      throw new Error(`the nodes' usage did not settle: ${JSON.stringify(statuses)}`);
    }
    last = total;
    await sleep(500);
  }
}

/** CPU seconds (user and system) process `pid` has used, from /proc/PID/stat (100 ticks/s). */
function cpuSecondsOf(pid: number): number {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // After "PID (COMM) ": state is field 3, utime field 14, stime field 15.
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

/** When a ring change reached the nodes and when their passes under it ended. */
interface Movement {
  /**
   * When the ring changed (epoch ms): halfway between the last read of /status that showed no
   * node on a newer ring than `fromVersion` and the first that showed one (polled every 10 ms).
   */
  readonly ringSeenMs: number;
  /** The end of the last node's complete pass under the new ring (epoch ms). */
  readonly finishMs: number;
  /** Bytes the nodes' rebalancers sent meanwhile. */
  readonly sentBytes: number;
  /** CPU each node used from the ring change to the poll that saw the last pass end, per second. */
  readonly cpuShares: readonly number[];
  /** CPU seconds each node used over the same time (all its threads). */
  readonly cpuSeconds: readonly number[];
  /** The disk's work over the same time (null: `disk` gave none), and that time in ms. */
  readonly disk: DiskCounters | null;
  readonly sampledMs: number;
  readonly statuses: readonly NodeStatus[];
}

/**
 * Polls `nodes` until each has completed a pass under a ring newer than `fromVersion` (its first
 * such `lastFinishMs` is taken, before a later idle pass replaces it).
 */
async function watchMovement(
  nodes: readonly ServeProcess[],
  before: readonly NodeStatus[],
  fromVersion: number,
  timeoutMs: number,
  failed: () => Error | null,
  describe: () => string,
  disk: () => DiskCounters | null = () => null,
): Promise<Movement> {
  const deadline = Date.now() + timeoutMs;
  const cpu = () => nodes.map((node) => cpuSecondsOf(node.child.pid));
  let unseen = { ms: Date.now(), cpu: cpu(), disk: disk() };
  let seen: { ms: number; cpu: number[]; disk: DiskCounters | null } | null = null;
  const finished: (number | null)[] = nodes.map(() => null);
  for (;;) {
    const error = failed();
    if (error !== null) throw error;
    const polledMs = Date.now();
    const polledCpu = cpu();
    const polledDisk = disk();
    const statuses = await Promise.all(nodes.map(statusOf));
    if (seen === null) {
      if (statuses.some((s) => s.ringVersion > fromVersion)) {
        seen = { ms: (unseen.ms + polledMs) / 2, cpu: unseen.cpu, disk: unseen.disk };
      } else {
        unseen = { ms: polledMs, cpu: polledCpu, disk: polledDisk };
      }
    }
    statuses.forEach((s, i) => {
      const r = s.rebalance;
      const done = !r.rebalancing && r.ringVersion > fromVersion &&
        r.ringVersion === s.ringVersion && r.lastFinishMs !== null;
      if (done && finished[i] === null) finished[i] = r.lastFinishMs;
    });
    if (seen !== null && finished.every((f) => f !== null)) {
      const seconds = (Date.now() - unseen.ms) / 1000;
      const seenCpu = seen.cpu;
      return {
        ringSeenMs: seen.ms,
        finishMs: Math.max(...finished.map((f) => f!)),
        sentBytes: statuses.reduce(
          (sum, s, i) => sum + s.rebalance.sentBytes - before[i]!.rebalance.sentBytes,
          0,
        ),
        cpuShares: cpu().map((c, i) => (c - seenCpu[i]!) / seconds),
        cpuSeconds: cpu().map((c, i) => c - seenCpu[i]!),
        disk: diskDelta(seen.disk, disk()),
        sampledMs: seconds * 1000,
        statuses,
      };
    }
    if (Date.now() > deadline) {
      throw new Error(
        `the nodes did not finish moving blocks: ${JSON.stringify(statuses)}\n${describe()}`,
      );
    }
    await sleep(seen === null ? 10 : POLL_MS);
  }
}

function formatShares(shares: readonly number[]): string {
  return shares.map((share) => Number.isFinite(share) ? `${(share * 100).toFixed(0)}%` : "?")
    .join(" + ");
}

/** Polls until `check` holds for the nodes' statuses; whether it did within `timeoutMs`. */
async function waitForUsage(
  nodes: readonly ServeProcess[],
  check: (statuses: NodeStatus[]) => boolean,
  timeoutMs: number,
): Promise<{ ok: boolean; statuses: NodeStatus[] }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const statuses = await Promise.all(nodes.map(statusOf));
    if (check(statuses)) return { ok: true, statuses };
    if (Date.now() > deadline) return { ok: false, statuses };
    await sleep(250);
  }
}

function volumeBlocks(config: Config): number {
  return Math.ceil(config.volumeBytes / (512 * KiB));
}

// ---------------------------------------------------------------------------------------------
// 2. Rebuild

interface RebuildResult {
  readonly movedBytes: number;
  /** From spawning `torus ctl peer remove --force` to the last pass's end. */
  readonly fromCommandSeconds: number;
  /** From the first node seeing the new ring to the last pass's end. */
  readonly fromRingSeconds: number;
  /** Each living node holds one copy of every block. */
  readonly usageOk: boolean;
  readonly usage: string;
  /** CPU of the two nodes left while they rebuilt (shares of a core), and its sum in seconds. */
  readonly cpu: string;
  readonly cpuSeconds: number;
  /** The disk under the data dirs meanwhile (null: not a block device), over `diskSeconds`. */
  readonly disk: DiskCounters | null;
  readonly diskSeconds: number;
  /** Flushes each living node's store completed meanwhile. */
  readonly flushes: readonly number[];
}

async function rebuild(dir: string, config: Config): Promise<RebuildResult> {
  const cluster = await BenchCluster.start(dir, config, "0", 3);
  try {
    await fill(cluster, config);
    const total = await settledBlocks(cluster.nodes, 2 * volumeBlocks(config));
    log(`settled at ${total} blocks on 3 nodes`);
    const [a, b, c] = cluster.nodes as [ServeProcess, ServeProcess, ServeProcess];
    const living = [a, b];
    const before = await Promise.all(living.map(statusOf));
    const flushesBefore = await Promise.all(living.map(flushesOf));
    const fromVersion = Math.max(...before.map((s) => s.ringVersion));
    const dead = await uuidOf(c);
    await cluster.kill(c);
    log(`SIGKILLed node ${dead}, forcing it out`);
    const commandMs = Date.now();
    let removeError: Error | null = null;
    const removing = runTorus(["ctl", "peer", "remove", "--force", dead, ...cluster.meta])
      .then((result) => {
        if (result.code !== 0) removeError = new Error(`peer remove: ${result.stderr}`);
      });
    const diskStat = diskStatPathOf(a.dataDir);
    const movement = await watchMovement(
      living,
      before,
      fromVersion,
      MOVE_TIMEOUT_MS,
      () => cluster.failure() ?? removeError,
      () => cluster.tails(),
      () => diskCountersOf(diskStat),
    );
    await removing;
    if (removeError !== null) throw removeError;
    const each = total / 2;
    const usage = await waitForUsage(
      living,
      (statuses) => statuses.every((s) => s.usedBlocks === each),
      10_000,
    );
    const result: RebuildResult = {
      movedBytes: movement.sentBytes,
      fromCommandSeconds: (movement.finishMs - commandMs) / 1000,
      fromRingSeconds: (movement.finishMs - movement.ringSeenMs) / 1000,
      usageOk: usage.ok,
      usage: `${usage.statuses.map((s) => s.usedBlocks).join(" + ")} blocks (want ${each} each)`,
      cpu: formatShares(movement.cpuShares),
      cpuSeconds: movement.cpuSeconds.reduce((sum, c) => sum + c, 0),
      disk: movement.disk,
      diskSeconds: movement.sampledMs / 1000,
      flushes: (await Promise.all(living.map(flushesOf))).map((f, i) => f - flushesBefore[i]!),
    };
    log(
      `rebuild: ${(result.movedBytes / MiB).toFixed(1)} MiB in ${
        result.fromRingSeconds.toFixed(2)
      } s from the ring change (${result.fromCommandSeconds.toFixed(2)} s from the command); ` +
        `usage ${result.usage}`,
    );
    return result;
  } finally {
    await cluster.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Client latency during a rebalance

/** One read's completion: when (epoch ms) and its completion latency (ns). */
interface Completion {
  readonly ms: number;
  readonly ns: number;
}

/** Percentiles of some reads' completion latencies (nearest rank). */
interface Percentiles {
  readonly count: number;
  readonly p50Ns: number;
  readonly p99Ns: number;
  readonly maxNs: number;
}

function percentilesOf(latenciesNs: readonly number[]): Percentiles {
  const sorted = [...latenciesNs].sort((x, y) => x - y);
  const rank = (p: number) =>
    sorted.length === 0 ? NaN : sorted[Math.max(0, Math.ceil(p / 100 * sorted.length) - 1)]!;
  return { count: sorted.length, p50Ns: rank(50), p99Ns: rank(99), maxNs: rank(100) };
}

/** A clat log of fio (`--write_lat_log --log_avg_msec=0 --log_unix_epoch=1`): one read a line. */
function parseClatLog(text: string): Completion[] {
  const completions: Completion[] = [];
  for (const line of text.split("\n")) {
    const [ms, ns] = line.split(",", 2).map((field) => Number(field.trim()));
    if (ms === undefined || ns === undefined || !Number.isFinite(ms) || !Number.isFinite(ns)) {
      continue;
    }
    completions.push({ ms, ns });
  }
  return completions;
}

/** fio's own completion latency percentiles of the whole run (its JSON report). */
function parseFioPercentiles(text: string): { p50Ns: number; p99Ns: number } {
  const start = text.indexOf("{");
  if (start < 0) throw new Error(`no JSON in fio's output: ${text.slice(0, 200)}`);
  const report: {
    jobs: { error: number; read: { clat_ns: { percentile?: Record<string, number> } } }[];
  } = JSON.parse(text.slice(start));
  const job = report.jobs[0];
  if (job === undefined) throw new Error("fio reported no job");
  if (job.error !== 0) throw new Error(`fio's job failed with error ${job.error}`);
  const percentile = job.read.clat_ns.percentile ?? {};
  return { p50Ns: percentile["50.000000"] ?? NaN, p99Ns: percentile["99.000000"] ?? NaN };
}

/** A running fio: 4k random reads at QD1 on the volume, every read's latency logged. */
class LatencyFio {
  readonly #child: Deno.ChildProcess;
  readonly #output: Promise<Deno.CommandOutput>;
  readonly #logPrefix: string;
  #exited = false;

  constructor(uri: string, config: Config, logPrefix: string, runtimeSeconds: number) {
    const workload = workloads.find((w) => w.name === "4k randread QD1")!;
    this.#logPrefix = logPrefix;
    this.#child = new Deno.Command("fio", {
      args: fioArgs({
        uri,
        workload,
        sizeBytes: config.volumeBytes,
        runtimeSeconds,
        extra: [
          `--write_lat_log=${logPrefix}`,
          "--log_avg_msec=0",
          "--log_unix_epoch=1",
          "--percentile_list=50:99",
        ],
      }),
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#output = this.#child.output().finally(() => {
      this.#exited = true;
    });
  }

  /** Waits for fio's end (SIGINT first when `interrupt`): its percentiles and every read. */
  async result(interrupt: boolean): Promise<{
    fio: { p50Ns: number; p99Ns: number };
    completions: Completion[];
  }> {
    if (interrupt && !this.#exited) {
      try {
        this.#child.kill("SIGINT");
      } catch {
        // It has just ended.
      }
    }
    const out = await this.#output;
    const stdout = new TextDecoder().decode(out.stdout);
    // Interrupted, fio exits non-zero but still reports; its job's error says whether it failed.
    let fio: { p50Ns: number; p99Ns: number };
    try {
      fio = parseFioPercentiles(stdout);
    } catch (error) {
      throw new Error(
        `fio: ${error instanceof Error ? error.message : error}: ${
          new TextDecoder().decode(out.stderr)
        }`,
      );
    }
    const completions = parseClatLog(await Deno.readTextFile(`${this.#logPrefix}_clat.1.log`));
    return { fio, completions };
  }

  /** Ends it without a result (on an error elsewhere). */
  async kill(): Promise<void> {
    if (!this.#exited) {
      try {
        this.#child.kill("SIGKILL");
      } catch {
        // Gone.
      }
    }
    await this.#output.catch(() => {});
  }
}

/** One row of the latency table. */
interface LatencyCase {
  readonly label: string;
  /** The reads counted: all of a quiet run, or those that completed while blocks moved. */
  readonly window: Percentiles;
  readonly windowSeconds: number;
  /** Null for a quiet run. */
  readonly movedBytes: number | null;
  /** fio's own percentiles of its whole run. */
  readonly fio: { p50Ns: number; p99Ns: number };
  /** The quiet run it is compared with (null: it is one). */
  readonly quiet: LatencyCase | null;
  /** CPU of the three first nodes over the reads counted (shares of a core). */
  readonly cpu: string;
  /** Whatever did not go as expected. */
  readonly note: string;
}

/** A fresh 3-node cluster at `rate`: fio on it quiet, then while a fourth node joins. */
async function latencyUnderRebalance(
  dir: string,
  config: Config,
  rate: string,
): Promise<LatencyCase[]> {
  const label = `--rebalance-rate ${rate}`;
  const cluster = await BenchCluster.start(dir, config, rate, 3);
  try {
    await fill(cluster, config);
    const total = await settledBlocks(cluster.nodes, 2 * volumeBlocks(config));
    log(`${label}: settled at ${total} blocks on 3 nodes; quiet run`);

    const cpuBefore = cluster.nodes.map((node) => cpuSecondsOf(node.child.pid));
    const quietStarted = Date.now();
    const quietFio = new LatencyFio(cluster.uri(0), config, `${dir}/quiet`, config.runtimeSeconds);
    const quietRun = await quietFio.result(false);
    const quietSeconds = (Date.now() - quietStarted) / 1000;
    const quietCpu = cluster.nodes.map((node, i) =>
      (cpuSecondsOf(node.child.pid) - cpuBefore[i]!) / quietSeconds
    );
    const quietMs = quietRun.completions.map((c) => c.ms);
    const quiet: LatencyCase = {
      label: `quiet (3 nodes, --rebalance-rate ${rate})`,
      window: percentilesOf(quietRun.completions.map((c) => c.ns)),
      windowSeconds: quietMs.length === 0
        ? 0
        : (Math.max(...quietMs) - Math.min(...quietMs)) / 1000,
      movedBytes: null,
      fio: quietRun.fio,
      quiet: null,
      cpu: formatShares(quietCpu),
      note: "",
    };

    const old = [...cluster.nodes];
    const before = await Promise.all(old.map(statusOf));
    const fromVersion = Math.max(...before.map((s) => s.ringVersion));
    log(`${label}: fio while a fourth node joins`);
    const busyFio = new LatencyFio(cluster.uri(0), config, `${dir}/busy`, 600);
    let movement: Movement;
    try {
      // Reads before the ring changes too: fio is connected and steady when blocks start moving.
      await sleep(1_000);
      let addError: Error | null = null;
      const adding = cluster.addNode().catch((error) => {
        addError = error instanceof Error ? error : new Error(String(error));
      });
      movement = await watchMovement(
        old,
        before,
        fromVersion,
        MOVE_TIMEOUT_MS,
        () => cluster.failure() ?? addError,
        () => cluster.tails(),
      );
      await adding;
      if (addError !== null) throw addError;
      await sleep(1_000);
    } catch (error) {
      await busyFio.kill();
      throw error;
    }
    const busyRun = await busyFio.result(true);
    const inWindow = busyRun.completions.filter((c) =>
      c.ms >= movement.ringSeenMs && c.ms <= movement.finishMs
    );
    const usage = await waitForUsage(
      cluster.nodes,
      (statuses) =>
        statuses[3]!.usedBlocks > 0 &&
        statuses.reduce((sum, s) => sum + s.usedBlocks, 0) === total,
      10_000,
    );
    const busy: LatencyCase = {
      label: `4th node joins, --rebalance-rate ${rate}`,
      window: percentilesOf(inWindow.map((c) => c.ns)),
      windowSeconds: (movement.finishMs - movement.ringSeenMs) / 1000,
      movedBytes: movement.sentBytes,
      fio: busyRun.fio,
      quiet,
      cpu: formatShares(movement.cpuShares),
      note: usage.ok
        ? ""
        : `usage after the move: ${
          usage.statuses.map((s) => s.usedBlocks).join(" + ")
        } blocks, want ${total} in all`,
    };
    log(
      `${label}: ${(busy.movedBytes! / MiB).toFixed(1)} MiB moved in ${
        busy.windowSeconds.toFixed(2)
      } s; ${busy.window.count} reads in that window, p50 ${
        (busy.window.p50Ns / 1000).toFixed(0)
      } µs, p99 ${(busy.window.p99Ns / 1000).toFixed(0)} µs (quiet ${
        (quiet.window.p50Ns / 1000).toFixed(0)
      } / ${(quiet.window.p99Ns / 1000).toFixed(0)} µs)`,
    );
    return [quiet, busy];
  } finally {
    await cluster.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// The report

function formatUs(ns: number): string {
  return Number.isFinite(ns) ? (ns / 1000).toFixed(0) : "-";
}

function formatRatio(value: number, reference: number): string {
  return Number.isFinite(value) && Number.isFinite(reference) && reference > 0
    ? `${(value / reference).toFixed(2)}x`
    : "-";
}

/** One reference of the run: its label and its value per round (bytes a second). */
interface Reference {
  readonly label: string;
  readonly bytesPerSecond: readonly number[];
  /** Why there is no value (printed instead of one). */
  readonly missing: string | null;
}

const DROPPED_READ_LABEL = "storage read, dropped from the cache";

function referencesOf(tcp: readonly number[], storage: StorageReferences): Reference[] {
  const rounds = storage.rounds;
  const dropped = rounds.map((r) => r.uncachedReadBytesPerSecond)
    .filter((v): v is number => v !== null);
  const notDropped = rounds.find((r) => r.uncachedReadBytesPerSecond === null);
  return [
    { label: "raw TCP, loopback", bytesPerSecond: tcp, missing: null },
    {
      label: `storage write, fdatasync every ${SYNC_EVERY_BLOCKS} blocks`,
      bytesPerSecond: rounds.map((r) => r.writeBytesPerSecond),
      missing: null,
    },
    {
      label: "storage read, page cache",
      bytesPerSecond: rounds.map((r) => r.cachedReadBytesPerSecond),
      missing: null,
    },
    {
      label: DROPPED_READ_LABEL,
      // Every round's file must have been checked out of the cache, or the row says why not.
      bytesPerSecond: notDropped === undefined ? dropped : [],
      missing: notDropped === undefined
        ? null
        : notDropped.residentBeforeUncached === null
        ? "not measured: no fincore to check the drop"
        : `not measured: ${formatShare(notDropped.residentBeforeUncached)} still cached after ` +
          "DONTNEED",
    },
  ];
}

function formatShare(share: number | null): string {
  return share === null ? "?" : `${(share * 100).toFixed(0)}%`;
}

function printReport(
  config: Config,
  tcp: readonly number[],
  storage: StorageReferences,
  rebuilt: RebuildResult | null,
  latency: readonly LatencyCase[],
  load: { before: string; after: string },
): void {
  console.log(
    `torus rebalance benchmark: ${config.volumeBytes / MiB} MiB volume, replication 2, loopback; ` +
      `load average ${load.before} before, ${load.after} after`,
  );
  console.log("");
  console.log(
    `References, median (range) of ${config.tcpRounds} round(s). Raw TCP: one loopback ` +
      `connection in one Deno process (Deno.listen/Deno.connect), 512 KiB writes, bytes counted ` +
      `at the reader, 1 s a round. Storage: a new ${storage.fileBytes / MiB} MiB file a round in ` +
      `the file system of the nodes' data dirs (${storage.dir}), one 512 KiB pwrite or pread at a ` +
      `time in order: written with an fdatasync every ${SYNC_EVERY_BLOCKS} blocks (the cadence ` +
      `a rebuilding node's store is flushed at) and at the end; read back while cached (page ` +
      `cache share before: ${
        storage.rounds.map((r) => formatShare(r.residentBeforeCached)).join(", ")
      }), ` +
      `then after posix_fadvise DONTNEED (share left: ${
        storage.rounds.map((r) => formatShare(r.residentBeforeUncached)).join(", ")
      }; fincore)`,
  );
  console.log("");
  const references = referencesOf(tcp, storage);
  const referenceRows = references.map((r) => [
    r.label,
    r.missing ?? formatSpread(r.bytesPerSecond.map((v) => v / MB), 0),
  ]);
  for (const line of labelledTable(["reference", "MB/s"], referenceRows)) console.log(line);
  if (rebuilt !== null) printRebuild(config, references, rebuilt);
  if (latency.length > 0) printLatency(config, latency);
}

function printRebuild(
  config: Config,
  references: readonly Reference[],
  rebuilt: RebuildResult,
): void {
  const tcpMB = median(references[0]!.bytesPerSecond) / MB;
  console.log("");
  console.log(
    "Rebuild: 3 nodes, --rebalance-rate 0, one SIGKILLed and `torus ctl peer remove --force`d; " +
      "until the 2 left each hold one copy of every block (moved = their rebalancers' sentBytes; " +
      "MB/s over the time from the ring change; node CPU: each living node's CPU over that time, " +
      "100% = one core; disk: the device under the data dirs over that time, whatever else " +
      "used it too; flushes: each living node's store flushes)",
  );
  console.log("");
  const rebuildMB = rebuilt.movedBytes / MB / rebuilt.fromRingSeconds;
  const disk = rebuilt.disk;
  const rebuildRow = [
    `${config.volumeBytes / MiB} MiB volume`,
    (rebuilt.movedBytes / MB).toFixed(1),
    rebuilt.fromCommandSeconds.toFixed(2),
    rebuilt.fromRingSeconds.toFixed(2),
    rebuildMB.toFixed(0),
    tcpMB.toFixed(0),
    formatRatio(rebuildMB, tcpMB),
    rebuilt.usageOk ? "yes" : `no: ${rebuilt.usage}`,
    rebuilt.cpu,
    disk === null ? "-" : (disk.readBytes / MB).toFixed(1),
    disk === null ? "-" : (disk.writeBytes / MB).toFixed(1),
    disk === null || !(rebuilt.diskSeconds > 0)
      ? "-"
      : `${(disk.busyMs / 10 / rebuilt.diskSeconds).toFixed(0)}%`,
    rebuilt.flushes.join(" + "),
  ];
  const rebuildHeader = [
    "rebuild",
    "moved MB",
    "s from remove command",
    "s from ring change",
    "MB/s",
    "raw TCP MB/s",
    "rebuild / raw TCP",
    "one copy each",
    "node CPU",
    "disk read MB",
    "disk written MB",
    "disk busy",
    "flushes",
  ];
  for (const line of labelledTable(rebuildHeader, [rebuildRow])) console.log(line);
  if (!rebuilt.usageOk) console.log(`\nNote (rebuild): usage ${rebuilt.usage}`);

  // The rebuild against each reference, and against the smallest measured: what holds it.
  const measured = references.filter((r) => r.missing === null && r.bytesPerSecond.length > 0);
  const bound = measured.reduce<Reference | null>(
    (low, r) => low === null || median(r.bytesPerSecond) < median(low.bytesPerSecond) ? r : low,
    null,
  );
  const rows = references.map((r) => {
    const referenceMB = r.missing === null ? median(r.bytesPerSecond) / MB : NaN;
    return [
      r.label,
      r.missing === null ? referenceMB.toFixed(0) : "-",
      rebuildMB.toFixed(0),
      formatRatio(rebuildMB, referenceMB),
    ];
  });
  if (bound !== null) {
    const boundMB = median(bound.bytesPerSecond) / MB;
    rows.push([
      `the bound: the smallest (${bound.label})`,
      boundMB.toFixed(0),
      rebuildMB.toFixed(0),
      formatRatio(rebuildMB, boundMB),
    ]);
  }
  console.log("");
  console.log(
    "The rebuild against each reference (medians) and against the smallest of them, the bound",
  );
  console.log("");
  const ratioHeader = ["rebuild against", "reference MB/s", "rebuild MB/s", "rebuild / reference"];
  for (const line of labelledTable(ratioHeader, rows)) console.log(line);
  console.log("");
  console.log(`Where it stood: ${heldBy(rebuilt, rebuildMB, measured)}`);
}

/**
 * The rebuild's other resources, as a sentence: the nodes' CPU per MB moved and the most this
 * machine's cores carry at that cost; the disk's busy share and what it read. When it read
 * (almost) nothing, the blocks came from the page cache and the dropped-cache read reference did
 * not apply to this run: the smallest of the others is named.
 */
function heldBy(
  rebuilt: RebuildResult,
  rebuildMB: number,
  measured: readonly Reference[],
): string {
  const movedMB = rebuilt.movedBytes / MB;
  const cores = navigator.hardwareConcurrency;
  const parts: string[] = [];
  if (Number.isFinite(rebuilt.cpuSeconds) && movedMB > 0) {
    const cpuMsPerMB = rebuilt.cpuSeconds * 1000 / movedMB;
    const ceilingMB = cores * 1000 / cpuMsPerMB;
    parts.push(
      `the two nodes used ${cpuMsPerMB.toFixed(1)} ms of CPU per MB moved (all their threads), ` +
        `so this machine's ${cores} cores would carry at most ${ceilingMB.toFixed(0)} MB/s at ` +
        `that cost if nothing else ran (the rebuild: ${formatRatio(rebuildMB, ceilingMB)} of it)`,
    );
  }
  const disk = rebuilt.disk;
  if (disk !== null && rebuilt.diskSeconds > 0) {
    const fromCache = disk.readBytes < 0.05 * rebuilt.movedBytes;
    parts.push(
      `the disk was busy ${(disk.busyMs / 10 / rebuilt.diskSeconds).toFixed(0)}% of the time, ` +
        `wrote ${(disk.writeBytes / MB).toFixed(0)} MB and read ` +
        `${(disk.readBytes / MB).toFixed(0)} MB` +
        (fromCache ? " (the blocks came from the page cache)" : ""),
    );
    const applied = measured.filter((r) => r.label !== DROPPED_READ_LABEL);
    if (fromCache && applied.length < measured.length && applied.length > 0) {
      const low = applied.reduce((a, r) =>
        median(r.bytesPerSecond) < median(a.bytesPerSecond) ? r : a
      );
      const lowMB = median(low.bytesPerSecond) / MB;
      parts.push(
        `so the dropped-cache read did not apply; of the references it did use, the smallest is ` +
          `${low.label} (${lowMB.toFixed(0)} MB/s; the rebuild: ${formatRatio(rebuildMB, lowMB)})`,
      );
    }
  }
  return parts.length === 0 ? "-" : parts.join("; ");
}

function printLatency(config: Config, latency: readonly LatencyCase[]): void {
  console.log("");
  console.log(
    `Client latency: fio 4k randread QD1 through node 1's NBD server; quiet for ` +
      `${config.runtimeSeconds} s, then the reads completed while a 4th node joined and blocks ` +
      `moved (first node on the new ring to the last pass's end); completion latency; node 1-3 ` +
      `CPU: the first three nodes' CPU over the run or the window, 100% = one core`,
  );
  console.log("");
  const latencyRows = latency.map((c) => {
    const reference = c.quiet ?? c;
    return [
      c.label,
      c.movedBytes === null ? "-" : (c.movedBytes / MB).toFixed(1),
      c.windowSeconds.toFixed(2),
      `${c.window.count}`,
      c.windowSeconds > 0 ? (c.window.count / c.windowSeconds).toFixed(0) : "-",
      formatUs(c.window.p50Ns),
      formatUs(c.window.p99Ns),
      Number.isFinite(c.window.maxNs) ? (c.window.maxNs / 1e6).toFixed(1) : "-",
      c.quiet === null ? "-" : formatRatio(c.window.p50Ns, reference.window.p50Ns),
      c.quiet === null ? "-" : formatRatio(c.window.p99Ns, reference.window.p99Ns),
      `${formatUs(c.fio.p50Ns)} / ${formatUs(c.fio.p99Ns)}`,
      c.cpu,
    ];
  });
  const latencyHeader = [
    "case",
    "moved MB",
    "window s",
    "reads",
    "IOPS",
    "p50 µs",
    "p99 µs",
    "max ms",
    "p50 / quiet",
    "p99 / quiet",
    "fio whole run p50 / p99 µs",
    "node 1-3 CPU",
  ];
  for (const line of labelledTable(latencyHeader, latencyRows)) console.log(line);
  for (const c of latency) if (c.note !== "") console.log(`\nNote (${c.label}): ${c.note}`);
}

async function main(): Promise<number> {
  const config = configOf(Deno.args);
  const missing = ["fio", "etcd"].filter((c) =>
    c === "etcd" ? !Deno.env.get("TORUS_TEST_ETCD") && !hasCommand(c) : !hasCommand(c)
  );
  if (missing.length > 0) {
    console.log(`rebuild bench: skipped, ${missing.join(", ")} not installed`);
    return 0;
  }
  const dir = await Deno.makeTempDir({ prefix: "torus-rebuild-bench-" });
  try {
    const loadBefore = await loadAverage();
    const tcp: number[] = [];
    for (let i = 0; i < config.tcpRounds; i++) tcp.push(await tcpThroughput(1_000));
    log(`raw TCP: ${tcp.map((t) => (t / MB).toFixed(0)).join(", ")} MB/s`);
    const storage = await storageReferences(dir, config);
    const mbps = (values: (number | null)[]) =>
      values.map((v) => v === null ? "-" : (v / MB).toFixed(0)).join(", ");
    log(
      `storage: write ${mbps(storage.rounds.map((r) => r.writeBytesPerSecond))}, read cached ${
        mbps(storage.rounds.map((r) => r.cachedReadBytesPerSecond))
      }, read dropped ${mbps(storage.rounds.map((r) => r.uncachedReadBytesPerSecond))} MB/s`,
    );
    const rebuilt = config.only === "latency" ? null : await rebuild(`${dir}/rebuild`, config);
    const latency: LatencyCase[] = [];
    if (config.only !== "rebuild") {
      for (const [i, rate] of config.rates.entries()) {
        latency.push(...await latencyUnderRebalance(`${dir}/latency${i}`, config, rate));
      }
    }
    printReport(config, tcp, storage, rebuilt, latency, {
      before: loadBefore,
      after: await loadAverage(),
    });
    return 0;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (error) {
    console.error(`bench_rebuild: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
