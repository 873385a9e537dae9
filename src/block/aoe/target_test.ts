/**
 * The AoE target, driven by the strict test initiator (and by raw frames where the initiator
 * would not send them) over in-memory ports, serving a MemoryDevice.
 */

import assert from "node:assert/strict";
import {
  assertSameBytes,
  closed,
  ErrorCode,
  isTorusError,
  type Logger,
  ManualClock,
  SeededRandom,
  testSeed,
  unavailable,
} from "../../core/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "../device.ts";
import { MemoryDevice } from "../memory_device.ts";
import { AoeCommandError, AoeInitiator, type AoeInitiatorOptions } from "./initiator.ts";
import { MemoryFramePort } from "./memory_port.ts";
import { BROADCAST_MAC } from "./port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AoeCommand,
  AoeError,
  type AoeHeaderInit,
  AtaCommand,
  AtaErrorBit,
  AtaFlag,
  AtaStatus,
  ConfigCommand,
  encodeAoeFrame,
  encodeAtaFrame,
  encodeConfigFrame,
  parseAoeResponse,
} from "./protocol.ts";
import { AoeTarget, type AoeTargetOptions } from "./target.ts";

const MiB = 1024 * 1024;
const encoder = new TextEncoder();
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

/** A logger that keeps its lines (the target's warnings are asserted, not printed). */
function recordingLog(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (message: string) => void lines.push(`${level} ${message}`);
  return {
    lines,
    error: keep("E"),
    warn: keep("W"),
    notice: keep("N"),
    info: keep("I"),
    debug: keep("D"),
    trace: keep("T"),
    enabled: () => true,
  };
}

/** A Device that counts calls, can hold writes at a gate and can fail flushes or reads. */
class CountingDevice implements Device {
  writes = 0;
  fuaWrites = 0;
  flushes = 0;
  flushError: Error | null = null;
  readError: Error | null = null;
  writeError: Error | null = null;
  #gate: Promise<void> | null = null;
  #openGate: (() => void) | null = null;

  constructor(readonly inner: MemoryDevice) {}

  /** The size reported instead of the inner device's (a volume grown while served). */
  sizeOverride: number | null = null;

  get sizeBytes(): number {
    return this.sizeOverride ?? this.inner.sizeBytes;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get preferredBlockSizeBytes(): number {
    return this.inner.preferredBlockSizeBytes;
  }

  /** Holds every write until {@link openGate}. */
  closeGate(): void {
    this.#gate = new Promise((resolve) => this.#openGate = resolve);
  }

  openGate(): void {
    this.#openGate?.();
    this.#gate = null;
  }

  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    if (this.readError !== null) return Promise.reject(this.readError);
    return this.inner.readAt(offsetBytes, into, options);
  }

  async writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions) {
    this.writes++;
    if (options?.fua === true) this.fuaWrites++;
    if (this.writeError !== null) throw this.writeError;
    const copy = data.slice();
    if (this.#gate !== null) await this.#gate;
    await this.inner.writeAt(offsetBytes, copy, options);
  }

  flush(options?: DeviceCallOptions): Promise<void> {
    this.flushes++;
    if (this.flushError !== null) return Promise.reject(this.flushError);
    return this.inner.flush(options);
  }

  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    return this.inner.trim(offsetBytes, lengthBytes, options);
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    return this.inner.writeZeroes(offsetBytes, lengthBytes, options);
  }

  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    return this.inner.extents(offsetBytes, lengthBytes);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

interface FixtureOptions {
  sizeBytes?: number;
  readOnly?: boolean;
  mtu?: number;
  target?: Partial<AoeTargetOptions>;
  initiator?: AoeInitiatorOptions;
}

/** A target e1.2 and an initiator on one memory pair. */
async function fixture(options: FixtureOptions = {}) {
  const [initiatorPort, targetPort] = MemoryFramePort.pair(
    options.mtu === undefined ? {} : { mtu: options.mtu },
  );
  const device = new CountingDevice(
    new MemoryDevice({
      sizeBytes: options.sizeBytes ?? 4 * MiB,
      readOnly: options.readOnly ?? false,
    }),
  );
  const log = recordingLog();
  const target = new AoeTarget({
    device,
    port: targetPort,
    major: 1,
    minor: 2,
    syncIntervalMs: 0,
    serial: "vol-1",
    log,
    ...options.target,
  });
  const initiator = new AoeInitiator(initiatorPort, {
    timeoutMs: 200,
    attempts: 3,
    ...options.initiator,
  });
  await target.start();
  const address = { mac: targetPort.mac, major: 1, minor: 2 };
  const info = (await initiator.config(address, ConfigCommand.Read))!;
  return {
    initiatorPort,
    targetPort,
    device,
    target,
    initiator,
    info,
    log,
    async close() {
      await target.stop().catch(() => {});
      await initiator.close();
      assert.deepEqual(initiator.violations, [], "the target never broke the protocol");
    },
  };
}

