/**
 * The KvStore boundary: the small transactional key-value contract the metadata service is
 * written against. It is the subset of etcd v3 torus needs, so the etcd driver is thin, and the
 * embedded driver (SQLite in the node's data dir) gives one machine the same semantics without
 * an etcd server.
 *
 * Semantics (kv_contract.ts checks them against every driver):
 * - Keys are strings, compared bytewise as UTF-8; values are bytes. `range(prefix)` returns every
 *   key starting with `prefix`, sorted. Callers always end a directory prefix with `/`, and
 *   `deletePrefix` insists on it (`invalid` otherwise, the empty prefix included): deleting
 *   `volumemeta/2` must never take `volumemeta/20` with it.
 * - Every change gets a store-wide revision that only grows. An entry's `version` counts its puts
 *   since it was created (1 after the first put); an absent key has version 0.
 * - `txn` evaluates all `compare`s atomically and then runs `success` or `failure` atomically.
 * - A key put with a lease is deleted when the lease expires or is revoked. A lease expires when
 *   it is not kept alive within its TTL; `keepAliveLease` of an expired lease throws `not_exist`.
 * - `watchPrefix` delivers every change under the prefix after the watch starts (or after
 *   `fromRevision`), in revision order, including deletions caused by lease expiry.
 * - A store that cannot be reached makes calls fail with `unavailable` within the call timeout
 *   (embedded: one locked by another process; its worker stuck on a hung disk is reported
 *   KV_EMBEDDED_ANSWER_GRACE_MS later); it never hangs and never applies half a transaction.
 *
 * Details every driver keeps identically (they are etcd's rules, so both drivers behave alike):
 * - A revision is consumed only by a change: a transaction that changes nothing (reads, or a
 *   delete of an absent key) leaves the store revision as it was. All changes of one transaction
 *   share one revision. The first change of an empty store gets revision 2.
 * - A `value` compare on an absent key is false for both `==` and `!=`.
 * - One branch may not put the same key twice, nor put a key it also deletes: `invalid`.
 * - Limits (src/core/limits.ts): keys are 1..KV_KEY_MAX_BYTES of well-formed UTF-8 (prefixes may
 *   be empty), values at most KV_VALUE_MAX_BYTES, one request at most KV_REQUEST_MAX_BYTES of keys
 *   and values, at most KV_TXN_OPS_MAX compares and ops per branch; beyond them: `invalid`.
 * - A put naming an unknown or expired lease throws `not_exist` and changes nothing.
 * - Lease TTLs are whole seconds on etcd (rounded up; etcd raises very short ones to its
 *   minimum, about 2 s); the embedded store keeps milliseconds.
 * - To read a consistent state and then follow it, read inside a `txn` (its `revision`) and watch
 *   with `fromRevision: revision + 1`. A `fromRevision` older than the kept history fails with
 *   `not_exist` (etcd's compaction; the embedded store's trimmed change log); a watch that falls
 *   behind the kept history later ends with `onError(not_exist)`. A watch keeps up with the
 *   store even when nothing under its prefix changes (progress reports), so compacting history
 *   it has passed never ends it, across a reconnect or a restart of etcd included. `onProgress`
 *   tells how far a watch has got. `watchPrefix` itself fails
 *   with `unavailable` when the store cannot be reached; once started, a watch rides out
 *   outages (resuming by revision, nothing lost or repeated) for KV_WATCH_RETRY_MAX_MS and then
 *   ends with `onError(unavailable)`.
 * - Closing the store ends its open watches: each gets `onError` with `closed`. Closing a watch
 *   itself calls no `onError`. Calls after close throw `closed`.
 * - Entries and events handed out are fresh copies; values handed in are copied before use.
 * @module
 */

/** A lease id (etcd's are int64; the embedded store uses positive integers). */
export type LeaseId = bigint;

/** One stored key. */
export interface KvEntry {
  readonly key: string;
  readonly value: Uint8Array;
  /** Puts since creation (1 after the first put). */
  readonly version: number;
  /** Revision of the put that created the key. */
  readonly createRevision: number;
  /** Revision of the latest put. */
  readonly modRevision: number;
  /** Lease the key is attached to, or 0n. */
  readonly lease: LeaseId;
}

/** Comparison operators of a transaction guard. */
export type CompareOp = "==" | "!=" | "<" | ">";

