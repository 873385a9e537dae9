/**
 * The file engine's journal: `journal-<name>.blk`, a circular log of range writes, zeroings and
 * deletes. A range write is durable once its record is (FLUSH = one fdatasync of this file); the
 * engine applies records to their slots in place only after that, and a checkpoint (slots and
 * sums synced) lets the log reuse their space. After a crash the records since the last
 * checkpoint are replayed in order; applying a record twice gives the same bytes, so replay is
 * idempotent (docs/adr/0004-block-volume-write-path.md).
 *
 * File layout (little-endian): a 4096-byte header page, then the region.
 * - Header: `[0:8]` `TORUSJNL`, `[8:12]` version 1, `[16:24]` region bytes, `[24:40]` store id,
 *   `[60:64]` CRC-32C of `[0:60]`. Two checkpoint records at 512 and 1024 (written in turn, so a
 *   torn one leaves the other): `[0:8]` `TJCHECK1`, `[8:16]` counter, `[16:24]` seq (every record
 *   up to it is applied and durable), `[24:32]` position of the first record to replay, `[32:36]`
 *   epoch, `[36:40]` CRC-32C of `[0:36]`.
 * - Records, 64-byte aligned: `[0:4]` magic, `[4]` kind, `[5]` flags, `[8:16]` seq, `[16:40]`
 *   ref, `[40:44]` offset in the block, `[44:48]` length of the range, `[48:52]` record bytes,
 *   `[52:56]` epoch, `[60:64]` CRC-32C of `[0:60]` and the data; a write's data follows,
 *   padded to 64 bytes.
 *   Positions are logical (they only grow); a record sits at `position % region`. One that would
 *   cross the region's end is preceded by a wrap record filling the rest.
 * - Replay reads from the checkpoint's position while records verify, carry the checkpoint's
 *   epoch and have growing seqs: a torn record, or one written before the last open, ends it.
 *   Every open starts a new epoch, so records appended after a replay can never be followed,
 *   in a later replay, by stale records that happen to sit where the new ones end.
 * @module
 */

import {
  assert,
  BLOCK_REF_BYTES,
  BlockRef,
  type Clock,
  crc32c,
  invalid,
  joinedBytes,
  systemClock,
} from "../core/mod.ts";
import type { FileIo, IoFile } from "./file_io.ts";

/**
 * What a record does. Write and Zero change a range of a block; Delete removes a ref; Install
 * says a new copy of a ref (a put, or a block created for a range write) took effect, its data
 * being the copy's generation (8 bytes): replay then knows which copy later records belong to.
 * Wrap fills the end of the region.
 */
export const JournalKind = { Write: 1, Zero: 2, Delete: 3, Wrap: 4, Install: 5 } as const;
export type JournalKind = typeof JournalKind[keyof typeof JournalKind];

/** Record flags. */
export const JournalFlag = {
  /** The block reads as zeros before this record applies (a block allocated anew). */
  Reset: 1,
} as const;

/** A decoded (or to-be-written) record. */
export interface JournalRecord {
  readonly seq: number;
  readonly kind: JournalKind;
  readonly flags: number;
  readonly ref: BlockRef;
  /** Sector-aligned offset in the block. */
  readonly offsetBytes: number;
  /** Bytes the record covers (sector-aligned). */
  readonly lengthBytes: number;
  /** A write's bytes (`lengthBytes` of them); null otherwise. */
  readonly data: Uint8Array | null;
}

const HEADER_PAGE_BYTES = 4096;
const MAGIC = "TORUSJNL";
const VERSION = 1;
const CHECKPOINT_OFFSETS = [512, 1024] as const;
const CHECKPOINT_MAGIC = "TJCHECK1";
/** Record alignment and header size. */
export const RECORD_ALIGN_BYTES = 64;
const RECORD_MAGIC = 0x314a5254; // "TRJ1"

