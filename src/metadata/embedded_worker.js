/**
 * The embedded metadata store's SQLite connection, in a Web Worker so that lock waits and fsyncs
 * block this thread, never the main event loop. It knows nothing of torus: it opens one file and
 * runs batches of SQL statements in order, answering each request exactly once. All logic lives
 * in the typed main-thread code (embedded_db.ts, embedded_sqlite.ts).
 *
 * Plain JavaScript on purpose: `deno test` type-checks every TypeScript worker graph each time a
 * worker starts (about 1.2 s here), which would make every test that opens a store slow. This
 * file stays small, dependency-free and obvious instead.
 *
 * Transactions belong to this worker, not to the main thread, which may give up on a call, stall
 * or lose an answer at any point. Invariant: between two messages the connection is inside a
 * transaction only while `open` names it, and a transaction ends (commit or rollback) here, in
 * every case:
 * - It is declared: the main thread never sends BEGIN, COMMIT or ROLLBACK as SQL. A batch carries
 *   `transaction: {id, mode, begin, commit}`; the worker begins it before the first batch and
 *   commits after the last one. A batch outside a transaction that leaves one open anyway is
 *   rolled back and fails.
 * - A failing step, or a failing COMMIT, rolls the transaction back before the error is answered.
 * - Any message other than the next batch of the open transaction ends it first (rollback): the
 *   main thread serialises its operations, so a new one means the owner of the open transaction
 *   has given up on it. `{op: "rollback", transaction}` ends it explicitly; the main thread sends
 *   it when it abandons a transaction (its deadline passed, the caller failed).
 * - A transaction whose next batch does not come within `transactionLimitMs` (the main thread
 *   stalled between two batches) is rolled back, so it never holds the file's write lock for
 *   long; only that transaction's own batches restart this clock.
 * - A batch continuing a transaction that is no longer open is refused, never run in autocommit:
 *   a transaction reported as failed is never partly applied.
 *
 * Every answered request id is also stored in the shared `answered` cell before the answer is
 * posted, so the main thread can tell an answer on its way (its event loop was blocked) from a
 * worker that is still busy.
 *
 * Requests: {id, op: "open", path, readOnly, busyTimeoutMs, transactionLimitMs, answered} |
 * {id, op: "batch", steps: [{sql, params, mode: "run"|"get"|"all"|"exec"}], transaction?} |
 * {id, op: "rollback", transaction} | {id, op: "close"}.
 * Replies: {id, ok: true, value} | {id, ok: false, message}. A failing step stops its batch.
 * @module
 */

import { DatabaseSync } from "node:sqlite";

/** @type {DatabaseSync | null} */
let db = null;
/** @type {Map<string, ReturnType<DatabaseSync["prepare"]>>} */
const statements = new Map();
let transactionLimitMs = 10_000;
/** @type {Int32Array | null} */
let answered = null;
/** The declared transaction now open on the connection, if any. */
/** @type {number | null} */
let open = null;
/** Why the last transactions ended early, by id, to explain a refused later batch. */
/** @type {Map<number, string>} */
const endings = new Map();
const ENDINGS_KEPT = 16;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let transactionTimer;

/** SQL that would begin or end a transaction behind this worker's back. */
const TRANSACTION_CONTROL = /^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b/i;

function connection() {
  if (db === null) throw new Error("metadata database is not open");
  return db;
}

function statement(sql) {
  let prepared = statements.get(sql);
  if (prepared === undefined) {
    prepared = connection().prepare(sql);
    statements.set(sql, prepared);
  }
  return prepared;
}

function runStep(step) {
  if (TRANSACTION_CONTROL.test(step.sql)) {
    throw new Error(`transaction control is the worker's: refused ${step.sql.trim().slice(0, 20)}`);
  }
  const params = step.params ?? [];
  if (step.mode === "exec") {
    connection().exec(step.sql);
    return null;
  }
  const prepared = statement(step.sql);
  if (step.mode === "run") {
    const info = prepared.run(...params);
    return { changes: Number(info.changes), lastInsertRowid: Number(info.lastInsertRowid) };
  }
  if (step.mode === "get") return prepared.get(...params) ?? null;
  return prepared.all(...params);
}

