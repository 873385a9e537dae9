/**
 * The AoE benchmark: the strict test initiator (src/block/aoe/initiator.ts, in this process)
 * driving three targets in the same run, each on a veth pair of its own whose target end is in a
 * network namespace made for the run:
 *
 * - **torus**: `torus aoe vol IFACE 1 1 --data-dir DIR` (the single node of a fresh data dir,
 *   default engine, the volume created with `torus ctl init` and `volume create-block` first);
 * - **vblade**: Debian's `vblade 2 1 IFACE FILE` exporting a sparse file of the same size;
 * - **memory** (a reference; `--no-memory` leaves it out): our AoeTarget serving a MemoryDevice in
 *   a process of its own (this script with `--memory-target`): the AoE front end and the packet
 *   socket without the volume layer and the store behind them.
 *
 * Each export is written whole first (1 MiB requests), so reads read data. Then per workload and
 * round the targets run one after another, in an order that rotates each round: sequential write
 * and read of the first `--seq-mib` MiB in 64 KiB requests (one request at a time, which the
 * initiator splits into frames of the target's sectors per frame, up to 16 frames in flight), and
 * 4 KiB random writes and reads (4 KiB-aligned over the whole export, the same seeded sequence for
 * every target) at QD1 and QD16 for `--runtime` seconds. Across requests, at most the target's
 * advertised buffer count of frames is on the wire ({@link FrameWindow}), as the Linux driver
 * keeps to it: without that, vblade (16 buffers) lost frames at QD16, each loss a 500 ms
 * retransmission timeout. Every write run ends with a flush, timed inside the run: FLUSH CACHE
 * EXT where IDENTIFY says it is supported (torus, memory), else FLUSH CACHE (vblade, which
 * rejects the EXT form and answers FLUSH CACHE without syncing anything).
 * Reported: medians (and ranges) over rounds of MiB/s (sequential) or IOPS (random), the ratio
 * torus/vblade per round; and per request the wall time and the CPU time of the initiator's
 * process and of the target's process (/proc/PID/stat), which show where the time goes.
 *
 * vblade's replies shorter than Ethernet's 60-byte minimum (config replies), and its write replies
 * whose padding carries the written data, are repaired for the strict initiator by
 * {@link repairFrame} (a real NIC pads on the wire, a veth does not; tests/block/aoe/vblade_test.ts
 * has the details); every target's port is wrapped the same way and the repairs are counted.
 *
 * Root only (namespaces, AF_PACKET); skipped, saying why, without them or without vblade.
 *
 * Usage: deno run -A scripts/bench_aoe.ts [--quick] [--volume-mib N] [--seq-mib N] [--runtime S]
 *          [--rounds N] [--filter TEXT] [--mtu N] [--frames N] [--no-memory] [--json FILE]
 *          [--profile DIR]
 * `--quick`: a 32 MiB export, 4 MiB sequential runs, 1 s random runs, one round. `--profile DIR`:
 * the torus and memory targets run with `--cpu-prof --cpu-prof-dir DIR` (written when they stop).
 * @module
 */

import { parseArgs } from "node:util";
import { MemoryDevice } from "../src/block/memory_device.ts";
import {
  AoeInitiator,
  type AoeInitiatorStats,
  type AoeTargetInfo,
} from "../src/block/aoe/initiator.ts";
import { PacketFramePort } from "../src/block/aoe/packet_port.ts";
import { ETHERNET_MIN_FRAME_BYTES } from "../src/block/aoe/port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AOE_SECTOR_BYTES,
  AoeCommand,
  AoeFlag,
  AtaFlag,
} from "../src/block/aoe/protocol.ts";
import { AoeTarget } from "../src/block/aoe/target.ts";
import { NetnsLab, netnsSkipReason, type VethEnd } from "../tests/support/netns.ts";
import { hasCommand } from "../tests/support/packages.ts";
import { ForwardingFramePort } from "../tests/support/forwarding_port.ts";
import { ctlOk } from "../tests/support/torus_process.ts";
import { formatSpread, labelledTable, median, wholeNumberFlag } from "./bench_nbd_report.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const root = new URL("../", import.meta.url).pathname;
const self = new URL(import.meta.url).pathname;

export const TORUS = "torus";
/** `torus aoe --write-cache`: writes answered before they are durable, as vblade's are. */
export const TORUS_WRITE_CACHE = "torus-wc";
export const VBLADE = "vblade";
export const MEMORY = "memory";

/** One workload, run the same way against every target. */
export interface AoeWorkload {
  /** Short name, as printed and as `--filter` matches it. */
  readonly name: string;
  readonly write: boolean;
  /** Sequential over the first `seqBytes` of the export, or random 4 KiB-aligned over all of it. */
  readonly pattern: "seq" | "rand";
  readonly requestBytes: number;
  /** Requests in flight (each split into frames by the initiator). */
  readonly queueDepth: number;
}

