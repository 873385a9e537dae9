/**
 * Tests of the embedded store beyond the shared contract: what it does with files that are not
 * its own, persistence across reopen, lease expiry under an injected clock, and trimming of the
 * change log. Multi-process behaviour is tested in tests/metadata/.
 * @module
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { isTorusError, KV_CHANGE_LOG_MAX_ENTRIES, ManualClock } from "../core/mod.ts";
import type { KvStore, WatchEvent } from "./kv.ts";
import type { EmbeddedKv } from "./embedded.ts";
import { openEmbeddedKv } from "./embedded.ts";
import { leaseClockOf } from "./lease_clock.ts";

const encoder = new TextEncoder();
const sanitize = { sanitizeOps: true, sanitizeResources: true };

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-embedded-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function rejectsInvalid(path: string, pattern: RegExp): Promise<void> {
  await assert.rejects(openEmbeddedKv({ path }), (error: unknown) => {
    assert.ok(isTorusError(error, "invalid"), `expected invalid, got ${String(error)}`);
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes("\n"), "one-line message");
    return true;
  });
}

async function waitFor(what: string, condition: () => Promise<boolean>, ms = 5_000) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({
  name: "embedded: a file of random bytes is refused with invalid and left untouched",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/kv.sqlite`;
      const garbage = crypto.getRandomValues(new Uint8Array(64 * 1024));
      await Deno.writeFile(path, garbage);
      await rejectsInvalid(path, /kv\.sqlite/);
      assert.deepEqual(await Deno.readFile(path), garbage);
    }),
});

Deno.test({
  name: "embedded: a short text file is refused with invalid",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      await Deno.writeTextFile(`${dir}/kv.sqlite`, "this is not a database at all\n".repeat(40));
      await rejectsInvalid(`${dir}/kv.sqlite`, /not a database/);
    }),
});

Deno.test({
  name: "embedded: another application's SQLite database is refused and not altered",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/other.sqlite`;
      const other = new DatabaseSync(path);
      other.exec("CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('ann')");
      other.close();
      const before = await Deno.readFile(path);
      await rejectsInvalid(path, /not a torus metadata store/);
      assert.deepEqual(await Deno.readFile(path), before);
    }),
});

Deno.test({
  name: "embedded: a store of a newer format is refused with invalid",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/kv.sqlite`;
      await (await openEmbeddedKv({ path })).close();
      const raw = new DatabaseSync(path);
      raw.exec("PRAGMA user_version = 3");
      raw.close();
      await rejectsInvalid(path, /format 3/);
    }),
});

Deno.test({
  name: "embedded: a torus store with damaged pages is refused with invalid at open",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/kv.sqlite`;
      const kv = await openEmbeddedKv({ path });
      for (let i = 0; i < 200; i++) await kv.put(`k/${i}`, new Uint8Array(500).fill(i));
      await kv.close();
      const bytes = await Deno.readFile(path);
      assert.ok(bytes.length > 8 * 4096, "the store spans several pages");
      // Keep the header (page 1) intact so SQLite recognises the file, and smash the rest.
      bytes.fill(0xa5, 4096 + 100, bytes.length - 100);
      await Deno.writeFile(path, bytes);
      await rejectsInvalid(path, /damaged|malformed|corrupt/);
    }),
});

Deno.test({
  name: "embedded: a directory or an empty path is refused with invalid",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      await Deno.mkdir(`${dir}/kv.sqlite`);
      await rejectsInvalid(`${dir}/kv.sqlite`, /kv\.sqlite/);
      await assert.rejects(openEmbeddedKv({ path: "" }), (e) => isTorusError(e, "invalid"));
    }),
});

Deno.test({
  name: "embedded: data, revisions and lease ids persist across close and reopen",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/nested/metadata/kv.sqlite`;
      let kv = await openEmbeddedKv({ path });
      await kv.put("a", encoder.encode("1"));
      const first = (await kv.get("a"))!;
      const lease = await kv.grantLease(60_000);
      await kv.close();
      kv = await openEmbeddedKv({ path });
      try {
        assert.deepEqual(await kv.get("a"), first);
        await kv.put("b", encoder.encode("2"));
        assert.ok((await kv.get("b"))!.modRevision > first.modRevision);
        await kv.keepAliveLease(lease);
        assert.ok((await kv.grantLease(60_000)) > lease, "lease ids are never reused");
      } finally {
        await kv.close();
      }
    }),
});

async function leaseClockScenario(kv: KvStore, clock: ManualClock): Promise<void> {
  const events: WatchEvent[] = [];
  const watch = await kv.watchPrefix("locks/", (e) => events.push(...e));
  const lease = await kv.grantLease(10_000);
  await kv.put("locks/vol", encoder.encode("me"), { lease });
  // Real time passing does not expire a lease: only the injected clock does.
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(await kv.get("locks/vol"));
  await clock.advance(9_000);
  await kv.keepAliveLease(lease);
  await clock.advance(9_000);
  assert.ok(await kv.get("locks/vol"), "renewed at 9 s, so alive at 18 s");
  await clock.advance(2_000);
  // Nobody calls the store: the sweep alone must expire it and tell the watch.
  await waitFor("the expiry delete event", () => Promise.resolve(events.length === 2));
  assert.deepEqual(events.map((e) => `${e.type} ${e.key}`), [
    "put locks/vol",
    "delete locks/vol",
  ]);
  assert.equal(await kv.get("locks/vol"), null);
  await assert.rejects(kv.keepAliveLease(lease), (e) => isTorusError(e, "not_exist"));
  await watch.close();
}

Deno.test({
  name: "embedded: leases expire by the injected lease clock, swept without any caller",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const clock = new ManualClock(1_700_000_000_000);
      const kv = await openEmbeddedKv({
        path: `${dir}/kv.sqlite`,
        leaseClock: leaseClockOf(clock),
        sweepIntervalMs: 20,
      });
      try {
        await leaseClockScenario(kv, clock);
      } finally {
        await kv.close();
        clock.close();
      }
    }),
});

Deno.test({
  name: `embedded: the change log is trimmed past ${KV_CHANGE_LOG_MAX_ENTRIES} entries; ` +
    "watching trimmed history is not_exist",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const kv = await openEmbeddedKv({ path: `${dir}/kv.sqlite`, sweepIntervalMs: 5 });
      try {
        const firstRevision = 2;
        for (let batch = 0; batch * 128 <= KV_CHANGE_LOG_MAX_ENTRIES + 256; batch++) {
          await kv.txn({
            compare: [],
            success: Array.from({ length: 128 }, (_, i) => ({
              type: "put" as const,
              key: `log/${batch}/${i}`,
              value: new Uint8Array(1),
            })),
          });
        }
        const trimmed = async () => {
          try {
            const watch = await kv.watchPrefix("log/", () => {}, { fromRevision: firstRevision });
            await watch.close();
            return false;
          } catch (error) {
            assert.ok(isTorusError(error, "not_exist"), String(error));
            return true;
          }
        };
        await waitFor("the log to be trimmed", trimmed, 10_000);
        const events: WatchEvent[] = [];
        const head = (await kv.get("log/0/0"))!.modRevision;
        const recent = await kv.watchPrefix("log/", (e) => events.push(...e), {
          fromRevision: head + 70,
        });
        const batches = Math.floor((KV_CHANGE_LOG_MAX_ENTRIES + 256) / 128) + 1;
        const expected = (batches - 70) * 128;
        await waitFor("recent history", () => Promise.resolve(events.length >= expected));
        await new Promise((r) => setTimeout(r, 100));
        await recent.close();
        assert.equal(events.length, expected, "paged delivery neither loses nor repeats");
        assert.equal(events[0]?.modRevision, head + 70);
        assert.equal(events[events.length - 1]?.key, `log/${batches - 1}/127`);
      } finally {
        await kv.close();
      }
    }),
});

/** Runs `fn` with this process's wall clock (Date.now) stepped by `stepMs`. */
function steppedWallClock(): { step(ms: number): void; restore(): void } {
  const machineNow = Date.now;
  return {
    step: (ms) => void (Date.now = () => machineNow() + ms),
    restore: () => void (Date.now = machineNow),
  };
}

