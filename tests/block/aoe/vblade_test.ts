/**
 * The strict test initiator run against Debian's vblade exporting a file, and the same checks run
 * against our own AoeTarget: discovery, IDENTIFY, reads and writes in LBA28 and LBA48 form (read
 * back byte-exact and found at lba × 512 in the backing store), and the registers and errors of
 * a few more commands. Both targets serve e7.3 on one end of a veth pair; the initiator is on the
 * other end. Root only (netns); the vblade test also needs vblade (tests/support/packages.ts).
 *
 * {@link collectAnswers} gathers what the initiator learns, and each test compares it with the
 * answers it expects: `torusAnswers` for ours, and `vbladeAnswers`, which is ours with vblade's
 * differences (each explained where it is set). vblade 25 differs where the initiator sees it in:
 * - framing: replies are as long as their content, so config replies (32 bytes) and failed reads
 *   (36 bytes) are shorter than Ethernet's 60-byte minimum (a real NIC pads them on the wire; a
 *   veth does not), and write replies are built in the request's buffer, so their padding carries
 *   the first 24 bytes of the written data. {@link TolerantPort} repairs both for the strict
 *   initiator and records each repair; the tests assert exactly which were needed;
 * - its start-up advertisement carries AoE version 0 in its header (queries get version 1);
 * - FLUSH CACHE EXT is rejected with an ATA abort; FLUSH CACHE "succeeds" with status 0 (not even
 *   DRDY) and an error register it never sets;
 * - a range past the end is IDNF alone (ours: IDNF|ABRT);
 * - successful replies carry the sectors left to transfer (0) in the sector count register (ours
 *   echo the request's count), and IDENTIFY with a sector count other than 1 is AoE error 2;
 * - its IDENTIFY page claims no write cache, FLUSH CACHE but not FLUSH CACHE EXT, and has no
 *   integrity word; it advertises 16 buffers and firmware 0x4019 (0x4000 + version 25).
 */

import assert from "node:assert/strict";
import { assertSameBytes, VERSION } from "../../../src/core/mod.ts";
import { MemoryDevice } from "../../../src/block/memory_device.ts";
import type { IdentifyInfo } from "../../../src/block/aoe/identify.ts";
import {
  AoeCommandError,
  AoeInitiator,
  type AoeTargetInfo,
  type AtaReply,
} from "../../../src/block/aoe/initiator.ts";
import { PacketFramePort } from "../../../src/block/aoe/packet_port.ts";
import { ETHERNET_MIN_FRAME_BYTES } from "../../../src/block/aoe/port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AOE_SECTOR_BYTES,
  AoeCommand,
  AoeFlag,
  AtaCommand,
  AtaFlag,
  ConfigCommand,
  formatMac,
} from "../../../src/block/aoe/protocol.ts";
import { AoeTarget } from "../../../src/block/aoe/target.ts";
import { linkInfo, type NetnsLab, netnsTest, type VethEnd } from "../../support/netns.ts";
import { hasCommand } from "../../support/packages.ts";
import { ForwardingFramePort } from "../../support/forwarding_port.ts";

const SHELF = 7;
const SLOT = 3;
const DISK_BYTES = 64 * 1024 * 1024;
const DISK_SECTORS = DISK_BYTES / AOE_SECTOR_BYTES;
/** Where the register probes read and write, away from the data checks' ranges. */
const PROBE_LBA = 50_000;
/** LBA28 commands carry the device register (0xE0: LBA mode) in the top byte, as Linux sends. */
const LBA28_DEVICE_REGISTER = 0xe0 * 2 ** 24;
/** Where an ATA frame's flags are: after the Ethernet (14) and AoE (10) headers. */
const ATA_FLAGS_OFFSET = 24;

/** A target serving e7.3 on end a of the pair, started by a {@link StartTarget} step. */
interface StartedTarget extends AsyncDisposable {
  /** Bytes of the store the target serves (vblade's file, our device), read directly. */
  readBacking(offsetBytes: number, lengthBytes: number): Promise<Uint8Array>;
}

/** Starts a target on `end` (in the test's namespace) serving a fresh, zeroed 64 MiB disk. */
type StartTarget = (lab: NetnsLab, end: VethEnd) => Promise<StartedTarget>;

