/**
 * PacketFramePort over veth pairs made by the test (root only; skipped with the reason
 * otherwise): AoE frames only, the MTU limit, close, and the two ends of a link in two network
 * namespaces, the far one served by another process (tests/support/aoe_frame_peer.ts); and the
 * FramePort contract suite over a veth pair.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../../src/core/mod.ts";
import { PacketFramePort } from "../../../src/block/aoe/packet_port.ts";
import { AOE_ETHERTYPE, type FramePort } from "../../../src/block/aoe/port.ts";
import { openPacketSocket } from "../../../src/sys/packet_socket.ts";
import { broadcastFrame, spawnFramePeer } from "../../support/aoe_frame_peer.ts";
import { frameportContract } from "../../../src/block/aoe/port_contract.ts";
import { linkInfo, NetnsLab, netnsSkipReason, netnsTest } from "../../support/netns.ts";

/** A unicast frame of `etherType`, `lengthBytes` long, carrying `sequence` after the header. */
function unicastFrame(
  ends: { from: Uint8Array; to: Uint8Array },
  options: { lengthBytes: number; sequence: number; etherType?: number },
): Uint8Array {
  const frame = new Uint8Array(options.lengthBytes);
  frame.set(ends.to, 0);
  frame.set(ends.from, 6);
  const view = new DataView(frame.buffer);
  view.setUint16(12, options.etherType ?? AOE_ETHERTYPE);
  view.setUint32(14, options.sequence);
  return frame;
}

function macFromText(text: string): Uint8Array {
  return new Uint8Array(text.split(":").map((part) => parseInt(part, 16)));
}

await netnsTest(
  "packet port: carries AoE frames only, refuses frames over the MTU",
  async (lab) => {
    const pair = await lab.addVethPair();
    const target = PacketFramePort.open(pair.a.name);
    const initiator = PacketFramePort.open(pair.b.name);
    // Another program on the initiator's link, speaking another protocol.
    const other = openPacketSocket(pair.b.name, 0x88b5);
    try {
      assert.equal(target.name, pair.a.name);
      assert.equal(target.mtu, 1500);
      assert.deepEqual(target.mac, macFromText((await linkInfo(pair.a)).mac));
      const ends = { from: initiator.mac, to: target.mac };
      const foreign = unicastFrame(ends, { lengthBytes: 60, sequence: 1, etherType: 0x88b5 });
      await other.send(foreign);
      const aoe = unicastFrame(ends, { lengthBytes: 1514, sequence: 2 });
      await initiator.send(aoe);
      assert.deepEqual(await target.receive(), aoe);
      const tooLong = unicastFrame(ends, { lengthBytes: 1515, sequence: 3 });
      await assert.rejects(
        initiator.send(tooLong),
        (error) => isTorusError(error, ErrorCode.Invalid),
      );
      // Neither the foreign frame nor the refused one is waiting: the next one out is this.
      await initiator.send(broadcastFrame(initiator.mac, "last"));
      assert.deepEqual(await target.receive(), broadcastFrame(initiator.mac, "last"));
      assert.equal(target.statistics().framesQueued, 2);
      const pending = target.receive();
      await target.close();
      assert.equal(await pending, null);
    } finally {
      await Promise.all([target.close(), initiator.close(), other.close()]);
    }
  },
);

await netnsTest(
  "packet port: a peer in another network namespace echoes every frame",
  async (lab) => {
    const namespace = await lab.addNamespace();
    const pair = await lab.addVethPair({ namespaceB: namespace });
    const peer = await spawnFramePeer(lab, namespace, ["echo", pair.b.name]);
    const port = PacketFramePort.open(pair.a.name);
    try {
      // The peer's interface is not in this namespace: only `ip -n` sees it.
      assert.throws(() => PacketFramePort.open(pair.b.name), /no such interface/);
      // Inside the namespace (`ip netns exec` mounts its own /sys), the peer's end is there.
      const shown = await lab.run(namespace, ["cat", `/sys/class/net/${pair.b.name}/address`]);
      const peerMacText = new TextDecoder().decode(shown.stdout).trim();
      assert.equal(peerMacText, (await linkInfo(pair.b)).mac);
      const peerMac = macFromText(peerMacText);
      const count = 200;
      const ends = { from: port.mac, to: peerMac };
      for (let sequence = 0; sequence < count; sequence++) {
        await port.send(unicastFrame(ends, { lengthBytes: 60 + sequence, sequence }));
      }
      for (let sequence = 0; sequence < count; sequence++) {
        const reply = await port.receive();
        const back = { from: peerMac, to: port.mac };
        assert.deepEqual(reply, unicastFrame(back, { lengthBytes: 60 + sequence, sequence }));
      }
      await peer.child.stdin.close();
      assert.deepEqual(await peer.lines.next(), { done: false, value: `echoed ${count}` });
      assert.equal((await peer.child.status).code, 0);
    } finally {
      await port.close();
    }
  },
);

/** Two ports on the ends of a new veth pair; closing them removes the pair. */
async function veth(): Promise<{ a: FramePort; b: FramePort; close(): Promise<void> }> {
  const lab = new NetnsLab();
  const ports: PacketFramePort[] = [];
  const close = async () => {
    await Promise.all(ports.map((port) => port.close()));
    await lab.cleanup();
  };
  try {
    const pair = await lab.addVethPair();
    ports.push(PacketFramePort.open(pair.a.name));
    ports.push(PacketFramePort.open(pair.b.name));
    return { a: ports[0]!, b: ports[1]!, close };
  } catch (error) {
    await close();
    throw error;
  }
}

const contractSkipReason = await netnsSkipReason();
if (contractSkipReason === null) {
  frameportContract("packet port over veth", veth);
} else {
  Deno.test({
    name: `packet port over veth: FramePort contract (skipped: ${contractSkipReason})`,
    ignore: true,
    fn() {},
  });
}
