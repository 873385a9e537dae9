/**
 * The main thread's handle on the SQLite connection that lives in embedded_worker.js: batches of
 * statements posted as messages, each answered in order, each with a deadline, and SQLite's
 * errors turned into TorusError codes. The database never runs on the main thread.
 *
 * Invariants: every batch settles exactly once (answer, worker error, deadline or terminate);
 * after `terminate` no timer of this handle remains and later calls fail with `closed`.
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

/** Options of one batch. */
export interface BatchOptions {
  /**
   * The batch continues a transaction an earlier batch opened: it is refused (and nothing of it
   * runs) when that transaction is no longer open, e.g. rolled back by the worker's guard.
   */
  readonly inTransaction?: boolean;
}

/** Something that runs batches of SQL in order on one connection. */
export interface SqlConnection {
  /** Runs `steps` in order; the answer of step i is `results[i]`. A failing step stops it. */
  batch(steps: readonly SqlStep[], options?: BatchOptions): Promise<unknown[]>;
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
  timer: ReturnType<typeof setTimeout>;
}

type Reply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly message: string };

/** Options of {@link SqliteWorker.open}. */
export interface SqliteWorkerOptions {
  /** Names the database in messages. */
  readonly what: string;
  /** Deadline of one batch as seen from the main thread. */
  readonly callTimeoutMs: number;
  /** How long SQLite waits for another process's lock before failing the statement. */
  readonly busyTimeoutMs: number;
  /**
   * How long a transaction may stay open between two batches before the worker rolls it back
   * (default twice `callTimeoutMs`: past the main thread's deadline it gave up anyway).
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

/** A SQLite connection in its own worker. */
export class SqliteWorker implements SqlConnection {
  #worker: Worker;
  #what: string;
  #callTimeoutMs: number;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #failure: TorusError | null = null;

  private constructor(what: string, callTimeoutMs: number) {
    this.#what = what;
    this.#callTimeoutMs = callTimeoutMs;
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
    const worker = new SqliteWorker(options.what, options.callTimeoutMs);
    try {
      const access = options.access ?? "write";
      await worker.#request({
        op: "open",
        path: access === "immutable" ? immutableUri(path) : path,
        readOnly: access !== "write",
        busyTimeoutMs: options.busyTimeoutMs,
        transactionLimitMs: options.transactionLimitMs ?? options.callTimeoutMs * 2,
      });
    } catch (error) {
      worker.terminate();
      throw error;
    }
    return worker;
  }

  batch(steps: readonly SqlStep[], options: BatchOptions = {}): Promise<unknown[]> {
    const inTransaction = options.inTransaction ?? false;
    return this.#request({ op: "batch", steps, inTransaction }) as Promise<unknown[]>;
  }

  /** Closes the file in the worker (rolling back an open transaction). */
  async close(): Promise<void> {
    await this.#request({ op: "close" });
  }

  /** Stops the worker at once; batches still waiting fail with `closed`. Idempotent. */
  terminate(): void {
    this.#fail(new TorusError("closed", `${this.#what}: closed`));
    this.#worker.terminate();
  }

  #request(message: Record<string, unknown>): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new SqlDeadlineError(`${this.#what}: no answer within ${this.#callTimeoutMs} ms`));
      }, this.#callTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      this.#worker.postMessage({ ...message, id });
    });
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
