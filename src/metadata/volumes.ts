/**
 * Volume roles over the KvStore: the catalogue ({@link VolumeMetadataImpl}), per-volume block
 * state with the writer lock ({@link BlockVolumeMetadataImpl}) and snapshots
 * ({@link SnapshotMetadataImpl}).
 *
 * Invariants:
 * - A volume id is minted inside the transaction that creates the volume, so a failed create
 *   consumes no id (the original minted first and lost the id on a duplicate name).
 * - Nothing is cached: every read goes to the store (the original cached name → volume forever
 *   and served stale volumes after a delete and re-create).
 * - Deleting volume 2 deletes `volumemeta/2/` and nothing of volume 20, and only while the volume
 *   is unlocked (etcd semantics; the original's in-memory backend had it the other way round).
 * - The head moves only by a transaction guarded by "the lock key is the one my acquisition
 *   created" (its create revision, the fencing token, and the holder's UUID): a writer whose
 *   lease expired or was revoked cannot publish or unlock, not even after the same holder, with
 *   the same UUID, locked the volume again. Fencing tokens of one volume only grow.
 * @module
 */

import {
  assert,
  checkName,
  checkNameLookup,
  checkVolumeId,
  checkVolumeSizeBytes,
  ErrorCode,
  errorMessage,
  exists,
  INodeRef,
  invalid,
  notExist,
  TorusError,
  VOLUME_ID_MAX,
} from "../core/mod.ts";
import { type Volume, VolumeCodec } from "../models/mod.ts";
import type { Compare, KvEntry, TxnOp, TxnResponse, WatchEvent } from "./kv.ts";
import {
  checkLockHolder,
  decodeSnapshot,
  decodeU64,
  decodeVolumeId,
  encodeSnapshot,
  encodeU64,
  fromUtf8,
  type Snapshot,
  utf8,
  volumeHex,
} from "./keys.ts";
import {
  absent,
  casLoop,
  get,
  holds,
  type MetadataContext,
  notInitialised,
  present,
  put,
  RETRY,
  unchanged,
} from "./context.ts";
import type {
  BlockVolumeMetadata,
  HeadState,
  InvalidRecord,
  LockHolder,
  LockStatus,
  LockTaken,
  SnapshotMetadata,
  StaleWatchOptions,
  Subscription,
  VolumeInfo,
  VolumeLock,
  VolumeMetadata,
} from "./metadata.ts";

/** The type string of block volumes. */
export const BLOCK_VOLUME_TYPE = "block";

/** The entry returned by the `index`-th op of a transaction (get/range results). */
function entryAt(response: TxnResponse, index: number): KvEntry | null {
  const result = response.results[index];
  if (result?.type !== "get" && result?.type !== "range") return null;
  return result.entries[0] ?? null;
}

function entriesAt(response: TxnResponse, index: number): readonly KvEntry[] {
  const result = response.results[index];
  return result?.type === "get" || result?.type === "range" ? result.entries : [];
}

function del(key: string): TxnOp {
  return { type: "delete", key };
}

/** Checks a volume size: a positive whole number of bytes. */
export function checkVolumeSize(sizeBytes: number): number {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0) {
    throw invalid(`volume size must be a positive number of bytes, got ${sizeBytes}`);
  }
  // Block devices are addressed in sectors: a 513-byte volume cannot be exported whole.
  checkVolumeSizeBytes(sizeBytes);
  return sizeBytes;
}

/**
 * Decodes and checks a stored Volume record: an id in range, an addressable size and a name that
 * can be looked up (names of older builds that break today's rule are kept: they stay listable
 * and deletable).
 */
export function volumeInfoFromRecord(bytes: Uint8Array): VolumeInfo {
  const volume = VolumeCodec.decode(bytes);
  if (volume.id === 0n || volume.id > BigInt(VOLUME_ID_MAX)) {
    throw invalid(`volume record has id ${volume.id} out of range`);
  }
  checkNameLookup(volume.name, "volume");
  if (volume.maxBytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalid(`volume id ${volume.id} is larger than this build can address`);
  }
  const parentVolume = volume.parentVolume ?? 0n;
  if (parentVolume > BigInt(VOLUME_ID_MAX)) {
    throw invalid(`volume id ${volume.id} names parent volume ${parentVolume}, out of range`);
  }
  const parent = parentVolume === 0n ? null : {
    volumeId: Number(parentVolume),
    generation: volume.parentInode ?? 0n,
    snapshot: volume.parentSnapshot ?? "",
  };
  return {
    id: Number(volume.id),
    name: volume.name,
    type: volume.type,
    sizeBytes: Number(volume.maxBytes),
    parent,
  };
}

