/**
 * A peer process for AoE FramePort tests, started with {@link spawnFramePeer} (often inside
 * another network namespace, through `ip netns exec`), so the far end of a link runs outside
 * the test's process and event loop:
 * - `echo IFACE`: opens a PacketFramePort on IFACE, prints `ready`, then sends every frame it
 *   receives back to its sender (destination and source MAC swapped, the rest unchanged) until
 *   its stdin closes; prints `echoed N` and exits 0.
 * - `send IFACE DELAY_MS`: opens the port, prints `ready`, waits DELAY_MS, sends one broadcast
 *   AoE frame of 60 bytes whose payload starts with "late", and exits.
 * @module
 */

import { PacketFramePort } from "../../src/block/aoe/packet_port.ts";
import { AOE_ETHERTYPE, BROADCAST_MAC } from "../../src/block/aoe/port.ts";
import type { NetnsLab } from "./netns.ts";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

/** A started peer: its process and its stdout as lines. */
export interface FramePeer {
  readonly child: Deno.ChildProcess;
  readonly lines: AsyncIterator<string>;
}

/** Starts the peer in `namespace` (null: the test's own) and waits for its `ready` line. */
export async function spawnFramePeer(
  lab: NetnsLab,
  namespace: string | null,
  args: readonly string[],
): Promise<FramePeer> {
  const script = new URL(import.meta.url).pathname;
  const command = [Deno.execPath(), "run", "--config", `${root}deno.json`, "-A", script, ...args];
  const child = lab.spawn(namespace, command);
  const lines = readLines(child.stdout);
  const first = await lines.next();
  if (first.done || first.value !== "ready") {
    throw new Error(`frame peer did not start: ${first.done ? "no output" : first.value}`);
  }
  return { child, lines };
}

async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const chunk of stream) {
    pending += decoder.decode(chunk, { stream: true });
    const parts = pending.split("\n");
    pending = parts.pop()!;
    yield* parts;
  }
  if (pending !== "") yield pending;
}

/** A broadcast AoE frame of 60 bytes from `source` whose payload starts with `text`. */
export function broadcastFrame(source: Uint8Array, text: string): Uint8Array {
  const frame = new Uint8Array(60);
  frame.set(BROADCAST_MAC, 0);
  frame.set(source, 6);
  new DataView(frame.buffer).setUint16(12, AOE_ETHERTYPE);
  frame.set(new TextEncoder().encode(text), 14);
  return frame;
}

async function echo(port: PacketFramePort): Promise<number> {
  void (async () => {
    for await (const _ of Deno.stdin.readable) {
      // Only the end of stdin matters: it is the signal to stop.
    }
    await port.close();
  })();
  let echoed = 0;
  for (let frame = await port.receive(); frame !== null; frame = await port.receive()) {
    const reply = frame.slice();
    reply.set(frame.subarray(6, 12), 0);
    reply.set(port.mac, 6);
    await port.send(reply);
    echoed++;
  }
  return echoed;
}

async function main(args: string[]): Promise<void> {
  const [mode, interfaceName, delayText] = args;
  const port = PacketFramePort.open(interfaceName ?? "");
  console.log("ready");
  if (mode === "echo") {
    console.log(`echoed ${await echo(port)}`);
  } else if (mode === "send") {
    await new Promise((resolve) => setTimeout(resolve, Number(delayText)));
    await port.send(broadcastFrame(port.mac, "late"));
    await port.close();
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
}

if (import.meta.main) await main(Deno.args);
