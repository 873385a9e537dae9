/**
 * `deno task bench` part 2: a real `torus serve --nbd` against qemu-nbd and nbdkit serving plain
 * files, all three in the same run, driven by fio's nbd engine (a real client, loopback TCP).
 *
 * The servers keep their files on a disk of the bench's own (see {@link BenchDisk}: as root,
 * ext4 on a loop device), so that disk's sector counters, read around each run with a syncfs
 * before and after, are exactly the disk bytes that run cost.
 *
 * 1. Throughput: the same fio workloads (bench_nbd_report.ts) against each server, time-based,
 *    interleaved (per workload and round, the servers in a rotating order), medians and ranges
 *    over rounds, and per-round ratios of torus to each reference. Every export is filled with
 *    1 MiB writes first, so reads read data. With each write workload, the disk bytes written
 *    per byte fio wrote (every write run ends with a FLUSH; torus's in-place writes that follow
 *    are waited for). With every run, where the time went: each server process's CPU and
 *    context switches per I/O (scripts/proc_cost.ts).
 * 2. Write amplification of torus alone, 4 KiB random writes with a FLUSH every 32, on a small
 *    and a large sparse volume (1 GiB and 16 GiB): the first pass over the fresh volume (blocks
 *    created on first touch) and the steady state (every block written once before).
 * 3. Cold reads: torus restarted (its caches empty), a warm-up of 2000 I/Os of the same workload
 *    against every server (a new process runs its code unoptimized at first: a cost paid once
 *    per start, not per cold read; `--no-warm-up` leaves it out), then each server's files
 *    dropped from the page cache (fdatasync, then posix_fadvise DONTNEED through
 *    `dd iflag=nocache count=0`; no global drop_caches), then 4 KiB random reads at QD1: disk
 *    bytes read per read, and CPU and context switches per read. The cold 70/30 workload of
 *    part 1 starts the same way.
 *
 * Servers: torus serve (the default engine, store in a temp data dir); qemu-nbd `-f raw
 * --cache=writeback --aio=threads` (qemu-nbd's defaults, spelled out: page cache, FLUSH =
 * fdatasync, a thread pool for I/O); nbdkit's file plugin with its defaults (page cache, FLUSH =
 * fdatasync, 16 threads).
 *
 * Usage: deno run -A scripts/bench_nbd.ts [--quick] [--runtime S] [--rounds N] [--filter TEXT]
 *          [--export-mib N] [--dir DIR] [--json FILE] [--no-amplification] [--no-cold-reads]
 *          [--no-warm-up]
 * `--quick` (CI smoke test): small exports, 1 s per run, one round.
 * @module
 */

import { parseArgs } from "node:util";
import { freePort } from "../tests/support/etcd.ts";
import { hasCommand } from "../tests/support/packages.ts";
import { ctlOk, type ServeProcess, startServe } from "../tests/support/torus_process.ts";
import {
  amplificationTable,
  costTable,
  type DiskBytes,
  fioArgs,
  type FioResult,
  type FioRun,
  formatSpread,
  labelledTable,
  parseBlockStat,
  parseFio,
  parseWriteChars,
  type Sample,
  throughputTable,
  wholeNumberFlag,
  type Workload,
  workloads,
  writeAmplification,
  writes,
} from "./bench_nbd_report.ts";
import { measuringCost } from "./proc_cost.ts";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** torus serve's block size (BLOCK_SIZE_DEFAULT_BYTES). */
const BLOCK_BYTES = 512 * 1024;
const EXPORT = "vol";
const TORUS = "torus";
const QEMU = "qemu-nbd";
const NBDKIT = "nbdkit";

/** Sizes and durations of one bench run. */
export interface BenchConfig {
  readonly exportBytes: number;
  readonly runtimeSeconds: number;
  readonly rounds: number;
  readonly filter: string | null;
  /** The two volume sizes of the write amplification part. */
  readonly amplificationVolumes: readonly number[];
  readonly coldReads: number;
  /** I/Os of a cold workload run after a restart, before the page cache is dropped (0: none). */
  readonly coldWarmUpIos: number;
  readonly amplification: boolean;
  readonly coldReadPart: boolean;
  readonly dir: string | null;
  readonly jsonPath: string | null;
}

