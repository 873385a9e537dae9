/**
 * The rebalancer: after a ring change (peers added or removed, replication changed, a dead node
 * forced out), each node moves the blocks of its own store so that every block ends up on exactly
 * the first R peers of its permutation. There is no coordinator: every node pushes what it holds.
 *
 * One pass walks this node's refs (a snapshot of the store's listing) in batches:
 * 1. For each desired holder other than this node, one `hasBlocks` call asks which refs it lacks.
 * 2. Each lacking ref is read here and put there with `ifAbsent`: a holder that got the block in
 *    the meantime (from a writer, which writes to the new holders, or from another old holder)
 *    keeps its bytes, so a copy never puts back older bytes over newer ones.
 * 3. The holders that took copies are flushed; only then are this node's surplus copies (refs it
 *    is no longer a holder of) deleted, and only those every desired holder confirmed: it took
 *    this node's copy in this batch and flushed it without restarting in between (the server
 *    instance of its handshake is unchanged), or its copy has the same bytes as this one (read
 *    back and compared). A holder can have an older copy than this one: another node that lost
 *    unflushed changes in a power loss may have pushed its copy there first, before any writer
 *    noticed the loss. Then this copy, which may be the only current one, stays (the pass is
 *    incomplete, so writers keep sending it changes) until the holders agree with it.
 * Step 3 of a batch runs while the next batch goes through steps 1 and 2 (one batch in step 3 at
 * a time): copies do not stop while a holder syncs its disk.
 * A batch whose holder did not answer leaves its surplus refs in place and the pass incomplete;
 * the next pass (after RETRY_MS) tries again. A ring change during a pass ends it and starts one
 * under the new ring. A complete pass under the current ring makes the node balanced; it then
 * looks again when the ring changes, or after IDLE_RECHECK_MS (a holder that was down meanwhile).
 *
 * Copies are paced to `rateBytesPerSecond` (`--rebalance-rate`) so that client I/O keeps the
 * links and disks it needs; progress is counted for heartbeats (`torus ctl list-peers` REB/REP
 * and Balanced), metrics and /status.
 * @module
 */

import {
  type BlockRef,
  type Clock,
  ErrorCode,
  errorMessage,
  isTorusError,
  logger,
  Pacer,
} from "../core/mod.ts";
import type { Ring } from "../ring/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import type { PeerDirectory } from "./peer_directory.ts";
import type { PeerStore } from "./protocols/protocol.ts";

const log = logger("rebalance");

/** Refs looked at per batch (one `hasBlocks` call per holder). */
const BATCH_REFS_DEFAULT = 512;
/** Copies in flight at once. */
const COPY_CONCURRENCY = 8;
/** Wait before a pass that could not finish (a holder did not answer) is tried again. */
const RETRY_MS = 1_000;
/** A balanced node looks at its blocks again this often, whatever the ring does. */
const IDLE_RECHECK_MS = 30_000;
/** Deadline of the rebalancer's calls to a peer. */
const CALL_TIMEOUT_MS = 5_000;

/** What a rebalancer is built from (passed in by the composition root). */
export interface RebalancerOptions {
  /** This node's UUID. */
  readonly self: string;
  /** This node's store: the blocks it pushes, and the copies it deletes. */
  readonly local: BlockStore;
  readonly ring: () => Ring;
  readonly peers: PeerDirectory;
  readonly clock: Clock;
  /** Bytes per second copies may move (0: no bound). */
  readonly rateBytesPerSecond: number;
  readonly batchRefs?: number;
  readonly idleRecheckMs?: number;
  readonly retryMs?: number;
  readonly callTimeoutMs?: number;
  /**
   * Whether `node` is durably marked as lacking changes of `ref` (stale_marks.ts): such a copy is
   * never pushed, and such a holder never confirms a copy (its copy is older).
   */
  readonly isStale?: (ref: BlockRef, node: string) => boolean;
}