async function sleepMs(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

Deno.test({
  name: "embedded: an hour's wall-clock step, forward or back, neither expires a lease early " +
    "nor keeps it late",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const kv = await openEmbeddedKv({ path: `${dir}/kv.sqlite`, sweepIntervalMs: 20 });
      const wall = steppedWallClock();
      try {
        const ttlMs = 1_000;
        const kept = await kv.grantLease(ttlMs);
        await kv.put("locks/kept", encoder.encode("kept"), { lease: kept });
        const dropped = await kv.grantLease(ttlMs);
        await kv.put("locks/dropped", encoder.encode("dropped"), { lease: dropped });
        wall.step(3_600_000);
        // A write and a few sweeps: with wall-clock deadlines both leases would be gone now.
        await kv.put("other", encoder.encode("x"));
        await sleepMs(100);
        assert.ok(await kv.get("locks/kept"), "a forward step expired a live lease");
        assert.ok(await kv.get("locks/dropped"), "a forward step expired a lease before its TTL");
        wall.step(-3_600_000);
        // `kept` is renewed, `dropped` is not: it must go within its TTL plus a few sweeps,
        // however far back the wall clock went.
        const started = performance.now();
        while (performance.now() - started < ttlMs * 2.5) {
          await kv.keepAliveLease(kept);
          await sleepMs(100);
        }
        assert.equal(await kv.get("locks/dropped"), null, "a backward step kept a dead lease");
        assert.ok(await kv.get("locks/kept"));
      } finally {
        wall.restore();
        await kv.close();
      }
    }),
});