/** The workloads, in the order they run (each write before the read of the same kind). */
export const aoeWorkloads: readonly AoeWorkload[] = [
  { name: "64k seq write", write: true, pattern: "seq", requestBytes: 64 * KiB, queueDepth: 1 },
  { name: "64k seq read", write: false, pattern: "seq", requestBytes: 64 * KiB, queueDepth: 1 },
  { name: "4k randwrite QD1", write: true, pattern: "rand", requestBytes: 4 * KiB, queueDepth: 1 },
  {
    name: "4k randwrite QD16",
    write: true,
    pattern: "rand",
    requestBytes: 4 * KiB,
    queueDepth: 16,
  },
  { name: "4k randread QD1", write: false, pattern: "rand", requestBytes: 4 * KiB, queueDepth: 1 },
  {
    name: "4k randread QD16",
    write: false,
    pattern: "rand",
    requestBytes: 4 * KiB,
    queueDepth: 16,
  },
];

/** Sizes and durations of one bench run. */
export interface AoeBenchConfig {
  readonly volumeBytes: number;
  readonly seqBytes: number;
  readonly runtimeSeconds: number;
  readonly rounds: number;
  readonly filter: string | null;
  readonly mtu: number;
  /** The initiator's frames in flight per call (further capped by the target's buffer count). */
  readonly framesInFlight: number;
  readonly memory: boolean;
  readonly jsonPath: string | null;
  /** Where the targets of this program write CPU profiles, or null for none. */
  readonly profileDir: string | null;
}

/** One workload run against one target. */
export interface AoeSample {
  readonly workload: string;
  readonly target: string;
  readonly round: number;
  readonly requests: number;
  readonly bytes: number;
  /** Wall time of the run, the final flush included. */
  readonly seconds: number;
  /** The final flush of a write run (inside `seconds`); null for reads. */
  readonly flushMs: number | null;
  /** Frames the initiator sent (retransmissions included). */
  readonly frames: number;
  readonly retransmits: number;
  /** CPU time of this process (the initiator) and of the target's process during the run. */
  readonly initiatorCpuSeconds: number;
  readonly targetCpuSeconds: number;
}

// ---------------------------------------------------------------------------------------------
// Pure helpers (scripts/bench_aoe_test.ts).

/** The configuration from the command line. */
export function configOf(args: readonly string[]): AoeBenchConfig {
  const { values } = parseArgs({
    args: [...args],
    options: {
      quick: { type: "boolean", default: false },
      "volume-mib": { type: "string" },
      "seq-mib": { type: "string" },
      runtime: { type: "string" },
      rounds: { type: "string" },
      filter: { type: "string" },
      mtu: { type: "string" },
      frames: { type: "string" },
      "no-memory": { type: "boolean", default: false },
      json: { type: "string" },
      profile: { type: "string" },
    },
  });
  const quick = values.quick;
  const volumeBytes = wholeNumberFlag(values["volume-mib"], quick ? 32 : 256, "volume-mib") * MiB;
  const seqBytes = wholeNumberFlag(values["seq-mib"], quick ? 4 : 64, "seq-mib") * MiB;
  if (seqBytes > volumeBytes) throw new Error("--seq-mib is larger than --volume-mib");
  const mtu = wholeNumberFlag(values.mtu, 1500, "mtu");
  if (mtu < 1024 || mtu > 65535) throw new Error("--mtu wants 1024..65535");
  return {
    volumeBytes,
    seqBytes,
    runtimeSeconds: wholeNumberFlag(values.runtime, quick ? 1 : 5, "runtime"),
    rounds: wholeNumberFlag(values.rounds, quick ? 1 : 3, "rounds"),
    filter: values.filter ?? null,
    mtu,
    framesInFlight: wholeNumberFlag(values.frames, 16, "frames"),
    memory: !values["no-memory"],
    jsonPath: values.json ?? null,
    profileDir: values.profile ?? null,
  };
}

/** The workloads `filter` selects (all without one). */
export function selectWorkloads(filter: string | null): AoeWorkload[] {
  return aoeWorkloads.filter((w) => filter === null || w.name.includes(filter));
}

/** A small seeded generator (xorshift32), so every target gets the same random offsets. */
export class SeededRandom {
  #state: number;

  constructor(seed: number) {
    this.#state = (seed >>> 0) || 0x9e3779b9;
  }

  /** The next value in 0..2^32-1. */
  nextU32(): number {
    let x = this.#state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state;
  }

  /** A uniformly drawn whole number in 0..n-1 (n at most 2^32). */
  below(n: number): number {
    return Math.floor((this.nextU32() / 2 ** 32) * n);
  }
}

/** The first LBA of a random `requestBytes`-aligned request inside a `volumeBytes` export. */
export function randomLba(random: SeededRandom, volumeBytes: number, requestBytes: number): number {
  const slots = Math.floor(volumeBytes / requestBytes);
  return random.below(slots) * (requestBytes / AOE_SECTOR_BYTES);
}

