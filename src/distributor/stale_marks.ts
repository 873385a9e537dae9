/**
 * Durable stale marks (ADR 0006 §7): a holder that missed changes of a block is recorded in the
 * metadata service before the change counts, so the mark outlives the writer that made it. Every
 * distributor passes marked holders over when it reads (`isStale`, from a watch of the records);
 * the next writer of the volume adopts the marks and resynchronises them; a resync removes them.
 *
 * The recorder batches the marks of one turn into one compare-and-swap per volume and node, and
 * never records a mark twice while it stands.
 * @module
 */

import { type BlockRef, errorMessage, logger } from "../core/mod.ts";

const log = logger("distributor");

/** One node's marks for one volume (as the metadata service keeps them). */
export interface StaleMarkRecord {
  readonly volumeId: number;
  readonly node: string;
  /** Blocks the node lacks changes of; empty when `wholeVolume`. */
  readonly refs: readonly BlockRef[];
  /** Too many to list: every block of the volume at that node is suspect. */
  readonly wholeVolume: boolean;
}

/** Where the marks are kept (the metadata service, through the node's cluster member). */
export interface StaleMarkStore {
  /** Durably records that `node` lacks changes of `refs` (all of volume `volumeId`). */
  add(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void>;
  /** Removes marks after the node got whole copies. */
  remove(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void>;
  /** Removes the node's whole record for the volume (after a whole-volume resync). */
  clear(volumeId: number, node: string): Promise<void>;
  /** The records of one volume. */
  list(volumeId: number): Promise<StaleMarkRecord[]>;
  /** Whether `node` is marked stale for `ref` now (the watched records: no I/O). */
  isStale(ref: BlockRef, node: string): boolean;
  /**
   * The records of volume `volumeId` as the watch last saw them (no I/O): a volume's writer
   * takes over marks other processes recorded (an earlier writer that resumed) and resyncs them.
   */
  watched?(volumeId: number): StaleMarkRecord[];
}

/** A mark not yet durable: the refs of one volume and node, and who waits for them. */
interface PendingBatch {
  readonly volumeId: number;
  readonly node: string;
  readonly refs: Map<string, BlockRef>;
  readonly done: Promise<void>;
}

/** Batches marks into the store; see the module doc. */
export class StaleMarkRecorder {
  readonly #store: StaleMarkStore;
  /** `node ref.key` of marks recorded (or being recorded) and not removed since. */
  readonly #recorded = new Map<string, Promise<void>>();
  #batches = new Map<string, PendingBatch>();
  /** Removals on their way, by `node ref.key`: a new mark of the same waits for its removal. */
  readonly #removals = new Map<string, Promise<void>>();
  readonly #inFlight = new Set<Promise<unknown>>();

  constructor(store: StaleMarkStore) {
    this.#store = store;
  }

  get store(): StaleMarkStore {
    return this.#store;
  }

  /** Resolves once the mark of `node` for `ref` is durable (rejects when it could not be). */
  record(ref: BlockRef, node: string): Promise<void> {
    const key = `${node} ${ref.key}`;
    const known = this.#recorded.get(key);
    if (known !== undefined) return known;
    // A removal of the same mark still on its way would take the new one with it: after it.
    const removing = this.#removals.get(key);
    if (removing !== undefined) return removing.then(() => this.record(ref, node));
    const batchKey = `${ref.volume} ${node}`;
    let batch = this.#batches.get(batchKey);
    if (batch === undefined) {
      const refs = new Map<string, BlockRef>();
      // The marks of this turn go out together, once the turn is over.
      const done = Promise.resolve().then(() => {
        if (this.#batches.get(batchKey) === batch) this.#batches.delete(batchKey);
        return this.#store.add(ref.volume, node, [...refs.values()]);
      });
      batch = { volumeId: ref.volume, node, refs, done };
      this.#batches.set(batchKey, batch);
      this.#track(done);
    }
    batch.refs.set(ref.key, ref);
    const recorded = batch.done.catch((error) => {
      // Not durable: the next call records it again.
      this.#recorded.delete(key);
      throw error;
    });
    this.#recorded.set(key, recorded);
    return recorded;
  }

  /** Whether a whole-volume record of `node` for `volumeId` is being resynchronised here. */
  adoptingWhole(volumeId: number, node: string): boolean {
    return this.#wholeLeft.has(`${volumeId} ${node}`);
  }

  /** Forgets that a mark was recorded (an adopted one: it is durable already). */
  adopt(ref: BlockRef, node: string): void {
    this.#recorded.set(`${node} ${ref.key}`, Promise.resolve());
  }

  /**
   * Takes over a whole-volume record of an earlier writer for the `refs` the node holds: once
   * each of them is released (resynchronised), the record is cleared.
   */
  adoptWhole(volumeId: number, node: string, refs: readonly BlockRef[]): void {
    const left = new Set(refs.map((ref) => ref.key));
    const key = `${volumeId} ${node}`;
    if (left.size === 0) {
      this.#track(this.#store.clear(volumeId, node));
      return;
    }
    this.#wholeLeft.set(key, left);
  }

  /** Per `volume node` of an adopted whole-volume record: the refs not yet resynchronised. */
  readonly #wholeLeft = new Map<string, Set<string>>();

  /** Removes the mark after a resync; a failure is logged (the mark stays, which is safe). */
  release(ref: BlockRef, node: string): void {
    const key = `${node} ${ref.key}`;
    const recorded = this.#recorded.get(key);
    if (recorded === undefined) return;
    this.#recorded.delete(key);
    const wholeKey = `${ref.volume} ${node}`;
    const whole = this.#wholeLeft.get(wholeKey);
    if (whole !== undefined) {
      whole.delete(ref.key);
      if (whole.size === 0) {
        this.#wholeLeft.delete(wholeKey);
        this.#track(this.#store.clear(ref.volume, node));
      }
      return;
    }
    const removal: Promise<void> = recorded.then(() => this.#store.remove(ref.volume, node, [ref]))
      .catch((error) =>
        log.warn(`removing the stale mark of ${ref} at ${node}: ${errorMessage(error)}`)
      ).finally(() => {
        if (this.#removals.get(key) === removal) this.#removals.delete(key);
      });
    this.#removals.set(key, removal);
    this.#track(removal);
  }

  /** Settles once every record and removal started so far has. */
  async idle(): Promise<void> {
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }

  #track(promise: Promise<unknown>): void {
    const tracked = promise.then(() => {}, () => {}).finally(() => this.#inFlight.delete(tracked));
    this.#inFlight.add(tracked);
  }
}