/** A target e1.2 with a bare port in front of it, for hand-made frames. */
async function rawFixture(options: Partial<AoeTargetOptions> & { sizeBytes?: number } = {}) {
  const [port, targetPort] = MemoryFramePort.pair();
  const device = new CountingDevice(new MemoryDevice({ sizeBytes: options.sizeBytes ?? MiB }));
  const log = recordingLog();
  const target = new AoeTarget({
    device,
    port: targetPort,
    major: 1,
    minor: 2,
    syncIntervalMs: 0,
    log,
    ...options,
  });
  await target.start();
  await port.receive(); // the advertisement
  const init = (tag: number, overrides: Partial<AoeHeaderInit> = {}): AoeHeaderInit => ({
    destination: targetPort.mac,
    source: port.mac,
    response: false,
    major: 1,
    minor: 2,
    tag,
    ...overrides,
  });
  return {
    port,
    targetPort,
    device,
    target,
    log,
    init,
    /** Sends `frame` and returns the next frame that comes back. */
    async exchange(frame: Uint8Array): Promise<Uint8Array> {
      await port.send(frame);
      return (await port.receive())!;
    },
    /** Sends `frame` and checks that nothing comes back. */
    async silent(frame: Uint8Array): Promise<void> {
      await port.send(frame);
      await delay(20);
      assert.equal(port.queuedFrames, 0, "no reply");
    },
    async close() {
      await target.stop().catch(() => {});
      await port.close();
    },
  };
}

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function writeFrame(init: AoeHeaderInit, lba: number, data: Uint8Array): Uint8Array {
  return encodeAtaFrame(
    init,
    {
      flags: AtaFlag.Lba48 | AtaFlag.Write,
      errorFeature: 0,
      sectorCount: data.length / 512,
      commandStatus: AtaCommand.WriteSectorsExt,
      lba,
    },
    data.length,
    data,
  );
}

function assertAoeError(code: number) {
  return (error: unknown) => {
    assert.ok(error instanceof AoeCommandError, `expected AoeCommandError, got ${String(error)}`);
    assert.equal(error.aoeError, code);
    return true;
  };
}

function assertAtaError(errorBits: number) {
  return (error: unknown) => {
    assert.ok(error instanceof AoeCommandError, `expected AoeCommandError, got ${String(error)}`);
    assert.equal(error.ataStatus, AtaStatus.DeviceReady | AtaStatus.Error);
    assert.equal(error.ataError, errorBits);
    return true;
  };
}

Deno.test("target: discovery by broadcast finds every target; each advertised itself at start", async () => {
  const [initiatorPort, portA, portB] = MemoryFramePort.segment(3);
  const initiator = new AoeInitiator(initiatorPort!, { timeoutMs: 30 });
  const devices = [new MemoryDevice({ sizeBytes: MiB }), new MemoryDevice({ sizeBytes: MiB })];
  const log = recordingLog();
  const targets = [
    new AoeTarget({
      device: devices[0]!,
      port: portA!,
      major: 3,
      minor: 4,
      syncIntervalMs: 0,
      log,
    }),
    new AoeTarget({
      device: devices[1]!,
      port: portB!,
      major: 1,
      minor: 9,
      syncIntervalMs: 0,
      configString: encoder.encode("b"),
      log,
    }),
  ];
  for (const target of targets) await target.start();
  const all = await initiator.discover();
  assert.deepEqual(all.map((t) => [t.major, t.minor, [...t.mac]]), [
    [1, 9, [...portB!.mac]],
    [3, 4, [...portA!.mac]],
  ]);
  assert.equal(text(all[0]!.configString), "b");
  assert.deepEqual([all[0]!.sectorsPerFrame, all[0]!.bufferCount, all[0]!.aoeVersion], [2, 64, 1]);
  assert.deepEqual(initiator.advertisements.map((t) => [t.major, t.minor]), [[3, 4], [1, 9]]);
  const shelf3 = await initiator.discover({ major: 3 });
  assert.deepEqual(shelf3.map((t) => [t.major, t.minor]), [[3, 4]]);
  const slot9 = await initiator.discover({ minor: 9 });
  assert.deepEqual(slot9.map((t) => [t.major, t.minor]), [[1, 9]]);
  const tested = await initiator.discover({
    command: ConfigCommand.Test,
    configString: encoder.encode("b"),
  });
  assert.deepEqual(tested.map((t) => t.major), [1], "a config test filters discovery");
  for (const target of targets) await target.stop();
  await initiator.close();
  assert.deepEqual(initiator.violations, []);
});

Deno.test("target: identify reports the model, serial, firmware and capacity", async () => {
  const f = await fixture({ sizeBytes: 3 * MiB, target: { firmwareRevision: "9.8.7" } });
  const info = await f.initiator.identify(f.info);
  assert.equal(info.model, "torus AoE");
  assert.equal(info.serial, "vol-1");
  assert.equal(info.firmwareRevision, "9.8.7");
  assert.equal(info.sectors, 3 * MiB / 512);
  assert.equal(info.lba28Sectors, 3 * MiB / 512);
  assert.ok(info.lba48Supported && info.flushCacheExtSupported && info.writeCacheEnabled);
  assert.equal(info.trimSupported, false);
  assert.equal(info.integrityWordPresent, true);
  assert.equal(await f.initiator.checkPowerMode(f.info), 0xff, "active or idle");
  await f.close();
});

