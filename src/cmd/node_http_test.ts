/**
 * The HTTP status server of a node, in process, over a real file store whose disk is made to fail
 * (a FileIo wrapper whose fdatasync reports EIO, as a dying disk's writeback would): `/healthz`
 * turns 503 with the store's reason, `/status` and `/metrics` say the store failed.
 */

import assert from "node:assert/strict";
import { ErrorCode, systemClock, TorusError } from "../core/mod.ts";
import { createMetadataService, MemoryKvStore } from "../metadata/mod.ts";
import { FileBlockStore, HookedFileIo, SysFileIo } from "../storage/mod.ts";
import { startNode } from "./node.ts";

const BLOCK = 512 * 1024;

/** The real file system, except that fdatasync fails while `failing` is set. */
class FailingSyncIo extends HookedFileIo {
  failing = false;

  constructor() {
    super(new SysFileIo(), () => ({
      datasync: (file) =>
        this.failing
          ? Promise.reject(new TorusError(ErrorCode.Unavailable, "fdatasync: input/output error"))
          : file.datasync(),
    }));
  }
}

Deno.test("node HTTP: /healthz turns 503 with the reason when the block store fails on a sync error", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-node-http-" });
  const io = new FailingSyncIo();
  const metadata = createMetadataService(new MemoryKvStore(), { prefix: "/t/" });
  await metadata.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  await metadata.volumes.createBlockVolume("db", 4 * 1024 * 1024);
  const store = await FileBlockStore.open({
    dir: `${dataDir}/block`,
    blockSizeBytes: BLOCK,
    sizeBytes: 8 * BLOCK,
    io,
  });
  const node = await startNode({
    dataDir,
    uuid: "6dd1f036-fe4c-4f22-96a1-3e2aac9f99a9",
    metadata,
    metadataWhere: { kind: "embedded", path: `${dataDir}/metadata/kv.sqlite` },
    store,
    clock: systemClock,
    nbd: null,
    http: { hostname: "127.0.0.1", port: 0 },
    gcIntervalMs: 0,
    cluster: null,
  });
  try {
    const base = `http://127.0.0.1:${node.httpAddress!.port}`;
    let health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok\n");
    let status = await (await fetch(`${base}/status`)).json();
    assert.equal(status.store.failed, false);
    assert.equal(status.store.totalBlocks, 7);
    assert.deepEqual(status.volumes.map((v: { name: string }) => v.name), ["db"]);
    assert.equal(status.nbd, null);

    io.failing = true;
    await assert.rejects(store.flush(), /input\/output error/);

    health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 503);
    assert.match(
      await health.text(),
      /^block store current failed: flush failed: .*input\/output error\n$/,
    );
    status = await (await fetch(`${base}/status`)).json();
    assert.equal(status.store.failed, true);
    assert.match(status.store.failure, /flush failed/);
    assert.equal(status.store.usedBlocks, null);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^torus_storage_failed\{storage="current"\} 1$/m);
  } finally {
    await node.close();
    await store.close().catch(() => {});
    await metadata.close();
    await Deno.remove(dataDir, { recursive: true });
  }
});
