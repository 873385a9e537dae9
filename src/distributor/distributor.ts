/**
 * The distributor: a BlockStore over the cluster. For each ref the ring gives a permutation of
 * peers; the first R are the holders. Changes go to every holder at once and return after the
 * write level's acknowledgements; reads try the holders (this node's own store first when it is
 * one), then the rest of the permutation, by read level, each attempt under a deadline. A copy
 * that fails its checksum is passed over and repaired from a good one.
 *
 * Rules kept here (tested in distributor_test.ts, and the BlockStore contract runs over it):
 * - Changes of one ref are sent to each holder in call order (each peer connection keeps order).
 * - Level `all` returns only when every holder acknowledged; otherwise it fails: with the
 *   holders' common error code when all refused alike, else `outcome_unknown` (some holders may
 *   have the change). There is no silent partial success.
 * - A flush waits for every change still in flight (levels `one`/`local` leave some running),
 *   fails if any of them failed, and flushes every store that took a change since the last one.
 * - A read answers `not_exist` only when every holder said so; a holder that could not answer
 *   makes it `unavailable` (the block may be there).
 * - A repair writes the good copy to the bad holder only while no change of that ref is in
 *   flight, and holds new changes of that ref until it is done, so it never puts back old bytes.
 * @module
 */

import {
  BlockRef,
  type Clock,
  closed,
  crc32,
  ErrorCode,
  errorMessage,
  InFlight,
  isTorusError,
  logger,
  outcomeUnknown,
  TorusError,
  unavailable,
} from "../core/mod.ts";
import type { Ring } from "../ring/mod.ts";
import type { BlockCallOptions, BlockStore, RangeWriteOptions } from "../storage/mod.ts";
import type { ReadLevel, WriteLevel } from "./levels.ts";
import type { PeerDirectory } from "./peer_directory.ts";
import type { PeerStore } from "./protocols/protocol.ts";
import { StaleMarkRecorder, type StaleMarkStore } from "./stale_marks.ts";
import { ReadCache } from "./read_cache.ts";
import { DistributorStats } from "./stats.ts";

const log = logger("distributor");

/** Times a change is placed again after holders said they know a newer ring. */
const RING_RETRIES = 3;

/** Sends a change to one store, stamped with the ring version it was placed by. */
type Send = (store: BlockStore, stamp: { readonly ringVersion: number }) => Promise<void>;

/** Rounds of the `block` read level; the per-peer deadline doubles each round. */
const BLOCK_LEVEL_ROUNDS = 3;

/** What a distributor is built from (all passed in: the composition root picks them). */
export interface DistributorOptions {
  readonly blockSizeBytes: number;
  /** This node's UUID when it is a ring member with a store of its own; null for a client. */
  readonly self: string | null;
  /** This node's store (`self`'s copies). */
  readonly local: BlockStore | null;
  /** The current ring (a watcher keeps it fresh). */
  readonly ring: () => Ring;
  /**
   * Reads the ring again now (a holder refused a change placed by an older ring than it knows);
   * absent: the watcher's ring is all there is.
   */
  readonly refreshRing?: () => Promise<void>;
  readonly peers: PeerDirectory;
  /**
   * Registered nodes that are not ring members (removed ones still draining): reads and pulls
   * try them after the whole permutation, for blocks their rebalancer has not pushed yet.
   */
  readonly outsideRing?: () => readonly string[];
  /**
   * Whether blocks may not yet be where the ring puts them (a ring change not every node has
   * applied). Range writes are then sent with `mustExist` (see #change); otherwise they create
   * an absent block, as in any store. Absent: never.
   */
  readonly moving?: () => boolean;
  /**
   * Nodes that may hold copies the current ring puts elsewhere (they have not finished applying
   * it, or are out of the ring with blocks left). Every change of a ref is sent to those of them
   * that are not its holders too, so a copy they keep (and may hold again under a later ring)
   * never falls behind unnoticed: a range write or whole put there only changes a copy they
   * have (`mustExist`), and one that misses it is marked stale. Absent: none.
   */
  readonly unsettled?: () => readonly string[];
  /**
   * Where marks of holders that missed changes are kept durably (the metadata service), so they
   * outlive this distributor; absent: in memory only (a flush then fails while any are left).
   */
  readonly staleMarks?: StaleMarkStore;
  /**
   * Level `all` with a holder not answering: a change counts once this many holders took it and
   * the others are durably marked stale (needs `staleMarks`). Absent: every holder (R).
   */
  readonly minCopies?: number;
  readonly readLevel: ReadLevel;
  readonly writeLevel: WriteLevel;
  /** Bytes of blocks read from peers kept in memory (0: none). */
  readonly readCacheBytes: number;
  /** Deadline of one attempt at one peer (the first round of `block` reads). */
  readonly peerTimeoutMs: number;
  readonly clock: Clock;
}

/** A copy source: this node's store or a peer's client. */
interface Source {
  readonly uuid: string;
  readonly store: BlockStore;
  readonly local: boolean;
  /** The peer's client (null for this node's own store). */
  readonly peer: PeerStore | null;
}

/** What a peer took since its last flush, and which instance of it took it. */
interface Taken {
  readonly uuid: string;
  readonly peer: PeerStore;
  readonly instance: string | null;
  readonly refs: Map<string, BlockRef>;
  /** More refs than TAKEN_REFS_MAX: which ones a restart lost cannot be told. */
  overflow: boolean;
}

/** The instance #takers records for this node's own store (it restarts with this process). */
const LOCAL_INSTANCE = "local";

/** Refs remembered per peer between flushes (the volume flushes well before). */
const TAKEN_REFS_MAX = 1 << 18;

/** Holders of a ref that missed changes the others took, until they get a whole copy. */
interface Divergence {
  readonly ref: BlockRef;
  readonly stale: Set<string>;
  /**
   * Where a whole good copy comes from: the nodes that took the ref's changes since the last
   * flush, when a restart lost some (see #lostByRestart); absent: the holders not stale.
   */
  sources?: Set<string>;
  /**
   * Every node that took the ref's changes since the last flush restarted (two faults): no copy
   * is known to be current. The resync makes the holders agree with the first of them, in ring
   * order, that has the block, rather than leave them different.
   */
  reconcile?: boolean;
}

/** How often holders that missed changes are tried again. */
const RESYNC_INTERVAL_MS = 1_000;
/** Options of a change whose bytes are the distributor's own copy, which nothing changes. */
const UNCHANGING = { unchangingData: true } as const;
/** How long a resync waits for a stale holder to answer before it leaves it for the next pass. */
const PROBE_TIMEOUT_MS = 1_000;
/** Blocks resynchronised at once. */
const RESYNC_CONCURRENCY = 32;
/**
 * How long a peer that did not answer is passed over: reads try it last and changes are not sent
 * to it (it is then stale for them, and resynchronised once it answers again).
 */
const SUSPECT_MS = 3_000;

/** One failed attempt, for the final error. */
interface Miss {
  readonly uuid: string;
  readonly holder: boolean;
  readonly error: unknown;
  /** It has a copy, one that lacks changes (marked stale): the block is not absent. */
  readonly staleCopy?: boolean;
}

/** A BlockStore over the cluster. */
export class Distributor implements BlockStore {
  readonly kind = "distributor";
  readonly name = "distributor";
  readonly blockSizeBytes: number;
  readonly stats = new DistributorStats();
  readonly #options: DistributorOptions;
  readonly #cache: ReadCache;
  /** Changes of each ref still running at some holder (a repair waits for none). */
  readonly #changesInFlight = new Map<string, number>();
  readonly #repairs = new Map<string, Promise<void>>();
  /** Attempts that outlive their call (levels one/local) and repairs: flush and close wait. */
  readonly #background = new Set<Promise<unknown>>();
  /** Per ref: holders that lack changes other holders took (they could not be reached). */
  readonly #divergent = new Map<string, Divergence>();
  #resyncing: Promise<void> | null = null;
  readonly #stopResync = new AbortController();
  /** Peers that did not answer lately, until when (see SUSPECT_MS). */
  readonly #suspects = new Map<string, number>();
  /** Changes that levels one/local acknowledged and could not place by a newer ring. */
  #lostChanges: string[] = [];
  #ringRefresh: Promise<void> | null = null;
  /**
   * Per ref changed since the last successful flush: the nodes that took its changes, and the
   * instance of each that did (see #lostByRestart). Past TAKEN_REFS_MAX refs: overflow.
   */
  readonly #takers = new Map<string, Map<string, string | null>>();
  #takersOverflow = false;
  /** Volumes another writer took from this one (a node refused its token). */
  readonly #lostVolumes = new Set<number>();
  /** Per volume this process took over (fenceVolume): its lock's fencing token. */
  readonly #fenceTokens = new Map<number, number>();
  /** `volume node` of nodes a writer could not fence (see fenceVolume), with its token. */
  readonly #pendingWhole = new Map<
    string,
    { volumeId: number; uuid: string; token: number; resync: boolean }
  >();
  /** Records marks durably (null without `staleMarks`). */
  readonly #marks: StaleMarkRecorder | null;
  /** Per peer store: what it took since its last flush (see #lostByRestart). */
  readonly #takenSinceFlush = new Map<BlockStore, Taken>();
  /** Why the next flush must fail: a peer lost changes that cannot be told apart. */
  #unknownLoss: string | null = null;
  /** Stores that took a change since the last flush. */
  readonly #unflushed = new Set<BlockStore>();
  readonly #calls = new InFlight();
  #closing: Promise<void> | null = null;

  constructor(options: DistributorOptions) {
    this.#options = options;
    this.blockSizeBytes = options.blockSizeBytes;
    this.#cache = new ReadCache(options.readCacheBytes, options.blockSizeBytes);
    this.#marks = options.staleMarks ? new StaleMarkRecorder(options.staleMarks) : null;
  }

