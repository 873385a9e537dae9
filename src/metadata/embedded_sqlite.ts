/**
 * The main thread's handle on the SQLite connection that lives in embedded_worker.js: batches of
 * statements posted as messages, each answered in order, each with a deadline, and SQLite's
 * errors turned into TorusError codes. The database never runs on the main thread.
 *
 * Invariants: every batch settles exactly once (answer, worker error, deadline or terminate);
 * after `terminate` no timer of this handle remains and later calls fail with `closed`. A
 * transaction is begun, committed and rolled back by the worker itself, never by SQL sent from
 * here, so no deadline, lost answer or failure on this side can leave it open (see
 * embedded_worker.js for the rules).
 * @module
 */

import { ErrorCode, errorMessage, isTorusError, TorusError } from "../core/mod.ts";

/** A value SQLite binds or returns. */
export type SqlValue = null | number | bigint | string | Uint8Array;

/** One statement of a batch. `exec` runs SQL text without parameters or result. */
export interface SqlStep {
  readonly sql: string;
  readonly params?: readonly SqlValue[];
  readonly mode: "run" | "get" | "all" | "exec";
}

/** What `run` answers. */
export interface RunInfo {
  readonly changes: number;
  readonly lastInsertRowid: number;
}

/** A row as SQLite returns it. */
export type SqlRow = Record<string, SqlValue>;

/** How a transaction takes the file's locks: `immediate` takes the write lock at its start. */
export type TransactionMode = "immediate" | "deferred";

/**
 * Something that runs batches of SQL in order on one connection, for one user at a time: at most
 * one transaction is open, and any batch outside it (or another transaction's first batch) ends
 * it with a rollback, since its owner must have given up on it.
 */
export interface SqlConnection {
  /**
   * Runs `steps` in order outside any transaction (each statement commits by itself); the answer
   * of step i is `results[i]`. A failing step stops it. BEGIN, COMMIT and ROLLBACK are refused:
   * transactions are made with {@link SqlConnection.transaction}.
   */
  batch(steps: readonly SqlStep[]): Promise<unknown[]>;
  /** A transaction on this connection; nothing is sent before its first batch. */
  transaction(mode: TransactionMode): SqlTransaction;
}

/**
 * One transaction, begun with its first batch and ended by the connection itself in every case:
 * committed by `commit`, or rolled back when a step fails, when its caller gives up on a batch
 * (deadline), when another batch of the connection comes first, when it is left idle too long, or
 * by `rollback`. A batch sent after it ended is refused: nothing of a failed transaction applies.
 */
export interface SqlTransaction {
  /** Runs `steps` in the transaction (beginning it with the first batch). */
  batch(steps: readonly SqlStep[]): Promise<unknown[]>;
  /**
   * Runs `steps`, then commits. A {@link SqlDeadlineError} here means the commit may still
   * happen; any other failure means the transaction was rolled back.
   */
  commit(steps?: readonly SqlStep[]): Promise<unknown[]>;
  /**
   * Rolls the transaction back if it is still open. Returns at once: the connection does it
   * before anything sent after this call.
   */
  rollback(): void;
}

/**
 * A batch the worker did not answer within the deadline. It may still be running there: a
 * COMMIT in it may yet succeed, so the caller decides what the outcome means.
 */
export class SqlDeadlineError extends TorusError {
  constructor(message: string) {
    super(ErrorCode.Unavailable, message);
  }
}

/** Maps SQLite's errors (node:sqlite reports them by message only) to TorusError codes. */
export function sqliteError(error: unknown, what: string): TorusError {
  if (isTorusError(error)) return error;
  const message = errorMessage(error);
  let code: ErrorCode = ErrorCode.Unavailable;
  if (/not a database|malformed|corrupt/i.test(message)) code = ErrorCode.Invalid;
  else if (/attempt to write a readonly database/i.test(message)) {
    return new TorusError(
      ErrorCode.Invalid,
      `${what} is read-only for this user: cannot change metadata (${message})`,
      { cause: error },
    );
  } else if (/unable to open|readonly|read-only|permission|directory/i.test(message)) {
    code = ErrorCode.Invalid;
  } else if (/disk is full/i.test(message)) code = ErrorCode.OutOfSpace;
  else if (/locked|busy/i.test(message)) {
    return new TorusError(code, `${what}: another process kept it locked (${message})`, {
      cause: error,
    });
  }
  return new TorusError(code, `${what}: ${message}`, { cause: error });
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: ReturnType<typeof setTimeout> | undefined;
  /** The transaction the request belongs to: abandoned (rolled back) if its deadline passes. */
  transaction: number | undefined;
}

