/**
 * The metadata service as role interfaces. The original had one MetadataService interface of
 * twenty methods (rings, peers, leases, volumes, INode counters) plus a block-volume extension
 * chosen by switching on the backend's kind; here each consumer takes only the role it uses:
 *
 * - {@link ClusterMetadata}: init and wipe, global settings, the ring (get, compare-and-swap set,
 *   watch as a subscription).
 * - {@link LeaseMetadata}: leases that bind peer registrations and volume locks to a live process.
 * - {@link PeerMetadata}: peer registration under a lease and the list of live peers.
 * - {@link VolumeMetadata}: the volume catalogue: id minting, create, delete, list, get.
 * - {@link BlockVolumeMetadata}: per-volume state of a block volume: INode counter, head pointer,
 *   the writer lock (a {@link VolumeLock} handle with a fencing token) and publication of a new
 *   head fenced to one acquisition of the lock.
 * - {@link SnapshotMetadata}: named pointers to past heads: save, list, delete, restore.
 * - {@link StaleMarkMetadata}: durable stale marks: the blocks a holder lacks changes of, recorded
 *   by the writer before it acknowledges a write, followed by every node, removed after a resync.
 *
 * {@link MetadataService} bundles the roles over one KvStore (service.ts builds it); the same code
 * runs on etcd, the embedded store and the in-memory store, so they cannot drift apart.
 *
 * Error codes every implementation uses: `not_exist` (cluster not initialised, unknown volume,
 * snapshot, lease), `exists` (initialised twice, duplicate volume or snapshot name), `locked`
 * (volume locked by someone else, or the caller's lock was lost), `compare_failed` (a ring whose
 * version is not the successor of the stored one), `again` (a compare-and-swap kept losing the
 * race), `invalid` (bad names, sizes, corrupt values; a store this user cannot write),
 * `unavailable` (the store is unreachable), `outcome_unknown` (a change was sent but never
 * answered: it may have been applied), `closed` (the service was closed).
 * @module
 */

import type { BlockRef, ErrorCode, INodeRef } from "../core/mod.ts";
import type { PeerInfo, Ring as RingMessage } from "../models/mod.ts";
import type { KvStore, LeaseId } from "./kv.ts";
import type { BlockSpecLayer, GlobalMetadata, MetadataKeys, Snapshot } from "./keys.ts";

/** What `init` writes. */
export interface InitOptions {
  readonly blockSizeBytes: number;
  /** Layers top first; the bottom one must be base (kind 0). */
  readonly defaultBlockSpec: readonly BlockSpecLayer[];
  /** The first ring (version 1): ketama with no peers by default, or empty. */
  readonly ring: RingMessage;
}

/** A running subscription; `unsubscribe` stops delivery and releases the watch. */
export interface Subscription {
  unsubscribe(): Promise<void>;
}

/** Options of {@link ClusterMetadata.watchRing}. */
export interface RingWatchOptions {
  /** Called once if the watch breaks for good (store closed or unreachable). */
  readonly onError?: (error: Error) => void;
  /**
   * Called when the watch knows the ring it delivered last is current as of store `revision`
   * (see WatchOptions.onProgress); the watch keeps up this way while the ring does not change.
   */
  readonly onProgress?: (revision: number) => void;
}

/** Cluster-wide metadata: settings and the placement ring. */
export interface ClusterMetadata {
  /**
   * Writes global metadata, the volume minter and the first ring in one transaction;
   * `exists` if the cluster is already initialised.
   */
  init(options: InitOptions): Promise<void>;
  /** Whether global metadata exists. */
  isInitialised(): Promise<boolean>;
  /** Block size and default block spec; `not_exist` when not initialised. */
  globalMetadata(): Promise<GlobalMetadata>;
  /**
   * The cluster's id, minted by init; `""` for a cluster initialised without one (by the
   * original); `not_exist` when not initialised.
   */
  clusterId(): Promise<string>;
  /** Deletes every key under the prefix (and nothing else); returns how many. */
  wipe(): Promise<number>;
  /** The current ring; `not_exist` when not initialised. */
  getRing(): Promise<RingMessage>;
  /**
   * Replaces the ring by compare-and-swap. `next.version` must be exactly current + 1
   * (`compare_failed` otherwise); a concurrent change in between gives `again`.
   */
  setRing(next: RingMessage): Promise<void>;
  /**
   * Reads the ring, computes `change(current)` and sets it, retrying from a fresh read when
   * another writer won the race. `change` must return version current + 1. Returns the ring set.
   */
  updateRing(change: (current: RingMessage) => RingMessage): Promise<RingMessage>;
  /**
   * Calls `onRing` with the current ring (if any) and then with every newer ring, in version
   * order. Rings that fail to decode or do not advance the version are skipped and logged, never
   * fatal (the original panicked on a regression).
   */
  watchRing(onRing: (ring: RingMessage) => void, options?: RingWatchOptions): Promise<Subscription>;
}