/** What a config reply says, without the MAC (checked against the link's). */
interface TargetSummary {
  address: string;
  bufferCount: number;
  firmwareVersion: number;
  sectorsPerFrame: number;
  aoeVersion: number;
  configCommand: number;
  configString: string;
}

/** The registers of an ATA reply, its LBA relative to the request's. */
interface Registers {
  status: number;
  error: number;
  sectorCount: number;
  lbaAdvance: number;
}

/** Everything {@link collectAnswers} learns from a target beyond the data checks. */
interface Answers {
  /** A broadcast query's replies. */
  discovered: TargetSummary[];
  /** A query for e7.4, which nobody serves. */
  otherSlot: TargetSummary[];
  /** A unicast config read. */
  configRead: TargetSummary | null;
  /** Valid start-up advertisements the initiator recorded. */
  advertisements: TargetSummary[];
  /** The initiator's violations at the end, the target's MAC written as TARGET. */
  violations: string[];
  identify: IdentifyInfo;
  /** IDENTIFY DEVICE with a sector count of 0 instead of 1. */
  identifyCountZero: string;
  registers: {
    identify: Registers;
    read48: Registers;
    read28: Registers;
    write48: Registers;
    checkPowerMode: Registers;
    /** FLUSH CACHE: the status only (vblade never sets the error register for it). */
    flushCacheStatus: number;
  };
  /** The outcome of the initiator's calls: "ok" or the error the target answered. */
  flushCache: string;
  flushCacheExt: string;
  readPastEnd: string;
  writePastEnd: string;
  /** What the padding of a one-sector write reply held. */
  writeReplyPadding: string;
  /** Repairs {@link TolerantPort} made, each once. */
  wireRepairs: string[];
}

/**
 * Between the initiator and its PacketFramePort: pads frames shorter than 60 bytes with zeros, as
 * a real NIC does on the wire (a veth does not), and zeroes the padding of write replies, which
 * the Linux driver ignores; either is recorded in `repairs`, so the tests can assert which
 * targets needed them. Nothing else is changed.
 */
class TolerantPort extends ForwardingFramePort {
  readonly repairs = new Set<string>();
  /** The padding bytes of the last write reply zeroed, until taken. */
  #zeroedPadding: Uint8Array | null = null;

  override async receive(): Promise<Uint8Array | null> {
    const frame = await this.inner.receive();
    return frame === null ? null : this.#repair(frame);
  }

  /** The padding zeroed since the last call, or null when none was. */
  takeZeroedPadding(): Uint8Array | null {
    const padding = this.#zeroedPadding;
    this.#zeroedPadding = null;
    return padding;
  }

  #repair(frame: Uint8Array): Uint8Array {
    if (frame.length < ETHERNET_MIN_FRAME_BYTES) {
      const kind = commandNames[frame[19]!] ?? `command ${frame[19]}`;
      this.repairs.add(`${kind} reply of ${frame.length} bytes padded to 60`);
      const padded = new Uint8Array(ETHERNET_MIN_FRAME_BYTES);
      padded.set(frame);
      return padded;
    }
    const padding = frame.subarray(AOE_ATA_DATA_OFFSET);
    if (isWriteReply(frame) && frame.length === ETHERNET_MIN_FRAME_BYTES && padding.some(Boolean)) {
      this.repairs.add(`write reply padding of ${padding.length} bytes zeroed`);
      this.#zeroedPadding = padding.slice();
      padding.fill(0);
    }
    return frame;
  }
}

const commandNames: Readonly<Record<number, string>> = {
  [AoeCommand.Ata]: "ATA",
  [AoeCommand.QueryConfig]: "config",
};

/** An ATA reply (R flag, no AoE error) to a request with the W flag. */
function isWriteReply(frame: Uint8Array): boolean {
  const flags = frame[14]! & 0x0f;
  return frame[19] === AoeCommand.Ata && (flags & AoeFlag.Response) !== 0 &&
    (flags & AoeFlag.Error) === 0 && (frame[ATA_FLAGS_OFFSET]! & AtaFlag.Write) !== 0;
}

