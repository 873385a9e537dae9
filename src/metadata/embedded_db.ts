/**
 * The embedded KvStore's data model: etcd's revisions, versions, leases and change history in one
 * SQLite file, driven through a SqlConnection (the worker of embedded_sqlite.ts) so no SQLite
 * call ever runs on the main thread.
 *
 * Invariants:
 * - The file is WAL-journaled with synchronous=FULL: a committed transaction survives a crash of
 *   the process or the machine. Every change happens inside one `BEGIN IMMEDIATE` transaction,
 *   which also serialises the writers of all processes sharing the file.
 * - One operation at a time per connection (`#exclusive`): a read never sees another operation's
 *   transaction of this process half done.
 * - `meta.revision` is the store revision. A transaction that changes at least one key takes the
 *   next revision for all its changes and logs each in `changes` as (revision, sub); one that
 *   changes nothing consumes no revision (etcd's rule).
 * - Leases carry an absolute deadline in the machine's boot-time clock and the boot it counts
 *   from (lease_clock.ts; `now` comes with every call, from the store's LeaseClock), so no
 *   wall-clock step moves them and every process of the machine reads them alike. A lease of
 *   another boot is expired. Every write first removes expired leases and their keys, one
 *   revision per lease; reads do the same first when a lease is due. So an expired lease is never
 *   observed, whichever process touches the file next.
 * - `meta.compact_revision` is the oldest revision still in the change log; trimming only moves
 *   it forward.
 * - A store opened read-only (this user cannot write the file or its directory) never writes:
 *   reads hide keys whose lease is due instead of expiring them, a transaction of reads runs in
 *   a read transaction, and anything that would write fails with `invalid` and a one-line
 *   message saying the store is read-only.
 * - The file is marked with application_id and user_version; a file that is not ours is refused
 *   with `invalid` and never altered. Format 1 (lease deadlines in wall-clock ms) is upgraded to
 *   format 2 in place at open, each lease keeping what was left of its TTL.
 * @module
 */

import {
  assert,
  ErrorCode,
  invalid,
  KV_CHANGE_LOG_MAX_BYTES,
  KV_CHANGE_LOG_MAX_ENTRIES,
  KV_RESPONSE_MAX_BYTES,
  notExist,
  TorusError,
  unreachable,
} from "../core/mod.ts";
import type {
  Compare,
  KvEntry,
  LeaseId,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResponse,
} from "./kv.ts";
import { compareHolds, decodeKey, encodeKey, encodePrefix, prefixEnd } from "./kv_common.ts";
import {
  type RunInfo,
  type SqlConnection,
  SqlDeadlineError,
  type SqlRow,
  type SqlStep,
  type SqlTransaction,
  type SqlValue,
} from "./embedded_sqlite.ts";
import type { LeaseTime } from "./lease_clock.ts";

/** "tors" in ASCII: marks a SQLite file as a torus metadata store. */
export const APPLICATION_ID = 0x746f7273;
/** Version of the schema below. Format 1 kept lease deadlines in wall-clock ms, without boot. */
export const SCHEMA_VERSION = 2;

const SCHEMA = `
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE kv (
  key BLOB PRIMARY KEY, value BLOB NOT NULL, version INTEGER NOT NULL,
  create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL, lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE leases (
  id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
  boot_id TEXT NOT NULL
);
CREATE INDEX leases_by_expiry ON leases (expires_at_ms);
CREATE TABLE changes (
  revision INTEGER NOT NULL, sub INTEGER NOT NULL, type INTEGER NOT NULL,
  key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
INSERT INTO meta VALUES ('revision', 1), ('compact_revision', 1);
PRAGMA application_id = ${APPLICATION_ID};
PRAGMA user_version = ${SCHEMA_VERSION};
`;

/** The time at open: the lease clock, and the wall clock that format-1 deadlines count in. */
export interface OpenTime {
  readonly lease: LeaseTime;
  readonly wallMs: number;
}

/** Change types in the `changes` table. */
const ChangeType = { Put: 0, Delete: 1 } as const;

/** One logged change, as the watch poller receives it. */
export interface ChangeRow {
  readonly revision: number;
  readonly sub: number;
  readonly type: "put" | "delete";
  readonly key: string;
  readonly value: Uint8Array;
}

/** A page of the change log from a (revision, sub) position. */
export interface ChangePage {
  readonly rows: ChangeRow[];
  /** Oldest revision still logged; a position below it was trimmed away. */
  readonly compactRevision: number;
  /** The store revision when the page was read. */
  readonly headRevision: number;
}

