/**
 * Pieces of the AoE end-to-end tests (tests/e2e/aoe_test.ts): `torus` processes started through a
 * {@link NetnsLab} (inside a namespace or in the test's own, killed at the lab's cleanup however
 * the test ends), a model of what a volume should hold after a series of sector writes, the
 * writes themselves through the strict {@link AoeInitiator}, and reading a volume back through
 * NBD to compare it with the model.
 *
 * Ranges are in 512-byte sectors (AoE's unit); a difference is reported by sector, so a failure
 * says which write it belongs to.
 * @module
 */

import assert from "node:assert/strict";
import {
  AOE_SECTOR_BYTES,
  type AoeAddress,
  AoeCommand,
  type AoeHeader,
  type AoeHeaderInit,
  AoeInitiator,
  type AoeTargetInfo,
  AtaCommand,
  AtaFlag,
  encodeAoeFrame,
  encodeAtaFrame,
  PacketFramePort,
  parseAoeHeader,
} from "../../src/block/aoe/mod.ts";
import { connStream, NbdClient } from "../../src/block/mod.ts";
import type { SeededRandom } from "../../src/core/mod.ts";
import type { NetnsLab, VethEnd } from "./netns.ts";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();
/** 512 KiB, the default block size, in sectors: ranges are made to cross these boundaries. */
const BLOCK_SECTORS = 1024;

/**
 * Runs `torus ARGS` with stderr joined to stdout (so its logs and errors are captured, not
 * spilled into the test's output) and the environment every test child gets. `exec` keeps the
 * pid torus's own, so a signal sent to the child reaches torus, not a shell.
 */
function torusCommand(args: readonly string[]): string[] {
  const script = 'export NO_COLOR=1 RUST_BACKTRACE=0; exec "$@" 2>&1';
  return ["sh", "-c", script, "sh", Deno.execPath(), "run", "-A", `${root}main.ts`, ...args];
}

/** A long-running `torus` started by {@link startTorusIn}. */
export interface LabProcess {
  readonly child: Deno.ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Sends `signal` (unless it exited) and waits: the exit code, or -1 when killed by a signal. */
  signal(signal: Deno.Signal): Promise<number>;
}

/**
 * Starts `torus ARGS` in `namespace` (null: the test's own) and waits until its output matches
 * `ready` (default: the "Ready." line of every banner). Fails with its output when it exits or
 * is not ready within `readyTimeoutMs`; the lab kills it at cleanup in any case.
 */
export async function startTorusIn(
  lab: NetnsLab,
  namespace: string | null,
  args: readonly string[],
  options: { ready?: RegExp; readyTimeoutMs?: number } = {},
): Promise<LabProcess> {
  const child = lab.spawn(namespace, torusCommand(args));
  await child.stdin.close();
  let text = "";
  const pumped = (async () => {
    for await (const chunk of child.stdout) text += decoder.decode(chunk, { stream: true });
  })();
  let exited = false;
  const status = child.status.finally(() => {
    exited = true;
  });
  const process: LabProcess = {
    child,
    output: () => text,
    async signal(signal) {
      if (!exited) {
        try {
          child.kill(signal);
        } catch {
          // It exited in between.
        }
      }
      const { code, signal: killedBy } = await status;
      await pumped;
      return killedBy === null ? code : -1;
    },
  };
  await waitForOutput(
    process,
    options.ready ?? /^Ready\./m,
    options.readyTimeoutMs ?? 30_000,
    () => exited,
  );
  return process;
}

