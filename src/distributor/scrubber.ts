/**
 * The scrubber: a node re-reads every block of its own store at a bounded rate, so that a copy
 * damaged on disk (a flipped bit, a torn or lost sector) is found while the other copies are
 * still good, not when a reader needs it after the other holder died. The store verifies every
 * sector against the checksum written with it (`block_unavailable` when one fails); a damaged
 * copy is replaced by a good one from another holder of the block.
 *
 * A repair copies a holder's block over the damaged copy. A writer's change of that block that
 * reaches this node between the read of the good copy and the put would be lost here, so the
 * good copy is read again after the put: if it changed meanwhile (a change came), the repair is
 * done again with the newer copy, up to REPAIR_ATTEMPTS times. (The writer's own reads repair
 * under its ordering of the block's changes, distributor.ts; the scrubber is for the blocks no
 * one reads.)
 *
 * A pass starts every `intervalMs` (a pass that takes longer starts the next at once) and reads
 * at most `rateBytesPerSecond`.
 * @module
 */

import {
  type BlockRef,
  type Clock,
  crc32,
  ErrorCode,
  errorMessage,
  isTorusError,
  logger,
  Pacer,
} from "../core/mod.ts";
import type { Ring } from "../ring/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import type { PeerDirectory } from "./peer_directory.ts";

const log = logger("scrub");

/** Times a repair is tried again when the good copy changed while it was copied. */
const REPAIR_ATTEMPTS = 3;
/** Deadline of a call to a peer. */
const CALL_TIMEOUT_MS = 5_000;

/** What a scrubber is built from. */
export interface ScrubberOptions {
  readonly self: string;
  readonly local: BlockStore;
  readonly ring: () => Ring;
  readonly peers: PeerDirectory;
  readonly clock: Clock;
  /** Bytes per second read from the local store (0: no bound). */
  readonly rateBytesPerSecond: number;
  /** Time from the start of one pass to the start of the next. */
  readonly intervalMs: number;
  readonly callTimeoutMs?: number;
  /** Whether `node` is durably marked as lacking changes of `ref`: never a source of repair. */
  readonly isStale?: (ref: BlockRef, node: string) => boolean;
}

/** Counters since start, and the pass in progress. */
export interface ScrubProgress {
  readonly passes: number;
  /** Blocks read and verified. */
  readonly scrubbedBlocks: number;
  /** Copies here that failed their checksums. */
  readonly damagedBlocks: number;
  /** Damaged copies replaced by a good one. */
  readonly repairedBlocks: number;
  /** Damaged copies no other holder had a good copy of (yet): tried again next pass. */
  readonly unrepairedBlocks: number;
  /** Blocks of the pass in progress looked at, of the blocks it started with. */
  readonly passScannedBlocks: number;
  readonly passTotalBlocks: number;
  /** When the last complete pass ended (epoch ms), null before. */
  readonly lastFinishMs: number | null;
}

/** See the module doc. */
export class Scrubber {
  readonly #options: ScrubberOptions;
  readonly #stop = new AbortController();
  #running: Promise<void> | null = null;
  #progress = {
    passes: 0,
    scrubbedBlocks: 0,
    damagedBlocks: 0,
    repairedBlocks: 0,
    unrepairedBlocks: 0,
    passScannedBlocks: 0,
    passTotalBlocks: 0,
    lastFinishMs: null as number | null,
  };

  readonly #pacer: Pacer;

  constructor(options: ScrubberOptions) {
    this.#options = options;
    this.#pacer = new Pacer(options.rateBytesPerSecond, options.clock);
  }

  start(): void {
    if (this.#options.intervalMs <= 0) return;
    this.#running ??= this.#loop();
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  progress(): ScrubProgress {
    return { ...this.#progress };
  }

  async #loop(): Promise<void> {
    const { clock, intervalMs } = this.#options;
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      const startMs = clock.nowMs();
      try {
        await this.pass();
      } catch (error) {
        if (!signal.aborted) log.warn(`a scrub pass failed: ${errorMessage(error)}`);
      }
      const waitMs = startMs + intervalMs - clock.nowMs();
      if (waitMs > 0) await clock.sleep(waitMs, signal).catch(() => {});
    }
  }

  /** One pass over every block of this node's store (exported for tests). */
  async pass(): Promise<void> {
    const p = this.#progress;
    p.passScannedBlocks = 0;
    p.passTotalBlocks = this.#options.local.usedBlocks();
    for await (const ref of this.#options.local.blockRefs()) {
      if (this.#stop.signal.aborted) return;
      await this.#pacer.wait(this.#options.local.blockSizeBytes, this.#stop.signal);
      await this.#scrub(ref);
      p.passScannedBlocks++;
    }
    p.passes++;
    p.lastFinishMs = this.#options.clock.nowMs();
  }

  async #scrub(ref: BlockRef): Promise<void> {
    try {
      await this.#options.local.getBlock(ref);
      this.#progress.scrubbedBlocks++;
      return;
    } catch (error) {
      if (isTorusError(error, ErrorCode.NotExist)) return; // deleted since the listing
      if (!isTorusError(error, ErrorCode.BlockUnavailable)) throw error;
      log.warn(`${ref}: the copy here is damaged: ${errorMessage(error)}`);
    }
    this.#progress.scrubbedBlocks++;
    this.#progress.damagedBlocks++;
    if (await this.#repair(ref)) {
      this.#progress.repairedBlocks++;
      log.info(`${ref}: repaired from another holder`);
    } else {
      this.#progress.unrepairedBlocks++;
      log.error(`${ref}: no other holder has a good copy now; trying again next pass`);
    }
  }

  /** Replaces the damaged copy of `ref` with a good one; false when none could be had. */
  async #repair(ref: BlockRef): Promise<boolean> {
    for (let attempt = 0; attempt < REPAIR_ATTEMPTS; attempt++) {
      const good = await this.#goodCopy(ref);
      if (good === null) return false;
      await this.#options.local.putBlock(ref, good.bytes);
      // The copy must still be the newest: a change that came meanwhile makes it differ.
      const again = await this.#read(good.store, ref);
      if (again !== null && crc32(again) === crc32(good.bytes)) {
        await this.#options.local.flush();
        return true;
      }
    }
    return false;
  }

  /**
   * A good copy from another holder of `ref`. Only holders: a node the block merely was on (an
   * older ring) may have missed changes since.
   */
  async #goodCopy(ref: BlockRef): Promise<{ bytes: Uint8Array; store: BlockStore } | null> {
    const ring = this.#options.ring();
    if (ring.memberUuids().length === 0) return null;
    for (const uuid of ring.getHolders(ref)) {
      if (uuid === this.#options.self || this.#options.isStale?.(ref, uuid)) continue;
      const store = this.#options.peers.storeOf(uuid);
      if (store === null) continue;
      const bytes = await this.#read(store, ref);
      if (bytes !== null) return { bytes, store };
    }
    return null;
  }

  async #read(store: BlockStore, ref: BlockRef): Promise<Uint8Array | null> {
    try {
      return await store.getBlock(ref, {
        timeoutMs: this.#options.callTimeoutMs ?? CALL_TIMEOUT_MS,
      });
    } catch {
      return null;
    }
  }
}