/** The key's lease, if any, is not due (parameters: now's ms and boot id). */
const LIVE =
  "(lease = 0 OR lease IN (SELECT id FROM leases WHERE expires_at_ms > ? AND boot_id = ?))";

const SQL = {
  meta: "SELECT value FROM meta WHERE name = ?",
  setMeta: "UPDATE meta SET value = ? WHERE name = ?",
  // A lease is due when its deadline passed or it counts from another boot.
  dueLeases: "SELECT id FROM leases WHERE expires_at_ms <= ? OR boot_id != ? " +
    "ORDER BY expires_at_ms, id",
  anyDue: "SELECT 1 AS due FROM leases WHERE expires_at_ms <= ? OR boot_id != ? LIMIT 1",
  leaseExists: "SELECT 1 AS found FROM leases WHERE id = ?",
  insertLease: "INSERT INTO leases (ttl_ms, expires_at_ms, boot_id) VALUES (?, ?, ?)",
  renewLease: "UPDATE leases SET expires_at_ms = ? + ttl_ms WHERE id = ?",
  deleteLease: "DELETE FROM leases WHERE id = ?",
  keysOfLease: "SELECT key FROM kv WHERE lease = ? ORDER BY key",
  get: "SELECT * FROM kv WHERE key = ?",
  rangeFrom: "SELECT * FROM kv WHERE key >= ? ORDER BY key",
  rangeBetween: "SELECT * FROM kv WHERE key >= ? AND key < ? ORDER BY key",
  // Read-only stores cannot expire leases, so they read past the keys of due ones.
  liveGet: `SELECT * FROM kv WHERE key = ? AND ${LIVE}`,
  liveRangeFrom: `SELECT * FROM kv WHERE key >= ? AND ${LIVE} ORDER BY key`,
  liveRangeBetween: `SELECT * FROM kv WHERE key >= ? AND key < ? AND ${LIVE} ORDER BY key`,
  upsert: "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
  deleteKey: "DELETE FROM kv WHERE key = ?",
  logChange: "INSERT INTO changes VALUES (?, ?, ?, ?, ?)",
  changesFrom: "SELECT revision, sub, type, key, value FROM changes " +
    "WHERE (revision, sub) >= (?, ?) ORDER BY revision, sub LIMIT ?",
  logSize: "SELECT count(*) AS n, coalesce(sum(length(key) + length(value)), 0) AS bytes " +
    "FROM changes",
  cutByCount: "SELECT revision FROM changes ORDER BY revision DESC, sub DESC LIMIT 1 OFFSET ?",
  cutByBytes: "SELECT revision FROM (SELECT revision, sum(length(key) + length(value)) OVER " +
    "(ORDER BY revision DESC, sub DESC) AS total FROM changes) WHERE total > ? LIMIT 1",
  trim: "DELETE FROM changes WHERE revision <= ?",
} as const;

function get(sql: string, ...params: SqlValue[]): SqlStep {
  return { sql, params, mode: "get" };
}
function all(sql: string, ...params: SqlValue[]): SqlStep {
  return { sql, params, mode: "all" };
}
function run(sql: string, ...params: SqlValue[]): SqlStep {
  return { sql, params, mode: "run" };
}
function exec(sql: string): SqlStep {
  return { sql, mode: "exec" };
}

/**
 * One write transaction. Writes are queued and sent with the next read or the commit, so a
 * transaction costs few round trips to the worker.
 */
class WriteTx {
  #sql: SqlTransaction;
  #queued: SqlStep[] = [];
  readonly startRevision: number;
  /** Revision of the changes made since the last `nextGroup`, once there is one. */
  #revision: number | null = null;
  #base: number;
  #sub = 0;

  constructor(sql: SqlTransaction, revision: number) {
    this.#sql = sql;
    this.startRevision = revision;
    this.#base = revision;
  }

  /** The store revision as of now in this transaction. */
  get revision(): number {
    return this.#revision ?? this.#base;
  }

  /** Starts a new group of changes: the next change takes a fresh revision. */
  nextGroup(): void {
    this.#base = this.revision;
    this.#revision = null;
  }

  write(step: SqlStep): void {
    this.#queued.push(step);
  }

