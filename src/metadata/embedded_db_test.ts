/**
 * Tests of the embedded store's data model over a real SQLite worker with faults injected between
 * the worker and the data model: a main thread that stalls between two batches of one transaction
 * (the worker's rollback guard fires), a batch whose answer is lost after the worker ran it, and
 * the reported failure: a write whose first batch outlived the main thread's deadline (the worker
 * stalled in a lock wait, then began the transaction) must not leave it open for later calls.
 * @module
 */

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { isTorusError } from "../core/mod.ts";
import { EmbeddedDb } from "./embedded_db.ts";
import {
  type SqlConnection,
  SqlDeadlineError,
  SqliteWorker,
  type SqlStep,
  type SqlTransaction,
  type TransactionMode,
} from "./embedded_sqlite.ts";

const encoder = new TextEncoder();
const sanitize = { sanitizeOps: true, sanitizeResources: true };

/** What a batch is: outside a transaction, in one, or the last of one (with its commit). */
type BatchKind = "plain" | "transaction" | "commit";

/**
 * A SqlConnection over a real worker whose batches all pass through `intercept`, which sends
 * each (`send`) when and how a test decides: the place to inject stalls and lost answers.
 */
abstract class InterceptingConnection implements SqlConnection {
  #inner: SqlConnection;

  constructor(inner: SqlConnection) {
    this.#inner = inner;
  }

  protected abstract intercept(
    kind: BatchKind,
    steps: readonly SqlStep[],
    send: () => Promise<unknown[]>,
  ): Promise<unknown[]>;

  batch(steps: readonly SqlStep[]): Promise<unknown[]> {
    return this.intercept("plain", steps, () => this.#inner.batch(steps));
  }

  transaction(mode: TransactionMode): SqlTransaction {
    const tx = this.#inner.transaction(mode);
    return {
      batch: (steps) => this.intercept("transaction", steps, () => tx.batch(steps)),
      commit: (steps = []) => this.intercept("commit", steps, () => tx.commit(steps)),
      rollback: () => tx.rollback(),
    };
  }
}

/** Forwards to a real worker and can stall before the n-th batch. */
class StallingConnection extends InterceptingConnection {
  #countdown = -1;
  #stallMs = 0;

  /** The `n`-th batch from now (1 = the next one) waits `ms` before it is sent. */
  stallBefore(n: number, ms: number): void {
    this.#countdown = n;
    this.#stallMs = ms;
  }

