/**
 * The cluster benchmark: fio's nbd engine through `torus blk nbdserve` (a client with no store)
 * against three `torus serve` nodes at replication 2 on loopback, and against qemu-nbd serving a
 * file, in the same run, the same workloads as the single-node table (bench_nbd.ts) but the cold
 * one (dropping the page cache of three nodes is not what that row measures). The goal of the
 * cluster issue: every ratio at least 0.5. With every run, where the time went: the CPU and context
 * switches per I/O of the client, of the three nodes together and of qemu-nbd
 * (scripts/proc_cost.ts). Results in docs/benchmarks.md.
 *
 *   deno run -A scripts/bench_cluster.ts [--quick] [--volume-mib N] [--runtime S] [--rounds N]
 *                                        [--filter TEXT]
 * @module
 */

import { parseArgs } from "node:util";
import { freePort } from "../tests/support/etcd.ts";
import { hasCommand } from "../tests/support/packages.ts";
import { testEtcd } from "../tests/support/test_etcd.ts";
import {
  runTorus,
  type ServeProcess,
  startServe,
  startTorusProcess,
  type TorusProcess,
} from "../tests/support/torus_process.ts";
import {
  fioArgs,
  type FioResult,
  formatSpread,
  iosOf,
  labelledTable,
  median,
  parseFio,
  type ProcessCost,
  wholeNumberFlag,
  type Workload,
  workloads,
} from "./bench_nbd_report.ts";
import { measuringCost, sumCosts } from "./proc_cost.ts";

const MiB = 1024 * 1024;

interface Config {
  readonly volumeBytes: number;
  readonly runtimeSeconds: number;
  readonly rounds: number;
  /** Only the workloads whose name contains this. */
  readonly filter: string | null;
}

function configOf(args: string[]): Config {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      "volume-mib": { type: "string" },
      runtime: { type: "string" },
      rounds: { type: "string" },
      filter: { type: "string" },
    },
  });
  const quick = values.quick;
  return {
    volumeBytes: wholeNumberFlag(values["volume-mib"], quick ? 64 : 1024, "volume-mib") * MiB,
    runtimeSeconds: wholeNumberFlag(values.runtime, quick ? 1 : 10, "runtime"),
    rounds: wholeNumberFlag(values.rounds, quick ? 1 : 2, "rounds"),
    filter: values.filter ?? null,
  };
}

async function output(command: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${command} failed: ${text}${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

function log(text: string): void {
  console.error(`bench_cluster: ${text}`);
}

/** Three nodes, a volume, and the client's NBD server in front of them. */
async function startCluster(dir: string, config: Config): Promise<{
  uri: string;
  clientPid: number;
  nodePids: number[];
  stop(): Promise<void>;
}> {
  const etcd = await testEtcd();
  const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-bench-${crypto.randomUUID()}/`];
  const nodes: ServeProcess[] = [];
  let client: TorusProcess | null = null;
  const stop = async () => {
    await client?.stop();
    for (const node of nodes) await node.stop();
    await etcd[Symbol.asyncDispose]();
  };
  try {
    const init = await runTorus(["ctl", "init", ...meta]);
    if (init.code !== 0) throw new Error(`ctl init: ${init.stderr}`);
    const storeBytes = Math.max(512 * MiB, 2 * config.volumeBytes);
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await startServe(`${dir}/node${i}`, {
          size: `${storeBytes}`,
          args: [...meta, "--peer-address", `tdp://127.0.0.1:${freePort()}`, "--auto-join"],
          readyTimeoutMs: 120_000,
        }),
      );
    }
    const created = await runTorus([
      "ctl",
      "volume",
      "create-block",
      "bench",
      `${config.volumeBytes}`,
      ...meta,
    ]);
    if (created.code !== 0) throw new Error(`volume create: ${created.stderr}`);
    const port = freePort();
    client = await startTorusProcess(
      ["blk", "nbdserve", ...meta, "-l", `127.0.0.1:${port}`],
      /Ready\./,
    );
    return {
      uri: `nbd://127.0.0.1:${port}/bench`,
      clientPid: client.child.pid,
      nodePids: nodes.map((node) => node.child.pid),
      stop,
    };
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
}