/** User plus system CPU ticks of a process, from its /proc/PID/stat. */
export function parseProcStatTicks(text: string): number {
  // The command name (field 2) is in parentheses and may hold spaces: fields after the last ')'.
  const rest = text.slice(text.lastIndexOf(")") + 2).trim().split(/\s+/);
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`not a /proc/PID/stat line: ${text.slice(0, 80)}`);
  }
  return utime + stime;
}

/** What {@link repairFrame} changed, or null. */
export type FrameRepair = "short reply padded" | "write reply padding zeroed" | null;

/**
 * Makes a reply acceptable to the strict initiator without changing what it says: a frame
 * shorter than 60 bytes is padded with zeros (a real NIC does that on the wire; a veth does not),
 * and the padding of a 60-byte write reply is zeroed (vblade builds write replies in the request's
 * buffer, so the first bytes of the written data show through; the Linux driver ignores them).
 * Returns the frame (the same buffer unless padded) and what was done.
 */
export function repairFrame(frame: Uint8Array): { frame: Uint8Array; repair: FrameRepair } {
  if (frame.length < ETHERNET_MIN_FRAME_BYTES) {
    const padded = new Uint8Array(ETHERNET_MIN_FRAME_BYTES);
    padded.set(frame);
    return { frame: padded, repair: "short reply padded" };
  }
  if (frame.length === ETHERNET_MIN_FRAME_BYTES && isWriteReply(frame)) {
    const padding = frame.subarray(AOE_ATA_DATA_OFFSET);
    if (padding.some((byte) => byte !== 0)) {
      padding.fill(0);
      return { frame, repair: "write reply padding zeroed" };
    }
  }
  return { frame, repair: null };
}

/** Where the AoE header's flags, command and tag, and the ATA header's flags, are in a frame. */
const AOE_FLAGS_OFFSET = 14;
const AOE_COMMAND_OFFSET = 19;
const AOE_TAG_OFFSET = 20;
const ATA_FLAGS_OFFSET = 24;

/** An ATA reply (R flag, no AoE error) to a request with the W flag. */
function isWriteReply(frame: Uint8Array): boolean {
  const flags = frame[AOE_FLAGS_OFFSET]! & 0x0f;
  return frame[AOE_COMMAND_OFFSET] === AoeCommand.Ata && (flags & AoeFlag.Response) !== 0 &&
    (flags & AoeFlag.Error) === 0 && (frame[ATA_FLAGS_OFFSET]! & AtaFlag.Write) !== 0;
}

/** The figure a workload is judged by: MiB/s for sequential runs, requests per second else. */
export function rateOf(sample: AoeSample, workload: AoeWorkload): number {
  return workload.pattern === "seq"
    ? sample.bytes / MiB / sample.seconds
    : sample.requests / sample.seconds;
}

/** Per-round ratios of `subject`'s rate to `reference`'s for one workload. */
export function roundRatios(
  samples: readonly AoeSample[],
  workload: AoeWorkload,
  subject: string,
  reference: string,
): number[] {
  const ratios: number[] = [];
  const rounds = new Set(samples.filter((s) => s.workload === workload.name).map((s) => s.round));
  for (const round of [...rounds].sort((a, b) => a - b)) {
    const of = (target: string) =>
      samples.find((s) => s.workload === workload.name && s.target === target && s.round === round);
    const a = of(subject);
    const b = of(reference);
    if (a !== undefined && b !== undefined) ratios.push(rateOf(a, workload) / rateOf(b, workload));
  }
  return ratios;
}

/**
 * The throughput table: per workload and target the median (and range) over rounds, MiB/s for
 * sequential workloads and IOPS for random ones, then torus/vblade per round (median and range).
 */
export function throughputTable(
  samples: readonly AoeSample[],
  targets: readonly string[],
): string[] {
  const header = [
    "workload",
    ...targets.map(targetLabel),
    ...subjectsOf(targets).map((subject) => `${subject} / ${VBLADE}`),
  ];
  const rows: string[][] = [];
  for (const workload of aoeWorkloads) {
    const of = samples.filter((s) => s.workload === workload.name);
    if (of.length === 0) continue;
    rows.push([
      `${workload.name} ${workload.pattern === "seq" ? "MiB/s" : "IOPS"}`,
      ...targets.map((target) =>
        formatSpread(of.filter((s) => s.target === target).map((s) => rateOf(s, workload)))
      ),
      ...subjectsOf(targets).map((subject) => {
        const ratios = roundRatios(samples, workload, subject, VBLADE);
        return ratios.length === 0 ? "-" : formatSpread(ratios, 2, "x");
      }),
    ]);
  }
  return labelledTable(header, rows);
}