/** Leases: a TTL that a live process keeps renewing; keys bound to it vanish when it lapses. */
export interface LeaseMetadata {
  /** A new lease of `ttlMs` (default LEASE_TTL_MS). */
  grant(ttlMs?: number): Promise<LeaseId>;
  /** Renews `lease`; `not_exist` if it has expired or was revoked. */
  keepAlive(lease: LeaseId): Promise<void>;
  /**
   * Renews `lease`, or grants a new one when it has expired (a peer must re-register after a
   * lost lease, original issue #252). Returns the lease now in force.
   */
  renewOrGrant(lease: LeaseId, ttlMs?: number): Promise<LeaseId>;
  /** Revokes `lease`, deleting every key bound to it (registrations, locks). */
  revoke(lease: LeaseId): Promise<void>;
}

/** Options of {@link PeerMetadata.listPeers}. */
export interface ListPeersOptions {
  /** Include registrations whose last heartbeat is older than PEER_STALE_MS. */
  readonly includeStale?: boolean;
}

/** Peer registrations: `nodes/<uuid>` = PeerInfo under the peer's lease. */
export interface PeerMetadata {
  /** A fresh random UUID for a client or node identity. */
  newUuid(): string;
  /** Writes `info` stamped with the current time, bound to `lease`. */
  registerPeer(info: PeerInfo, lease: LeaseId): Promise<void>;
  /** Removes a registration (a clean shutdown); absent is not an error. */
  unregisterPeer(uuid: string): Promise<void>;
  /** Registered peers (clients included), sorted by UUID; stale and undecodable ones skipped. */
  listPeers(options?: ListPeersOptions): Promise<PeerInfo[]>;
  /**
   * Records that node `uuid` finished applying ring `ringVersion`: it holds no copy the ring puts
   * elsewhere. Kept without a lease (`balanced/<uuid>`), so writers know it while the node is
   * down; a lower version than the one recorded is ignored.
   */
  recordBalanced(uuid: string, ringVersion: number): Promise<void>;
  /** The ring version each node last recorded as balanced; undecodable records skipped. */
  balancedRings(): Promise<Map<string, number>>;
}

/** A volume as the catalogue knows it. */
export interface VolumeInfo {
  readonly id: number;
  readonly name: string;
  /** `block` for block volumes. */
  readonly type: string;
  readonly sizeBytes: number;
  /** For a clone: the snapshot its never-written blocks read from. */
  readonly parent: VolumeParent | null;
}

/** The snapshot a clone was made from. */
export interface VolumeParent {
  readonly volumeId: number;
  /** The snapshot's generation. */
  readonly generation: bigint;
  readonly snapshot: string;
}

/** What the metadata service says about a block volume's current generation. */
export interface HeadState {
  readonly volume: VolumeInfo;
  /** (volume, current generation). */
  readonly head: INodeRef;
  /**
   * While the current generation has no root of its own yet: the generation whose root it starts
   * from (its contents are that generation's). Null once a writer wrote the root.
   */
  readonly base: bigint | null;
}

/** A stored record that could not be used (undecodable, or inconsistent with its key). */
export interface InvalidRecord {
  readonly key: string;
  readonly reason: string;
}