/** The Volume record of `info`. */
function volumeRecordOf(info: VolumeInfo): Volume {
  return {
    name: info.name,
    id: BigInt(info.id),
    type: info.type,
    maxBytes: BigInt(info.sizeBytes),
    parentVolume: BigInt(info.parent?.volumeId ?? 0),
    parentInode: info.parent?.generation ?? 0n,
    parentSnapshot: info.parent?.snapshot ?? "",
  };
}

/** The writes that create volume `info`'s metadata (record, name index, counter, head). */
function creationOps(keys: MetadataContext["keys"], info: VolumeInfo): TxnOp[] {
  return [
    put(keys.volumeMinter(), encodeU64(BigInt(info.id))),
    put(keys.volumeName(info.name), encodeU64(BigInt(info.id))),
    put(keys.volumeRecord(info.id), VolumeCodec.encode(volumeRecordOf(info))),
    put(keys.inodeCounter(info.id), encodeU64(1n)),
    put(keys.head(info.id), new INodeRef(info.id, 1n).toBytes()),
  ];
}

/** A record of `volumeid/<hex>` checked, including that its id is the one in its key. */
function checkedVolumeRecord(entry: KvEntry, directory: string): VolumeInfo {
  const info = volumeInfoFromRecord(entry.value);
  if (entry.key !== `${directory}${volumeHex(info.id)}`) {
    throw invalid(`the record of volume id ${info.id} is stored under another key`);
  }
  return info;
}

function unknownSnapshot(volumeId: number, name: string): TorusError {
  return notExist(`snapshot "${name}" of volume id ${volumeId} does not exist`);
}

/** The id the next created volume gets, from the minter's entry. */
function nextVolumeId(minter: KvEntry): number {
  const last = decodeU64(minter.value, "volume minter");
  if (last >= BigInt(VOLUME_ID_MAX)) throw invalid("volume ids are exhausted");
  return Number(last + 1n);
}

function unknownVolume(what: string | number): TorusError {
  return notExist(
    typeof what === "number" ? `volume id ${what} does not exist` : `volume "${what}" not found`,
  );
}