/** Progress and totals, for heartbeats, metrics and /status. */
export interface RebalanceProgress {
  /** A ring change has not been fully applied by this node yet. */
  readonly rebalancing: boolean;
  /** The ring version of the pass running now, or of the last one. */
  readonly ringVersion: number;
  /** Refs of the current (or last) pass looked at, and the refs the pass started with. */
  readonly passScannedBlocks: number;
  readonly passTotalBlocks: number;
  /** Blocks copied by the current (or last) pass. */
  readonly passSentBlocks: number;
  /** Blocks copied and surplus copies deleted by the last complete pass. */
  readonly lastPassSentBlocks: number;
  /** When the last complete pass ended (ms since the epoch), null before the first. */
  readonly lastFinishMs: number | null;
  /** Totals since start. */
  readonly sentBlocks: number;
  readonly sentBytes: number;
  readonly deletedBlocks: number;
  readonly failedCalls: number;
  readonly passes: number;
  /** Surplus copies kept because a holder's copy had other bytes (see the module doc). */
  readonly differingCopies: number;
}

/**
 * Copies a batch put at holders: `${uuid} ${ref key}` → the peer client and the server instance it
 * had before the put. While both are still current, the holder's copy is this node's bytes.
 */
type TakenCopies = Map<string, { readonly peer: PeerStore; readonly instance: string }>;

function takenKey(uuid: string, ref: BlockRef): string {
  return `${uuid} ${ref.key}`;
}

/** The result of one pass. */
interface PassResult {
  /** Every ref was looked at and every holder answered. */
  readonly complete: boolean;
}