/** Bytes a record of `dataBytes` takes in the log. */
export function recordBytesOf(dataBytes: number): number {
  return RECORD_ALIGN_BYTES + Math.ceil(dataBytes / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

/** The region size a store of `storeBytes` gets: 1/16 of it, within bounds, 64-byte aligned. */
export function journalRegionBytesFor(storeBytes: number, blockSizeBytes: number): number {
  const floor = Math.max(4 * 1024 * 1024, 8 * recordBytesOf(blockSizeBytes));
  const bytes = Math.min(256 * 1024 * 1024, Math.max(floor, Math.floor(storeBytes / 16)));
  return Math.ceil(bytes / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

/**
 * Encodes `record` (not a wrap) of `epoch` into `into` (zeroed, {@link recordBytesOf} bytes) and
 * returns it.
 */
export function encodeRecord(record: JournalRecord, epoch: number, into: Uint8Array): Uint8Array {
  const dataBytes = record.data?.length ?? 0;
  const bytes = into;
  assert(bytes.length === recordBytesOf(dataBytes), "record buffer of the wrong size");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  view.setUint32(0, RECORD_MAGIC, true);
  bytes[4] = record.kind;
  bytes[5] = record.flags;
  setU64(view, 8, record.seq);
  record.ref.writeTo(bytes, 16);
  view.setUint32(40, record.offsetBytes, true);
  view.setUint32(44, record.lengthBytes, true);
  view.setUint32(48, bytes.length, true);
  view.setUint32(52, epoch, true);
  if (record.data !== null) bytes.set(record.data, RECORD_ALIGN_BYTES);
  const data = bytes.subarray(RECORD_ALIGN_BYTES, RECORD_ALIGN_BYTES + dataBytes);
  view.setUint32(60, crc32c(data, crc32c(bytes.subarray(0, 60))), true);
  return bytes;
}

/** A wrap record of `totalBytes` (the rest of the region); only its header is written. */
function encodeWrap(seq: number, totalBytes: number, epoch: number): Uint8Array {
  const bytes = new Uint8Array(RECORD_ALIGN_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, RECORD_MAGIC, true);
  bytes[4] = JournalKind.Wrap;
  setU64(view, 8, seq);
  BlockRef.ZERO.writeTo(bytes, 16);
  view.setUint32(48, totalBytes, true);
  view.setUint32(52, epoch, true);
  view.setUint32(60, crc32c(new Uint8Array(0), crc32c(bytes.subarray(0, 60))), true);
  return bytes;
}

/** The fields of a record header. */
export interface DecodedRecordHeader {
  readonly kind: JournalKind;
  readonly flags: number;
  readonly seq: number;
  readonly epoch: number;
  readonly ref: BlockRef;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly recordBytes: number;
  readonly crc: number;
}

/**
 * Decodes the record header at the start of `header` (64 bytes); null unless it is a record
 * whose header fields are sane. The data (for writes) is checked by {@link recordDataMatches}.
 */
export function decodeRecordHeader(header: Uint8Array): DecodedRecordHeader | null {
  if (header.length < RECORD_ALIGN_BYTES) return null;
  const view = new DataView(header.buffer, header.byteOffset, RECORD_ALIGN_BYTES);
  if (view.getUint32(0, true) !== RECORD_MAGIC) return null;
  const kind = header[4]!;
  if (kind < JournalKind.Write || kind > JournalKind.Install) return null;
  const recordBytes = view.getUint32(48, true);
  const lengthBytes = view.getUint32(44, true);
  if (recordBytes < RECORD_ALIGN_BYTES || recordBytes % RECORD_ALIGN_BYTES !== 0) return null;
  const carriesData = kind === JournalKind.Write || kind === JournalKind.Install;
  if (carriesData && recordBytes !== recordBytesOf(lengthBytes)) return null;
  if (kind === JournalKind.Install && lengthBytes !== 8) return null;
  let ref: BlockRef;
  try {
    ref = BlockRef.fromBytes(header, 16);
  } catch {
    return null;
  }
  const seq = getU64(view, 8);
  if (seq === null || seq === 0) return null;
  return {
    kind: kind as JournalKind,
    flags: header[5]!,
    seq,
    epoch: view.getUint32(52, true),
    ref,
    offsetBytes: view.getUint32(40, true),
    lengthBytes,
    recordBytes,
    crc: view.getUint32(60, true),
  };
}

/** Whether a record's checksum covers its header and `data`. */
export function recordDataMatches(header: Uint8Array, data: Uint8Array, crc: number): boolean {
  return crc32c(data, crc32c(header.subarray(0, 60))) === crc;
}

function setU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 2 ** 32, true);
  view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
}

function getU64(view: DataView, offset: number): number | null {
  const high = view.getUint32(offset + 4, true);
  if (high > 0x1f_ffff) return null;
  return high * 2 ** 32 + view.getUint32(offset, true);
}

/** Where replay starts and what it may skip. */
export interface Checkpoint {
  /** Records with a seq up to this are applied and durable in the slots. */
  readonly seq: number;
  /** Logical position of the first record after them. */
  readonly position: number;
  /** Epoch of the records written after it. */
  readonly epoch: number;
}

/** An appended record, placed at its logical position, waiting for its batch's write. */
interface Pending {
  bytes: Uint8Array;
  seq: number;
  /** Logical position of the record; a wrap record fills the region's end before it if needed. */
  position: number;
  /** Bytes of wrap padding written before it (0 when none). */
  wrapBytes: number;
  resolve(end: number): void;
  reject(error: unknown): void;
  /** Settles the append's `admitted` when it had to wait for room (null when placed at once). */
  admitted: { resolve(): void; reject(error: unknown): void } | null;
}

/** What {@link Journal.append} returns. */
export interface Appended {
  /**
   * Settles when the record has its place in the journal (at once unless the region is full):
   * from then on the next {@link Journal.sync} covers it.
   */
  readonly admitted: Promise<void>;
  /** Resolves, with the logical position where the record ends, once it is written. */
  readonly written: Promise<number>;
  /**
   * The record's data inside its encoded bytes (null for a record without data): a copy the
   * caller may keep instead of making its own, since nothing changes it.
   */
  readonly data: Uint8Array | null;
}

/** The slab small records are encoded into (see Journal's #recordBuffer). */
const SLAB_BYTES = 1024 * 1024;
/** Records larger than this get a buffer of their own. */
const SLAB_RECORD_BYTES_MAX = SLAB_BYTES / 8;

/** How long a small batch of placed records waits for more before its write starts. */
const BATCH_DELAY_MS = 1;
/** A batch of this many records is written at once. */
const BATCH_RECORDS_EAGER = 16;

/** The `admitted` of a record placed at once. */
const PLACED: Promise<void> = Promise.resolve();

/** The journal file of one store; see the module doc. */
export class Journal {
  readonly path: string;
  readonly regionBytes: number;
  readonly #file: IoFile;
  #checkpoint: Checkpoint;
  #checkpointCounter: number;
  /** Logical position where the next record goes. */
  #head: number;
  /** Highest seq whose record is written (in the page cache). */
  #writtenSeq: number;
  /** Highest seq whose record was placed (in a batch, written or not). */
  #placedSeq: number;
  /** Syncs waiting for the records placed before them to be written. */
  #writtenWaiters: { seq: number; resolve(): void; reject(error: unknown): void }[] = [];
  /** Logical end of every record placed so far (written or not), wrap padding included. */
  #reservedEnd: number;
  /** Records waiting for room, in append order. */
  #queue: Pending[] = [];
  /** Records placed and waiting for the next write. */
  #batch: Pending[] = [];
  #writing: Promise<void> | null = null;
  #scheduled = false;
  /** Cancels the delayed start of a small batch's write (see #schedule). */
  #batchTimer: (() => void) | null = null;
  /** Times that delay: a test's clock decides when it ends, so a seed replays exactly. */
  readonly #clock: Clock;
  #closing = false;
  /** Where small records are encoded (see #recordBuffer). */
  #slab = new Uint8Array(SLAB_BYTES);
  #slabUsed = 0;
  #failure: Error | null = null;
  /** Called when records wait for room: the engine checkpoints to make some. */
  onFull: (() => void) | null = null;

  private constructor(
    path: string,
    file: IoFile,
    state: { regionBytes: number; checkpoint: Checkpoint; counter: number; clock: Clock },
  ) {
    this.path = path;
    this.#file = file;
    this.#clock = state.clock;
    this.regionBytes = state.regionBytes;
    this.#checkpoint = state.checkpoint;
    this.#checkpointCounter = state.counter;
    this.#head = state.checkpoint.position;
    this.#reservedEnd = state.checkpoint.position;
    this.#writtenSeq = state.checkpoint.seq;
    this.#placedSeq = state.checkpoint.seq;
  }

  /**
   * Opens (creating when absent, with `regionBytes`) the journal at `path` of the store whose id
   * is `storeId`. A journal of another store, or a damaged header, is refused. `clock` times
   * the short wait of a small batch (default: the real one).
   */
  static async open(
    io: FileIo,
    path: string,
    options: { storeId: Uint8Array; regionBytes: number; clock?: Clock },
  ): Promise<Journal> {
    if (!(await io.exists(path))) {
      // Made whole under another name and renamed: a crash never leaves a half-made journal.
      const temporary = `${path}.tmp`;
      const fresh = await io.open(temporary, { create: true, truncate: true });
      try {
        await createJournal(fresh, options);
      } finally {
        await fresh.close();
      }
      await io.rename(temporary, path);
      await io.syncDirectory(parentOf(path));
    }
    const file = await io.open(path);
    try {
      const header = new Uint8Array(HEADER_PAGE_BYTES);
      const got = await file.read(header, 0);
      const state = decodeJournalHeader(header.subarray(0, got), path, options.storeId);
      if ((await file.sizeBytes()) < HEADER_PAGE_BYTES + state.regionBytes) {
        throw invalid(`${path} is shorter than its region`);
      }
      return new Journal(path, file, { ...state, clock: options.clock ?? systemClock });
    } catch (error) {
      await file.close();
      throw error;
    }
  }

  /** The checkpoint replay starts from. */
  get checkpoint(): Checkpoint {
    return this.#checkpoint;
  }

  /** Logical position where the next record goes (after replay: the end of the valid log). */
  get head(): number {
    return this.#head;
  }

  /** Highest seq whose record is in the file (not necessarily durable). */
  get writtenSeq(): number {
    return this.#writtenSeq;
  }

  /**
   * Reads the records after the checkpoint, in order, until one does not verify (torn, or of an
   * older lap). Afterwards new records go after the last one read.
   */
  async *replay(): AsyncIterable<JournalRecord> {
    let position = this.#checkpoint.position;
    let lastSeq = this.#checkpoint.seq;
    const header = new Uint8Array(RECORD_ALIGN_BYTES);
    while (position - this.#checkpoint.position < this.regionBytes) {
      const physical = position % this.regionBytes;
      if ((await this.#file.read(header, HEADER_PAGE_BYTES + physical)) < header.length) break;
      const decoded = decodeRecordHeader(header);
      if (decoded === null || decoded.seq <= lastSeq) break;
      if (decoded.epoch !== this.#checkpoint.epoch) break;
      if (physical + decoded.recordBytes > this.regionBytes) break;
      if (decoded.kind === JournalKind.Wrap) {
        if (!recordDataMatches(header, new Uint8Array(0), decoded.crc)) break;
        if (physical + decoded.recordBytes !== this.regionBytes) break;
        // The record after a wrap has the wrap's seq.
        lastSeq = decoded.seq - 1;
        position += decoded.recordBytes;
        continue;
      }
      const carriesData = decoded.kind === JournalKind.Write ||
        decoded.kind === JournalKind.Install;
      const dataBytes = carriesData ? decoded.lengthBytes : 0;
      const data = new Uint8Array(dataBytes);
      if (dataBytes > 0) {
        const at = HEADER_PAGE_BYTES + physical + RECORD_ALIGN_BYTES;
        if ((await this.#file.read(data, at)) < dataBytes) break;
      }
      if (!recordDataMatches(header, data, decoded.crc)) break;
      lastSeq = decoded.seq;
      position += decoded.recordBytes;
      this.#head = position;
      this.#writtenSeq = decoded.seq;
      this.#reservedEnd = position;
      yield {
        seq: decoded.seq,
        kind: decoded.kind,
        flags: decoded.flags,
        ref: decoded.ref,
        offsetBytes: decoded.offsetBytes,
        lengthBytes: decoded.lengthBytes,
        data: carriesData ? data : null,
      };
    }
  }

  /** Bytes of the region in use (appended, not yet released by a checkpoint). */
  get usedBytes(): number {
    return this.#reservedEnd - this.#checkpoint.position;
  }

  /**
   * Appends `record` (seqs ascend from one append to the next): it is placed in the journal at
   * once, or when the region is full after the records before it, once a checkpoint made room
   * ({@link onFull} asks the engine for one); a placed record is covered by the next
   * {@link sync}, which waits for its write. Records are written in the order appended (those
   * placed in one turn of the event loop share one write).
   */
  append(record: JournalRecord): Appended {
    if (this.#failure !== null) {
      const failed = Promise.reject(this.#failure);
      return { admitted: failed, written: failed, data: null };
    }
    // Replay reads records while their seqs grow: one out of order would end it there, losing
    // every record after it, flushed or not. Refused loudly instead.
    const last = Math.max(this.#writtenSeq, this.#placedSeq, this.#queue.at(-1)?.seq ?? 0);
    assert(record.seq > last, `journal record seq ${record.seq} does not follow ${last}`);
    const bytes = encodeRecord(record, this.#checkpoint.epoch, this.#recordBuffer(record));
    assert(2 * bytes.length <= this.regionBytes, "a record fits the journal with room to wrap");
    let pending!: Pending;
    const written = new Promise<number>((resolve, reject) => {
      pending = {
        bytes,
        seq: record.seq,
        position: 0,
        wrapBytes: 0,
        resolve,
        reject,
        admitted: null,
      };
    });
    const data = record.data === null
      ? null
      : bytes.subarray(RECORD_ALIGN_BYTES, RECORD_ALIGN_BYTES + record.data.length);
    this.#queue.push(pending);
    this.#admit();
    if (this.#placedSeq >= record.seq) return { admitted: PLACED, written, data };
    const admitted = new Promise<void>((resolve, reject) => {
      pending.admitted = { resolve, reject };
    });
    return { admitted, written, data };
  }

  /**
   * Zeroed room for the encoded `record`: small records are cut one after another from a shared
   * slab, so those of one batch usually lie back to back and are written without a copy (and
   * without an allocation each). A slab lives while any record cut from it is referenced.
   */
  #recordBuffer(record: JournalRecord): Uint8Array {
    const bytes = recordBytesOf(record.data?.length ?? 0);
    if (bytes > SLAB_RECORD_BYTES_MAX) return new Uint8Array(bytes);
    if (this.#slabUsed + bytes > this.#slab.length) {
      this.#slab = new Uint8Array(SLAB_BYTES);
      this.#slabUsed = 0;
    }
    const view = this.#slab.subarray(this.#slabUsed, this.#slabUsed + bytes);
    this.#slabUsed += bytes;
    return view;
  }

  /** Places queued records that fit before the checkpoint's position comes round again. */
  #admit(): void {
    while (this.#queue.length > 0) {
      const next = this.#queue[0]!;
      const physical = this.#reservedEnd % this.regionBytes;
      const wrapBytes = physical + next.bytes.length > this.regionBytes
        ? this.regionBytes - physical
        : 0;
      const end = this.#reservedEnd + wrapBytes + next.bytes.length;
      if (end - this.#checkpoint.position > this.regionBytes) {
        this.onFull?.();
        return;
      }
      this.#queue.shift();
      next.wrapBytes = wrapBytes;
      next.position = this.#reservedEnd + wrapBytes;
      this.#reservedEnd = end;
      this.#placedSeq = next.seq;
      this.#batch.push(next);
      next.admitted?.resolve();
    }
    this.#schedule();
  }

  /**
   * Starts the write of the placed records: at the end of this turn when a sync waits for them
   * or they are many, else a moment later, so that the records of a slow stream of appends
   * (one at a time) share a write instead of paying a system call and a thread hop each.
   * Nobody else waits: appends are acknowledged once placed.
   */
  #schedule(waited = false): void {
    if (this.#scheduled || this.#writing !== null || this.#batch.length === 0) return;
    const eager = waited || this.#writtenWaiters.length > 0 || this.#closing ||
      this.#batch.length >= BATCH_RECORDS_EAGER;
    if (!eager) {
      this.#batchTimer ??= this.#clock.after(BATCH_DELAY_MS, () => {
        this.#batchTimer = null;
        this.#schedule(true);
      });
      return;
    }
    this.#batchTimer?.();
    this.#batchTimer = null;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      if (this.#writing !== null || this.#batch.length === 0) return;
      this.#writing = this.#writeBatch().finally(() => {
        this.#writing = null;
        this.#schedule();
      });
    });
  }

  /** Writes the current batch: one write per contiguous run (a wrap splits it in two). */
  async #writeBatch(): Promise<void> {
    const batch = this.#batch;
    this.#batch = [];
    try {
      let run: Uint8Array[] = [];
      let runStart = batch[0]!.position - batch[0]!.wrapBytes;
      for (const pending of batch) {
        if (pending.wrapBytes > 0) {
          // A wrap record carries the seq of the record after it, which replay then expects.
          run.push(encodeWrap(pending.seq, pending.wrapBytes, this.#checkpoint.epoch));
          await this.#writeRun(runStart, run);
          run = [];
          runStart = pending.position;
        } else if (run.length > 0 && pending.position % this.regionBytes === 0) {
          // The records before it ended at the region's last byte (no wrap record needed):
          // this one goes at the region's start, not after them past its end.
          await this.#writeRun(runStart, run);
          run = [];
          runStart = pending.position;
        }
        run.push(pending.bytes);
      }
      await this.#writeRun(runStart, run);
      const last = batch[batch.length - 1]!;
      this.#head = last.position + last.bytes.length;
      this.#writtenSeq = last.seq;
      for (const pending of batch) pending.resolve(pending.position + pending.bytes.length);
      this.#wakeWrittenWaiters();
    } catch (error) {
      this.#failure ??= error as Error;
      for (const pending of [...batch, ...this.#batch.splice(0), ...this.#queue.splice(0)]) {
        pending.reject(error);
        pending.admitted?.reject(error);
      }
      for (const waiter of this.#writtenWaiters.splice(0)) waiter.reject(error);
    }
  }

  async #writeRun(start: number, parts: Uint8Array[]): Promise<void> {
    if (parts.length === 0) return;
    const bytes = joinedBytes(parts);
    const physical = start % this.regionBytes;
    assert(physical + bytes.length <= this.regionBytes, "a journal write ends past the region");
    await this.#file.write(bytes, HEADER_PAGE_BYTES + physical);
  }

  /**
   * Makes every record placed before the call durable (waiting for their writes first); returns
   * the highest seq that is durable.
   */
  async sync(): Promise<number> {
    await this.written();
    // Every batch that finished before the datasync starts is covered by it.
    const covered = this.#writtenSeq;
    await this.#file.datasync();
    return covered;
  }

  /**
   * Resolves once every record placed before the call is written to the file (not synced: what
   * a process kill would leave), starting the write of a batch that waits.
   */
  async written(): Promise<void> {
    if (this.#failure !== null) throw this.#failure;
    const placed = this.#placedSeq;
    if (this.#writtenSeq >= placed) return;
    await new Promise<void>((resolve, reject) => {
      this.#writtenWaiters.push({ seq: placed, resolve, reject });
      this.#schedule();
    });
  }

  #wakeWrittenWaiters(): void {
    const waiting = this.#writtenWaiters;
    if (waiting.length === 0) return;
    this.#writtenWaiters = waiting.filter((waiter) => waiter.seq > this.#writtenSeq);
    for (const waiter of waiting) if (waiter.seq <= this.#writtenSeq) waiter.resolve();
  }

  /**
   * Records that everything up to `checkpoint.seq` is applied and durable elsewhere, so replay
   * starts at `checkpoint.position`; the space before it is reused.
   */
  async setCheckpoint(checkpoint: Checkpoint): Promise<void> {
    assert(checkpoint.position >= this.#checkpoint.position, "checkpoints only move forward");
    const counter = this.#checkpointCounter + 1;
    const record = encodeCheckpoint(counter, checkpoint);
    await this.#file.write(record, CHECKPOINT_OFFSETS[counter % 2]!);
    await this.#file.datasync();
    this.#checkpoint = checkpoint;
    this.#checkpointCounter = counter;
    this.#admit();
  }

  /**
   * The engine failed: records still waiting for room, and syncs waiting for writes, fail with
   * `error` now (nothing would make room or write for them again), as does every later call.
   */
  fail(error: Error): void {
    this.#failure ??= error;
    for (const pending of this.#queue.splice(0)) {
      pending.reject(error);
      pending.admitted?.reject(error);
    }
    for (const waiter of this.#writtenWaiters.splice(0)) waiter.reject(error);
  }

  /** Writes the placed records, waits for writes in flight, then closes the file. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#schedule();
    while (this.#writing !== null || this.#scheduled) {
      await (this.#writing ?? Promise.resolve());
    }
    await this.#file.close();
  }
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash <= 0 ? (slash === 0 ? "/" : ".") : path.slice(0, slash);
}

/**
 * A new journal's region is written with zeros once, not only allocated: appends into fallocated
 * (unwritten) extents made ext4 convert them at writeback and journal that change, and the first
 * pass over the region was measured slower than later ones (docs/benchmarks.md, 2026-12-02).
 */
const ZERO_FILL_CHUNK_BYTES = 4 * 1024 * 1024;

async function createJournal(
  file: IoFile,
  options: { storeId: Uint8Array; regionBytes: number },
): Promise<void> {
  assert(options.regionBytes % RECORD_ALIGN_BYTES === 0, "journal region is 64-byte aligned");
  const header = new Uint8Array(HEADER_PAGE_BYTES);
  const view = new DataView(header.buffer);
  for (let i = 0; i < 8; i++) header[i] = MAGIC.charCodeAt(i);
  view.setUint32(8, VERSION, true);
  setU64(view, 16, options.regionBytes);
  header.set(options.storeId, 24);
  view.setUint32(60, crc32c(header.subarray(0, 60)), true);
  header.set(encodeCheckpoint(0, { seq: 0, position: 0, epoch: 1 }), CHECKPOINT_OFFSETS[0]);
  await file.truncate(0);
  await file.truncate(HEADER_PAGE_BYTES + options.regionBytes);
  await file.allocate(0, HEADER_PAGE_BYTES + options.regionBytes);
  const zeros = new Uint8Array(Math.min(ZERO_FILL_CHUNK_BYTES, options.regionBytes));
  for (let at = 0; at < options.regionBytes; at += zeros.length) {
    const length = Math.min(zeros.length, options.regionBytes - at);
    await file.write(zeros.subarray(0, length), HEADER_PAGE_BYTES + at);
  }
  await file.write(header, 0);
  await file.sync();
}

function encodeCheckpoint(counter: number, checkpoint: Checkpoint): Uint8Array {
  const bytes = new Uint8Array(64);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < 8; i++) bytes[i] = CHECKPOINT_MAGIC.charCodeAt(i);
  setU64(view, 8, counter);
  setU64(view, 16, checkpoint.seq);
  setU64(view, 24, checkpoint.position);
  view.setUint32(32, checkpoint.epoch, true);
  view.setUint32(36, crc32c(bytes.subarray(0, 36)), true);
  return bytes;
}

function decodeCheckpoint(bytes: Uint8Array): { counter: number; checkpoint: Checkpoint } | null {
  const view = new DataView(bytes.buffer, bytes.byteOffset, 64);
  if (String.fromCharCode(...bytes.subarray(0, 8)) !== CHECKPOINT_MAGIC) return null;
  if (view.getUint32(36, true) !== crc32c(bytes.subarray(0, 36))) return null;
  const counter = getU64(view, 8);
  const seq = getU64(view, 16);
  const position = getU64(view, 24);
  if (counter === null || seq === null || position === null) return null;
  return { counter, checkpoint: { seq, position, epoch: view.getUint32(32, true) } };
}

function decodeJournalHeader(
  page: Uint8Array,
  path: string,
  storeId: Uint8Array,
): { regionBytes: number; checkpoint: Checkpoint; counter: number } {
  if (page.length < HEADER_PAGE_BYTES) throw invalid(`${path} is too short for a journal header`);
  if (String.fromCharCode(...page.subarray(0, 8)) !== MAGIC) {
    throw invalid(`${path} is not a torus journal`);
  }
  const view = new DataView(page.buffer, page.byteOffset, page.byteLength);
  if (view.getUint32(60, true) !== crc32c(page.subarray(0, 60))) {
    throw invalid(`${path} has a damaged header (checksum mismatch)`);
  }
  if (view.getUint32(8, true) !== VERSION) {
    throw invalid(`${path} has journal version ${view.getUint32(8, true)}; this torus reads 1`);
  }
  const id = page.subarray(24, 24 + storeId.length);
  if (!id.every((byte, i) => byte === storeId[i])) {
    throw invalid(`${path} belongs to another store`);
  }
  const regionBytes = getU64(view, 16);
  if (regionBytes === null || regionBytes <= 0 || regionBytes % RECORD_ALIGN_BYTES !== 0) {
    throw invalid(`${path} has a bad region size`);
  }
  const found = CHECKPOINT_OFFSETS
    .map((offset) => decodeCheckpoint(page.subarray(offset, offset + 64)))
    .filter((c): c is { counter: number; checkpoint: Checkpoint } => c !== null)
    .sort((a, b) => b.counter - a.counter)[0];
  if (found === undefined) throw invalid(`${path} has no valid checkpoint`);
  return { regionBytes, checkpoint: found.checkpoint, counter: found.counter };
}

/** Size of a ref in a record (for readers of the format). */
export const RECORD_REF_BYTES = BLOCK_REF_BYTES;
