/**
 * The test initiator's strictness, against a fake target that answers by hand: every rule a reply
 * must keep, retransmission with the same tag, and how frames of a transfer are split and paced.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../core/mod.ts";
import { AoeCommandError, AoeInitiator, type AoeTargetInfo } from "./initiator.ts";
import { MemoryFramePort } from "./memory_port.ts";
import { BROADCAST_MAC } from "./port.ts";
import {
  AoeError,
  type AoeHeaderInit,
  type AoeMessage,
  AtaStatus,
  ConfigCommand,
  encodeAoeFrame,
  encodeAtaFrame,
  encodeConfigFrame,
  parseAoeRequest,
} from "./protocol.ts";

type AtaRequest = Extract<AoeMessage, { kind: "ata" }>;

/** An initiator and a bare port standing for the target e5.6. */
function setup(timeoutMs = 100, attempts = 2) {
  const [initiatorPort, targetPort] = MemoryFramePort.pair();
  const initiator = new AoeInitiator(initiatorPort, { timeoutMs, attempts });
  const target: AoeTargetInfo = {
    mac: targetPort.mac,
    major: 5,
    minor: 6,
    bufferCount: 8,
    firmwareVersion: 1,
    sectorsPerFrame: 2,
    aoeVersion: 1,
    configCommand: 0,
    configString: new Uint8Array(),
  };
  /** The reply header for `request`, as a correct target would send it. */
  const replyTo = (request: AoeMessage, overrides: Partial<AoeHeaderInit> = {}): AoeHeaderInit => ({
    destination: request.header.source,
    source: targetPort.mac,
    response: true,
    major: 5,
    minor: 6,
    tag: request.header.tag,
    ...overrides,
  });
  const nextRequest = async () => parseAoeRequest((await targetPort.receive())!);
  /** Answers the next ATA request with a successful reply built by `build`. */
  const answerAta = async (
    build: (request: AtaRequest) => Uint8Array = (request) =>
      encodeAtaFrame(replyTo(request), { ...request.ata, commandStatus: AtaStatus.DeviceReady }),
  ) => {
    const request = (await nextRequest()) as AtaRequest;
    await targetPort.send(build(request));
    return request;
  };
  return { initiatorPort, targetPort, initiator, target, replyTo, nextRequest, answerAta };
}

const invalidWith = (pattern: RegExp) => (error: unknown) =>
  isTorusError(error, ErrorCode.Invalid) && pattern.test(error.message);

Deno.test("initiator: a reply shorter than 60 bytes fails the call", async () => {
  const s = setup();
  const call = s.initiator.checkPowerMode(s.target);
  await s.answerAta((request) =>
    encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 }, 0, undefined, {
      pad: false,
    })
  );
  await assert.rejects(call, invalidWith(/36 bytes, shorter than the 60-byte minimum/));
  await s.initiator.close();
});

Deno.test("initiator: padding must be zeros, and a reply no longer than its content", async () => {
  const s = setup();
  const dirty = s.initiator.flush(s.target);
  await s.answerAta((request) => {
    const frame = encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 });
    frame[59] = 1;
    return frame;
  });
  await assert.rejects(dirty, invalidWith(/non-zero padding at byte 59/));
  const long = s.initiator.flush(s.target);
  await s.answerAta((request) =>
    encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 }, 100)
  );
  await assert.rejects(long, invalidWith(/136 bytes, expected 60/));
  await s.initiator.close();
});

Deno.test("initiator: a read reply must carry exactly the sectors asked for", async () => {
  const s = setup();
  const call = s.initiator.readSectors(s.target, 0, 2);
  await s.answerAta((request) =>
    encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 }, 512)
  );
  await assert.rejects(call, invalidWith(/548 bytes, expected 1060/));
  await s.initiator.close();
});

Deno.test("initiator: a reply from another MAC, shelf, slot or for another command fails", async () => {
  const s = setup();
  const cases: [Partial<AoeHeaderInit>, RegExp][] = [
    [{ source: new Uint8Array([2, 7, 7, 7, 7, 7]) }, /comes from a MAC other than/],
    [{ major: 4 }, /is from e4.6, not e5.6/],
    [{ minor: 7 }, /is from e5.7, not e5.6/],
    [{ minor: 0xff }, /claims the broadcast shelf or slot/],
  ];
  for (const [overrides, pattern] of cases) {
    const call = s.initiator.checkPowerMode(s.target);
    await s.answerAta((request) =>
      encodeAtaFrame(s.replyTo(request, overrides), { ...request.ata, commandStatus: 0x40 })
    );
    await assert.rejects(call, invalidWith(pattern));
  }
  const call = s.initiator.checkPowerMode(s.target);
  await s.answerAta((request) =>
    encodeConfigFrame(s.replyTo(request), {
      bufferCount: 1,
      firmwareVersion: 1,
      sectorCount: 2,
      aoeVersion: 1,
      configCommand: 0,
      configString: new Uint8Array(),
    })
  );
  await assert.rejects(call, invalidWith(/is for command 1, not 0/));
  await s.initiator.close();
});

