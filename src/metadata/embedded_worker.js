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
 * Invariants:
 * - A transaction left open (the main thread stalled or died between two batches of one
 *   transaction) is rolled back after `transactionLimitMs`, so it never blocks the other
 *   processes sharing the file for long. The main thread's own deadline is shorter.
 * - A batch sent as part of an open transaction (`inTransaction`) runs only while a transaction
 *   is open. After the guard above rolled one back, the rest of that transaction's statements
 *   are refused instead of running one by one in autocommit: a transaction reported as failed
 *   is never partly applied.
 *
 * Requests: {id, op: "open", path, readOnly, busyTimeoutMs, transactionLimitMs} | {id, op: "batch",
 * steps: [{sql, params, mode: "run"|"get"|"all"|"exec"}], inTransaction} | {id, op: "close"}.
 * Replies: {id, ok: true, value} | {id, ok: false, message}. A failing step stops its batch.
 * @module
 */

import { DatabaseSync } from "node:sqlite";

/** @type {DatabaseSync | null} */
let db = null;
/** @type {Map<string, ReturnType<DatabaseSync["prepare"]>>} */
const statements = new Map();
let transactionLimitMs = 10_000;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let transactionTimer;

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

function guardOpenTransaction() {
  clearTimeout(transactionTimer);
  transactionTimer = undefined;
  if (db === null || !db.isTransaction) return;
  transactionTimer = setTimeout(() => {
    try {
      if (db?.isTransaction) db.exec("ROLLBACK");
    } catch {
      // Nothing more can be done; closing the connection also rolls back.
    }
  }, transactionLimitMs);
}

function handle(request) {
  switch (request.op) {
    case "open":
      // `path` may be a file: URI (the main thread builds one for immutable reading).
      db = new DatabaseSync(request.path, { readOnly: request.readOnly === true });
      transactionLimitMs = request.transactionLimitMs;
      db.exec(`PRAGMA busy_timeout = ${Math.max(0, Math.floor(request.busyTimeoutMs))}`);
      return null;
    case "batch":
      if (request.inTransaction && !connection().isTransaction) {
        throw new Error(
          "the transaction was rolled back: the caller was late between two of its statements",
        );
      }
      return request.steps.map(runStep);
    case "close":
      statements.clear();
      db?.close();
      db = null;
      return null;
    default:
      throw new Error(`unknown request ${String(request.op)}`);
  }
}

self.onmessage = (event) => {
  const request = event.data;
  try {
    const value = handle(request);
    guardOpenTransaction();
    self.postMessage({ id: request.id, ok: true, value });
  } catch (error) {
    guardOpenTransaction();
    const message = error instanceof Error ? error.message : String(error);
    self.postMessage({ id: request.id, ok: false, message });
  }
};
