/**
 * The embedded store shared by real processes on one file, as serve, ctl and blk share it on a
 * node: concurrent compare-and-swap, unique lease ids, a killed lock holder's lease expiring with
 * the delete seen by a watcher elsewhere, durability of acknowledged puts across SIGKILL, and a
 * lock held by another process never blocking this process's event loop.
 * @module
 */

import assert from "node:assert/strict";
import { isTorusError } from "../../src/core/mod.ts";
import { openEmbeddedKv } from "../../src/metadata/mod.ts";
import { Child } from "./child_process.ts";

const decoder = new TextDecoder();
const sanitize = { sanitizeOps: true, sanitizeResources: true };

async function withStore(fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-mp-" });
  try {
    await fn(`${dir}/metadata/kv.sqlite`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Creates the file first, so children do not all race to create it (they may; it is safe). */
async function createStore(path: string): Promise<void> {
  await (await openEmbeddedKv({ path })).close();
}

Deno.test({
  name: "embedded multi-process: CAS increments from 3 processes on one counter lose nothing",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      const perProcess = 40;
      const children = [1, 2, 3].map(() =>
        new Child(["increment", path, "counters/c", String(perProcess)])
      );
      try {
        for (const child of children) await child.waitLine((l) => l === "done", 30_000);
      } finally {
        for (const child of children) await child.kill();
      }
      const kv = await openEmbeddedKv({ path });
      try {
        const entry = (await kv.get("counters/c"))!;
        assert.equal(decoder.decode(entry.value), String(3 * perProcess));
        assert.equal(entry.version, 3 * perProcess);
      } finally {
        await kv.close();
      }
    }),
});

Deno.test({
  name: "embedded multi-process: lease ids granted concurrently by two processes are unique",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      const children = [new Child(["leases", path, "30"]), new Child(["leases", path, "30"])];
      const ids: string[] = [];
      try {
        for (const child of children) {
          ids.push(...(await child.waitLine((l) => /^\d/.test(l))).split(" "));
        }
      } finally {
        for (const child of children) await child.kill();
      }
      assert.equal(ids.length, 60);
      assert.equal(new Set(ids).size, 60);
    }),
});

Deno.test({
  name: "embedded multi-process: a SIGKILLed holder's leased key vanishes after the TTL " +
    "and a watcher in another process sees the delete",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      const ttlMs = 1_000;
      await using watcher = new Child(["watch", path, "locks/"]);
      await watcher.waitLine((l) => l === "watching");
      await using holder = new Child(["hold", path, "locks/volume-1", String(ttlMs)]);
      await holder.waitLine((l) => l === "ready");
      await watcher.waitLine((l) => l.includes('"put"'));
      // Outlive a few keepalives first: the lease is kept alive while its holder lives.
      await new Promise((r) => setTimeout(r, ttlMs * 1.5));
      assert.ok(!watcher.lines.some((l) => l.includes('"delete"')), "deleted while alive");
      const killedAt = Date.now();
      await holder.kill("SIGKILL");
      const line = await watcher.waitLine((l) => l.includes('"delete"'), ttlMs + 3_000);
      const elapsedMs = Date.now() - killedAt;
      assert.deepEqual(JSON.parse(line).key, "locks/volume-1");
      assert.ok(elapsedMs <= ttlMs + 1_500, `deleted ${elapsedMs} ms after the kill`);
      const kv = await openEmbeddedKv({ path });
      try {
        assert.equal(await kv.get("locks/volume-1"), null);
      } finally {
        await kv.close();
      }
    }),
});

