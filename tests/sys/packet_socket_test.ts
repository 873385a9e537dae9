/**
 * AF_PACKET sockets over veth pairs made by the test (root only; skipped with the reason
 * otherwise): whole frames of the bound EtherType and nothing else, bursts, sizes, the interface's
 * facts, close while receiving, link loss, and an event loop that keeps running while a receive
 * waits.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../src/core/mod.ts";
import {
  DEFAULT_RECEIVE_BUFFER_BYTES,
  openPacketSocket,
  type PacketSocket,
} from "../../src/sys/packet_socket.ts";
import { spawnFramePeer } from "../support/aoe_frame_peer.ts";
import { ip, linkInfo, type NetnsLab, netnsTest, type VethOptions } from "../support/netns.ts";
import { withinMs } from "../support/deadlines.ts";

const AOE = 0x88a2;
const OTHER_ETHERTYPE = 0x88b5; // IEEE "local experimental"

/** A frame from `from` to `to` of `etherType`, `lengthBytes` long, its payload all `fill`. */
function frame(
  ends: { from: PacketSocket; to: PacketSocket },
  lengthBytes: number,
  fill: number,
  etherType = AOE,
): Uint8Array {
  const bytes = new Uint8Array(lengthBytes).fill(fill);
  bytes.set(ends.to.mac, 0);
  bytes.set(ends.from.mac, 6);
  new DataView(bytes.buffer).setUint16(12, etherType);
  return bytes;
}

/** Sockets on both ends of a new veth pair, closed when disposed. */
async function openPair(lab: NetnsLab, options: VethOptions = {}) {
  const pair = await lab.addVethPair(options);
  const a = openPacketSocket(pair.a.name, AOE);
  const b = openPacketSocket(pair.b.name, AOE);
  return {
    pair,
    a,
    b,
    async [Symbol.asyncDispose]() {
      await Promise.all([a.close(), b.close()]);
    },
  };
}

async function waitUntil(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 10));
}

const socketModule = "../../src/sys/packet_socket.ts";

/** AF_PACKET sockets of this network namespace bound to interface `index` (/proc/net/packet). */
function kernelPacketSockets(index: number): number {
  const rows = Deno.readTextFileSync("/proc/net/packet").trim().split("\n").slice(1);
  // Columns: sk RefCnt Type Proto Iface R Rmem User Inode.
  return rows.filter((row) => Number(row.trim().split(/\s+/)[4]) === index).length;
}

async function rejectsWith(promise: Promise<unknown>, code: string, text: RegExp): Promise<void> {
  await assert.rejects(promise, (error) => {
    assert.ok(isTorusError(error), `not a TorusError: ${error}`);
    assert.equal(error.code, code);
    assert.match(error.message, text);
    return true;
  });
}

await netnsTest(
  "packet socket: whole frames of its EtherType arrive, in order; others never",
  async (lab) => {
    await using ends = await openPair(lab);
    const { a, b } = ends;
    const aToB = { from: a, to: b };
    const sent = [frame(aToB, 60, 1), frame(aToB, 14, 2), frame(aToB, 1514, 3), frame(aToB, 61, 4)];
    await a.send(sent[0]!);
    await a.send(frame(aToB, 60, 9, OTHER_ETHERTYPE));
    for (const f of sent.slice(1)) await a.send(f);
    const received: Uint8Array[] = [];
    for (let i = 0; i < sent.length; i++) received.push((await b.receive())!);
    assert.deepEqual(received, sent);
    // Each frame came in a buffer of its own: later receives did not overwrite earlier ones.
    assert.equal(new Set(received.map((r) => r.buffer)).size, sent.length);
    assert.equal(b.statistics().framesQueued, sent.length);
    // The other direction works too, and the frame of another EtherType is still not there.
    await b.send(frame({ from: b, to: a }, 60, 5));
    assert.deepEqual(await a.receive(), frame({ from: b, to: a }, 60, 5));
    await a.send(frame(aToB, 60, 6));
    assert.deepEqual(await b.receive(), frame(aToB, 60, 6));
  },
);