/** How a target is named in table headers. */
function targetLabel(target: string): string {
  if (target === MEMORY) return "memory (reference)";
  if (target === TORUS) return "torus aoe";
  if (target === TORUS_WRITE_CACHE) return "torus aoe --write-cache";
  return target;
}

/** The torus targets of a run, each compared with vblade. */
function subjectsOf(targets: readonly string[]): string[] {
  return [TORUS, TORUS_WRITE_CACHE].filter((t) => targets.includes(t));
}

/**
 * Where the time goes: per workload and target, medians over rounds of the wall time per request,
 * the CPU time per request of the initiator's process and of the target's, frames per request,
 * the flush that ended write runs, and retransmissions (summed).
 */
export function costTable(samples: readonly AoeSample[], targets: readonly string[]): string[] {
  const perRequest = (s: AoeSample, value: number) => value * 1e6 / Math.max(1, s.requests);
  const rows: string[][] = [];
  for (const workload of aoeWorkloads) {
    for (const target of targets) {
      const of = samples.filter((s) => s.workload === workload.name && s.target === target);
      if (of.length === 0) continue;
      const flushes = of.map((s) => s.flushMs).filter((ms): ms is number => ms !== null);
      rows.push([
        workload.name,
        target,
        median(of.map((s) => perRequest(s, s.seconds))).toFixed(0),
        median(of.map((s) => perRequest(s, s.initiatorCpuSeconds))).toFixed(0),
        median(of.map((s) => perRequest(s, s.targetCpuSeconds))).toFixed(0),
        median(of.map((s) => s.frames / Math.max(1, s.requests))).toFixed(1),
        flushes.length === 0 ? "-" : median(flushes).toFixed(1),
        String(of.reduce((sum, s) => sum + s.retransmits, 0)),
      ]);
    }
  }
  return labelledTable(
    [
      "workload",
      "target",
      "wall µs/request",
      "initiator CPU µs/request",
      "target CPU µs/request",
      "frames/request",
      "flush ms",
      "retransmits",
    ],
    rows,
  );
}

// ---------------------------------------------------------------------------------------------
// The run.

/**
 * At most `size` ATA requests on the wire at once, as a real initiator keeps to the buffer count
 * its target advertises (the test initiator bounds only the frames of one call, so 16 requests of
 * 4 frames each would put 64 on the wire). Counted by tag: a retransmission of a tag already on
 * the wire takes no second place; the reply to a tag frees its place for the first one waiting.
 */
export class FrameWindow {
  size = Infinity;
  readonly #onWire = new Set<number>();
  readonly #waiting: { tag: number; resolve: () => void }[] = [];

  /** Requests on the wire now. */
  get onWire(): number {
    return this.#onWire.size;
  }

