/**
 * FileBlockStore: the on-disk engine of `torus serve`. Blocks live in fixed-size slots of
 * `data-<name>.blk`; `map-<name>.blk` holds one checksummed 64-byte entry per slot (format in
 * file_format.ts). The index is kept in memory off the JavaScript heap (slot_index.ts: typed
 * arrays, about 50 bytes per slot) and loaded at open from the entries below the map's
 * high-water mark. Every file operation goes through the FileIo the store was opened with
 * (file_io.ts), the real one by default: nothing here blocks the event loop.
 *
 * Crash safety (a process kill or a power loss at any instant):
 * - A put writes the block into a free slot first; only after that write completed does the slot
 *   become Stored in the index, and only Stored (or Retiring) slots have their entry written
 *   (by the background MapWriter), so an entry never names a slot whose write was still running.
 *   Every entry carries the block's CRC-32 and every read verifies it: bytes that a power loss
 *   left half-written are answered `block_unavailable` (and the entry dropped), never returned.
 * - Replacing a ref writes the new copy into another slot with a higher generation; the old slot
 *   keeps its entry (Retiring) until a flush has made the new entry durable, then its entry is
 *   zeroed and synced, and only then is the slot reused. Reopening therefore finds the old or the
 *   new copy (the highest generation that verifies wins), never a mix and never another block's.
 * - A delete zeroes the entry of the ref's current copy once the delete's journal record is
 *   durable (Deleting, then Clearing); the slot is reused only once that zeroed entry was
 *   written, so a process kill never leaves an entry naming another block's bytes. Not yet
 *   retired old copies keep their entries until a flush retires them (Dead): when the current
 *   copy's entry never became durable, a power loss that takes the delete finds the old copy.
 * - `flush` = fdatasync of the data file, write of every changed entry, fdatasync of the map
 *   (then the retirement above). A failed sync or entry write puts the store in a failed state
 *   (every later call throws `unavailable`): after a writeback error the kernel may have dropped
 *   dirty pages, so nothing can be promised.
 *
 * Concurrency (many calls in flight; the event loop is the only thread touching this state):
 * - Puts and deletes of one ref take effect in call order: each gets a generation when called,
 *   and a put whose write finishes after a later put or delete of the same ref was called is
 *   dropped (it still resolves; its bytes were superseded). A delete while a put of the same ref
 *   is in flight cancels that put and resolves even if nothing was stored yet.
 * - A put with `ifAbsent` decides once every earlier call of its ref took effect (it queues on
 *   the ref behind range writes and behind puts in flight), and starts in the same turn as its
 *   check. A range write with `mustExist` to an absent ref is refused in its turn on the ref.
 * - A get reads the version current when it was called; if that slot is reused meanwhile the
 *   checksum shows it and the get retries on the new state (or answers `not_exist`).
 * - The index changes synchronously ("check, change, mark the entry dirty" is atomic with respect
 *   to other calls); entries reach the map file in background batches.
 *
 * Slot accounting: every slot is in exactly one SlotState (slot_index.ts): free, held by a put in
 * flight, stored, retiring or dead (an old copy awaiting a flush), clearing (a zeroed entry being
 * written) or retired (being freed by a flush). One slot is kept spare, so replacing a block in a
 * full store always has room; `totalBlocks()` is the slot count minus that spare. A slot that
 * the applier is writing into is pinned: it becomes free only when that write is done.
 *
 * Checksums: every slot has a sums record (sector_sums.ts, in `sums-<name>.blk`): the
 * generation of its copy and a CRC-32C per 4 KiB sector, or "zero" for sectors never written.
 * Every read verifies the sectors it returns (a damaged sector fails only the reads covering it)
 * and never reads zero sectors from the disk. A put writes the record with its data, before the
 * copy is installed; a flush syncs records with the data, before the map.
 *
 * Range writes (writeAt, zeroAt; docs/adr/0004-block-volume-write-path.md):
 * - Rounded to whole sectors (the edges merged from the current bytes, with later writes to the
 *   ref held back meanwhile), each becomes a record of the journal (journal.ts) with the next
 *   generation as its seq, and stays in memory (the overlay) until applied: reads apply the
 *   overlay on top of the slot. A range write to an absent ref first creates it: a slot whose
 *   sums say zero everywhere, written before the copy is installed.
 * - FLUSH syncs the journal after the map file, and after the data and sums files only when a
 *   put or a block creation wrote them since the last flush: one durable append for range
 *   writes. Only records that are durable are applied in place (data, then the sums record),
 *   so the slot never holds bytes a crash could leave without their record; those in-place
 *   writes are made durable by the next checkpoint (slots, sums and map synced), which then
 *   frees their journal space, not by every flush: until then replay writes them again. Records
 *   of a ref older than its copy's generation (a put or delete came later) are skipped.
 * - Opening replays the records after the last checkpoint, in order: what a crash left half
 *   applied is applied again (records hold whole sectors, so applying twice is harmless).
 * @module
 */

import { setImmediate } from "node:timers";
import {
  assert,
  type BlockRef,
  blockUnavailable,
  type Clock,
  closed,
  crc32,
  ErrorCode,
  errorMessage,
  exists,
  invalid,
  isTorusError,
  joinedBytes,
  logger,
  notExist,
  SharedRun,
  systemClock,
  TorusError,
  verifyEnabled,
} from "../core/mod.ts";
import { tuneMallocForLargeBuffers } from "../sys/mod.ts";
import type { BlockCallOptions, BlockStore, PutOptions, RangeWriteOptions } from "./block_store.ts";
import type { FileIo } from "./file_io.ts";
import { checkBlockRange } from "./range.ts";
import {
  Journal,
  JournalFlag,
  JournalKind,
  type JournalRecord,
  journalRegionBytesFor,
  RECORD_ALIGN_BYTES,
  recordBytesOf,
} from "./journal.ts";
import {
  matchesEntryCrc,
  sectorMatches,
  sectorSum,
  SUM_UNKNOWN,
  SUM_ZERO,
  sumsDigest,
  sumsOfBlock,
  type SumsRecord,
  unknownSums,
  zeroSums,
} from "./sector_sums.ts";
import { SumsFile } from "./sums_file.ts";
import { slotOffsetBytes } from "./file_format.ts";
import {
  closeStoreFiles,
  crcVerifier,
  type LoadedIndex,
  loadIndex,
  openStoreFiles,
  resizeStore,
  settleHighWater,
  SPARE_SLOTS,
  type StoreFiles,
} from "./file_open.ts";
import { MapWriter } from "./map_writer.ts";
import { REF_WORDS, SlotIndex, SlotState } from "./slot_index.ts";
import { SysFileIo } from "./sys_file_io.ts";
import { type BlockStoreStats, newBlockStoreStats } from "./store_stats.ts";

export { SPARE_SLOTS } from "./file_open.ts";

/** Options of {@link FileBlockStore.open}. */
export interface FileBlockStoreOptions {
  /** Directory of the two files (created when missing). */
  dir: string;
  /** Store name, part of the file names. Default `current`. */
  name?: string;
  /** Size of every block; a store is refused when opened with another size. */
  blockSizeBytes: number;
  /**
   * Wanted size of the data area: floor(sizeBytes / blockSizeBytes) slots. `"existing"` opens
   * a store that exists at the size it has (a tool that must not resize a node's store).
   */
  sizeBytes: number | "existing";
  /** The file system, for every file operation. Default: the real one (SysFileIo). */
  io?: FileIo;
  /**
   * Times the store's own waits (a journal batch's, a background flush's). Default: the real
   * clock; a test passes the clock of its simulated machine so a seed replays exactly.
   */
  clock?: Clock;
  /**
   * How long range writes may stay unflushed (and so unapplied) when nobody flushes, in ms.
   * Default 5 s. Tests shorten it to meet background flushes among their own calls.
   */
  backgroundFlushMs?: number;
  /**
   * Size of the journal's record region when the store is created (later opens keep what the
   * journal has). Default: 1/16 of the store, 4 MiB to 256 MiB. Tests make it small so the
   * journal wraps and checkpoints often; at least 8 whole-block records.
   */
  journalRegionBytes?: number;
}

/** Staging buffers kept for reuse by puts (each one block). */
const STAGING_BUFFERS_MAX = 16;
/** Reads of a block that keeps being replaced under a get before it gives up. */
const READ_ATTEMPTS_MAX = 8;
/** Slots `blockRefs` looks at between two turns of the event loop. */
const REFS_CHUNK_SLOTS = 4096;

const log = logger("storage");