async function startQemuNbd(file: string, sizeBytes: number): Promise<{
  uri: string;
  pid: number;
  stop(): Promise<void>;
}> {
  await Deno.writeFile(file, new Uint8Array(0));
  await Deno.truncate(file, sizeBytes);
  const port = freePort();
  const child = new Deno.Command("qemu-nbd", {
    args: ["-f", "raw", "--cache=writeback", "--aio=threads", "-t", "-b", "127.0.0.1"]
      .concat(["-p", `${port}`, "-x", "bench", file]),
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 500; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  return {
    uri: `nbd://127.0.0.1:${port}/bench`,
    pid: child.pid,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

async function fio(uri: string, workload: Workload, config: Config): Promise<FioResult> {
  return parseFio(
    await output(
      "fio",
      fioArgs({
        uri,
        workload,
        sizeBytes: config.volumeBytes,
        runtimeSeconds: config.runtimeSeconds,
      }),
    ),
  );
}

/** Writes the whole export once, so reads read data. */
async function fill(uri: string, config: Config): Promise<void> {
  const workload = workloads.find((w) => w.name === "1M seq write QD8")!;
  await output("fio", fioArgs({ uri, workload, sizeBytes: config.volumeBytes }));
}

async function main(): Promise<number> {
  const config = configOf(Deno.args);
  const missing = ["fio", "qemu-nbd", "etcd"].filter((c) => !hasCommand(c));
  if (missing.length > 0) {
    console.log(`cluster bench: skipped, ${missing.join(", ")} not installed`);
    return 0;
  }
  const dir = await Deno.makeTempDir({ prefix: "torus-cluster-bench-" });
  try {
    const cluster = await startCluster(dir, config);
    const qemu = await startQemuNbd(`${dir}/qemu.raw`, config.volumeBytes);
    const results = new Map<string, Results>();
    try {
      log("filling both exports");
      await fill(cluster.uri, config);
      await fill(qemu.uri, config);
      const chosen = workloads.filter((w) =>
        !w.cold && (config.filter === null || w.name.includes(config.filter))
      );
      for (let round = 0; round < config.rounds; round++) {
        for (const workload of chosen) {
          const entry = results.get(workload.name) ?? { workload, cluster: [], qemu: [] };
          results.set(workload.name, entry);
          // Alternating which server goes first spreads the machine's drift over both.
          const order = round % 2 === 0
            ? ["cluster", "qemu"] as const
            : ["qemu", "cluster"] as const;
          for (const which of order) {
            const pids = which === "cluster"
              ? [cluster.clientPid, ...cluster.nodePids]
              : [qemu.pid];
            const { result, costs } = await measuringCost(
              pids,
              log,
              () => fio(which === "cluster" ? cluster.uri : qemu.uri, workload, config),
            );
            entry[which].push({
              fio: result,
              // The client's own, then the nodes' together (qemu-nbd is one process: "client").
              client: costs[0]!,
              nodes: which === "cluster" ? sumCosts(costs.slice(1)) : null,
            });
            log(`round ${round + 1} ${workload.name} ${which}: ${result.iops.toFixed(0)} IOPS`);
          }
        }
      }
    } finally {
      await qemu.stop();
      await cluster.stop();
    }
    printReport(results, config);
    return 0;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** One fio run and what the processes behind the export spent during it. */
interface Run {
  readonly fio: FioResult;
  /** The client process (for qemu-nbd: qemu-nbd itself). */
  readonly client: ProcessCost | null;
  /** The three nodes together (null for qemu-nbd). */
  readonly nodes: ProcessCost | null;
}

/** A workload's runs through the cluster and through qemu-nbd, round by round. */
interface Results {
  readonly workload: Workload;
  readonly cluster: Run[];
  readonly qemu: Run[];
}

/** Per I/O of `run`: what `of` picks from `cost` divided by fio's I/O count; null if unknown. */
function perIo(
  run: Run,
  workload: Workload,
  cost: ProcessCost | null,
  of: (cost: ProcessCost) => number,
): number | null {
  const ios = iosOf(run.fio, workload);
  return cost === null || ios === 0 ? null : of(cost) / ios;
}

/** CPU µs and context switches per I/O: the client, the nodes together, and qemu-nbd. */
function costRows(results: Map<string, Results>): string[][] {
  return [...results.values()].map(({ workload, cluster, qemu }) => {
    const spread = (values: (number | null)[], digits: number) =>
      formatSpread(values.filter((v): v is number => v !== null), digits);
    const cpu = (cost: ProcessCost) => cost.cpuMs * 1000;
    const switches = (cost: ProcessCost) => cost.contextSwitches;
    return [
      workload.name,
      spread(cluster.map((r) => perIo(r, workload, r.client, cpu)), 0),
      spread(cluster.map((r) => perIo(r, workload, r.nodes, cpu)), 0),
      spread(qemu.map((r) => perIo(r, workload, r.client, cpu)), 0),
      spread(cluster.map((r) => perIo(r, workload, r.client, switches)), 1),
      spread(cluster.map((r) => perIo(r, workload, r.nodes, switches)), 1),
      spread(qemu.map((r) => perIo(r, workload, r.client, switches)), 1),
    ];
  });
}

function printReport(results: Map<string, Results>, config: Config): void {
  console.log(
    `fio through torus blk nbdserve, 3 nodes at replication 2 (loopback), against qemu-nbd on a ` +
      `file; ${config.volumeBytes / MiB} MiB, ${config.runtimeSeconds} s per run, ` +
      `${config.rounds} round(s); median IOPS and MiB/s, ratio torus/qemu-nbd (range over rounds)`,
  );
  const rows = [...results].map(([name, runs]) => {
    const cluster = runs.cluster.map((r) => r.fio);
    const qemu = runs.qemu.map((r) => r.fio);
    const ratios = cluster.map((c, i) => c.iops / Math.max(1, qemu[i]!.iops));
    return [
      name,
      `${median(cluster.map((r) => r.iops)).toFixed(0)} (${
        median(cluster.map((r) => r.mibPerSecond)).toFixed(1)
      } MiB/s)`,
      `${median(qemu.map((r) => r.iops)).toFixed(0)} (${
        median(qemu.map((r) => r.mibPerSecond)).toFixed(1)
      } MiB/s)`,
      formatSpread(ratios, 2, "x"),
    ];
  });
  for (const line of labelledTable(["workload", "torus cluster", "qemu-nbd", "ratio"], rows)) {
    console.log(line);
  }
  console.log(
    "\nWhere the time goes: CPU (all threads, µs) and context switches per I/O, from /proc; the " +
      "three nodes together; median (min–max) over rounds",
  );
  const header = ["workload", "client CPU µs/IO", "nodes CPU µs/IO", "qemu-nbd CPU µs/IO"];
  header.push("client switches/IO", "nodes switches/IO", "qemu-nbd switches/IO");
  for (const line of labelledTable(header, costRows(results))) console.log(line);
}

if (import.meta.main) {
  try {
    Deno.exit(await main());
  } catch (error) {
    console.error(`bench_cluster: ${error instanceof Error ? error.message : error}`);
    Deno.exit(1);
  }
}