/** The volume catalogue. */
export interface VolumeMetadata {
  /**
   * Creates a block volume: mints its id and writes name index, record, INode counter (1) and
   * head (id, 1) in one transaction, so a failed create consumes no id. `exists` on a duplicate.
   */
  createBlockVolume(name: string, sizeBytes: number): Promise<VolumeInfo>;
  /**
   * Creates volume `name` as a copy-on-write clone of snapshot `snapshot` of `sourceVolumeId`,
   * of the snapshot's size: it reads the snapshot's data until it writes its own. The snapshot
   * records the clone and cannot be deleted while the clone exists. `exists`, `not_exist`.
   */
  createClone(name: string, sourceVolumeId: number, snapshot: string): Promise<VolumeInfo>;
  /**
   * Deletes a volume and everything under its metadata directory; `locked` while its lock is
   * held or while clones of its snapshots exist, `not_exist` if unknown. A clone leaves its
   * parent snapshot's clone list. Its blocks become garbage for GC.
   */
  deleteVolume(name: string): Promise<void>;
  /**
   * Every valid volume (sorted by name), the highest id minted so far, and the records that are
   * invalid. Invalid records are returned rather than thrown, so one cannot break every listing,
   * and rather than dropped, so a caller deciding what is garbage (GC) can refuse to go on.
   */
  listVolumes(): Promise<{ volumes: VolumeInfo[]; highestId: number; invalid: InvalidRecord[] }>;
  /** The volume called `name`, read fresh (no cache); `not_exist` if unknown. */
  getVolume(name: string): Promise<VolumeInfo>;
  /** The volume with id `volumeId`; `not_exist` if unknown. */
  getVolumeById(volumeId: number): Promise<VolumeInfo>;
}

/** The holder of a volume lock: its identity and the lease the lock is bound to. */
export interface LockHolder {
  readonly uuid: string;
  readonly lease: LeaseId;
}

/**
 * One acquisition of a volume's writer lock, as {@link BlockVolumeMetadata.lock} returns it.
 * Publishing and unlocking take this handle and are fenced to this acquisition: once the lock
 * was lost (its lease expired or was revoked) they fail with `locked`, even after the same
 * holder, with the same UUID, locked the volume again.
 */
export interface VolumeLock {
  readonly volumeId: number;
  /** The holder's UUID. */
  readonly holder: string;
  /** The lease the lock is bound to. */
  readonly lease: LeaseId;
  /**
   * The fencing token of this acquisition: greater than that of every earlier acquisition of
   * this volume's lock (it is the lock key's create revision, and store revisions only grow).
   * The volume layer sends it with its writes, so data nodes can refuse writes from an older
   * lock epoch.
   */
  readonly fencingToken: bigint;
}

/** Whether a volume is locked, and by whom (with the fencing token of that acquisition). */
export type LockStatus =
  | { readonly state: "free" }
  | {
    readonly state: "locked";
    readonly holder: string;
    readonly lease: LeaseId;
    readonly fencingToken: bigint;
  };

/** A volume lock taken, as {@link BlockVolumeMetadata.watchLocks} delivers it. */
export interface LockTaken {
  readonly volumeId: number;
  readonly fencingToken: bigint;
}

/** Per-volume state of block volumes. */
export interface BlockVolumeMetadata {
  /** Hands out the next INode id of the volume (atomic increment, retried on races). */
  commitINodeIndex(volumeId: number): Promise<bigint>;
  /** The last INode id handed out. */
  getINodeIndex(volumeId: number): Promise<bigint>;
  /** The head: the INodeRef of the latest published version. */
  getHead(volumeId: number): Promise<INodeRef>;
  /**
   * Takes the writer lock, bound to `holder.lease`: it is released when that lease expires or
   * is revoked. `locked` if anyone (including the same holder) already holds it. The caller
   * picks the lease: its process lease (as the original did), or one per open volume with its
   * own TTL, so a lock need not live and die with a whole process. Returns the handle of this
   * acquisition, with its fencing token.
   */
  lock(volumeId: number, holder: LockHolder): Promise<VolumeLock>;
  /**
   * Moves the head of `lock.volumeId` to `head`, only while `lock` (this acquisition) still
   * holds the lock: a writer that lost it gets `locked` and publishes nothing.
   */
  publishHead(lock: VolumeLock, head: INodeRef): Promise<void>;
  /** Releases the lock if `lock` (this acquisition) still holds it; `locked` otherwise. */
  unlock(lock: VolumeLock): Promise<void>;
  /** Whether the volume is locked and by whom. */
  lockStatus(volumeId: number): Promise<LockStatus>;
  /**
   * Follows the volume locks taken: `onLock` gets every lock held when the watch starts, then
   * every lock taken afterwards, in revision order, each with its fencing token (releases are
   * not delivered). Storage nodes use it to refuse an earlier writer of a volume as soon as a new
   * one holds the lock, even before the new writer reaches them (ADR 0005, section 7). A
   * callback that throws is logged; the watch goes on.
   */
  watchLocks(
    onLock: (lock: LockTaken) => void,
    options?: StaleWatchOptions,
  ): Promise<Subscription>;
  /** The volume record, head and base, read together. */
  headState(volumeId: number): Promise<HeadState>;
  /**
   * The writer ends its generation `ending` for snapshot `snapshotName` (of `sizeBytes`): the
   * snapshot records `ending` and the head moves to `next`, whose root the writer already made
   * durable. Fenced to `lock`; `exists` if the name is taken (nothing changes then).
   */
  sealGeneration(
    lock: VolumeLock,
    options: { ending: bigint; next: bigint; snapshotName: string; sizeBytes: number },
  ): Promise<Snapshot>;
  /** The writer wrote the root of the head's generation: the base is no longer needed. Fenced. */
  clearBase(lock: VolumeLock): Promise<void>;
  /**
   * Grows the volume to `sizeBytes` (shrinking is `invalid`). With `lock` it is fenced to that
   * writer; without, it needs the volume unlocked (`locked` otherwise).
   */
  growVolume(volumeId: number, sizeBytes: number, lock?: VolumeLock): Promise<VolumeInfo>;
}