const seed = testSeed();
Deno.test(`target: random data written and read back at many LBAs, LBA28 and LBA48 (seed ${seed})`, async () => {
  const sectors = 2 ** 28 + 4096; // sparse: past the LBA28 limit
  const f = await fixture({ sizeBytes: sectors * 512 });
  const random = new SeededRandom(seed);
  const lba28Max = 2 ** 28;
  const places = [0, 1, lba28Max - 40, lba28Max - 1, lba28Max, sectors - 33, sectors - 1];
  for (let i = 0; i < 30; i++) places.push(random.int(sectors - 40));
  for (const lba of places) {
    const count = Math.min(1 + random.int(33), sectors - lba);
    const fitsLba28 = lba + count <= lba28Max;
    const lba48 = !fitsLba28 || random.chance(0.5);
    const data = random.bytes(count * 512);
    await f.initiator.writeSectors(f.info, lba, data, { lba48 });
    const readBack = await f.initiator.readSectors(f.info, lba, count, {
      lba48: fitsLba28 ? !lba48 : true,
    });
    assertSameBytes(readBack, data, `${count} sectors at ${lba} (${lba48 ? 48 : 28}-bit write)`);
    const direct = new Uint8Array(count * 512);
    await f.device.readAt(lba * 512, direct);
    assertSameBytes(direct, data, `device bytes at ${lba}`);
  }
  assert.equal(f.target.stats.ataErrors + f.target.stats.aoeErrors, 0);
  await f.close();
});

Deno.test("target: many frames in flight at once, each answered", async () => {
  const f = await fixture({ sizeBytes: 8 * MiB, initiator: { framesInFlightMax: 64 } });
  const data = new SeededRandom(seed).bytes(2 * MiB);
  await f.initiator.writeSectors(f.info, 100, data);
  assertSameBytes(await f.initiator.readSectors(f.info, 100, data.length / 512), data);
  assert.equal(f.target.stats.bytesWritten, data.length);
  assert.equal(f.target.stats.bytesRead, data.length);
  assert.equal(f.target.stats.busyDropped, 0);
  await f.close();
});

Deno.test("target: FLUSH CACHE and FLUSH CACHE EXT call device.flush and reply after it", async () => {
  const f = await fixture();
  await f.initiator.flush(f.info);
  assert.equal(f.device.flushes, 1);
  await f.initiator.flush(f.info, { ext: false });
  assert.equal(f.device.flushes, 2);
  f.device.flushError = unavailable("disk gone");
  await assert.rejects(() => f.initiator.flush(f.info), assertAtaError(AtaErrorBit.Abort));
  assert.ok(f.log.lines.some((line) => /flush failed: disk gone/.test(line)));
  f.device.flushError = null;
  await f.close();
});

Deno.test("target: config string read, test, test prefix, set, force set", async () => {
  const f = await fixture({ initiator: { attempts: 1, timeoutMs: 30 } });
  const c = (command: number, value: string) =>
    f.initiator.config(f.info, command, encoder.encode(value)).then((r) =>
      r === null ? null : text(r.configString)
    );
  assert.equal(await c(ConfigCommand.Read, ""), "");
  assert.equal(await c(ConfigCommand.Test, "abc"), null, "no reply to a test that fails");
  assert.equal(await c(ConfigCommand.Set, "abc"), "abc");
  await assert.rejects(() => c(ConfigCommand.Set, "xyz"), (error: unknown) => {
    assertAoeError(AoeError.ConfigStringPresent)(error);
    return isTorusError(error, ErrorCode.Exists);
  });
  await assert.rejects(() => c(ConfigCommand.Set, "abc"), assertAoeError(4), "even the same one");
  assert.equal(await c(ConfigCommand.Read, "ignored"), "abc");
  assert.equal(await c(ConfigCommand.Test, "abc"), "abc");
  assert.equal(await c(ConfigCommand.Test, "ab"), null);
  assert.equal(await c(ConfigCommand.Test, "abcd"), null);
  assert.equal(await c(ConfigCommand.TestPrefix, "ab"), "abc");
  assert.equal(await c(ConfigCommand.TestPrefix, ""), "abc");
  assert.equal(await c(ConfigCommand.TestPrefix, "abc"), "abc");
  assert.equal(await c(ConfigCommand.TestPrefix, "abd"), null);
  assert.equal(await c(ConfigCommand.TestPrefix, "abcd"), null);
  assert.equal(await c(ConfigCommand.ForceSet, "xyz"), "xyz");
  assert.equal(text(f.target.configString), "xyz");
  assert.equal(await c(ConfigCommand.ForceSet, ""), "");
  assert.equal(await c(ConfigCommand.Set, "new"), "new", "set works again once empty");
  await assert.rejects(() => c(7, ""), assertAoeError(AoeError.BadArgument));
  const long = "x".repeat(1024);
  assert.equal(await c(ConfigCommand.ForceSet, long), long);
  await f.close();
});

Deno.test("target: the initial config string comes from the options and is copied", async () => {
  const initial = encoder.encode("rack-7");
  const f = await fixture({ target: { configString: initial } });
  initial.fill(0);
  assert.equal(text(f.info.configString), "rack-7");
  await f.close();
});

Deno.test("target: frames for another shelf, slot or MAC are ignored", async () => {
  const f = await fixture({ initiator: { attempts: 1, timeoutMs: 30 } });
  const ignoredBefore = f.target.stats.ignored;
  for (
    const address of [
      { ...f.info, minor: 3 },
      { ...f.info, major: 2 },
      { ...f.info, mac: new Uint8Array([2, 9, 9, 9, 9, 9]) },
    ]
  ) {
    await assert.rejects(
      () => f.initiator.config(address, ConfigCommand.Read),
      (error: unknown) => isTorusError(error, ErrorCode.Unavailable),
    );
  }
  assert.equal(f.target.stats.ignored - ignoredBefore, 3);
  await f.close();
});