  protected async intercept(
    _kind: BatchKind,
    _steps: readonly SqlStep[],
    send: () => Promise<unknown[]>,
  ): Promise<unknown[]> {
    if (this.#countdown > 0 && --this.#countdown === 0) {
      await new Promise((r) => setTimeout(r, this.#stallMs));
    }
    return await send();
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
    answerTimeoutMs: 5_000,
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

/** A connection whose next commit reaches the worker but whose answer comes too late. */
class LateCommitConnection extends InterceptingConnection {
  armed = false;
  /** The batch that was still running when the caller gave up. */
  late: Promise<unknown> | null = null;

  protected intercept(
    kind: BatchKind,
    _steps: readonly SqlStep[],
    send: () => Promise<unknown[]>,
  ): Promise<unknown[]> {
    const running = send();
    if (!this.armed || kind !== "commit") return running;
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

/**
 * Another connection to the file, on this thread, that holds SQLite's write lock: a worker's
 * `BEGIN IMMEDIATE` then waits in SQLite's busy handler for as long as the test decides, which
 * stalls the worker deterministically (no reliance on machine load).
 */
function holdWriteLock(path: string): { release(): void } {
  const other = new DatabaseSync(path, { timeout: 0 });
  other.exec("BEGIN IMMEDIATE");
  return {
    release() {
      other.exec("COMMIT");
      other.close();
    },
  };
}

/** Whether another connection can take the file's write lock right now (nobody holds it). */
function writeLockFree(path: string): boolean {
  const other = new DatabaseSync(path, { timeout: 0 });
  try {
    other.exec("BEGIN IMMEDIATE");
    other.exec("ROLLBACK");
    return true;
  } catch {
    return false;
  } finally {
    other.close();
  }
}

Deno.test({
  name: "embedded db: a write whose first batch the main thread gave up on leaves no transaction " +
    "open in the worker; later writes work and the file's write lock is free",
  ...sanitize,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "torus-embedded-db-" });
    const path = `${dir}/kv.sqlite`;
    // The worker waits up to a minute for a lock; the main thread gives up after 300 ms.
    const sql = await SqliteWorker.open(path, {
      what: "test store",
      answerTimeoutMs: 300,
      busyTimeoutMs: 60_000,
      transactionLimitMs: 1_000,
    });
    try {
      const now = { bootId: "test", ms: 1_000 };
      const db = await EmbeddedDb.open(sql, path, { lease: now, wallMs: Date.now() });
      const put = (key: string) =>
        db.txn({ compare: [], success: [{ type: "put", key, value: encoder.encode(key) }] }, now);
      const lock = holdWriteLock(path);
      // The worker is stuck in `BEGIN IMMEDIATE` until the lock is released: the main thread's
      // deadline passes first. Nothing was committed, so this is a plain failure.
      await assert.rejects(put("lost"), (error: unknown) => {
        assert.ok(isTorusError(error, "unavailable"), String(error));
        assert.match(error.message, /no answer within 300 ms/);
        return true;
      });
      lock.release();
      // Reads keep the worker busy for longer than its transaction guard (like the watch poll
      // and the lease sweep of a serving store): the abandoned transaction must not survive.
      for (let i = 0; i < 8; i++) {
        await db.head();
        await new Promise((r) => setTimeout(r, 200));
      }
      await put("next");
      assert.ok(await db.get("next", now));
      assert.equal(await db.get("lost", now), null, "the abandoned write was applied");
      assert.ok(writeLockFree(path), "the worker still holds the file's write lock");
    } finally {
      await sql.close().catch(() => {});
      sql.terminate();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A connection that loses the answer of the next transaction's first batch after sending it. */
class LostBeginConnection extends InterceptingConnection {
  armed = false;
  #sent: Promise<unknown> | null = null;

  protected intercept(
    kind: BatchKind,
    _steps: readonly SqlStep[],
    send: () => Promise<unknown[]>,
  ): Promise<unknown[]> {
    const running = send();
    if (!this.armed || kind !== "transaction") return running;
    this.armed = false;
    this.#sent = running.catch(() => {});
    return Promise.reject(new SqlDeadlineError("test store: no answer within 6000 ms"));
  }

  /** Resolves once the batch whose answer was lost has run in the worker. */
  async ran(): Promise<void> {
    await this.#sent;
  }
}

Deno.test({
  name: "embedded db: a write that lost the answer of its first batch rolls its transaction " +
    "back at once, not at the worker's next message or guard",
  ...sanitize,
  fn: () =>
    withWorker({ transactionLimitMs: 60_000 }, async (worker, path) => {
      const sql = new LostBeginConnection(worker);
      const now = { bootId: "test", ms: 1_000 };
      const db = await EmbeddedDb.open(sql, path, { lease: now, wallMs: Date.now() });
      sql.armed = true;
      const put = { type: "put" as const, key: "k", value: encoder.encode("v") };
      await assert.rejects(db.txn({ compare: [], success: [put] }, now), (error: unknown) => {
        // Nothing was committed and the rollback runs before anything else: a plain failure.
        assert.ok(isTorusError(error, "unavailable"), String(error));
        return true;
      });
      await sql.ran();
      const deadline = performance.now() + 10_000;
      while (!writeLockFree(path)) {
        assert.ok(performance.now() < deadline, "the abandoned transaction kept the write lock");
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(await db.get("k", now), null);
    }),
});