type Reply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly message: string };

/** What a batch of a transaction tells the worker. */
interface TransactionMark {
  readonly id: number;
  readonly mode: TransactionMode;
  /** The first batch: the worker begins the transaction before its steps. */
  readonly begin: boolean;
  /** The last batch: the worker commits after its steps. */
  readonly commit: boolean;
}

/** Options of {@link SqliteWorker.open}. */
export interface SqliteWorkerOptions {
  /** Names the database in messages. */
  readonly what: string;
  /**
   * How long the main thread waits for the answer to one request before it gives up with a
   * {@link SqlDeadlineError}. The worker cannot be interrupted, so this only detects a worker
   * that is stuck (a hung disk); it must exceed `busyTimeoutMs` plus a slow fsync, or a write
   * that commits late is reported as `outcome_unknown` for nothing.
   */
  readonly answerTimeoutMs: number;
  /**
   * The deadline of starting the worker and opening the file (default `answerTimeoutMs`), so a
   * test can give batches a short deadline without racing the worker's start.
   */
  readonly openTimeoutMs?: number;
  /** How long SQLite waits for another process's lock before failing the statement. */
  readonly busyTimeoutMs: number;
  /**
   * How long a transaction may stay open between two of its batches before the worker rolls it
   * back (default twice `busyTimeoutMs`), so a stalled main thread never holds the file's write
   * lock for long.
   */
  readonly transactionLimitMs?: number;
  /**
   * `write` (default) opens the file read-write, creating it when absent; `read` opens it
   * read-only; `immutable` reads it as a file nobody changes (SQLite's `immutable` URI option:
   * no locks, no -shm file), the only way to read a WAL database whose directory this user
   * cannot write while no other process has it open.
   */
  readonly access?: "write" | "read" | "immutable";
}

/** `path` as a SQLite URI that opens it immutable. */
export function immutableUri(path: string): string {
  const escaped = path.split("/").map((part) => encodeURIComponent(part)).join("/");
  return `file:${escaped}?immutable=1`;
}

/**
 * A SQLite connection in its own worker.
 *
 * Deadlines: each request has `answerTimeoutMs`. When it passes, the request fails with
 * {@link SqlDeadlineError} unless the worker has already answered it (the shared `answered`
 * cell says so; the answer is then only waiting for this thread's event loop, blocked for a
 * while). A request of a transaction that misses its deadline also abandons the transaction: a
 * rollback of it is sent at once, and the worker runs it right after the late request, before
 * anything sent later, so the next call never finds the transaction still open.
 */
export class SqliteWorker implements SqlConnection {
  #worker: Worker;
  #what: string;
  #answerTimeoutMs: number;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #nextTransaction = 1;
  #failure: TorusError | null = null;
  /** The id of the last request the worker answered (requests are answered in order). */
  #answered = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT));