Deno.test("target: ATA commands to the broadcast shelf or slot are ignored", async () => {
  const r = await rawFixture();
  const identify = {
    flags: 0,
    errorFeature: 0,
    sectorCount: 1,
    commandStatus: AtaCommand.IdentifyDevice,
    lba: 0,
  };
  await r.silent(encodeAtaFrame(r.init(1, { major: 0xffff }), identify));
  await r.silent(encodeAtaFrame(r.init(2, { minor: 0xff, destination: BROADCAST_MAC }), identify));
  const reply = parseAoeResponse(await r.exchange(encodeAtaFrame(r.init(3), identify)));
  assert.equal(reply.kind, "ata");
  await r.close();
});

Deno.test("target: an unknown ATA command gets an ATA abort", async () => {
  const f = await fixture();
  for (const command of [0x00, 0x25, 0x99, 0xc8, 0xef]) {
    const reply = await f.initiator.ata(f.info, { command });
    assert.equal(
      reply.status,
      AtaStatus.DeviceReady | AtaStatus.Error,
      `command 0x${command.toString(16)}`,
    );
    assert.equal(reply.error, AtaErrorBit.Abort);
  }
  assert.equal(f.target.stats.ataErrors, 5);
  await f.close();
});

Deno.test("target: more sectors than fit the MTU are a bad argument", async () => {
  for (const [mtu, fit] of [[1500, 2], [9000, 16]] as const) {
    const f = await fixture({ mtu });
    assert.equal(f.info.sectorsPerFrame, fit);
    const read = (sectorCount: number) =>
      f.initiator.ata(f.info, {
        command: AtaCommand.ReadSectorsExt,
        flags: AtaFlag.Lba48,
        sectorCount,
        replyDataBytes: sectorCount * 512,
      });
    assert.equal((await read(fit)).data.length, fit * 512);
    await assert.rejects(() => read(fit + 1), assertAoeError(AoeError.BadArgument));
    await assert.rejects(() => read(0), assertAoeError(AoeError.BadArgument), "0 means 65536");
    await f.close();
  }
});

Deno.test("target: a range past the end gets ATA ID-not-found; the last sector works", async () => {
  const f = await fixture({ sizeBytes: MiB });
  const last = MiB / 512 - 1;
  await f.initiator.writeSectors(f.info, last, new Uint8Array(512).fill(9));
  assert.equal((await f.initiator.readSectors(f.info, last, 1))[0], 9);
  const idnf = AtaErrorBit.IdNotFound | AtaErrorBit.Abort;
  await assert.rejects(() => f.initiator.readSectors(f.info, last, 2), (error: unknown) => {
    assertAtaError(idnf)(error);
    return isTorusError(error, ErrorCode.Invalid);
  });
  await assert.rejects(
    () => f.initiator.writeSectors(f.info, last + 1, new Uint8Array(512)),
    assertAtaError(idnf),
  );
  await assert.rejects(() => f.initiator.readSectors(f.info, 2 ** 40, 1), assertAtaError(idnf));
  await assert.rejects(
    () => f.initiator.readSectors(f.info, last + 1, 1, { lba48: false }),
    assertAtaError(idnf),
  );
  assert.equal(f.device.writes, 1, "nothing past the end reached the device");
  await f.close();
});

Deno.test("target: a write to a read-only device gets an ATA abort; reads work", async () => {
  const f = await fixture({ readOnly: true });
  await assert.rejects(
    () => f.initiator.writeSectors(f.info, 0, new Uint8Array(1024)),
    assertAtaError(AtaErrorBit.Abort),
  );
  assert.equal(f.device.writes, 0, "refused before it reached the device");
  assert.deepEqual(await f.initiator.readSectors(f.info, 0, 2), new Uint8Array(1024));
  await f.initiator.flush(f.info);
  await f.close();
});

Deno.test("target: device errors become ATA aborts, a closed device AoE error 3", async () => {
  const f = await fixture();
  f.device.readError = unavailable("block missing");
  await assert.rejects(
    () => f.initiator.readSectors(f.info, 0, 1),
    assertAtaError(AtaErrorBit.Abort),
  );
  f.device.readError = new Error("not a TorusError");
  await assert.rejects(
    () => f.initiator.readSectors(f.info, 0, 1),
    assertAtaError(AtaErrorBit.Abort),
  );
  f.device.readError = null;
  f.device.writeError = closed("device closed");
  await assert.rejects(
    () => f.initiator.writeSectors(f.info, 0, new Uint8Array(512)),
    (error: unknown) => {
      assertAoeError(AoeError.DeviceUnavailable)(error);
      return isTorusError(error, ErrorCode.Unavailable);
    },
  );
  f.device.writeError = null;
  assert.ok(f.log.lines.some((line) => /^W .*read failed: block missing/.test(line)));
  await f.close();
});