  // ---- reads ---------------------------------------------------------------------------------

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    return this.#guard(async () => {
      this.stats.blockRequests++;
      const cached = this.#cache.get(ref.key);
      if (cached !== null && matchesCrc(cached, options?.expectedCrc32)) {
        this.stats.cachedBlocks++;
        return cached;
      }
      const { value, source, corrupt } = await this.#read(
        ref,
        options,
        (store, timeoutMs) => store.getBlock(ref, { ...options, timeoutMs }),
      );
      if (!source.local) this.#cache.put(ref.key, value);
      if (corrupt.length > 0) this.#repair(ref, corrupt, value);
      return value;
    });
  }

  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.#guard(async () => {
      this.stats.blockRequests++;
      const cached = this.#cache.peek(ref.key);
      if (cached !== null && offsetBytes >= 0 && offsetBytes + into.length <= cached.length) {
        this.stats.cachedBlocks++;
        into.set(cached.subarray(offsetBytes, offsetBytes + into.length));
        return;
      }
      const { corrupt } = await this.#read(
        ref,
        options,
        (store, timeoutMs) => store.readAt(ref, offsetBytes, into, { ...options, timeoutMs }),
      );
      if (corrupt.length > 0) this.#repair(ref, corrupt, null);
    });
  }

  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.#guard(async () => {
      let unanswered: Miss | null = null;
      for (const source of this.#readOrder(ref)) {
        try {
          if (
            await source.store.hasBlock(ref, { ...options, timeoutMs: this.#options.peerTimeoutMs })
          ) {
            return true;
          }
        } catch (error) {
          if (isFatal(error)) throw error;
          unanswered ??= { uuid: source.uuid, holder: true, error };
        }
      }
      if (unanswered !== null) {
        throw unavailable(
          `cannot tell whether ${ref} exists: ${unanswered.uuid}: ${
            errorMessage(unanswered.error)
          }`,
        );
      }
      return false;
    });
  }

  /**
   * Reads through `attempt` from the first source that has a good copy, by read level. Holders
   * that answered `block_unavailable` while another source had the block come back in `corrupt`.
   */
  async #read<T>(
    ref: BlockRef,
    options: BlockCallOptions | undefined,
    attempt: (store: BlockStore, timeoutMs: number) => Promise<T>,
  ): Promise<{ value: T; source: Source; corrupt: string[] }> {
    const order = this.#readOrder(ref);
    // Holders that missed changes are no source, and their silence decides nothing.
    const holders = new Set(this.#holders(ref).filter((uuid) => !this.#isStaleAt(ref, uuid)));
    const misses: Miss[] = [];
    // Address lookups started by peers that could not be reached (see PeerDirectory).
    const lookups: Promise<void>[] = [];
    const tryOne = async (source: Source, timeoutMs: number) => {
      options?.signal?.throwIfAborted();
      try {
        const value = await attempt(source.store, timeoutMs);
        this.#noteAnswer(source, null);
        // A peer that restarted since it took changes of this ref may have lost them: its answer
        // is not taken, and it is stale for the ref until resynchronised.
        if (this.#restartedSinceTaking(source, ref) || this.#isStaleAt(ref, source.uuid)) {
          misses.push({
            uuid: source.uuid,
            holder: false,
            error: unavailable("has a copy that lacks changes"),
            staleCopy: true,
          });
          return null;
        }
        return { value, source };
      } catch (error) {
        if (isFatal(error)) throw error;
        misses.push({ uuid: source.uuid, holder: holders.has(source.uuid), error });
        this.#countMiss(source, error, lookups);
        return null;
      }
    };
    const found = await this.#readByLevel(ref, order, holders, tryOne, lookups);
    if (found === null) {
      // While blocks move, holders without the block decide nothing when a node that may keep
      // it (a holder marked stale, a node off the holders) could not say: the block may be there.
      const uncertain = this.#moving() &&
        (holders.size < this.#holders(ref).length ||
          misses.some((m) => !m.holder && !isTorusError(m.error, ErrorCode.NotExist)));
      throw this.#readFailure(ref, misses, holders, uncertain);
    }
    const corrupt = misses.filter((m) =>
      m.holder && isTorusError(m.error, ErrorCode.BlockUnavailable)
    )
      .map((m) => m.uuid);
    return { ...found, corrupt };
  }

  async #readByLevel<T>(
    ref: BlockRef,
    order: readonly Source[],
    holders: ReadonlySet<string>,
    tryOne: (source: Source, timeoutMs: number) => Promise<{ value: T; source: Source } | null>,
    lookups: Promise<void>[],
  ): Promise<{ value: T; source: Source } | null> {
    const timeoutMs = this.#options.peerTimeoutMs;
    if (this.#options.readLevel === "spread") {
      const first = order.filter((s) => holders.has(s.uuid));
      const rest = order.filter((s) => !holders.has(s.uuid));
      const found = await firstFound(first.map((s) => tryOne(s, timeoutMs)));
      return found ?? await this.#sequential(rest, timeoutMs, tryOne);
    }
    const rounds = this.#options.readLevel === "block" ? BLOCK_LEVEL_ROUNDS : 1;
    let left = order;
    for (let round = 0; round < rounds && left.length > 0; round++) {
      const retry: Source[] = [];
      const found = await this.#sequential(left, timeoutMs * 2 ** round, tryOne, retry);
      if (found !== null) return found;
      // Only peers that did not answer get another round, at the addresses looked up meanwhile
      // (a peer that came back elsewhere); a definite answer stands.
      await Promise.all(lookups.splice(0));
      const uuids = new Set(retry.map((s) => s.uuid));
      left = this.#readOrder(ref).filter((s) => uuids.has(s.uuid));
    }
    return null;
  }

  async #sequential<T>(
    sources: readonly Source[],
    timeoutMs: number,
    tryOne: (source: Source, timeoutMs: number) => Promise<{ value: T; source: Source } | null>,
    unanswered?: Source[],
  ): Promise<{ value: T; source: Source } | null> {
    for (const source of sources) {
      const found = await tryOne(source, timeoutMs);
      if (found !== null) {
        if (source.local) this.stats.localBlocks++;
        else {this.stats.peerBlocks.set(
            source.uuid,
            (this.stats.peerBlocks.get(source.uuid) ?? 0) + 1,
          );}
        return found;
      }
      unanswered?.push(source);
    }
    return null;
  }

  #countMiss(source: Source, error: unknown, lookups: Promise<void>[]): void {
    this.#noteAnswer(source, error);
    if (!source.local && isTorusError(error, ErrorCode.Unavailable)) {
      lookups.push(this.#options.peers.unreachable(source.uuid));
    }
    if (source.local) {
      this.stats.localBlockFails++;
    } else {
      const fails = this.stats.peerBlockFails;
      fails.set(source.uuid, (fails.get(source.uuid) ?? 0) + 1);
    }
  }

  /** The error of a read no source could serve (see the module doc for the rules). */
  #readFailure(
    ref: BlockRef,
    misses: readonly Miss[],
    holders: ReadonlySet<string>,
    uncertain: boolean,
  ): TorusError {
    this.stats.requestFailures++;
    const fromHolders = misses.filter((m) => m.holder);
    const answered = new Set(fromHolders.map((m) => m.uuid));
    const detail = misses.map((m) => `${m.uuid}: ${errorMessage(m.error)}`).join("; ");
    if (holders.size === 0) {
      // `holders` are the ones not marked stale: the ring may have members, all of them marked.
      const why = this.#holders(ref).length === 0
        ? "the ring is empty"
        : "every holder lacks changes of it and none could be brought up to date yet";
      return unavailable(`no peer can serve ${ref}: ${why}${detail ? ` (${detail})` : ""}`);
    }
    const everyHolderAnswered = [...holders].every((uuid) => answered.has(uuid));
    const codes = new Set(fromHolders.map((m) => isTorusError(m.error) ? m.error.code : "other"));
    // Holders without the block while a marked node has a copy: the block moved (a ring change)
    // and its newer copies are not here yet, or were lost; not absent either way.
    const staleCopy = misses.some((m) => m.staleCopy) || uncertain;
    if (everyHolderAnswered && codes.size === 1 && codes.has(ErrorCode.NotExist) && !staleCopy) {
      return new TorusError(ErrorCode.NotExist, `${ref} is not stored (${detail})`);
    }
    if (everyHolderAnswered && codes.size === 1 && codes.has(ErrorCode.Invalid)) {
      return new TorusError(ErrorCode.Invalid, errorMessage(fromHolders[0]!.error));
    }
    if (
      codes.has(ErrorCode.BlockUnavailable) &&
      [...codes].every((c) => c === ErrorCode.BlockUnavailable || c === ErrorCode.NotExist)
    ) {
      return new TorusError(ErrorCode.BlockUnavailable, `no good copy of ${ref}: ${detail}`);
    }
    return unavailable(`no peer could serve ${ref}: ${detail || "no peer reachable"}`);
  }

  // ---- changes --------------------------------------------------------------------------------

  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    // A copy now: attempts outlive this call at levels one/local, the caller's buffer may change.
    // Nothing changes the copy, so the holders' peer stores send it as it is, not a copy each.
    const copy = data.slice();
    return this.#change(
      ref,
      options,
      (store, stamp) => store.putBlock(ref, copy, { ...options, ...stamp, ...UNCHANGING }),
      {
        replacesWhole: true,
        extraReplacesWhole: true,
        // A node that merely may keep a copy: the whole block over the copy it has, if any.
        toExtra: (store, stamp) =>
          store.writeAt(ref, 0, copy, { ...options, mustExist: true, ...stamp, ...UNCHANGING }),
      },
    );
  }

  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    // As in putBlock: one copy, sent as it is to every holder.
    const copy = data.slice();
    const sent = this.#rangeOptions(options);
    return this.#change(
      ref,
      options,
      (store, stamp) => store.writeAt(ref, offsetBytes, copy, { ...sent, ...stamp, ...UNCHANGING }),
      {
        creating: (store, stamp) =>
          store.writeAt(ref, offsetBytes, copy, { ...options, ...stamp, ...UNCHANGING }),
        extraReplacesWhole: options?.fresh ?? false,
        toExtra: (store, stamp) =>
          options?.fresh
            ? extraDelete(store, ref, options, stamp)
            : store.writeAt(ref, offsetBytes, copy, {
              ...options,
              mustExist: true,
              ...stamp,
              ...UNCHANGING,
            }),
      },
    );
  }

  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    const sent = this.#rangeOptions(options);
    return this.#change(
      ref,
      options,
      (store, stamp) => store.zeroAt(ref, offsetBytes, lengthBytes, { ...sent, ...stamp }),
      {
        creating: (store, stamp) =>
          store.zeroAt(ref, offsetBytes, lengthBytes, { ...options, ...stamp }),
        extraReplacesWhole: options?.fresh ?? false,
        toExtra: (store, stamp) =>
          options?.fresh
            ? extraDelete(store, ref, options, stamp)
            : store.zeroAt(ref, offsetBytes, lengthBytes, {
              ...options,
              mustExist: true,
              ...stamp,
            }),
      },
    );
  }

  /**
   * The options a range write is sent to holders with: while blocks move (a ring change), one
   * that is not `fresh` must not make a block of zeros at a holder the block has not reached.
   */
  #rangeOptions(options: RangeWriteOptions | undefined): RangeWriteOptions | undefined {
    if (options?.fresh || !this.#moving()) return options;
    return { ...options, mustExist: true };
  }

  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.#change(
      ref,
      options,
      (store, stamp) => store.deleteBlock(ref, { ...options, ...stamp }),
      {
        tolerateMissing: true,
        replacesWhole: true,
        extraReplacesWhole: true,
        toExtra: (store, stamp) => extraDelete(store, ref, options, stamp),
      },
    );
  }

  /**
   * Sends a change to every holder and waits for the write level's acknowledgements. For a
   * delete (`tolerateMissing`), a holder without the ref counts as done, unless all lack it. A
   * range write (sent with `mustExist` unless `fresh`, see ChangeKind.creating) that a holder
   * refuses for lack of the block (a new holder after a ring change, before the rebalancer
   * reached it) gets the whole block there first (see #fillMissing, #pullToHolders).
   */
  #change(
    ref: BlockRef,
    options: BlockCallOptions | undefined,
    send: Send,
    kind: ChangeKind = {},
  ): Promise<void> {
    return this.#guard(async () => {
      options?.signal?.throwIfAborted();
      try {
        await this.#changeByNewestRing(ref, send, kind);
      } catch (error) {
        if (kind.creating === undefined || !isTorusError(error, ErrorCode.NotExist)) throw error;
        // Every holder lacks the block: it is still where an earlier ring placed it, and comes
        // from there first; when no node has it, the write creates it, as in any store.
        const pulled = await this.#pullByNewestRing(ref);
        await this.#changeByNewestRing(ref, pulled ? send : kind.creating, kind);
      }
    });
  }

  /**
   * A change placed by this distributor's ring; a holder that knows a newer ring refuses it
   * (`compare_failed`, FencedStore), and the change is placed again by the ring read anew.
   */
  async #changeByNewestRing(ref: BlockRef, send: Send, kind: ChangeKind): Promise<void> {
    for (let attempt = 1;; attempt++) {
      const version = this.#options.ring().version;
      try {
        return await this.#changeOnce(ref, send, kind);
      } catch (error) {
        if (!isTorusError(error, ErrorCode.CompareFailed) || attempt >= RING_RETRIES) throw error;
        await this.#newerRing(version);
      }
    }
  }

  /** Reads the ring again (once for all callers at a time) when it is still `version`. */
  async #newerRing(version: number): Promise<void> {
    if (this.#options.ring().version !== version) return;
    this.#ringRefresh ??= (this.#options.refreshRing?.() ?? Promise.resolve()).finally(() => {
      this.#ringRefresh = null;
    });
    await this.#ringRefresh.catch((error) => {
      log.warn(`reading the ring again failed: ${errorMessage(error)}`);
    });
  }

  async #changeOnce(ref: BlockRef, send: Send, kind: ChangeKind): Promise<void> {
    this.#cache.drop(ref.key);
    // A repair of this ref is writing its good copy: changes wait, in call order.
    for (let repair = this.#repairs.get(ref.key); repair !== undefined;) {
      await repair;
      repair = this.#repairs.get(ref.key);
    }
    this.#cache.drop(ref.key);
    const ring = this.#options.ring();
    const holders = ring.memberUuids().length === 0 ? [] : ring.getHolders(ref);
    if (holders.length === 0) throw unavailable(`no peer can hold ${ref}: the ring is empty`);
    const stamp = { ringVersion: ring.version };
    const attempts = holders.map((uuid) => this.#sendTo(uuid, ref, (store) => send(store, stamp)));
    const toExtra = kind.toExtra;
    const extras = toExtra === undefined ? [] : this.#extras(holders);
    const extraAttempts = extras.map((uuid) =>
      this.#sendTo(uuid, ref, (store) => toExtra!(store, stamp))
    );
    const placement: Placement = { holders, attempts, extras, extraAttempts };
    const settled = this.#trackChange(ref, placement, kind, send);
    await this.#acknowledged(ref, placement, kind, settled);
  }

  /**
   * What this distributor's own copies (pulls, resyncs, repairs) carry: the ring version they
   * were placed by, and the fencing token of the ref's volume when this process took it over
   * (fenceVolume): a stale writer's resync must not put an old copy over the new writer's data.
   */
  #internalStamp(
    ref: BlockRef,
    ring: Ring = this.#options.ring(),
  ): { ringVersion: number; fenceToken?: number } {
    const token = this.#fenceTokens.get(ref.volume);
    return token === undefined
      ? { ringVersion: ring.version }
      : { ringVersion: ring.version, fenceToken: token };
  }

  /** Whether blocks may not yet be where the ring puts them (DistributorOptions.moving). */
  #moving(): boolean {
    return this.#options.moving?.() ?? false;
  }

  /** The nodes besides `holders` that may keep a copy (see DistributorOptions.unsettled). */
  #extras(holders: readonly string[]): readonly string[] {
    const unsettled = this.#options.unsettled?.() ?? [];
    return unsettled.length === 0 ? [] : unsettled.filter((uuid) => !holders.includes(uuid));
  }

  /** One holder's attempt; resolves to null or the error (never rejects). */
  #sendTo(
    uuid: string,
    ref: BlockRef,
    send: (store: BlockStore) => Promise<void>,
  ): Promise<unknown> {
    const source = this.#sourceOf(uuid);
    if (source === null) return Promise.resolve(unavailable(`no address known for peer ${uuid}`));
    // A peer that did not answer lately is not waited for again: it misses this change and is
    // resynchronised once it answers.
    if (!source.local && this.#isSuspect(uuid)) {
      return Promise.resolve(unavailable(`peer ${uuid} did not answer lately`));
    }
    // Only a store that took the change needs the next flush; one that refused it or could not be
    // reached is stale for the ref (see #noteMissed).
    return send(source.store).then(() => {
      this.#noteAnswer(source, null);
      this.#unflushed.add(source.store);
      this.#noteTaken(source, ref);
      return null;
    }, (error: unknown) => {
      this.#noteAnswer(source, error);
      if (!source.local && isTorusError(error, ErrorCode.Unavailable)) {
        void this.#options.peers.unreachable(uuid);
      }
      if (isTorusError(error, ErrorCode.OutcomeUnknown)) this.#unflushed.add(source.store);
      if (!isTorusError(error, ErrorCode.NotExist)) {
        log.debug(`a change of ${ref} at ${uuid} failed: ${errorMessage(error)}`);
      }
      return error ?? new Error("change failed");
    });
  }

  /**
   * Counts the ref's changes in flight until every attempt settled (repairs wait for zero), and
   * then notes the holders that missed it.
   */
  #trackChange(
    ref: BlockRef,
    placement: Placement,
    kind: ChangeKind,
    send: Send,
  ): Promise<void> {
    const key = ref.key;
    const version = this.#options.ring().version;
    const { holders, extras } = placement;
    this.#changesInFlight.set(key, (this.#changesInFlight.get(key) ?? 0) + 1);
    const settled = Promise.all([
      Promise.all(placement.attempts),
      Promise.all(placement.extraAttempts),
    ]).then(([holderResults, extraResults]) => {
      const results = holderResults;
      if (kind.replacesWhole) {
        this.#freshAgain(ref, holders, results);
        // The holders that took it have the whole ref now: good copies come from them again.
        const entry = this.#divergent.get(ref.key);
        if (entry !== undefined && results.some((r) => r === null)) {
          delete entry.sources;
          entry.reconcile = false;
        }
      }
      // An extra without a copy lacks nothing; one that took a whole replacement is current.
      const extraCurrent = extraResults.map((r) =>
        isTorusError(r, ErrorCode.NotExist) || r === null && kind.extraReplacesWhole ? null : r ?? 0
      );
      this.#freshAgain(ref, extras, extraCurrent);
      if ([...results, ...extraResults].some((r) => isTorusError(r, ErrorCode.Locked))) {
        // A node refused this writer's token: another writer took the volume. What this one
        // saw of it decides nothing any more (marks it recorded now would mislead the new one).
        this.#lostVolume(ref.volume);
      } else {
        this.#noteMissed(ref, holders, results, kind.tolerateMissing ?? false);
        this.#noteMissedExtras(ref, results, extras, extraResults);
      }
      const left = (this.#changesInFlight.get(key) ?? 1) - 1;
      if (left === 0) this.#changesInFlight.delete(key);
      else this.#changesInFlight.set(key, left);
      // Levels one/local returned at a first acknowledgement: a holder that refused the ring
      // the change was placed by gets it placed again here, by the newer ring.
      const refusedRing = [...results, ...extraResults].some((r) =>
        isTorusError(r, ErrorCode.CompareFailed)
      );
      if (refusedRing && this.#options.writeLevel !== "all" && results.some((r) => r === null)) {
        this.#keepInBackground(this.#placeAgain(ref, send, kind, version));
      }
    });
    this.#keepInBackground(settled);
    return settled;
  }

  /** A change some holders took under an older ring, sent again by the newest one. */
  async #placeAgain(ref: BlockRef, send: Send, kind: ChangeKind, version: number): Promise<void> {
    try {
      await this.#newerRing(version);
      await this.#changeByNewestRing(ref, send, kind);
    } catch (error) {
      this.#lostChanges.push(`${ref}: ${errorMessage(error)}`);
    }
  }

  /** Waits for the acknowledgements the write level asks for; throws the change's failure. */
  async #acknowledged(
    ref: BlockRef,
    placement: Placement,
    kind: ChangeKind,
    settled: Promise<void>,
  ): Promise<void> {
    const { holders, attempts } = placement;
    const level = this.#options.writeLevel;
    const tolerateMissing = kind.tolerateMissing ?? false;
    const selfIndex = this.#options.self === null ? -1 : holders.indexOf(this.#options.self);
    if (level === "all") {
      let results: readonly unknown[] = await Promise.all(attempts);
      const extraResults = await Promise.all(placement.extraAttempts);
      const refusedRing = [...results, ...extraResults].find((r) =>
        isTorusError(r, ErrorCode.CompareFailed)
      );
      if (refusedRing !== undefined) throw refusedRing;
      if (kind.creating) results = await this.#fillMissing(ref, holders, results, settled);
      if (!await this.#enoughWithMarks(ref, holders, results, tolerateMissing, settled)) {
        this.#throwUnlessDone(ref, holders, results, tolerateMissing);
      }
      await this.#extrasMarked(ref, placement.extras, extraResults, settled);
      return;
    }
    // one / local: the first acknowledgement (this node's own for `local`) returns; the others
    // run on, and a holder that misses the change is resynchronised before a flush succeeds.
    const waitFor = level === "local" && selfIndex >= 0 ? [attempts[selfIndex]!] : attempts;
    const first = await firstSuccess(waitFor, tolerateMissing);
    if (first === null) {
      this.#throwUnlessDone(ref, holders, await Promise.all(attempts), tolerateMissing);
    }
  }

  /**
   * Level `all` with `minCopies`: when only silent holders (down, stopped, cut off) missed the
   * change and at least `minCopies` took it, it counts once the missed ones are durably marked
   * stale (they are resynchronised when they answer). False when that does not apply.
   */
  async #enoughWithMarks(
    ref: BlockRef,
    holders: readonly string[],
    results: readonly unknown[],
    tolerateMissing: boolean,
    settled: Promise<void>,
  ): Promise<boolean> {
    if (this.#marks === null || this.#options.minCopies === undefined) return false;
    const took = (r: unknown) =>
      r === null || tolerateMissing && isTorusError(r, ErrorCode.NotExist);
    const missed = holders.filter((_, i) => !took(results[i]));
    if (missed.length === 0) return false;
    const silent = (r: unknown) =>
      isTorusError(r, ErrorCode.Unavailable) || isTorusError(r, ErrorCode.OutcomeUnknown);
    if (!results.every((r) => took(r) || silent(r))) return false;
    if (holders.length - missed.length < this.#minCopies(holders)) return false;
    await settled;
    try {
      await Promise.all(missed.map((uuid) => this.#marks!.record(ref, uuid)));
    } catch (error) {
      throw outcomeUnknown(
        `a change of ${ref} reached ${holders.length - missed.length} of ${holders.length} ` +
          `holders and the others could not be marked as lacking it: ${errorMessage(error)}`,
      );
    }
    this.stats.degradedWrites++;
    return true;
  }

  /**
   * Level `all`, a range write that some holders took and others refused for lack of the block:
   * those are stale for the ref (#noteMissed, once the change `settled`); they get the whole
   * block now, from a holder that took the change, under the repair rule. They count as done
   * once they have it.
   */
  async #fillMissing(
    ref: BlockRef,
    holders: readonly string[],
    results: readonly unknown[],
    settled: Promise<void>,
  ): Promise<readonly unknown[]> {
    const lacking = holders.filter((_, i) => isTorusError(results[i], ErrorCode.NotExist));
    if (lacking.length === 0 || lacking.length === holders.length) return results;
    await settled;
    const entry = this.#divergent.get(ref.key);
    if (entry !== undefined) await this.#resyncOne(entry, new Set(lacking));
    const stale = this.#divergent.get(ref.key)?.stale;
    return results.map((result, i) =>
      isTorusError(result, ErrorCode.NotExist) && !stale?.has(holders[i]!) ? null : result
    );
  }

  /** #pullToHolders, placed again by a newer ring when a holder knows one. */
  async #pullByNewestRing(ref: BlockRef): Promise<boolean> {
    for (let attempt = 1;; attempt++) {
      const version = this.#options.ring().version;
      try {
        return await this.#pullToHolders(ref);
      } catch (error) {
        if (!isTorusError(error, ErrorCode.CompareFailed) || attempt >= RING_RETRIES) throw error;
        await this.#newerRing(version);
      }
    }
  }

  /**
   * Every holder of `ref` lacks it: the block is still where an earlier ring placed it (the rest
   * of the permutation, or a registered node out of the ring). Copies it from there to the
   * holders (`ifAbsent`: a holder the rebalancer reached meanwhile keeps its copy), while the
   * ref's changes wait. False when no node has the block.
   */
  async #pullToHolders(ref: BlockRef): Promise<boolean> {
    for (let running = this.#repairs.get(ref.key); running !== undefined;) {
      await running;
      running = this.#repairs.get(ref.key);
    }
    const pull = (async () => {
      while (this.#changesInFlight.has(ref.key)) await this.#options.clock.sleep(1);
      const holders = this.#holders(ref);
      const elsewhere = this.#readOrder(ref).filter((s) => !holders.includes(s.uuid));
      if (elsewhere.length === 0) return false;
      const copy = await this.#copyFrom(ref, elsewhere.map((s) => s.uuid));
      if (copy === null) return false;
      const options = {
        ifAbsent: true,
        timeoutMs: this.#options.peerTimeoutMs,
        ...this.#internalStamp(ref),
      };
      await Promise.all(holders.map(async (uuid) => {
        const source = this.#sourceOf(uuid);
        if (source === null) throw unavailable(`no address known for peer ${uuid}`);
        await source.store.putBlock(ref, copy, options).catch((error) => {
          if (!isTorusError(error, ErrorCode.Exists)) throw error;
        });
        this.#unflushed.add(source.store);
      }));
      this.stats.pulledBlocks++;
      return true;
    })();
    const gate = pull.then(() => {}, () => {}).finally(() => this.#repairs.delete(ref.key));
    this.#repairs.set(ref.key, gate);
    return await pull;
  }

  /** Throws the combined failure of a change unless every holder did it. */
  #throwUnlessDone(
    ref: BlockRef,
    holders: readonly string[],
    results: readonly unknown[],
    tolerateMissing: boolean,
  ): void {
    // A holder knows a newer ring: the change is placed again by it (#changeByNewestRing).
    const refusedRing = results.find((r) => isTorusError(r, ErrorCode.CompareFailed));
    if (refusedRing !== undefined) throw refusedRing;
    const missing = results.filter((r) => isTorusError(r, ErrorCode.NotExist)).length;
    if (tolerateMissing && missing > 0 && missing < results.length) {
      results = results.map((r) => isTorusError(r, ErrorCode.NotExist) ? null : r);
    }
    const failures = results.map((error, i) => ({ error, uuid: holders[i]! })).filter((f) =>
      f.error !== null
    );
    if (failures.length === 0) return;
    const detail = failures.map((f) => `${f.uuid}: ${errorMessage(f.error)}`).join("; ");
    const codes = new Set(failures.map((f) => isTorusError(f.error) ? f.error.code : "other"));
    const [only] = codes;
    // All holders refused alike (nothing changed anywhere): that is the answer.
    if (
      failures.length === results.length && codes.size === 1 && only !== "other" && definite(only!)
    ) {
      throw new TorusError(only as ErrorCode, `${ref}: ${detail}`);
    }
    throw outcomeUnknown(
      `a change of ${ref} reached ${
        results.length - failures.length
      } of ${results.length} holders: ${detail}`,
    );
  }

  // ---- holders that missed changes ------------------------------------------------------------

  /** Refs some holder still lacks changes of. */
  staleBlocks(): number {
    return this.#divergent.size;
  }

  /**
   * After a change settled everywhere: holders that failed it while another holder took it are
   * stale for this ref. Reads pass them over and a flush fails until they have a whole copy
   * again (see #resync). When no holder took it, nothing diverged that can be told apart.
   */
  /**
   * A whole-block put (or a delete) replaces everything a holder had: one that took it has every
   * change of the ref again, whatever it missed before, and is stale for it no more.
   */
  #freshAgain(ref: BlockRef, holders: readonly string[], results: readonly unknown[]): void {
    const entry = this.#divergent.get(ref.key);
    if (entry === undefined) return;
    holders.forEach((uuid, i) => {
      if (results[i] !== null || !entry.stale.delete(uuid)) return;
      this.#marks?.release(ref, uuid);
    });
    if (entry.stale.size === 0) this.#divergent.delete(ref.key);
  }

  #noteMissed(
    ref: BlockRef,
    holders: readonly string[],
    results: readonly unknown[],
    tolerateMissing: boolean,
  ): void {
    const took = (r: unknown) =>
      r === null || tolerateMissing && isTorusError(r, ErrorCode.NotExist);
    // A holder that refused the ring the change was placed by gets it again by the newer ring.
    const missed = holders.filter((_, i) =>
      !took(results[i]) && !isTorusError(results[i], ErrorCode.CompareFailed)
    );
    if (missed.length === 0 || missed.length === holders.length) return;
    const entry = this.#divergent.get(ref.key) ?? { ref, stale: new Set<string>() };
    for (const uuid of missed) entry.stale.add(uuid);
    if (entry.stale.size >= holders.length) {
      log.error(`every holder of ${ref} missed a change: its copies may differ`);
    }
    this.#divergent.set(ref.key, entry);
    for (const uuid of missed) this.#recordMark(ref, uuid);
    // A holder that lacks the whole block is a new one (the ring changed): routine, not a fault.
    const lacked = holders.every((_, i) =>
      took(results[i]) || isTorusError(results[i], ErrorCode.NotExist)
    );
    (lacked ? log.debug : log.warn)(
      `${[...missed].join(", ")} missed a change of ${ref}; resynchronising when reachable`,
    );
    this.#startResync();
  }

  /** Records durably that `uuid` lacks changes of `ref` (a failure is retried at the flush). */
  #recordMark(ref: BlockRef, uuid: string): void {
    if (this.#marks === null || this.#lostVolumes.has(ref.volume)) return;
    this.#keepInBackground(
      this.#marks.record(ref, uuid).catch((error) => {
        log.warn(`recording that ${uuid} lacks ${ref} failed: ${errorMessage(error)}`);
      }),
    );
  }

  /**
   * After a change some holder took: extras (see `unsettled`) that could not be told it (neither
   * took it nor answered that they have no copy) may keep an older copy. They are stale for the
   * ref, marked durably like holders, and the resync deletes their copy (or writes them a whole
   * one if they are holders again by then).
   */
  #noteMissedExtras(
    ref: BlockRef,
    results: readonly unknown[],
    extras: readonly string[],
    extraResults: readonly unknown[],
  ): void {
    if (extras.length === 0) return;
    if (!results.some((r) => r === null)) {
      // Every holder lacks the block: it is still where an earlier ring put them, at these
      // extras, and is pulled from them (#pullToHolders).
      if (results.every((r) => isTorusError(r, ErrorCode.NotExist))) return;
      // No holder took it, some extras did: their copies are ahead of the holders', which stand.
      const ahead = extras.filter((_, i) => extraResults[i] === null);
      if (ahead.length > 0) this.#markStale(ref, ahead);
      return;
    }
    const missed = extras.filter((_, i) => extraMissed(extraResults[i]));
    if (missed.length === 0) return;
    this.#markStale(ref, missed);
    log.debug(`${missed.join(", ")} may keep an older copy of ${ref} than its holders`);
  }

  /** Level `all`: the extras that missed the change are durably marked before it counts. */
  async #extrasMarked(
    ref: BlockRef,
    extras: readonly string[],
    extraResults: readonly unknown[],
    settled: Promise<void>,
  ): Promise<void> {
    const missed = extras.filter((_, i) => extraMissed(extraResults[i]));
    if (missed.length === 0 || this.#marks === null) return;
    await settled;
    try {
      await Promise.all(missed.map((uuid) => this.#marks!.record(ref, uuid)));
    } catch (error) {
      throw outcomeUnknown(
        `${ref} changed at its holders, and ${missed.join(", ")}, which may keep an older ` +
          `copy, could not be marked as lacking the change: ${errorMessage(error)}`,
      );
    }
  }

  /**
   * Another writer took volume `volumeId` (a node refused this one's token): its divergences
   * are dropped here, unresolved and unreleased (the new writer adopts the durable marks), and
   * no mark is recorded for it any more.
   */
  #lostVolume(volumeId: number): void {
    if (this.#lostVolumes.has(volumeId)) return;
    this.#lostVolumes.add(volumeId);
    log.warn(`volume ${volumeId} was taken over by another writer`);
    for (const [key, entry] of this.#divergent) {
      if (entry.ref.volume === volumeId) this.#divergent.delete(key);
    }
    for (const [key, pending] of this.#pendingWhole) {
      if (pending.volumeId === volumeId) this.#pendingWhole.delete(key);
    }
  }

  /** Adds `uuids` to the stale nodes of `ref`, records the marks and starts a resync. */
  #markStale(ref: BlockRef, uuids: readonly string[]): void {
    if (this.#lostVolumes.has(ref.volume)) return;
    const entry = this.#divergent.get(ref.key) ?? { ref, stale: new Set<string>() };
    for (const uuid of uuids) entry.stale.add(uuid);
    this.#divergent.set(ref.key, entry);
    for (const uuid of uuids) this.#recordMark(ref, uuid);
    this.#startResync();
  }

  /** How many holders must have a change for it to count (`minCopies`, else all of them). */
  #minCopies(holders: readonly string[]): number {
    const min = this.#options.minCopies;
    if (this.#marks === null || min === undefined) return holders.length;
    if (min === 0) return holders.length - Math.floor(holders.length / 2);
    return Math.min(min, holders.length);
  }

  /**
   * Divergences a flush cannot accept: not durably marked (the mark could not be recorded, or
   * there is no durable store), or with fewer fresh holders than `minCopies`.
   */
  async #unsafeDivergences(): Promise<Divergence[]> {
    const unsafe: Divergence[] = [];
    for (const entry of this.#divergent.values()) {
      const holders = this.#holders(entry.ref);
      const fresh = holders.filter((uuid) => !this.#isStaleAt(entry.ref, uuid));
      if (this.#marks === null || fresh.length < this.#minCopies(holders)) {
        unsafe.push(entry);
        continue;
      }
      try {
        await Promise.all([...entry.stale].map((uuid) => this.#marks!.record(entry.ref, uuid)));
      } catch {
        unsafe.push(entry);
      }
    }
    return unsafe;
  }

  /**
   * Takes over the durable marks of volume `volumeId` (its writer opens it: the marks of an
   * earlier writer that stopped are now this one's to resynchronise). A node marked for the whole
   * volume is listed for the volume's blocks it holds.
   */
  async adoptStaleMarks(volumeId: number): Promise<void> {
    const marks = this.#marks;
    if (marks === null) return;
    for (const record of await marks.store.list(volumeId)) {
      let refs = record.refs;
      if (record.wholeVolume) {
        const listed = await this.#refsAt(record.node, volumeId);
        if (listed === null) continue; // not reachable now: reads keep passing it over
        refs = listed;
        marks.adoptWhole(volumeId, record.node, refs);
      }
      this.#adoptRefs(record.node, refs);
      log.info(
        `volume ${volumeId}: ${record.node} lacks changes of ${refs.length} block(s) ` +
          `(marked by an earlier writer); resynchronising`,
      );
    }
    if (this.#divergent.size > 0) this.#startResync();
  }

  /**
   * What a volume's new writer does once it holds the lock (fencing token `token`), before it
   * reads or writes: fences the volume everywhere, then adopts the marks earlier writers left.
   */
  async takeOver(volumeId: number, token: bigint): Promise<void> {
    await this.fenceVolume(volumeId, Number(token));
    await this.adoptStaleMarks(volumeId);
  }

  /**
   * Marks of the volumes this process took over that it did not record (an earlier writer that
   * resumed recorded them, or another node): adopted from the watched records (no I/O), so the
   * resync gives those nodes whole copies instead of leaving them passed over for good.
   */
  #adoptWatchedMarks(): void {
    const marks = this.#marks;
    const watched = marks?.store.watched;
    if (marks === null || watched === undefined) return;
    for (const [volumeId, token] of this.#fenceTokens) {
      for (const record of watched.call(marks.store, volumeId)) {
        const key = `${volumeId} ${record.node}`;
        if (record.wholeVolume) {
          if (!this.#pendingWhole.has(key) && !marks.adoptingWhole(volumeId, record.node)) {
            this.#pendingWhole.set(key, { volumeId, uuid: record.node, token, resync: true });
          }
          continue;
        }
        const unknown = record.refs.filter((ref) =>
          !(this.#divergent.get(ref.key)?.stale.has(record.node) ?? false)
        );
        if (unknown.length > 0) this.#adoptRefs(record.node, unknown);
      }
    }
    if (this.#divergent.size > 0 || this.#pendingWhole.size > 0) this.#startResync();
  }

  /** Makes `node` stale here for `refs`, whose durable marks exist already. */
  #adoptRefs(node: string, refs: readonly BlockRef[]): void {
    for (const ref of refs) {
      const entry = this.#divergent.get(ref.key) ?? { ref, stale: new Set<string>() };
      entry.stale.add(node);
      this.#divergent.set(ref.key, entry);
      this.#marks?.adopt(ref, node);
    }
  }

  /**
   * Fences volume `volumeId` for the writer whose lock has fencing token `token`, at every node
   * that may hold its blocks (ring members, and nodes out of the ring or unsettled): each records
   * the token durably, so an earlier writer (its lease expired while it was stopped) cannot change
   * a block there, even one this writer never writes (ADR 0005 §7). A node that cannot be reached
   * now is fenced by the resync loop as soon as it answers (and by this writer's first change
   * there); until then an earlier writer that reaches it could still change it (ADR 0005 §7 says
   * why it is not marked for the whole volume). `locked` when a node knows a newer writer.
   */
  async fenceVolume(volumeId: number, token: number): Promise<void> {
    this.#lostVolumes.delete(volumeId);
    this.#fenceTokens.set(volumeId, Math.max(token, this.#fenceTokens.get(volumeId) ?? 0));
    const nodes = [
      ...new Set([
        ...this.#members(),
        ...(this.#options.outsideRing?.() ?? []),
        ...(this.#options.unsettled?.() ?? []),
      ]),
    ];
    const results = await Promise.all(nodes.map((uuid) => this.#fenceAt(uuid, volumeId, token)));
    const newer = results.find((r) => isTorusError(r, ErrorCode.Locked));
    if (newer !== undefined) throw newer;
    const unfenced = nodes.filter((_, i) => results[i] !== null);
    if (unfenced.length === 0) return;
    const why = unfenced.map((uuid) => `${uuid}: ${errorMessage(results[nodes.indexOf(uuid)])}`);
    for (const uuid of unfenced) {
      this.#pendingWhole.set(`${volumeId} ${uuid}`, { volumeId, uuid, token, resync: false });
    }
    log.warn(`volume ${volumeId}: not fenced yet at ${why.join("; ")}; again when it answers`);
    this.#startResync();
  }

  /**
   * Fences `volumeId` at `uuid` and flushes it: what an earlier writer left there unflushed (and
   * may have acknowledged) is durable before this writer reads it. Null when done, else the error.
   */
  async #fenceAt(uuid: string, volumeId: number, token: number): Promise<unknown> {
    const source = this.#sourceOf(uuid);
    if (source === null) return unavailable(`no address known for ${uuid}`);
    try {
      // Any change carrying the token fences (the node records it before it looks at the block):
      // one that must find a block that never exists changes nothing.
      await source.store.zeroAt(fenceProbeRef(volumeId), 0, 1, {
        mustExist: true,
        fenceToken: token,
        timeoutMs: PROBE_TIMEOUT_MS,
      }).catch((error) => {
        if (!isTorusError(error, ErrorCode.NotExist)) throw error;
      });
      await flushOnceAgain(source.store);
      return null;
    } catch (error) {
      return error;
    }
  }

  /**
   * Nodes a new writer could not fence, and whole-volume marks of the volumes it took over: once
   * the node answers, it is fenced; for a mark, its blocks of the volume are listed and each is
   * resynchronised (then the mark goes).
   */
  async #adoptPendingWhole(): Promise<void> {
    for (const [key, pending] of [...this.#pendingWhole]) {
      if (await this.#fenceAt(pending.uuid, pending.volumeId, pending.token) !== null) continue;
      if (!pending.resync) {
        this.#pendingWhole.delete(key);
        log.info(`volume ${pending.volumeId}: ${pending.uuid} fenced`);
        continue;
      }
      const refs = await this.#refsAt(pending.uuid, pending.volumeId);
      if (refs === null) continue;
      this.#pendingWhole.delete(key);
      this.#marks?.adoptWhole(pending.volumeId, pending.uuid, refs);
      this.#adoptRefs(pending.uuid, refs);
      log.info(
        `volume ${pending.volumeId}: ${pending.uuid} fenced; resynchronising its ${refs.length} ` +
          `block(s)`,
      );
    }
  }

  /** The refs of volume `volumeId` that `uuid` holds; null when it cannot be asked. */
  async #refsAt(uuid: string, volumeId: number): Promise<BlockRef[] | null> {
    const source = this.#sourceOf(uuid);
    if (source === null) return null;
    const refs: BlockRef[] = [];
    try {
      for await (const ref of source.store.blockRefs()) if (ref.volume === volumeId) refs.push(ref);
    } catch {
      return null;
    }
    return refs;
  }

  /** Tries the stale holders again every RESYNC_INTERVAL_MS while any are left. */
  #startResync(): void {
    if (this.#resyncing !== null) return;
    const left = () => this.#divergent.size > 0 || this.#pendingWhole.size > 0;
    this.#resyncing = (async () => {
      while (left() && !this.#stopResync.signal.aborted) {
        await this.#resyncPass();
        if (!left()) break;
        await this.#options.clock.sleep(RESYNC_INTERVAL_MS, this.#stopResync.signal).catch(
          () => {},
        );
      }
    })().finally(() => {
      this.#resyncing = null;
    });
  }

  /**
   * One attempt at every stale holder: each is asked first whether it answers at all (one short
   * probe per peer), so a peer still down costs PROBE_TIMEOUT_MS, not a deadline per block; the
   * blocks of the peers that answer are then written in parallel.
   */
  async #resyncPass(): Promise<void> {
    if (this.#pendingWhole.size > 0) await this.#adoptPendingWhole();
    this.#dropFormerHolders();
    const entries = [...this.#divergent.values()];
    const reachable = await this.#probe(entries);
    if (reachable.size === 0) return;
    let next = 0;
    const worker = async () => {
      while (next < entries.length) await this.#resyncOne(entries[next++]!, reachable);
    };
    await Promise.all(Array.from({ length: Math.min(RESYNC_CONCURRENCY, entries.length) }, worker));
  }

  /**
   * A stale node that is gone (neither a ring member nor a registered node out of the ring) has
   * nothing to catch up. One still there that is no holder of the ref may keep its older copy,
   * and could be a holder again under a later ring: it stays stale until its copy is deleted.
   */
  #dropFormerHolders(): void {
    const present = new Set([
      ...this.#members(),
      ...(this.#options.outsideRing?.() ?? []),
      ...(this.#options.unsettled?.() ?? []),
    ]);
    for (const [key, entry] of this.#divergent) {
      for (const uuid of [...entry.stale]) {
        if (present.has(uuid)) continue;
        entry.stale.delete(uuid);
        this.#marks?.release(entry.ref, uuid);
      }
      if (entry.stale.size === 0) this.#divergent.delete(key);
    }
  }

  /** The stale holders of `entries` that answer a probe now. */
  async #probe(entries: readonly Divergence[]): Promise<Set<string>> {
    const firstRefOf = new Map<string, BlockRef>();
    for (const entry of entries) {
      for (const uuid of entry.stale) if (!firstRefOf.has(uuid)) firstRefOf.set(uuid, entry.ref);
    }
    const reachable = new Set<string>();
    await Promise.all([...firstRefOf].map(async ([uuid, ref]) => {
      const source = this.#sourceOf(uuid);
      try {
        await source?.store.hasBlock(ref, { timeoutMs: PROBE_TIMEOUT_MS });
        if (source !== null) reachable.add(uuid);
        this.#suspects.delete(uuid);
      } catch {
        this.#suspect(uuid);
      }
    }));
    return reachable;
  }

  /** Resynchronises one ref at its reachable stale holders, under the repair gate of the ref. */
  async #resyncOne(entry: Divergence, reachable: ReadonlySet<string>): Promise<void> {
    // A repair or resync of this ref already running goes first; then it is tried again now.
    const running = this.#repairs.get(entry.ref.key);
    if (running !== undefined) await running;
    if (!this.#divergent.has(entry.ref.key) || this.#repairs.has(entry.ref.key)) return;
    const run = this.#resync(entry, reachable).catch((error) => {
      log.debug(`resynchronising ${entry.ref} failed: ${errorMessage(error)}`);
    }).finally(() => this.#repairs.delete(entry.ref.key));
    this.#repairs.set(entry.ref.key, run);
    await run;
  }

  /**
   * Writes a whole good copy of the ref (or its absence) to its stale holders in `reachable`, and
   * deletes the older copies of stale nodes that are no holders, while the ref's changes wait
   * (the repair rule). Each call carries the ring version: a node that knows a newer ring (where
   * it may hold the ref) refuses, and is tried again by the newer ring.
   */
  async #resync(entry: Divergence, reachable: ReadonlySet<string>): Promise<void> {
    const { ref, stale } = entry;
    while (this.#changesInFlight.has(ref.key)) await this.#options.clock.sleep(1);
    const ring = this.#options.ring();
    const holders = this.#holders(ref);
    // Every holder is stale and nothing says where the changes went (two faults, or marks an
    // earlier writer left): the holders are made to agree rather than left unreadable.
    const noneFresh = entry.sources === undefined &&
      holders.every((uuid) => stale.has(uuid) || this.#isStaleAt(ref, uuid));
    if (entry.reconcile || noneFresh) {
      await this.#chooseSource(entry, holders, noneFresh || entry.reconcile === true);
    }
    const candidates = entry.sources === undefined ? holders : [...entry.sources];
    const good = candidates.filter((uuid) => !stale.has(uuid) && !this.#isStaleAt(ref, uuid));
    let targets = [...stale].filter((uuid) => reachable.has(uuid));
    if (targets.length === 0) return;
    const copy = await this.#copyFrom(ref, good);
    // While blocks move, holders without the block decide nothing (it may not have reached
    // them yet): the stale copies stay, marked, until it has. When no node that is not stale has
    // it at all, the stale copies are all there is: the next pass makes one of them win.
    if (copy === null && this.#moving()) {
      if (await this.#noFreshCopyAnywhere(ref, stale)) entry.reconcile = true;
      return;
    }
    // An older copy off the holders goes only once a holder has the block: the ring may have
    // changed since, and its new holders may not have it yet (the node that took the change
    // pushes it there). Until then it stays, marked.
    if (copy === null) targets = targets.filter((uuid) => holders.includes(uuid));
    for (const uuid of targets) {
      const source = this.#sourceOf(uuid);
      if (source === null) continue;
      const options = { timeoutMs: this.#options.peerTimeoutMs, ...this.#internalStamp(ref, ring) };
      if (copy === null || !holders.includes(uuid)) {
        await source.store.deleteBlock(ref, options).catch((error) => {
          if (!isTorusError(error, ErrorCode.NotExist)) throw error;
        });
      } else {
        await source.store.putBlock(ref, copy, options);
      }
      this.#unflushed.add(source.store);
      this.#noteTaken(source, ref);
      stale.delete(uuid);
      this.#marks?.release(ref, uuid);
      this.stats.resyncedBlocks++;
      log.info(`${uuid} has ${ref} again`);
    }
    if (stale.size === 0) this.#divergent.delete(ref.key);
  }

  /**
   * Whether no node that is not stale for `ref` has a copy (each answered): then only the stale
   * copies are left of the block.
   */
  async #noFreshCopyAnywhere(ref: BlockRef, stale: ReadonlySet<string>): Promise<boolean> {
    const timeoutMs = this.#options.peerTimeoutMs;
    for (const source of this.#readOrder(ref)) {
      if (stale.has(source.uuid) || this.#isStaleAt(ref, source.uuid)) continue;
      const has = await this.#hasGoodCopy(source, ref, timeoutMs);
      if (has !== false) return false; // it has one, or cannot tell: nothing to decide yet
    }
    return [...stale].length > 0;
  }

  /**
   * Whether `source` holds a copy of `ref` that reads back whole (null: it cannot tell now). A
   * copy that fails its checksums (torn by a power loss before a flush) counts as none: it must
   * never win a reconciliation over a readable, older copy elsewhere.
   */
  async #hasGoodCopy(source: Source, ref: BlockRef, timeoutMs: number): Promise<boolean | null> {
    try {
      // Asked first: a read of a block a node lacks need not fail with not_exist, and any other
      // failure means "cannot tell" (the new-writers simulation, seed 13, fails without it).
      if (!await source.store.hasBlock(ref, { timeoutMs })) return false;
      // Then read back: a checksum failure shows only on a read.
      await source.store.getBlock(ref, { timeoutMs });
      return true;
    } catch (error) {
      if (isTorusError(error, ErrorCode.NotExist)) return false;
      if (isTorusError(error, ErrorCode.BlockUnavailable)) return false;
      return null;
    }
  }

  /**
   * For an entry to reconcile: the first holder (ring order) not stale that has the block becomes
   * the source, and the other holders are stale for the ref until they have its copy. With
   * `staleToo` (no fresh copy anywhere), stale holders and then stale nodes off the holders are
   * candidates too.
   */
  async #chooseSource(
    entry: Divergence,
    holders: readonly string[],
    staleToo: boolean,
  ): Promise<void> {
    const { ref, stale } = entry;
    const timeoutMs = this.#options.peerTimeoutMs;
    const isStale = (uuid: string) => stale.has(uuid) || this.#isStaleAt(ref, uuid);
    // Holders not stale first, in ring order; then (staleToo) stale holders and stale nodes off
    // the holders.
    const candidates = [
      ...holders.filter((uuid) => !isStale(uuid)),
      ...(staleToo ? holders.filter(isStale) : []),
      ...(staleToo ? [...stale].filter((uuid) => !holders.includes(uuid)) : []),
    ];
    for (const uuid of candidates) {
      // A node no writer could fence may hold an earlier writer's late changes: never the winner.
      if (this.#wholeSuspect(ref.volume, uuid)) continue;
      const source = this.#sourceOf(uuid);
      const has = source === null ? null : await this.#hasGoodCopy(source, ref, timeoutMs);
      if (has === null) return; // cannot tell yet: the next pass tries again
      if (!has) continue;
      log.warn(`${ref}: no copy is known to have every change; ${uuid}'s copy wins`);
      // Changes acknowledged before may be gone with the others: the next flush says so.
      this.#unknownLoss ??= `${ref}: no copy is known to have every acknowledged change ` +
        `(the nodes that took them restarted or missed them); ${uuid}'s copy was kept`;
      this.#markStale(ref, holders.filter((other) => other !== uuid && !stale.has(other)));
      entry.sources = new Set([uuid]);
      entry.reconcile = false;
      // The winner is a source now, whatever it was marked for.
      stale.delete(uuid);
      this.#marks?.release(ref, uuid);
      return;
    }
  }

  /** Whether every block of `volumeId` at `uuid` is suspect (a whole-volume mark). */
  #wholeSuspect(volumeId: number, uuid: string): boolean {
    if (this.#pendingWhole.get(`${volumeId} ${uuid}`)?.resync) return true;
    if (this.#marks?.adoptingWhole(volumeId, uuid)) return true;
    const watched = this.#marks?.store.watched?.(volumeId) ?? [];
    return watched.some((record) => record.node === uuid && record.wholeVolume);
  }

  // ---- peers that do not answer ---------------------------------------------------------------

  /** Marks `uuid` as not answering for SUSPECT_MS: reads try it last, changes skip it. */
  #suspect(uuid: string): void {
    this.#suspects.set(uuid, this.#options.clock.nowMs() + SUSPECT_MS);
  }

  #isSuspect(uuid: string): boolean {
    const until = this.#suspects.get(uuid);
    if (until === undefined) return false;
    if (until > this.#options.clock.nowMs()) return true;
    this.#suspects.delete(uuid);
    return false;
  }

  /** After a peer's answer: an error without an answer makes it a suspect, an answer clears it. */
  #noteAnswer(source: Source, error: unknown): void {
    if (source.local) return;
    const silent = isTorusError(error, ErrorCode.Unavailable) ||
      isTorusError(error, ErrorCode.OutcomeUnknown);
    if (silent) this.#suspect(source.uuid);
    else this.#suspects.delete(source.uuid);
  }

  /** The block as the first of `holders` that answers has it; null when they agree it is gone. */
  async #copyFrom(ref: BlockRef, holders: readonly string[]): Promise<Uint8Array | null> {
    let missing = 0;
    for (const uuid of holders) {
      const source = this.#sourceOf(uuid);
      if (source === null) continue;
      let answer: Uint8Array | null | undefined;
      try {
        answer = await source.store.getBlock(ref, { timeoutMs: this.#options.peerTimeoutMs });
      } catch (error) {
        answer = isTorusError(error, ErrorCode.NotExist) ? null : undefined;
      }
      // A holder that restarted since it took changes of this ref may have lost them: neither
      // its copy nor its "not stored" counts (it is stale for the ref from now on).
      // ...and neither does one found stale for it while this read was out (the same, found
      // by another call).
      if (this.#restartedSinceTaking(source, ref) || this.#isStaleAt(ref, uuid)) continue;
      if (answer === null) missing++;
      else if (answer !== undefined) return answer;
    }
    if (holders.length > 0 && missing === holders.length) return null;
    throw unavailable(`no holder in step with the others could give ${ref}`);
  }

  // ---- repair ---------------------------------------------------------------------------------

  /** Writes a good copy of `ref` to `holders` whose copy failed its checksum. */
  #repair(ref: BlockRef, holders: readonly string[], good: Uint8Array | null): void {
    if (this.#repairs.has(ref.key)) return;
    const repair = this.#runRepair(ref, holders, good).catch((error) => {
      log.warn(`repairing ${ref} failed: ${errorMessage(error)}`);
    }).finally(() => this.#repairs.delete(ref.key));
    this.#repairs.set(ref.key, repair);
    this.#keepInBackground(repair);
  }

  async #runRepair(
    ref: BlockRef,
    holders: readonly string[],
    good: Uint8Array | null,
  ): Promise<void> {
    // Changes sent before the repair began must land first, or it would put back old bytes.
    while (this.#changesInFlight.has(ref.key)) await this.#options.clock.sleep(1);
    // Read the good copy again now, checked against the one found before: a change since then
    // makes it differ, and the repair stops (the next read finds the bad copy again).
    const expected: BlockCallOptions = good === null ? {} : { expectedCrc32: crc32(good) };
    const { value } = await this.#read(
      ref,
      expected,
      (store, timeoutMs) => store.getBlock(ref, { ...expected, timeoutMs }),
    );
    const stamp = this.#internalStamp(ref);
    for (const uuid of holders) {
      const source = this.#sourceOf(uuid);
      if (source === null) continue;
      await source.store.putBlock(ref, value, { timeoutMs: this.#options.peerTimeoutMs, ...stamp });
      this.#unflushed.add(source.store);
      this.stats.repairedBlocks++;
      log.info(`repaired the copy of ${ref} at ${uuid}`);
    }
  }

  // ---- flush, listing, counts, lifecycle ------------------------------------------------------

  flush(): Promise<void> {
    return this.#guard(() => this.#flushAll());
  }

  /**
   * Flushes every store that took a change since the last flush. It fails while a holder lacks
   * changes the others took (after one more attempt to resynchronise it): until then the flushed
   * data is not on R holders. A store's failed flush is reported once.
   */
  async #flushAll(): Promise<void> {
    await this.#backgroundSettled();
    this.#adoptWatchedMarks();
    if (this.#divergent.size > 0) await this.#resyncPass();
    const failed = await this.#flushStores();
    // A peer that restarted since it took changes may have lost them (a power loss): they are
    // written there again from a holder that has them, and flushed, before this flush counts.
    if (this.#divergent.size > 0) {
      await this.#resyncPass();
      failed.push(...await this.#flushStores());
    }
    if (this.#unknownLoss !== null) {
      const why = this.#unknownLoss;
      this.#unknownLoss = null;
      throw outcomeUnknown(why);
    }
    const unsafe = await this.#unsafeDivergences();
    if (unsafe.length > 0) {
      const holders = new Set(unsafe.flatMap((d) => [...d.stale]));
      throw unavailable(
        `${unsafe.length} block(s) lack copies at ${[...holders].join(", ")}, which ` +
          `could not be reached; they are written again as soon as they can be`,
      );
    }
    const lost = this.#lostChanges.splice(0);
    if (lost.length > 0) {
      throw outcomeUnknown(
        `${lost.length} change(s) acknowledged at level ${this.#options.writeLevel} could not be ` +
          `placed by the newer ring: ${lost.slice(0, 3).join("; ")}`,
      );
    }
    if (failed.length > 0) throw unavailable(`flush failed at ${failed.join("; ")}`);
    // Every change so far is durable where it counts: who took what matters no more.
    this.#takers.clear();
    this.#takersOverflow = false;
  }

  /**
   * Flushes every store that took a change since the last flush; a peer found to be another
   * instance than the one that took its changes has them marked missing (#lostByRestart).
   */
  async #flushStores(): Promise<string[]> {
    // A peer out of the ring (removed, or forced out dead) owes nothing: its blocks' holders now
    // are others, which have every change (or get it from the rebalancer).
    const members = new Set(this.#members());
    const stores = [...this.#unflushed].filter((store) => {
      const entry = this.#takenSinceFlush.get(store);
      return entry === undefined || members.has(entry.uuid);
    });
    this.#unflushed.clear();
    const taken = stores.map((store) => this.#takenSinceFlush.get(store));
    // Every record, those of peers out of the ring too: they may be the only nodes that took the
    // changes a restarted peer lost (#lostByRestart).
    this.#takenSinceFlush.clear();
    const results = await Promise.allSettled(stores.map((store) => flushOnceAgain(store)));
    const failed: string[] = [];
    results.forEach((result, i) => {
      const entry = taken[i];
      const store = stores[i]!;
      if (entry !== undefined && entry.peer.instance !== entry.instance) {
        this.#lostByRestart(entry);
        return;
      }
      if (result.status === "fulfilled") return;
      // A node that took the changes as an extra only (no holder of any of them) is not one of
      // the copies a flush counts: its copies may now lack them, and are marked instead.
      if (
        entry !== undefined && [...entry.refs.values()].every((ref) => !this.#holds(entry, ref))
      ) {
        if (entry.overflow) this.#unknownLoss = `${entry.uuid} failed a flush: ${result.reason}`;
        for (const ref of entry.refs.values()) this.#markStale(ref, [entry.uuid]);
        return;
      }
      if (entry !== undefined) this.#keepTaken(store, entry);
      // A peer that acknowledged nothing since its last flush (its changes went unanswered, so
      // it is marked stale for them) owes this flush nothing.
      const owesNothing = entry === undefined && store !== this.#options.local;
      if (owesNothing) return;
      failed.push(`${store.name}: ${errorMessage(result.reason)}`);
      // Still unflushed: the next flush must try it again, not forget it.
      this.#unflushed.add(store);
    });
    return failed;
  }

  /**
   * Whether peer `source` is another instance than the one that took changes since its last
   * flush, and `ref` was one of them (its changes are then marked missing there: #lostByRestart).
   */
  #restartedSinceTaking(source: Source, ref: BlockRef): boolean {
    if (source.peer === null) return false;
    const taken = this.#takenSinceFlush.get(source.store);
    if (taken === undefined || taken.instance === source.peer.instance) return false;
    this.#takenSinceFlush.delete(source.store);
    this.#lostByRestart(taken);
    return taken.refs.has(ref.key) || taken.overflow;
  }

  /** Remembers that `source` took a change of `ref` (peers only: for #lostByRestart). */
  #noteTaken(source: Source, ref: BlockRef): void {
    const peer = source.peer;
    this.#noteTaker(source.uuid, peer === null ? LOCAL_INSTANCE : peer.instance, ref);
    if (peer === null) return;
    let taken = this.#takenSinceFlush.get(source.store);
    if (taken !== undefined && taken.instance !== peer.instance) {
      // It restarted between two changes: the earlier ones may be gone already.
      this.#lostByRestart(taken);
      taken = undefined;
    }
    if (taken === undefined) {
      taken = {
        uuid: source.uuid,
        peer,
        instance: peer.instance,
        refs: new Map(),
        overflow: false,
      };
      this.#takenSinceFlush.set(source.store, taken);
    }
    if (taken.refs.size < TAKEN_REFS_MAX) taken.refs.set(ref.key, ref);
    else taken.overflow = true;
  }

  /** Whether the peer of `entry` is a holder of `ref` under the current ring. */
  #holds(entry: Taken, ref: BlockRef): boolean {
    return this.#holders(ref).includes(entry.uuid);
  }

  /** Remembers who took a change of `ref` until the next successful flush (#takersOf). */
  #noteTaker(uuid: string, instance: string | null, ref: BlockRef): void {
    let takers = this.#takers.get(ref.key);
    if (takers === undefined) {
      if (this.#takers.size >= TAKEN_REFS_MAX) {
        this.#takersOverflow = true;
        return;
      }
      takers = new Map();
      this.#takers.set(ref.key, takers);
    }
    takers.set(uuid, instance);
  }

  /** Puts back what a store took when its flush failed (it is still unflushed). */
  #keepTaken(store: BlockStore, entry: Taken): void {
    const current = this.#takenSinceFlush.get(store);
    if (current === undefined) {
      this.#takenSinceFlush.set(store, entry);
      return;
    }
    if (current.instance !== entry.instance) {
      this.#lostByRestart(entry);
      return;
    }
    for (const [key, ref] of entry.refs) current.refs.set(key, ref);
    current.overflow ||= entry.overflow;
  }

  /**
   * Peer `entry.uuid` restarted after it took the changes of `entry` and before they were
   * flushed: it is stale for each of those refs (it still holds), so reads pass it over and
   * the resync writes it a whole copy from a node that took every change (#takers).
   */
  #lostByRestart(entry: Taken): void {
    log.warn(
      `${entry.uuid} restarted with ${entry.refs.size} unflushed change(s): writing them again`,
    );
    if (entry.overflow) {
      this.#unknownLoss = `${entry.uuid} restarted with more than ${TAKEN_REFS_MAX} unflushed ` +
        `changes: which of them it lost cannot be told`;
    }
    // A node that took them as an extra (no holder) may keep the older copy: marked all the same.
    for (const ref of entry.refs.values()) {
      if (this.#takersOverflow) {
        this.#markStale(ref, [entry.uuid]); // who took what cannot be told: the holders decide
        continue;
      }
      this.#markLost(ref, entry.uuid, this.#takersOf(ref, entry.uuid));
    }
  }

  /**
   * The nodes that took changes of `ref` since the last successful flush and are still the
   * instance that took them (this node's own store always is), `lost` aside.
   */
  #takersOf(ref: BlockRef, lost: string): string[] {
    const takers: string[] = [];
    for (const [uuid, instance] of this.#takers.get(ref.key) ?? []) {
      // One that missed a later change is no source either.
      if (uuid === lost || this.#isStaleAt(ref, uuid)) continue;
      if (instance === LOCAL_INSTANCE || this.#sourceOf(uuid)?.peer?.instance === instance) {
        takers.push(uuid);
      }
    }
    return takers;
  }

  /**
   * `lost` may have lost changes of `ref` that `takers` took. A holder that took none of them got
   * its copy some other way since the last flush: from a rebalancer, perhaps from `lost` itself
   * before the loss was noticed. It is stale too, and the takers are the sources of the resync.
   */
  #markLost(ref: BlockRef, lost: string, takers: readonly string[]): void {
    const stale = [lost];
    if (takers.length > 0) {
      for (const uuid of this.#holders(ref)) {
        if (uuid !== lost && !takers.includes(uuid)) stale.push(uuid);
      }
    }
    this.#markStale(ref, stale);
    const entry = this.#divergent.get(ref.key)!;
    if (takers.length === 0) {
      entry.reconcile = true;
      return;
    }
    entry.sources = new Set([...(entry.sources ?? []), ...takers]);
  }

  async #backgroundSettled(): Promise<void> {
    while (this.#background.size > 0) await Promise.all([...this.#background]);
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    this.#checkOpen();
    // Every member's listing is taken whole first, so the union is a snapshot of this moment.
    const seen = new Map<string, BlockRef>();
    const sources = this.#members().map((uuid) => this.#sourceOf(uuid)).filter((s) => s !== null);
    await Promise.all(sources.map(async (source) => {
      for await (const ref of source.store.blockRefs()) seen.set(ref.key, ref);
    }));
    yield* [...seen.keys()].sort().map((key) => seen.get(key)!);
  }

  /** Distinct refs stored, as the members' counts over the replication (exact when balanced). */
  usedBlocks(): number {
    this.#checkOpen();
    return Math.round(this.#sumOverMembers((store) => store.usedBlocks()) / this.#replication());
  }

  /** Capacity in distinct blocks: the members' capacity over the replication. */
  totalBlocks(): number {
    this.#checkOpen();
    return Math.floor(this.#sumOverMembers((store) => store.totalBlocks()) / this.#replication());
  }

  #sumOverMembers(count: (store: BlockStore) => number): number {
    let sum = 0;
    for (const uuid of this.#members()) {
      const source = this.#sourceOf(uuid);
      if (source !== null) sum += count(source.store);
    }
    return sum;
  }

  #replication(): number {
    const ring = this.#options.ring();
    return Math.max(1, Math.min(ring.replication, ring.memberUuids().length));
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    await this.#idle();
    this.#stopResync.abort();
    await this.#resyncing;
    await this.#flushAll().catch((error) => {
      log.warn(`flush on close failed: ${errorMessage(error)}`);
    });
  }

  // ---- helpers --------------------------------------------------------------------------------

  /** Runs a call while counting it in flight (close waits), after the closed check. */
  #guard<T>(call: () => Promise<T>): Promise<T> {
    try {
      this.#checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return this.#calls.run(call);
  }

  async #idle(): Promise<void> {
    await this.#calls.idle();
    await this.#backgroundSettled();
  }

  /** Calls made after close() began are refused (close waits only for earlier ones). */
  #checkOpen(): void {
    if (this.#closing !== null) throw closed("the distributor is closed");
  }

  #keepInBackground(promise: Promise<unknown>): void {
    const tracked = promise.finally(() => this.#background.delete(tracked));
    this.#background.add(tracked);
  }

  #members(): readonly string[] {
    return this.#options.ring().memberUuids();
  }

  #holders(ref: BlockRef): readonly string[] {
    const ring = this.#options.ring();
    return ring.memberUuids().length === 0 ? [] : ring.getHolders(ref);
  }

  /** Holders first (this node's own copy first among them), then the rest of the permutation. */
  #readOrder(ref: BlockRef): Source[] {
    const ring = this.#options.ring();
    if (ring.memberUuids().length === 0) return [];
    const { peers, replication } = ring.getPeers(ref);
    // Holders that missed changes of this ref serve none of its reads until they are resynced.
    const holders = peers.slice(0, replication).filter((p) => !this.#isStaleAt(ref, p));
    const self = this.#options.self;
    const members = new Set(peers);
    const outside = (this.#options.outsideRing?.() ?? []).filter((uuid) => !members.has(uuid));
    const rest = [...peers.slice(replication), ...outside];
    const ordered = self !== null && holders.includes(self)
      ? [self, ...holders.filter((p) => p !== self), ...rest]
      : [...holders, ...rest];
    // Peers that did not answer lately come last: each costs a deadline.
    const answering = ordered.filter((uuid) => !this.#isSuspect(uuid));
    const silent = ordered.filter((uuid) => this.#isSuspect(uuid));
    return [...answering, ...silent].map((uuid) => this.#sourceOf(uuid))
      .filter((s): s is Source => s !== null);
  }

  /** Whether `uuid` lacks changes of `ref` (known here, or marked durably by any writer). */
  #isStaleAt(ref: BlockRef, uuid: string): boolean {
    return (this.#divergent.get(ref.key)?.stale.has(uuid) ?? false) ||
      (this.#options.staleMarks?.isStale(ref, uuid) ?? false);
  }

  #sourceOf(uuid: string): Source | null {
    if (uuid === this.#options.self && this.#options.local !== null) {
      return { uuid, store: this.#options.local, local: true, peer: null };
    }
    const store = this.#options.peers.storeOf(uuid);
    return store === null ? null : { uuid, store, local: false, peer: store };
  }
}

/** How a change counts the holders' answers. */
interface ChangeKind {
  /** A delete: a holder without the ref counts as done, unless all lack it. */
  readonly tolerateMissing?: boolean;
  /** A whole-block put or a delete: a holder that takes it has the whole ref (#freshAgain). */
  readonly replacesWhole?: boolean;
  /**
   * A range write or zeroing: while blocks move the holders are sent it with `mustExist` (see
   * #rangeOptions), and this is the same call without, for when no node has the block.
   */
  readonly creating?: Send;
  /**
   * The change as sent to a node that is no holder but may keep a copy (`unsettled`): it changes
   * only a copy that is there (`not_exist` otherwise, which is fine). A fresh write or a delete
   * deletes the copy (everything in it is replaced).
   */
  readonly toExtra?: Send;
  /** `toExtra` leaves a node that took it with the whole ref (or none of it). */
  readonly extraReplacesWhole?: boolean;
}

/** Where one change went: its holders and the extras (see `unsettled`), with their attempts. */
interface Placement {
  readonly holders: readonly string[];
  readonly attempts: readonly Promise<unknown>[];
  readonly extras: readonly string[];
  readonly extraAttempts: readonly Promise<unknown>[];
}

/**
 * A ref no block ever has (generation 0 is no generation, volume_format.ts): the target of the
 * change that fences a volume at a node without changing anything.
 */
function fenceProbeRef(volumeId: number): BlockRef {
  return new BlockRef({ volume: volumeId, inode: 0n, index: 0n });
}

/** Whether an extra's answer leaves it with a copy that may lack the change. */
function extraMissed(result: unknown): boolean {
  return result !== null && !isTorusError(result, ErrorCode.NotExist) &&
    !isTorusError(result, ErrorCode.CompareFailed);
}

/** A delete at a node that may keep a copy; none there is `not_exist`, as for any extra. */
function extraDelete(
  store: BlockStore,
  ref: BlockRef,
  options: BlockCallOptions | undefined,
  stamp: { readonly ringVersion: number },
): Promise<void> {
  return store.deleteBlock(ref, { ...options, ...stamp });
}

/**
 * Flushes `store`, and once more when the first attempt found no answer: a peer that restarted
 * is reached on a new connection the second time (a flush may be repeated).
 */
async function flushOnceAgain(store: BlockStore): Promise<void> {
  try {
    await store.flush();
  } catch (error) {
    if (!isTorusError(error, ErrorCode.Unavailable)) throw error;
    await store.flush();
  }
}

/** Whether `data` matches the expected CRC (or none is expected). */
function matchesCrc(data: Uint8Array, expected: number | undefined): boolean {
  return expected === undefined || crc32(data) === expected;
}

/** Errors that are the caller's (the same at every peer): no other source is tried. */
function isFatal(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError" ||
    isTorusError(error, ErrorCode.Invalid);
}

/** Codes that mean the change was refused before doing anything. */
function definite(code: string): boolean {
  const codes: string[] = [
    ErrorCode.Invalid,
    ErrorCode.OutOfSpace,
    ErrorCode.Locked,
    ErrorCode.NotExist,
    ErrorCode.Exists,
    ErrorCode.ReadOnly,
    ErrorCode.Closed,
  ];
  return codes.includes(code);
}

/** The first non-null result, or null once all are null. */
function firstFound<T>(attempts: readonly Promise<T | null>[]): Promise<T | null> {
  if (attempts.length === 0) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    let left = attempts.length;
    for (const attempt of attempts) {
      attempt.then((value) => {
        if (value !== null) resolve(value);
        else if (--left === 0) resolve(null);
      }, reject);
    }
  });
}

/** Resolves with true at the first attempt that succeeded, or null when none did. */
function firstSuccess(
  attempts: readonly Promise<unknown>[],
  tolerateMissing: boolean,
): Promise<true | null> {
  return firstFound(
    attempts.map((attempt) =>
      attempt.then((error) =>
        error === null || tolerateMissing && isTorusError(error, ErrorCode.NotExist) ? true : null
      )
    ),
  );
}
