/**
 * Multi-conn and FUA against a real `torus serve`, proved by SIGKILL: serve advertises
 * NBD_FLAG_CAN_MULTI_CONN, which promises that a FLUSH on one connection covers every write any
 * connection had acknowledged; and an FUA write is durable when acknowledged. The writes go to
 * blocks the volume never had, so they need their block-map entries made durable, which only a
 * FLUSH (or FUA) does: without it they are gone after a SIGKILL.
 */

import assert from "node:assert/strict";
import { type NbdClient } from "../../src/block/mod.ts";
import { SeededRandom, testSeed } from "../../src/core/mod.ts";
import {
  assertEqualBytes,
  closeQuietly,
  E2eNode,
  e2eTest,
  MiB,
  readAll,
  SECTOR,
} from "./e2e_support.ts";

const SIZE = 16 * MiB;
const seed = testSeed();

/** Writes `count` random sectors at random places through `client`, 8 in flight, into `model`. */
async function writeRandomSectors(
  client: NbdClient,
  model: Uint8Array,
  options: { random: SeededRandom; count: number; fua?: boolean; range?: [number, number] },
): Promise<void> {
  const [from, to] = options.range ?? [0, model.length];
  const sectors = (to - from) / SECTOR;
  const writes: Promise<void>[] = [];
  // Distinct sectors, so the order of writes in flight does not matter to the model.
  const chosen = new Set<number>();
  while (chosen.size < Math.min(options.count, sectors)) chosen.add(options.random.int(sectors));
  for (const sector of chosen) {
    const offset = from + sector * SECTOR;
    const data = options.random.bytes(SECTOR);
    model.set(data, offset);
    writes.push(client.writeAt(offset, data, { fua: options.fua ?? false }));
    if (writes.length >= 8) await writes.shift();
  }
  await Promise.all(writes);
}

e2eTest(
  `a FLUSH on connection B covers what connection A had acknowledged, across SIGKILL ` +
    `(seed ${seed})`,
  {},
  async () => {
    const random = new SeededRandom(seed);
    await using node = await E2eNode.start();
    await node.createVolume("mc", "16MiB");
    const model = new Uint8Array(SIZE);
    const a = await node.connect("mc");
    const b = await node.connect("mc");
    const c = await node.connect("mc");
    try {
      // A and C write over the whole volume (every block is new); only B flushes.
      await writeRandomSectors(a, model, { random, count: 300 });
      await writeRandomSectors(c, model, { random, count: 100, range: [SIZE / 2, SIZE] });
      await b.flush();
      // No close (it would flush): the process dies with the three connections open.
      await node.restart("SIGKILL");
    } finally {
      for (const client of [a, b, c]) await closeQuietly(client);
    }
    const reader = await node.connect("mc");
    try {
      assertEqualBytes(await readAll(reader), model, "after SIGKILL and restart");
    } finally {
      await closeQuietly(reader);
    }
  },
);

e2eTest(`FUA writes survive SIGKILL without any FLUSH (seed ${seed})`, {}, async () => {
  const random = new SeededRandom(seed ^ 0x5a5a);
  await using node = await E2eNode.start();
  await node.createVolume("fua", "16MiB");
  const model = new Uint8Array(SIZE);
  const client = await node.connect("fua");
  try {
    await writeRandomSectors(client, model, { random, count: 200, fua: true });
    // A whole 512 KiB block and an odd range, both FUA.
    const whole = random.bytes(512 * 1024);
    model.set(whole, 4 * MiB);
    await client.writeAt(4 * MiB, whole, { fua: true });
    const odd = random.bytes(10_001);
    model.set(odd, 9 * MiB - 77);
    await client.writeAt(9 * MiB - 77, odd, { fua: true });
    await node.restart("SIGKILL");
  } finally {
    await closeQuietly(client);
  }
  const reader = await node.connect("fua");
  try {
    assertEqualBytes(await readAll(reader), model, "after SIGKILL and restart");
  } finally {
    await closeQuietly(reader);
  }
});

e2eTest(
  "after a SIGKILL with a volume open, the restarted serve opens it and snapshots it at once",
  {},
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("held", "4MiB");
    const client = await node.connect("held");
    try {
      await client.writeAt(0, new Uint8Array(SECTOR).fill(9));
      await client.flush();
      await node.restart("SIGKILL");
    } finally {
      await closeQuietly(client);
    }
    // The dead run's lock lives on in the metadata store under its lease (30 s TTL): the new run
    // of the same node releases it before it says it is ready, so ctl sees the volume free and
    // a snapshot needs no answer from the dead writer.
    const listed = JSON.parse(await node.ctl("volume", "list", "--json"));
    assert.deepEqual(
      listed.map((v: { name: string; status: string }) => [v.name, v.status]),
      [["held", "free"]],
    );
    const snapshot = await node.ctl("block", "snapshot", "create", "held@after");
    assert.match(snapshot, /Created snapshot held@after/);
    const reader = await node.connect("held");
    try {
      const back = new Uint8Array(SECTOR);
      await reader.readAt(0, back);
      assert.ok(back.every((byte) => byte === 9));
    } finally {
      await closeQuietly(reader);
    }
    assert.match(node.output(), /locked by an earlier run of this node/);
  },
);