Deno.test("target: READ/WRITE whose flags disagree with the command or data are bad arguments", async () => {
  const f = await fixture();
  const attempts: [string, Parameters<AoeInitiator["ata"]>[1]][] = [
    ["EXT command without the E flag", { command: AtaCommand.ReadSectorsExt, sectorCount: 1 }],
    ["E flag on a 28-bit command", {
      command: AtaCommand.ReadSectors,
      flags: AtaFlag.Lba48,
      sectorCount: 1,
    }],
    ["W flag on a read", {
      command: AtaCommand.ReadSectorsExt,
      flags: AtaFlag.Lba48 | AtaFlag.Write,
      sectorCount: 1,
    }],
    ["write without the W flag", {
      command: AtaCommand.WriteSectorsExt,
      flags: AtaFlag.Lba48,
      sectorCount: 1,
      data: new Uint8Array(512),
    }],
    ["write data shorter than the count", {
      command: AtaCommand.WriteSectorsExt,
      flags: AtaFlag.Lba48 | AtaFlag.Write,
      sectorCount: 2,
      data: new Uint8Array(512),
    }],
    ["write data longer than the count", {
      command: AtaCommand.WriteSectorsExt,
      flags: AtaFlag.Lba48 | AtaFlag.Write,
      sectorCount: 1,
      data: new Uint8Array(1024),
    }],
    ["a read carrying data", {
      command: AtaCommand.ReadSectorsExt,
      flags: AtaFlag.Lba48,
      sectorCount: 1,
      data: new Uint8Array(512),
    }],
  ];
  for (const [what, fields] of attempts) {
    await assert.rejects(
      () => f.initiator.ata(f.info, fields),
      assertAoeError(AoeError.BadArgument),
      what,
    );
  }
  assert.equal(f.device.writes, 0);
  await f.close();
});

Deno.test("target: short requests (32 and 36 bytes, as Linux sends) are served", async () => {
  const r = await rawFixture({ sizeBytes: 2 * MiB });
  const identify = encodeAtaFrame(
    r.init(7),
    {
      flags: 0,
      errorFeature: 0,
      sectorCount: 1,
      commandStatus: AtaCommand.IdentifyDevice,
      lba: 0xa0 * 2 ** 24,
    },
    0,
    undefined,
    { pad: false },
  );
  assert.equal(identify.length, 36);
  const reply = await r.exchange(identify);
  assert.equal(reply.length, AOE_ATA_DATA_OFFSET + 512);
  assert.deepEqual([...reply.subarray(0, 6)], [...r.port.mac], "to the requester");
  assert.deepEqual([...reply.subarray(6, 12)], [...r.targetPort.mac], "from the target");
  assert.equal(reply[14], 0x18, "version 1, response");
  assert.deepEqual([...reply.subarray(20, 24)], [0, 0, 0, 7], "the request's tag");
  assert.equal(reply[27], AtaStatus.DeviceReady);
  const query = encodeConfigFrame(r.init(8), {
    bufferCount: 0,
    firmwareVersion: 0,
    sectorCount: 0,
    aoeVersion: 1,
    configCommand: ConfigCommand.Read,
    configString: new Uint8Array(),
  }, { pad: false });
  assert.equal(query.length, 32);
  const configReply = await r.exchange(query);
  assert.equal(configReply.length, 60);
  assert.equal(parseAoeResponse(configReply).kind, "config");
  await r.close();
});

Deno.test("target: every reply is at least 60 bytes, padded with zeros", async () => {
  const f = await fixture({ initiator: { attempts: 1, timeoutMs: 30 } });
  const lengths: number[] = [];
  f.targetPort.sendFilter = (frame) => {
    lengths.push(frame.length);
    return [frame];
  };
  await f.initiator.config(f.info, ConfigCommand.Read);
  await f.initiator.config(f.info, ConfigCommand.ForceSet, encoder.encode("ab"));
  await f.initiator.config(f.info, ConfigCommand.Set, encoder.encode("x")).catch(() => {});
  await f.initiator.writeSectors(f.info, 0, new Uint8Array(512));
  await f.initiator.readSectors(f.info, 0, 1);
  await f.initiator.flush(f.info);
  await f.initiator.checkPowerMode(f.info);
  await f.initiator.ata(f.info, { command: 0x99 });
  await f.initiator.readSectors(f.info, 1 << 30, 1).catch(() => {});
  await f.initiator.ata(f.info, { command: AtaCommand.ReadSectors, sectorCount: 9 }).catch(
    () => {},
  );
  assert.equal(lengths.length, 10);
  assert.ok(lengths.every((length) => length >= 60), `reply lengths ${lengths}`);
  assert.deepEqual(f.initiator.violations, [], "the initiator checked the padding of each");
  await f.close();
});

Deno.test("target: a duplicated write frame is applied once, answered twice", async () => {
  const f = await fixture();
  f.initiatorPort.sendFilter = (frame) =>
    frame[27] === AtaCommand.WriteSectorsExt ? [frame, frame] : [frame];
  const data = new SeededRandom(seed).bytes(10 * 1024);
  await f.initiator.writeSectors(f.info, 8, data);
  await delay(10);
  assert.equal(f.device.writes, 10, "ten frames, each applied once");
  assert.equal(f.target.stats.duplicates, 10);
  assert.equal(f.initiator.stats.duplicateReplies, 10, "the copies were answered too");
  assertSameBytes(await f.initiator.readSectors(f.info, 8, 20), data);
  await f.close();
});

Deno.test("target: a duplicate arriving while the first write is in flight waits for its reply", async () => {
  const r = await rawFixture();
  r.device.closeGate();
  const frame = writeFrame(r.init(77), 4, new Uint8Array(512).fill(3));
  await r.port.send(frame);
  await r.port.send(frame);
  await delay(10);
  assert.equal(r.port.queuedFrames, 0, "no reply while the write is held");
  assert.equal(r.target.stats.duplicates, 1);
  r.device.openGate();
  const replies = [(await r.port.receive())!, (await r.port.receive())!];
  assertSameBytes(replies[0]!, replies[1]!);
  assert.equal(replies[0]![27], AtaStatus.DeviceReady);
  assert.equal(r.device.writes, 1);
  await r.close();
});

