/**
 * An in-memory KvStore with etcd's semantics: store-wide revisions, per-key versions, atomic
 * transactions, leases that expire by the injected clock, and prefix watches with replay from a
 * revision. Production-quality code, but used only by unit tests: the real drivers (etcd,
 * embedded) are the proof, and this store must agree with them on kv_contract.ts.
 *
 * Invariants:
 * - The revision grows by exactly one per write transaction (a put, a delete that removed
 *   something, a txn whose branch wrote, or a lease expiry/revoke that removed keys).
 * - Values are copied on the way in and on the way out; callers never share memory with the store.
 * - Watchers receive each revision's events once, in revision order, asynchronously.
 * - A value compare on an absent key is false, whatever the operator (etcd does the same).
 * @module
 */

import { assert, type Clock, closed, notExist } from "../core/mod.ts";
import type {
  Compare,
  KvEntry,
  KvStore,
  LeaseId,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResponse,
  Watch,
  WatchEvent,
  WatchOptions,
} from "./kv.ts";
import {
  checkDeletePrefix,
  checkLeaseId,
  checkPut,
  checkTtlMs,
  checkTxn,
  compareHolds,
  encodeKey,
  encodePrefix,
} from "./kv_common.ts";
import { monotonicClock } from "./lease_clock.ts";

/** Events kept for watches that start from an older revision. */
const HISTORY_EVENTS_MAX = 100_000;

interface Lease {
  readonly ttlMs: number;
  expiresAtMs: number;
  readonly keys: Set<string>;
}

interface Watcher {
  readonly prefix: string;
  readonly onEvents: (events: readonly WatchEvent[]) => void;
  readonly onError: ((error: Error) => void) | undefined;
  readonly onProgress: ((revision: number) => void) | undefined;
  /** The last revision reported to onProgress. */
  reported: number;
  closed: boolean;
}

/** Bytewise UTF-8 order of two strings (code point order), as etcd sorts keys. */
export function compareKeys(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const ca = ia.next();
    const cb = ib.next();
    if (ca.done || cb.done) return ca.done ? (cb.done ? 0 : -1) : 1;
    const pa = ca.value.codePointAt(0)!;
    const pb = cb.value.codePointAt(0)!;
    if (pa !== pb) return pa < pb ? -1 : 1;
  }
}

function copyEntry(entry: KvEntry): KvEntry {
  return { ...entry, value: entry.value.slice() };
}

/** The in-memory KvStore. */
export class MemoryKvStore implements KvStore {
  readonly kind = "memory";
  #clock: Clock;
  #entries = new Map<string, KvEntry>();
  // etcd starts at revision 1, so the first change of an empty store gets revision 2.
  #revision = 1;
  #leases = new Map<LeaseId, Lease>();
  #nextLease: LeaseId = 1n;
  #history: WatchEvent[] = [];
  /** Revisions below this one are gone from the history (compact, or the size cap). */
  #compactRevision = 1;
  #watchers = new Set<Watcher>();
  #delivery: Promise<void> = Promise.resolve();
  #sweeper: AbortController | null = null;
  #sweepAtMs = 0;
  #closed = false;

  constructor(options: { clock?: Clock } = {}) {
    // Leases live in this process only: a monotonic clock keeps them safe from wall-clock steps.
    this.#clock = options.clock ?? monotonicClock;
  }

  /**
   * Another handle on this store whose `close` leaves the store open, as a second process's
   * connection to a shared store would be.
   */
  connection(): KvStore {
    return {
      kind: this.kind,
      get: (key) => this.get(key),
      range: (prefix) => this.range(prefix),
      put: (key, value, options) => this.put(key, value, options),
      delete: (key) => this.delete(key),
      deletePrefix: (prefix) => this.deletePrefix(prefix),
      txn: (request) => this.txn(request),
      watchPrefix: (prefix, onEvents, options) => this.watchPrefix(prefix, onEvents, options),
      grantLease: (ttlMs) => this.grantLease(ttlMs),
      keepAliveLease: (lease) => this.keepAliveLease(lease),
      revokeLease: (lease) => this.revokeLease(lease),
      close: () => Promise.resolve(),
    };
  }

  /** The current store revision (for tests). */
  get revision(): number {
    return this.#revision;
  }

  /**
   * Forgets history before `revision` (default: the current one), like etcd's compaction: a
   * watch from an older revision then fails with `not_exist`.
   */
  compact(revision: number = this.#revision): void {
    this.#compactRevision = Math.max(this.#compactRevision, Math.min(revision, this.#revision));
    this.#history = this.#history.filter((e) => e.modRevision >= this.#compactRevision);
  }

