/**
 * Tests of the embedded store's data model over a real SQLite worker with faults injected between
 * the worker and the data model: a main thread that stalls between two batches of one transaction
 * (the worker's rollback guard fires), and a batch whose answer is lost after the worker ran it.
 * @module
 */

import assert from "node:assert/strict";
import { isTorusError } from "../core/mod.ts";
import { EmbeddedDb } from "./embedded_db.ts";
import {
  type BatchOptions,
  type SqlConnection,
  SqlDeadlineError,
  SqliteWorker,
  type SqlStep,
} from "./embedded_sqlite.ts";

const encoder = new TextEncoder();
const sanitize = { sanitizeOps: true, sanitizeResources: true };

/** A SqlConnection that forwards to a real worker and can stall before the n-th batch. */
class StallingConnection implements SqlConnection {
  #inner: SqlConnection;
  #countdown = -1;
  #stallMs = 0;

  constructor(inner: SqlConnection) {
    this.#inner = inner;
  }

  /** The `n`-th batch from now (1 = the next one) waits `ms` before it is sent. */
  stallBefore(n: number, ms: number): void {
    this.#countdown = n;
    this.#stallMs = ms;
  }

  async batch(steps: readonly SqlStep[], options?: { inTransaction?: boolean }) {
    if (this.#countdown > 0 && --this.#countdown === 0) {
      await new Promise((r) => setTimeout(r, this.#stallMs));
    }
    return await this.#inner.batch(steps, options);
  }
}

async function withWorker(
  options: { transactionLimitMs: number },
  fn: (sql: SqliteWorker, path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-embedded-db-" });
  const path = `${dir}/kv.sqlite`;
  const sql = await SqliteWorker.open(path, {
    what: "test store",
    callTimeoutMs: 5_000,
    busyTimeoutMs: 5_000,
    transactionLimitMs: options.transactionLimitMs,
  });
  try {
    await fn(sql, path);
  } finally {
    await sql.close().catch(() => {});
    sql.terminate();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "embedded db: a transaction the worker rolled back while the main thread stalled " +
    "applies none of its later statements",
  ...sanitize,
  fn: () =>
    withWorker({ transactionLimitMs: 100 }, async (worker, path) => {
      const sql = new StallingConnection(worker);
      const now = { bootId: "test", ms: 1_000 };
      const db = await EmbeddedDb.open(sql, path, { lease: now, wallMs: Date.now() });
      await db.txn({
        compare: [],
        success: [{ type: "put", key: "b", value: encoder.encode("b") }],
      }, now);
      const before = await db.head();
      // Batches of this txn: 1 BEGIN and lease check, 2 read for "a", 3 write "a" and delete
      // "b", 4 read for "c", 5 write "c" and COMMIT. The stall lets the worker's guard roll
      // back after batch 2; the statements of batches 3 to 5 must then be refused, not run.
      sql.stallBefore(3, 600);
      await assert.rejects(
        db.txn({
          compare: [],
          success: [
            { type: "put", key: "a", value: encoder.encode("a") },
            { type: "delete", key: "b" },
            { type: "put", key: "c", value: encoder.encode("c") },
          ],
        }, now),
        (error: unknown) => {
          assert.ok(isTorusError(error, "unavailable"), String(error));
          assert.match(error.message, /rolled back/);
          return true;
        },
      );
      assert.equal(await db.get("a", now), null, "a failed transaction wrote a key");
      assert.ok(await db.get("b", now), "a failed transaction deleted a key");
      assert.equal(await db.get("c", now), null);
      assert.deepEqual(await db.head(), before, "a failed transaction moved the revision");
      const page = await db.changes(before.revision + 1, 0, 10);
      assert.deepEqual(page.rows, [], "a failed transaction logged changes");
      // The connection is usable afterwards.
      await db.txn({
        compare: [],
        success: [{ type: "put", key: "a", value: encoder.encode("1") }],
      }, now);
      assert.equal((await db.head()).revision, before.revision + 1);
    }),
});

/** A SqlConnection whose next COMMIT reaches the worker but whose answer comes too late. */
class LateCommitConnection implements SqlConnection {
  #inner: SqlConnection;
  armed = false;
  /** The batch that was still running when the caller gave up. */
  late: Promise<unknown> | null = null;

  constructor(inner: SqlConnection) {
    this.#inner = inner;
  }

  batch(steps: readonly SqlStep[], options?: BatchOptions): Promise<unknown[]> {
    const running = this.#inner.batch(steps, options);
    if (!this.armed || !steps.some((step) => step.sql === "COMMIT")) return running;
    this.armed = false;
    this.late = running.catch(() => {});
    return Promise.reject(new SqlDeadlineError("test store: no answer within 6000 ms"));
  }
}

Deno.test({
  name: "embedded db: a commit whose answer comes too late is outcome unknown, not a failure",
  ...sanitize,
  fn: () =>
    withWorker({ transactionLimitMs: 10_000 }, async (worker, path) => {
      const sql = new LateCommitConnection(worker);
      const now = { bootId: "test", ms: 1_000 };
      const db = await EmbeddedDb.open(sql, path, { lease: now, wallMs: Date.now() });
      sql.armed = true;
      const put = { type: "put" as const, key: "k", value: encoder.encode("v") };
      await assert.rejects(db.txn({ compare: [], success: [put] }, now), (error: unknown) => {
        assert.ok(isTorusError(error, "outcome_unknown"), String(error));
        assert.match(error.message, /outcome unknown, the change may or may not have been applied/);
        assert.ok(!error.message.includes("\n"));
        return true;
      });
      await sql.late;
      assert.ok(await db.get("k", now), "the commit the caller gave up on was applied");
    }),
});