/** The volume catalogue. */
export class VolumeMetadataImpl implements VolumeMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async createBlockVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    const { kv, keys } = this.#context;
    const nameKey = keys.volumeName(checkName(name, "volume"));
    checkVolumeSize(sizeBytes);
    return await casLoop(this.#context, `create volume ${name}`, async () => {
      const read = await kv.txn({ compare: [], success: [get(keys.volumeMinter()), get(nameKey)] });
      const minter = entryAt(read, 0);
      if (!minter) throw notInitialised();
      if (entryAt(read, 1)) throw exists(`volume "${name}" already exists`);
      const info: VolumeInfo = {
        id: nextVolumeId(minter),
        name,
        type: BLOCK_VOLUME_TYPE,
        sizeBytes,
        parent: null,
      };
      const created = await kv.txn({
        compare: [absent(nameKey), unchanged(keys.volumeMinter(), minter.modRevision)],
        success: creationOps(keys, info),
      });
      // On a lost race the next attempt re-reads: a duplicate name then reports `exists`.
      return created.succeeded ? info : RETRY;
    });
  }

  async createClone(name: string, sourceVolumeId: number, snapshot: string): Promise<VolumeInfo> {
    const { kv, keys } = this.#context;
    const nameKey = keys.volumeName(checkName(name, "volume"));
    const snapKey = keys.snapshot(checkVolumeId(sourceVolumeId), snapshot);
    const countKey = keys.cloneCount(sourceVolumeId);
    return await casLoop(this.#context, `clone ${name}`, async () => {
      const read = await kv.txn({
        compare: [],
        success: [
          get(keys.volumeMinter()),
          get(nameKey),
          get(snapKey),
          get(keys.volumeRecord(sourceVolumeId)),
          get(countKey),
        ],
      });
      const [minter, taken, snapEntry, sourceEntry, count] = [0, 1, 2, 3, 4].map((i) =>
        entryAt(read, i)
      );
      if (!minter) throw notInitialised();
      if (taken) throw exists(`volume "${name}" already exists`);
      if (!sourceEntry) throw unknownVolume(sourceVolumeId);
      if (!snapEntry) throw unknownSnapshot(sourceVolumeId, snapshot);
      const source = volumeInfoFromRecord(sourceEntry.value);
      const parentSnapshot = decodeSnapshot(snapEntry.value);
      const info: VolumeInfo = {
        id: nextVolumeId(minter),
        name,
        type: BLOCK_VOLUME_TYPE,
        sizeBytes: parentSnapshot.sizeBytes ?? source.sizeBytes,
        parent: {
          volumeId: sourceVolumeId,
          generation: parentSnapshot.inodeRef.inode,
          snapshot,
        },
      };
      const recorded = { ...parentSnapshot, clones: [...parentSnapshot.clones, info.id] };
      const clones = (count ? decodeU64(count.value, "clone count") : 0n) + 1n;
      const created = await kv.txn({
        compare: [
          absent(nameKey),
          unchanged(keys.volumeMinter(), minter.modRevision),
          unchanged(snapKey, snapEntry.modRevision),
          count ? unchanged(countKey, count.modRevision) : absent(countKey),
        ],
        success: [
          ...creationOps(keys, info),
          put(snapKey, encodeSnapshot(recorded)),
          put(countKey, encodeU64(clones)),
        ],
      });
      return created.succeeded ? info : RETRY;
    });
  }

  async deleteVolume(name: string): Promise<void> {
    const { kv, keys } = this.#context;
    const nameKey = keys.volumeName(name);
    return await casLoop(this.#context, `delete volume ${name}`, async () => {
      const entry = await kv.get(nameKey);
      if (!entry) throw unknownVolume(name);
      const id = decodeVolumeId(entry.value, `volume index of ${name}`);
      const read = await kv.txn({
        compare: [],
        success: [get(keys.volumeRecord(id)), get(keys.cloneCount(id))],
      });
      const [recordEntry, count] = [entryAt(read, 0), entryAt(read, 1)];
      const clones = count ? decodeU64(count.value, "clone count") : 0n;
      if (clones > 0n) {
        throw new TorusError(
          ErrorCode.Locked,
          `volume "${name}" has ${clones} clone(s) made from its snapshots; delete them first`,
        );
      }
      const parentOps = recordEntry ? await this.#leaveParent(recordEntry) : null;
      const response = await kv.txn({
        compare: [
          unchanged(nameKey, entry.modRevision),
          absent(keys.lock(id)),
          count ? unchanged(keys.cloneCount(id), count.modRevision) : absent(keys.cloneCount(id)),
          ...(recordEntry ? [unchanged(keys.volumeRecord(id), recordEntry.modRevision)] : []),
          ...(parentOps?.compare ?? []),
        ],
        success: [
          del(nameKey),
          del(keys.volumeRecord(id)),
          { type: "deletePrefix", prefix: keys.volumeMetaDir(id) },
          // A deleted volume has no stale marks (and none can be added: no volume record).
          { type: "deletePrefix", prefix: keys.staleVolumeDir(id) },
          ...(parentOps?.success ?? []),
        ],
        failure: [get(nameKey), get(keys.lock(id))],
      });
      if (response.succeeded) return undefined;
      const now = entryAt(response, 0);
      const holder = entryAt(response, 1);
      if (now === null || now.modRevision !== entry.modRevision || holder === null) return RETRY;
      throw new TorusError(
        ErrorCode.Locked,
        `volume "${name}" is in use (locked by ${fromUtf8(holder.value, "lock")}); close it first`,
      );
    });
  }

  /**
   * For a clone: the guards and writes that take it off its parent snapshot's clone list and
   * count. Null for a volume of its own, or when the parent's records are already gone.
   */
  async #leaveParent(
    recordEntry: KvEntry,
  ): Promise<{ compare: Compare[]; success: TxnOp[] } | null> {
    const { kv, keys } = this.#context;
    const info = volumeInfoFromRecord(recordEntry.value);
    if (info.parent === null) return null;
    const snapKey = keys.snapshot(info.parent.volumeId, info.parent.snapshot);
    const countKey = keys.cloneCount(info.parent.volumeId);
    const read = await kv.txn({ compare: [], success: [get(snapKey), get(countKey)] });
    const [snapEntry, count] = [entryAt(read, 0), entryAt(read, 1)];
    const compare: Compare[] = [];
    const success: TxnOp[] = [];
    if (snapEntry) {
      const parentSnapshot = decodeSnapshot(snapEntry.value);
      const clones = parentSnapshot.clones.filter((id) => id !== info.id);
      compare.push(unchanged(snapKey, snapEntry.modRevision));
      success.push(put(snapKey, encodeSnapshot({ ...parentSnapshot, clones })));
    }
    if (count) {
      const left = decodeU64(count.value, "clone count");
      compare.push(unchanged(countKey, count.modRevision));
      success.push(left > 1n ? put(countKey, encodeU64(left - 1n)) : del(countKey));
    }
    return { compare, success };
  }

  async listVolumes(): Promise<
    { volumes: VolumeInfo[]; highestId: number; invalid: InvalidRecord[] }
  > {
    const { kv, keys } = this.#context;
    const response = await kv.txn({
      compare: [],
      success: [get(keys.volumeMinter()), { type: "range", prefix: keys.volumeIdsDir() }],
    });
    const minter = entryAt(response, 0);
    if (!minter) throw notInitialised();
    const volumes: VolumeInfo[] = [];
    const invalidRecords: InvalidRecord[] = [];
    for (const entry of entriesAt(response, 1)) {
      try {
        volumes.push(checkedVolumeRecord(entry, keys.volumeIdsDir()));
      } catch (error) {
        invalidRecords.push({ key: entry.key, reason: (error as Error).message });
      }
    }
    volumes.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const highestId = Number(decodeU64(minter.value, "volume minter"));
    return { volumes, highestId, invalid: invalidRecords };
  }

  async getVolume(name: string): Promise<VolumeInfo> {
    const entry = await this.#context.kv.get(this.#context.keys.volumeName(name));
    if (!entry) throw unknownVolume(name);
    const info = await this.#recordOf(decodeVolumeId(entry.value, `volume index of ${name}`));
    // Deleted and re-created between the two reads: the name now means another volume.
    if (!info || info.name !== name) throw unknownVolume(name);
    return info;
  }

  async getVolumeById(volumeId: number): Promise<VolumeInfo> {
    const info = await this.#recordOf(checkVolumeId(volumeId));
    if (!info) throw unknownVolume(volumeId);
    return info;
  }

  async #recordOf(volumeId: number): Promise<VolumeInfo | null> {
    const entry = await this.#context.kv.get(this.#context.keys.volumeRecord(volumeId));
    return entry ? volumeInfoFromRecord(entry.value) : null;
  }
}

