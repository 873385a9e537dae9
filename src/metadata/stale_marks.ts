/**
 * Durable stale marks ({@link StaleMarkMetadata}) over the KvStore: which holders lack changes of
 * which blocks, recorded by the writer before it acknowledges a write and followed by every node.
 *
 * Layout: `stale/<volume id hex>/<node UUID>` holds the node's marks for the volume, one record in
 * a small binary encoding ({@link encodeStaleMarks}): a format version byte (1), a flags byte
 * (bit 0: whole volume), the count of refs as u32 little-endian, then the refs, 24 bytes each (the
 * BlockRef binary form), sorted and distinct. At most {@link STALE_REFS_MAX} refs (about 768 KiB,
 * under etcd's 1.5 MiB request limit and KV_VALUE_MAX_BYTES); beyond that the record becomes
 * "whole volume" and lists none.
 *
 * Invariants:
 * - A record changes only by a transaction guarded by the mod revision read (or by absence), so
 *   two concurrent adds both land: the loser re-reads and merges (casLoop).
 * - A stored record is never empty: removing its last ref deletes the key.
 * - Every ref of a record is of the record's volume; a whole-volume record lists none.
 * - Marks are only written while the volume's record exists (a guard in the same transaction),
 *   and deleteVolume deletes `stale/<id>/` in its own transaction: no mark outlives its volume.
 * - An undecodable record is never trusted: `list` and `remove` refuse it (`invalid`, naming the
 *   key), `watch` skips it, `add` replaces it by a whole-volume record (every block suspect),
 *   `clear` deletes it.
 * @module
 */

import {
  assert,
  BLOCK_REF_BYTES,
  BlockRef,
  errorMessage,
  invalid,
  KV_KEY_MAX_BYTES,
  KV_REQUEST_MAX_BYTES,
  KV_VALUE_MAX_BYTES,
  notExist,
  quoteForMessage,
} from "../core/mod.ts";
import type { KvEntry, TxnOp, WatchEvent } from "./kv.ts";
import {
  absent,
  casLoop,
  get,
  type MetadataContext,
  present,
  put,
  RETRY,
  unchanged,
} from "./context.ts";
import type {
  StaleMarkMetadata,
  StaleRecord,
  StaleRecordChange,
  StaleWatchOptions,
  Subscription,
} from "./metadata.ts";

/**
 * Most refs one stale record lists (about 768 KiB of value). Marking more turns the record into
 * a whole-volume one: every block of the volume at that node is then suspect.
 */
export const STALE_REFS_MAX = 32_768;

/** The format version byte of a stale record. */
const STALE_FORMAT_VERSION = 1;
/** Flags bit: every block of the volume is suspect. */
const FLAG_WHOLE_VOLUME = 0x01;
/** Version byte, flags byte, u32 LE count. */
const STALE_HEADER_BYTES = 6;

assert(
  STALE_HEADER_BYTES + STALE_REFS_MAX * BLOCK_REF_BYTES <= KV_VALUE_MAX_BYTES,
  "a full stale record fits a metadata value",
);
assert(
  KV_KEY_MAX_BYTES + STALE_HEADER_BYTES + STALE_REFS_MAX * BLOCK_REF_BYTES <= KV_REQUEST_MAX_BYTES,
  "a full stale record and its key fit one metadata request",
);

/** The contents of one stale record (the value; volume and node are in its key). */
export interface StaleMarks {
  /** Sorted ({@link compareBlockRefs}) and distinct; empty when `wholeVolume`. */
  readonly refs: readonly BlockRef[];
  readonly wholeVolume: boolean;
}

/** The order of refs in a stale record: by type, volume, INode id, index. */
export function compareBlockRefs(a: BlockRef, b: BlockRef): number {
  if (a.type !== b.type) return a.type - b.type;
  if (a.volume !== b.volume) return a.volume - b.volume;
  if (a.inode !== b.inode) return a.inode < b.inode ? -1 : 1;
  if (a.index !== b.index) return a.index < b.index ? -1 : 1;
  return 0;
}

/** Encodes a stale record (see the module doc). */
export function encodeStaleMarks(marks: StaleMarks): Uint8Array {
  const count = marks.refs.length;
  assert(!marks.wholeVolume || count === 0, "a whole-volume stale record lists no refs");
  assert(count <= STALE_REFS_MAX, "a stale record lists at most STALE_REFS_MAX refs");
  const bytes = new Uint8Array(STALE_HEADER_BYTES + count * BLOCK_REF_BYTES);
  bytes[0] = STALE_FORMAT_VERSION;
  bytes[1] = marks.wholeVolume ? FLAG_WHOLE_VOLUME : 0;
  new DataView(bytes.buffer).setUint32(2, count, true);
  marks.refs.forEach((ref, i) => ref.writeTo(bytes, STALE_HEADER_BYTES + i * BLOCK_REF_BYTES));
  return bytes;
}