function summary(info: AoeTargetInfo): TargetSummary {
  return {
    address: `e${info.major}.${info.minor}`,
    bufferCount: info.bufferCount,
    firmwareVersion: info.firmwareVersion,
    sectorsPerFrame: info.sectorsPerFrame,
    aoeVersion: info.aoeVersion,
    configCommand: info.configCommand,
    configString: new TextDecoder().decode(info.configString),
  };
}

function registers(reply: AtaReply, requestLba = 0): Registers {
  return {
    status: reply.status,
    error: reply.error,
    sectorCount: reply.sectorCount,
    lbaAdvance: reply.lba - requestLba,
  };
}

const hex = (value: number) => `0x${value.toString(16).padStart(2, "0")}`;

/** "ok", or the AoE or ATA error a call failed with (anything else is rethrown). */
async function outcome(call: Promise<unknown>): Promise<string> {
  try {
    await call;
    return "ok";
  } catch (error) {
    if (!(error instanceof AoeCommandError)) throw error;
    return error.aoeError !== 0
      ? `AoE error ${error.aoeError}`
      : `ATA status ${hex(error.ataStatus)} error ${hex(error.ataError)}`;
  }
}

function randomBytes(length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  // getRandomValues fills at most 64 KiB at a time.
  for (let at = 0; at < length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, Math.min(length, at + 65536)));
  }
  return bytes;
}

/**
 * Writes random data at several LBAs (first sector, odd counts that end in a one-sector frame,
 * many frames in flight, the last sector), alternating LBA28 and LBA48 writes; reads each range
 * back in both forms, byte-exact; and finds it at lba × 512 in the backing store, with the
 * sectors either side still zero.
 */
async function checkData(
  initiator: AoeInitiator,
  info: AoeTargetInfo,
  target: StartedTarget,
): Promise<void> {
  const ranges = [
    { lba: 0, sectors: 1 },
    { lba: 5, sectors: 2 },
    { lba: 4093, sectors: 7 },
    { lba: 65_537, sectors: 40 },
    { lba: 100_000, sectors: 3 },
    { lba: DISK_SECTORS - 5, sectors: 5 },
  ];
  for (const [index, { lba, sectors }] of ranges.entries()) {
    const lba48 = index % 2 === 1;
    const where = `${sectors} sectors at ${lba}`;
    const data = randomBytes(sectors * AOE_SECTOR_BYTES);
    await initiator.writeSectors(info, lba, data, { lba48 });
    for (const readLba48 of [false, true]) {
      const read = await initiator.readSectors(info, lba, sectors, { lba48: readLba48 });
      assertSameBytes(read, data, `${where}, written LBA${lba48 ? 48 : 28}, read back`);
    }
    const before = Math.min(lba, 1);
    const after = Math.min(DISK_SECTORS - lba - sectors, 1);
    const backing = await target.readBacking(
      (lba - before) * AOE_SECTOR_BYTES,
      (before + sectors + after) * AOE_SECTOR_BYTES,
    );
    const at = before * AOE_SECTOR_BYTES;
    assertSameBytes(backing.subarray(at, at + data.length), data, `${where} in the backing store`);
    const outside = [...backing.subarray(0, at), ...backing.subarray(at + data.length)];
    assert.ok(outside.every((byte) => byte === 0), `the sectors beside ${where} are untouched`);
  }
}

/** The answers {@link collectAnswers} gathers itself. */
type ProbedElsewhere =
  | "discovered"
  | "otherSlot"
  | "configRead"
  | "advertisements"
  | "violations"
  | "wireRepairs";

