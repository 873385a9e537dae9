import assert from "node:assert/strict";
import { BlockRef } from "../core/mod.ts";
import { createMetadataService, MemoryKvStore } from "../metadata/mod.ts";
import { WatchedStaleMarks } from "./watched_stale_marks.ts";

const NODE = "6dd1f036-fe4c-4f22-96a1-3e2aac9f99a9";

async function until(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(condition(), "timed out");
}

Deno.test("WatchedStaleMarks: marks written anywhere are seen here, and their removal too", async () => {
  const mds = createMetadataService(new MemoryKvStore(), { prefix: "/t/" });
  await mds.cluster.init({
    blockSizeBytes: 4096,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  const volume = (await mds.volumes.createBlockVolume("v", 1 << 20)).id;
  const ref = new BlockRef({ volume, inode: 1n, index: 3n });
  const other = new BlockRef({ volume, inode: 1n, index: 4n });
  // One record made before the watch starts, one after, by another writer (the service itself).
  await mds.staleMarks.add(volume, NODE, [ref]);
  const marks = await WatchedStaleMarks.start(mds);
  try {
    assert.equal(marks.isStale(ref, NODE), true, "existing records are read at start");
    assert.equal(marks.isStale(other, NODE), false);
    await mds.staleMarks.add(volume, NODE, [other]);
    await until(() => marks.isStale(other, NODE));
    assert.equal(marks.markedBlocks(), 2);
    await marks.remove(volume, NODE, [ref, other]);
    await until(() => !marks.isStale(ref, NODE) && !marks.isStale(other, NODE));
    assert.equal(marks.markedBlocks(), 0);
  } finally {
    await marks.close();
    await mds.close();
  }
});