/** A server under test, reached at `uri()`, its process `pid()` for the disk counters. */
interface BenchServer {
  readonly name: string;
  uri(): string;
  pid(): number;
  /** Files whose pages a cold run drops from the page cache. */
  files(): Promise<string[]>;
  /** Empties the process's own caches (torus: a clean restart); no-op for the references. */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

async function waitForPort(port: number, child: Deno.ChildProcess, name: string): Promise<void> {
  let exited = false;
  child.status.then(() => exited = true);
  for (let attempt = 0; attempt < 1000; attempt++) {
    if (exited) throw new Error(`${name} exited before it listened on ${port}`);
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await delay(10);
    }
  }
  throw new Error(`${name} does not listen on ${port}`);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function writeCallBytes(pid: number): Promise<number> {
  return parseWriteChars(await Deno.readTextFile(`/proc/${pid}/io`));
}

async function output(command: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${command} ${args.join(" ")} failed: ${text}${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return text;
}

/** A reference server (qemu-nbd or nbdkit) serving `file` as a child of this process. */
async function startReference(
  name: string,
  command: (port: number) => [string, string[]],
  file: string,
): Promise<BenchServer> {
  const port = freePort();
  const [program, args] = command(port);
  // stderr is dropped: qemu-nbd complains about the probe connection of waitForPort.
  const child = new Deno.Command(program, { args, stdout: "null", stderr: "null" }).spawn();
  await waitForPort(port, child, name);
  return {
    name,
    uri: () => `nbd://127.0.0.1:${port}/${EXPORT}`,
    pid: () => child.pid,
    files: () => Promise.resolve([file]),
    restart: () => Promise.resolve(),
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

async function sparseFile(path: string, sizeBytes: number): Promise<string> {
  await Deno.writeFile(path, new Uint8Array(0));
  await Deno.truncate(path, sizeBytes);
  return path;
}

function startQemuNbd(file: string): Promise<BenchServer> {
  return startReference(QEMU, (port) => [
    "qemu-nbd",
    [
      ...["-f", "raw", "--cache=writeback", "--aio=threads", "-t"],
      ...["-b", "127.0.0.1", "-p", `${port}`, "-x", EXPORT, file],
    ],
  ], file);
}

function startNbdkit(file: string): Promise<BenchServer> {
  return startReference(NBDKIT, (port) => [
    "nbdkit",
    ["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", `${port}`, "file", file],
  ], file);
}

async function filesUnder(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) files.push(...await filesUnder(path));
    else if (entry.isFile) files.push(path);
  }
  return files;
}

/** `torus serve --nbd` on `dataDir` with one volume per entry of `volumes` (name to size). */
async function startTorus(
  dataDir: string,
  storeBytes: number,
  volumes: Record<string, number>,
): Promise<BenchServer & { uriOf(name: string): string }> {
  const start = () => startServe(dataDir, { size: `${storeBytes}`, readyTimeoutMs: 120_000 });
  let serve: ServeProcess = await start();
  for (const [name, sizeBytes] of Object.entries(volumes)) {
    await ctlOk(dataDir, ["volume", "create-block", name, `${sizeBytes}`]);
  }
  const uriOf = (name: string) => `nbd://127.0.0.1:${serve.nbd.port}/${name}`;
  return {
    name: TORUS,
    uri: () => uriOf(EXPORT),
    uriOf,
    pid: () => serve.child.pid,
    files: () => filesUnder(dataDir),
    async restart() {
      const code = await serve.stop();
      if (code !== 0) throw new Error(`torus serve exited ${code}: ${serve.output()}`);
      serve = await start();
    },
    async stop() {
      const code = await serve.stop();
      if (code !== 0) throw new Error(`torus serve exited ${code}: ${serve.output()}`);
    },
  };
}

/**
 * Where the servers keep their files. As root: ext4 on a loop device of its own, over a sparse
 * file in the temp dir with direct I/O (no second page cache), so the device's /sys/block stat
 * counts exactly what the servers' files cost on a disk, the file system's journal included.
 * Otherwise the temp dir itself, and no disk counters. (/proc/<pid>/io `write_bytes` cannot
 * replace them: on this kernel it counts far more than the disk writes for overwrites followed
 * by fdatasync; docs/benchmarks.md has the measurement.)
 */
interface BenchDisk {
  readonly dir: string;
  readonly description: string;
  /** syncfs of the disk's file system: every dirty page of every server written. */
  sync(): Promise<void>;
  bytes(): Promise<DiskBytes | null>;
  close(): Promise<void>;
}

async function openDisk(dir: string, sizeBytes: number): Promise<BenchDisk> {
  const sync = async (path: string) => void await output("sync", ["-f", path]);
  const plain = (why: string): BenchDisk => ({
    dir,
    description: `${dir} (${why}: no disk counters)`,
    sync: () => sync(dir),
    bytes: () => Promise.resolve(null),
    close: () => Promise.resolve(),
  });
  const tools = ["losetup", "mkfs.ext4", "mount", "umount"];
  if (Deno.uid() !== 0 || !tools.every((tool) => hasCommand(tool))) {
    return plain(`not root or no ${tools.join("/")}`);
  }
  try {
    return await openLoopDisk(dir, sizeBytes, sync);
  } catch (error) {
    // A container without loop devices: the throughput figures still mean something.
    return plain(`no loop device (${error instanceof Error ? error.message : error})`);
  }
}

async function openLoopDisk(
  dir: string,
  sizeBytes: number,
  sync: (path: string) => Promise<void>,
): Promise<BenchDisk> {
  const image = await sparseFile(`${dir}/disk.img`, sizeBytes);
  // Few inodes and no lazy inode table initialisation: nothing writes in the background.
  await output("mkfs.ext4", ["-q", "-F", "-N", "4096", "-E", "lazy_itable_init=0", image]);
  const device = (await output("losetup", ["--direct-io=on", "-f", "--show", image])).trim();
  const mountpoint = `${dir}/mnt`;
  await Deno.mkdir(mountpoint);
  try {
    await output("mount", ["-o", "noinit_itable", device, mountpoint]);
  } catch (error) {
    await output("losetup", ["-d", device]);
    throw error;
  }
  const stat = `/sys/block/${device.replace("/dev/", "")}/stat`;
  return {
    dir: mountpoint,
    description: `ext4 on ${device} (a loop device over a sparse file, direct I/O)`,
    sync: () => sync(mountpoint),
    bytes: async () => parseBlockStat(await Deno.readTextFile(stat)),
    async close() {
      await output("umount", [mountpoint]);
      await output("losetup", ["-d", device]);
    },
  };
}

/** Drops `files` from the page cache: synced first (dirty pages cannot be dropped). */
async function dropPageCache(files: readonly string[]): Promise<void> {
  for (const path of files) {
    const file = await Deno.open(path, { read: true, write: true });
    try {
      await file.syncData();
    } finally {
      file.close();
    }
    await output("dd", [`if=${path}`, "iflag=nocache", "count=0", "status=none"]);
  }
}

async function runFio(run: FioRun): Promise<FioResult> {
  return parseFio(await output("fio", fioArgs(run)));
}

/** Bytes per poll below which a server counts as idle (torus's metadata store writes a little). */
const IDLE_WRITE_BYTES = 64 * 1024;

/**
 * Waits until the server stopped writing: torus applies journal records in place after the FLUSH
 * that ends each write run, and those bytes belong to the run that caused them.
 */
async function settle(server: BenchServer): Promise<void> {
  let last = await writeCallBytes(server.pid());
  for (let quiet = 0, i = 0; quiet < 2 && i < 100; i++) {
    await delay(250);
    const now = await writeCallBytes(server.pid());
    quiet = now - last < IDLE_WRITE_BYTES ? quiet + 1 : 0;
    last = now;
  }
}

/**
 * Runs the workload of `run` for `ios` I/Os against a server that was just started: a new
 * process runs its code unoptimized at first (V8 compiles the hot paths as they run), which is
 * what a long-running server pays once, not per cold read. The page cache is dropped after it.
 */
async function warmUp(run: FioRun, ios: number): Promise<void> {
  await runFio({ uri: run.uri, workload: run.workload, sizeBytes: run.sizeBytes, numberIos: ios });
}

/** One fio run with the disk's counters around it. */
async function measure(
  server: BenchServer,
  disk: BenchDisk,
  run: FioRun,
  label: { workload: string; round: number },
  warmUpIos = 0,
): Promise<Sample> {
  if (run.workload.cold) {
    await server.restart();
    run = { ...run, uri: server.uri() };
    if (warmUpIos > 0) await warmUp(run, warmUpIos);
    await dropPageCache(await server.files());
  }
  // Earlier runs' dirty pages go to the disk now, not during this run.
  await disk.sync();
  const before = await disk.bytes();
  const callsBefore = await writeCallBytes(server.pid());
  const { result: fio, costs } = await measuringCost([server.pid()], log, async () => {
    const fio = await runFio(run);
    // The writes the run left to apply in place are part of its cost, as they are of its bytes.
    if (writes(run.workload)) await settle(server);
    return fio;
  });
  const cost = costs[0]!;
  const callBytes = await writeCallBytes(server.pid()) - callsBefore;
  // Everything the run dirtied reaches the disk before the counters are read.
  await disk.sync();
  const after = await disk.bytes();
  return {
    ...label,
    server: server.name,
    fio,
    diskWriteBytes: after === null || before === null ? null : after.writeBytes - before.writeBytes,
    diskReadBytes: after === null || before === null ? null : after.readBytes - before.readBytes,
    writeCallBytes: callBytes,
    cost,
  };
}

const startedMs = Date.now();

function log(text: string): void {
  const seconds = ((Date.now() - startedMs) / 1000).toFixed(0).padStart(4);
  console.error(`bench_nbd ${seconds} s: ${text}`);
}

function describeSample(sample: Sample): string {
  const wa = writeAmplification(sample);
  return `${sample.workload} round ${sample.round + 1} ${sample.server}: ` +
    `${sample.fio.iops.toFixed(0)} IOPS, ${sample.fio.mibPerSecond.toFixed(0)} MiB/s` +
    (wa === null ? "" : `, ${wa.toFixed(2)} disk bytes per byte written`);
}

/** Part 1: every workload against every server, interleaved. */
async function throughput(
  servers: BenchServer[],
  disk: BenchDisk,
  config: BenchConfig,
): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (const server of servers) {
    log(`filling ${server.name}'s export (${config.exportBytes / MiB} MiB)`);
    const fill = workloads.find((w) => w.rw === "write")!;
    await runFio({ uri: server.uri(), workload: fill, sizeBytes: config.exportBytes });
  }
  const chosen = workloads.filter((w) => config.filter === null || w.name.includes(config.filter));
  for (const workload of chosen) {
    for (let round = 0; round < config.rounds; round++) {
      // A rotating order, so no server always runs right after the same other one.
      const order = servers.map((_, i) => servers[(i + round) % servers.length]!);
      for (const server of order) {
        const run = {
          uri: server.uri(),
          workload,
          sizeBytes: config.exportBytes,
          runtimeSeconds: config.runtimeSeconds,
        };
        const label = { workload: workload.name, round };
        const sample = await measure(server, disk, run, label, config.coldWarmUpIos);
        log(describeSample(sample));
        samples.push(sample);
      }
    }
  }
  return samples;
}

/** Part 3: bytes read from the disk per cold 4 KiB read, per server. */
async function coldReads(
  servers: BenchServer[],
  disk: BenchDisk,
  config: BenchConfig,
): Promise<Sample[]> {
  const workload: Workload = { ...workloads[0]!, name: "cold 4k randread QD1", cold: true };
  const samples: Sample[] = [];
  for (let round = 0; round < config.rounds; round++) {
    for (const server of servers) {
      const run = {
        uri: server.uri(),
        workload,
        sizeBytes: config.exportBytes,
        numberIos: config.coldReads,
      };
      const label = { workload: workload.name, round };
      const sample = await measure(server, disk, run, label, config.coldWarmUpIos);
      log(`${describeSample(sample)}, ${sample.diskReadBytes} bytes read from the disk`);
      samples.push(sample);
    }
  }
  return samples;
}

const flushEvery32 = workloads.find((w) => w.fsyncEvery === 32)!;

/** Part 2: write amplification of torus on sparse volumes, fresh and in the steady state. */
async function amplification(disk: BenchDisk, config: BenchConfig): Promise<Sample[]> {
  const names = config.amplificationVolumes.map((bytes) => sizeName(bytes));
  const volumes = Object.fromEntries(names.map((n, i) => [n, config.amplificationVolumes[i]!]));
  const torus = await startTorus(
    `${disk.dir}/amplification`,
    amplificationStoreBytes(config),
    volumes,
  );
  const samples: Sample[] = [];
  try {
    const runOn = async (name: string, phase: string, round: number, extra?: Partial<FioRun>) => {
      const run: FioRun = {
        uri: torus.uriOf(name),
        workload: flushEvery32,
        sizeBytes: volumes[name]!,
        ...extra,
      };
      const sample = await measure(torus, disk, run, { workload: `${name} ${phase}`, round });
      log(describeSample(sample));
      samples.push(sample);
    };
    for (const name of names) {
      await runOn(name, "fresh", 0, { runtimeSeconds: config.runtimeSeconds });
    }
    // One 4 KiB write per 512 KiB block: every block of the volume exists in the head generation.
    for (const name of names) {
      const numberIos = volumes[name]! / BLOCK_BYTES;
      await runOn(name, "materialize", 0, {
        numberIos,
        extra: [`--rw=write:${BLOCK_BYTES - 4096}`],
      });
    }
    for (let round = 0; round < config.rounds; round++) {
      for (const name of names) {
        await runOn(name, "steady", round, { runtimeSeconds: config.runtimeSeconds });
      }
    }
  } finally {
    await torus.stop();
  }
  return samples;
}

function sizeName(bytes: number): string {
  return bytes >= GiB ? `${bytes / GiB}GiB` : `${bytes / MiB}MiB`;
}

function amplificationRows(samples: readonly Sample[]): string[][] {
  const groups = Map.groupBy(samples, (s) => s.workload);
  return [...groups].map(([label, runs]) => [
    label,
    formatSpread(runs.map((s) => s.fio.iops)),
    formatSpread(runs.map((s) => s.fio.writeBytes / MiB)),
    formatSpread(runs.map((s) => (s.diskWriteBytes ?? NaN) / MiB)),
    formatSpread(runs.map((s) => writeAmplification(s) ?? NaN), 2),
  ]);
}

function coldReadRows(samples: readonly Sample[], servers: readonly string[]): string[][] {
  return servers.map((server) => {
    const runs = samples.filter((s) => s.server === server);
    const reads = (s: Sample) => s.fio.readBytes / 4096;
    const perRead = runs.map((s) => (s.diskReadBytes ?? NaN) / reads(s));
    const withCost = runs.filter((s) => s.cost !== null);
    return [
      server,
      formatSpread(runs.map((s) => s.fio.iops)),
      formatSpread(perRead),
      formatSpread(withCost.map((s) => s.cost!.cpuMs * 1000 / reads(s))),
      formatSpread(withCost.map((s) => s.cost!.contextSwitches / reads(s)), 1),
    ];
  });
}

async function versions(): Promise<Record<string, string>> {
  const first = async (command: string, args: string[]) =>
    (await output(command, args).catch((e) => String(e))).split("\n")[0]!.trim();
  return {
    fio: await first("fio", ["--version"]),
    qemuNbd: await first("qemu-nbd", ["--version"]),
    nbdkit: await first("nbdkit", ["--version"]),
    deno: Deno.version.deno,
    kernel: Deno.osRelease(),
    cpus: `${navigator.hardwareConcurrency}`,
  };
}

function mainStoreBytes(config: BenchConfig): number {
  return Math.ceil(config.exportBytes * 1.25 + 512 * MiB);
}

function amplificationStoreBytes(config: BenchConfig): number {
  return Math.ceil(config.amplificationVolumes.reduce((a, b) => a + b, 0) * 1.25 + 512 * MiB);
}

/** Room for either part (the first part's files are removed before the second starts). */
function diskBytes(config: BenchConfig): number {
  const main = mainStoreBytes(config) + 2 * config.exportBytes;
  return Math.max(main, amplificationStoreBytes(config)) + 2 * GiB;
}

async function startServers(disk: BenchDisk, config: BenchConfig): Promise<BenchServer[]> {
  const servers: BenchServer[] = [];
  try {
    const volumes = { [EXPORT]: config.exportBytes };
    servers.push(await startTorus(`${disk.dir}/torus`, mainStoreBytes(config), volumes));
    if (hasCommand("qemu-nbd")) {
      const file = await sparseFile(`${disk.dir}/qemu.raw`, config.exportBytes);
      servers.push(await startQemuNbd(file));
    }
    if (hasCommand("nbdkit")) {
      const file = await sparseFile(`${disk.dir}/nbdkit.raw`, config.exportBytes);
      servers.push(await startNbdkit(file));
    }
  } catch (error) {
    for (const server of servers) await server.stop().catch(() => {});
    throw error;
  }
  return servers;
}

/** Parts 1 and 3 on the three servers; their files are removed afterwards. */
async function compareServers(
  disk: BenchDisk,
  config: BenchConfig,
): Promise<{ samples: Sample[]; cold: Sample[] }> {
  const servers = await startServers(disk, config);
  try {
    const samples = await throughput(servers, disk, config);
    const cold = config.coldReadPart ? await coldReads(servers, disk, config) : [];
    return { samples, cold };
  } finally {
    for (const server of servers) await server.stop().catch((e) => log(String(e)));
    for (const name of ["torus", "qemu.raw", "nbdkit.raw"]) {
      await Deno.remove(`${disk.dir}/${name}`, { recursive: true }).catch(() => {});
    }
  }
}

/** Runs the bench; returns the lines of the report. */
export async function runBench(config: BenchConfig): Promise<string[]> {
  const missing = ["fio", "qemu-nbd", "nbdkit", "dd"].filter((c) => !hasCommand(c));
  if (missing.includes("fio")) return ["nbd bench: skipped, fio is not installed"];
  if (missing.length > 0) log(`without ${missing.join(", ")} (not installed)`);
  const dir = await Deno.makeTempDir({
    ...(config.dir === null ? {} : { dir: config.dir }),
    prefix: "torus-nbd-bench-",
  });
  const loadBefore = Deno.loadavg();
  try {
    const disk = await openDisk(dir, diskBytes(config));
    try {
      log(`servers' files on ${disk.description}`);
      const { samples, cold } = await compareServers(disk, config);
      const amplified = config.amplification ? await amplification(disk, config) : [];
      const report = {
        date: new Date().toISOString(),
        disk: disk.description,
        versions: await versions(),
        loadAverage: { before: loadBefore, after: Deno.loadavg() },
        config,
        samples,
        cold,
        amplified,
      };
      if (config.jsonPath !== null) {
        await Deno.writeTextFile(config.jsonPath, JSON.stringify(report, null, 2) + "\n");
      }
      const names = [TORUS, QEMU, NBDKIT].filter((n) => samples.some((s) => s.server === n));
      return formatReport(report, names);
    } finally {
      await disk.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function formatReport(
  report: {
    date: string;
    disk: string;
    versions: Record<string, string>;
    loadAverage: { before: number[]; after: number[] };
    config: BenchConfig;
    samples: Sample[];
    cold: Sample[];
    amplified: Sample[];
  },
  names: string[],
): string[] {
  const { config } = report;
  const load = (l: number[]) => l.map((v) => v.toFixed(1)).join(" ");
  const lines = [
    `NBD: torus serve against qemu-nbd and nbdkit, ${report.date}`,
    `  ${Object.entries(report.versions).map(([k, v]) => `${k}: ${v}`).join("; ")}`,
    `  export ${sizeName(config.exportBytes)}, ${config.runtimeSeconds} s per run, ` +
    `${config.rounds} round(s); load average ${load(report.loadAverage.before)} before, ` +
    `${load(report.loadAverage.after)} after`,
    `  servers' files on ${report.disk}`,
    "",
    "Throughput: median (min–max) over rounds; ratios per round",
    ...throughputTable(report.samples, names, TORUS),
    "",
    "Disk bytes written per byte fio wrote (the bench disk's counters, dirty pages synced)",
    ...amplificationTable(report.samples, names),
    "",
    "Where the time goes: each server process's CPU (all threads, µs) and context switches per " +
    "I/O, from /proc; median (min–max) over rounds",
    ...costTable(report.samples, names),
  ];
  if (report.cold.length > 0) {
    lines.push(
      "",
      `Cold 4 KiB random reads at QD1 (${config.coldReads} per run, page cache of the ` +
        "server's files dropped, torus restarted): disk bytes, CPU and context switches per read",
      ...labelledTable(
        ["server", "IOPS", "disk bytes per read", "CPU µs/read", "switches/read"],
        coldReadRows(report.cold, names),
      ),
    );
  }
  if (report.amplified.length > 0) {
    lines.push(
      "",
      "Write amplification of torus: 4 KiB random writes, QD32, a FLUSH every 32 writes",
      ...labelledTable(
        ["volume and phase", "IOPS", "client MiB", "disk MiB", "disk bytes per client byte"],
        amplificationRows(report.amplified),
      ),
    );
  }
  return lines;
}

/** The configuration from the command line. */
export function configOf(args: string[]): BenchConfig {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      "export-mib": { type: "string" },
      runtime: { type: "string" },
      rounds: { type: "string" },
      filter: { type: "string" },
      dir: { type: "string" },
      json: { type: "string" },
      "no-amplification": { type: "boolean", default: false },
      "no-cold-reads": { type: "boolean", default: false },
      "no-warm-up": { type: "boolean", default: false },
    },
  });
  const quick = values.quick;
  return {
    exportBytes: wholeNumberFlag(values["export-mib"], quick ? 64 : 4096, "export-mib") * MiB,
    runtimeSeconds: wholeNumberFlag(values.runtime, quick ? 1 : 10, "runtime"),
    rounds: wholeNumberFlag(values.rounds, quick ? 1 : 2, "rounds"),
    filter: values.filter ?? null,
    amplificationVolumes: quick ? [64 * MiB, 256 * MiB] : [GiB, 16 * GiB],
    coldReads: quick ? 64 : 2000,
    coldWarmUpIos: values["no-warm-up"] ? 0 : quick ? 64 : 2000,
    amplification: !values["no-amplification"],
    coldReadPart: !values["no-cold-reads"],
    dir: values.dir ?? null,
    jsonPath: values.json ?? null,
  };
}

const USAGE =
  `Usage: deno run -A scripts/bench_nbd.ts [--quick] [--export-mib N] [--runtime SECONDS]
  [--rounds N] [--filter TEXT] [--dir DIR] [--json FILE] [--no-amplification] [--no-cold-reads]
  [--no-warm-up]

fio's nbd engine against torus serve, qemu-nbd and nbdkit in the same run (docs/benchmarks.md).`;

/** The configuration, or a one-line error and exit 2 (the usage with --help, exit 0). */
function configOrExit(args: string[]): BenchConfig {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(USAGE);
    Deno.exit(0);
  }
  try {
    return configOf(args);
  } catch (error) {
    console.error(`bench_nbd: ${error instanceof Error ? error.message : error}`);
    console.error("Run with --help for usage.");
    Deno.exit(2);
  }
}

if (import.meta.main) {
  const config = configOrExit(Deno.args);
  const lines = await runBench(config);
  console.log(lines.join("\n"));
  const failed = lines.some((line) => /\bNaN\b/.test(line));
  Deno.exit(failed ? 1 : 0);
}