/** One guard of a transaction. Version 0 means "absent". */
export type Compare =
  | {
    readonly key: string;
    readonly target: "version";
    readonly op: CompareOp;
    readonly version: number;
  }
  | {
    readonly key: string;
    readonly target: "value";
    readonly op: "==" | "!=";
    readonly value: Uint8Array;
  }
  | {
    readonly key: string;
    /** The revision of the latest put (0 when absent). */
    readonly target: "modRevision";
    readonly op: CompareOp;
    readonly revision: number;
  }
  | {
    readonly key: string;
    /** The revision of the put that created the key (0 when absent): one per incarnation. */
    readonly target: "createRevision";
    readonly op: CompareOp;
    readonly revision: number;
  };

/** One operation of a transaction branch. */
export type TxnOp =
  | {
    readonly type: "put";
    readonly key: string;
    readonly value: Uint8Array;
    readonly lease?: LeaseId;
  }
  | { readonly type: "delete"; readonly key: string }
  | { readonly type: "deletePrefix"; readonly prefix: string }
  | { readonly type: "get"; readonly key: string }
  | { readonly type: "range"; readonly prefix: string };

/** A compare-and-swap transaction. */
export interface TxnRequest {
  readonly compare: readonly Compare[];
  readonly success: readonly TxnOp[];
  readonly failure?: readonly TxnOp[];
}

/** Result of one executed operation: entries for get/range, the deleted count for deletes. */
export type TxnOpResult =
  | { readonly type: "put" }
  | { readonly type: "delete" | "deletePrefix"; readonly deleted: number }
  | { readonly type: "get" | "range"; readonly entries: readonly KvEntry[] };

/** Outcome of a transaction. */
export interface TxnResponse {
  /** Whether every compare held (so `success` ran). */
  readonly succeeded: boolean;
  /** Store revision after the transaction. */
  readonly revision: number;
  /** One result per operation of the branch that ran, in order. */
  readonly results: readonly TxnOpResult[];
}

/** A change seen by a watch. */
export interface WatchEvent {
  readonly type: "put" | "delete";
  readonly key: string;
  /** The new value for puts; empty for deletes. */
  readonly value: Uint8Array;
  readonly modRevision: number;
}

/** A running watch; `close` stops delivery. */
export interface Watch {
  close(): Promise<void>;
}

/** Options of a watch. */
export interface WatchOptions {
  /** Deliver changes with a revision >= this one (default: changes after the watch starts). */
  readonly fromRevision?: number;
  /**
   * Called at most once, when the watch ends for good without being closed: store closed
   * (`closed`), unreachable for too long (`unavailable`), history needed was compacted
   * (`not_exist`). No events follow it.
   */
  readonly onError?: (error: Error) => void;
  /**
   * Called when the watch knows it has delivered every change under its prefix up to `revision`
   * (after events, and on progress reports while the prefix is quiet), with growing revisions.
   * How often is the driver's business: at once after events; for a quiet prefix within a poll
   * (embedded) or a probe or progress interval (etcd). For callers that need to know a watch
   * is current, and for tests.
   */
  readonly onProgress?: (revision: number) => void;
}

/** The transactional key-value store behind the metadata service. */
export interface KvStore {
  /** `etcd` or `embedded`. */
  readonly kind: string;
  get(key: string): Promise<KvEntry | null>;
  /** Every key starting with `prefix`, sorted by key. */
  range(prefix: string): Promise<KvEntry[]>;
  put(key: string, value: Uint8Array, options?: { lease?: LeaseId }): Promise<void>;
  /** Deletes `key`; returns whether it existed. */
  delete(key: string): Promise<boolean>;
  /** Deletes every key starting with `prefix`, which must end with `/`; returns how many. */
  deletePrefix(prefix: string): Promise<number>;
  txn(request: TxnRequest): Promise<TxnResponse>;
  watchPrefix(
    prefix: string,
    onEvents: (events: readonly WatchEvent[]) => void,
    options?: WatchOptions,
  ): Promise<Watch>;
  grantLease(ttlMs: number): Promise<LeaseId>;
  /** Renews `lease` for another TTL; `not_exist` if it expired or was revoked. */
  keepAliveLease(lease: LeaseId): Promise<void>;
  /** Revokes `lease`, deleting its keys. Revoking an unknown lease is not an error. */
  revokeLease(lease: LeaseId): Promise<void>;
  /** Stops watches and releases connections. Idempotent. */
  close(): Promise<void>;
}
