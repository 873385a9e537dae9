/**
 * A second writer is refused by the volume lock: two `torus serve` processes with their own data
 * dirs share one etcd (two machines' nodes of one cluster). While node A has a volume open, node B
 * refuses to open it (an NBD error reply naming the lock, not a dropped socket) and ctl cannot
 * delete it; connections to A share the one open volume; a snapshot request reaches A through etcd.
 * When A is SIGKILLed its lock outlives it (bound to A's lease) and B still refuses, while A,
 * restarted on its data dir, takes its own lock back at once.
 * Both are members of the ring (replication 2), so every block A writes is on both nodes.
 */

import assert from "node:assert/strict";
import { runCommand } from "../support/nbd_fixture.ts";
import { runTorus } from "../support/torus_process.ts";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";
import { closeQuietly, E2eNode, e2eTest, SECTOR } from "./e2e_support.ts";

const lockedError = /locked|in use elsewhere/;

e2eTest(
  "two serves on one etcd: the second writer is refused by the volume lock, also after the " +
    "first is SIGKILLed",
  { tools: etcdAvailable() ? ["nbdinfo"] : ["etcd", "nbdinfo"] },
  async () => {
    await using etcd = await testEtcd();
    const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-e2e-${crypto.randomUUID()}/`];
    const init = await runTorus(["ctl", "init", ...meta]);
    assert.equal(init.code, 0, init.stderr);
    const member = ["--peer-address", "tdp://127.0.0.1:0", "--auto-join"];
    await using a = await E2eNode.start({ args: [...meta, ...member] });
    await using b = await E2eNode.start({ args: [...meta, ...member] });
    await a.ctl("volume", "create-block", "shared", "8MiB", ...meta);
    const data = new Uint8Array(SECTOR).fill(0x42);

    const writer = await a.connect("shared");
    const second = await a.connect("shared");
    try {
      await writer.writeAt(SECTOR, data);
      // Two connections to node A share the open volume: the second reads the first's write.
      const back = new Uint8Array(SECTOR);
      await second.readAt(SECTOR, back);
      assert.deepEqual(back, data);
      await writer.flush();

      await assert.rejects(b.connect("shared"), lockedError);
      const info = await runCommand("nbdinfo", [b.uri("shared")], { env: { LIBNBD_DEBUG: "1" } });
      assert.notEqual(info.code, 0);
      assert.match(info.stderr, /server replied with error to opt_go/);
      assert.match(info.stderr, /in use elsewhere/);
      const deleted = await runTorus(["ctl", "volume", "delete", "shared", ...meta]);
      assert.equal(deleted.code, 1, deleted.stdout);
      assert.match(deleted.stderr, /in use|locked/);
      // A snapshot request goes through etcd to the writer on A.
      await a.ctl("block", "snapshot", "create", "shared@s1", ...meta);
      const listed = JSON.parse(
        await a.ctl("block", "snapshot", "list", "shared", "--json", ...meta),
      );
      assert.deepEqual(listed.map((s: { name: string }) => s.name), ["s1"]);

      await a.stop("SIGKILL");
    } finally {
      await closeQuietly(writer);
      await closeQuietly(second);
    }
    // A's dead run still holds the lock under its lease: B, another node, must not take it.
    await assert.rejects(b.connect("shared"), lockedError);
    // A itself, restarted on its data dir, takes it back and has its flushed data.
    await a.startAgain();
    const reopened = await a.connect("shared");
    try {
      const back = new Uint8Array(SECTOR);
      await reopened.readAt(SECTOR, back);
      assert.deepEqual(back, data);
      await assert.rejects(b.connect("shared"), lockedError);
    } finally {
      await closeQuietly(reopened);
    }
  },
);

e2eTest(
  "a second serve on the same data dir is refused and names the first; the first keeps serving",
  {},
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("v", "4MiB");
    const client = await node.connect("v");
    try {
      await client.writeAt(0, new Uint8Array(SECTOR).fill(7));
      const second = await runTorus(["serve", "--data-dir", node.dataDir, "--nbd", "127.0.0.1:0"]);
      assert.equal(second.code, 1, second.stdout);
      assert.match(second.stderr, new RegExp(`pid ${node.serve.child.pid}`));
      const back = new Uint8Array(SECTOR);
      await client.readAt(0, back);
      assert.ok(back.every((byte) => byte === 7));
    } finally {
      await closeQuietly(client);
    }
  },
);
