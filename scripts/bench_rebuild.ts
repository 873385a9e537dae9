/**
 * The rebalance benchmark of the cluster issue, in one run:
 *
 * 1. Raw TCP: loopback throughput in this process (Deno.listen/Deno.connect, 512 KiB writes, the
 *    bytes counted at the reader), the reference the rebuild is held against.
 * 2. Rebuild after a node loss: three `torus serve` nodes at replication 2 with
 *    `--rebalance-rate 0`, a volume written whole with fio; one node SIGKILLed and forced out
 *    (`torus ctl peer remove --force`), then timed until the two left each hold one copy of every
 *    block (their /status: rebalance pass complete under the new ring, store usage). Bytes moved
 *    are the sum of their rebalancers' `sentBytes`. Goal: at least half of raw TCP.
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
  /** Raw TCP runs of about a second each. */
  readonly tcpRounds: number;
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
  return {
    volumeBytes: wholeNumberFlag(values["volume-mib"], quick ? 64 : 256, "volume-mib") * MiB,
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
): Promise<Movement> {
  const deadline = Date.now() + timeoutMs;
  const cpu = () => nodes.map((node) => cpuSecondsOf(node.child.pid));
  let unseen = { ms: Date.now(), cpu: cpu() };
  let seen: { ms: number; cpu: number[] } | null = null;
  const finished: (number | null)[] = nodes.map(() => null);
  for (;;) {
    const error = failed();
    if (error !== null) throw error;
    const polledMs = Date.now();
    const polledCpu = cpu();
    const statuses = await Promise.all(nodes.map(statusOf));
    if (seen === null) {
      if (statuses.some((s) => s.ringVersion > fromVersion)) {
        seen = { ms: (unseen.ms + polledMs) / 2, cpu: unseen.cpu };
      } else {
        unseen = { ms: polledMs, cpu: polledCpu };
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
  /** CPU of the two nodes left while they rebuilt (shares of a core). */
  readonly cpu: string;
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
    const movement = await watchMovement(
      living,
      before,
      fromVersion,
      MOVE_TIMEOUT_MS,
      () => cluster.failure() ?? removeError,
      () => cluster.tails(),
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

function printReport(
  config: Config,
  tcp: readonly number[],
  rebuilt: RebuildResult | null,
  latency: readonly LatencyCase[],
  load: { before: string; after: string },
): void {
  const tcpMB = median(tcp) / MB;
  console.log(
    `torus rebalance benchmark: ${config.volumeBytes / MiB} MiB volume, replication 2, loopback; ` +
      `load average ${load.before} before, ${load.after} after`,
  );
  console.log("");
  console.log(
    `Raw TCP: one loopback connection in one Deno process (Deno.listen/Deno.connect), 512 KiB ` +
      `writes, bytes counted at the reader; ${config.tcpRounds} run(s) of 1 s, median (range)`,
  );
  console.log("");
  const tcpRow = ["raw TCP, loopback", formatSpread(tcp.map((t) => t / MB), 0)];
  for (const line of labelledTable(["reference", "MB/s"], [tcpRow])) console.log(line);
  if (rebuilt !== null) printRebuild(config, tcpMB, rebuilt);
  if (latency.length > 0) printLatency(config, latency);
}

function printRebuild(config: Config, tcpMB: number, rebuilt: RebuildResult): void {
  console.log("");
  console.log(
    "Rebuild: 3 nodes, --rebalance-rate 0, one SIGKILLed and `torus ctl peer remove --force`d; " +
      "until the 2 left each hold one copy of every block (moved = their rebalancers' sentBytes; " +
      "MB/s over the time from the ring change; node CPU: each living node's CPU over that time, " +
      "100% = one core)",
  );
  console.log("");
  const rebuildMB = rebuilt.movedBytes / MB / rebuilt.fromRingSeconds;
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
  ];
  for (const line of labelledTable(rebuildHeader, [rebuildRow])) console.log(line);
  if (!rebuilt.usageOk) console.log(`\nNote (rebuild): usage ${rebuilt.usage}`);
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
    const rebuilt = config.only === "latency" ? null : await rebuild(`${dir}/rebuild`, config);
    const latency: LatencyCase[] = [];
    if (config.only !== "rebuild") {
      for (const [i, rate] of config.rates.entries()) {
        latency.push(...await latencyUnderRebalance(`${dir}/latency${i}`, config, rate));
      }
    }
    printReport(config, tcp, rebuilt, latency, { before: loadBefore, after: await loadAverage() });
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