/** Snapshots: sealed generations of a volume, by name. */
export interface SnapshotMetadata {
  /**
   * Takes snapshot `name` of a volume nobody has open: it records the head's contents (its
   * generation, or its base) and moves the head to a new generation based on them, so later
   * writes never change the snapshot. `locked` when a writer has the volume open (the writer
   * takes snapshots itself: {@link VolumeRequestMetadata}); `exists`, `not_exist`.
   */
  saveSnapshot(volumeId: number, name: string): Promise<Snapshot>;
  /** The snapshots of a volume, sorted by name. */
  listSnapshots(volumeId: number): Promise<Snapshot[]>;
  /** The snapshot `name` of a volume; `not_exist` if there is none. */
  getSnapshot(volumeId: number, name: string): Promise<Snapshot>;
  /**
   * Deletes a snapshot; `not_exist` if there is none of that name, `locked` while clones of it
   * exist.
   */
  deleteSnapshot(volumeId: number, name: string): Promise<void>;
  /**
   * Makes the volume's contents (and size) those of snapshot `name` again: the head moves to a new
   * generation based on the snapshot's, in one transaction guarded by "volume unlocked";
   * `locked` while the volume is open. Returns the new head.
   */
  restoreSnapshot(volumeId: number, name: string): Promise<INodeRef>;
}

/** What a client asks of the writer that holds a volume open. */
export type VolumeRequest =
  | { readonly op: "snapshot"; readonly name: string }
  | { readonly op: "grow"; readonly sizeBytes: number };

/** The writer's answer: done, or the error it met (its code and one-line message). */
export type VolumeReply =
  | { readonly ok: true }
  | { readonly ok: false; readonly code: ErrorCode; readonly message: string };

/**
 * Requests to the writer of a volume, through the metadata store: a snapshot of an open volume
 * must be taken by its writer (it alone can stop its writes at a flush point), and so must a
 * resize. The request is a key under the requester's lease (an abandoned request vanishes), the
 * reply another.
 */
export interface VolumeRequestMetadata {
  /**
   * Sends `request` to the writer of `volumeId` and waits for the reply. `again` when the volume
   * stops being locked (or changes hands) before an answer came: the caller then acts itself.
   * `unavailable` when no answer came within `timeoutMs`.
   */
  send(
    volumeId: number,
    request: VolumeRequest,
    options?: { timeoutMs?: number },
  ): Promise<VolumeReply>;
  /** Answers the requests sent to `volumeId` with `handler`, one at a time, until unsubscribed. */
  serve(volumeId: number, handler: (request: VolumeRequest) => Promise<VolumeReply>): Promise<
    Subscription
  >;
}