Deno.test("target: the same tag with other bytes, or after the window, is applied again", async () => {
  const clock = new ManualClock(1_000);
  const r = await rawFixture({ clock, duplicateWindowMs: 1_000 });
  await r.exchange(writeFrame(r.init(5), 0, new Uint8Array(512).fill(1)));
  await r.exchange(writeFrame(r.init(5), 0, new Uint8Array(512).fill(2)));
  assert.equal(r.device.writes, 2, "a different request that reuses a tag is new");
  await r.exchange(writeFrame(r.init(5), 0, new Uint8Array(512).fill(2)));
  assert.equal(r.device.writes, 2, "a retransmission is not");
  await clock.advance(1_001);
  await r.exchange(writeFrame(r.init(5), 0, new Uint8Array(512).fill(2)));
  assert.equal(r.device.writes, 3, "after the window the tag is free again");
  const otherSource = r.init(5, { source: new Uint8Array([2, 1, 1, 1, 1, 1]) });
  await r.port.send(writeFrame(otherSource, 0, new Uint8Array(512).fill(2)));
  await delay(10);
  assert.equal(r.device.writes, 4, "tags are per initiator MAC");
  await r.close();
});

Deno.test("target: the reply cache is bounded, oldest out", async () => {
  const r = await rawFixture({ replyCacheEntries: 2 });
  for (const tag of [1, 2, 3]) await r.exchange(writeFrame(r.init(tag), tag, new Uint8Array(512)));
  await r.exchange(writeFrame(r.init(3), 3, new Uint8Array(512)));
  await r.exchange(writeFrame(r.init(2), 2, new Uint8Array(512)));
  assert.equal(r.device.writes, 3, "tags 2 and 3 are remembered");
  await r.exchange(writeFrame(r.init(1), 1, new Uint8Array(512)));
  assert.equal(r.device.writes, 4, "tag 1 was pushed out");
  await r.close();
});

Deno.test("target: a lost reply is retransmitted by the initiator and answered from the cache", async () => {
  const f = await fixture({ initiator: { timeoutMs: 40 } });
  let dropped = 0;
  f.targetPort.sendFilter = (frame) => {
    const isWriteReply = frame[27] === AtaStatus.DeviceReady && (frame[24]! & AtaFlag.Write) !== 0;
    if (isWriteReply && dropped === 0) {
      dropped++;
      return [];
    }
    return [frame];
  };
  await f.initiator.writeSectors(f.info, 3, new Uint8Array(512).fill(5));
  assert.equal(dropped, 1);
  assert.equal(f.initiator.stats.retransmits, 1);
  assert.equal(f.target.stats.duplicates, 1);
  assert.equal(f.device.writes, 1, "applied once");
  assert.equal((await f.initiator.readSectors(f.info, 3, 1))[0], 5);
  await f.close();
});

Deno.test("target: a lost request is retransmitted by the initiator and applied once", async () => {
  const f = await fixture({ initiator: { timeoutMs: 40 } });
  let dropped = 0;
  f.initiatorPort.sendFilter = (frame) =>
    frame[27] === AtaCommand.WriteSectorsExt && dropped++ === 0 ? [] : [frame];
  await f.initiator.writeSectors(f.info, 3, new Uint8Array(512).fill(6));
  assert.equal(f.initiator.stats.retransmits, 1);
  assert.equal(f.target.stats.duplicates, 0);
  assert.equal(f.device.writes, 1);
  await f.close();
});

Deno.test("target: requests beyond the buffer count are dropped and counted", async () => {
  const r = await rawFixture({ bufferCount: 2 });
  r.device.closeGate();
  for (const tag of [1, 2, 3, 4]) {
    await r.port.send(writeFrame(r.init(tag), tag, new Uint8Array(512)));
  }
  await delay(10);
  assert.equal(r.target.stats.busyDropped, 2);
  r.device.openGate();
  await r.port.receive();
  await r.port.receive();
  assert.equal(r.device.writes, 2);
  await r.exchange(writeFrame(r.init(3), 3, new Uint8Array(512)));
  assert.equal(r.device.writes, 3, "a dropped request's retransmission is served");
  await r.close();
});

Deno.test("target: the periodic sync flushes only after writes, and survives a failed flush", async () => {
  const clock = new ManualClock();
  const f = await fixture({ target: { clock, syncIntervalMs: 5_000 } });
  await clock.advance(5_000);
  assert.equal(f.device.flushes, 0, "nothing written, nothing to flush");
  await f.initiator.writeSectors(f.info, 0, new Uint8Array(512));
  await clock.advance(4_999);
  assert.equal(f.device.flushes, 0);
  await clock.advance(1);
  assert.equal(f.device.flushes, 1);
  await clock.advance(5_000);
  assert.equal(f.device.flushes, 1, "no writes since");
  await f.initiator.writeSectors(f.info, 0, new Uint8Array(512));
  f.device.flushError = unavailable("store down");
  await clock.advance(5_000);
  assert.equal(f.device.flushes, 2);
  assert.equal(f.target.stats.syncFailures, 1);
  assert.ok(f.log.lines.some((line) => /^W .*periodic flush failed: store down/.test(line)));
  assert.equal((await f.initiator.readSectors(f.info, 0, 1)).length, 512, "still serving");
  f.device.flushError = null;
  await clock.advance(5_000);
  assert.equal(f.device.flushes, 3, "the failed flush is tried again");
  assert.equal(f.target.stats.flushes, 2);
  await f.initiator.flush(f.info);
  await f.initiator.writeSectors(f.info, 0, new Uint8Array(512));
  await f.initiator.flush(f.info);
  await clock.advance(5_000);
  assert.equal(f.device.flushes, 5, "an ATA flush covers the writes before it");
  await f.close();
});

