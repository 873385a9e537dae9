/**
 * The embedded driver of KvStore: etcd's semantics on one machine, in a SQLite file in the
 * node's data dir, shared safely by every torus process on the machine (serve, ctl, blk).
 * See docs/adr/0003-embedded-metadata-store.md for why it is built this way.
 *
 * Invariants:
 * - All SQLite work runs in a dedicated Web Worker (embedded_worker.js, driven by the typed
 *   data model in embedded_db.ts); the main thread only posts batches of SQL, so a lock held by
 *   another process or an fsync never stalls the event loop.
 * - Each call has a deadline: a lock wait ends with `unavailable` after `callTimeoutMs` inside
 *   the worker. The main thread gives up on an answer only after a further
 *   KV_EMBEDDED_ANSWER_GRACE_MS (a stuck disk), since giving up cannot stop the worker and would
 *   only make a slow commit's outcome unknown. Whatever the main thread gives up on, the worker
 *   ends the transaction it belonged to before it runs anything else (embedded_worker.js).
 * - Lease expiry is decided by the machine's boot-time clock (lease_clock.ts: immune to
 *   wall-clock steps, one clock for every process of the machine), read for every call. Expired
 *   leases are removed by whichever process touches the file next, and by a sweep every
 *   `sweepIntervalMs` in each open store, so a dead process's keys go within about one TTL.
 * - Watches follow the shared change log by polling every `pollIntervalMs` (immediately after
 *   a local write), so they see other processes' changes, lease expiry included. A watch keeps a
 *   (revision, sub) cursor: each logged change is delivered once, in order.
 * - A store this user cannot write opens read-only: reads and watches work (keys of due leases
 *   read as absent, since it cannot expire them), every write fails with `invalid` saying so.
 * - `close` ends watches (onError `closed`), stops both loops, lets operations in progress
 *   finish, closes the file and terminates the worker; nothing of the store remains.
 * @module
 */

import {
  closed,
  errorMessage,
  invalid,
  KV_EMBEDDED_ANSWER_GRACE_MS,
  KV_LEASE_SWEEP_INTERVAL_MS,
  KV_WATCH_POLL_INTERVAL_MS,
  KV_WATCH_RETRY_MAX_MS,
  logger,
  METADATA_CALL_TIMEOUT_MS,
  notExist,
  TorusError,
} from "../core/mod.ts";
import type {
  KvEntry,
  KvStore,
  LeaseId,
  TxnRequest,
  TxnResponse,
  Watch,
  WatchEvent,
  WatchOptions,
} from "./kv.ts";
import { checkLeaseId, checkPut, checkTtlMs, checkTxn, encodePrefix } from "./kv_common.ts";
import { type ChangePage, EmbeddedDb } from "./embedded_db.ts";
import { SqliteWorker } from "./embedded_sqlite.ts";
import { bootClock, type LeaseClock, type LeaseTime } from "./lease_clock.ts";

const log = logger("metadata");

/** Options of {@link openEmbeddedKv}. */
export interface EmbeddedKvOptions {
  /** The database file, e.g. `<data-dir>/metadata/kv.sqlite`; its directory is created. */
  readonly path: string;
  /** Time source of lease deadlines (default: the machine's boot-time clock). */
  readonly leaseClock?: LeaseClock;
  /** Longest wait for another process's transaction (default METADATA_CALL_TIMEOUT_MS). */
  readonly callTimeoutMs?: number;
  /** Watch poll period (default KV_WATCH_POLL_INTERVAL_MS). */
  readonly pollIntervalMs?: number;
  /** Expired-lease sweep period (default KV_LEASE_SWEEP_INTERVAL_MS). */
  readonly sweepIntervalMs?: number;
  /**
   * Open read-only even if this user could write. Without it the store is read-only exactly when
   * the file or its directory cannot be written (another user's data dir, a read-only mount).
   */
  readonly readOnly?: boolean;
}