/** Registers of single-frame commands, and how the target refuses what it refuses. */
async function probeCommands(
  initiator: AoeInitiator,
  port: TolerantPort,
  info: AoeTargetInfo,
): Promise<Omit<Answers, ProbedElsewhere>> {
  const identifyReply = await initiator.ata(info, {
    command: AtaCommand.IdentifyDevice,
    sectorCount: 1,
    replyDataBytes: AOE_SECTOR_BYTES,
  });
  const read48 = await initiator.ata(info, {
    command: AtaCommand.ReadSectorsExt,
    flags: AtaFlag.Lba48,
    sectorCount: 2,
    lba: PROBE_LBA,
    replyDataBytes: 2 * AOE_SECTOR_BYTES,
  });
  const read28 = await initiator.ata(info, {
    command: AtaCommand.ReadSectors,
    sectorCount: 2,
    lba: LBA28_DEVICE_REGISTER + PROBE_LBA,
    replyDataBytes: 2 * AOE_SECTOR_BYTES,
  });
  const written = randomBytes(AOE_SECTOR_BYTES);
  port.takeZeroedPadding();
  const write48 = await initiator.ata(info, {
    command: AtaCommand.WriteSectorsExt,
    flags: AtaFlag.Lba48 | AtaFlag.Write,
    sectorCount: 1,
    lba: PROBE_LBA,
    data: written,
  });
  const padding = port.takeZeroedPadding();
  const writeReplyPadding = padding === null
    ? "zeros"
    : padding.every((byte, i) => byte === written[i])
    ? `the first ${padding.length} bytes of the written data`
    : "other bytes";
  return {
    identify: await initiator.identify(info),
    identifyCountZero: await outcome(initiator.ata(info, {
      command: AtaCommand.IdentifyDevice,
      sectorCount: 0,
      replyDataBytes: AOE_SECTOR_BYTES,
    })),
    registers: {
      identify: registers(identifyReply),
      read48: registers(read48, PROBE_LBA),
      read28: registers(read28, LBA28_DEVICE_REGISTER + PROBE_LBA),
      write48: registers(write48, PROBE_LBA),
      checkPowerMode: registers(
        await initiator.ata(info, { command: AtaCommand.CheckPowerMode }),
      ),
      flushCacheStatus: (await initiator.ata(info, { command: AtaCommand.FlushCache })).status,
    },
    flushCache: await outcome(initiator.flush(info, { ext: false })),
    flushCacheExt: await outcome(initiator.flush(info)),
    readPastEnd: await outcome(initiator.readSectors(info, DISK_SECTORS - 1, 2)),
    writePastEnd: await outcome(
      initiator.writeSectors(info, DISK_SECTORS - 1, randomBytes(2 * AOE_SECTOR_BYTES)),
    ),
    writeReplyPadding,
  };
}

/**
 * The shared checks: makes a veth pair, opens the initiator on end b (before the target starts,
 * so it hears the advertisement), starts the target on end a, runs the discovery and data checks
 * (which assert) and the probes, and returns what the initiator learnt.
 */
async function collectAnswers(lab: NetnsLab, start: StartTarget): Promise<Answers> {
  const pair = await lab.addVethPair();
  const targetMac = (await linkInfo(pair.a)).mac;
  const port = new TolerantPort(PacketFramePort.open(pair.b.name));
  const initiator = new AoeInitiator(port);
  try {
    await using target = await start(lab, pair.a);
    const found = await initiator.discover({ timeoutMs: 300 });
    assert.equal(found.length, 1, "one target on the link");
    const info = found[0]!;
    assert.equal(formatMac(info.mac), targetMac, "the reply comes from the target's end");
    assert.deepEqual([info.major, info.minor], [SHELF, SLOT]);
    assert.ok(info.bufferCount >= 1, `buffer count ${info.bufferCount}`);
    const otherSlot = await initiator.discover({ timeoutMs: 300, major: SHELF, minor: SLOT + 1 });
    const configRead = await initiator.config(info, ConfigCommand.Read);
    await checkData(initiator, info, target);
    const probed = await probeCommands(initiator, port, info);
    return {
      discovered: found.map(summary),
      otherSlot: otherSlot.map(summary),
      configRead: configRead === null ? null : summary(configRead),
      advertisements: initiator.advertisements.map(summary),
      ...probed,
      violations: initiator.violations.map((text) => text.replaceAll(targetMac, "TARGET")),
      wireRepairs: [...port.repairs].sort(),
    };
  } finally {
    await initiator.close();
  }
}

/**
 * Collects a child's stdout to its end; `firstLine` resolves with its first whole line, or null
 * when the output ended without one.
 */
function readOutput(stream: ReadableStream<Uint8Array>): {
  firstLine: Promise<string | null>;
  ended: Promise<void>;
} {
  let resolveLine!: (line: string | null) => void;
  const firstLine = new Promise<string | null>((resolve) => resolveLine = resolve);
  const ended = (async () => {
    let text = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      text += chunk;
      const end = text.indexOf("\n");
      if (end >= 0) resolveLine(text.slice(0, end));
    }
  })().finally(() => resolveLine(null));
  return { firstLine, ended };
}

