/**
 * The pure half of scripts/bench_nbd.ts: the fio workloads and their command lines, parsing of
 * fio's JSON report, of /sys/block/<dev>/stat and of /proc/<pid>/io, and the tables printed at
 * the end (medians and ranges over rounds, ratios to the references per round). No I/O here, so
 * it is unit-tested.
 * @module
 */

const KiB = 1024;
const MiB = 1024 * KiB;

/** One fio workload, run the same way against every server. */
export interface Workload {
  /** Short name, as printed and as `--filter` matches it. */
  readonly name: string;
  /** fio's `--rw`. */
  readonly rw: string;
  readonly blockBytes: number;
  readonly queueDepth: number;
  /** fio's `--fsync` (a FLUSH every N writes); 0 for none. */
  readonly fsyncEvery: number;
  /** Percentage of reads for `randrw`. */
  readonly readPercent?: number;
  /**
   * Run from cold caches: the server's in-process caches emptied (torus restarted) and its files'
   * pages dropped from the page cache before each run.
   */
  readonly cold: boolean;
}

/** The workloads of the issue, in the order they run. */
export const workloads: readonly Workload[] = [
  { name: "4k randread QD1", rw: "randread", blockBytes: 4 * KiB, queueDepth: 1 },
  { name: "4k randread QD32", rw: "randread", blockBytes: 4 * KiB, queueDepth: 32 },
  { name: "4k randwrite QD1", rw: "randwrite", blockBytes: 4 * KiB, queueDepth: 1 },
  { name: "4k randwrite QD32", rw: "randwrite", blockBytes: 4 * KiB, queueDepth: 32 },
  {
    name: "4k randwrite QD32 fsync=32",
    rw: "randwrite",
    blockBytes: 4 * KiB,
    queueDepth: 32,
    fsyncEvery: 32,
  },
  {
    name: "4k randrw 70/30 QD32 cold",
    rw: "randrw",
    blockBytes: 4 * KiB,
    queueDepth: 32,
    readPercent: 70,
    cold: true,
  },
  { name: "1M seq write QD8", rw: "write", blockBytes: MiB, queueDepth: 8 },
  { name: "1M seq read QD8", rw: "read", blockBytes: MiB, queueDepth: 8 },
].map((w) => ({ fsyncEvery: 0, cold: false, ...w }));

/** Whether `workload` writes. */
export function writes(workload: Workload): boolean {
  return workload.rw.includes("write") || workload.rw === "randrw" || workload.rw === "rw";
}

/** How one fio process runs. */
export interface FioRun {
  readonly uri: string;
  readonly workload: Workload;
  /** The region fio works on (`--size`). */
  readonly sizeBytes: number;
  /** Time-based run of this many seconds; or... */
  readonly runtimeSeconds?: number;
  /** ...a fixed number of I/Os (fio's `--number_ios`), or a fixed amount of bytes. */
  readonly numberIos?: number;
  readonly ioBytes?: number;
  /** Extra fio flags (e.g. `--rw=write:508k`). */
  readonly extra?: readonly string[];
}

/** fio's command line for `run` (nbd engine, JSON output). */
export function fioArgs(run: FioRun): string[] {
  const { workload } = run;
  const args = [
    "--name=bench",
    "--ioengine=nbd",
    `--uri=${run.uri}`,
    `--rw=${workload.rw}`,
    `--bs=${workload.blockBytes}`,
    `--iodepth=${workload.queueDepth}`,
    `--size=${run.sizeBytes}`,
    "--randrepeat=0",
    "--norandommap",
    "--output-format=json",
  ];
  if (workload.fsyncEvery > 0) args.push(`--fsync=${workload.fsyncEvery}`);
  // A FLUSH at the end: what the run wrote is durable on every server when fio exits.
  if (writes(workload)) args.push("--end_fsync=1");
  if (workload.readPercent !== undefined) args.push(`--rwmixread=${workload.readPercent}`);
  if (run.runtimeSeconds !== undefined) {
    args.push("--time_based", `--runtime=${run.runtimeSeconds}`);
  }
  if (run.numberIos !== undefined) args.push(`--number_ios=${run.numberIos}`);
  if (run.ioBytes !== undefined) args.push(`--io_size=${run.ioBytes}`);
  args.push(...(run.extra ?? []));
  return args;
}

/** What one fio run measured. */
export interface FioResult {
  /** Reads and writes together. */
  readonly iops: number;
  readonly mibPerSecond: number;
  readonly readBytes: number;
  readonly writeBytes: number;
  /** Mean completion latency in µs (reads and writes weighted by count). */
  readonly meanLatencyUs: number;
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  total_ios: number;
  clat_ns: { mean: number };
}

