/** The AoE codec: the spec's byte layouts, round trips, and garbage that must not crash it. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../../core/mod.ts";
import { BROADCAST_MAC, ETHERNET_MIN_FRAME_BYTES } from "./port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AOE_BODY_OFFSET,
  AOE_CONFIG_STRING_OFFSET,
  AoeCommand,
  AoeError,
  type AoeHeaderInit,
  type AoeMessage,
  ATA_STATUS_FAILURE_MASK,
  AtaCommand,
  AtaFlag,
  ataLba,
  ataSectorCount,
  AtaStatus,
  ConfigCommand,
  encodeAoeFrame,
  encodeAtaFrame,
  encodeConfigFrame,
  formatMac,
  offeredSectorsPerFrame,
  parseAoeHeader,
  parseAoeRequest,
  parseAoeResponse,
  parseEthernetHeader,
  sectorsPerFrame,
} from "./protocol.ts";

const target = new Uint8Array([0x02, 0, 0, 0, 0, 0x01]);
const initiator = new Uint8Array([0x02, 0, 0, 0, 0, 0x02]);
const request: AoeHeaderInit = {
  destination: target,
  source: initiator,
  response: false,
  major: 0x1234,
  minor: 0x56,
  tag: 0xdeadbeef,
};
const reply: AoeHeaderInit = { ...request, destination: initiator, source: target, response: true };

function assertInvalid(fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(isTorusError(error, ErrorCode.Invalid), `expected invalid, got ${String(error)}`);
    if (pattern !== undefined) assert.match(error.message, pattern);
    return true;
  });
}

/** Parses `frame` with `parse`: it either returns or throws `invalid`, nothing else. */
function parsesOrInvalid(parse: (frame: Uint8Array) => AoeMessage, frame: Uint8Array): boolean {
  try {
    parse(frame);
    return true;
  } catch (error) {
    if (!isTorusError(error, ErrorCode.Invalid)) throw error;
    assert.ok(error.message.length > 10, "an invalid error says what is wrong");
    return false;
  }
}

function ataMessage(message: AoeMessage) {
  assert.equal(message.kind, "ata");
  return message as Extract<AoeMessage, { kind: "ata" }>;
}

function configMessage(message: AoeMessage) {
  assert.equal(message.kind, "config");
  return message as Extract<AoeMessage, { kind: "config" }>;
}