  get(key: string): Promise<KvEntry | null> {
    return this.#run(() => {
      encodeKey(key);
      const entry = this.#entries.get(key);
      return entry ? copyEntry(entry) : null;
    });
  }

  range(prefix: string): Promise<KvEntry[]> {
    return this.#run(() => {
      encodePrefix(prefix);
      return this.#range(prefix).map(copyEntry);
    });
  }

  put(key: string, value: Uint8Array, options: { lease?: LeaseId } = {}): Promise<void> {
    const op: TxnOp = options.lease === undefined
      ? { type: "put", key, value }
      : { type: "put", key, value, lease: options.lease };
    return this.#run(() => {
      checkPut(key, value, options.lease);
      this.#apply([op]);
    });
  }

  delete(key: string): Promise<boolean> {
    return this.#run(() => {
      encodeKey(key);
      const [result] = this.#apply([{ type: "delete", key }]);
      return result?.type === "delete" && result.deleted > 0;
    });
  }

  deletePrefix(prefix: string): Promise<number> {
    return this.#run(() => {
      checkDeletePrefix(prefix);
      const [result] = this.#apply([{ type: "deletePrefix", prefix }]);
      return result?.type === "deletePrefix" ? result.deleted : 0;
    });
  }

  txn(request: TxnRequest): Promise<TxnResponse> {
    return this.#run(() => {
      // Both branches are checked, as etcd does, whichever one runs.
      request = checkTxn(request);
      const succeeded = request.compare.every((c) => this.#holds(c));
      const results = this.#apply(succeeded ? request.success : request.failure ?? []);
      return { succeeded, revision: this.#revision, results };
    });
  }

  watchPrefix(
    prefix: string,
    onEvents: (events: readonly WatchEvent[]) => void,
    options: WatchOptions = {},
  ): Promise<Watch> {
    return this.#run(() => {
      const watcher: Watcher = {
        prefix,
        onEvents,
        onError: options.onError,
        onProgress: options.onProgress,
        reported: 0,
        closed: false,
      };
      if (options.fromRevision !== undefined) this.#replay(watcher, options.fromRevision);
      this.#deliver(watcher, [], this.#revision);
      this.#watchers.add(watcher);
      return {
        close: () => {
          watcher.closed = true;
          this.#watchers.delete(watcher);
          return Promise.resolve();
        },
      };
    });
  }

  grantLease(ttlMs: number): Promise<LeaseId> {
    return this.#run(() => {
      ttlMs = checkTtlMs(ttlMs);
      const id = this.#nextLease++;
      this.#leases.set(id, { ttlMs, expiresAtMs: this.#clock.nowMs() + ttlMs, keys: new Set() });
      this.#scheduleSweep();
      return id;
    });
  }

  keepAliveLease(lease: LeaseId): Promise<void> {
    return this.#run(() => {
      const entry = this.#leases.get(checkLeaseId(lease));
      if (!entry) throw notExist(`lease ${lease} not found`);
      entry.expiresAtMs = this.#clock.nowMs() + entry.ttlMs;
    });
  }

  revokeLease(lease: LeaseId): Promise<void> {
    return this.#run(() => {
      this.#dropLeases([checkLeaseId(lease)]);
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#sweeper?.abort();
    const watchers = [...this.#watchers];
    this.#watchers.clear();
    await this.#delivery;
    for (const watcher of watchers) {
      watcher.closed = true;
      watcher.onError?.(closed("kv store closed"));
    }
  }

  /** Runs `body` after expiring due leases, as one atomic step. */
  #run<T>(body: () => T): Promise<T> {
    if (this.#closed) return Promise.reject(closed("kv store closed"));
    try {
      this.#expireDue();
      return Promise.resolve(body());
    } catch (error) {
      return Promise.reject(error);
    }
  }

  #range(prefix: string): KvEntry[] {
    const matching = [...this.#entries.values()].filter((e) => e.key.startsWith(prefix));
    return matching.sort((a, b) => compareKeys(a.key, b.key));
  }

  #holds(compare: Compare): boolean {
    return compareHolds(compare, this.#entries.get(compare.key) ?? null);
  }

  /** Applies `ops` in order under one new revision (if anything changed). */
  #apply(ops: readonly TxnOp[]): TxnOpResult[] {
    for (const op of ops) {
      if (op.type === "put" && op.lease !== undefined && op.lease !== 0n) {
        if (!this.#leases.has(op.lease)) throw notExist(`lease ${op.lease} not found`);
      }
    }
    const revision = this.#revision + 1;
    const events: WatchEvent[] = [];
    const results = ops.map((op) => this.#applyOne(op, revision, events));
    if (events.length > 0) this.#commit(revision, events);
    return results;
  }

  #applyOne(op: TxnOp, revision: number, events: WatchEvent[]): TxnOpResult {
    switch (op.type) {
      case "get": {
        const entry = this.#entries.get(op.key);
        return { type: "get", entries: entry ? [copyEntry(entry)] : [] };
      }
      case "range":
        return { type: "range", entries: this.#range(op.prefix).map(copyEntry) };
      case "put":
        this.#putEntry(op.key, op.value, op.lease ?? 0n, revision);
        events.push({ type: "put", key: op.key, value: op.value.slice(), modRevision: revision });
        return { type: "put" };
      case "delete":
        return { type: "delete", deleted: this.#deleteKeys([op.key], revision, events) };
      case "deletePrefix": {
        const keys = this.#range(op.prefix).map((e) => e.key);
        return { type: "deletePrefix", deleted: this.#deleteKeys(keys, revision, events) };
      }
    }
  }

  #putEntry(key: string, value: Uint8Array, lease: LeaseId, revision: number): void {
    const previous = this.#entries.get(key);
    if (previous && previous.lease !== 0n) this.#leases.get(previous.lease)?.keys.delete(key);
    if (lease !== 0n) this.#leases.get(lease)!.keys.add(key);
    this.#entries.set(key, {
      key,
      value: value.slice(),
      version: (previous?.version ?? 0) + 1,
      createRevision: previous?.createRevision ?? revision,
      modRevision: revision,
      lease,
    });
  }

  #deleteKeys(keys: readonly string[], revision: number, events: WatchEvent[]): number {
    let deleted = 0;
    for (const key of keys) {
      const entry = this.#entries.get(key);
      if (!entry) continue;
      if (entry.lease !== 0n) this.#leases.get(entry.lease)?.keys.delete(key);
      this.#entries.delete(key);
      events.push({ type: "delete", key, value: new Uint8Array(0), modRevision: revision });
      deleted++;
    }
    return deleted;
  }

  #commit(revision: number, events: WatchEvent[]): void {
    assert(revision === this.#revision + 1, "memory kv: revisions advance by one");
    this.#revision = revision;
    this.#history.push(...events);
    if (this.#history.length > HISTORY_EVENTS_MAX) {
      this.#history.splice(0, this.#history.length - HISTORY_EVENTS_MAX);
      // The cut may have split the oldest revision: forget all of it.
      this.compact(this.#history[0]!.modRevision + 1);
    }
    for (const watcher of this.#watchers) {
      const mine = events.filter((e) => e.key.startsWith(watcher.prefix));
      this.#deliver(watcher, mine, revision);
    }
  }

  #replay(watcher: Watcher, fromRevision: number): void {
    if (fromRevision < this.#compactRevision) {
      throw notExist(`watch from revision ${fromRevision}: that history was compacted`);
    }
    const events = this.#history.filter((e) =>
      e.modRevision >= fromRevision && e.key.startsWith(watcher.prefix)
    );
    // One callback per revision, as live delivery does.
    const byRevision = new Map<number, WatchEvent[]>();
    for (const event of events) {
      const list = byRevision.get(event.modRevision) ?? [];
      list.push(event);
      byRevision.set(event.modRevision, list);
    }
    for (const [revision, list] of byRevision) this.#deliver(watcher, list, revision);
  }

  /** Hands `events` of `revision` (maybe none) to `watcher`, then reports its progress. */
  #deliver(watcher: Watcher, events: WatchEvent[], revision: number): void {
    const copies = events.map((e) => ({ ...e, value: e.value.slice() }));
    // Delivery is asynchronous and chained, so callbacks run in revision order and never inside
    // the caller's transaction.
    this.#delivery = this.#delivery.then(() => {
      if (!watcher.closed && copies.length > 0) watcher.onEvents(copies);
      if (!watcher.closed && revision > watcher.reported) {
        watcher.reported = revision;
        watcher.onProgress?.(revision);
      }
    });
  }

  #expireDue(): void {
    const nowMs = this.#clock.nowMs();
    const due = [...this.#leases].filter(([, l]) => l.expiresAtMs <= nowMs).map(([id]) => id);
    if (due.length > 0) this.#dropLeases(due);
  }

  /** Removes `leases` and deletes their keys in one revision, as etcd revokes a lease. */
  #dropLeases(leases: readonly LeaseId[]): void {
    const keys: string[] = [];
    for (const id of leases) {
      const lease = this.#leases.get(id);
      if (!lease) continue;
      keys.push(...lease.keys);
      this.#leases.delete(id);
    }
    if (keys.length === 0) return;
    const revision = this.#revision + 1;
    const events: WatchEvent[] = [];
    this.#deleteKeys(keys, revision, events);
    if (events.length > 0) this.#commit(revision, events);
  }

  /**
   * Keeps one timer armed for the earliest lease deadline, so expiry deletes keys (and tells
   * watchers) even when nobody calls the store.
   */
  #scheduleSweep(): void {
    if (this.#closed || this.#leases.size === 0) return;
    const nextMs = Math.min(...[...this.#leases.values()].map((l) => l.expiresAtMs));
    if (this.#sweeper !== null && this.#sweepAtMs <= nextMs) return;
    this.#sweeper?.abort();
    const controller = new AbortController();
    this.#sweeper = controller;
    this.#sweepAtMs = nextMs;
    const waitMs = Math.max(0, nextMs - this.#clock.nowMs());
    const done = () => {
      if (this.#sweeper === controller) this.#sweeper = null;
    };
    this.#clock.sleep(waitMs, controller.signal).then(() => {
      done();
      if (this.#closed) return;
      this.#expireDue();
      this.#scheduleSweep();
    }, done);
  }
}
