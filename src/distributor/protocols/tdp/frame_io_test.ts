import assert from "node:assert/strict";
import { setImmediate } from "node:timers";
import type { ByteStream } from "../../../core/mod.ts";
import { FrameWriter } from "./frame_io.ts";

/** A stream that records each write as one piece. */
function recordingStream(): { stream: ByteStream; writes: number[][] } {
  const writes: number[][] = [];
  const stream: ByteStream = {
    read: () => Promise.resolve(null),
    write: (data) => {
      writes.push([...data]);
      return Promise.resolve(data.length);
    },
    close: () => {},
  };
  return { stream, writes };
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Sends frame `n` (one byte) after `n` promise hops, as replies settling in one turn do. */
async function sendAfterHops(writer: FrameWriter, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
  writer.send([new Uint8Array([n])]);
}

Deno.test("FrameWriter: with more frames coming, a turn's frames leave in one write", async () => {
  const { stream, writes } = recordingStream();
  const writer = new FrameWriter(stream, () => assert.fail("no error"), () => true);
  await Promise.all([0, 1, 2, 3, 4, 5].map((n) => sendAfterHops(writer, n)));
  await writer.idle();
  assert.deepEqual(writes, [[0, 1, 2, 3, 4, 5]]);
});

Deno.test("FrameWriter: with nothing else coming, a frame leaves in this turn", async () => {
  const { stream, writes } = recordingStream();
  const writer = new FrameWriter(stream, () => assert.fail("no error"), () => false);
  writer.send([new Uint8Array([1, 2])]);
  writer.send([new Uint8Array([3])]);
  await Promise.resolve();
  await Promise.resolve();
  // Written before the event loop's next turn (a lone request waits for no other).
  assert.deepEqual(writes, [[1, 2, 3]]);
  await nextTurn();
  assert.deepEqual(writes, [[1, 2, 3]]);
});

Deno.test("FrameWriter: frames queued during a write follow in order in the next one", async () => {
  const writes: number[][] = [];
  let release: (() => void) | null = null;
  const stream: ByteStream = {
    read: () => Promise.resolve(null),
    write: async (data) => {
      writes.push([...data]);
      if (writes.length === 1) await new Promise<void>((resolve) => release = resolve);
      return data.length;
    },
    close: () => {},
  };
  const writer = new FrameWriter(stream, () => assert.fail("no error"));
  writer.send([new Uint8Array([1])]);
  await nextTurn();
  writer.send([new Uint8Array([2])]);
  writer.send([new Uint8Array([3, 4])]);
  release!();
  await writer.idle();
  assert.deepEqual(writes, [[1], [2, 3, 4]]);
});