  private constructor(what: string, answerTimeoutMs: number) {
    this.#what = what;
    this.#answerTimeoutMs = answerTimeoutMs;
    this.#worker = new Worker(new URL("./embedded_worker.js", import.meta.url).href, {
      type: "module",
    });
    this.#worker.onmessage = (event: MessageEvent<Reply>) => this.#onReply(event.data);
    this.#worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      this.#fail(new TorusError("unavailable", `${what}: database worker died: ${event.message}`));
    };
  }

  /** Starts a worker and opens `path` in it; the file is created when absent. */
  static async open(path: string, options: SqliteWorkerOptions): Promise<SqliteWorker> {
    const worker = new SqliteWorker(options.what, options.answerTimeoutMs);
    try {
      const access = options.access ?? "write";
      await worker.#request({
        op: "open",
        path: access === "immutable" ? immutableUri(path) : path,
        readOnly: access !== "write",
        busyTimeoutMs: options.busyTimeoutMs,
        transactionLimitMs: options.transactionLimitMs ?? options.busyTimeoutMs * 2,
        answered: worker.#answered.buffer,
      }, { timeoutMs: options.openTimeoutMs ?? options.answerTimeoutMs });
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return worker;
  }

  batch(steps: readonly SqlStep[]): Promise<unknown[]> {
    return this.#request({ op: "batch", steps }) as Promise<unknown[]>;
  }

  transaction(mode: TransactionMode): SqlTransaction {
    return new WorkerTransaction(
      this.#nextTransaction++,
      mode,
      (steps, mark) => this.#request({ op: "batch", steps, transaction: mark }, { mark }),
      (id) => this.#abandon(id),
    );
  }

  /** Closes the file in the worker (rolling back an open transaction). */
  async close(): Promise<void> {
    await this.#request({ op: "close" });
  }

  /** Stops the worker at once; requests still waiting fail with `closed`. Idempotent. */
  terminate(): void {
    this.#fail(new TorusError("closed", `${this.#what}: closed`));
    this.#worker.terminate();
  }

  #request(
    message: Record<string, unknown>,
    options: { mark?: TransactionMark; timeoutMs?: number } = {},
  ): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    const timeoutMs = options.timeoutMs ?? this.#answerTimeoutMs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#deadlinePassed(id, timeoutMs), timeoutMs);
      const transaction = options.mark?.id;
      this.#pending.set(id, { resolve, reject, timer, transaction });
      this.#worker.postMessage({ ...message, id });
    });
  }

  #deadlinePassed(id: number, timeoutMs: number): void {
    const pending = this.#pending.get(id);
    if (pending === undefined) return;
    pending.timer = undefined;
    // Answered already: the answer waits in this thread's queue behind a blocked event loop.
    if (Atomics.load(this.#answered, 0) >= id) return;
    this.#pending.delete(id);
    if (pending.transaction !== undefined) this.#abandon(pending.transaction);
    pending.reject(
      new SqlDeadlineError(`${this.#what}: no answer within ${timeoutMs} ms`),
    );
  }

  /**
   * Rolls back `transaction` if it is still open, without waiting: the worker handles messages
   * in order, so it is done before anything sent later. The answer, like any answer nobody
   * waits for, is dropped; it takes an id in order all the same, so `answered` only grows.
   */
  #abandon(transaction: number): void {
    if (this.#failure) return;
    this.#worker.postMessage({ op: "rollback", transaction, id: this.#nextId++ });
  }

  #onReply(reply: Reply): void {
    const pending = this.#pending.get(reply.id);
    if (pending === undefined) return;
    this.#pending.delete(reply.id);
    clearTimeout(pending.timer);
    if (reply.ok) pending.resolve(reply.value);
    else pending.reject(sqliteError(new Error(reply.message), this.#what));
  }

  #fail(error: TorusError): void {
    this.#failure ??= error;
    for (const pending of this.#pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.#pending.clear();
  }
}

/** The main thread's side of one transaction of a {@link SqliteWorker}. */
class WorkerTransaction implements SqlTransaction {
  #id: number;
  #mode: TransactionMode;
  #send: (steps: readonly SqlStep[], mark: TransactionMark) => Promise<unknown>;
  #abandon: (id: number) => void;
  #begun = false;

  constructor(
    id: number,
    mode: TransactionMode,
    send: (steps: readonly SqlStep[], mark: TransactionMark) => Promise<unknown>,
    abandon: (id: number) => void,
  ) {
    this.#id = id;
    this.#mode = mode;
    this.#send = send;
    this.#abandon = abandon;
  }

  batch(steps: readonly SqlStep[]): Promise<unknown[]> {
    return this.#batch(steps, false);
  }

  commit(steps: readonly SqlStep[] = []): Promise<unknown[]> {
    return this.#batch(steps, true);
  }

  rollback(): void {
    // The worker rolls back by itself on every failure path; this only makes it prompt.
    if (this.#begun) this.#abandon(this.#id);
  }

  #batch(steps: readonly SqlStep[], commit: boolean): Promise<unknown[]> {
    const begin = !this.#begun;
    this.#begun = true;
    const mark = { id: this.#id, mode: this.#mode, begin, commit };
    return this.#send(steps, mark) as Promise<unknown[]>;
  }
}