/** Parses fio's `--output-format=json` report (anything before the JSON is skipped). */
export function parseFio(text: string): FioResult {
  const start = text.indexOf("{");
  if (start < 0) throw new Error(`no JSON in fio's output: ${text.slice(0, 200)}`);
  const report = JSON.parse(text.slice(start)) as {
    jobs: { error: number; read: FioSide; write: FioSide }[];
  };
  const job = report.jobs[0];
  if (job === undefined) throw new Error("fio reported no job");
  if (job.error !== 0) throw new Error(`fio's job failed with error ${job.error}`);
  const ios = job.read.total_ios + job.write.total_ios;
  const latencyNs = ios === 0
    ? 0
    : (job.read.clat_ns.mean * job.read.total_ios + job.write.clat_ns.mean * job.write.total_ios) /
      ios;
  return {
    iops: job.read.iops + job.write.iops,
    mibPerSecond: (job.read.bw_bytes + job.write.bw_bytes) / MiB,
    readBytes: job.read.io_bytes,
    writeBytes: job.write.io_bytes,
    meanLatencyUs: latencyNs / 1000,
  };
}

/** Bytes a block device read and wrote, from /sys/block/<dev>/stat (sectors of 512 bytes). */
export interface DiskBytes {
  readonly readBytes: number;
  readonly writeBytes: number;
}

/** Parses /sys/block/<dev>/stat: field 3 is sectors read, field 7 sectors written. */
export function parseBlockStat(text: string): DiskBytes {
  const fields = text.trim().split(/\s+/).map(Number);
  if (fields.length < 7 || fields.some((f) => !Number.isFinite(f))) {
    throw new Error(`unexpected block device stat: ${text.slice(0, 100)}`);
  }
  return { readBytes: fields[2]! * 512, writeBytes: fields[6]! * 512 };
}

/** The `wchar` field of /proc/<pid>/io: bytes passed to write system calls. */
export function parseWriteChars(text: string): number {
  const match = /^wchar: (\d+)$/m.exec(text);
  if (!match) throw new Error("no wchar in /proc/<pid>/io");
  return Number(match[1]);
}

/**
 * User plus system CPU time, in clock ticks, of a whole process (every thread, exited ones
 * included) from /proc/<pid>/stat: fields 14 and 15, counted after the `)` that ends the command
 * name (which may itself hold spaces and parentheses).
 */
export function parseCpuTicks(text: string): number {
  const end = text.lastIndexOf(")");
  const fields = end < 0 ? [] : text.slice(end + 2).trim().split(/\s+/);
  // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
  const ticks = [fields[11], fields[12]].map(wholeNumberOrNaN);
  if (ticks.some((t) => !Number.isSafeInteger(t))) {
    throw new Error(`unexpected /proc/<pid>/stat: ${text.slice(0, 100)}`);
  }
  return ticks[0]! + ticks[1]!;
}

function wholeNumberOrNaN(text: string | undefined): number {
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : NaN;
}

/** Voluntary plus involuntary context switches of one thread, from /proc/<pid>/task/<tid>/status. */
export function parseContextSwitches(text: string): number {
  const voluntary = /^voluntary_ctxt_switches:\s+(\d+)$/m.exec(text);
  const involuntary = /^nonvoluntary_ctxt_switches:\s+(\d+)$/m.exec(text);
  if (!voluntary || !involuntary) throw new Error("no context switches in /proc/<pid>/status");
  return Number(voluntary[1]) + Number(involuntary[1]);
}

/**
 * Context switches between two snapshots of a process's threads (thread id → switches so far):
 * a thread born meanwhile counts from zero; one that ended meanwhile is lost (a lower bound).
 */
export function switchesBetween(
  before: ReadonlyMap<string, number>,
  after: ReadonlyMap<string, number>,
): number {
  let switches = 0;
  for (const [thread, count] of after) switches += count - (before.get(thread) ?? 0);
  return switches;
}

/** What a server process spent during a run (from /proc). */
export interface ProcessCost {
  readonly cpuMs: number;
  readonly contextSwitches: number;
}

/** One measured run of one workload against one server. */
export interface Sample {
  readonly workload: string;
  readonly server: string;
  readonly round: number;
  readonly fio: FioResult;
  /**
   * Bytes the bench's disk wrote and read for the run (its dirty pages synced after it), or
   * null without a disk of its own (see scripts/bench_nbd.ts).
   */
  readonly diskWriteBytes: number | null;
  readonly diskReadBytes: number | null;
  /** Bytes the server passed to write system calls during the run. */
  readonly writeCallBytes: number;
  /** The server process's CPU and context switches during the run; null where /proc lacks them. */
  readonly cost: ProcessCost | null;
}

/** I/Os fio made in a run (reads and writes of the workload's block size). */
export function iosOf(fio: FioResult, workload: Workload): number {
  return (fio.readBytes + fio.writeBytes) / workload.blockBytes;
}

/**
 * Where each server's time went, per I/O: µs of CPU (all its threads) and context switches,
 * median (and range) over rounds, per workload. Read it with the throughput table: a server that
 * spends its CPU is bound by it, one that switches often is bound by wake-ups.
 */