Deno.test("protocol: constants have the spec's values", () => {
  assert.deepEqual(Object.values(AoeError), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(Object.values(ConfigCommand), [0, 1, 2, 3, 4]);
  assert.deepEqual([AtaFlag.Lba48, AtaFlag.Device, AtaFlag.Async, AtaFlag.Write], [
    0x40,
    0x10,
    0x02,
    0x01,
  ]);
  assert.equal(ATA_STATUS_FAILURE_MASK, 0xa9, "the Linux aoe driver's check");
  assert.deepEqual([AOE_BODY_OFFSET, AOE_ATA_DATA_OFFSET, AOE_CONFIG_STRING_OFFSET], [24, 36, 32]);
});

Deno.test("protocol: sectors per frame follow the MTU (22 bytes of AoE and ATA headers)", () => {
  assert.equal(sectorsPerFrame(1500), 2, "vblade offers 2 at MTU 1500");
  assert.equal(sectorsPerFrame(9000), 17);
  assert.equal(sectorsPerFrame(22 + 512), 1);
  assert.equal(sectorsPerFrame(22 + 511), 0);
  assert.equal(sectorsPerFrame(22 + 3 * 512), 3);
  assert.equal(sectorsPerFrame(1_000_000), 255, "the config reply's count is one byte");
  assert.equal(offeredSectorsPerFrame(1500), 2, "fewer than a page: all that fits");
  assert.equal(offeredSectorsPerFrame(9000), 16, "whole pages at MTU 9000");
  assert.equal(offeredSectorsPerFrame(22 + 8 * 512), 8);
  assert.equal(offeredSectorsPerFrame(22 + 7 * 512), 7);
  assert.equal(offeredSectorsPerFrame(1_000_000), 248);
});

Deno.test("protocol: an ATA request has the spec's byte layout and round-trips", () => {
  const data = Uint8Array.from({ length: 1024 }, (_, i) => i & 0xff);
  const ata = {
    flags: AtaFlag.Lba48 | AtaFlag.Write,
    errorFeature: 0x11,
    sectorCount: 2,
    commandStatus: AtaCommand.WriteSectorsExt,
    lba: 0x0605_0403_0201,
  };
  const frame = encodeAtaFrame(request, ata, data.length, data);
  assert.equal(frame.length, 36 + 1024);
  assert.deepEqual([...frame.subarray(0, 14)], [...target, ...initiator, 0x88, 0xa2]);
  assert.deepEqual([...frame.subarray(14, 24)], [
    0x10,
    0,
    0x12,
    0x34,
    0x56,
    0,
    0xde,
    0xad,
    0xbe,
    0xef,
  ]);
  assert.deepEqual([...frame.subarray(24, 36)], [0x41, 0x11, 2, 0x34, 1, 2, 3, 4, 5, 6, 0, 0]);
  const message = ataMessage(parseAoeRequest(frame));
  assert.deepEqual(message.ata, ata);
  assert.deepEqual(message.data, data);
  assert.equal(formatMac(message.header.source), "02:00:00:00:00:02");
  assert.deepEqual(
    { ...message.header, destination: [...message.header.destination], source: undefined },
    {
      destination: [...target],
      source: undefined,
      version: 1,
      response: false,
      errorFlag: false,
      errorCode: 0,
      major: 0x1234,
      minor: 0x56,
      command: AoeCommand.Ata,
      tag: 0xdeadbeef,
    },
  );
});

Deno.test("protocol: a config frame has the spec's byte layout and round-trips", () => {
  const config = {
    bufferCount: 64,
    firmwareVersion: 0x4019,
    sectorCount: 2,
    aoeVersion: 1,
    configCommand: ConfigCommand.TestPrefix,
    configString: new TextEncoder().encode("torus"),
  };
  const frame = encodeConfigFrame(reply, config);
  assert.equal(frame.length, ETHERNET_MIN_FRAME_BYTES, "32 + 5 bytes, padded to 60");
  assert.equal(frame[14], 0x18, "version 1, R");
  assert.deepEqual([...frame.subarray(24, 37)], [
    0,
    64,
    0x40,
    0x19,
    2,
    0x12,
    0,
    5,
    116,
    111,
    114,
    117,
    115,
  ]);
  assert.ok(frame.subarray(37).every((byte) => byte === 0), "zero padding");
  const message = configMessage(parseAoeResponse(frame));
  assert.deepEqual(message.config, config);
  assert.equal(message.header.response, true);
});

Deno.test("protocol: other commands and error replies parse as such", () => {
  const other = parseAoeRequest(
    encodeAoeFrame(request, AoeCommand.MacMaskList, new Uint8Array([1, 2])),
  );
  assert.equal(other.kind, "other");
  assert.equal(other.header.command, AoeCommand.MacMaskList);
  const errorFrame = encodeAoeFrame(
    { ...reply, errorCode: AoeError.BadArgument },
    AoeCommand.Ata,
    new Uint8Array(),
  );
  assert.equal(errorFrame[14], 0x1c, "version 1, R and E");
  assert.equal(errorFrame[15], 2);
  const error = parseAoeResponse(errorFrame);
  assert.equal(error.kind, "error");
  assert.equal(error.header.errorCode, AoeError.BadArgument);
});

Deno.test("protocol: every encoded frame is at least 60 bytes, zero-padded; short requests parse", () => {
  const identify = {
    flags: 0,
    errorFeature: 0,
    sectorCount: 1,
    commandStatus: AtaCommand.IdentifyDevice,
    lba: 0,
  };
  const padded = encodeAtaFrame(request, identify);
  assert.equal(padded.length, 60);
  assert.ok(padded.subarray(36).every((byte) => byte === 0));
  const short = encodeAtaFrame(request, identify, 0, undefined, { pad: false });
  assert.equal(short.length, 36, "a Linux-style 36-byte request");
  assert.deepEqual(ataMessage(parseAoeRequest(short)).ata, identify);
  assert.equal(ataMessage(parseAoeRequest(short)).data.length, 0);
  const paddedMessage = ataMessage(parseAoeRequest(padded));
  assert.equal(paddedMessage.data.length, 24, "the padding is data the target judges");
  const queryShort = encodeConfigFrame(request, {
    bufferCount: 0,
    firmwareVersion: 0,
    sectorCount: 0,
    aoeVersion: 1,
    configCommand: ConfigCommand.Read,
    configString: new Uint8Array(),
  }, { pad: false });
  assert.equal(queryShort.length, 32);
  assert.equal(configMessage(parseAoeRequest(queryShort)).config.configString.length, 0);
  const bigger = encodeAtaFrame(request, identify, 100);
  assert.equal(bigger.length, 136, "frames longer than 60 bytes are not padded");
  assert.equal(encodeAoeFrame(reply, 9, new Uint8Array()).length, 60);
});

Deno.test("protocol: trailing padding after a config string is tolerated", () => {
  const frame = new Uint8Array(200);
  frame.set(encodeConfigFrame(request, {
    bufferCount: 1,
    firmwareVersion: 2,
    sectorCount: 3,
    aoeVersion: 1,
    configCommand: ConfigCommand.Set,
    configString: new Uint8Array([9, 8, 7]),
  }));
  assert.deepEqual([...configMessage(parseAoeRequest(frame)).config.configString], [9, 8, 7]);
});

Deno.test("protocol: a frame truncated at every length parses or throws invalid", () => {
  const frames = [
    encodeAtaFrame(
      request,
      {
        flags: AtaFlag.Write,
        errorFeature: 0,
        sectorCount: 1,
        commandStatus: AtaCommand.WriteSectors,
        lba: 5,
      },
      512,
      new Uint8Array(512).fill(7),
    ),
    encodeConfigFrame(request, {
      bufferCount: 1,
      firmwareVersion: 1,
      sectorCount: 1,
      aoeVersion: 1,
      configCommand: ConfigCommand.ForceSet,
      configString: new Uint8Array(100).fill(65),
    }),
    encodeAoeFrame(request, AoeCommand.ReserveRelease, new Uint8Array(10)),
  ];
  for (const frame of frames) {
    const command = frame[19]!;
    const needs = command === AoeCommand.Ata ? 36 : command === AoeCommand.QueryConfig ? 132 : 24;
    for (let length = 0; length <= frame.length; length++) {
      const ok = parsesOrInvalid(parseAoeRequest, frame.subarray(0, length));
      assert.equal(ok, length >= needs, `command ${command} truncated to ${length} bytes`);
    }
  }
});

Deno.test("protocol: lying and oversized length fields give a clear invalid", () => {
  const frame = encodeConfigFrame(request, {
    bufferCount: 1,
    firmwareVersion: 1,
    sectorCount: 1,
    aoeVersion: 1,
    configCommand: ConfigCommand.Set,
    configString: new Uint8Array(10),
  });
  frame[30] = 0;
  frame[31] = 29; // 28 bytes follow the header in a 60-byte frame
  assertInvalid(() => parseAoeRequest(frame), /length 29 exceeds the 28 bytes that follow/);
  frame[31] = 28;
  assert.equal(configMessage(parseAoeRequest(frame)).config.configString.length, 28);
  const big = new Uint8Array(2000);
  big.set(frame.subarray(0, 32));
  big[30] = 0x04;
  big[31] = 0x01; // 1025
  assertInvalid(() => parseAoeRequest(big), /1025 exceeds the limit of 1024/);
  big[31] = 0x00; // 1024 is allowed
  assert.equal(configMessage(parseAoeRequest(big)).config.configString.length, 1024);
  big[30] = 0xff;
  big[31] = 0xff;
  assertInvalid(() => parseAoeRequest(big), /65535/);
});

Deno.test("protocol: version, flags and EtherType are checked", () => {
  const frame = encodeAoeFrame(request, AoeCommand.QueryConfig, new Uint8Array(8));
  const withByte = (at: number, value: number) => {
    const copy = frame.slice();
    copy[at] = value;
    return copy;
  };
  assertInvalid(() => parseAoeRequest(withByte(14, 0x20)), /version 2 is not supported/);
  assertInvalid(() => parseAoeRequest(withByte(14, 0x00)), /version 0/);
  assertInvalid(() => parseAoeRequest(withByte(14, 0x18)), /response flag set/);
  assertInvalid(() => parseAoeRequest(withByte(14, 0x14)), /error flag set/);
  assertInvalid(() => parseAoeResponse(frame), /lacks the response flag/);
  assertInvalid(() => parseAoeResponse(withByte(14, 0x1c)), /no error code/);
  assertInvalid(() => parseAoeRequest(withByte(13, 0x00)), /EtherType 0x8800 is not AoE/);
  assert.equal(parseAoeHeader(withByte(14, 0x28)).version, 2, "the header alone reads any version");
  assertInvalid(() => parseEthernetHeader(new Uint8Array(13)), /shorter than its 14-byte header/);
});

const seed = testSeed();
Deno.test(`protocol: random garbage only ever parses or throws invalid (seed ${seed})`, () => {
  const random = new SeededRandom(seed);
  for (let i = 0; i < 3000; i++) {
    const frame = random.bytes(random.int(1600));
    if (random.chance(0.8) && frame.length >= 20) {
      frame[12] = 0x88;
      frame[13] = 0xa2;
      frame[14] = (1 << 4) | (frame[14]! & 0x0f);
      frame[19] = random.int(3);
      if (random.chance(0.5) && frame.length >= 32) frame[30] = random.int(6);
    }
    try {
      parsesOrInvalid(parseAoeRequest, frame);
      parsesOrInvalid(parseAoeResponse, frame);
    } catch (error) {
      throw new Error(`frame ${i}: ${String(error)}`);
    }
  }
});

Deno.test("protocol: encoders refuse fields that do not fit", () => {
  const ata = { flags: 0, errorFeature: 0, sectorCount: 0, commandStatus: 0, lba: 0 };
  assertInvalid(() => encodeAtaFrame({ ...request, major: 0x10000 }, ata), /major 65536/);
  assertInvalid(() => encodeAtaFrame({ ...request, minor: -1 }, ata), /minor -1/);
  assertInvalid(() => encodeAtaFrame({ ...request, tag: 2 ** 32 }, ata), /tag/);
  assertInvalid(() => encodeAtaFrame(request, { ...ata, lba: 2 ** 48 }), /LBA/);
  assertInvalid(() => encodeAtaFrame(request, { ...ata, sectorCount: 256 }), /sector count/);
  assertInvalid(() => encodeAtaFrame(request, ata, 1, new Uint8Array(2)), /exceeds the 1 reserved/);
  assertInvalid(
    () => encodeAtaFrame({ ...request, destination: new Uint8Array(5) }, ata),
    /destination MAC has 5 bytes/,
  );
  assertInvalid(() =>
    encodeConfigFrame(request, {
      bufferCount: 0,
      firmwareVersion: 0,
      sectorCount: 0,
      aoeVersion: 1,
      configCommand: 0,
      configString: new Uint8Array(1025),
    }), /1025 bytes exceeds/);
});

Deno.test("protocol: LBA28 ignores the device register and lba4-5; sector count 0 is the maximum", () => {
  const ata = {
    flags: 0,
    errorFeature: 0,
    sectorCount: 0,
    commandStatus: AtaCommand.ReadSectors,
    lba: 0xffff_e123_4567,
  };
  assert.equal(ataLba(ata, false), 0x0123_4567);
  assert.equal(ataLba(ata, true), 0xffff_e123_4567);
  assert.equal(ataSectorCount(ata, false), 256);
  assert.equal(ataSectorCount(ata, true), 65536);
  assert.equal(ataSectorCount({ ...ata, sectorCount: 3 }, true), 3);
});

Deno.test("protocol: encoders copy the MACs and never share the caller's buffers", () => {
  const data = new Uint8Array(512).fill(1);
  const frame = encodeAtaFrame(
    { ...request, destination: BROADCAST_MAC },
    { flags: 0, errorFeature: 0, sectorCount: 1, commandStatus: AtaStatus.DeviceReady, lba: 0 },
    512,
    data,
  );
  data.fill(2);
  assert.equal(frame[AOE_ATA_DATA_OFFSET], 1);
  const replyFrame = encodeAtaFrame(reply, {
    flags: 0,
    errorFeature: 0,
    sectorCount: 0,
    commandStatus: AtaStatus.DeviceReady,
    lba: 0,
  });
  ataMessage(parseAoeResponse(replyFrame)).header.source.fill(0);
  assert.equal(
    formatMac(replyFrame.subarray(6, 12)),
    "02:00:00:00:00:01",
    "parsed MACs are copies",
  );
});