/** Per-volume state of block volumes. */
export class BlockVolumeMetadataImpl implements BlockVolumeMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async watchLocks(
    onLock: (lock: LockTaken) => void,
    options: StaleWatchOptions = {},
  ): Promise<Subscription> {
    const { kv, keys, log } = this.#context;
    const directory = keys.volumeMetaDirs();
    const deliver = (key: string, createRevision: number) => {
      const volumeId = keys.lockVolume(key);
      if (volumeId === null) return;
      try {
        onLock({ volumeId, fencingToken: BigInt(createRevision) });
      } catch (error) {
        // A subscriber's bug must not end the watch for every other subscriber.
        log.error(`lock subscriber failed on volume ${volumeId}: ${errorMessage(error)}`);
      }
    };
    // One transaction reads the locks and the store revision, so the watch starts exactly after
    // what was read (as watchRing). The directory holds more than locks: only they are taken.
    const snapshot = await kv.txn({ compare: [], success: [{ type: "range", prefix: directory }] });
    const first = snapshot.results[0];
    if (first?.type === "range") {
      for (const entry of first.entries) deliver(entry.key, entry.createRevision);
    }
    const watch = await kv.watchPrefix(directory, (events: readonly WatchEvent[]) => {
      // A lock key is only ever created (put if absent) and deleted, so a put is a new lock
      // and its revision the lock's fencing token (its create revision).
      for (const event of events) if (event.type === "put") deliver(event.key, event.modRevision);
    }, {
      fromRevision: snapshot.revision + 1,
      ...(options.onError ? { onError: options.onError } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
    return { unsubscribe: () => watch.close() };
  }

  async commitINodeIndex(volumeId: number): Promise<bigint> {
    const { kv, keys } = this.#context;
    const key = keys.inodeCounter(checkVolumeId(volumeId));
    return await casLoop(this.#context, `INode counter of volume ${volumeId}`, async () => {
      const entry = await kv.get(key);
      if (!entry) throw unknownVolume(volumeId);
      const next = decodeU64(entry.value, "INode counter") + 1n;
      const response = await kv.txn({
        compare: [unchanged(key, entry.modRevision)],
        success: [put(key, encodeU64(next))],
      });
      return response.succeeded ? next : RETRY;
    });
  }

  async getINodeIndex(volumeId: number): Promise<bigint> {
    const entry = await this.#context.kv.get(
      this.#context.keys.inodeCounter(checkVolumeId(volumeId)),
    );
    if (!entry) throw unknownVolume(volumeId);
    return decodeU64(entry.value, "INode counter");
  }

  async getHead(volumeId: number): Promise<INodeRef> {
    const entry = await this.#context.kv.get(this.#context.keys.head(checkVolumeId(volumeId)));
    if (!entry) throw unknownVolume(volumeId);
    return INodeRef.fromBytes(entry.value);
  }

  async lock(volumeId: number, holder: LockHolder): Promise<VolumeLock> {
    const { kv, keys } = this.#context;
    checkLockHolder(holder.uuid);
    if (holder.lease === 0n) throw invalid("a volume lock must be bound to a lease");
    const record = keys.volumeRecord(checkVolumeId(volumeId));
    const lockKey = keys.lock(volumeId);
    const response = await kv.txn({
      compare: [present(record), absent(lockKey)],
      success: [
        { type: "put", key: lockKey, value: utf8(holder.uuid), lease: holder.lease },
        get(lockKey),
      ],
      failure: [get(record), get(lockKey)],
    });
    if (response.succeeded) {
      const created = entryAt(response, 1);
      assert(created !== null, "a lock put in a transaction is read back by the same one");
      return {
        volumeId,
        holder: holder.uuid,
        lease: holder.lease,
        fencingToken: BigInt(created.createRevision),
      };
    }
    if (!entryAt(response, 0)) throw unknownVolume(volumeId);
    throw lockedBy(volumeId, entryAt(response, 1));
  }

  async publishHead(lock: VolumeLock, head: INodeRef): Promise<void> {
    const { kv, keys } = this.#context;
    const lockKey = keys.lock(checkLock(lock));
    if (head.volume !== lock.volumeId) {
      throw invalid(`head ${head} does not belong to volume ${lock.volumeId}`);
    }
    const response = await kv.txn({
      compare: fenced(lockKey, lock),
      success: [put(keys.head(lock.volumeId), head.toBytes())],
      failure: [get(lockKey)],
    });
    if (!response.succeeded) throw lockLost(lock, entryAt(response, 0));
  }

  async unlock(lock: VolumeLock): Promise<void> {
    const lockKey = this.#context.keys.lock(checkLock(lock));
    const response = await this.#context.kv.txn({
      compare: fenced(lockKey, lock),
      success: [del(lockKey)],
      failure: [get(lockKey)],
    });
    if (!response.succeeded) throw lockLost(lock, entryAt(response, 0));
  }

  async lockStatus(volumeId: number): Promise<LockStatus> {
    const entry = await this.#context.kv.get(this.#context.keys.lock(checkVolumeId(volumeId)));
    if (!entry) return { state: "free" };
    return {
      state: "locked",
      holder: fromUtf8(entry.value, "lock"),
      lease: entry.lease,
      fencingToken: BigInt(entry.createRevision),
    };
  }

  async headState(volumeId: number): Promise<HeadState> {
    const { kv, keys } = this.#context;
    const read = await kv.txn({
      compare: [],
      success: [
        get(keys.volumeRecord(checkVolumeId(volumeId))),
        get(keys.head(volumeId)),
        get(keys.base(volumeId)),
      ],
    });
    const [record, head, base] = [0, 1, 2].map((i) => entryAt(read, i));
    if (!record || !head) throw unknownVolume(volumeId);
    return {
      volume: volumeInfoFromRecord(record.value),
      head: checkedHead(head.value, volumeId),
      base: base ? decodeU64(base.value, "base generation") : null,
    };
  }

  async sealGeneration(
    lock: VolumeLock,
    options: { ending: bigint; next: bigint; snapshotName: string; sizeBytes: number },
  ): Promise<Snapshot> {
    const { kv, keys, clock } = this.#context;
    const volumeId = checkLock(lock);
    const lockKey = keys.lock(volumeId);
    const snapKey = keys.snapshot(volumeId, checkName(options.snapshotName, "snapshot"));
    if (options.next <= options.ending) throw invalid("a new generation must be newer");
    const snapshot: Snapshot = {
      name: options.snapshotName,
      whenMs: clock.nowMs(),
      inodeRef: new INodeRef(volumeId, options.ending),
      sizeBytes: checkVolumeSize(options.sizeBytes),
      clones: [],
    };
    const response = await kv.txn({
      compare: [
        ...fenced(lockKey, lock),
        absent(snapKey),
        holds(keys.head(volumeId), snapshot.inodeRef.toBytes()),
      ],
      success: [
        put(snapKey, encodeSnapshot(snapshot)),
        put(keys.head(volumeId), new INodeRef(volumeId, options.next).toBytes()),
        del(keys.base(volumeId)),
      ],
      failure: [get(lockKey), get(snapKey), get(keys.head(volumeId))],
    });
    if (response.succeeded) return snapshot;
    if (entryAt(response, 1)) {
      throw exists(`snapshot "${options.snapshotName}" of volume id ${volumeId} exists`);
    }
    const lockNow = entryAt(response, 0);
    if (lockNow === null || BigInt(lockNow.createRevision) !== lock.fencingToken) {
      throw lockLost(lock, lockNow);
    }
    throw invalid(`volume id ${volumeId}: the head is not generation ${options.ending}`);
  }

  async clearBase(lock: VolumeLock): Promise<void> {
    const { kv, keys } = this.#context;
    const lockKey = keys.lock(checkLock(lock));
    const response = await kv.txn({
      compare: fenced(lockKey, lock),
      success: [del(keys.base(lock.volumeId))],
      failure: [get(lockKey)],
    });
    if (!response.succeeded) throw lockLost(lock, entryAt(response, 0));
  }

  async growVolume(volumeId: number, sizeBytes: number, lock?: VolumeLock): Promise<VolumeInfo> {
    const { kv, keys } = this.#context;
    const recordKey = keys.volumeRecord(checkVolumeId(volumeId));
    const lockKey = keys.lock(volumeId);
    checkVolumeSize(sizeBytes);
    if (lock !== undefined && checkLock(lock) !== volumeId) throw invalid("lock of another volume");
    return await casLoop(this.#context, `grow volume ${volumeId}`, async () => {
      const entry = await kv.get(recordKey);
      if (!entry) throw unknownVolume(volumeId);
      const info = volumeInfoFromRecord(entry.value);
      if (sizeBytes < info.sizeBytes) {
        throw invalid(
          `volume "${info.name}" is ${info.sizeBytes} bytes: shrinking is not supported`,
        );
      }
      if (sizeBytes === info.sizeBytes) return info;
      const grown = { ...info, sizeBytes };
      const response = await kv.txn({
        compare: [
          unchanged(recordKey, entry.modRevision),
          ...(lock === undefined ? [absent(lockKey)] : fenced(lockKey, lock)),
        ],
        success: [put(recordKey, VolumeCodec.encode(volumeRecordOf(grown)))],
        failure: [get(recordKey), get(lockKey)],
      });
      if (response.succeeded) return grown;
      const now = entryAt(response, 0);
      if (now === null || now.modRevision !== entry.modRevision) return RETRY;
      const lockNow = entryAt(response, 1);
      if (lock !== undefined) throw lockLost(lock, lockNow);
      throw lockedBy(volumeId, lockNow);
    });
  }
}