  async read(steps: readonly SqlStep[]): Promise<unknown[]> {
    const queued = this.#queued;
    this.#queued = [];
    const results = await this.#sql.batch([...queued, ...steps]);
    return results.slice(queued.length);
  }

  /** Logs one change at this group's revision (allocating it on first use). */
  logChange(type: number, key: Uint8Array, value: Uint8Array): number {
    this.#revision ??= this.#base + 1;
    this.write(run(SQL.logChange, this.#revision, this.#sub++, type, key, value));
    return this.#revision;
  }

  /**
   * Commits. When the worker does not answer in time the commit may still happen there: that
   * is `outcome_unknown`, not a failure (a deadline on any earlier batch is a plain failure:
   * the connection rolls the transaction back before it runs anything sent later).
   */
  async commit(): Promise<void> {
    if (this.revision !== this.startRevision) {
      this.write(run(SQL.setMeta, this.revision, "revision"));
    }
    const queued = this.#queued;
    this.#queued = [];
    try {
      await this.#sql.commit(queued);
    } catch (error) {
      if (!(error instanceof SqlDeadlineError)) throw error;
      throw new TorusError(
        ErrorCode.OutcomeUnknown,
        `${error.message} to its commit: outcome unknown, the change may or may not have been ` +
          "applied",
        { cause: error },
      );
    }
  }
}

/** The store's data model over one SQLite connection. */
export class EmbeddedDb {
  #sql: SqlConnection;
  #path: string;
  #readOnly: boolean;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(sql: SqlConnection, path: string, readOnly: boolean) {
    this.#sql = sql;
    this.#path = path;
    this.#readOnly = readOnly;
  }

  /** Whether the store was opened read-only (see the module doc). */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /**
   * Sets up the file (WAL, FULL sync, schema) or checks it is a torus store of our format,
   * upgrading format 1 in place (its wall-clock lease deadlines are read against `now.wallMs`).
   */
  static async open(
    sql: SqlConnection,
    path: string,
    now: OpenTime,
    options: { readOnly?: boolean } = {},
  ): Promise<EmbeddedDb> {
    const db = new EmbeddedDb(sql, path, options.readOnly ?? false);
    // Identify the file before changing anything in it (WAL mode rewrites the header).
    const found = await db.#identify();
    if (db.#readOnly) {
      db.#checkReadable(found);
    } else {
      const [mode] = await sql.batch([get("PRAGMA journal_mode = WAL")]) as [SqlRow | null];
      if (mode?.journal_mode !== "wal") {
        throw invalid(`metadata store ${path}: cannot use WAL mode (${mode?.journal_mode})`);
      }
      await sql.batch([
        exec("PRAGMA synchronous = FULL"),
        exec(`PRAGMA journal_size_limit = ${64 * 1024 * 1024}`),
      ]);
      await db.#initialise(now);
    }
    // A damaged file is refused at open, with SQLite's finding, rather than failing later.
    const problems = await db.#check("PRAGMA quick_check");
    if (problems.length > 0) {
      throw invalid(`metadata store ${path} is damaged: ${problems.slice(0, 3).join("; ")}`);
    }
    return db;
  }

  /**
   * What the file is: empty, ours (current or older format), or neither (throws `invalid`).
   * Read through `sql`, the connection or a transaction on it.
   */
  async #identify(
    sql: Pick<SqlConnection, "batch"> = this.#sql,
  ): Promise<"empty" | "current" | "format1"> {
    const [appId, version, tables] = await sql.batch([
      get("PRAGMA application_id"),
      get("PRAGMA user_version"),
      get("SELECT count(*) AS n FROM sqlite_schema"),
    ]) as [SqlRow, SqlRow, SqlRow];
    if (appId.application_id === 0 && version.user_version === 0 && tables.n === 0) {
      return "empty";
    }
    if (appId.application_id !== APPLICATION_ID) {
      throw invalid(`${this.#path} is a SQLite database but not a torus metadata store`);
    }
    if (version.user_version === 1) return "format1";
    if (version.user_version !== SCHEMA_VERSION) {
      throw invalid(
        `metadata store ${this.#path} has format ${version.user_version}; this torus reads ` +
          `1 to ${SCHEMA_VERSION}`,
      );
    }
    return "current";
  }