/** See the module doc. */
export class Rebalancer {
  readonly #options: RebalancerOptions;
  readonly #stop = new AbortController();
  #running: Promise<void> | null = null;
  /** Wakes the idle wait early (a ring change). */
  #wake: (() => void) | null = null;
  #balancedVersion: number | null = null;
  #progress = {
    ringVersion: 0,
    passScannedBlocks: 0,
    passTotalBlocks: 0,
    passSentBlocks: 0,
    passDeletedBlocks: 0,
    lastPassSentBlocks: 0,
    lastFinishMs: null as number | null,
    sentBlocks: 0,
    sentBytes: 0,
    deletedBlocks: 0,
    failedCalls: 0,
    passes: 0,
    differingCopies: 0,
  };

  readonly #pacer: Pacer;

  constructor(options: RebalancerOptions) {
    this.#options = options;
    this.#pacer = new Pacer(options.rateBytesPerSecond, options.clock);
  }

  /** Starts passes in the background (see the module doc). */
  start(): void {
    this.#running ??= this.#loop();
  }

  /** Tells the rebalancer the ring changed: an idle one starts a pass now. */
  ringChanged(): void {
    this.#wake?.();
  }

  /** Progress now. */
  progress(): RebalanceProgress {
    const p = this.#progress;
    return {
      rebalancing: this.#balancedVersion !== this.#options.ring().version,
      ringVersion: p.ringVersion,
      passScannedBlocks: p.passScannedBlocks,
      passTotalBlocks: p.passTotalBlocks,
      passSentBlocks: p.passSentBlocks,
      lastPassSentBlocks: p.lastPassSentBlocks,
      lastFinishMs: p.lastFinishMs,
      sentBlocks: p.sentBlocks,
      sentBytes: p.sentBytes,
      deletedBlocks: p.deletedBlocks,
      failedCalls: p.failedCalls,
      passes: p.passes,
      differingCopies: p.differingCopies,
    };
  }

  /** Stops after the batch in progress. */
  async stop(): Promise<void> {
    this.#stop.abort();
    this.#wake?.();
    await this.#running;
  }

  async #loop(): Promise<void> {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      const version = this.#options.ring().version;
      let result: PassResult;
      try {
        result = await this.pass();
      } catch (error) {
        if (signal.aborted) return;
        log.warn(`a rebalance pass failed: ${errorMessage(error)}`);
        result = { complete: false };
      }
      const unchanged = this.#options.ring().version === version;
      if (result.complete && unchanged) {
        if (this.#balancedVersion !== version) log.info(`balanced at ring version ${version}`);
        this.#balancedVersion = version;
        await this.#idle(this.#options.idleRecheckMs ?? IDLE_RECHECK_MS, version);
      } else if (!unchanged) {
        continue;
      } else {
        await this.#idle(this.#options.retryMs ?? RETRY_MS, version);
      }
    }
  }

  /** Waits `ms`, or less when the ring changes or the rebalancer stops. */
  async #idle(ms: number, version: number): Promise<void> {
    if (this.#options.ring().version !== version) return;
    const woken = new AbortController();
    this.#wake = () => woken.abort();
    const stop = () => woken.abort();
    this.#stop.signal.addEventListener("abort", stop);
    try {
      await this.#options.clock.sleep(ms, woken.signal).catch(() => {});
    } finally {
      this.#wake = null;
      this.#stop.signal.removeEventListener("abort", stop);
    }
  }

  /** One pass over this node's blocks under the current ring (exported for tests). */
  async pass(): Promise<PassResult> {
    const ring = this.#options.ring();
    const p = this.#progress;
    p.ringVersion = ring.version;
    p.passScannedBlocks = 0;
    p.passSentBlocks = 0;
    p.passDeletedBlocks = 0;
    p.passTotalBlocks = this.#options.local.usedBlocks();
    p.passes++;
    if (ring.memberUuids().length === 0) return { complete: true };
    const batchRefs = this.#options.batchRefs ?? BATCH_REFS_DEFAULT;
    let complete = true;
    let batch: BlockRef[] = [];
    // A batch's holders flush (and its surplus copies are checked and deleted) while the next
    // batch's copies go on, one batch finishing at a time: copying does not wait for the disks.
    let finishing: Promise<boolean> = Promise.resolve(true);
    const copyThenFinish = async (refs: readonly BlockRef[]) => {
      const finish = await this.#batch(ring, refs);
      if (!await finishing) complete = false;
      finishing = finish();
      // Awaited below; until then a failure must not count as unhandled.
      finishing.catch(() => {});
    };
    try {
      for await (const ref of this.#options.local.blockRefs()) {
        batch.push(ref);
        if (batch.length < batchRefs) continue;
        await copyThenFinish(batch);
        batch = [];
        if (this.#stop.signal.aborted || this.#options.ring().version !== ring.version) {
          await finishing;
          return { complete: false };
        }
      }
      if (batch.length > 0) await copyThenFinish(batch);
      if (!await finishing) complete = false;
    } finally {
      await finishing.catch(() => {});
    }
    await this.#options.local.flush();
    if (complete) {
      p.lastFinishMs = this.#options.clock.nowMs();
      p.lastPassSentBlocks = p.passSentBlocks;
    }
    return { complete };
  }

  /**
   * Copies the refs of `batch` that their holders lack; returns the rest of the batch, to run
   * next: flush the holders that took copies, then delete this node's surplus copies the holders
   * all confirmed, resolving to whether every holder answered and took its copies.
   */
  async #batch(ring: Ring, batch: readonly BlockRef[]): Promise<() => Promise<boolean>> {
    const self = this.#options.self;
    const wanted = new Map<string, BlockRef[]>();
    const surplus: BlockRef[] = [];
    const isStale = this.#options.isStale ?? (() => false);
    // Refs this node's copy is stale for: left to the writer's resync, never spread or dropped.
    const unconfirmed = new Set<string>();
    for (const ref of batch) {
      if (isStale(ref, self)) continue;
      const holders = ring.getHolders(ref);
      if (!holders.includes(self)) surplus.push(ref);
      // A stale holder has an older copy: it confirms nothing, and gets no push (ifAbsent).
      if (holders.some((uuid) => isStale(ref, uuid))) unconfirmed.add(ref.key);
      for (const uuid of holders) {
        if (uuid === self) continue;
        const refs = wanted.get(uuid) ?? [];
        refs.push(ref);
        wanted.set(uuid, refs);
      }
    }
    // Refs some holder may still lack: their surplus copy here must stay.
    const taken: TakenCopies = new Map();
    const flushes = await Promise.all(
      [...wanted].map(([uuid, refs]) => this.#fillHolder(ring, uuid, refs, unconfirmed, taken)),
    );
    return async () => {
      const results = await Promise.all(flushes.map((flush) => flush()));
      const confirmed = surplus.filter((ref) => !unconfirmed.has(ref.key));
      const deletable = await this.#sameAtHolders(ring, confirmed, taken);
      await this.#deleteSurplus(deletable);
      this.#progress.passScannedBlocks += batch.length;
      // A surplus copy kept (a holder is marked stale, so it confirms nothing) leaves the pass
      // incomplete: a balanced node holds no copy the ring puts elsewhere, so writers stop sending
      // it changes (distributor `unsettled`), and a kept copy would fall behind unnoticed.
      return results.every((ok) => ok) && deletable.length === surplus.length;
    };
  }

  /**
   * Gives holder `uuid` the refs it lacks; adds the ones it may still lack to `unconfirmed`.
   * Returns what is left to do: flush the holder when it took copies (resolving to whether every
   * copy landed and was flushed).
   */
  async #fillHolder(
    ring: Ring,
    uuid: string,
    refs: readonly BlockRef[],
    unconfirmed: Set<string>,
    taken: TakenCopies,
  ): Promise<() => Promise<boolean>> {
    const peer = this.#options.peers.storeOf(uuid);
    const timeoutMs = this.#options.callTimeoutMs ?? CALL_TIMEOUT_MS;
    const giveUp = (error: unknown, what: string) => {
      this.#progress.failedCalls++;
      log.debug(`rebalance: ${what} at ${uuid} failed: ${errorMessage(error)}`);
      for (const ref of refs) unconfirmed.add(ref.key);
      return false;
    };
    const done = (ok: boolean) => () => Promise.resolve(ok);
    if (peer === null) return done(giveUp(new Error("no address known"), "reaching it"));
    let has: boolean[];
    try {
      has = await peer.hasBlocks(refs, { timeoutMs });
    } catch (error) {
      return done(giveUp(error, "asking which blocks it has"));
    }
    const lacking = refs.filter((_, i) => !has[i]);
    if (lacking.length === 0) return done(true);
    let ok = true;
    let next = 0;
    const copyNext = async () => {
      while (next < lacking.length && !this.#stop.signal.aborted) {
        const ref = lacking[next++]!;
        const instance = peer.instance;
        const copied = await this.#copy(ref, peer, uuid, { timeoutMs, ringVersion: ring.version });
        if (copied === "failed") {
          unconfirmed.add(ref.key);
          ok = false;
        } else if (copied === "put" && instance !== null) {
          taken.set(takenKey(uuid, ref), { peer, instance });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(COPY_CONCURRENCY, lacking.length) }, copyNext));
    if (this.#stop.signal.aborted) {
      for (const ref of lacking) unconfirmed.add(ref.key);
      return done(false);
    }
    // The copies must be durable there before this node lets go of its own.
    return async () => {
      try {
        await peer.flush();
      } catch (error) {
        return giveUp(error, "flushing the copies");
      }
      return ok;
    };
  }

  /**
   * Copies one ref to `peer` unless it has it by now: "put" when the peer took this node's bytes,
   * "skipped" when there was nothing to put (it had the ref, or this node no longer has it),
   * "failed" when the copy did not land.
   */
  async #copy(
    ref: BlockRef,
    peer: BlockStore,
    uuid: string,
    call: { readonly timeoutMs: number; readonly ringVersion: number },
  ): Promise<"put" | "skipped" | "failed"> {
    let data: Uint8Array;
    try {
      data = await this.#options.local.getBlock(ref);
    } catch (error) {
      // Deleted here since the listing (its volume freed it): nothing to move. A copy that
      // fails its checksum is not spread; the other holders' copies stand, and this one stays
      // for the repair.
      if (isTorusError(error, ErrorCode.NotExist)) return "skipped";
      log.warn(`rebalance: ${ref} cannot be read here: ${errorMessage(error)}`);
      return "failed";
    }
    await this.#pacer.wait(data.length, this.#stop.signal);
    try {
      // Placed by this ring: a holder that knows a newer one (where it may hold no copy of the
      // ref) refuses, so a node balanced under the newer ring never gets a surplus copy.
      await peer.putBlock(ref, data, { ifAbsent: true, ...call });
    } catch (error) {
      if (isTorusError(error, ErrorCode.Exists)) return "skipped";
      this.#progress.failedCalls++;
      log.debug(`rebalance: copying ${ref} to ${uuid} failed: ${errorMessage(error)}`);
      return "failed";
    }
    const p = this.#progress;
    p.sentBlocks++;
    p.passSentBlocks++;
    p.sentBytes += data.length;
    return "put";
  }

  /**
   * The refs of `refs` whose every holder has the same bytes as this node's copy (see the module
   * doc, step 3). A copy here that cannot be read (a checksum failure) holds nothing worth
   * keeping once the holders have the block.
   */
  async #sameAtHolders(
    ring: Ring,
    refs: readonly BlockRef[],
    taken: TakenCopies,
  ): Promise<BlockRef[]> {
    const same: BlockRef[] = [];
    // One ref at a time: read-backs run beside the next batch's copies, and more of them at once
    // took the holders' time from clients (p99 read latency during a join 2-3x higher, measured).
    for (const ref of refs) {
      if (this.#stop.signal.aborted) break;
      if (await this.#sameAtHoldersOf(ring, ref, taken)) same.push(ref);
    }
    return same;
  }

  /** Whether every holder of `ref` has this node's bytes (see {@link #sameAtHolders}). */
  async #sameAtHoldersOf(ring: Ring, ref: BlockRef, taken: TakenCopies): Promise<boolean> {
    // A holder that took this node's copy in this batch, flushed it and did not restart since
    // has these bytes: reading them back would only move them over the network again.
    const unproven = ring.getHolders(ref).filter((uuid) => {
      const copy = taken.get(takenKey(uuid, ref));
      if (copy === undefined) return true;
      return this.#options.peers.storeOf(uuid) !== copy.peer ||
        copy.peer.instance !== copy.instance;
    });
    if (unproven.length === 0) return true;
    const timeoutMs = this.#options.callTimeoutMs ?? CALL_TIMEOUT_MS;
    let mine: Uint8Array;
    try {
      mine = await this.#options.local.getBlock(ref);
    } catch (error) {
      return isTorusError(error, ErrorCode.NotExist) ||
        isTorusError(error, ErrorCode.BlockUnavailable);
    }
    if (await this.#everyHolderHas(unproven, ref, mine, timeoutMs)) return true;
    this.#progress.differingCopies++;
    return false;
  }

  async #everyHolderHas(
    holders: readonly string[],
    ref: BlockRef,
    mine: Uint8Array,
    timeoutMs: number,
  ): Promise<boolean> {
    for (const uuid of holders) {
      const peer = this.#options.peers.storeOf(uuid);
      if (peer === null) return false;
      await this.#pacer.wait(mine.length, this.#stop.signal);
      try {
        const theirs = await peer.getBlock(ref, { timeoutMs });
        if (!equalBytes(theirs, mine)) {
          log.warn(`${ref}: the copy at ${uuid} differs from this node's; keeping this one`);
          return false;
        }
      } catch (error) {
        log.debug(`rebalance: reading ${ref} back from ${uuid} failed: ${errorMessage(error)}`);
        return false;
      }
    }
    return true;
  }

  async #deleteSurplus(refs: readonly BlockRef[]): Promise<void> {
    for (const ref of refs) {
      if (this.#stop.signal.aborted) return;
      try {
        await this.#options.local.deleteBlock(ref);
      } catch (error) {
        if (!isTorusError(error, ErrorCode.NotExist)) throw error;
        continue;
      }
      this.#progress.deletedBlocks++;
      this.#progress.passDeletedBlocks++;
    }
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