/** Decodes a head value and checks it names `volumeId`. */
function checkedHead(bytes: Uint8Array, volumeId: number): INodeRef {
  const head = INodeRef.fromBytes(bytes);
  if (head.volume !== volumeId) {
    throw invalid(`the head of volume id ${volumeId} names volume ${head.volume}`);
  }
  return head;
}

/** Checks a lock handle's fields (it may come from anywhere); returns its volume id. */
function checkLock(lock: VolumeLock): number {
  checkLockHolder(lock.holder);
  if (typeof lock.fencingToken !== "bigint" || lock.fencingToken <= 0n) {
    throw invalid(`fencing token ${String(lock.fencingToken)} is not a positive integer`);
  }
  if (lock.fencingToken > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalid(`fencing token ${lock.fencingToken} is out of range`);
  }
  return checkVolumeId(lock.volumeId);
}

/**
 * Guards of a fenced operation: the lock key is the very one `lock`'s acquisition created. Its
 * create revision identifies the acquisition (a re-lock creates the key anew, at a later
 * revision); the UUID is checked too, as a second line.
 */
function fenced(lockKey: string, lock: VolumeLock): Compare[] {
  return [
    { key: lockKey, target: "createRevision", op: "==", revision: Number(lock.fencingToken) },
    holds(lockKey, utf8(lock.holder)),
  ];
}

