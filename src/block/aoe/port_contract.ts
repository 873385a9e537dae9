/**
 * The FramePort contract suite (port.ts): `frameportContract(name, makePair)` registers Deno tests
 * that run over two connected ports. memory_port_test.ts runs it over the in-memory pair, the
 * AF_PACKET port's tests over a veth pair. Every wait has a deadline, so a port that loses a frame
 * fails the test instead of hanging it.
 * @module
 */

import assert from "node:assert/strict";
import { assertSameBytes, ErrorCode, isTorusError } from "../../core/mod.ts";
import { AOE_ETHERTYPE, ETHERNET_HEADER_BYTES, type FramePort } from "./port.ts";

/** Two connected ports and how to release them. */
export interface FramePortPair {
  a: FramePort;
  b: FramePort;
  close(): Promise<void>;
}

const RECEIVE_DEADLINE_MS = 10_000;
const BURST_FRAMES = 1000;

/** Registers the contract tests for the ports `makePair` connects. */
export function frameportContract(name: string, makePair: () => Promise<FramePortPair>): void {
  const test = (title: string, body: (pair: FramePortPair) => Promise<void>) =>
    Deno.test(`${name}: ${title}`, async () => {
      const pair = await makePair();
      try {
        await body(pair);
      } finally {
        await pair.close();
      }
    });

  test("MACs and MTUs are sane", ({ a, b }) => {
    for (const port of [a, b]) {
      assert.ok(port.name.length > 0, "a port has a name");
      assert.equal(port.mac.length, 6);
      assert.equal(port.mac[0]! & 0x01, 0, `${port.name}: unicast MAC`);
      assert.ok(port.mac.some((byte) => byte !== 0), `${port.name}: MAC is not all zeros`);
      assert.ok(Number.isSafeInteger(port.mtu), `${port.name}: MTU ${port.mtu} is an integer`);
      assert.ok(port.mtu >= 576 && port.mtu <= 65536, `${port.name}: MTU ${port.mtu} in range`);
    }
    assert.notDeepEqual([...a.mac], [...b.mac], "the two ends have distinct MACs");
    return Promise.resolve();
  });

  test(`a burst of ${BURST_FRAMES} frames arrives whole and in order`, async ({ a, b }) => {
    const maxBytes = Math.min(a.mtu, b.mtu) + ETHERNET_HEADER_BYTES;
    const frames = Array.from(
      { length: BURST_FRAMES },
      (_, i) => testFrame(b.mac, a.mac, i, 60 + (i * 97) % (maxBytes - 60 + 1)),
    );
    const received = receiveFrames(b, BURST_FRAMES);
    for (const frame of frames) await a.send(frame);
    const got = await received;
    for (let i = 0; i < BURST_FRAMES; i++) assertSameBytes(got[i]!, frames[i]!, `frame ${i}`);
  });

  test("frames go both ways", async ({ a, b }) => {
    const toB = testFrame(b.mac, a.mac, 1, 100);
    const toA = testFrame(a.mac, b.mac, 2, 200);
    const atB = receiveFrames(b, 1);
    const atA = receiveFrames(a, 1);
    await a.send(toB);
    await b.send(toA);
    assertSameBytes((await atB)[0]!, toB);
    assertSameBytes((await atA)[0]!, toA);
  });

  test("changing the sender's buffer after send does not change what arrives", async ({ a, b }) => {
    const frame = testFrame(b.mac, a.mac, 7, 300);
    const expected = frame.slice();
    const received = receiveFrames(b, 1);
    await a.send(frame);
    frame.fill(0xee);
    assertSameBytes((await received)[0]!, expected);
  });

  test("each received frame has a buffer of its own", async ({ a, b }) => {
    const first = testFrame(b.mac, a.mac, 1, 400);
    const second = testFrame(b.mac, a.mac, 2, 400);
    await a.send(first);
    await a.send(second);
    const [gotFirst] = await receiveFrames(b, 1);
    gotFirst!.fill(0x55);
    const [gotSecond] = await receiveFrames(b, 1);
    assertSameBytes(gotSecond!, second);
    assert.notEqual(gotFirst!.buffer, gotSecond!.buffer);
  });

  test("a frame of mtu + 14 bytes is sent; a longer one is refused", async ({ a, b }) => {
    const largest = testFrame(b.mac, a.mac, 1, a.mtu + ETHERNET_HEADER_BYTES);
    const tooLong = testFrame(b.mac, a.mac, 2, a.mtu + ETHERNET_HEADER_BYTES + 1);
    const after = testFrame(b.mac, a.mac, 3, 100);
    await assert.rejects(
      () => a.send(tooLong),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
    const received = receiveFrames(b, 2);
    await a.send(largest);
    await a.send(after);
    const [gotLargest, gotAfter] = await received;
    assertSameBytes(gotLargest!, largest);
    assertSameBytes(gotAfter!, after, "the refused frame never arrives");
  });

  test("a short frame arrives as sent: padding is the sender's job", async ({ a, b }) => {
    const short = testFrame(b.mac, a.mac, 1, 36);
    const received = receiveFrames(b, 1);
    await a.send(short);
    assertSameBytes((await received)[0]!, short);
  });

  test("frames of other EtherTypes never come out", async ({ a, b }) => {
    const other = testFrame(b.mac, a.mac, 1, 100);
    other[12] = 0x88;
    other[13] = 0xb5; // IEEE local experimental EtherType 1
    const aoe = testFrame(b.mac, a.mac, 2, 100);
    const received = receiveFrames(b, 1);
    await a.send(other);
    await a.send(aoe);
    assertSameBytes((await received)[0]!, aoe);
  });

  test("close ends a pending receive with null, and later receives too", async ({ b }) => {
    const pending = b.receive();
    await b.close();
    assert.equal(await withDeadline(pending, "the pending receive after close"), null);
    assert.equal(await withDeadline(b.receive(), "a receive after close"), null);
    await b.close(); // idempotent
  });
}

/** A frame of `length` bytes with a sequence number and a pattern derived from it. */
export function testFrame(
  destination: Uint8Array,
  source: Uint8Array,
  sequence: number,
  length: number,
): Uint8Array {
  const frame = new Uint8Array(length);
  frame.set(destination, 0);
  frame.set(source, 6);
  frame[12] = AOE_ETHERTYPE >> 8;
  frame[13] = AOE_ETHERTYPE & 0xff;
  for (let i = ETHERNET_HEADER_BYTES; i < length; i++) frame[i] = (sequence * 31 + i * 7) & 0xff;
  return frame;
}

/** The next `count` frames `port` receives, failing if they take too long or the port closes. */
async function receiveFrames(port: FramePort, count: number): Promise<Uint8Array[]> {
  const frames: Uint8Array[] = [];
  while (frames.length < count) {
    const frame = await withDeadline(port.receive(), `frame ${frames.length} of ${count}`);
    if (frame === null) throw new Error(`${port.name} closed after ${frames.length} frames`);
    frames.push(frame);
  }
  return frames;
}

async function withDeadline<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} did not come within ${RECEIVE_DEADLINE_MS} ms`)),
      RECEIVE_DEADLINE_MS,
    );
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