export function costTable(samples: readonly Sample[], servers: readonly string[]): string[] {
  const rows: string[][] = [];
  for (const workload of workloads) {
    const ofWorkload = samples.filter((s) => s.workload === workload.name && s.cost !== null);
    if (ofWorkload.length === 0) continue;
    const per = (server: string, of: (cost: ProcessCost) => number) =>
      ofWorkload.filter((s) => s.server === server && iosOf(s.fio, workload) > 0)
        .map((s) => of(s.cost!) / iosOf(s.fio, workload));
    rows.push([
      workload.name,
      ...servers.map((server) => formatSpread(per(server, (c) => c.cpuMs * 1000))),
      ...servers.map((server) => formatSpread(per(server, (c) => c.contextSwitches), 1)),
    ]);
  }
  return table([
    "workload",
    ...servers.map((s) => `${s} CPU µs/IO`),
    ...servers.map((s) => `${s} switches/IO`),
  ], rows);
}

/** Median (the lower middle of an even count) of `values`; NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

/** `median (min–max)` of `values` with `digits` decimals (unit after the median); `-` if empty. */
export function formatSpread(values: readonly number[], digits = 0, unit = ""): string {
  if (values.length === 0) return "-";
  const f = (v: number) => v.toFixed(digits);
  const low = Math.min(...values);
  const high = Math.max(...values);
  return values.length === 1 || f(low) === f(high)
    ? f(median(values)) + unit
    : `${f(median(values))}${unit} (${f(low)}–${f(high)})`;
}

/** Write amplification of one sample: disk bytes written per byte the client wrote. */
export function writeAmplification(sample: Sample): number | null {
  if (sample.fio.writeBytes === 0 || sample.diskWriteBytes === null) return null;
  return sample.diskWriteBytes / sample.fio.writeBytes;
}

/** Per-round ratios of `server`'s throughput to `reference`'s for one workload. */
export function roundRatios(
  samples: readonly Sample[],
  workload: string,
  server: string,
  reference: string,
): number[] {
  const ratios: number[] = [];
  const ofWorkload = samples.filter((s) => s.workload === workload);
  for (const ours of ofWorkload.filter((s) => s.server === server)) {
    const theirs = ofWorkload.find((s) => s.server === reference && s.round === ours.round);
    if (theirs !== undefined && theirs.fio.iops > 0) ratios.push(ours.fio.iops / theirs.fio.iops);
  }
  return ratios;
}

function throughputOf(sample: Sample, workload: Workload): number {
  return workload.blockBytes >= MiB ? sample.fio.mibPerSecond : sample.fio.iops;
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    `| ${
      cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")
    } |`;
  const rule = `| ${widths.map((w, i) => "-".repeat(w - 1) + (i === 0 ? "-" : ":")).join(" | ")} |`;
  return [line(header), rule, ...rows.map(line)];
}

/**
 * The throughput table: per workload and server the median (and range) over rounds, IOPS for
 * 4 KiB workloads and MiB/s for 1 MiB ones, then the per-round ratios of `subject` to each
 * reference (median and range), as a Markdown table.
 */
export function throughputTable(
  samples: readonly Sample[],
  servers: readonly string[],
  subject: string,
): string[] {
  const references = servers.filter((s) => s !== subject);
  const header = [
    "workload",
    ...servers.map((s) => `${s} IOPS or MiB/s`),
    ...references.map((r) => `${subject} / ${r}`),
  ];
  const rows: string[][] = [];
  for (const workload of workloads) {
    const ofWorkload = samples.filter((s) => s.workload === workload.name);
    if (ofWorkload.length === 0) continue;
    const unit = workload.blockBytes >= MiB ? " MiB/s" : "";
    rows.push([
      workload.name + unit,
      ...servers.map((server) =>
        formatSpread(
          ofWorkload.filter((s) => s.server === server).map((s) => throughputOf(s, workload)),
        )
      ),
      ...references.map((reference) => {
        const ratios = roundRatios(samples, workload.name, subject, reference);
        return ratios.length === 0 ? "-" : formatSpread(ratios, 2, "x");
      }),
    ]);
  }
  return table(header, rows);
}

/** Write amplification (disk bytes per client byte) per write workload and server. */
export function amplificationTable(
  samples: readonly Sample[],
  servers: readonly string[],
): string[] {
  const rows: string[][] = [];
  for (const workload of workloads) {
    const ofWorkload = samples.filter((s) => s.workload === workload.name);
    const cells = servers.map((server) => {
      const values = ofWorkload.filter((s) => s.server === server)
        .map(writeAmplification).filter((v): v is number => v !== null);
      return formatSpread(values, 2);
    });
    if (cells.every((c) => c === "-")) continue;
    rows.push([workload.name, ...cells]);
  }
  return table(["disk bytes written per client byte", ...servers], rows);
}

/** A plain table of labelled rows (for the write amplification and cold read sections). */
export function labelledTable(header: string[], rows: string[][]): string[] {
  return table(header, rows);
}

/** A flag's whole number of at least 1, `fallback` when absent (benchmark programs' flags). */
export function wholeNumberFlag(text: string | undefined, fallback: number, name: string): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} wants a whole number`);
  return value;
}