Deno.test({
  name: "embedded: a format-1 store (wall-clock lease deadlines) is upgraded at open, each lease " +
    "keeping what was left of its TTL",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/kv.sqlite`;
      const raw = new DatabaseSync(path);
      raw.exec(`PRAGMA journal_mode = WAL;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE kv (
          key BLOB PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL,
          create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, lease INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX kv_by_lease ON kv (lease) WHERE lease != 0;
        CREATE TABLE leases (
          id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL,
          expires_at_ms INTEGER NOT NULL
        );
        CREATE INDEX leases_by_expiry ON leases (expires_at_ms);
        CREATE TABLE changes (
          revision INTEGER NOT NULL, sub INTEGER NOT NULL, type INTEGER NOT NULL,
          key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (revision, sub)
        ) WITHOUT ROWID;
        INSERT INTO meta VALUES ('revision', 3), ('compact_revision', 1);
        PRAGMA application_id = ${0x746f7273};
        PRAGMA user_version = 1;`);
      const wallMs = Date.now();
      const insertLease = raw.prepare("INSERT INTO leases VALUES (?, ?, ?)");
      insertLease.run(1, 60_000, wallMs + 30_000);
      insertLease.run(2, 60_000, wallMs - 1_000);
      const insertKey = raw.prepare("INSERT INTO kv VALUES (?, ?, 1, ?, ?, ?)");
      insertKey.run(encoder.encode("live"), encoder.encode("l"), 2, 2, 1);
      insertKey.run(encoder.encode("dead"), encoder.encode("d"), 3, 3, 2);
      raw.close();
      const clock = new ManualClock(5_000);
      const kv = await openEmbeddedKv({
        path,
        leaseClock: leaseClockOf(clock),
        sweepIntervalMs: 20,
      });
      try {
        assert.equal(await kv.get("dead"), null, "an expired format-1 lease is expired");
        assert.equal((await kv.get("live"))?.lease, 1n);
        await clock.advance(29_000);
        assert.ok(await kv.get("live"), "the lease kept the rest of its TTL");
        await clock.advance(2_000);
        await waitFor("the upgraded lease to expire", async () => (await kv.get("live")) === null);
        await assert.rejects(kv.keepAliveLease(1n), (e) => isTorusError(e, "not_exist"));
        assert.deepEqual(await kv.integrityCheck(), []);
      } finally {
        await kv.close();
        clock.close();
      }
      const check = new DatabaseSync(path);
      assert.equal(check.prepare("PRAGMA user_version").get()?.user_version, 2);
      check.close();
    }),
});

const writeAttempts: [string, (kv: KvStore) => Promise<unknown>][] = [
  ["put", (kv) => kv.put("k", encoder.encode("x"))],
  ["delete", (kv) => kv.delete("locks/live")],
  ["deletePrefix", (kv) => kv.deletePrefix("locks/")],
  ["txn with a write in a branch", (kv) =>
    kv.txn({
      compare: [{ key: "nothing", target: "version", op: "==", version: 1 }],
      success: [{ type: "put", key: "k", value: encoder.encode("x") }],
      failure: [{ type: "get", key: "k" }],
    })],
  ["grantLease", (kv) => kv.grantLease(1_000)],
  ["keepAliveLease", (kv) => kv.keepAliveLease(1n)],
  ["revokeLease", (kv) => kv.revokeLease(1n)],
];

/** Fills a store with a plain key, a key of a live lease and one of a lease due at 10 s. */
async function fillForReadOnly(path: string, clock: ManualClock): Promise<void> {
  const kv = await openEmbeddedKv({ path, leaseClock: leaseClockOf(clock) });
  try {
    await kv.put("plain", encoder.encode("p"));
    const live = await kv.grantLease(60_000);
    await kv.put("locks/live", encoder.encode("l"), { lease: live });
    const due = await kv.grantLease(10_000);
    await kv.put("locks/due", encoder.encode("d"), { lease: due });
  } finally {
    await kv.close();
  }
}

/** What every read-only store must do: read, hide keys of due leases, refuse writes clearly. */
async function checkReadOnly(kv: EmbeddedKv, clock: ManualClock): Promise<void> {
  assert.equal(kv.readOnly, true);
  assert.deepEqual((await kv.range("locks/")).map((e) => e.key), ["locks/due", "locks/live"]);
  await clock.advance(20_000);
  // It cannot expire the due lease, so it reads past its key instead.
  assert.equal(await kv.get("locks/due"), null);
  assert.deepEqual((await kv.range("locks/")).map((e) => e.key), ["locks/live"]);
  assert.equal((await kv.get("plain"))?.value[0], "p".charCodeAt(0));
  const read = await kv.txn({
    compare: [{ key: "locks/due", target: "version", op: "==", version: 0 }],
    success: [{ type: "get", key: "plain" }, { type: "range", prefix: "locks/" }],
    failure: [],
  });
  assert.equal(read.succeeded, true);
  assert.ok(read.revision >= 4);
  assert.deepEqual(
    read.results.map((r) => r.type === "get" || r.type === "range" ? r.entries.length : -1),
    [1, 1],
  );
  const watch = await kv.watchPrefix("locks/", () => {}, { fromRevision: 2 });
  await watch.close();
  for (const [what, attempt] of writeAttempts) {
    await assert.rejects(attempt(kv), (error: unknown) => {
      assert.ok(isTorusError(error, "invalid"), `${what}: ${String(error)}`);
      assert.match(error.message, /is read-only for this user/, what);
      assert.ok(!error.message.includes("\n"), "one-line message");
      return true;
    });
  }
}

Deno.test({
  name: "embedded: a store opened read-only reads, hides keys of due leases and refuses every " +
    "write with a one-line error",
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const path = `${dir}/kv.sqlite`;
      const clock = new ManualClock(1_000_000);
      await fillForReadOnly(path, clock);
      const kv = await openEmbeddedKv({ path, leaseClock: leaseClockOf(clock), readOnly: true });
      try {
        await checkReadOnly(kv, clock);
      } finally {
        await kv.close();
        clock.close();
      }
      const again = await openEmbeddedKv({ path });
      try {
        assert.equal(again.readOnly, false);
        assert.ok(await again.get("plain"), "a read-only store changed nothing");
      } finally {
        await again.close();
      }
    }),
});

/** Whether this process can make files immutable (root on ext4 can; `chattr +i`). */
function canMakeImmutable(): boolean {
  try {
    const probe = Deno.makeTempFileSync({ prefix: "torus-chattr-" });
    try {
      const on = new Deno.Command("chattr", { args: ["+i", probe] }).outputSync();
      if (!on.success) return false;
      new Deno.Command("chattr", { args: ["-i", probe] }).outputSync();
      return true;
    } finally {
      Deno.removeSync(probe);
    }
  } catch {
    return false;
  }
}

const immutableOk = canMakeImmutable();

async function chattr(flag: "+i" | "-i", ...paths: string[]): Promise<void> {
  const result = await new Deno.Command("chattr", { args: [flag, ...paths] }).output();
  assert.ok(result.success, new TextDecoder().decode(result.stderr));
}

Deno.test({
  name: "embedded: a store whose file and directory cannot be written (immutable, even for " +
    "root) opens read-only: reads work, writes fail with one line" +
    (immutableOk ? "" : " (ignored: cannot chattr +i here; needs root on ext4)"),
  ignore: !immutableOk,
  ...sanitize,
  fn: () =>
    withDir(async (dir) => {
      const metadataDir = `${dir}/metadata`;
      const path = `${metadataDir}/kv.sqlite`;
      const clock = new ManualClock(1_000_000);
      await fillForReadOnly(path, clock);
      await chattr("+i", path, metadataDir);
      try {
        const kv = await openEmbeddedKv({ path, leaseClock: leaseClockOf(clock) });
        try {
          await checkReadOnly(kv, clock);
        } finally {
          await kv.close();
          clock.close();
        }
      } finally {
        await chattr("-i", path, metadataDir);
      }
    }),
});