/**
 * Decodes the stale record stored under `key` for volume `volumeId`. Garbage, a truncated or
 * oversized value, an unknown version or flag, an empty record, refs out of order or of another
 * volume: `invalid`, naming the key.
 */
export function decodeStaleMarks(bytes: Uint8Array, key: string, volumeId: number): StaleMarks {
  const bad = (why: string) => invalid(`stale record ${quoteForMessage(key, 200)}: ${why}`);
  if (bytes.length < STALE_HEADER_BYTES) {
    throw bad(`${bytes.length} bytes, shorter than its ${STALE_HEADER_BYTES}-byte header`);
  }
  if (bytes[0] !== STALE_FORMAT_VERSION) throw bad(`unknown format version ${bytes[0]}`);
  const flags = bytes[1]!;
  if ((flags & ~FLAG_WHOLE_VOLUME) !== 0) throw bad(`unknown flags 0x${flags.toString(16)}`);
  const count = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(2, true);
  if (count > STALE_REFS_MAX) throw bad(`${count} refs, more than ${STALE_REFS_MAX}`);
  if (bytes.length !== STALE_HEADER_BYTES + count * BLOCK_REF_BYTES) {
    throw bad(`${bytes.length} bytes do not hold exactly ${count} refs`);
  }
  const wholeVolume = (flags & FLAG_WHOLE_VOLUME) !== 0;
  if (wholeVolume && count !== 0) throw bad("a whole-volume record lists refs");
  if (!wholeVolume && count === 0) throw bad("the record marks nothing");
  const refs: BlockRef[] = [];
  for (let i = 0; i < count; i++) {
    let ref: BlockRef;
    try {
      ref = BlockRef.fromBytes(bytes, STALE_HEADER_BYTES + i * BLOCK_REF_BYTES);
    } catch (error) {
      throw bad(`ref ${i}: ${errorMessage(error)}`);
    }
    if (ref.volume !== volumeId) throw bad(`${ref} is not a block of volume id ${volumeId}`);
    const previous = refs[i - 1];
    if (previous !== undefined && compareBlockRefs(previous, ref) >= 0) {
      throw bad("its refs are not sorted and distinct");
    }
    refs.push(ref);
  }
  return { refs, wholeVolume };
}

/** Options of {@link StaleMarkMetadataImpl}. */
export interface StaleMarkOptions {
  /** Most refs a record lists before it becomes whole-volume (1..STALE_REFS_MAX; for tests). */
  readonly refsMax?: number;
}

/** The refs of a call, checked to be of `volumeId`, sorted and distinct. */
function checkedRefs(volumeId: number, refs: readonly BlockRef[]): BlockRef[] {
  const distinct = new Map<string, BlockRef>();
  for (const ref of refs) {
    if (!(ref instanceof BlockRef)) throw invalid("a stale mark needs BlockRefs");
    if (ref.volume !== volumeId) {
      throw invalid(`cannot mark ${ref} stale in volume id ${volumeId}: it is of another volume`);
    }
    distinct.set(ref.key, ref);
  }
  return [...distinct.values()].sort(compareBlockRefs);
}

/** `current` with `adding` (sorted, distinct) merged in; null when it already covers them. */
function merged(
  current: StaleMarks,
  adding: readonly BlockRef[],
  refsMax: number,
): StaleMarks | null {
  if (current.wholeVolume) return null;
  const known = new Set(current.refs.map((ref) => ref.key));
  const fresh = adding.filter((ref) => !known.has(ref.key));
  if (fresh.length === 0) return null;
  const refs = [...current.refs, ...fresh].sort(compareBlockRefs);
  return refs.length > refsMax ? WHOLE_VOLUME : { refs, wholeVolume: false };
}

const WHOLE_VOLUME: StaleMarks = { refs: [], wholeVolume: true };
const NO_MARKS: StaleMarks = { refs: [], wholeVolume: false };

function del(key: string): TxnOp {
  return { type: "delete", key };
}

/** Stale marks over the store; see the module doc. */
export class StaleMarkMetadataImpl implements StaleMarkMetadata {
  readonly #context: MetadataContext;
  readonly #refsMax: number;

  constructor(context: MetadataContext, options: StaleMarkOptions = {}) {
    const refsMax = options.refsMax ?? STALE_REFS_MAX;
    if (!Number.isSafeInteger(refsMax) || refsMax < 1 || refsMax > STALE_REFS_MAX) {
      throw invalid(`the most refs of a stale record must be 1..${STALE_REFS_MAX}, not ${refsMax}`);
    }
    this.#context = context;
    this.#refsMax = refsMax;
  }