Deno.test("initiator: a reply without the R flag fails the call", async () => {
  const s = setup();
  const call = s.initiator.checkPowerMode(s.target);
  await s.answerAta((request) =>
    encodeAtaFrame(s.replyTo(request, { response: false }), { ...request.ata, commandStatus: 0x40 })
  );
  await assert.rejects(call, invalidWith(/lacks the R flag/));
  await s.initiator.close();
});

Deno.test("initiator: an unsolicited reply is a violation that fails every call in flight", async () => {
  const s = setup();
  const call = s.initiator.checkPowerMode(s.target);
  const request = await s.nextRequest();
  await s.targetPort.send(
    encodeAtaFrame(s.replyTo(request, { tag: (request.header.tag + 1000) >>> 0 }), {
      flags: 0,
      errorFeature: 0,
      sectorCount: 0,
      commandStatus: 0x40,
      lba: 0,
    }),
  );
  await assert.rejects(call, invalidWith(/unsolicited reply with tag/));
  assert.equal(s.initiator.violations.length, 1);
  await s.initiator.close();
});

Deno.test("initiator: AoE error replies fail with the code; an error flag needs a code", async () => {
  const s = setup();
  const expected: [number, ErrorCode][] = [
    [AoeError.UnrecognizedCommand, ErrorCode.NotSupported],
    [AoeError.BadArgument, ErrorCode.Invalid],
    [AoeError.DeviceUnavailable, ErrorCode.Unavailable],
    [AoeError.ConfigStringPresent, ErrorCode.Exists],
    [AoeError.UnsupportedVersion, ErrorCode.NotSupported],
    [AoeError.TargetReserved, ErrorCode.Locked],
  ];
  for (const [aoeError, code] of expected) {
    const call = s.initiator.flush(s.target);
    await s.answerAta((request) =>
      encodeAtaFrame({ ...s.replyTo(request), errorCode: aoeError }, request.ata)
    );
    await assert.rejects(call, (error: unknown) => {
      assert.ok(error instanceof AoeCommandError);
      assert.equal(error.aoeError, aoeError);
      assert.equal(error.code, code);
      return true;
    });
  }
  const call = s.initiator.flush(s.target);
  await s.answerAta((request) => {
    const frame = encodeAtaFrame(s.replyTo(request), request.ata);
    frame[14] = 0x1c; // R and E, error byte 0
    return frame;
  });
  await assert.rejects(call, invalidWith(/error flag but no error code/));
  await s.initiator.close();
});

Deno.test("initiator: an unanswered request is sent `attempts` times with the same tag", async () => {
  const s = setup(20, 3);
  const call = s.initiator.checkPowerMode(s.target);
  const tags = [(await s.nextRequest()).header.tag];
  tags.push((await s.nextRequest()).header.tag, (await s.nextRequest()).header.tag);
  await assert.rejects(call, (error: unknown) => isTorusError(error, ErrorCode.Unavailable));
  assert.equal(new Set(tags).size, 1, `tags ${tags}`);
  assert.equal(s.initiator.stats.retransmits, 2);
  assert.equal(s.targetPort.queuedFrames, 0, "no fourth send");
  await s.initiator.close();
});

Deno.test("initiator: a second reply to a settled tag is counted as a duplicate", async () => {
  const s = setup();
  const call = s.initiator.checkPowerMode(s.target);
  const request = await s.nextRequest();
  const reply = encodeAtaFrame(s.replyTo(request), {
    ...(request as AtaRequest).ata,
    sectorCount: 0xff,
    commandStatus: 0x40,
  });
  await s.targetPort.send(reply);
  await s.targetPort.send(reply);
  assert.equal(await call, 0xff);
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(s.initiator.stats.duplicateReplies, 1);
  assert.deepEqual(s.initiator.violations, []);
  await s.initiator.close();
});

Deno.test("initiator: advertisements are recorded; a malformed one is a violation only", async () => {
  const s = setup();
  const config = {
    bufferCount: 16,
    firmwareVersion: 3,
    sectorCount: 0,
    aoeVersion: 1,
    configCommand: ConfigCommand.Read,
    configString: new Uint8Array(),
  };
  const advertisement: AoeHeaderInit = {
    destination: BROADCAST_MAC,
    source: s.targetPort.mac,
    response: true,
    major: 5,
    minor: 6,
    tag: 0,
  };
  await s.targetPort.send(encodeConfigFrame(advertisement, config));
  await s.targetPort.send(encodeConfigFrame(advertisement, config, { pad: false }));
  await s.targetPort.send(encodeAoeFrame(advertisement, 0, new Uint8Array(12)));
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(s.initiator.advertisements.length, 1);
  assert.equal(s.initiator.advertisements[0]!.sectorsPerFrame, 2, "0 means 2, per the spec");
  assert.equal(s.initiator.violations.length, 2);
  assert.match(s.initiator.violations[0]!, /32 bytes, shorter than the 60-byte minimum/);
  assert.match(s.initiator.violations[1]!, /command 0 reply sent to the broadcast MAC/);
  await s.initiator.close();
});

