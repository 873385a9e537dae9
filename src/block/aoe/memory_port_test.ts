/** The in-memory FramePort: the contract suite, plus its test hooks and its segments. */

import assert from "node:assert/strict";
import { assertSameBytes, ErrorCode, firstDifference, isTorusError } from "../../core/mod.ts";
import { MemoryFramePort } from "./memory_port.ts";
import { frameportContract, testFrame } from "./port_contract.ts";

frameportContract("memory port", () => {
  const [a, b] = MemoryFramePort.pair();
  return Promise.resolve({
    a,
    b,
    close: async () => void await Promise.all([a.close(), b.close()]),
  });
});

frameportContract("memory port (MTU 9000)", () => {
  const [a, b] = MemoryFramePort.pair({ mtu: 9000 });
  return Promise.resolve({
    a,
    b,
    close: async () => void await Promise.all([a.close(), b.close()]),
  });
});

Deno.test("memory port: a send filter drops, duplicates and reorders frames", async () => {
  const [a, b] = MemoryFramePort.pair();
  const frames = [1, 2, 3, 4].map((n) => testFrame(b.mac, a.mac, n, 60));
  const numberOf = (frame: Uint8Array) => frames.findIndex((f) => firstDifference(f, frame) < 0);
  let held: Uint8Array | null = null;
  a.sendFilter = (frame) => {
    const number = numberOf(frame);
    if (number === 0) return []; // dropped
    if (number === 1) {
      held = frame; // held back until the next one goes
      return [];
    }
    const out = held === null ? [frame, frame] : [frame, held];
    held = null;
    return out;
  };
  for (const frame of frames) await a.send(frame);
  const got = [await b.receive(), await b.receive(), await b.receive(), await b.receive()];
  assertSameBytes(got[0]!, frames[2]!);
  assertSameBytes(got[1]!, frames[1]!, "the held frame comes after the one that released it");
  assertSameBytes(got[2]!, frames[3]!);
  assertSameBytes(got[3]!, frames[3]!, "the last one is duplicated");
  assert.notEqual(got[2]!.buffer, got[3]!.buffer, "each copy has a buffer of its own");
  assert.equal(a.framesSent, 4);
  assert.equal(b.queuedFrames, 0);
  await a.close();
  await b.close();
});

Deno.test("memory port: a frame a filter holds back is the one sent, not the buffer later", async () => {
  const [a, b] = MemoryFramePort.pair();
  let held: Uint8Array | null = null;
  a.sendFilter = (frame) => {
    if (held !== null) return [frame, held];
    held = frame;
    return [];
  };
  const first = testFrame(b.mac, a.mac, 1, 60);
  const expected = first.slice();
  await a.send(first);
  first.fill(0);
  await a.send(testFrame(b.mac, a.mac, 2, 60));
  await b.receive();
  assertSameBytes((await b.receive())!, expected);
  await a.close();
  await b.close();
});

Deno.test("memory port: a full receive queue drops frames and counts them", async () => {
  const [a, b] = MemoryFramePort.pair({ queueFramesMax: 3 });
  for (let i = 0; i < 5; i++) await a.send(testFrame(b.mac, a.mac, i, 60));
  assert.equal(b.queuedFrames, 3);
  assert.equal(b.framesDropped, 2);
  await a.close();
  await b.close();
});

Deno.test("memory port: a segment carries every frame to every other port", async () => {
  const [a, b, c] = MemoryFramePort.segment(3);
  const frame = testFrame(b!.mac, a!.mac, 1, 60);
  await a!.send(frame);
  const atB = (await b!.receive())!;
  const atC = (await c!.receive())!;
  assertSameBytes(atB, frame);
  assertSameBytes(atC, frame, "a hub floods unicast frames too");
  assert.notEqual(atB.buffer, atC.buffer, "each receiver has a buffer of its own");
  assert.equal(a!.queuedFrames, 0, "a sender does not hear itself");
  for (const port of [a!, b!, c!]) await port.close();
});

Deno.test("memory port: inject bypasses the EtherType filter; send after close fails", async () => {
  const [a, b] = MemoryFramePort.pair();
  const ipv4 = testFrame(b.mac, a.mac, 1, 60);
  ipv4[12] = 0x08;
  ipv4[13] = 0x00;
  b.inject(ipv4);
  b.inject(new Uint8Array(5));
  assertSameBytes((await b.receive())!, ipv4);
  assert.equal((await b.receive())!.length, 5);
  await a.close();
  await assert.rejects(
    () => a.send(testFrame(b.mac, a.mac, 1, 60)),
    (error: unknown) => isTorusError(error, ErrorCode.Closed),
  );
  await b.close();
});

Deno.test("memory port: several pending receives are served in order", async () => {
  const [a, b] = MemoryFramePort.pair();
  const first = b.receive();
  const second = b.receive();
  const frames = [testFrame(b.mac, a.mac, 1, 60), testFrame(b.mac, a.mac, 2, 60)];
  for (const frame of frames) await a.send(frame);
  assertSameBytes((await first)!, frames[0]!);
  assertSameBytes((await second)!, frames[1]!);
  const third = b.receive();
  await b.close();
  assert.equal(await third, null);
  await a.close();
});