function lockedBy(volumeId: number, lock: KvEntry | null): TorusError {
  const holder = lock ? fromUtf8(lock.value, "lock") : "another client";
  return new TorusError(ErrorCode.Locked, `volume id ${volumeId} is locked by ${holder}`);
}

function lockLost(lock: VolumeLock, now: KvEntry | null): TorusError {
  const state = now
    ? `held by ${fromUtf8(now.value, "lock")} with fencing token ${now.createRevision}`
    : "free";
  return new TorusError(
    ErrorCode.Locked,
    `volume id ${lock.volumeId}: the lock of ${lock.holder} with fencing token ` +
      `${lock.fencingToken} was lost (it is ${state})`,
  );
}

/** Snapshots of block volumes. */
export class SnapshotMetadataImpl implements SnapshotMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async saveSnapshot(volumeId: number, name: string): Promise<Snapshot> {
    const { kv, keys, clock } = this.#context;
    const snapKey = keys.snapshot(checkVolumeId(volumeId), checkName(name, "snapshot"));
    const [recordKey, headKey, baseKey] = [
      keys.volumeRecord(volumeId),
      keys.head(volumeId),
      keys.base(volumeId),
    ];
    const [counterKey, lockKey] = [keys.inodeCounter(volumeId), keys.lock(volumeId)];
    return await casLoop(this.#context, `snapshot ${name} of volume ${volumeId}`, async () => {
      const read = await kv.txn({
        compare: [],
        success: [recordKey, headKey, baseKey, counterKey, snapKey, lockKey].map(get),
      });
      const [record, head, base, counter, taken, lock] = [0, 1, 2, 3, 4, 5].map((i) =>
        entryAt(read, i)
      );
      if (!record || !head || !counter) throw unknownVolume(volumeId);
      if (taken) throw exists(`snapshot "${name}" of volume id ${volumeId} exists`);
      if (lock) throw lockedBy(volumeId, lock);
      // The head's contents are its base's until a writer gave it a root of its own.
      const contents = base
        ? decodeU64(base.value, "base generation")
        : checkedHead(head.value, volumeId).inode;
      const next = decodeU64(counter.value, "INode counter") + 1n;
      const snapshot: Snapshot = {
        name,
        whenMs: clock.nowMs(),
        inodeRef: new INodeRef(volumeId, contents),
        sizeBytes: volumeInfoFromRecord(record.value).sizeBytes,
        clones: [],
      };
      const response = await kv.txn({
        compare: [
          unchanged(recordKey, record.modRevision),
          unchanged(headKey, head.modRevision),
          unchanged(counterKey, counter.modRevision),
          base ? unchanged(baseKey, base.modRevision) : absent(baseKey),
          absent(snapKey),
          absent(lockKey),
        ],
        success: [
          put(snapKey, encodeSnapshot(snapshot)),
          put(counterKey, encodeU64(next)),
          put(headKey, new INodeRef(volumeId, next).toBytes()),
          put(baseKey, encodeU64(contents)),
        ],
      });
      return response.succeeded ? snapshot : RETRY;
    });
  }

  async listSnapshots(volumeId: number): Promise<Snapshot[]> {
    const { kv, keys } = this.#context;
    const response = await kv.txn({
      compare: [],
      success: [
        get(keys.volumeRecord(checkVolumeId(volumeId))),
        { type: "range", prefix: keys.snapshotsDir(volumeId) },
      ],
    });
    if (!entryAt(response, 0)) throw unknownVolume(volumeId);
    // A snapshot that cannot be decoded is an error, never skipped: GC keeps blocks alive by the
    // snapshot list, and a silently missing snapshot would let it free that snapshot's blocks.
    return entriesAt(response, 1).map((e) => decodeSnapshot(e.value));
  }

  async getSnapshot(volumeId: number, name: string): Promise<Snapshot> {
    const entry = await this.#context.kv.get(
      this.#context.keys.snapshot(checkVolumeId(volumeId), name),
    );
    if (!entry) throw unknownSnapshot(volumeId, name);
    return decodeSnapshot(entry.value);
  }

  async deleteSnapshot(volumeId: number, name: string): Promise<void> {
    const snapKey = this.#context.keys.snapshot(checkVolumeId(volumeId), name);
    return await casLoop(this.#context, `delete snapshot ${name}`, async () => {
      const entry = await this.#context.kv.get(snapKey);
      if (!entry) throw unknownSnapshot(volumeId, name);
      const snapshot = decodeSnapshot(entry.value);
      if (snapshot.clones.length > 0) {
        throw new TorusError(
          ErrorCode.Locked,
          `snapshot "${name}" of volume id ${volumeId} has clones (volume ids ` +
            `${snapshot.clones.join(", ")}); delete them first`,
        );
      }
      const response = await this.#context.kv.txn({
        compare: [unchanged(snapKey, entry.modRevision)],
        success: [del(snapKey)],
      });
      return response.succeeded ? undefined : RETRY;
    });
  }

  async restoreSnapshot(volumeId: number, name: string): Promise<INodeRef> {
    const { kv, keys } = this.#context;
    const snapKey = keys.snapshot(checkVolumeId(volumeId), name);
    const [recordKey, counterKey, lockKey] = [
      keys.volumeRecord(volumeId),
      keys.inodeCounter(volumeId),
      keys.lock(volumeId),
    ];
    return await casLoop(this.#context, `restore ${name} of volume ${volumeId}`, async () => {
      const read = await kv.txn({
        compare: [],
        success: [snapKey, recordKey, counterKey, lockKey].map(get),
      });
      const [entry, record, counter, lock] = [0, 1, 2, 3].map((i) => entryAt(read, i));
      if (!record || !counter) throw unknownVolume(volumeId);
      if (!entry) throw unknownSnapshot(volumeId, name);
      if (lock) throw lockedBy(volumeId, lock);
      const snapshot = decodeSnapshot(entry.value);
      if (snapshot.inodeRef.volume !== volumeId) {
        throw invalid(`snapshot "${name}" points into volume ${snapshot.inodeRef.volume}`);
      }
      const info = volumeInfoFromRecord(record.value);
      const restored = { ...info, sizeBytes: snapshot.sizeBytes ?? info.sizeBytes };
      const next = decodeU64(counter.value, "INode counter") + 1n;
      const head = new INodeRef(volumeId, next);
      const response = await kv.txn({
        compare: [
          unchanged(snapKey, entry.modRevision),
          unchanged(recordKey, record.modRevision),
          unchanged(counterKey, counter.modRevision),
          absent(lockKey),
        ],
        success: [
          put(counterKey, encodeU64(next)),
          put(keys.head(volumeId), head.toBytes()),
          put(keys.base(volumeId), encodeU64(snapshot.inodeRef.inode)),
          put(recordKey, VolumeCodec.encode(volumeRecordOf(restored))),
        ],
      });
      return response.succeeded ? head : RETRY;
    });
  }
}