Deno.test("target: syncIntervalMs 0 turns the periodic sync off", async () => {
  const clock = new ManualClock();
  const f = await fixture({ target: { clock, syncIntervalMs: 0 } });
  await f.initiator.writeSectors(f.info, 0, new Uint8Array(512));
  assert.equal(clock.pendingSleepers, 0);
  await clock.advance(60_000);
  assert.equal(f.device.flushes, 0);
  await f.close();
});

Deno.test("target: stop() waits for requests in flight, flushes, then closes the port", async () => {
  const f = await fixture();
  f.device.closeGate();
  const writing = f.initiator.writeSectors(f.info, 0, new Uint8Array(512).fill(4));
  await delay(10);
  let stopped = false;
  const stopping = f.target.stop().then(() => stopped = true);
  await delay(10);
  assert.equal(stopped, false, "stop waits for the write");
  assert.equal(f.device.flushes, 0);
  f.device.openGate();
  await writing;
  await stopping;
  assert.equal(f.device.flushes, 1, "one last flush");
  await assert.rejects(
    () => f.initiator.config(f.info, ConfigCommand.Read, undefined, { attempts: 1, timeoutMs: 20 }),
    (error: unknown) => isTorusError(error, ErrorCode.Unavailable),
  );
  await f.target.stop(); // idempotent
  assert.equal(f.device.flushes, 1);
  await f.close();
});

Deno.test("target: stop() rejects when its flush fails, with the port closed anyway", async () => {
  const f = await fixture();
  f.device.flushError = unavailable("flush refused");
  await assert.rejects(() => f.target.stop(), /flush refused/);
  assert.equal(await f.targetPort.receive(), null, "the port is closed");
  await f.close();
});

Deno.test("target: garbage is counted as malformed and the target keeps serving", async () => {
  const r = await rawFixture();
  const random = new SeededRandom(seed);
  for (let i = 0; i < 200; i++) {
    const frame = random.bytes(random.int(100));
    if (frame.length >= 20 && random.chance(0.7)) {
      // Addressed to this target, version 1, no flags: the parser has to look at the body.
      frame.set(r.targetPort.mac, 0);
      frame.set([0x88, 0xa2, 0x10, 0, 0, 1, 2, random.int(3)], 12);
    }
    r.targetPort.inject(frame);
  }
  r.targetPort.inject(new Uint8Array(60).fill(0x45)); // not AoE
  await delay(20);
  const stats = r.target.stats;
  assert.equal(stats.framesReceived, 201);
  assert.ok(stats.malformed > 20, `${stats.malformed} malformed`);
  assert.ok(stats.ignored >= 1, "the frame of another EtherType");
  while (r.port.queuedFrames > 0) parseAoeResponse((await r.port.receive())!); // replies parse
  const reply = parseAoeResponse(
    await r.exchange(encodeAtaFrame(r.init(1), {
      flags: 0,
      errorFeature: 0,
      sectorCount: 1,
      commandStatus: AtaCommand.CheckPowerMode,
      lba: 0,
    })),
  );
  assert.equal(reply.kind, "ata");
  await r.close();
});

Deno.test("target: a malformed request addressed to it gets AoE error 2, a bad version error 5", async () => {
  const r = await rawFixture();
  const truncated = encodeAtaFrame(
    r.init(9),
    {
      flags: 0,
      errorFeature: 0,
      sectorCount: 1,
      commandStatus: AtaCommand.IdentifyDevice,
      lba: 0,
    },
    0,
    undefined,
    { pad: false },
  ).subarray(0, 30);
  const badArgument = parseAoeResponse(await r.exchange(truncated));
  assert.equal(badArgument.kind, "error");
  assert.equal(badArgument.header.errorCode, AoeError.BadArgument);
  assert.equal(badArgument.header.tag, 9);
  const version2 = encodeAoeFrame(r.init(10), AoeCommand.QueryConfig, new Uint8Array(8));
  version2[14] = 0x20;
  const unsupported = await r.exchange(version2);
  assert.equal(unsupported[15], AoeError.UnsupportedVersion);
  assert.equal(unsupported[14]! & 0x0c, 0x0c, "R and E set");
  // Truncated as well, but sent to the broadcast shelf: no answer.
  await r.silent(
    encodeAoeFrame(r.init(11, { major: 0xffff }), 0, new Uint8Array(2), { pad: false }),
  );
  const response = encodeAoeFrame(
    { ...r.init(12), response: true },
    AoeCommand.QueryConfig,
    new Uint8Array(8),
  );
  await r.silent(response);
  assert.equal(r.target.stats.malformed, 3);
  await r.close();
});

Deno.test("target: other AoE commands get 'unrecognized command'", async () => {
  const r = await rawFixture();
  for (const command of [AoeCommand.MacMaskList, AoeCommand.ReserveRelease, 0xf0]) {
    const reply = parseAoeResponse(
      await r.exchange(encodeAoeFrame(r.init(command), command, new Uint8Array(4))),
    );
    assert.equal(reply.kind, "error");
    assert.equal(reply.header.errorCode, AoeError.UnrecognizedCommand);
    assert.equal(reply.header.command, command);
  }
  await r.close();
});