/** Reads `lengthBytes` of `path` at `offsetBytes`. */
async function readFileRange(path: string, offsetBytes: number, lengthBytes: number) {
  using file = await Deno.open(path);
  await file.seek(offsetBytes, Deno.SeekMode.Start);
  const into = new Uint8Array(lengthBytes);
  for (let at = 0; at < lengthBytes;) {
    const read = await file.read(into.subarray(at));
    if (read === null) throw new Error(`${path} ends before ${offsetBytes + lengthBytes}`);
    at += read;
  }
  return into;
}

/** `vblade 7 3 END FILE` over a sparse 64 MiB temporary file; ready once it printed its line. */
const startVblade: StartTarget = async (lab, end) => {
  const file = await Deno.makeTempFile({ prefix: "torus-vblade-", suffix: ".img" });
  await Deno.truncate(file, DISK_BYTES).catch(async (error) => {
    await Deno.remove(file);
    throw error;
  });
  const child = lab.spawn(end.namespace, ["vblade", String(SHELF), String(SLOT), end.name, file]);
  const output = readOutput(child.stdout);
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch {
      // It had exited already.
    }
    await child.status;
    await output.ended;
    await Deno.remove(file);
  };
  // vblade prints this once its socket is open, just before it advertises and serves.
  const line = await output.firstLine;
  if (line === null || !/^pid \d+: e7\.3, 131072 sectors O_RDWR$/.test(line)) {
    await stop();
    const { code, signal } = await child.status;
    throw new Error(
      `vblade did not start: ${line ?? `no output (exit ${code}, signal ${signal})`}`,
    );
  }
  return {
    readBacking: (offsetBytes, lengthBytes) => readFileRange(file, offsetBytes, lengthBytes),
    [Symbol.asyncDispose]: stop,
  };
};

/** Our AoeTarget, in this process, over a PacketFramePort on `end`, serving a MemoryDevice. */
const startTorus: StartTarget = async (_lab, end) => {
  assert.equal(end.namespace, null, "the in-process target needs the end in this namespace");
  const device = new MemoryDevice({ sizeBytes: DISK_BYTES });
  const target = new AoeTarget({
    device,
    port: PacketFramePort.open(end.name),
    major: SHELF,
    minor: SLOT,
  });
  await target.start();
  return {
    async readBacking(offsetBytes, lengthBytes) {
      const into = new Uint8Array(lengthBytes);
      await device.readAt(offsetBytes, into);
      return into;
    },
    async [Symbol.asyncDispose]() {
      await target.stop();
      await device.close();
    },
  };
};

/** What our target answers (src/block/aoe/target.ts, identify.ts). */
const torusTarget: TargetSummary = {
  address: "e7.3",
  bufferCount: 64,
  firmwareVersion: 1,
  sectorsPerFrame: 2,
  aoeVersion: 1,
  configCommand: ConfigCommand.Read,
  configString: "",
};
const torusAnswers: Answers = {
  discovered: [torusTarget],
  otherSlot: [],
  configRead: torusTarget,
  advertisements: [torusTarget],
  violations: [],
  identify: {
    model: "torus AoE",
    serial: "torus-7.3",
    firmwareRevision: VERSION.split("-")[0]!,
    lbaSupported: true,
    lba48Supported: true,
    lba28Sectors: DISK_SECTORS,
    lba48Sectors: DISK_SECTORS,
    sectors: DISK_SECTORS,
    writeCacheSupported: true,
    writeCacheEnabled: true,
    flushCacheSupported: true,
    flushCacheExtSupported: true,
    trimSupported: false,
    integrityWordPresent: true,
  },
  // The sector count is ignored, as a disk does.
  identifyCountZero: "ok",
  registers: {
    // Successful replies echo the request's registers with status DRDY.
    identify: { status: 0x40, error: 0, sectorCount: 1, lbaAdvance: 0 },
    read48: { status: 0x40, error: 0, sectorCount: 2, lbaAdvance: 0 },
    read28: { status: 0x40, error: 0, sectorCount: 2, lbaAdvance: 0 },
    write48: { status: 0x40, error: 0, sectorCount: 1, lbaAdvance: 0 },
    checkPowerMode: { status: 0x40, error: 0, sectorCount: 0xff, lbaAdvance: 0 },
    flushCacheStatus: 0x40,
  },
  flushCache: "ok",
  flushCacheExt: "ok",
  // DRDY|ERR with IDNF|ABRT.
  readPastEnd: "ATA status 0x41 error 0x14",
  writePastEnd: "ATA status 0x41 error 0x14",
  writeReplyPadding: "zeros",
  wireRepairs: [],
};