await netnsTest("packet socket: a burst of 1000 full-size frames all arrive", async (lab) => {
  await using ends = await openPair(lab);
  const { a, b } = ends;
  const count = 1000;
  const template = frame({ from: a, to: b }, a.frameBytesMax, 0xab);
  const sendStartMs = performance.now();
  for (let i = 0; i < count; i++) {
    new DataView(template.buffer).setUint32(14, i);
    await a.send(template);
  }
  const sendMs = performance.now() - sendStartMs;
  const receiveStartMs = performance.now();
  for (let i = 0; i < count; i++) {
    // Frames the kernel dropped never come: fail, do not wait for them forever.
    const got = await withinMs(b.receive(), 2000, () => {
      const stats = b.statistics();
      return `frame ${i} did not arrive (${stats.framesDroppedQueueFull} dropped, queue full)`;
    });
    assert.ok(got !== null);
    assert.equal(got.length, template.length);
    assert.equal(new DataView(got.buffer).getUint32(14), i);
  }
  const receiveMs = performance.now() - receiveStartMs;
  const stats = b.statistics();
  assert.equal(stats.framesDroppedQueueFull, 0);
  assert.equal(stats.framesQueued, count);
  console.log(
    `burst of ${count} ${template.length}-byte frames: sent at ${rate(count, sendMs)} frames/s, ` +
      `received at ${rate(count, receiveMs)} frames/s`,
  );
});

function rate(count: number, ms: number): number {
  return Math.round(count / (ms / 1000));
}

await netnsTest("packet socket: MAC, MTU and receive queue are the interface's", async (lab) => {
  await using ends = await openPair(lab, { mtu: 1400 });
  for (const [socket, end] of [[ends.a, ends.pair.a], [ends.b, ends.pair.b]] as const) {
    const shown = await linkInfo(end);
    const mac = [...socket.mac].map((byte) => byte.toString(16).padStart(2, "0")).join(":");
    assert.equal(mac, shown.mac);
    assert.equal(socket.mtu, 1400);
    assert.equal(shown.mtu, 1400);
    assert.equal(socket.frameBytesMax, 1414);
    assert.equal(socket.interfaceName, end.name);
    // The kernel reports twice the bytes granted (its bookkeeping share).
    assert.ok(socket.receiveBufferBytes >= DEFAULT_RECEIVE_BUFFER_BYTES);
  }
  assert.notDeepEqual(ends.a.mac, ends.b.mac);
  const small = openPacketSocket(ends.pair.a.name, AOE, { receiveBufferBytes: 1024 * 1024 });
  assert.equal(small.receiveBufferBytes, 2 * 1024 * 1024);
  await small.close();
});

await netnsTest(
  "packet socket: frames that do not fit the MTU are refused, nothing sent",
  async (lab) => {
    await using ends = await openPair(lab);
    const { a, b } = ends;
    const aToB = { from: a, to: b };
    await rejectsWith(a.send(frame(aToB, 1515, 1)), ErrorCode.Invalid, /1515-byte frame.*MTU 1500/);
    await rejectsWith(a.send(new Uint8Array(13)), ErrorCode.Invalid, /13-byte frame/);
    await a.send(frame(aToB, 1514, 2));
    assert.deepEqual(await b.receive(), frame(aToB, 1514, 2));
    assert.equal(b.statistics().framesQueued, 1);
  },
);

await netnsTest(
  "packet socket: a received frame longer than the buffer is dropped whole",
  async (lab) => {
    await using ends = await openPair(lab);
    // The MTU is raised after the receiver was opened: its buffer holds 1514 bytes only.
    for (const end of [ends.pair.a, ends.pair.b]) {
      await ip([
        "link",
        "set",
        "dev",
        end.name,
        "mtu",
        "2000",
      ]);
    }
    const sender = openPacketSocket(ends.pair.a.name, AOE);
    try {
      const toB = { from: sender, to: ends.b };
      await sender.send(frame(toB, 2014, 1));
      await sender.send(frame(toB, 1514, 2));
      assert.deepEqual(await ends.b.receive(), frame(toB, 1514, 2));
      assert.equal(ends.b.statistics().framesDroppedOversized, 1);
    } finally {
      await sender.close();
    }
  },
);