Deno.test("target: a config set retransmitted after it applied is not refused", async () => {
  const r = await rawFixture();
  const set = encodeConfigFrame(r.init(40), {
    bufferCount: 0,
    firmwareVersion: 0,
    sectorCount: 0,
    aoeVersion: 1,
    configCommand: ConfigCommand.Set,
    configString: encoder.encode("once"),
  });
  const first = await r.exchange(set);
  const second = await r.exchange(set);
  assertSameBytes(second, first);
  assert.equal(second[14]! & 0x04, 0, "no error flag on the retransmission's reply");
  await r.close();
});

Deno.test("target: a config string longer than a reply at our MTU carries is refused", async () => {
  const [port, targetPort] = MemoryFramePort.pair({ mtu: 600 });
  const target = new AoeTarget({
    device: new MemoryDevice({ sizeBytes: MiB }),
    port: targetPort,
    major: 1,
    minor: 2,
    syncIntervalMs: 0,
    log: recordingLog(),
  });
  await target.start();
  await port.receive(); // the advertisement
  const set = (length: number) =>
    encodeConfigFrame({
      destination: targetPort.mac,
      source: port.mac,
      response: false,
      major: 1,
      minor: 2,
      tag: length,
    }, {
      bufferCount: 0,
      firmwareVersion: 0,
      sectorCount: 0,
      aoeVersion: 1,
      configCommand: ConfigCommand.ForceSet,
      configString: new Uint8Array(length).fill(0x61),
    });
  targetPort.inject(set(583)); // 32 + 583 bytes > 600 + 14: a bigger peer MTU could send it
  const refused = parseAoeResponse((await port.receive())!);
  assert.equal(refused.kind, "error");
  assert.equal(refused.header.errorCode, AoeError.BadArgument);
  targetPort.inject(set(582));
  assert.equal((await port.receive())!.length, 614, "the longest reply the MTU allows");
  assert.equal(target.configString.length, 582);
  await target.stop();
  await port.close();
});

Deno.test("target: options out of range are refused", () => {
  const device = new MemoryDevice({ sizeBytes: MiB });
  const [port] = MemoryFramePort.pair();
  const small = MemoryFramePort.pair({ mtu: 533 })[0];
  const bad: Partial<AoeTargetOptions>[] = [
    { major: 0xffff },
    { minor: 0xff },
    { major: -1 },
    { bufferCount: 0 },
    { bufferCount: 0x10000 },
    { configString: new Uint8Array(1025) },
    { port: small },
    { syncIntervalMs: -1 },
  ];
  for (const options of bad) {
    assert.throws(
      () => new AoeTarget({ device, port: port!, major: 1, minor: 1, ...options }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
      JSON.stringify(Object.keys(options)),
    );
  }
});

Deno.test("target: start twice is refused", async () => {
  const f = await fixture();
  await assert.rejects(
    () => f.target.start(),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid),
  );
  await f.close();
});

Deno.test("AoE target: a link closed under it resolves failed (the owner exits); stop never does", async () => {
  const f = await fixture();
  const pending = Symbol("pending");
  const within = <T>(promise: Promise<T>, ms: number) =>
    Promise.race([promise, new Promise<typeof pending>((r) => setTimeout(() => r(pending), ms))]);
  assert.equal(await within(f.target.failed, 50), pending, "serving: not failed");
  await f.targetPort.close();
  const why = await within(f.target.failed, 2_000);
  assert.ok(why instanceof Error, "the link closed: failed resolves");
  assert.match(why.message, /was closed/);
  await f.close();

  const g = await fixture();
  await g.close();
  assert.equal(await within(g.target.failed, 50), pending, "stopped: never failed");
});

Deno.test("AoE target: write-through answers each write once durable (FUA), IDENTIFY says no write cache", async () => {
  for (const writeThrough of [false, true]) {
    const f = await fixture({ target: { writeThrough } });
    try {
      const address = { mac: f.targetPort.mac, major: 1, minor: 2 };
      const identity = await f.initiator.identify(address);
      assert.equal(identity.writeCacheSupported, true);
      assert.equal(identity.writeCacheEnabled, !writeThrough, `writeThrough ${writeThrough}`);
      await f.initiator.writeSectors(f.info, 8, new Uint8Array(4 * 512).fill(9));
      assert.equal(f.device.writes, 2, "two frames of two sectors");
      assert.equal(f.device.fuaWrites, writeThrough ? 2 : 0, `writeThrough ${writeThrough}`);
    } finally {
      await f.close();
    }
  }
});

Deno.test("AoE target: a device grown while served shows its new size at the next IDENTIFY", async () => {
  const f = await fixture({ sizeBytes: 8 * MiB });
  try {
    const address = { mac: f.targetPort.mac, major: 1, minor: 2 };
    f.device.sizeOverride = 4 * MiB;
    assert.equal((await f.initiator.identify(address)).lba48Sectors, (4 * MiB) / 512);
    const beyond = (4 * MiB) / 512;
    await assert.rejects(
      f.initiator.writeSectors(f.info, beyond, new Uint8Array(512).fill(1)),
      "past the end before the growth",
    );
    f.device.sizeOverride = 8 * MiB;
    assert.equal((await f.initiator.identify(address)).lba48Sectors, (8 * MiB) / 512);
    await f.initiator.writeSectors(f.info, beyond, new Uint8Array(512).fill(1));
    const back = await f.initiator.readSectors(f.info, beyond, 1);
    assert.deepEqual(back, new Uint8Array(512).fill(1));
  } finally {
    await f.close();
  }
});