/** What vblade 25 answers: ours, but for these differences (see the module doc). */
const vbladeTarget: TargetSummary = {
  ...torusTarget,
  // vblade's default -b.
  bufferCount: 16,
  // 0x4000 + VBLADE_VERSION.
  firmwareVersion: 0x4019,
};
const vbladeAnswers: Answers = {
  ...torusAnswers,
  discovered: [vbladeTarget],
  configRead: vbladeTarget,
  // Its advertisement's AoE header is left zero but for the R flag: version 0, which the
  // initiator refuses to record.
  advertisements: [],
  violations: ["advertisement from TARGET: AoE version 0 is not supported (only version 1)"],
  identify: {
    ...torusAnswers.identify,
    model: "Coraid EtherDrive vblade",
    // SHELF.SLOT:hostname, in the 20 characters of the serial field.
    serial: `7.3:${Deno.hostname()}`.slice(0, 20),
    firmwareRevision: "V25",
    // No write cache is claimed (vblade writes with pwrite, and syncs only with -s), FLUSH CACHE
    // is, FLUSH CACHE EXT is not, and there is no integrity word.
    writeCacheSupported: false,
    writeCacheEnabled: false,
    flushCacheExtSupported: false,
    integrityWordPresent: false,
  },
  // IDENTIFY must ask for exactly one sector, else AoE error 2 (bad argument).
  identifyCountZero: "AoE error 2",
  registers: {
    // Successful replies carry the sectors left to transfer: 0. The LBA is the request's.
    identify: { status: 0x40, error: 0, sectorCount: 0, lbaAdvance: 0 },
    read48: { status: 0x40, error: 0, sectorCount: 0, lbaAdvance: 0 },
    read28: { status: 0x40, error: 0, sectorCount: 0, lbaAdvance: 0 },
    write48: { status: 0x40, error: 0, sectorCount: 0, lbaAdvance: 0 },
    checkPowerMode: { status: 0x40, error: 0, sectorCount: 0xff, lbaAdvance: 0 },
    // FLUSH CACHE does nothing and answers status 0, without DRDY; no failure bit is set, so
    // the initiator (and Linux) take it as done.
    flushCacheStatus: 0,
  },
  // Known vblade behaviour: FLUSH CACHE EXT is not implemented and gets an ATA abort (DRDY|ERR,
  // ABRT), so the initiator's flush() fails against vblade where ours succeeds.
  flushCacheExt: "ATA status 0x41 error 0x04",
  // DRDY|ERR with IDNF alone.
  readPastEnd: "ATA status 0x41 error 0x10",
  writePastEnd: "ATA status 0x41 error 0x10",
  // The reply is the request's buffer cut to 60 bytes, so the data shows through.
  writeReplyPadding: "the first 24 bytes of the written data",
  // Replies are as long as their content (config: 32; failed read: 36); writes as above.
  wireRepairs: [
    "ATA reply of 36 bytes padded to 60",
    "config reply of 32 bytes padded to 60",
    "write reply padding of 24 bytes zeroed",
  ],
};

const vbladeName = "vblade interop: Debian's vblade exporting a file gets compatible answers for " +
  "discovery, identify, read and write";
if (hasCommand("vblade")) {
  await netnsTest(vbladeName, async (lab) => {
    assert.deepEqual(await collectAnswers(lab, startVblade), vbladeAnswers);
  });
} else {
  Deno.test({ name: `${vbladeName} (skipped: vblade not installed)`, ignore: true, fn() {} });
}

await netnsTest("vblade interop: our AoeTarget answers the same checks", async (lab) => {
  assert.deepEqual(await collectAnswers(lab, startTorus), torusAnswers);
});