  async add(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    const { kv, keys, log } = this.#context;
    const key = keys.staleRecord(volumeId, node);
    const adding = checkedRefs(volumeId, refs);
    if (adding.length === 0) return;
    const volumeKey = keys.volumeRecord(volumeId);
    await casLoop(this.#context, `marking ${node} stale in volume ${volumeId}`, async () => {
      const entry = await kv.get(key);
      let next: StaleMarks | null;
      if (entry === null) {
        next = merged(NO_MARKS, adding, this.#refsMax);
      } else {
        try {
          next = merged(decodeStaleMarks(entry.value, key, volumeId), adding, this.#refsMax);
        } catch (error) {
          // What the record meant cannot be known: every block of the volume is suspect.
          log.warn(`${errorMessage(error)}; replacing it by a whole-volume record`);
          next = WHOLE_VOLUME;
        }
      }
      if (next === null) return undefined; // Every mark is recorded already.
      const response = await kv.txn({
        compare: [present(volumeKey), entry ? unchanged(key, entry.modRevision) : absent(key)],
        success: [put(key, encodeStaleMarks(next))],
        failure: [get(volumeKey)],
      });
      if (response.succeeded) return undefined;
      const volume = response.results[0];
      if (volume?.type === "get" && volume.entries.length === 0) {
        throw notExist(`volume id ${volumeId} does not exist`);
      }
      return RETRY;
    });
  }

  async remove(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    const { kv, keys } = this.#context;
    const key = keys.staleRecord(volumeId, node);
    const removing = new Set(checkedRefs(volumeId, refs).map((ref) => ref.key));
    if (removing.size === 0) return;
    await casLoop(this.#context, `unmarking ${node} in volume ${volumeId}`, async () => {
      const entry = await kv.get(key);
      if (entry === null) return undefined;
      const current = decodeStaleMarks(entry.value, key, volumeId);
      if (current.wholeVolume) return undefined; // Only a whole-volume resync ends it (clear).
      const left = current.refs.filter((ref) => !removing.has(ref.key));
      if (left.length === current.refs.length) return undefined;
      const response = await kv.txn({
        compare: [unchanged(key, entry.modRevision)],
        success: [
          left.length === 0
            ? del(key)
            : put(key, encodeStaleMarks({ refs: left, wholeVolume: false })),
        ],
      });
      return response.succeeded ? undefined : RETRY;
    });
  }

  async clear(volumeId: number, node: string): Promise<void> {
    const { kv, keys } = this.#context;
    await kv.delete(keys.staleRecord(volumeId, node));
  }

  async list(volumeId: number): Promise<StaleRecord[]> {
    const { kv, keys } = this.#context;
    const entries = await kv.range(keys.staleVolumeDir(volumeId));
    return entries.map((entry) => this.#recordOf(entry));
  }

  async watch(
    onRecord: (change: StaleRecordChange) => void,
    options: StaleWatchOptions = {},
  ): Promise<Subscription> {
    const { kv, keys, log } = this.#context;
    const directory = keys.staleDir();
    // One transaction reads the records and the store revision, so the watch starts exactly after
    // what was read: no change can fall into a gap (as watchRing).
    const snapshot = await kv.txn({ compare: [], success: [{ type: "range", prefix: directory }] });
    const deliver = (change: StaleRecordChange) => {
      try {
        onRecord(change);
      } catch (error) {
        // A subscriber's bug must not end the watch for every other subscriber.
        log.error(
          `stale mark subscriber failed on volume ${change.volumeId} node ${change.node}: ` +
            errorMessage(error),
        );
      }
    };
    const onPut = (entry: { key: string; value: Uint8Array }) => {
      let record: StaleRecord;
      try {
        record = this.#recordOf(entry);
      } catch (error) {
        log.warn(`ignoring an undecodable stale record: ${errorMessage(error)}`);
        return;
      }
      deliver({ ...record, removed: false });
    };
    const onDelete = (key: string) => {
      let named: { volumeId: number; node: string };
      try {
        named = keys.parseStaleRecord(key);
      } catch (error) {
        log.warn(`ignoring the removal of a malformed stale key: ${errorMessage(error)}`);
        return;
      }
      deliver({ ...named, refs: [], wholeVolume: false, removed: true });
    };
    const first = snapshot.results[0];
    if (first?.type === "range") { for (const entry of first.entries) onPut(entry); }
    const onEvents = (events: readonly WatchEvent[]) => {
      for (const event of events) {
        if (event.type === "put") onPut(event);
        else onDelete(event.key);
      }
    };
    const watch = await kv.watchPrefix(directory, onEvents, {
      fromRevision: snapshot.revision + 1,
      ...(options.onError ? { onError: options.onError } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
    return { unsubscribe: () => watch.close() };
  }

  /** The record stored in `entry`: its key checked and its value decoded (`invalid` if not). */
  #recordOf(entry: Pick<KvEntry, "key" | "value">): StaleRecord {
    const { volumeId, node } = this.#context.keys.parseStaleRecord(entry.key);
    const marks = decodeStaleMarks(entry.value, entry.key, volumeId);
    return { volumeId, node, refs: marks.refs, wholeVolume: marks.wholeVolume };
  }
}