await netnsTest(
  "packet socket: close ends pending receives with null and releases the kernel socket",
  async (lab) => {
    const pair = await lab.addVethPair();
    const socket = openPacketSocket(pair.a.name, AOE);
    assert.equal(kernelPacketSockets(socket.interfaceIndex), 1);
    const pending = socket.receive();
    const pendingToo = socket.receive();
    await new Promise((resolve) => setTimeout(resolve, 50)); // let both reach their poll
    await withinMs(socket.close(), 2000, () => "close did not end the receives waiting");
    assert.equal(await pending, null);
    assert.equal(await pendingToo, null);
    // The kernel frees a socket when its last descriptor is closed; a process forked by another
    // test module running in parallel may hold a copy of it for a moment, until it execs.
    await withinMs(
      waitUntil(() => kernelPacketSockets(socket.interfaceIndex) === 0),
      2000,
      () => "the kernel socket was not released",
    );
    await socket.close(); // idempotent
    assert.equal(await socket.receive(), null);
    await rejectsWith(socket.send(new Uint8Array(60)), ErrorCode.Closed, /closed/);
  },
);

await netnsTest(
  "packet socket: close frees both descriptors (counted in a process of its own)",
  async (lab) => {
    const pair = await lab.addVethPair();
    // Test modules run with --parallel share this process's descriptor table, so the count is
    // taken where nothing else opens or closes descriptors.
    const script = `import { openPacketSocket } from "${import.meta.resolve(socketModule)}";
      const count = () => [...Deno.readDirSync("/proc/self/fd")].length;
      const before = count();
      const socket = openPacketSocket("${pair.a.name}", ${AOE});
      const opened = count();
      const pending = socket.receive();
      await new Promise((resolve) => setTimeout(resolve, 50));
      await socket.close();
      console.log(JSON.stringify({ before, opened, closed: count(), received: await pending }));`;
    const config = new URL("../../deno.json", import.meta.url).pathname;
    // Started by the lab, so a child that hangs is killed when the test gives up.
    const child = lab.spawn(null, [Deno.execPath(), "eval", "--config", config, script]);
    await child.stdin.close();
    const output = await child.output();
    const counts = JSON.parse(new TextDecoder().decode(output.stdout));
    // Open: the socket and the eventfd that wakes polls.
    assert.deepEqual(counts, {
      before: counts.before,
      opened: counts.before + 2,
      closed: counts.before,
      received: null,
    });
  },
);

await netnsTest(
  "packet socket: the event loop keeps running while a receive waits",
  async (lab) => {
    await using ends = await openPair(lab);
    // The frame comes from another process, so it arrives even if this event loop were stuck.
    await spawnFramePeer(lab, null, ["send", ends.pair.a.name, "400"]);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    try {
      const got = await ends.b.receive();
      assert.ok(got !== null);
      assert.equal(new TextDecoder().decode(got.subarray(14, 18)), "late");
    } finally {
      clearInterval(timer);
    }
    // ~40 ticks in 400 ms; a receive blocking the loop would let none run.
    assert.ok(ticks >= 10, `only ${ticks} timer ticks while the receive waited`);
  },
);

await netnsTest(
  "packet socket: a link going down fails the wait once; frames flow when it is back",
  async (lab) => {
    await using ends = await openPair(lab);
    const { a, b, pair } = ends;
    // Each expectation is attached before the link changes, so the rejection is always handled.
    const failedWait = rejectsWith(b.receive(), ErrorCode.Unavailable, /is down or gone.*ENETDOWN/);
    await ip(["link", "set", "dev", pair.b.name, "down"]);
    await failedWait;
    await rejectsWith(b.send(frame({ from: b, to: a }, 60, 1)), ErrorCode.Unavailable, /ENETDOWN/);
    await assert.rejects(
      Promise.resolve().then(() => openPacketSocket(pair.b.name, AOE)),
      /interface trs.* is down/,
    );
    await ip(["link", "set", "dev", pair.b.name, "up"]);
    await a.send(frame({ from: a, to: b }, 60, 2));
    assert.deepEqual(await b.receive(), frame({ from: a, to: b }, 60, 2));
    const lastWait = rejectsWith(b.receive(), ErrorCode.Unavailable, /down or gone/);
    await ip(["link", "delete", "dev", pair.a.name]);
    await lastWait;
  },
);