  /** A read-only store must already be set up in the current format: it cannot write either. */
  #checkReadable(found: "empty" | "current" | "format1"): void {
    if (found === "empty") {
      throw invalid(
        `metadata store ${this.#path} is empty and read-only for this user: initialise it as ` +
          "a user who can write it",
      );
    }
    if (found === "format1") {
      throw invalid(
        `metadata store ${this.#path} has format 1 and is read-only for this user: open it ` +
          "once as a user who can write it, to upgrade it",
      );
    }
  }

  /** The error of anything that would write a read-only store. */
  #readOnlyError(): TorusError {
    return invalid(
      `metadata store ${this.#path} is read-only for this user (no write access to it or its ` +
        "directory): cannot change metadata",
    );
  }

  async #initialise(now: OpenTime): Promise<void> {
    const tx = this.#sql.transaction("immediate");
    try {
      // Checked again under the write lock: another process may be creating the file too.
      const found = await this.#identify(tx);
      if (found === "empty") await tx.batch([exec(SCHEMA)]);
      if (found === "format1") await tx.batch(upgradeFromFormat1(now));
      await tx.commit();
    } catch (error) {
      tx.rollback();
      throw error;
    }
  }

  /**
   * A transaction on a read-only store: only reads are possible, and they run in one read
   * transaction, so compares and results see one state, with the keys of due leases hidden.
   */
  async #readOnlyTxn(request: TxnRequest, now: LeaseTime): Promise<TxnResponse> {
    const ops = [...request.success, ...request.failure ?? []];
    if (ops.some((op) => op.type !== "get" && op.type !== "range")) throw this.#readOnlyError();
    const tx = this.#sql.transaction("deferred");
    try {
      const [revision, ...rows] = await tx.batch([
        get(SQL.meta, "revision"),
        ...request.compare.map((c) => getStep(encodeKey(c.key), now)),
      ]) as [SqlRow, ...(SqlRow | null)[]];
      const succeeded = request.compare.every((c, i) => {
        const row = rows[i];
        return compareHolds(c, row ? toEntry(row) : null);
      });
      const branch = succeeded ? request.success : request.failure ?? [];
      const reads = branch.map((op) => readStep(op, now));
      const answers = await tx.commit(reads);
      const results = branch.map((op, i) => readResult(op, answers[i]));
      return { succeeded, revision: Number(revision.value), results };
    } catch (error) {
      tx.rollback();
      throw error;
    }
  }

  /** Runs `fn` when no other operation of this connection is in progress. */
  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(fn, fn);
    this.#queue = result.catch(() => {});
    return result;
  }

  /** Resolves once every operation started so far has finished. */
  async settled(): Promise<void> {
    await this.#queue;
  }

  /** The store revision and the oldest logged revision. */
  head(): Promise<{ revision: number; compactRevision: number }> {
    return this.#exclusive(async () => {
      const [revision, compact] = await this.#sql.batch([
        get(SQL.meta, "revision"),
        get(SQL.meta, "compact_revision"),
      ]) as [SqlRow, SqlRow];
      return { revision: Number(revision.value), compactRevision: Number(compact.value) };
    });
  }

  /** One key, after expiring due leases. */
  get(key: string, now: LeaseTime): Promise<KvEntry | null> {
    const keyBytes = encodeKey(key);
    return this.#read(now, (live) => getStep(keyBytes, live), (row) => {
      return row ? toEntry(row as SqlRow) : null;
    });
  }

  /** Every key under `prefix`, sorted, after expiring due leases. */
  range(prefix: string, now: LeaseTime): Promise<KvEntry[]> {
    const bytes = encodePrefix(prefix);
    return this.#read(
      now,
      (live) => rangeStep(bytes, live),
      (rows) => toEntries(rows as SqlRow[], bytes),
    );
  }

  /**
   * A read that first expires due leases, in one round trip when none is due. A read-only store
   * reads past the keys of due leases instead.
   */
  #read<T>(
    now: LeaseTime,
    stepAt: (live: LeaseTime | null) => SqlStep,
    decode: (result: unknown) => T,
  ): Promise<T> {
    return this.#exclusive(async () => {
      if (this.#readOnly) return decode((await this.#sql.batch([stepAt(now)]))[0]);
      const step = stepAt(null);
      const [due, result] = await this.#sql.batch([get(SQL.anyDue, now.ms, now.bootId), step]);
      if (due === null) return decode(result);
      await this.#writeLocked(now, () => Promise.resolve());
      const [again] = await this.#sql.batch([step]);
      return decode(again);
    });
  }

  /** Runs a checked transaction (kv_common.ts checkTxn) atomically. */
  txn(request: TxnRequest, now: LeaseTime): Promise<TxnResponse> {
    if (this.#readOnly) return this.#exclusive(() => this.#readOnlyTxn(request, now));
    return this.#write(now, async (tx) => {
      const succeeded = await this.#allHold(tx, request.compare);
      const ops = succeeded ? request.success : request.failure ?? [];
      const results: TxnOpResult[] = [];
      for (let i = 0; i < ops.length;) {
        // Consecutive puts touch distinct keys (checkTxn), so they are read in one round trip.
        let end = i;
        while (ops[end]?.type === "put") end++;
        if (end > i) {
          await this.#putAll(tx, ops.slice(i, end) as Extract<TxnOp, { type: "put" }>[]);
          for (; i < end; i++) results.push({ type: "put" });
        } else {
          results.push(await this.#apply(tx, ops[i++]!));
        }
      }
      return { succeeded, results, revision: 0 };
    }).then(({ result, revision }) => ({ ...result, revision }));
  }

  /** A new lease expiring `ttlMs` after `now`; ids are never reused in one file. */
  async grantLease(ttlMs: number, now: LeaseTime): Promise<LeaseId> {
    const { result } = await this.#write(now, async (tx) => {
      const insert = run(SQL.insertLease, ttlMs, now.ms + ttlMs, now.bootId);
      const [info] = await tx.read([insert]) as [RunInfo];
      return BigInt(info.lastInsertRowid);
    });
    return result;
  }

  /** Renews a lease for its TTL from `now`; `not_exist` when it expired or was revoked. */
  async keepAliveLease(lease: LeaseId, now: LeaseTime): Promise<void> {
    // Due leases go first (#writeLocked), so a lease renewed here is of this boot.
    await this.#write(now, async (tx) => {
      const [info] = await tx.read([run(SQL.renewLease, now.ms, lease)]) as [RunInfo];
      if (info.changes === 0) throw notExist(`lease ${lease} expired or was revoked`);
    });
  }

  /** Revokes a lease and deletes its keys; an unknown lease is ignored. */
  async revokeLease(lease: LeaseId, now: LeaseTime): Promise<void> {
    await this.#write(now, (tx) => this.#dropLease(tx, lease));
  }

  /**
   * Expires due leases (writing only if one is due) and, when `trim`, cuts the change log to its
   * limits. Returns how many leases expired.
   */
  sweep(now: LeaseTime, trim: boolean): Promise<number> {
    return this.#exclusive(async () => {
      const [due, size] = await this.#sql.batch([
        get(SQL.anyDue, now.ms, now.bootId),
        get(trim ? SQL.logSize : "SELECT 0 AS n, 0 AS bytes"),
      ]) as [SqlRow | null, SqlRow];
      const overLimit = Number(size.n) > KV_CHANGE_LOG_MAX_ENTRIES ||
        Number(size.bytes) > KV_CHANGE_LOG_MAX_BYTES;
      if (due === null && !overLimit) return 0;
      const { expired } = await this.#writeLocked(now, async (tx) => {
        if (overLimit) await this.#trimLog(tx);
      });
      return expired;
    });
  }

  /** Drops logged changes before `revision` (default: the current one); the oldest kept. */
  async compact(now: LeaseTime, revision?: number): Promise<number> {
    const { result } = await this.#write(now, async (tx) => {
      const [kept] = await tx.read([get(SQL.meta, "compact_revision")]) as [SqlRow];
      const target = Math.min(revision ?? tx.startRevision, tx.startRevision);
      if (target <= Number(kept.value)) return Number(kept.value);
      tx.write(run(SQL.trim, target - 1));
      tx.write(run(SQL.setMeta, target, "compact_revision"));
      return target;
    });
    return result;
  }

  /** Up to `limit` logged changes at or after (revision, sub), oldest first. */
  changes(revision: number, sub: number, limit: number): Promise<ChangePage> {
    return this.#exclusive(async () => {
      const [compact, head, rows] = await this.#sql.batch([
        get(SQL.meta, "compact_revision"),
        get(SQL.meta, "revision"),
        all(SQL.changesFrom, revision, sub, limit),
      ]) as [SqlRow, SqlRow, SqlRow[]];
      return {
        compactRevision: Number(compact.value),
        headRevision: Number(head.value),
        rows: rows.map((r) => ({
          revision: Number(r.revision),
          sub: Number(r.sub),
          type: r.type === ChangeType.Delete ? "delete" : "put",
          key: decodeKey(r.key as Uint8Array),
          value: r.value as Uint8Array,
        })),
      };
    });
  }

  /** SQLite's integrity check of the file: empty when it is sound. */
  integrityCheck(): Promise<string[]> {
    return this.#exclusive(() => this.#check("PRAGMA integrity_check"));
  }

  async #check(pragma: string): Promise<string[]> {
    const [rows] = await this.#sql.batch([all(pragma)]) as [SqlRow[]];
    return rows.map((r) => String(Object.values(r)[0])).filter((r) => r !== "ok");
  }

  #write<T>(
    now: LeaseTime,
    body: (tx: WriteTx) => Promise<T>,
  ): Promise<{ result: T; revision: number; expired: number }> {
    return this.#exclusive(() => this.#writeLocked(now, body));
  }

  /** A write transaction, for callers already inside `#exclusive`. Expires due leases first. */
  async #writeLocked<T>(
    now: LeaseTime,
    body: (tx: WriteTx) => Promise<T>,
  ): Promise<{ result: T; revision: number; expired: number }> {
    if (this.#readOnly) throw this.#readOnlyError();
    const sqlTx = this.#sql.transaction("immediate");
    // Everything from the first batch on is covered: a deadline on the batch that takes the
    // write lock must end the transaction as surely as a failure later on.
    try {
      const [revision, due] = await sqlTx.batch([
        get(SQL.meta, "revision"),
        all(SQL.dueLeases, now.ms, now.bootId),
      ]) as [SqlRow, SqlRow[]];
      const tx = new WriteTx(sqlTx, Number(revision.value));
      for (const lease of due) {
        tx.nextGroup();
        await this.#dropLease(tx, BigInt(lease.id as number));
      }
      tx.nextGroup();
      const result = await body(tx);
      await tx.commit();
      return { result, revision: tx.revision, expired: due.length };
    } catch (error) {
      sqlTx.rollback();
      throw error;
    }
  }

  async #dropLease(tx: WriteTx, lease: LeaseId): Promise<void> {
    const [keys] = await tx.read([all(SQL.keysOfLease, lease)]) as [SqlRow[]];
    for (const { key } of keys) {
      tx.write(run(SQL.deleteKey, key as Uint8Array));
      tx.logChange(ChangeType.Delete, key as Uint8Array, new Uint8Array());
    }
    tx.write(run(SQL.deleteLease, lease));
  }

  async #allHold(tx: WriteTx, compares: readonly Compare[]): Promise<boolean> {
    if (compares.length === 0) return true;
    const rows = await tx.read(compares.map((c) => getStep(encodeKey(c.key), null))) as (
      | SqlRow
      | null
    )[];
    return compares.every((c, i) => compareHolds(c, rows[i] ? toEntry(rows[i]) : null));
  }

  async #apply(tx: WriteTx, op: TxnOp): Promise<TxnOpResult> {
    switch (op.type) {
      case "put":
        await this.#putAll(tx, [op]);
        return { type: "put" };
      case "delete": {
        const key = encodeKey(op.key);
        const [info] = await tx.read([run(SQL.deleteKey, key)]) as [RunInfo];
        if (info.changes > 0) tx.logChange(ChangeType.Delete, key, new Uint8Array());
        return { type: "delete", deleted: info.changes };
      }
      case "deletePrefix": {
        const prefix = encodePrefix(op.prefix);
        const [rows] = await tx.read([rangeStep(prefix, null)]) as [SqlRow[]];
        for (const { key } of rows) {
          tx.write(run(SQL.deleteKey, key as Uint8Array));
          tx.logChange(ChangeType.Delete, key as Uint8Array, new Uint8Array());
        }
        return { type: "deletePrefix", deleted: rows.length };
      }
      case "get":
      case "range": {
        const [answer] = await tx.read([readStep(op, null)]);
        return readResult(op, answer);
      }
      default:
        return unreachable(op, "txn op");
    }
  }

  /** Puts keys that are all distinct: one read of their state, then queued writes. */
  async #putAll(tx: WriteTx, puts: readonly Extract<TxnOp, { type: "put" }>[]): Promise<void> {
    const keys = puts.map((p) => encodeKey(p.key));
    const reads = puts.flatMap((p, i) => [
      p.lease ? get(SQL.leaseExists, p.lease) : get("SELECT 1 AS found"),
      getStep(keys[i]!, null),
    ]);
    const rows = await tx.read(reads) as (SqlRow | null)[];
    puts.forEach((put, i) => {
      const [known, old] = [rows[2 * i], rows[2 * i + 1]];
      if (!known) throw notExist(`lease ${put.lease} expired or was revoked`);
      const key = keys[i]!;
      const revision = tx.logChange(ChangeType.Put, key, put.value);
      const version = old ? Number(old.version) + 1 : 1;
      const created = old ? Number(old.create_revision) : revision;
      tx.write(run(SQL.upsert, key, put.value, version, created, revision, put.lease ?? 0n));
    });
  }

  /** Drops the oldest revisions until the log is within both limits. */
  async #trimLog(tx: WriteTx): Promise<void> {
    const [byCount, byBytes] = await tx.read([
      get(SQL.cutByCount, KV_CHANGE_LOG_MAX_ENTRIES),
      get(SQL.cutByBytes, KV_CHANGE_LOG_MAX_BYTES),
    ]) as [SqlRow | null, SqlRow | null];
    const cut = Math.max(Number(byCount?.revision ?? 0), Number(byBytes?.revision ?? 0));
    if (cut === 0) return;
    tx.write(run(SQL.trim, cut));
    tx.write(run(SQL.setMeta, cut + 1, "compact_revision"));
  }
}