/** The embedded store: a KvStore plus a check of its file. */
export interface EmbeddedKv extends KvStore {
  /** Whether the store was opened read-only: reads work, every write fails with `invalid`. */
  readonly readOnly: boolean;
  /** SQLite's integrity check of the file: empty when sound (for tests and diagnostics). */
  integrityCheck(): Promise<string[]>;
  /**
   * Drops the change log before `revision` (default: the current one), like etcd's compaction:
   * a watch that still needs that history ends with `not_exist`. Returns the oldest revision
   * kept. The log is also trimmed to its size limits by itself.
   */
  compact(revision?: number): Promise<number>;
}

/** Sweeps between two checks of the change log's size. */
const SWEEPS_PER_TRIM = 20;
/** Most change-log rows fetched per poll. */
const CHANGES_PER_POLL = 1_000;

/**
 * Opens (creating if needed) the embedded store at `options.path`. A file that is not a torus
 * metadata store (garbage, another SQLite database, a newer format) fails with `invalid`. A store
 * this user cannot write is opened read-only (see {@link EmbeddedKvOptions.readOnly}).
 */
export async function openEmbeddedKv(options: EmbeddedKvOptions): Promise<EmbeddedKv> {
  const path = options.path;
  if (typeof path !== "string" || path === "") throw invalid("metadata store path is empty");
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
  if (dir !== "" && !options.readOnly) {
    await Deno.mkdir(dir, { recursive: true }).catch((error: Error) => {
      throw invalid(`cannot create metadata directory ${dir}: ${error.message}`);
    });
  }
  const leaseClock = options.leaseClock ?? bootClock;
  const settings = {
    leaseClock,
    pollIntervalMs: options.pollIntervalMs ?? KV_WATCH_POLL_INTERVAL_MS,
    sweepIntervalMs: options.sweepIntervalMs ?? KV_LEASE_SWEEP_INTERVAL_MS,
  };
  if (options.readOnly || !(await fileWritable(path))) {
    const { sql, db } = await openFile(path, options, await readAccess(path));
    return new EmbeddedKvStore(sql, db, settings);
  }
  try {
    const { sql, db } = await openFile(path, options, "write");
    return new EmbeddedKvStore(sql, db, settings);
  } catch (error) {
    if (!(await unwritable(path, error))) throw error;
  }
  const { sql, db } = await openFile(path, options, await readAccess(path)).catch((error) => {
    throw invalid(
      `metadata store ${path} is read-only for this user and cannot be read either: ` +
        errorMessage(error),
      { cause: error },
    );
  });
  return new EmbeddedKvStore(sql, db, settings);
}

/** Starts a worker on `path` with `access` and opens the data model over it. */
async function openFile(
  path: string,
  options: EmbeddedKvOptions,
  access: "write" | "read" | "immutable",
): Promise<{ sql: SqliteWorker; db: EmbeddedDb }> {
  const callTimeoutMs = options.callTimeoutMs ?? METADATA_CALL_TIMEOUT_MS;
  const sql = await SqliteWorker.open(path, {
    what: `metadata store ${path}`,
    answerTimeoutMs: callTimeoutMs + KV_EMBEDDED_ANSWER_GRACE_MS,
    busyTimeoutMs: callTimeoutMs,
    access,
  });
  try {
    // Format-1 files kept lease deadlines in wall-clock ms: the wall clock reads them once.
    const now = { lease: await (options.leaseClock ?? bootClock).now(), wallMs: Date.now() };
    const db = await EmbeddedDb.open(sql, path, now, { readOnly: access !== "write" });
    return { sql, db };
  } catch (error) {
    await sql.close().catch(() => {});
    sql.terminate();
    throw error;
  }
}

/**
 * Whether this user may write the file (true when it does not exist yet: creating it is the
 * write path's business). SQLite itself would open an unwritable file read-only without a word
 * and fail only at the first write, with its own words.
 */
async function fileWritable(path: string): Promise<boolean> {
  try {
    (await Deno.open(path, { read: true, write: true })).close();
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.PermissionDenied) return false;
    // EPERM (an immutable file) and EROFS (a read-only mount) have no error class of their own.
    return !/EPERM|EROFS|operation not permitted|read-only file system/i.test(errorMessage(error));
  }
}