async function waitForOutput(
  process: LabProcess,
  ready: RegExp,
  timeoutMs: number,
  exited: () => boolean,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready.test(process.output())) {
    const what = `torus ${process.child.pid}`;
    if (exited()) {
      throw new Error(`${what} exited before it was ready:\n${process.output()}`);
    }
    if (Date.now() > deadline) {
      await process.signal("SIGKILL");
      throw new Error(`${what} was not ready within ${timeoutMs} ms:\n${process.output()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** What a finished command printed (stderr joined to stdout). */
export interface BoundedOutput {
  readonly code: number;
  readonly output: string;
}

/**
 * Runs `torus ARGS` in `namespace` (null: the test's own) to its end; SIGKILLed and failed when
 * it still runs after `timeoutMs` (a command that should have refused must not hang the test).
 */
export async function runTorusIn(
  namespace: string | null,
  args: readonly string[],
  timeoutMs = 20_000,
): Promise<BoundedOutput> {
  const [program, ...rest] = namespace === null
    ? torusCommand(args)
    : ["ip", "netns", "exec", namespace, ...torusCommand(args)];
  const child = new Deno.Command(program!, { args: rest, stdin: "null", stdout: "piped" }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, timeoutMs);
  try {
    const output = await child.output();
    const text = decoder.decode(output.stdout);
    if (timedOut) {
      throw new Error(`torus ${args.join(" ")} still ran after ${timeoutMs} ms:\n${text}`);
    }
    return { code: output.code, output: text };
  } finally {
    clearTimeout(timer);
  }
}

/** The value of a banner line `  NAME: ... HOST:PORT`, e.g. "HTTP" or "NBD". */
export function bannerAddress(output: string, name: string): { hostname: string; port: number } {
  const match = new RegExp(`^ +${name}: +(?:[a-z]+://)?([0-9.]+):(\\d+)`, "m").exec(output);
  if (match === null) throw new Error(`no ${name} address in the banner:\n${output}`);
  return { hostname: match[1]!, port: Number(match[2]) };
}

/** A range of sectors and the form of the ATA commands that write and read it. */
export interface SectorRange {
  readonly lba: number;
  readonly sectors: number;
  readonly lba48: boolean;
}

/**
 * `count` ranges (at least 8) over a volume of `totalSectors`: the first and last sectors, ranges
 * crossing block boundaries (512 KiB) and random ones, alternating LBA48 and LBA28 forms.
 */
export function planRanges(
  random: SeededRandom,
  totalSectors: number,
  count: number,
): SectorRange[] {
  assert.ok(count >= 8 && totalSectors >= 4 * BLOCK_SECTORS, "a plan needs room");
  const ranges: SectorRange[] = [
    { lba: totalSectors - 1, sectors: 1, lba48: true },
    { lba: totalSectors - 5, sectors: 5, lba48: false },
    { lba: 0, sectors: 1, lba48: false },
    { lba: 1, sectors: 3, lba48: true },
  ];
  const blocks = totalSectors / BLOCK_SECTORS;
  for (let i = ranges.length; i < count; i++) {
    if (i % 3 === 0) {
      // Straddles the boundary before block 1..blocks-1 by 1..16 sectors on each side.
      const boundary = (1 + random.int(blocks - 1)) * BLOCK_SECTORS;
      const before = 1 + random.int(16);
      ranges.push({
        lba: boundary - before,
        sectors: before + 1 + random.int(16),
        lba48: i % 2 === 0,
      });
    } else {
      const sectors = 1 + random.int(48);
      ranges.push({ lba: random.int(totalSectors - sectors + 1), sectors, lba48: i % 2 === 0 });
    }
  }
  return ranges;
}

/** What a volume holds, as far as the test wrote it (zeros elsewhere: a new volume's). */
export class VolumeModel {
  readonly image: Uint8Array;

  constructor(readonly sectors: number) {
    this.image = new Uint8Array(sectors * AOE_SECTOR_BYTES);
  }

  /** The bytes of `range` as the model has them (a view). */
  bytesOf(range: SectorRange): Uint8Array {
    const start = range.lba * AOE_SECTOR_BYTES;
    return this.image.subarray(start, start + range.sectors * AOE_SECTOR_BYTES);
  }

  /** Random data for `range`, applied to the model; returns it to be written. */
  fill(random: SeededRandom, range: SectorRange): Uint8Array {
    const data = random.bytes(range.sectors * AOE_SECTOR_BYTES);
    this.bytesOf(range).set(data);
    return data;
  }
}

/** Writes random data to every range in order (each through `initiator`), into `model` too. */
export async function writeRanges(
  initiator: AoeInitiator,
  target: AoeTargetInfo,
  model: VolumeModel,
  random: SeededRandom,
  ranges: readonly SectorRange[],
): Promise<void> {
  for (const range of ranges) {
    const data = model.fill(random, range);
    await initiator.writeSectors(target, range.lba, data, { lba48: range.lba48 });
  }
}

/** Reads every range back through `initiator` and compares it with the model. */
export async function checkRanges(
  initiator: AoeInitiator,
  target: AoeTargetInfo,
  model: VolumeModel,
  ranges: readonly SectorRange[],
): Promise<void> {
  for (const range of ranges) {
    const back = await initiator.readSectors(target, range.lba, range.sectors, {
      lba48: range.lba48,
    });
    assertSameSectors(back, model.bytesOf(range), `AoE read of ${describeRange(range)}`, range.lba);
  }
}

/** How failures name a range. */
export function describeRange(range: SectorRange): string {
  return `sectors ${range.lba}+${range.sectors} (LBA${range.lba48 ? 48 : 28})`;
}

/** Fails naming the first sector (counted from `firstLba`) where `actual` and `expected` differ. */
export function assertSameSectors(
  actual: Uint8Array,
  expected: Uint8Array,
  what: string,
  firstLba = 0,
): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  if (at >= 0) {
    const sector = firstLba + Math.floor(at / AOE_SECTOR_BYTES);
    assert.fail(
      `${what}: sector ${sector} differs (byte ${at % AOE_SECTOR_BYTES} of it: ` +
        `got ${actual[at]}, expected ${expected[at]})`,
    );
  }
}

/**
 * Runs `fn` with an initiator on `end` (in the test's namespace, short retransmission timeouts),
 * closed however `fn` ends; when `fn` succeeded, the target must have broken no protocol rule
 * the initiator could only record (a failed `fn` keeps its own error).
 */
export async function withInitiator<T>(
  end: VethEnd,
  fn: (initiator: AoeInitiator) => Promise<T>,
): Promise<T> {
  assert.equal(end.namespace, null, "the initiator runs in the test's namespace");
  const initiator = new AoeInitiator(PacketFramePort.open(end.name), {
    timeoutMs: 300,
    attempts: 5,
  });
  let result: T;
  try {
    result = await fn(initiator);
  } finally {
    await initiator.close().catch(() => {});
  }
  assert.deepEqual(initiator.violations, [], "the target broke no protocol rule");
  return result;
}

/** Discovers the targets on the link; fails unless exactly eMAJOR.MINOR answered. */
export async function discoverOnly(
  initiator: AoeInitiator,
  major: number,
  minor: number,
): Promise<AoeTargetInfo> {
  const found = await initiator.discover({ timeoutMs: 300 });
  const addresses = found.map((info) => `e${info.major}.${info.minor}`);
  assert.deepEqual(addresses, [`e${major}.${minor}`], "discovery finds exactly the one target");
  return found[0]!;
}

/** Reads the whole of export `name` from the NBD server at `address`. */
export async function readThroughNbd(
  address: { hostname: string; port: number },
  name: string,
): Promise<Uint8Array> {
  const client = await connectNbd(address, name);
  try {
    const bytes = new Uint8Array(client.sizeBytes);
    await client.readAt(0, bytes);
    return bytes;
  } finally {
    await client.close().catch(() => {});
  }
}

/** An NBD client on export `name` at `address`. */
export async function connectNbd(
  address: { hostname: string; port: number },
  name: string,
): Promise<NbdClient> {
  const conn = await Deno.connect(address);
  return await NbdClient.connect(connStream(conn), { exportName: name });
}

/** A frame a target should drop, and the AoE error it should answer with (null: none). */
export interface BadFrame {
  readonly what: string;
  readonly frame: Uint8Array;
  readonly tag: number;
  readonly expectedError: number | null;
}

/** The Ethernet and AoE headers of a request to `to` from `from` (24 bytes, unpadded). */
function requestHeader(to: AoeAddress, from: Uint8Array, tag: number, command: number) {
  return encodeAoeFrame(requestHeaderInit(to, from, tag), command, new Uint8Array(), {
    pad: false,
  });
}

/**
 * Frames that break AoE in different ways, each addressed to `to` alone from `from`: a header cut
 * short (no answer: it cannot be routed), an ATA header cut short and a READ of one sector more
 * than a frame carries (both error 2, bad argument), an unknown AoE version (error 5), and some
 * random bytes after valid Ethernet headers (no particular answer).
 */
export function badFrames(to: AoeTargetInfo, from: Uint8Array, random: SeededRandom): BadFrame[] {
  const tag = () => random.nextU32();
  const truncatedHeader = { what: "AoE header cut short", tag: tag(), expectedError: null };
  const truncatedAta = { what: "ATA header cut short", tag: tag(), expectedError: 2 };
  const oversizedRead = { what: "READ of too many sectors", tag: tag(), expectedError: 2 };
  const badVersion = { what: "AoE version 15", tag: tag(), expectedError: 5 };
  const version15 = requestHeader(to, from, badVersion.tag, AoeCommand.Ata);
  version15[14] = 0xf0;
  const frames: BadFrame[] = [
    {
      ...truncatedHeader,
      frame: requestHeader(to, from, truncatedHeader.tag, AoeCommand.Ata).slice(0, 20),
    },
    {
      ...truncatedAta,
      frame: concat(requestHeader(to, from, truncatedAta.tag, AoeCommand.Ata), new Uint8Array(6)),
    },
    {
      ...oversizedRead,
      frame: encodeAtaFrame(requestHeaderInit(to, from, oversizedRead.tag), {
        flags: AtaFlag.Lba48,
        errorFeature: 0,
        sectorCount: to.sectorsPerFrame + 1,
        commandStatus: AtaCommand.ReadSectorsExt,
        lba: 0,
      }),
    },
    { ...badVersion, frame: concat(version15, random.bytes(36)) },
  ];
  for (let i = 0; i < 4; i++) {
    const garbage = concat(requestHeader(to, from, 0, 0).subarray(0, 14), random.bytes(46));
    frames.push({ what: "random bytes", frame: garbage, tag: -1, expectedError: null });
  }
  return frames;
}

function requestHeaderInit(to: AoeAddress, from: Uint8Array, tag: number): AoeHeaderInit {
  return {
    destination: to.mac,
    source: from,
    response: false,
    major: to.major,
    minor: to.minor,
    tag,
  };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Sends `frames` on `port` and collects the AoE error replies to their tags for `waitMs`: the
 * error code answered to each tag (a tag answered twice fails).
 */
export async function sendBadFrames(
  port: PacketFramePort,
  frames: readonly BadFrame[],
  waitMs: number,
): Promise<Map<number, number>> {
  const tags = new Set(frames.map((f) => f.tag).filter((tag) => tag >= 0));
  const answers = new Map<number, number>();
  const receiving = (async () => {
    for (let frame = await port.receive(); frame !== null; frame = await port.receive()) {
      let header: AoeHeader;
      try {
        header = parseAoeHeader(frame);
      } catch {
        continue; // our own bad frames, seen going out
      }
      if (!header.response || !tags.has(header.tag)) continue;
      assert.ok(!answers.has(header.tag), `tag ${header.tag} answered twice`);
      answers.set(header.tag, header.errorFlag ? header.errorCode : 0);
    }
  })();
  try {
    for (const bad of frames) await port.send(bad.frame);
    await new Promise((resolve) => setTimeout(resolve, waitMs));
  } finally {
    // Closing ends the receive loop, which may have failed on a tag answered twice.
    await port.close();
    await receiving;
  }
  return answers;
}