/**
 * Format 1 to 2: lease deadlines move from wall-clock ms to the boot-time clock, each lease
 * keeping what was left of its TTL (at most the TTL, in case the wall clock had stepped back).
 */
function upgradeFromFormat1(now: OpenTime): SqlStep[] {
  return [
    exec("ALTER TABLE leases ADD COLUMN boot_id TEXT NOT NULL DEFAULT ''"),
    run(
      "UPDATE leases SET expires_at_ms = ? + max(0, min(ttl_ms, expires_at_ms - ?)), boot_id = ?",
      now.lease.ms,
      now.wallMs,
      now.lease.bootId,
    ),
    exec(`PRAGMA user_version = ${SCHEMA_VERSION}`),
  ];
}

/** Reads one key; with `live`, a key of a lease due at `live` reads as absent. */
function getStep(key: Uint8Array, live: LeaseTime | null): SqlStep {
  return live ? get(SQL.liveGet, key, live.ms, live.bootId) : get(SQL.get, key);
}

/** Reads the keys under `prefix`; with `live`, keys of leases due at `live` are left out. */
function rangeStep(prefix: Uint8Array, live: LeaseTime | null): SqlStep {
  const end = prefixEnd(prefix);
  if (live === null) {
    return end === null ? all(SQL.rangeFrom, prefix) : all(SQL.rangeBetween, prefix, end);
  }
  const lease = [live.ms, live.bootId] as const;
  return end === null
    ? all(SQL.liveRangeFrom, prefix, ...lease)
    : all(SQL.liveRangeBetween, prefix, end, ...lease);
}