/** Rolls back whatever transaction the connection is in; never throws. */
function rollbackConnection() {
  try {
    if (db?.isTransaction) db.exec("ROLLBACK");
  } catch {
    // Nothing more can be done here; closing the connection also rolls back.
  }
}

/** Ends the open declared transaction (if any) with a rollback, remembering why. */
function endOpen(reason) {
  if (open !== null) {
    endings.set(open, reason);
    if (endings.size > ENDINGS_KEPT) endings.delete(endings.keys().next().value);
  }
  open = null;
  rollbackConnection();
}

/** Starts the clock of the open transaction: its next batch must come in time. */
function guardOpenTransaction() {
  if (open === null) return;
  transactionTimer = setTimeout(() => {
    transactionTimer = undefined;
    endOpen("the transaction was rolled back: the caller was late between two of its statements");
  }, transactionLimitMs);
}

/** Whether `request` is the next batch of the open transaction. */
function continuesOpen(request) {
  const tx = request.transaction;
  return request.op === "batch" && tx !== undefined && !tx.begin && tx.id === open;
}

function runInTransaction(steps, tx) {
  if (tx.begin) {
    connection().exec(tx.mode === "deferred" ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE");
    open = tx.id;
  } else if (open !== tx.id || !connection().isTransaction) {
    // SQLite ends a transaction by itself on some errors (a full disk); the guard may have.
    const reason = endings.get(tx.id) ?? "the transaction is no longer open";
    endOpen(reason);
    throw new Error(reason);
  }
  try {
    const results = steps.map(runStep);
    if (!connection().isTransaction) throw new Error("SQLite ended the transaction by itself");
    if (tx.commit) {
      connection().exec("COMMIT");
      open = null;
    }
    return results;
  } catch (error) {
    endOpen(`the transaction failed: ${error instanceof Error ? error.message : String(error)}`);
    throw error;
  }
}

function runOutsideTransaction(steps) {
  try {
    const results = steps.map(runStep);
    if (connection().isTransaction) throw new Error("a batch left a transaction open");
    return results;
  } finally {
    rollbackConnection();
  }
}

function handle(request) {
  // Whoever owned the open transaction gave up on it unless this is its next batch.
  if (open !== null && !continuesOpen(request)) {
    if (request.op !== "rollback" || request.transaction === open) {
      endOpen("the transaction was rolled back: its caller gave up on it");
    }
  }
  switch (request.op) {
    case "open":
      // First, so that even a failed open is marked answered.
      answered = new Int32Array(request.answered);
      // `path` may be a file: URI (the main thread builds one for immutable reading).
      db = new DatabaseSync(request.path, { readOnly: request.readOnly === true });
      transactionLimitMs = request.transactionLimitMs;
      db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.floor(request.busyTimeoutMs))}`);
      return null;
    case "batch":
      return request.transaction === undefined
        ? runOutsideTransaction(request.steps)
        : runInTransaction(request.steps, request.transaction);
    case "rollback":
      return null;
    case "close":
      endOpen("the database was closed");
      statements.clear();
      db?.close();
      db = null;
      return null;
    default:
      throw new Error(`unknown request ${String(request.op)}`);
  }
}

function answer(reply) {
  if (answered !== null) Atomics.store(answered, 0, reply.id);
  self.postMessage(reply);
}

self.onmessage = (event) => {
  const request = event.data;
  clearTimeout(transactionTimer);
  transactionTimer = undefined;
  try {
    const value = handle(request);
    guardOpenTransaction();
    answer({ id: request.id, ok: true, value });
  } catch (error) {
    guardOpenTransaction();
    const message = error instanceof Error ? error.message : String(error);
    answer({ id: request.id, ok: false, message });
  }
};