/** A range write or zeroing appended to the journal and not yet applied to its slot. */
interface PendingRange {
  readonly seq: number;
  /** JournalKind.Write or JournalKind.Zero. */
  readonly kind: JournalKind;
  /** The block reads as zeros before this record (a block created or reset by it). */
  readonly reset: boolean;
  /** Sector-aligned range in the block. */
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** The bytes of a write (the journal record's own copy once appended); null for a zeroing. */
  data: Uint8Array | null;
}

/** A journal record (range or delete) waiting to be applied, in seq order across refs. */
interface Unapplied {
  readonly seq: number;
  readonly refKey: string;
  readonly key: Uint32Array;
  /** Null for a delete. */
  readonly range: PendingRange | null;
  /** For a range: the slot and generation of the copy it was appended for. */
  readonly copy?: { readonly slot: number; readonly generation: number };
  /** Where the record ends in the journal, once written. */
  end: number;
}

/**
 * Journal bytes appended since the last flush began after which the store flushes on its own
 * (records are applied in place only once a flush made them durable).
 */
const UNFLUSHED_BYTES_SOFT_MAX = 64 * 1024 * 1024;
/** How long records may stay unapplied and unflushed when nobody flushes (the default). */
const BACKGROUND_FLUSH_MS = 5_000;
/** Refs the applier works on at once. */
const APPLY_CONCURRENCY = 128;

/** Puts of one ref in flight. */
interface PutsInFlight {
  count: number;
  /** Resolves when the last of these puts settled. */
  settled: Promise<void>;
  settle: () => void;
  /** Generation of the newest of these puts. */
  latestGeneration: number;
  /** Puts with a lower generation were superseded by a delete. */
  supersededBelow: number;
  /** Whether these puts hold one unit of capacity for a ref not yet in the index. */
  reserved: boolean;
}

/**
 * A `blockRefs` iteration in progress. Its snapshot is the refs stored when it started: the walk
 * skips slots whose copy was installed after that (`installed`), and copies that existed then
 * but leave the index before the walk reaches them are kept in `removed`.
 */
interface RefWalk {
  position: number;
  installed: Set<number>;
  removed: BlockRef[];
}

/** A BlockStore over a data file and an index file; see the module doc. */
export class FileBlockStore implements BlockStore {
  readonly kind = "file";
  readonly name: string;
  readonly blockSizeBytes: number;
  /** Counters of the work done, read by the node's metrics. */
  readonly stats: BlockStoreStats = newBlockStoreStats();
  readonly #files: StoreFiles;
  readonly #slotCount: number;
  readonly #capacity: number;
  readonly #index: SlotIndex;
  readonly #writer: MapWriter;
  readonly #free: Uint32Array;
  #freeTop = 0;
  /** Slots from here on were never handed out since open (all free, entries zero on disk). */
  #fresh: number;
  /** Retiring and dead slots, in the order they started retiring. */
  #retiring: number[] = [];
  #retiredInFlush = 0;
  /**
   * A put or a block creation completed a write to the data / sums file since a flush last
   * took the flag. Only those writes need the file synced by a flush: records applied in place
   * stay in the journal, replayable, until a checkpoint syncs both files.
   */
  #dataUnsynced = false;
  #sumsPreloaded: Promise<void> = Promise.resolve();
  /** Journal bytes appended since the last flush began (see UNFLUSHED_BYTES_SOFT_MAX). */
  #unflushedBytes = 0;
  /** Map batches completed when the last map fdatasync started (see #syncMap). */
  #mapSyncedBatches = 0;
  #sumsUnsynced = false;
  #clearing = 0;
  #nextGeneration: number;
  readonly #putsInFlight = new Map<string, PutsInFlight>();
  #reservedNew = 0;
  #slotsHeld = 0;
  #slotWaiters: (() => void)[] = [];
  readonly #walks = new Set<RefWalk>();
  #opsInFlight = 0;
  #drainWaiters: (() => void)[] = [];
  readonly #flushes = new SharedRun(() => this.#syncAndRetire());
  #closing = false;
  #closePromise: Promise<void> | null = null;
  #failure: TorusError | null = null;
  readonly #staging: Uint8Array[] = [];
  readonly #sums: SumsFile;
  readonly #journal: Journal;
  readonly #sectorBytes: number;
  /** The key words of {@link readCachedAt}, which never yields while it uses them. */
  readonly #cachedReadKey = new Uint32Array(REF_WORDS);
  /** Unapplied range records per ref key, in seq order (what reads lay over the slot). */
  readonly #overlay = new Map<string, PendingRange[]>();
  /** Every unapplied record in seq order. */
  #unapplied: Unapplied[] = [];
  /** Records with a seq up to this are durable in the journal. */
  #durableSeq = 0;
  /** Records up to this seq are applied; the journal may drop what precedes the position. */
  #applied: { seq: number; position: number };
  #applying: Promise<void> | null = null;
  /**
   * One checkpoint at a time; a call while one runs gets the next, which starts after it and
   * moves past everything applied by then (the running one took the applied position it began
   * with: an apply that ended meanwhile would otherwise wait for another apply to be checkpointed,
   * and with the journal full and everything applied, none ever comes).
   */
  readonly #checkpoints = new SharedRun(() =>
    this.#syncAndCheckpoint().catch((error) => {
      throw this.#fail("journal checkpoint failed", error);
    })
  );
  /** Refs whose range writes wait for a creation or an edge merge in progress. */
  readonly #barriers = new Map<string, Promise<void>>();
  /** Deleted copies whose entries are zeroed once their delete record is durable. */
  #deletesAwaitingJournal: { slot: number; seq: number }[] = [];
  /** Slots the applier writes into: freed only when it is done (count per slot). */
  readonly #pinned = new Map<number, number>();
  /** Pinned slots released meanwhile: free once unpinned. */
  readonly #releaseDeferred = new Set<number>();
  /** Cancels the pending background flush. */
  #backgroundFlush: (() => void) | null = null;
  readonly #clock: Clock;
  readonly #backgroundFlushMs: number;

  /** Use {@link FileBlockStore.open}. */
  private constructor(
    files: StoreFiles,
    loaded: LoadedIndex,
    extra: { sums: SumsFile; journal: Journal; clock: Clock; backgroundFlushMs: number },
  ) {
    assert(files.highWater !== null, "a store opens with a settled high-water mark");
    this.name = files.name;
    this.blockSizeBytes = files.blockSizeBytes;
    this.#files = files;
    this.#slotCount = files.slotCount;
    this.#capacity = Math.max(0, files.slotCount - SPARE_SLOTS);
    this.#index = loaded.index;
    this.#nextGeneration = loaded.maxGeneration + 1;
    this.#sums = extra.sums;
    this.#journal = extra.journal;
    this.#clock = extra.clock;
    this.#backgroundFlushMs = extra.backgroundFlushMs;
    this.#sectorBytes = extra.sums.sectorBytes;
    this.#applied = {
      seq: extra.journal.checkpoint.seq,
      position: extra.journal.checkpoint.position,
    };
    this.#journal.onFull = () => void this.#flushNow().catch(() => {});
    // Pushed from the top down, so puts fill the file from its start; slots from `#fresh` on are
    // handed out in order after the free stack is empty.
    this.#free = new Uint32Array(files.slotCount);
    const scanned = Math.min(loaded.scannedSlots, files.slotCount);
    for (let slot = scanned - 1; slot >= 0; slot--) {
      if (this.#index.states[slot] !== SlotState.Stored) this.#free[this.#freeTop++] = slot;
    }
    this.#fresh = scanned;
    this.#writer = new MapWriter({
      map: files.map,
      index: this.#index,
      slotCount: files.slotCount,
      highWater: files.highWater,
      onWritten: (slots) => this.#entriesWritten(slots),
      onFailure: (error) => this.#fail("writing index entries failed", error),
    });
    this.#checkInvariants();
  }

  /**
   * Opens the store `<dir>/{data,map}-<name>.blk`, creating it when absent, growing it when
   * `sizeBytes` asks for more slots and shrinking it when what is dropped is free and the spare
   * slot stays.
   */
  static async open(options: FileBlockStoreOptions): Promise<FileBlockStore> {
    const name = options.name ?? "current";
    const existing = options.sizeBytes === "existing";
    const sizeBytes = existing ? 0 : options.sizeBytes as number;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
      throw invalid(`invalid store size: ${options.sizeBytes} bytes`);
    }
    const io = options.io ?? new SysFileIo();
    const clock = options.clock ?? systemClock;
    if (existing && !(await io.exists(`${options.dir}/map-${name}.blk`))) {
      throw notExist(`there is no block store ${name} in ${options.dir}`);
    }
    let slotCount = Math.floor(sizeBytes / options.blockSizeBytes);
    // Every get returns a fresh block-sized buffer: keep their memory out of mmap/munmap churn.
    // The torus binary does this at start (main.ts); this covers stores opened by other programs
    // (the storage benchmarks, tests).
    tuneMallocForLargeBuffers();
    const files = await openStoreFiles(io, {
      dir: options.dir,
      name,
      blockSizeBytes: options.blockSizeBytes,
      slotCount,
    });
    if (existing) slotCount = files.slotCount;
    let sums: SumsFile | null = null;
    let journal: Journal | null = null;
    try {
      const sumsPath = `${options.dir}/sums-${name}.blk`;
      const sumsOptions = {
        storeId: files.storeId,
        blockSizeBytes: files.blockSizeBytes,
        slotCount: Math.max(slotCount, files.slotCount),
      };
      journal = await Journal.open(io, `${options.dir}/journal-${name}.blk`, {
        storeId: files.storeId,
        regionBytes: journalRegionBytesOf(options, slotCount),
        clock,
      });
      let loaded: LoadedIndex;
      let summary: JournalSummary;
      if (await io.exists(sumsPath)) {
        sums = await SumsFile.open(io, sumsPath, sumsOptions);
        // What replay will rewrite: a copy is judged without those sectors (an apply a crash
        // left half done is not damage).
        summary = await summarizeJournal(journal, sums.sectorBytes);
        loaded = await loadIndex(files, slotCount, sumsVerifier(files, sums, summary));
      } else {
        // New, or made by a build before sums files: the entries' CRCs decide, then the sums
        // of the blocks already stored are made (and nothing was journaled before them).
        loaded = await loadIndex(files, slotCount, crcVerifier(files));
        const index = loaded;
        await SumsFile.create(
          io,
          sumsPath,
          sumsOptions,
          (made) => writeInitialSums(files, made, index),
        );
        sums = await SumsFile.open(io, sumsPath, sumsOptions);
        summary = await summarizeJournal(journal, sums.sectorBytes);
      }
      if (loaded.damagedEntries + loaded.supersededEntries > 0) {
        log.notice(
          `store ${name}: cleared ${loaded.damagedEntries} damaged and ` +
            `${loaded.supersededEntries} superseded index entries`,
        );
      }
      await resizeStore(files, slotCount, {
        usedBlocks: loaded.index.size,
        highestUsedSlot: loaded.highestUsedSlot,
      });
      await sums.resize(slotCount);
      await settleHighWater(files, loaded);
      const store = new FileBlockStore(files, loaded, {
        sums,
        journal,
        clock,
        backgroundFlushMs: options.backgroundFlushMs ?? BACKGROUND_FLUSH_MS,
      });
      await store.#replay(summary);
      // In the background: the first reads after a restart then find their sums in memory.
      store.#sumsPreloaded = sums.preload(
        loaded.highestUsedSlot + 1,
        (slot) => store.#index.states[slot] !== SlotState.Free,
      );
      return store;
    } catch (error) {
      await journal?.close().catch(() => {});
      await sums?.close().catch(() => {});
      await closeStoreFiles(files).catch(() => {});
      throw error;
    }
  }

  /**
   * Resolves once the records that flushes made durable are applied in place (the applier is
   * idle). For tests and tools: reads see the same bytes either way.
   */
  async applied(): Promise<void> {
    while (this.#applying !== null) await this.#applying;
  }

  /** Settles when the background preload of checksums that opening started has ended. */
  sumsPreloaded(): Promise<void> {
    return this.#sumsPreloaded;
  }

  /** Path of the data file. */
  get dataPath(): string {
    return this.#files.dataPath;
  }

  /** Path of the index (map) file. */
  get mapPath(): string {
    return this.#files.mapPath;
  }

  /**
   * Resolves once every index change and journal record made before the call is written to
   * the map file and the journal (not synced: what a process kill would leave). For tests and
   * tools; `flush` is the durable one.
   */
  indexWritten(): Promise<void> {
    try {
      this.#checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return Promise.all([this.#writer.written(), this.#journal.written()]).then(() => {});
  }

  #checkUsable(): void {
    if (this.#closing) throw closed(`block store ${this.name} is closed`);
    if (this.#failure !== null) throw this.#failure;
  }

  /** Why the store failed (see the module doc), or null while it works. */
  get failure(): TorusError | null {
    return this.#failure;
  }

  /** Counts a read that did not return its bytes (a missing ref or a close is no failure). */
  #readFailed(error: unknown): void {
    if (!isTorusError(error, ErrorCode.NotExist) && !isTorusError(error, ErrorCode.Closed)) {
      this.stats.failedBlocks++;
    }
  }

  async getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    const block = new Uint8Array(this.blockSizeBytes);
    this.#opsInFlight++;
    try {
      await this.#readRange(ref, 0, block);
    } catch (error) {
      this.#readFailed(error);
      throw error;
    } finally {
      this.#opDone();
    }
    const expected = options?.expectedCrc32;
    if (expected !== undefined && crc32(block) !== expected >>> 0) {
      this.stats.failedBlocks++;
      throw blockUnavailable(`block ${ref} does not match its expected CRC`);
    }
    this.stats.readBlocks++;
    this.stats.readBytes += block.length;
    return block;
  }

  async readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    checkBlockRange(this.blockSizeBytes, offsetBytes, into.length);
    this.#opsInFlight++;
    try {
      await this.#readRange(ref, offsetBytes, into);
    } catch (error) {
      this.#readFailed(error);
      throw error;
    } finally {
      this.#opDone();
    }
    this.stats.readBlocks++;
    this.stats.readBytes += into.length;
  }

  /**
   * Fills `into` with the bytes of `ref` at `offsetBytes`: the slot's verified sectors with the
   * unapplied range records laid over them. Retries when the ref's copy changes meanwhile.
   */
  async #readRange(ref: BlockRef, offsetBytes: number, into: Uint8Array): Promise<void> {
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    const sectorBytes = this.#sectorBytes;
    const first = Math.floor(offsetBytes / sectorBytes);
    const end = Math.max(first + 1, Math.ceil((offsetBytes + into.length) / sectorBytes));
    // Whole sectors are read straight into the caller's buffer.
    const aligned = offsetBytes === first * sectorBytes &&
      into.length === (end - first) * sectorBytes;
    const span = aligned ? into : new Uint8Array((end - first) * sectorBytes);
    for (let attempt = 1;; attempt++) {
      const slot = this.#index.find(key);
      if (slot < 0) throw notExist(`block ${ref} not found`);
      const generation = this.#index.generations[slot]!;
      const overlay = this.#overlayOf(ref.key, generation);
      const read = await this.#readSectors({ ref, key, slot, generation }, first, span, overlay);
      if (read) {
        applyOverlay(span, first * sectorBytes, overlay);
        const from = offsetBytes - first * sectorBytes;
        if (!aligned) into.set(span.subarray(from, from + into.length));
        return;
      }
      if (attempt >= READ_ATTEMPTS_MAX) {
        throw blockUnavailable(`block ${ref} kept changing while being read`);
      }
    }
  }

  /** The unapplied records of `refKey` newer than the copy of `generation`, in order. */
  #overlayOf(refKey: string, generation: number): PendingRange[] {
    const records = this.#overlay.get(refKey);
    if (records === undefined) return [];
    return records.filter((record) => record.seq > generation);
  }

  /**
   * Reads and verifies the sectors of `span` (from sector `first`) that the overlay does not
   * cover; zero sectors are filled without reading. False when the copy changed meanwhile.
   */
  async #readSectors(
    copy: { ref: BlockRef; key: Uint32Array; slot: number; generation: number },
    first: number,
    span: Uint8Array,
    overlay: readonly PendingRange[],
  ): Promise<boolean> {
    const sectorBytes = this.#sectorBytes;
    const count = span.length / sectorBytes;
    // A record that resets the block makes everything under it zero: no disk read at all.
    if (overlay.some((record) => record.reset)) return true;
    const covered = coveredSectors(overlay, first, count, sectorBytes);
    if (covered.every((c) => c)) return true;
    const changed = () =>
      this.#index.find(copy.key) !== copy.slot ||
      this.#index.generations[copy.slot] !== copy.generation;
    const record = await this.#sums.read(copy.slot);
    if (changed()) return false;
    if (record.generation !== copy.generation) {
      throw blockUnavailable(
        `block ${copy.ref} in slot ${copy.slot}: its checksums belong to another copy ` +
          `(a power loss took them before a flush)`,
      );
    }
    const run = sectorsToRead(record.sums, covered, first);
    if (run !== null) {
      const target = span.subarray(run.low * sectorBytes, (run.high + 1) * sectorBytes);
      const at = slotOffsetBytes(copy.slot, this.blockSizeBytes) + (first + run.low) * sectorBytes;
      try {
        const got = await this.#files.data.read(target, at);
        if (got !== target.length) {
          throw blockUnavailable(`data file ends inside slot ${copy.slot}`);
        }
      } catch (error) {
        if (changed()) return false;
        throw blockUnavailable(`reading block ${copy.ref} failed: ${errorMessage(error)}`, {
          cause: error,
        });
      }
      if (changed()) return false;
    }
    const bad = verifySpan(span, record.sums, covered, first, sectorBytes);
    if (bad >= 0) {
      if (changed()) return false;
      const sum = record.sums[first + bad];
      throw blockUnavailable(
        `block ${copy.ref} in slot ${copy.slot}: sector ${first + bad} failed its checksum` +
          (sum === SUM_UNKNOWN ? " (its contents were lost before a flush)" : ""),
      );
    }
    return true;
  }

  /**
   * {@link readAt} done now, when everything it needs is in memory: the slot's sums in their
   * cache and its sectors in the page cache (the overlay is memory already). Nothing here waits,
   * so the copy cannot change meanwhile; anything unusual (a miss, a bad sector, a reset record,
   * a closed or failed store) answers false and leaves it to readAt, which waits and reports.
   */
  readCachedAt(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean {
    if (this.#closing || this.#failure !== null) return false;
    const sectorBytes = this.#sectorBytes;
    const first = offsetBytes / sectorBytes;
    const count = into.length / sectorBytes;
    if (!Number.isInteger(first) || !Number.isInteger(count) || count === 0) return false;
    if (first < 0 || (first + count) * sectorBytes > this.blockSizeBytes) return false;
    const slot = this.#index.find(SlotIndex.keyOf(ref, this.#cachedReadKey));
    if (slot < 0) return false;
    const generation = this.#index.generations[slot]!;
    const record = this.#sums.peek(slot);
    if (record === undefined || record.generation !== generation) return false;
    const overlay = this.#overlay.size === 0 ? [] : this.#overlayOf(ref.key, generation);
    if (overlay.some((pending) => pending.reset)) return false;
    const covered = coveredSectors(overlay, first, count, sectorBytes);
    const run = sectorsToRead(record.sums, covered, first);
    if (run !== null) {
      const target = into.subarray(run.low * sectorBytes, (run.high + 1) * sectorBytes);
      const at = slotOffsetBytes(slot, this.blockSizeBytes) + (first + run.low) * sectorBytes;
      if (!this.#files.data.readCached(target, at)) return false;
    }
    if (verifySpan(into, record.sums, covered, first, sectorBytes) >= 0) return false;
    applyOverlay(into, offsetBytes, overlay);
    this.stats.readBlocks++;
    this.stats.readBytes += into.length;
    return true;
  }

  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      checkBlockRange(this.blockSizeBytes, offsetBytes, data.length);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#rangeWrite(ref, offsetBytes, data.length, data, rangeFlags(options));
  }

  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      checkBlockRange(this.blockSizeBytes, offsetBytes, lengthBytes);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#rangeWrite(ref, offsetBytes, lengthBytes, null, rangeFlags(options));
  }

  /**
   * A range write or zeroing. The fast path (whole sectors of a stored ref nobody is waiting on)
   * appends its record at once; anything else queues on the ref (see {@link #onRef}).
   */
  async #rangeWrite(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    data: Uint8Array | null,
    flags: RangeFlags,
  ): Promise<void> {
    const { reset, mustExist } = flags;
    const refKey = ref.key;
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    const sectorBytes = this.#sectorBytes;
    const aligned = offsetBytes % sectorBytes === 0 && lengthBytes % sectorBytes === 0;
    this.#opsInFlight++;
    try {
      let written: Promise<void>;
      const fast = aligned && !this.#refTails.has(refKey) && !this.#putsInFlight.has(refKey) &&
        this.#index.find(key) >= 0;
      if (fast) {
        written = this.#appendRange(ref, key, { offsetBytes, lengthBytes, data, reset });
      } else {
        // The caller's bytes are copied now: the record is built after the caller moved on.
        const owned = data === null ? null : data.slice();
        // The append happens in turn on the ref; waiting for its write does not hold the ref.
        const appended = await this.#onRef(
          refKey,
          () =>
            this.#slowRangeWrite(
              ref,
              key,
              { offsetBytes, lengthBytes, data: owned, reset },
              mustExist,
            ),
        );
        written = appended.written;
      }
      await written;
    } catch (error) {
      // A refusal of an absent ref (mustExist) is an answer, not a failed write.
      if (!(mustExist && isTorusError(error, ErrorCode.NotExist))) this.stats.failedWrittenBlocks++;
      throw error;
    } finally {
      this.#opDone();
    }
    this.stats.writtenBlocks++;
    this.stats.writtenBytes += lengthBytes;
  }

  /** Per ref: the last mutation queued behind one that waits (creation, merge, put in flight). */
  readonly #refTails = new Map<string, Promise<void>>();

  /**
   * Runs `body` after every mutation of `refKey` queued before it; later mutations of the ref
   * queue behind it until it returns. Keeps call order for what cannot finish at once.
   */
  async #onRef<T>(refKey: string, body: () => Promise<T>): Promise<T> {
    const previous = this.#refTails.get(refKey);
    let release!: () => void;
    const mine = new Promise<void>((resolve) => release = resolve);
    this.#refTails.set(refKey, mine);
    try {
      if (previous !== undefined) await previous;
      for (let flight = this.#putsInFlight.get(refKey); flight !== undefined;) {
        await flight.settled;
        flight = this.#putsInFlight.get(refKey);
      }
      this.#checkUsable();
      return await body();
    } finally {
      if (this.#refTails.get(refKey) === mine) this.#refTails.delete(refKey);
      release();
    }
  }

  /**
   * The slow path of a range write, run in turn on its ref: creates the block when absent (or
   * refuses, `mustExist` without a reset), merges partial edge sectors with the current bytes,
   * then appends (returns the append).
   */
  async #slowRangeWrite(
    ref: BlockRef,
    key: Uint32Array,
    range: { offsetBytes: number; lengthBytes: number; data: Uint8Array | null; reset: boolean },
    mustExist: boolean,
  ): Promise<{ written: Promise<void> }> {
    let reset = range.reset;
    if (this.#index.find(key) < 0) {
      if (mustExist && !reset) throw notExist(`block ${ref} not found`);
      await this.#createZeroBlock(key);
      reset = true;
    }
    const sectorBytes = this.#sectorBytes;
    const start = Math.floor(range.offsetBytes / sectorBytes) * sectorBytes;
    const end = Math.ceil((range.offsetBytes + range.lengthBytes) / sectorBytes) * sectorBytes;
    if (start === range.offsetBytes && end === range.offsetBytes + range.lengthBytes) {
      return { written: this.#appendRange(ref, key, { ...range, reset }) };
    }
    // Edge sectors: the current bytes (after the reset, zeros) with the range written over them.
    const merged = new Uint8Array(end - start);
    if (!reset) await this.#readRange(ref, start, merged);
    const inner = range.offsetBytes - start;
    if (range.data === null) merged.fill(0, inner, inner + range.lengthBytes);
    else merged.set(range.data, inner);
    const whole = range.data === null && end - start > 2 * sectorBytes;
    if (!whole) {
      const written = this.#appendRange(ref, key, {
        offsetBytes: start,
        lengthBytes: end - start,
        data: merged,
        reset,
      });
      return { written };
    }
    // A long zeroing: the two edge sectors as writes, the middle as a zeroing (no data).
    const head = this.#appendRange(ref, key, {
      offsetBytes: start,
      lengthBytes: sectorBytes,
      data: merged.subarray(0, sectorBytes),
      reset,
    });
    const middle = this.#appendRange(ref, key, {
      offsetBytes: start + sectorBytes,
      lengthBytes: end - start - 2 * sectorBytes,
      data: null,
      reset: false,
    });
    const tail = this.#appendRange(ref, key, {
      offsetBytes: end - sectorBytes,
      lengthBytes: sectorBytes,
      data: merged.subarray(merged.length - sectorBytes),
      reset: false,
    });
    return { written: Promise.all([head, middle, tail]).then(() => {}) };
  }

  /**
   * Creates `ref` as a block of zeros: a slot whose sums record (written first) says zero
   * everywhere, then installed. Needs room like a put of a new ref.
   */
  async #createZeroBlock(key: Uint32Array): Promise<void> {
    if (this.#index.size + this.#reservedNew >= this.#capacity) {
      throw new TorusError(
        ErrorCode.OutOfSpace,
        `block store ${this.name} is full (${this.#capacity} blocks)`,
      );
    }
    this.#reservedNew++;
    let slot = -1;
    try {
      slot = this.#takeFree();
      if (slot < 0) slot = await this.#waitForSlot();
      const generation = this.#nextGeneration++;
      await this.#sums.write(slot, zeroSums(generation, this.#sums.sectors));
      this.#sumsUnsynced = true;
      if (this.#failure !== null) throw this.#failure;
      assert(this.#index.find(key) < 0, "a ref being created is queued on itself");
      this.#install(slot, { key, generation, blockCrc: 0, current: -1 });
      this.#journalInstall(this.#index.refAt(slot), key, generation, true);
      this.#slotsHeld--;
      slot = -1;
    } finally {
      this.#reservedNew--;
      if (slot >= 0) {
        this.#slotsHeld--;
        this.#releaseSlot(slot);
        this.#wakeSlotWaiters();
      }
      this.#checkInvariants();
    }
  }

  /**
   * Appends a whole-sector range record for stored `ref` with the next seq, synchronously up to
   * the append (so records of one ref keep call order), and lays it over the slot for readers.
   * Resolves once the record has its place in the journal (its write follows; the next flush
   * waits for it and makes it durable).
   */
  #appendRange(
    ref: BlockRef,
    key: Uint32Array,
    range: { offsetBytes: number; lengthBytes: number; data: Uint8Array | null; reset: boolean },
  ): Promise<void> {
    const seq = this.#nextGeneration++;
    const pending: PendingRange = {
      seq,
      kind: range.data === null ? JournalKind.Zero : JournalKind.Write,
      reset: range.reset,
      offsetBytes: range.offsetBytes,
      lengthBytes: range.lengthBytes,
      data: range.data,
    };
    const refKey = ref.key;
    let records = this.#overlay.get(refKey);
    if (records === undefined) {
      records = [];
      this.#overlay.set(refKey, records);
    }
    records.push(pending);
    const slot = this.#index.find(key);
    assert(slot >= 0, "a range is appended for a stored copy");
    const copy = { slot, generation: this.#index.generations[slot]! };
    const unapplied = { seq, refKey, key: key.slice(), range: pending, copy, end: 0 };
    return this.#appendRecord(unapplied, {
      seq,
      kind: pending.kind,
      flags: pending.reset ? JournalFlag.Reset : 0,
      ref,
      offsetBytes: pending.offsetBytes,
      lengthBytes: pending.lengthBytes,
      data: pending.data,
    });
  }

  /**
   * Journals that copy `generation` of `ref` took effect (`zero`: a block created as zeros), so
   * a replay applies later records to that copy only: records made for a put whose entry a
   * power loss took must not land on the older copy. Nobody waits for it; a failure fails the
   * store.
   */
  #journalInstall(ref: BlockRef, key: Uint32Array, generation: number, zero: boolean): void {
    const seq = this.#nextGeneration++;
    const data = new Uint8Array(8);
    new DataView(data.buffer).setUint32(0, generation % 2 ** 32, true);
    new DataView(data.buffer).setUint32(4, Math.floor(generation / 2 ** 32), true);
    void this.#appendRecord({ seq, refKey: ref.key, key: key.slice(), range: null, end: 0 }, {
      seq,
      kind: JournalKind.Install,
      flags: zero ? JournalFlag.Reset : 0,
      ref,
      offsetBytes: 0,
      lengthBytes: 8,
      data,
    }).catch(() => {});
  }

  /**
   * Queues `unapplied` for the applier and appends its journal record. Resolves once the record
   * has its place in the journal, so the next flush makes it durable: the write of the record
   * itself runs on (a failed one fails the store, and so the next flush).
   */
  #appendRecord(unapplied: Unapplied, record: JournalRecord): Promise<void> {
    this.#unapplied.push(unapplied);
    this.#unflushedBytes += record.data?.length ?? 64;
    // Once per so many bytes, not on every append while they wait to be applied: a flush of its
    // own covers everything appended before it.
    if (this.#unflushedBytes > UNFLUSHED_BYTES_SOFT_MAX) void this.#flushNow().catch(() => {});
    else this.#scheduleBackgroundFlush();
    const { admitted, written, data } = this.#journal.append(record);
    // The overlay keeps the journal's copy of the bytes (the caller's may change from now on).
    if (unapplied.range !== null) unapplied.range.data = data;
    written.then((end) => {
      unapplied.end = end;
    }, (error) => {
      this.#fail("appending to the journal failed", error);
    });
    return admitted.catch((error) => {
      throw this.#fail("appending to the journal failed", error);
    });
  }

  /** Flushes on its own a while after the last write, so records do not wait unapplied for long. */
  #scheduleBackgroundFlush(): void {
    if (this.#backgroundFlush !== null) return;
    this.#backgroundFlush = this.#clock.after(this.#backgroundFlushMs, () => {
      this.#backgroundFlush = null;
      if (this.#closing || this.#failure !== null || this.#unapplied.length === 0) return;
      void this.#flushNow().catch(() => {});
    });
  }

  // ---- applying durable records, checkpoints, replay ---------------------------------------

  /** Starts applying the records that are durable, unless that already runs. */
  #scheduleApply(): void {
    if (this.#applying !== null || this.#failure !== null) return;
    if (this.#unapplied.length === 0 || this.#unapplied[0]!.seq > this.#durableSeq) return;
    this.#applying = this.#applyDurable().catch((error) => {
      this.#fail("applying journal records failed", error);
    }).finally(() => {
      this.#applying = null;
      this.#scheduleApply();
    });
  }

  /** Applies every durable record to its slot, then may checkpoint. */
  async #applyDurable(): Promise<void> {
    const durable = this.#durableSeq;
    let count = 0;
    while (count < this.#unapplied.length && this.#unapplied[count]!.seq <= durable) count++;
    const batch = this.#unapplied.splice(0, count);
    const byRef = new Map<string, Unapplied[]>();
    for (const record of batch) {
      const list = byRef.get(record.refKey);
      if (list === undefined) byRef.set(record.refKey, [record]);
      else list.push(record);
    }
    const groups = [...byRef.values()];
    for (let i = 0; i < groups.length; i += APPLY_CONCURRENCY) {
      await Promise.all(groups.slice(i, i + APPLY_CONCURRENCY).map((g) => this.#applyToSlot(g)));
    }
    const last = batch[batch.length - 1]!;
    this.#applied = { seq: last.seq, position: Math.max(this.#applied.position, last.end) };
    if (this.#journal.usedBytes > this.#journal.regionBytes / 2) {
      void this.#checkpoint().catch(() => {});
    }
  }

  /**
   * Applies the records of one ref (in seq order) to the copies they were made for: per copy,
   * the final bytes of every sector they touch are written once, then the sums record.
   * - The current copy gets its records.
   * - So does a copy deleted since, while its delete is not durable (Deleting): its entry is
   *   durable and stays so until then, and the checkpoint after this apply ends the replay of
   *   these records, so a power loss that takes the delete must find them applied in place.
   * - A copy a put replaced gets nothing: the checkpoint makes the new copy durable first.
   * Deletes have nothing left to do here.
   */
  async #applyToSlot(records: readonly Unapplied[]): Promise<void> {
    const index = this.#index;
    let from = 0;
    while (from < records.length) {
      const copy = records[from]!.copy;
      let to = from + 1;
      while (
        to < records.length &&
        records[to]!.copy?.slot === copy?.slot &&
        records[to]!.copy?.generation === copy?.generation
      ) to++;
      const holds = copy !== undefined && index.generations[copy.slot] === copy.generation &&
        (index.find(records[from]!.key) === copy.slot ||
          index.states[copy.slot] === SlotState.Deleting);
      if (holds) {
        const ranges = records.slice(from, to).map((r) => r.range!);
        await this.#writeRanges(copy.slot, copy.generation, ranges);
      }
      from = to;
    }
    // Readers now find these bytes in the slot; they leave the overlay.
    const refKey = records[0]!.refKey;
    const done = new Set(records.map((r) => r.range));
    const left = (this.#overlay.get(refKey) ?? []).filter((r) => !done.has(r));
    if (left.length === 0) this.#overlay.delete(refKey);
    else this.#overlay.set(refKey, left);
  }

  /** Writes `ranges` (in order) into `slot` in place, the slot pinned meanwhile. */
  async #writeRanges(slot: number, generation: number, ranges: readonly PendingRange[]) {
    this.#pinned.set(slot, (this.#pinned.get(slot) ?? 0) + 1);
    try {
      const record = await this.#sums.read(slot);
      const reset = ranges.some((range) => range.reset);
      // Sums of another copy (a power loss took this copy's before a flush): unknown, unless a
      // reset makes every sector known again.
      const sums = record.generation === generation
        ? record
        : unknownSums(generation, this.#sums.sectors);
      const { runs, changed } = finalSectors(ranges, this.#sectorBytes, sums);
      const writes: Promise<void>[] = [];
      const base = slotOffsetBytes(slot, this.blockSizeBytes);
      for (const run of runs) writes.push(this.#files.data.write(run.bytes, base + run.offset));
      await Promise.all(writes);
      // Pinned, the slot was not reused meanwhile: these sums describe the bytes just written,
      // even if a put or delete made the copy old in between. Only what changed is written
      // (all of it after a reset), so a torn write cannot hurt the sums of untouched sectors.
      if (reset || record.generation !== generation) await this.#sums.write(slot, sums);
      else await this.#sums.writeSums(slot, sums, changed);
    } finally {
      this.#unpin(slot);
    }
  }

  #unpin(slot: number): void {
    const count = (this.#pinned.get(slot) ?? 1) - 1;
    if (count > 0) {
      this.#pinned.set(slot, count);
      return;
    }
    this.#pinned.delete(slot);
    if (this.#releaseDeferred.delete(slot)) {
      this.#releaseSlot(slot);
      this.#wakeSlotWaiters();
    }
  }

  /**
   * Makes the applied records' place in the journal reusable: slots, sums and map are synced,
   * then the checkpoint moves past them. One runs at a time.
   */
  #checkpoint(): Promise<void> {
    return this.#checkpoints.next();
  }

  async #syncAndCheckpoint(): Promise<void> {
    const applied = this.#applied;
    if (applied.position <= this.#journal.checkpoint.position) return;
    await this.#files.data.datasync();
    await this.#sums.datasync();
    await this.#writer.written();
    await this.#syncMap();
    await this.#journal.setCheckpoint({ ...applied, epoch: this.#journal.checkpoint.epoch });
  }

  /**
   * Replays the journal after the last checkpoint (at open): every record is applied in order,
   * creating blocks that range writes had created, then everything is synced and a checkpoint
   * with a new epoch ends the old log.
   */
  async #replay(summary: JournalSummary): Promise<void> {
    // A ref's records before its last delete need no replay (the delete ends them), and
    // replaying them could need room the store never had at once.
    const lastDelete = summary.lastDelete;
    let lastSeq = this.#journal.checkpoint.seq;
    let replayed = 0;
    for await (const record of this.#journal.replay()) {
      replayed++;
      lastSeq = record.seq;
      this.#nextGeneration = Math.max(this.#nextGeneration, record.seq + 1);
      const deletedLater = (lastDelete.get(record.ref.key) ?? 0) > record.seq;
      if (!deletedLater) await this.#replayRecord(record, summary);
    }
    if (replayed > 0) log.notice(`store ${this.name}: replayed ${replayed} journal records`);
    await this.#files.data.datasync();
    await this.#sums.datasync();
    await this.#writer.written();
    await this.#files.map.datasync();
    const checkpoint = this.#journal.checkpoint;
    const seq = Math.max(lastSeq, checkpoint.seq);
    // Records appended from now on must follow the checkpoint's seq, or a later replay (which
    // reads only records with growing seqs after it) stops at the first of them. With nothing
    // replayed, the entries' highest generation can be below it: the last records before the
    // checkpoint were range writes, installs or deletes, whose seqs no entry carries.
    this.#nextGeneration = Math.max(this.#nextGeneration, seq + 1);
    await this.#journal.setCheckpoint({
      seq,
      position: this.#journal.head,
      epoch: checkpoint.epoch + 1,
    });
    this.#applied = { seq: lastSeq, position: this.#journal.head };
    this.#checkInvariants();
  }

  /** Creates the zero block of generation `generation` again for `record`; -1 when no room. */
  async #recreateForReplay(
    record: JournalRecord,
    key: Uint32Array,
    generation: number,
  ): Promise<number> {
    // Deletes replayed before it may still be clearing their entries: wait for one of them.
    let slot = this.#takeFree();
    if (slot < 0) slot = await this.#waitForSlot().catch(() => -1);
    if (slot < 0) {
      // Only unflushed puts that came back can take the room a durable record had: the record
      // loses (loudly) rather than the store refusing to open.
      log.error(`replaying the journal of ${this.name}: no room to recreate ${record.ref}`);
      return -1;
    }
    await this.#sums.write(slot, zeroSums(generation, this.#sums.sectors));
    this.#install(slot, { key, generation, blockCrc: 0, current: -1 });
    this.#slotsHeld--;
    return slot;
  }

  async #replayRecord(record: JournalRecord, summary: JournalSummary): Promise<void> {
    const key = SlotIndex.keyOf(record.ref, new Uint32Array(REF_WORDS));
    let slot = this.#index.find(key);
    if (record.kind === JournalKind.Delete) {
      if (slot >= 0 && this.#index.generations[slot]! < record.seq) this.#removeStored(slot);
      return;
    }
    if (record.kind === JournalKind.Install) return; // what it says guides the other records
    // The copy this record was made for: the last one installed before it, if replayed here.
    const events = summary.events.get(record.ref.key) ?? [];
    const governing = events.filter((event) => event.seq < record.seq).at(-1);
    if (governing !== undefined && governing.generation === null) return;
    const generation = slot >= 0 ? this.#index.generations[slot]! : -1;
    if (generation >= record.seq) return; // a later copy won
    if (governing !== undefined && generation !== governing.generation) {
      // Its copy did not survive: a block created as zeros is created again; the records of a
      // put whose entry a power loss took (none of them were flushed) have nothing to land on.
      if (!governing.zero || slot >= 0) return;
      slot = await this.#recreateForReplay(record, key, governing.generation!);
      if (slot < 0) return;
    } else if (slot < 0) {
      return; // no copy to apply it to (its delete was replayed, or it predates a checkpoint)
    }
    const range: PendingRange = {
      seq: record.seq,
      kind: record.kind,
      reset: (record.flags & JournalFlag.Reset) !== 0,
      offsetBytes: record.offsetBytes,
      lengthBytes: record.lengthBytes,
      data: record.data,
    };
    if (
      range.offsetBytes % this.#sectorBytes !== 0 || range.lengthBytes % this.#sectorBytes !== 0
    ) {
      throw invalid(`journal record ${record.seq} of ${this.name} is not whole sectors`);
    }
    checkBlockRange(this.blockSizeBytes, range.offsetBytes, range.lengthBytes);
    await this.#writeRanges(slot, this.#index.generations[slot]!, [range]);
  }

  async putBlock(ref: BlockRef, data: Uint8Array, options?: PutOptions): Promise<void> {
    this.#checkUsable();
    options?.signal?.throwIfAborted();
    if (data.length > this.blockSizeBytes) {
      throw invalid(`block of ${data.length} bytes exceeds block size ${this.blockSizeBytes}`);
    }
    const ifAbsent = options?.ifAbsent ?? false;
    try {
      // An ifAbsent put also waits for puts of the ref in flight: whether they install decides.
      if (!this.#refTails.has(ref.key) && !(ifAbsent && this.#putsInFlight.has(ref.key))) {
        // The check and the start of the put run with no await between: nothing comes between.
        if (ifAbsent) this.#refuseStored(ref);
        await this.#put(ref, data);
      } else {
        // A mutation of this ref called earlier still waits: this put starts after it, and later
        // mutations of the ref wait until it has started (taken its generation).
        const copy = data.slice();
        this.#opsInFlight++;
        let started: { done: Promise<void> };
        try {
          started = await this.#onRef(ref.key, () => {
            if (ifAbsent) this.#refuseStored(ref);
            return Promise.resolve({ done: this.#put(ref, copy) });
          });
        } finally {
          this.#opDone();
        }
        await started.done;
      }
    } catch (error) {
      // A refusal of a stored ref (ifAbsent) is an answer, not a failed write.
      if (!(ifAbsent && isTorusError(error, ErrorCode.Exists))) this.stats.failedWrittenBlocks++;
      throw error;
    }
    this.stats.writtenBlocks++;
    this.stats.writtenBytes += data.length;
  }

  /** `exists` when `ref` is stored (an ifAbsent put's check, made in turn on the ref). */
  #refuseStored(ref: BlockRef): void {
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    if (this.#index.find(key) >= 0) throw exists(`block ${ref} is already stored`);
  }

  async #put(ref: BlockRef, data: Uint8Array): Promise<void> {
    this.#checkUsable();
    const keyText = ref.key;
    const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
    // A new ref reserves capacity once, however many puts of it are in flight.
    const reserve = this.#index.find(key) < 0 &&
      !(this.#putsInFlight.get(keyText)?.reserved ?? false);
    if (reserve && this.#index.size + this.#reservedNew >= this.#capacity) {
      throw new TorusError(
        ErrorCode.OutOfSpace,
        `block store ${this.name} is full (${this.#capacity} blocks)`,
      );
    }
    // Everything up to the first await runs at call time: the caller's bytes are copied now.
    const block = this.#takeStaging(data);
    const generation = this.#nextGeneration++;
    const flight = this.#beginPut(keyText);
    flight.latestGeneration = generation;
    if (reserve) {
      flight.reserved = true;
      this.#reservedNew++;
    }
    this.#opsInFlight++;
    try {
      await this.#writeAndInstall({ key, keyText, block, generation, flight });
    } finally {
      this.#endPut(keyText, flight);
      this.#giveStaging(block);
      this.#opDone();
      this.#checkInvariants();
    }
  }

  async #writeAndInstall(
    put: {
      key: Uint32Array;
      keyText: string;
      block: Uint8Array;
      generation: number;
      flight: PutsInFlight;
    },
  ): Promise<void> {
    let slot = this.#takeFree();
    if (slot < 0) slot = await this.#waitForSlot();
    let installed = false;
    try {
      const offset = slotOffsetBytes(slot, this.blockSizeBytes);
      const written = this.#files.data.write(put.block, offset);
      // Checksums are computed while a worker thread writes the same (unchanging) bytes.
      const sums = sumsOfBlock(put.block, this.#sectorBytes, put.generation);
      const blockCrc = sumsDigest(sums.sums);
      await Promise.all([written, this.#sums.write(slot, sums)]);
      this.#dataUnsynced = true;
      this.#sumsUnsynced = true;
      if (this.#failure !== null) throw this.#failure;
      const current = this.#index.find(put.key);
      const newer = current >= 0 && this.#index.generations[current]! > put.generation;
      if (newer || put.flight.supersededBelow > put.generation) return;
      this.#install(slot, { key: put.key, generation: put.generation, blockCrc, current });
      this.#journalInstall(this.#index.refAt(slot), put.key, put.generation, false);
      // Range records of the ref made before this put no longer apply to it.
      const records = this.#overlay.get(put.keyText);
      if (records !== undefined) {
        const left = records.filter((record) => record.seq > put.generation);
        if (left.length === 0) this.#overlay.delete(put.keyText);
        else this.#overlay.set(put.keyText, left);
      }
      installed = true;
      if (current < 0 && put.flight.reserved) {
        // The ref now counts in the index; its reservation is no longer needed.
        put.flight.reserved = false;
        this.#reservedNew--;
      }
    } finally {
      this.#slotsHeld--;
      if (!installed) this.#releaseSlot(slot);
      this.#wakeSlotWaiters();
    }
  }

  /** Makes held `slot` the stored copy of its ref; the previous copy starts retiring. */
  #install(
    slot: number,
    copy: { key: Uint32Array; generation: number; blockCrc: number; current: number },
  ): void {
    const index = this.#index;
    index.setRef(slot, copy.key);
    index.generations[slot] = copy.generation;
    index.crcs[slot] = copy.blockCrc;
    if (copy.current >= 0) {
      this.#walkRemoved(copy.current);
      index.replace(copy.current, slot);
      index.states[copy.current] = SlotState.Retiring;
      index.older[slot] = copy.current + 1;
      this.#retiring.push(copy.current);
    } else {
      index.insert(slot);
    }
    this.#walkInstalled(slot);
    this.#writer.markDirty(slot);
  }

  /** Enters the failed state (see the module doc) and returns the error to throw. */
  #fail(what: string, error: unknown): TorusError {
    if (this.#failure === null) {
      this.#failure = new TorusError(
        ErrorCode.Unavailable,
        `block store ${this.name} failed: ${what}: ${errorMessage(error)}`,
        { cause: error },
      );
      // Nothing will make room in the journal or free a slot now: calls waiting for either
      // fail instead of waiting forever.
      this.#journal.fail(this.#failure);
      this.#wakeSlotWaiters();
    }
    log.error(this.#failure.message);
    return this.#failure;
  }

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
      const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
      return Promise.resolve(this.#index.find(key) >= 0);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    try {
      this.#checkUsable();
      options?.signal?.throwIfAborted();
    } catch (error) {
      return Promise.reject(error);
    }
    if (!this.#refTails.has(ref.key)) return this.#delete(ref);
    // A mutation of this ref called earlier still waits: this delete comes after it.
    this.#opsInFlight++;
    return this.#onRef(ref.key, () => Promise.resolve({ done: this.#delete(ref) }))
      .then((started) => started.done)
      .finally(() => this.#opDone());
  }

  #delete(ref: BlockRef): Promise<void> {
    try {
      this.#checkUsable();
      const flight = this.#putsInFlight.get(ref.key);
      // Whether a put of this ref is in flight that no earlier delete has cancelled yet.
      const cancelsPut = flight !== undefined && flight.latestGeneration > flight.supersededBelow;
      if (flight !== undefined) {
        // The puts in flight will not install: their capacity reservation goes now.
        flight.supersededBelow = this.#nextGeneration++;
        if (flight.reserved) {
          flight.reserved = false;
          this.#reservedNew--;
        }
      }
      const key = SlotIndex.keyOf(ref, new Uint32Array(REF_WORDS));
      const slot = this.#index.find(key);
      if (slot < 0) {
        if (cancelsPut) return Promise.resolve();
        throw notExist(`block ${ref} not found`);
      }
      // Journaled too: a replay must not bring back the ref with records made before it.
      const seq = this.#nextGeneration++;
      this.#removeStored(slot, seq);
      this.stats.deletedBlocks++;
      this.#overlay.delete(ref.key);
      const appended = this.#appendRecord({ seq, refKey: ref.key, key, range: null, end: 0 }, {
        seq,
        kind: JournalKind.Delete,
        flags: 0,
        ref,
        offsetBytes: 0,
        lengthBytes: 0,
        data: null,
      });
      this.#checkInvariants();
      return appended;
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Takes stored `slot` out of the index: its entry is zeroed (once the delete is durable, for a
   * delete) and the slot reused once that zero entry was written. Its ref's retiring copies turn
   * Dead: their entries stay until a flush retires them like any old copy. A power loss that
   * takes the delete may then need them: when the newest copy's entry was not durable yet, the
   * newest durable copy is an old one.
   */
  #removeStored(slot: number, deleteSeq: number | null = null): void {
    const index = this.#index;
    this.#walkRemoved(slot);
    index.remove(slot);
    this.#clearing++;
    if (deleteSeq === null) {
      index.states[slot] = SlotState.Clearing;
      this.#writer.markDirty(slot);
    } else {
      // Zeroed only once the delete's record is durable (see SlotState.Deleting).
      index.states[slot] = SlotState.Deleting;
      this.#deletesAwaitingJournal.push({ slot, seq: deleteSeq });
    }
    for (let link = index.older[slot]!; link !== 0;) {
      const old = link - 1;
      link = index.older[old]!;
      index.older[old] = 0;
      index.states[old] = SlotState.Dead;
    }
    index.older[slot] = 0;
  }

  /** The MapWriter wrote these entries: clearing slots are free now. */
  #entriesWritten(slots: readonly number[]): void {
    let freed = false;
    for (const slot of slots) {
      if (this.#index.states[slot] !== SlotState.Clearing) continue;
      this.#clearing--;
      this.#releaseSlot(slot);
      freed = true;
    }
    if (freed) this.#wakeSlotWaiters();
    this.#checkInvariants();
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    this.#checkUsable();
    const walk: RefWalk = { position: 0, installed: new Set(), removed: [] };
    // Slots from `#fresh` on held nothing when the walk started.
    const end = this.#fresh;
    this.#walks.add(walk);
    try {
      while (walk.position < end) {
        const refs: BlockRef[] = [];
        const chunkEnd = Math.min(end, walk.position + REFS_CHUNK_SLOTS);
        for (let slot = walk.position; slot < chunkEnd; slot++) {
          if (this.#index.states[slot] !== SlotState.Stored || walk.installed.has(slot)) continue;
          refs.push(this.#index.refAt(slot));
        }
        walk.position = chunkEnd;
        refs.push(...walk.removed.splice(0));
        for (const ref of refs) yield ref;
        // Let other work run between chunks: a store of millions of blocks is walked in seconds.
        await new Promise<void>((resolve) => setImmediate(resolve));
        this.#checkUsable();
      }
      for (const ref of walk.removed.splice(0)) yield ref;
    } finally {
      this.#walks.delete(walk);
    }
  }

  /** A copy installed in `slot` is not part of the snapshots of walks in progress. */
  #walkInstalled(slot: number): void {
    for (const walk of this.#walks) if (slot >= walk.position) walk.installed.add(slot);
  }

  /** The copy in stored `slot` leaves the index: walks that have not reached it keep its ref. */
  #walkRemoved(slot: number): void {
    for (const walk of this.#walks) {
      if (slot >= walk.position && !walk.installed.has(slot)) {
        walk.removed.push(this.#index.refAt(slot));
      }
    }
  }

  usedBlocks(): number {
    this.#checkUsable();
    return this.#index.size;
  }

  totalBlocks(): number {
    this.#checkUsable();
    return this.#capacity;
  }

  flush(): Promise<void> {
    try {
      this.#checkUsable();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#flushNow();
  }

  /** Runs a flush that starts after this call (one runs, one waits: see SharedRun). */
  #flushNow(): Promise<void> {
    return this.#flushes.next();
  }

  async #syncAndRetire(): Promise<void> {
    if (this.#failure !== null) throw this.#failure;
    this.#unflushedBytes = 0;
    // Only copies retired before the syncs start are covered by them.
    const retiring = this.#retiring;
    this.#retiring = [];
    this.#retiredInFlush += retiring.length;
    try {
      // Whole-block puts and created blocks are durable before the entries and records naming
      // them. Writes that only applied records need no sync here (see #dataUnsynced).
      const data = this.#dataUnsynced;
      const sums = this.#sumsUnsynced;
      this.#dataUnsynced = this.#sumsUnsynced = false;
      if (data) await this.#files.data.datasync();
      if (sums) await this.#sums.datasync();
      await this.#writer.written();
      await this.#syncMap();
      // Range records last: a durable record's block (created by a range write) is durable too.
      this.#durableSeq = Math.max(this.#durableSeq, await this.#journal.sync());
      this.#zeroDurableDeletes();
      if (retiring.length > 0) {
        // The new entries are durable: the old copies' entries can go, durably, then their slots.
        this.#retire(retiring);
        await this.#writer.written();
        await this.#syncMap();
      }
    } catch (error) {
      throw this.#fail("flush failed", error);
    } finally {
      this.#retiredInFlush -= retiring.length;
      // On failure they stay retiring (the store is failed anyway: nothing reuses them).
      if (this.#failure !== null) this.#retiring.push(...retiring);
    }
    this.stats.flushes++;
    for (const slot of retiring) this.#releaseSlot(slot);
    this.#wakeSlotWaiters();
    this.#checkInvariants();
    this.#scheduleApply();
  }

  /**
   * Makes the map's written entries durable: one fdatasync, skipped when no batch of entries
   * finished since the last one started (a flush of range writes to stored blocks writes none).
   */
  async #syncMap(): Promise<void> {
    const completed = this.#writer.batchesCompleted;
    if (completed === this.#mapSyncedBatches) return;
    await this.#files.map.datasync();
    this.#mapSyncedBatches = completed;
  }

  /** Deleted copies whose delete record is now durable get their entries zeroed. */
  #zeroDurableDeletes(): void {
    const waiting = this.#deletesAwaitingJournal;
    this.#deletesAwaitingJournal = [];
    for (const pending of waiting) {
      if (pending.seq > this.#durableSeq) {
        this.#deletesAwaitingJournal.push(pending);
        continue;
      }
      this.#index.states[pending.slot] = SlotState.Clearing;
      this.#writer.markDirty(pending.slot);
    }
  }

  /** Marks `slots` (retiring or dead) Retired, unlinks them from their chains, zeroes entries. */
  #retire(slots: readonly number[]): void {
    const index = this.#index;
    const alive: number[] = [];
    for (const slot of slots) {
      if (index.states[slot] === SlotState.Retiring) alive.push(slot);
      index.states[slot] = SlotState.Retired;
      this.#writer.markDirty(slot);
    }
    // Retired copies are the oldest of their chains: cut each chain above its first one.
    const cutChains = new Set<number>();
    for (const slot of alive) {
      const head = index.findRefOf(slot);
      assert(head >= 0, "a retiring copy's ref is stored");
      if (cutChains.has(head)) continue;
      cutChains.add(head);
      let link = head;
      while (
        index.older[link] !== 0 && index.states[index.older[link]! - 1] !== SlotState.Retired
      ) {
        link = index.older[link]! - 1;
      }
      index.older[link] = 0;
    }
    for (const slot of slots) index.older[slot] = 0;
  }

  close(): Promise<void> {
    this.#closePromise ??= this.#shutdown();
    return this.#closePromise;
  }

  /** Same as {@link close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #shutdown(): Promise<void> {
    this.#closing = true;
    while (this.#opsInFlight > 0) {
      await new Promise<void>((resolve) => this.#drainWaiters.push(resolve));
    }
    this.#backgroundFlush?.();
    try {
      if (this.#failure === null) {
        await this.#flushNow();
        // Apply what is left and checkpoint, so the next open has nothing to replay.
        while (this.#applying !== null || this.#unapplied.length > 0) {
          if (this.#applying !== null) await this.#applying;
          else if (this.#unapplied[0]!.seq > this.#durableSeq) await this.#flushNow();
          else this.#scheduleApply();
          if (this.#failure !== null) break;
        }
        await this.#checkpoints.running?.catch(() => {});
        if (this.#failure === null) await this.#checkpoint();
      }
    } finally {
      this.#writer.stop();
      await this.#journal.close().catch(() => {});
      await this.#sums.close().catch(() => {});
      await closeStoreFiles(this.#files);
    }
    if (this.#failure !== null) throw this.#failure;
  }

  #opDone(): void {
    this.#opsInFlight--;
    if (this.#opsInFlight > 0) return;
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const wake of waiters) wake();
  }

  #beginPut(key: string): PutsInFlight {
    let flight = this.#putsInFlight.get(key);
    if (flight === undefined) {
      let settle!: () => void;
      const settled = new Promise<void>((resolve) => settle = resolve);
      flight = {
        count: 0,
        latestGeneration: 0,
        supersededBelow: 0,
        reserved: false,
        settled,
        settle,
      };
      this.#putsInFlight.set(key, flight);
    }
    flight.count++;
    return flight;
  }

  #endPut(key: string, flight: PutsInFlight): void {
    flight.count--;
    if (flight.count > 0) return;
    this.#putsInFlight.delete(key);
    if (flight.reserved) this.#reservedNew--;
    flight.settle();
  }

  #takeStaging(data: Uint8Array): Uint8Array {
    const block = this.#staging.pop() ?? new Uint8Array(this.blockSizeBytes);
    block.set(data);
    if (data.length < block.length) block.fill(0, data.length);
    return block;
  }

  #giveStaging(block: Uint8Array): void {
    if (this.#staging.length < STAGING_BUFFERS_MAX) this.#staging.push(block);
  }

  /** A free slot, now held by the caller, or -1. */
  #takeFree(): number {
    let slot: number;
    if (this.#freeTop > 0) slot = this.#free[--this.#freeTop]!;
    else if (this.#fresh < this.#slotCount) slot = this.#fresh++;
    else return -1;
    this.#index.states[slot] = SlotState.Held;
    this.#slotsHeld++;
    return slot;
  }

  #releaseSlot(slot: number): void {
    assert(this.#freeTop < this.#slotCount, "free stack overflow: a slot was freed twice");
    this.#index.states[slot] = SlotState.Free;
    // The applier is writing into it: it becomes reusable when that write is done.
    if (this.#pinned.has(slot)) {
      this.#releaseDeferred.add(slot);
      return;
    }
    this.#free[this.#freeTop++] = slot;
  }

  /**
   * Waits until a slot is free: flushing retires old copies, the map writer frees clearing slots,
   * and puts in flight release or retire theirs. Capacity reservations guarantee one of those
   * exists (see the module doc).
   */
  async #waitForSlot(): Promise<number> {
    for (;;) {
      if (this.#retiring.length > 0) {
        await this.#flushNow();
      } else if (this.#retiredInFlush > 0 && this.#flushes.running !== null) {
        await this.#flushes.running;
      } else if (this.#clearing > 0) {
        if (this.#deletesAwaitingJournal.length > 0) await this.#flushNow();
        await this.#writer.written();
      } else if (this.#slotsHeld > 0) {
        await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
      } else {
        throw new TorusError(ErrorCode.OutOfSpace, `block store ${this.name} has no free slot`);
      }
      if (this.#failure !== null) throw this.#failure;
      const slot = this.#takeFree();
      if (slot >= 0) return slot;
    }
  }

  #wakeSlotWaiters(): void {
    if (this.#slotWaiters.length === 0) return;
    const waiters = this.#slotWaiters;
    this.#slotWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Every slot is in exactly one state (checked when TORUS_VERIFY=1). */
  #checkInvariants(): void {
    if (!verifyEnabled()) return;
    const retiring = this.#retiring.length + this.#retiredInFlush;
    const free = this.#freeTop + (this.#slotCount - this.#fresh) + this.#releaseDeferred.size;
    const accounted = free + this.#index.size + retiring + this.#slotsHeld + this.#clearing;
    assert(
      accounted === this.#slotCount,
      `slot accounting broken: ${accounted} accounted of ${this.#slotCount} slots`,
    );
    if (this.#slotCount <= 4096) this.#checkStates();
  }

  /** Small stores: the per-state counts match the slot states. */
  #checkStates(): void {
    const counts = new Array<number>(8).fill(0);
    for (let slot = 0; slot < this.#slotCount; slot++) counts[this.#index.states[slot]!]!++;
    assert(counts[SlotState.Held] === this.#slotsHeld, "held slots miscounted");
    assert(counts[SlotState.Stored] === this.#index.size, "stored slots miscounted");
    assert(
      counts[SlotState.Clearing]! + counts[SlotState.Deleting]! === this.#clearing,
      "clearing slots miscounted",
    );
    assert(
      counts[SlotState.Retiring]! + counts[SlotState.Dead]! + counts[SlotState.Retired]! ===
        this.#retiring.length + this.#retiredInFlush,
      "retiring slots miscounted",
    );
  }
}

/** What the journal's replay will do, read before the index is loaded. */
interface JournalSummary {
  /** Per ref key: the seq of its last delete. */
  readonly lastDelete: Map<string, number>;
  /** Per ref key, in order: the copies installed (puts, creations) and the deletes. */
  readonly events: Map<string, ReplayEvent[]>;
  /** Per ref key: the sectors its range records rewrite (all of them after a reset). */
  readonly touched: Map<string, { seq: number; first: number; end: number; reset: boolean }[]>;
}

/** A copy installed or a delete, as replay sees it. */
interface ReplayEvent {
  readonly seq: number;
  /** The copy's generation; null for a delete. */
  readonly generation: number | null;
  /** The copy was created as zeros (for range writes). */
  readonly zero: boolean;
}

async function summarizeJournal(journal: Journal, sectorBytes: number): Promise<JournalSummary> {
  const summary: JournalSummary = { lastDelete: new Map(), events: new Map(), touched: new Map() };
  const addEvent = (key: string, event: ReplayEvent) => {
    const list = summary.events.get(key) ?? [];
    list.push(event);
    summary.events.set(key, list);
  };
  for await (const record of journal.replay()) {
    const key = record.ref.key;
    if (record.kind === JournalKind.Delete) {
      summary.lastDelete.set(key, record.seq);
      addEvent(key, { seq: record.seq, generation: null, zero: false });
      continue;
    }
    if (record.kind === JournalKind.Install) {
      const view = new DataView(record.data!.buffer, record.data!.byteOffset, 8);
      const generation = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
      const zero = (record.flags & JournalFlag.Reset) !== 0;
      addEvent(key, { seq: record.seq, generation, zero });
      continue;
    }
    const list = summary.touched.get(key) ?? [];
    list.push({
      seq: record.seq,
      first: Math.floor(record.offsetBytes / sectorBytes),
      end: Math.ceil((record.offsetBytes + record.lengthBytes) / sectorBytes),
      reset: (record.flags & JournalFlag.Reset) !== 0,
    });
    summary.touched.set(key, list);
  }
  return summary;
}

/**
 * Verifies a copy by its sums record: the right generation, and every sector matching, but for
 * the sectors the journal's replay will rewrite for this copy (its records newer than the copy).
 */
function sumsVerifier(files: StoreFiles, sums: SumsFile, summary: JournalSummary) {
  const block = new Uint8Array(files.blockSizeBytes);
  return async (slot: number, index: SlotIndex): Promise<boolean> => {
    const generation = index.generations[slot]!;
    const records = (summary.touched.get(index.refAt(slot).key) ?? [])
      .filter((record) => record.seq > generation);
    if (records.some((record) => record.reset)) return true; // replay rewrites all of it
    const rewritten = new Set<number>();
    for (const record of records) {
      for (let sector = record.first; sector < record.end; sector++) rewritten.add(sector);
    }
    const record = await sums.read(slot);
    if (record.generation !== generation) return false;
    const got = await files.data.read(block, slotOffsetBytes(slot, files.blockSizeBytes));
    if (got !== block.length) return false;
    for (let sector = 0; sector < record.sums.length; sector++) {
      const sum = record.sums[sector]!;
      if (sum === SUM_ZERO || rewritten.has(sector)) continue;
      const bytes = block.subarray(sector * sums.sectorBytes, (sector + 1) * sums.sectorBytes);
      if (!sectorMatches(bytes, sum)) return false;
    }
    return true;
  };
}

/**
 * Gives every stored block of a store made before sums files existed its sums record, from its
 * data (verified by the entry's CRC first; a block that fails it gets unknown sums, so it stays
 * unreadable as it was), and syncs them.
 */
async function writeInitialSums(
  files: StoreFiles,
  sums: SumsFile,
  loaded: LoadedIndex,
): Promise<void> {
  const block = new Uint8Array(files.blockSizeBytes);
  const index = loaded.index;
  for (let slot = 0; slot < loaded.scannedSlots; slot++) {
    if (index.states[slot] !== SlotState.Stored) continue;
    const generation = index.generations[slot]!;
    const got = await files.data.read(block, slotOffsetBytes(slot, files.blockSizeBytes));
    const made = sumsOfBlock(block, sums.sectorBytes, generation);
    const intact = got === block.length && matchesEntryCrc(block, made.sums, index.crcs[slot]!);
    const record = intact ? made : unknownSums(generation, sums.sectors);
    await sums.write(slot, record);
  }
}

/** Which of `count` sectors from `first` the overlay's records cover whole. */
function coveredSectors(
  overlay: readonly PendingRange[],
  first: number,
  count: number,
  sectorBytes: number,
): boolean[] {
  const covered = new Array<boolean>(count).fill(false);
  for (const record of overlay) {
    const from = Math.max(first, record.offsetBytes / sectorBytes);
    const to = Math.min(first + count, (record.offsetBytes + record.lengthBytes) / sectorBytes);
    for (let sector = from; sector < to; sector++) covered[sector - first] = true;
  }
  return covered;
}

/**
 * The first and last of the sectors of `covered` (from sector `first`) that must come from the
 * data file: neither covered by the overlay nor zero. Null when none must.
 */
function sectorsToRead(
  sums: Uint32Array,
  covered: readonly boolean[],
  first: number,
): { low: number; high: number } | null {
  let low = -1;
  let high = -1;
  for (let i = 0; i < covered.length; i++) {
    if (covered[i] || sums[first + i] === SUM_ZERO) continue;
    if (low < 0) low = i;
    high = i;
  }
  return low < 0 ? null : { low, high };
}

/**
 * Fills the zero sectors of `span` (from sector `first`) and verifies the others it read, except
 * those the overlay covers. Returns the index in `span` of the first sector that failed its
 * checksum, or -1.
 */
function verifySpan(
  span: Uint8Array,
  sums: Uint32Array,
  covered: readonly boolean[],
  first: number,
  sectorBytes: number,
): number {
  for (let i = 0; i < covered.length; i++) {
    if (covered[i]) continue;
    const sum = sums[first + i]!;
    const sector = span.subarray(i * sectorBytes, (i + 1) * sectorBytes);
    if (sum === SUM_ZERO) sector.fill(0);
    else if (!sectorMatches(sector, sum)) return i;
  }
  return -1;
}

/** Lays `overlay` (in order) over `span`, which holds the block's bytes from `spanOffset`. */
function applyOverlay(span: Uint8Array, spanOffset: number, overlay: readonly PendingRange[]) {
  for (const record of overlay) {
    if (record.reset) span.fill(0);
    const from = Math.max(spanOffset, record.offsetBytes);
    const to = Math.min(spanOffset + span.length, record.offsetBytes + record.lengthBytes);
    if (from >= to) continue;
    if (record.data === null) {
      span.fill(0, from - spanOffset, to - spanOffset);
    } else {
      const source = record.data.subarray(from - record.offsetBytes, to - record.offsetBytes);
      span.set(source, from - spanOffset);
    }
  }
}

/**
 * The net effect of `ranges` (in order) on a slot: `sums` is updated in place, and the data to
 * write comes back as runs of adjacent sectors (sectors that end up zero need no data).
 */
function finalSectors(
  ranges: readonly PendingRange[],
  sectorBytes: number,
  sums: SumsRecord,
): { runs: { offset: number; bytes: Uint8Array }[]; changed: number[] } {
  const content = new Map<number, Uint8Array | null>();
  for (const range of ranges) {
    if (range.reset) {
      content.clear();
      sums.sums.fill(SUM_ZERO);
    }
    const first = range.offsetBytes / sectorBytes;
    const end = (range.offsetBytes + range.lengthBytes) / sectorBytes;
    for (let sector = first; sector < end; sector++) {
      const at = (sector - first) * sectorBytes;
      content.set(sector, range.data === null ? null : range.data.subarray(at, at + sectorBytes));
    }
  }
  const dataSectors: number[] = [];
  for (const [sector, bytes] of content) {
    const sum = bytes === null ? SUM_ZERO : sectorSum(bytes);
    sums.sums[sector] = sum;
    if (sum !== SUM_ZERO) dataSectors.push(sector);
  }
  dataSectors.sort((a, b) => a - b);
  const runs: { offset: number; bytes: Uint8Array }[] = [];
  for (let i = 0; i < dataSectors.length;) {
    let j = i + 1;
    while (j < dataSectors.length && dataSectors[j] === dataSectors[j - 1]! + 1) j++;
    const sectors = dataSectors.slice(i, j).map((sector) => content.get(sector)!);
    runs.push({ offset: dataSectors[i]! * sectorBytes, bytes: joinedBytes(sectors) });
    i = j;
  }
  return { runs, changed: [...content.keys()].sort((a, b) => a - b) };
}

/** The journal region a new store of `slotCount` slots gets (see `journalRegionBytes`). */
function journalRegionBytesOf(options: FileBlockStoreOptions, slotCount: number): number {
  const wanted = options.journalRegionBytes;
  if (wanted === undefined) {
    return journalRegionBytesFor(slotCount * options.blockSizeBytes, options.blockSizeBytes);
  }
  const least = 8 * recordBytesOf(options.blockSizeBytes);
  if (!Number.isSafeInteger(wanted) || wanted < least) {
    throw invalid(`a journal of ${wanted} bytes is too small: at least ${least}`);
  }
  return Math.ceil(wanted / RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES;
}

/** What a range write asks for besides its bytes. */
interface RangeFlags {
  /** Reset the block to zeros first (`fresh`). */
  reset: boolean;
  /** Refuse an absent ref instead of creating it (`mustExist`; `fresh` wins). */
  mustExist: boolean;
}

function rangeFlags(options: RangeWriteOptions | undefined): RangeFlags {
  return { reset: options?.fresh ?? false, mustExist: options?.mustExist ?? false };
}