/** The statement of a get or range op. */
function readStep(op: TxnOp, live: LeaseTime | null): SqlStep {
  if (op.type === "get") return getStep(encodeKey(op.key), live);
  assert(op.type === "range", `readStep of a ${op.type} op`);
  return rangeStep(encodePrefix(op.prefix), live);
}

/** The result of a get or range op from its statement's answer. */
function readResult(op: TxnOp, answer: unknown): TxnOpResult {
  if (op.type === "get") {
    const row = answer as SqlRow | null;
    return { type: "get", entries: row ? [toEntry(row)] : [] };
  }
  assert(op.type === "range", `readResult of a ${op.type} op`);
  return { type: "range", entries: toEntries(answer as SqlRow[], encodePrefix(op.prefix)) };
}

function toEntry(row: SqlRow): KvEntry {
  return {
    key: decodeKey(row.key as Uint8Array),
    value: row.value as Uint8Array,
    version: Number(row.version),
    createRevision: Number(row.create_revision),
    modRevision: Number(row.mod_revision),
    lease: BigInt(row.lease as number),
  };
}

function toEntries(rows: SqlRow[], prefix: Uint8Array): KvEntry[] {
  let bytes = 0;
  for (const row of rows) {
    bytes += (row.key as Uint8Array).length + (row.value as Uint8Array).length;
    if (bytes > KV_RESPONSE_MAX_BYTES) {
      throw invalid(`range under ${decodeKey(prefix)} exceeds ${KV_RESPONSE_MAX_BYTES} bytes`);
    }
  }
  return rows.map(toEntry);
}