Deno.test({
  name: "embedded multi-process: every acknowledged put survives SIGKILL of the writer " +
    "and the file stays consistent",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      const writer = new Child(["write", path, "stream/"]);
      let acked = 0;
      try {
        await writer.waitLine((l) => l === "ack 60", 20_000);
        // Let it run a little further, then kill it at an arbitrary point mid-stream.
        await new Promise((r) => setTimeout(r, 37));
      } finally {
        await writer.kill("SIGKILL");
        acked = Math.max(0, ...writer.lines.map((l) => Number(/^ack (\d+)$/.exec(l)?.[1] ?? 0)));
      }
      assert.ok(acked >= 60);
      const kv = await openEmbeddedKv({ path });
      try {
        const entries = await kv.range("stream/");
        assert.ok(entries.length >= acked, `${entries.length} keys for ${acked} acks`);
        assert.ok(entries.length <= acked + 1, "at most the one unacknowledged put landed");
        entries.forEach((entry, i) => {
          assert.equal(entry.key, `stream/${String(i + 1).padStart(6, "0")}`);
          assert.equal(decoder.decode(entry.value), `value ${i + 1}`);
          if (i > 0) assert.ok(entry.modRevision > entries[i - 1]!.modRevision);
        });
        assert.deepEqual(await kv.integrityCheck(), []);
        await kv.put("stream/after", new Uint8Array([1]));
        assert.ok((await kv.get("stream/after"))!.modRevision > entries.at(-1)!.modRevision);
      } finally {
        await kv.close();
      }
    }),
});

Deno.test({
  name: "embedded multi-process: a write lock held elsewhere fails a put with unavailable " +
    "and never stalls this event loop",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      const kv = await openEmbeddedKv({ path, callTimeoutMs: 600 });
      await using locker = new Child(["lock", path, "2500"]);
      try {
        await locker.waitLine((l) => l === "locked");
        let worstLateMs = 0;
        let last = performance.now();
        const ticker = setInterval(() => {
          const now = performance.now();
          worstLateMs = Math.max(worstLateMs, now - last - 10);
          last = now;
        }, 10);
        const started = performance.now();
        try {
          await assert.rejects(
            kv.put("k", new Uint8Array([1])),
            (e) => isTorusError(e, "unavailable"),
          );
        } finally {
          clearInterval(ticker);
        }
        const waitedMs = performance.now() - started;
        assert.ok(waitedMs >= 500 && waitedMs < 2_000, `failed after ${waitedMs} ms`);
        // Waiting on the lock in this thread would stall it for the whole 600 ms call; a loaded
        // machine adds up to ~170 ms of timer lateness by itself.
        assert.ok(worstLateMs < 400, `event loop stalled ${worstLateMs.toFixed(0)} ms`);
        await locker.waitLine((l) => l === "released", 5_000);
        await kv.put("k", new Uint8Array([2]));
        assert.deepEqual((await kv.get("k"))?.value, new Uint8Array([2]));
      } finally {
        await kv.close();
      }
    }),
});

Deno.test({
  name: "embedded multi-process: a process whose wall clock is an hour ahead expires no live " +
    "lease of another; one an hour behind keeps no dead holder's lock",
  ...sanitize,
  fn: () =>
    withStore(async (path) => {
      await createStore(path);
      // Long enough that keep-alives every ttl/4 still arrive on a machine loaded 6x over
      // (a 1 s lease expired there in CI): what is tested is an hour's step, not promptness.
      const ttlMs = 3_000;
      const kv = await openEmbeddedKv({ path });
      const lease = await kv.grantLease(ttlMs);
      await kv.put("locks/here", new Uint8Array([1]), { lease });
      const keepAlive = setInterval(() => kv.keepAliveLease(lease).catch(() => {}), ttlMs / 4);
      try {
        // Its writes and sweeps see this process's lease as an hour overdue by the wall clock.
        await using ahead = new Child(["write", path, "ahead/"], {
          TORUS_TEST_WALL_STEP_MS: String(3_600_000),
        });
        await ahead.waitLine((l) => l === "ack 20", 20_000);
        assert.ok(await kv.get("locks/here"), "a clock ahead expired another process's lease");
        // Its lease, by the wall clock, was due an hour before it was granted.
        await using behind = new Child(["hold", path, "locks/behind", String(ttlMs)], {
          TORUS_TEST_WALL_STEP_MS: String(-3_600_000),
        });
        await behind.waitLine((l) => l === "ready");
        await new Promise((r) => setTimeout(r, ttlMs * 1.5));
        assert.ok(await kv.get("locks/behind"), "a live holder's lease expired");
        await behind.kill("SIGKILL");
        const killedAt = performance.now();
        while ((await kv.get("locks/behind")) !== null) {
          assert.ok(performance.now() - killedAt < ttlMs + 3_000, "a dead holder's lock stayed");
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(await kv.get("locks/here"));
      } finally {
        clearInterval(keepAlive);
        await kv.close();
      }
    }),
});