/** One node's stale marks for one volume (`stale/<volume hex>/<node UUID>`). */
export interface StaleRecord {
  readonly volumeId: number;
  /** The node (its UUID, canonical lowercase) that lacks changes. */
  readonly node: string;
  /**
   * The blocks it lacks changes of (sorted by type, volume, INode, index; distinct), empty when
   * `wholeVolume`.
   */
  readonly refs: readonly BlockRef[];
  /** More than STALE_REFS_MAX refs were marked: every block of the volume at that node is suspect. */
  readonly wholeVolume: boolean;
}

/**
 * A change seen by {@link StaleMarkMetadata.watch}: a record as written (`removed` false), or the
 * removal of the node's record for the volume (`removed` true, `refs` empty, `wholeVolume` false):
 * the node has no marks left for it. A removal may come for a record that was never delivered
 * (its value was undecodable and skipped).
 */
export interface StaleRecordChange extends StaleRecord {
  readonly removed: boolean;
}

/** Options of {@link StaleMarkMetadata.watch}. */
export interface StaleWatchOptions {
  /** Called once if the watch breaks for good (store closed or unreachable, history compacted). */
  readonly onError?: (error: Error) => void;
  /** Called when the watch has delivered every change up to store `revision` (WatchOptions). */
  readonly onProgress?: (revision: number) => void;
}

/**
 * Durable stale marks. When a write reaches some holders of a block and not others, the others
 * lack changes: they are marked stale for the block here before the write is acknowledged, so the
 * mark outlives the writer; every node follows the marks (`watch`) and passes marked holders over
 * when it reads; a resync that gave the node a whole copy removes them.
 *
 * Marks of one volume and node are one record, changed by compare-and-swap, so concurrent changes
 * merge; a record keeps at most STALE_REFS_MAX refs (about 768 KiB), past that it becomes
 * `wholeVolume`. Deleting a volume deletes its marks in the same transaction; marks cannot be
 * added to a volume that does not exist (`not_exist`), so none outlive it. Checks: the volume id
 * (not 0), the node UUID and that every ref is of the volume (`invalid` otherwise).
 */
export interface StaleMarkMetadata {
  /**
   * Adds marks (all refs of `volumeId`; `invalid` otherwise). Merged by compare-and-swap; past
   * STALE_REFS_MAX refs the record becomes wholeVolume. Idempotent: marks already recorded (or a
   * wholeVolume record) write nothing. `not_exist` when the volume does not exist. An undecodable
   * record is replaced by a wholeVolume one (logged): what it meant cannot be known, so every
   * block is suspect.
   */
  add(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void>;
  /**
   * Removes marks of refs (a no-op for refs not marked, and for a wholeVolume record). Deletes
   * the key when no ref is left. `invalid` when the record is undecodable (a whole-volume resync
   * and `clear` are then needed).
   */
  remove(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void>;
  /** Removes the node's whole record for the volume (after a whole-volume resync). */
  clear(volumeId: number, node: string): Promise<void>;
  /**
   * The records of one volume, sorted by node ([] for a volume without marks, or unknown). One
   * undecodable record fails the whole call with `invalid` naming its key: with it, nobody can
   * tell which blocks are current.
   */
  list(volumeId: number): Promise<StaleRecord[]>;
  /**
   * Every record now (read in one transaction), then every change from that revision on, in
   * revision order (as watchRing): `onRecord` gets a record when it is written and a removal when
   * its key goes. Undecodable values and malformed keys are logged and skipped; a subscriber that
   * throws is logged, the watch goes on.
   */
  watch(
    onRecord: (change: StaleRecordChange) => void,
    options?: StaleWatchOptions,
  ): Promise<Subscription>;
}

/** Every role over one KvStore. */
export interface MetadataService extends AsyncDisposable {
  readonly cluster: ClusterMetadata;
  readonly leases: LeaseMetadata;
  readonly peers: PeerMetadata;
  readonly volumes: VolumeMetadata;
  readonly blockVolumes: BlockVolumeMetadata;
  readonly snapshots: SnapshotMetadata;
  readonly requests: VolumeRequestMetadata;
  readonly staleMarks: StaleMarkMetadata;
  /** The key layout in use (prefix included). */
  readonly keys: MetadataKeys;
  /** The store underneath (for tests and the debug dump). */
  readonly kv: KvStore;
  /** Closes the store if the service owns it. Idempotent. */
  close(): Promise<void>;
}