  /** Resolves once `tag` may be sent. */
  enter(tag: number): Promise<void> {
    if (this.#onWire.has(tag)) return Promise.resolve();
    if (this.#onWire.size < this.size && this.#waiting.length === 0) {
      this.#onWire.add(tag);
      return Promise.resolve();
    }
    return new Promise((resolve) => this.#waiting.push({ tag, resolve }));
  }

  /** The reply to `tag` came: its place goes to the first request waiting. */
  leave(tag: number): void {
    if (!this.#onWire.delete(tag)) return;
    const next = this.#waiting.shift();
    if (next !== undefined) {
      this.#onWire.add(next.tag);
      next.resolve();
    }
  }
}

/** An ATA frame's tag, or null for other commands. */
export function ataTag(frame: Uint8Array): number | null {
  if (frame.length < AOE_TAG_OFFSET + 4 || frame[AOE_COMMAND_OFFSET] !== AoeCommand.Ata) {
    return null;
  }
  return new DataView(frame.buffer, frame.byteOffset).getUint32(AOE_TAG_OFFSET);
}

/**
 * Between the initiator and its PacketFramePort: {@link repairFrame} on every frame received,
 * and a {@link FrameWindow} on the ATA requests sent.
 */
class RepairingPort extends ForwardingFramePort {
  readonly repairs = new Map<string, number>();
  readonly window = new FrameWindow();

  override async send(frame: Uint8Array): Promise<void> {
    const tag = ataTag(frame);
    if (tag !== null) await this.window.enter(tag);
    await this.inner.send(frame);
  }

  override async receive(): Promise<Uint8Array | null> {
    const received = await this.inner.receive();
    if (received === null) return null;
    const { frame, repair } = repairFrame(received);
    if (repair !== null) this.repairs.set(repair, (this.repairs.get(repair) ?? 0) + 1);
    const tag = ataTag(frame);
    if (tag !== null && (frame[AOE_FLAGS_OFFSET]! & AoeFlag.Response) !== 0) {
      this.window.leave(tag);
    }
    return frame;
  }
}

/** A target process with the initiator that drives it. */
interface BenchTarget {
  readonly name: string;
  readonly pid: number;
  readonly initiator: AoeInitiator;
  readonly port: RepairingPort;
  readonly info: AoeTargetInfo;
  /** What ends a write run: FLUSH CACHE EXT, FLUSH CACHE, or nothing. */
  readonly flushKind: "FLUSH CACHE EXT" | "FLUSH CACHE" | "none";
  flush(): Promise<void>;
  stop(): Promise<void>;
}

const startedMs = Date.now();

function log(text: string): void {
  const seconds = ((Date.now() - startedMs) / 1000).toFixed(0).padStart(4);
  console.error(`bench_aoe ${seconds} s: ${text}`);
}

/** Collects a child's stdout to its end; `waitFor` resolves once the text so far matches. */
function watchOutput(stream: ReadableStream<Uint8Array>) {
  let text = "";
  let done = false;
  const ended = (async () => {
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) text += chunk;
  })().catch(() => {}).finally(() => done = true);
  return {
    ended,
    text: () => text,
    async waitFor(pattern: RegExp, timeoutMs: number, what: string): Promise<string> {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const match = pattern.exec(text);
        if (match !== null) return match[0];
        if (done) throw new Error(`${what} ended its output before it was ready: ${text}`);
        if (performance.now() > deadline) throw new Error(`${what} not ready in time: ${text}`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
  };
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

let ticksPerSecond = 100;

async function cpuSeconds(pid: number | "self"): Promise<number> {
  return parseProcStatTicks(await Deno.readTextFile(`/proc/${pid}/stat`)) / ticksPerSecond;
}

/** Stops a child with SIGTERM (SIGKILL after 30 s); its exit code, or null when signalled. */
async function terminate(child: Deno.ChildProcess, what: string): Promise<number | null> {
  try {
    child.kill("SIGTERM");
  } catch {
    // It had exited already.
  }
  const timer = setTimeout(() => {
    log(`${what} did not stop within 30 s of SIGTERM: SIGKILL`);
    try {
      child.kill("SIGKILL");
    } catch {
      // Gone meanwhile.
    }
  }, 30_000);
  try {
    const status = await child.status;
    return status.signal === null ? status.code : null;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens the initiator on `end` (this namespace), finds the one target of the link, and reads its
 * IDENTIFY page to choose the flush. Closes the initiator when that fails.
 */
async function connect(
  end: VethEnd,
  config: AoeBenchConfig,
): Promise<{
  initiator: AoeInitiator;
  port: RepairingPort;
  info: AoeTargetInfo;
  flushKind: BenchTarget["flushKind"];
}> {
  const port = new RepairingPort(PacketFramePort.open(end.name));
  const initiator = new AoeInitiator(port, { framesInFlightMax: config.framesInFlight });
  try {
    let found: AoeTargetInfo[] = [];
    for (let attempt = 0; attempt < 20 && found.length === 0; attempt++) {
      found = await initiator.discover({ timeoutMs: 250 });
    }
    if (found.length !== 1) throw new Error(`${found.length} targets answered on ${end.name}`);
    const info = found[0]!;
    const identify = await initiator.identify(info);
    if (identify.sectors * AOE_SECTOR_BYTES !== config.volumeBytes) {
      throw new Error(`the target on ${end.name} has ${identify.sectors} sectors`);
    }
    port.window.size = info.bufferCount;
    const flushKind = identify.flushCacheExtSupported
      ? "FLUSH CACHE EXT"
      : identify.flushCacheSupported
      ? "FLUSH CACHE"
      : "none";
    return { initiator, port, info, flushKind };
  } catch (error) {
    await initiator.close();
    throw error;
  }
}

/** A target process on `pair.a` (in its namespace) and its initiator on `pair.b`. */
async function startTarget(
  name: string,
  lab: NetnsLab,
  pair: { a: VethEnd; b: VethEnd },
  command: string[],
  ready: RegExp,
  config: AoeBenchConfig,
  cleanup: () => Promise<void> = () => Promise.resolve(),
): Promise<BenchTarget> {
  const child = lab.spawn(pair.a.namespace, command);
  const out = watchOutput(child.stdout);
  let connected: Awaited<ReturnType<typeof connect>> | null = null;
  const stop = async () => {
    await connected?.initiator.close();
    const code = await terminate(child, name);
    await out.ended;
    await cleanup();
    if (code !== null && code !== 0) throw new Error(`${name} exited ${code}: ${out.text()}`);
  };
  try {
    await out.waitFor(ready, 120_000, name);
    connected = await connect(pair.b, config);
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
  const { initiator, port, info, flushKind } = connected;
  return {
    name,
    pid: child.pid,
    initiator,
    port,
    info,
    flushKind,
    flush: () =>
      flushKind === "none" ? Promise.resolve() : initiator.flush(info, {
        ext: flushKind === "FLUSH CACHE EXT",
      }),
    stop,
  };
}

/**
 * `torus aoe` on a fresh data dir with one volume of the export's size: write-through (its
 * default), or with `--write-cache` as TORUS_WRITE_CACHE.
 */
async function startTorus(
  lab: NetnsLab,
  pair: { a: VethEnd; b: VethEnd },
  dir: string,
  config: AoeBenchConfig,
  writeCache = false,
): Promise<BenchTarget> {
  const name = writeCache ? TORUS_WRITE_CACHE : TORUS;
  const dataDir = `${dir}/${name}`;
  const size = Math.max(GiB, 2 * config.volumeBytes);
  await ctlOk(dataDir, ["init"]);
  await ctlOk(dataDir, ["volume", "create-block", "vol", `${config.volumeBytes}`]);
  return await startTarget(
    name,
    lab,
    pair,
    [
      ...[Deno.execPath(), "run", "-A", ...profileFlags(config), `${root}main.ts`],
      ...["aoe", "vol", pair.a.name, "1", "1"],
      ...["--data-dir", dataDir, "--size", `${size}`],
      ...(writeCache ? ["--write-cache"] : []),
    ],
    /Ready\. Stop with Ctrl-C/,
    config,
  );
}

/** Deno's flags for a CPU profile of a target process, when asked for. */
function profileFlags(config: AoeBenchConfig): string[] {
  return config.profileDir === null ? [] : ["--cpu-prof", `--cpu-prof-dir=${config.profileDir}`];
}

/** `vblade 2 1 IFACE FILE` over a sparse file of the export's size. */
async function startVblade(
  lab: NetnsLab,
  pair: { a: VethEnd; b: VethEnd },
  dir: string,
  config: AoeBenchConfig,
): Promise<BenchTarget> {
  const file = `${dir}/vblade.img`;
  await Deno.writeFile(file, new Uint8Array(0));
  await Deno.truncate(file, config.volumeBytes);
  // vblade prints this once its socket is open, just before it advertises and serves.
  const sectors = config.volumeBytes / AOE_SECTOR_BYTES;
  return await startTarget(
    VBLADE,
    lab,
    pair,
    ["vblade", "2", "1", pair.a.name, file],
    new RegExp(`^pid \\d+: e2\\.1, ${sectors} sectors O_RDWR$`, "m"),
    config,
    () => Deno.remove(file).catch(() => {}),
  );
}

/** Our AoeTarget over a MemoryDevice, in a process of its own (this script). */
function startMemory(
  lab: NetnsLab,
  pair: { a: VethEnd; b: VethEnd },
  config: AoeBenchConfig,
): Promise<BenchTarget> {
  return startTarget(
    MEMORY,
    lab,
    pair,
    [
      ...[Deno.execPath(), "run", "-A", ...profileFlags(config), self],
      ...["--memory-target", pair.a.name],
      ...["--volume-mib", `${config.volumeBytes / MiB}`],
    ],
    /^Ready\./m,
    config,
  );
}

/** `--memory-target IFACE`: serves e3.1 from a MemoryDevice until SIGTERM or SIGINT. */
async function serveMemoryTarget(interfaceName: string, volumeBytes: number): Promise<number> {
  const device = new MemoryDevice({ sizeBytes: volumeBytes });
  const target = new AoeTarget({
    device,
    port: PacketFramePort.open(interfaceName),
    major: 3,
    minor: 1,
  });
  const stopped = new Promise<void>((resolve) => {
    Deno.addSignalListener("SIGTERM", resolve);
    Deno.addSignalListener("SIGINT", resolve);
  });
  await target.start();
  console.log(`Ready. e3.1 on ${interfaceName}, ${volumeBytes} bytes in memory`);
  await stopped;
  await target.stop();
  await device.close();
  return 0;
}

/** Random bytes for writes, enough for the largest request at any offset of the pool. */
function randomPool(bytes: number): Uint8Array {
  const pool = new Uint8Array(bytes);
  for (let at = 0; at < bytes; at += 65536) {
    crypto.getRandomValues(pool.subarray(at, Math.min(bytes, at + 65536)));
  }
  return pool;
}

const POOL_BYTES = 4 * MiB;
const FILL_REQUEST_BYTES = MiB;

/** Writes the whole export once (1 MiB requests) and flushes; MiB/s. */
async function fill(
  target: BenchTarget,
  config: AoeBenchConfig,
  pool: Uint8Array,
): Promise<number> {
  const start = performance.now();
  for (let offset = 0; offset < config.volumeBytes; offset += FILL_REQUEST_BYTES) {
    const data = pool.subarray(offset % POOL_BYTES, offset % POOL_BYTES + FILL_REQUEST_BYTES);
    await target.initiator.writeSectors(target.info, offset / AOE_SECTOR_BYTES, data);
  }
  await target.flush();
  const seconds = (performance.now() - start) / 1000;
  const rate = config.volumeBytes / MiB / seconds;
  log(`filled ${target.name} (${config.volumeBytes / MiB} MiB) in ${seconds.toFixed(1)} s`);
  return rate;
}

/** One workload against one target. */
async function runWorkload(
  target: BenchTarget,
  workload: AoeWorkload,
  config: AoeBenchConfig,
  pool: Uint8Array,
  round: number,
): Promise<AoeSample> {
  const { initiator, info } = target;
  const sectors = workload.requestBytes / AOE_SECTOR_BYTES;
  // The same offsets for every target in a round (QD16's interleaving aside).
  const random = new SeededRandom(0x70a5 + round * 7919 + aoeWorkloads.indexOf(workload));
  const dataAt = (i: number) => {
    const at = (i * workload.requestBytes) % POOL_BYTES;
    return pool.subarray(at, at + workload.requestBytes);
  };
  const one = (lba: number, i: number) =>
    workload.write
      ? initiator.writeSectors(info, lba, dataAt(i))
      : initiator.readSectors(info, lba, sectors);
  const statsBefore: AoeInitiatorStats = initiator.stats;
  const cpuBefore = [await cpuSeconds("self"), await cpuSeconds(target.pid)];
  const start = performance.now();
  let requests = 0;
  if (workload.pattern === "seq") {
    for (let offset = 0; offset < config.seqBytes; offset += workload.requestBytes) {
      await one(offset / AOE_SECTOR_BYTES, requests++);
    }
  } else {
    const deadline = start + config.runtimeSeconds * 1000;
    const worker = async () => {
      while (performance.now() < deadline) {
        await one(randomLba(random, config.volumeBytes, workload.requestBytes), requests++);
      }
    };
    await Promise.all(Array.from({ length: workload.queueDepth }, worker));
  }
  let flushMs: number | null = null;
  if (workload.write) {
    const flushStart = performance.now();
    await target.flush();
    flushMs = performance.now() - flushStart;
  }
  const seconds = (performance.now() - start) / 1000;
  const cpuAfter = [await cpuSeconds("self"), await cpuSeconds(target.pid)];
  const stats = initiator.stats;
  return {
    workload: workload.name,
    target: target.name,
    round,
    requests,
    bytes: requests * workload.requestBytes,
    seconds,
    flushMs,
    frames: stats.requestsSent - statsBefore.requestsSent,
    retransmits: stats.retransmits - statsBefore.retransmits,
    initiatorCpuSeconds: cpuAfter[0]! - cpuBefore[0]!,
    targetCpuSeconds: cpuAfter[1]! - cpuBefore[1]!,
  };
}

function describe(sample: AoeSample, workload: AoeWorkload): string {
  const rate = rateOf(sample, workload);
  return `${sample.workload} round ${sample.round + 1} ${sample.target}: ` +
    (workload.pattern === "seq" ? `${rate.toFixed(1)} MiB/s` : `${rate.toFixed(0)} IOPS`) +
    (sample.retransmits > 0 ? `, ${sample.retransmits} retransmits` : "");
}

async function versions(): Promise<Record<string, string>> {
  const vblade = await output("dpkg-query", ["-W", "-f", "${Version}", "vblade"])
    .catch(() => "unknown");
  return {
    vblade: vblade.trim(),
    deno: Deno.version.deno,
    kernel: Deno.osRelease(),
    cpus: `${navigator.hardwareConcurrency}`,
  };
}

/** The run: targets started, filled, measured and stopped; returns the report's lines. */
export async function runBench(config: AoeBenchConfig): Promise<string[]> {
  const skip = await netnsSkipReason();
  if (skip !== null) return [`aoe bench: skipped, ${skip}`];
  if (!hasCommand(VBLADE)) return ["aoe bench: skipped, vblade is not installed"];
  ticksPerSecond = Number((await output("getconf", ["CLK_TCK"])).trim()) || 100;
  const dir = await Deno.makeTempDir({ prefix: "torus-aoe-bench-" });
  const loadBefore = Deno.loadavg();
  const samples: AoeSample[] = [];
  const targets: BenchTarget[] = [];
  const flushKinds: Record<string, string> = {};
  const fillRates: Record<string, number> = {};
  const repairs: Record<string, Record<string, number>> = {};
  try {
    await using lab = new NetnsLab();
    const namespace = await lab.addNamespace();
    const pairOf = () => lab.addVethPair({ namespaceA: namespace, mtu: config.mtu });
    try {
      targets.push(await startTorus(lab, await pairOf(), dir, config));
      targets.push(await startTorus(lab, await pairOf(), dir, config, true));
      targets.push(await startVblade(lab, await pairOf(), dir, config));
      if (config.memory) targets.push(await startMemory(lab, await pairOf(), config));
      for (const target of targets) {
        flushKinds[target.name] = target.flushKind;
        log(
          `${target.name}: e${target.info.major}.${target.info.minor}, ` +
            `${target.info.sectorsPerFrame} sectors per frame, ${target.info.bufferCount} ` +
            `buffers, write runs end with ${target.flushKind}`,
        );
      }
      const pool = randomPool(POOL_BYTES);
      for (const target of targets) fillRates[target.name] = await fill(target, config, pool);
      for (const workload of selectWorkloads(config.filter)) {
        for (let round = 0; round < config.rounds; round++) {
          // A rotating order, so no target always runs right after the same other one.
          const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
          for (const target of order) {
            const sample = await runWorkload(target, workload, config, pool, round);
            log(describe(sample, workload));
            samples.push(sample);
          }
        }
      }
      for (const target of targets) {
        repairs[target.name] = Object.fromEntries(target.port.repairs);
        const violations = target.initiator.violations;
        if (violations.length > 0) log(`${target.name} violations: ${violations.join("; ")}`);
      }
    } finally {
      for (const target of targets) {
        await target.stop().catch((error) => log(`stopping ${target.name}: ${error}`));
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const report = {
    date: new Date().toISOString(),
    versions: await versions(),
    loadAverage: { before: loadBefore, after: Deno.loadavg() },
    config,
    flushKinds,
    fillRates,
    repairs,
    samples,
  };
  if (config.jsonPath !== null) {
    await Deno.writeTextFile(config.jsonPath, JSON.stringify(report, null, 2) + "\n");
  }
  return formatReport(report, targets.map((t) => t.name));
}

function formatReport(
  report: {
    date: string;
    versions: Record<string, string>;
    loadAverage: { before: number[]; after: number[] };
    config: AoeBenchConfig;
    flushKinds: Record<string, string>;
    fillRates: Record<string, number>;
    repairs: Record<string, Record<string, number>>;
    samples: AoeSample[];
  },
  names: string[],
): string[] {
  const { config } = report;
  const load = (l: number[]) => l.map((v) => v.toFixed(1)).join(" ");
  const repaired = Object.entries(report.repairs).map(([name, counts]) => {
    const entries = Object.entries(counts);
    return `${name}: ${
      entries.length === 0 ? "none" : entries.map(([what, n]) => `${n} ${what}`).join(", ")
    }`;
  });
  return [
    `AoE: torus aoe against vblade through the test initiator, ${report.date}`,
    `  ${Object.entries(report.versions).map(([k, v]) => `${k}: ${v}`).join("; ")}`,
    `  export ${config.volumeBytes / MiB} MiB, sequential runs over ${
      config.seqBytes / MiB
    } MiB, ` +
    `random runs ${config.runtimeSeconds} s, ${config.rounds} round(s), MTU ${config.mtu}, ` +
    `up to ${config.framesInFlight} frames in flight per request; load average ` +
    `${load(report.loadAverage.before)} before, ${load(report.loadAverage.after)} after`,
    `  write runs end with: ${
      Object.entries(report.flushKinds).map(([k, v]) => `${k} ${v}`).join(", ")
    }`,
    `  replies repaired for the strict initiator: ${repaired.join("; ")}`,
    `  fill (every byte of the fresh export written once, 1 MiB requests, then a flush): ${
      Object.entries(report.fillRates).map(([k, v]) => `${k} ${v.toFixed(1)} MiB/s`).join(", ")
    }`,
    "",
    "Throughput: median (min–max) over rounds; torus/vblade per round",
    ...throughputTable(report.samples, names),
    "",
    "Per request (medians over rounds): the run's wall time divided by its requests, CPU time of " +
    "the initiator's process and of the target's (/proc/PID/stat), frames sent",
    ...costTable(report.samples, names),
  ];
}

const USAGE =
  `Usage: deno run -A scripts/bench_aoe.ts [--quick] [--volume-mib N] [--seq-mib N] [--runtime S]
  [--rounds N] [--filter TEXT] [--mtu N] [--frames N] [--no-memory] [--json FILE]
  [--profile DIR]

The test initiator against torus aoe, vblade and an in-memory AoeTarget on veth pairs, in the
same run (docs/benchmarks.md). Root only.`;

async function main(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) {
    console.log(USAGE);
    return 0;
  }
  if (args[0] === "--memory-target") {
    const { values } = parseArgs({
      args: args.slice(2),
      options: { "volume-mib": { type: "string" } },
    });
    return await serveMemoryTarget(
      args[1]!,
      wholeNumberFlag(values["volume-mib"], 256, "volume-mib") * MiB,
    );
  }
  let config: AoeBenchConfig;
  try {
    config = configOf(args);
  } catch (error) {
    console.error(`bench_aoe: ${error instanceof Error ? error.message : error}`);
    console.error("Run with --help for usage.");
    return 2;
  }
  const lines = await runBench(config);
  console.log(lines.join("\n"));
  return lines.some((line) => /\bNaN\b/.test(line)) ? 1 : 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    console.error(`bench_aoe: ${error instanceof Error ? error.stack : error}`);
    Deno.exit(1);
  }
}