Deno.test("initiator: a transfer is split into frames, no more in flight than allowed", async () => {
  const s = setup();
  const target = { ...s.target, bufferCount: 3 };
  const reading = s.initiator.readSectors(target, 100, 19);
  const seen: [number, number][] = [];
  let maxBatch = 0;
  while (seen.length < 10) {
    const batch: AtaRequest[] = [];
    batch.push((await s.nextRequest()) as AtaRequest);
    await new Promise((resolve) => setTimeout(resolve, 5));
    while (s.targetPort.queuedFrames > 0) batch.push((await s.nextRequest()) as AtaRequest);
    maxBatch = Math.max(maxBatch, batch.length);
    for (const request of batch) {
      seen.push([request.ata.lba, request.ata.sectorCount]);
      const bytes = request.ata.sectorCount * 512;
      const data = new Uint8Array(bytes).fill(request.ata.lba & 0xff);
      await s.targetPort.send(
        encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 }, bytes, data),
      );
    }
  }
  const data = await reading;
  assert.equal(maxBatch, 3, "the target's buffer count bounds the frames in flight");
  assert.deepEqual(
    seen.sort((a, b) => a[0] - b[0]),
    [100, 102, 104, 106, 108, 110, 112, 114, 116, 118].map((lba) => [lba, lba === 118 ? 1 : 2]),
  );
  assert.equal(data.length, 19 * 512);
  assert.equal(data[18 * 512], 118);
  await s.initiator.close();
});

Deno.test("initiator: LBA28 transfers stay under 2^28; LBA28 requests carry the device bits", async () => {
  const s = setup();
  await assert.rejects(
    () => s.initiator.readSectors(s.target, 2 ** 28 - 1, 2, { lba48: false }),
    invalidWith(/28-bit LBA range/),
  );
  await assert.rejects(
    () => s.initiator.writeSectors(s.target, 0, new Uint8Array(100)),
    invalidWith(/not whole 512-byte sectors/),
  );
  const reading = s.initiator.readSectors(s.target, 0x0abc_def0, 1, { lba48: false });
  const request = await s.answerAta((request) =>
    encodeAtaFrame(s.replyTo(request), { ...request.ata, commandStatus: 0x40 }, 512)
  );
  await reading;
  assert.equal(request.ata.lba, 0xeabc_def0, "lba3 = 0xE0 | the top nibble, as Linux sends");
  assert.equal(request.ata.flags, 0);
  await s.initiator.close();
});

Deno.test("initiator: close fails the calls in flight with closed", async () => {
  const s = setup();
  const call = s.initiator.checkPowerMode(s.target);
  await s.nextRequest();
  await s.initiator.close();
  await assert.rejects(call, (error: unknown) => isTorusError(error, ErrorCode.Closed));
  await assert.rejects(
    () => s.initiator.flush(s.target),
    (error: unknown) => isTorusError(error, ErrorCode.Closed),
  );
  await s.initiator.close(); // idempotent
});

Deno.test("initiator: a config reply must echo its sub-command and fit it", async () => {
  const s = setup();
  const encoder = new TextEncoder();
  const answer = async (configCommand: number, value: string) => {
    const request = await s.nextRequest();
    await s.targetPort.send(encodeConfigFrame(s.replyTo(request), {
      bufferCount: 1,
      firmwareVersion: 1,
      sectorCount: 2,
      aoeVersion: 1,
      configCommand,
      configString: encoder.encode(value),
    }));
  };
  const cases: [number, string, number, string, RegExp | null][] = [
    [ConfigCommand.Test, "abc", ConfigCommand.Test, "abd", /cannot have produced/],
    [ConfigCommand.TestPrefix, "ab", ConfigCommand.TestPrefix, "abc", null],
    [ConfigCommand.TestPrefix, "abc", ConfigCommand.TestPrefix, "ab", /cannot have produced/],
    [ConfigCommand.ForceSet, "x", ConfigCommand.ForceSet, "y", /cannot have produced/],
    [ConfigCommand.Read, "", ConfigCommand.Test, "", /sub-command 1, not 0/],
  ];
  for (const [command, argument, replyCommand, replyString, failure] of cases) {
    const call = s.initiator.config(s.target, command, encoder.encode(argument));
    await answer(replyCommand, replyString);
    if (failure === null) assert.notEqual(await call, null);
    else await assert.rejects(call, invalidWith(failure));
  }
  await s.initiator.close();
});