/**
 * Whether opening for writing failed because this user cannot write the store: SQLite says so
 * ("attempt to write a readonly database": the file, or the directory that must hold its -wal and
 * -shm files) or cannot open an existing file read-write at all.
 */
async function unwritable(path: string, error: unknown): Promise<boolean> {
  if (!/readonly|read-only|unable to open database file/i.test(errorMessage(error))) return false;
  const info = await Deno.stat(path).catch(() => null);
  return info?.isFile === true;
}

/**
 * How to read a store read-only. While a process has it open (or one left it unclean) its
 * write-ahead log exists, and SQLite reads the log and the file together through the -shm
 * index; with no log, a WAL database can only be read without its -shm file as immutable, which
 * is right because the whole state is then in the file. A writer that starts while such a reader
 * runs writes to a new log, not the file, until it checkpoints.
 */
async function readAccess(path: string): Promise<"read" | "immutable"> {
  const log = await Deno.stat(`${path}-wal`).catch(() => null);
  return log === null ? "immutable" : "read";
}

/** A position in the change log: the next (revision, sub) not yet delivered. */
interface Cursor {
  revision: number;
  sub: number;
}

function before(a: Cursor, b: Cursor): boolean {
  return a.revision < b.revision || (a.revision === b.revision && a.sub < b.sub);
}

class EmbeddedWatch implements Watch {
  readonly prefix: string;
  cursor: Cursor;
  #onEvents: (events: readonly WatchEvent[]) => void;
  #onError: ((error: Error) => void) | undefined;
  #onProgress: ((revision: number) => void) | undefined;
  #reported: number;
  #remove: (watch: EmbeddedWatch) => void;
  ended = false;

  constructor(
    prefix: string,
    cursor: Cursor,
    onEvents: (events: readonly WatchEvent[]) => void,
    options: WatchOptions,
    remove: (watch: EmbeddedWatch) => void,
  ) {
    this.prefix = prefix;
    this.cursor = cursor;
    this.#onEvents = onEvents;
    this.#onError = options.onError;
    this.#onProgress = options.onProgress;
    this.#reported = cursor.revision - 1;
    this.#remove = remove;
  }

  /** Delivers `events`, then reports progress: every revision below the cursor is complete. */
  deliver(events: WatchEvent[]): void {
    if (!this.ended && events.length > 0) this.#onEvents(events);
    const complete = this.cursor.revision - 1;
    if (!this.ended && complete > this.#reported) {
      this.#reported = complete;
      this.#onProgress?.(complete);
    }
  }

  end(error: Error | null): void {
    if (this.ended) return;
    this.ended = true;
    this.#remove(this);
    if (error) this.#onError?.(error);
  }

  close(): Promise<void> {
    this.end(null);
    return Promise.resolve();
  }
}

interface StoreSettings {
  readonly leaseClock: LeaseClock;
  readonly pollIntervalMs: number;
  readonly sweepIntervalMs: number;
}

class EmbeddedKvStore implements EmbeddedKv {
  readonly kind = "embedded";
  #sql: SqliteWorker;
  #db: EmbeddedDb;
  #settings: StoreSettings;
  #closed = false;
  #watches = new Set<EmbeddedWatch>();
  #sweepTimer: ReturnType<typeof setTimeout> | undefined;
  #sweeps = 0;
  #sweeping: Promise<void> | null = null;
  #pollTimer: ReturnType<typeof setTimeout> | undefined;
  #polling: Promise<void> | null = null;
  #pollAgain = false;
  #pollFailingSinceMs: number | null = null;

  constructor(sql: SqliteWorker, db: EmbeddedDb, settings: StoreSettings) {
    this.#sql = sql;
    this.#db = db;
    this.#settings = settings;
    // A read-only store cannot expire leases; its reads hide the keys of due ones instead.
    if (!db.readOnly) this.#scheduleSweep();
  }

  get readOnly(): boolean {
    return this.#db.readOnly;
  }

  /** Runs `fn` on the database unless the store is closed. */
  async #call<T>(fn: (db: EmbeddedDb) => Promise<T>): Promise<T> {
    if (this.#closed) throw closed("metadata store closed");
    return await fn(this.#db);
  }

  #now(): Promise<LeaseTime> {
    return this.#settings.leaseClock.now();
  }

  get(key: string): Promise<KvEntry | null> {
    return this.#call(async (db) => db.get(key, await this.#now()));
  }

  range(prefix: string): Promise<KvEntry[]> {
    return this.#call(async (db) => db.range(prefix, await this.#now()));
  }

  async put(key: string, value: Uint8Array, options?: { lease?: LeaseId }): Promise<void> {
    const put = checkPut(key, value, options?.lease);
    await this.#write({
      compare: [],
      success: [
        put.lease === 0n
          ? { type: "put", key, value: put.value }
          : { type: "put", key, value: put.value, lease: put.lease },
      ],
    });
  }

  async delete(key: string): Promise<boolean> {
    const response = await this.#write({ compare: [], success: [{ type: "delete", key }] });
    const result = response.results[0];
    return result?.type === "delete" && result.deleted > 0;
  }

  async deletePrefix(prefix: string): Promise<number> {
    const response = await this.#write({
      compare: [],
      success: [{ type: "deletePrefix", prefix }],
    });
    const result = response.results[0];
    return result?.type === "deletePrefix" ? result.deleted : 0;
  }

  async txn(request: TxnRequest): Promise<TxnResponse> {
    return await this.#write(request);
  }

  async #write(request: TxnRequest): Promise<TxnResponse> {
    const checked = checkTxn(request);
    const response = await this.#call(async (db) => db.txn(checked, await this.#now()));
    this.#kickPoll();
    return response;
  }

  async watchPrefix(
    prefix: string,
    onEvents: (events: readonly WatchEvent[]) => void,
    options: WatchOptions = {},
  ): Promise<Watch> {
    encodePrefix(prefix);
    const head = await this.#call((db) => db.head());
    const from = options.fromRevision ?? head.revision + 1;
    if (from < head.compactRevision) {
      throw notExist(`watch of ${prefix}: history before revision ${head.compactRevision} is gone`);
    }
    if (this.#closed) throw closed("metadata store closed");
    const watch = new EmbeddedWatch(
      prefix,
      { revision: from, sub: 0 },
      onEvents,
      options,
      (w) => this.#watches.delete(w),
    );
    this.#watches.add(watch);
    this.#kickPoll();
    return watch;
  }

  async grantLease(ttlMs: number): Promise<LeaseId> {
    const ttl = checkTtlMs(ttlMs);
    return await this.#call(async (db) => db.grantLease(ttl, await this.#now()));
  }

  async keepAliveLease(lease: LeaseId): Promise<void> {
    checkLeaseId(lease);
    await this.#call(async (db) => db.keepAliveLease(lease, await this.#now()));
    // Renewing may have expired other leases first.
    this.#kickPoll();
  }

  async revokeLease(lease: LeaseId): Promise<void> {
    checkLeaseId(lease);
    await this.#call(async (db) => db.revokeLease(lease, await this.#now()));
    this.#kickPoll();
  }

  integrityCheck(): Promise<string[]> {
    return this.#call((db) => db.integrityCheck());
  }

  compact(revision?: number): Promise<number> {
    return this.#call(async (db) => db.compact(await this.#now(), revision));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#sweepTimer);
    clearTimeout(this.#pollTimer);
    for (const watch of [...this.#watches]) watch.end(closed("metadata store closed"));
    await this.#polling?.catch(() => {});
    await this.#sweeping?.catch(() => {});
    // Operations already running finish (each within its deadline) before the file closes.
    await this.#db.settled();
    await this.#sql.close().catch(() => {});
    this.#sql.terminate();
  }

  #scheduleSweep(): void {
    this.#sweepTimer = setTimeout(() => {
      this.#sweeping = this.#sweep().finally(() => {
        this.#sweeping = null;
        if (!this.#closed) this.#scheduleSweep();
      });
    }, this.#settings.sweepIntervalMs);
  }

  async #sweep(): Promise<void> {
    const trim = ++this.#sweeps % SWEEPS_PER_TRIM === 0;
    try {
      const expired = await this.#db.sweep(await this.#now(), trim);
      if (expired > 0) this.#kickPoll();
    } catch (error) {
      if (!this.#closed) log.debug(`lease sweep failed: ${(error as Error).message}`);
    }
  }

  /** Polls now (or right after the poll in progress). */
  #kickPoll(): void {
    if (this.#closed || this.#watches.size === 0) return;
    if (this.#polling) {
      this.#pollAgain = true;
      return;
    }
    clearTimeout(this.#pollTimer);
    this.#pollTimer = undefined;
    this.#polling = this.#pollLoop().finally(() => {
      this.#polling = null;
      if (!this.#closed && this.#watches.size > 0) {
        this.#pollTimer = setTimeout(() => this.#kickPoll(), this.#settings.pollIntervalMs);
      }
    });
  }

  async #pollLoop(): Promise<void> {
    do {
      this.#pollAgain = false;
      if (this.#closed || this.#watches.size === 0) return;
      try {
        this.#pollAgain = (await this.#pollOnce()) || this.#pollAgain;
        this.#pollFailingSinceMs = null;
      } catch (error) {
        this.#pollFailed(error as Error);
        return;
      }
    } while (this.#pollAgain);
  }

  /** Fetches one page from the earliest cursor and delivers it; true when more is waiting. */
  async #pollOnce(): Promise<boolean> {
    let from: Cursor | null = null;
    for (const watch of this.#watches) {
      if (from === null || before(watch.cursor, from)) from = { ...watch.cursor };
    }
    if (from === null) return false;
    const page = await this.#db.changes(from.revision, from.sub, CHANGES_PER_POLL);
    if (this.#closed) return false;
    const more = page.rows.length === CHANGES_PER_POLL;
    this.#deliver(from, page, more);
    return more;
  }

  /**
   * Hands each watch its events of `page`. A watch's cursor moves past every row of the page,
   * whatever its prefix, so a quiet watch keeps up with the log; when the page is the end of the
   * log (`more` false) it moves to the head revision read before the rows.
   */
  #deliver(from: Cursor, page: ChangePage, more: boolean): void {
    const last = page.rows[page.rows.length - 1];
    for (const watch of [...this.#watches]) {
      // A watch behind the page start is served by the next poll, which starts at its cursor.
      if (before(watch.cursor, from)) continue;
      if (watch.cursor.revision < page.compactRevision) {
        watch.end(
          notExist(`watch of ${watch.prefix}: history before ${page.compactRevision} is gone`),
        );
        continue;
      }
      const events: WatchEvent[] = [];
      for (const row of page.rows) {
        if (before(row, watch.cursor) || !row.key.startsWith(watch.prefix)) continue;
        const value = row.value.slice();
        events.push({ type: row.type, key: row.key, value, modRevision: row.revision });
      }
      if (last !== undefined && !before(last, watch.cursor)) {
        watch.cursor = { revision: last.revision, sub: last.sub + 1 };
      }
      const head = { revision: page.headRevision + 1, sub: 0 };
      if (!more && before(watch.cursor, head)) watch.cursor = head;
      watch.deliver(events);
    }
  }

  #pollFailed(error: Error): void {
    if (this.#closed) return;
    // Monotonic: a wall-clock step must neither end the watches early nor keep them failing.
    const nowMs = performance.now();
    this.#pollFailingSinceMs ??= nowMs;
    if (nowMs - this.#pollFailingSinceMs < KV_WATCH_RETRY_MAX_MS) {
      log.debug(`watch poll failed, will retry: ${error.message}`);
      return;
    }
    const reason = new TorusError(
      "unavailable",
      `metadata watches gave up after ${KV_WATCH_RETRY_MAX_MS} ms: ${error.message}`,
      { cause: error },
    );
    for (const watch of [...this.#watches]) watch.end(reason);
  }
}
