/**
 * The stale marks of the metadata service as a cluster member's distributor, rebalancer and
 * scrubber use them (distributor/stale_marks.ts): changes go to the metadata service, and every
 * record is followed by a watch, so `isStale` answers from memory on every read.
 * @module
 */

import { type BlockRef, errorMessage, logger } from "../core/mod.ts";
import type { StaleMarkRecord, StaleMarkStore } from "../distributor/mod.ts";
import type { MetadataService, Subscription } from "../metadata/mod.ts";

const log = logger("cluster");

/** One volume's marks at one node, as last seen by the watch. */
interface Marks {
  readonly refs: ReadonlyMap<string, BlockRef>;
  readonly wholeVolume: boolean;
}

/** See the module doc. */
export class WatchedStaleMarks implements StaleMarkStore {
  readonly #metadata: MetadataService;
  /** `volume node` → its marks. */
  readonly #marks = new Map<string, Marks>();
  #watch: Subscription | null = null;

  private constructor(metadata: MetadataService) {
    this.#metadata = metadata;
  }

  /** Reads every record and follows them. */
  static async start(metadata: MetadataService): Promise<WatchedStaleMarks> {
    const marks = new WatchedStaleMarks(metadata);
    marks.#watch = await metadata.staleMarks.watch((change) => {
      const key = `${change.volumeId} ${change.node}`;
      if (change.removed) {
        marks.#marks.delete(key);
        return;
      }
      marks.#marks.set(key, {
        refs: new Map(change.refs.map((ref) => [ref.key, ref])),
        wholeVolume: change.wholeVolume,
      });
    }, {
      onError: (error) => log.error(`the stale marks watch ended: ${errorMessage(error)}`),
    });
    return marks;
  }

  isStale(ref: BlockRef, node: string): boolean {
    const marks = this.#marks.get(`${ref.volume} ${node}`);
    return marks !== undefined && (marks.wholeVolume || marks.refs.has(ref.key));
  }

  watched(volumeId: number): StaleMarkRecord[] {
    const records: StaleMarkRecord[] = [];
    const prefix = `${volumeId} `;
    for (const [key, marks] of this.#marks) {
      if (!key.startsWith(prefix)) continue;
      records.push({
        volumeId,
        node: key.slice(prefix.length),
        refs: [...marks.refs.values()],
        wholeVolume: marks.wholeVolume,
      });
    }
    return records;
  }

  /** Marked blocks now (whole-volume records count one), for /status. */
  markedBlocks(): number {
    let count = 0;
    for (const marks of this.#marks.values()) count += marks.wholeVolume ? 1 : marks.refs.size;
    return count;
  }

  add(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    return this.#metadata.staleMarks.add(volumeId, node, refs);
  }

  remove(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    return this.#metadata.staleMarks.remove(volumeId, node, refs);
  }

  clear(volumeId: number, node: string): Promise<void> {
    return this.#metadata.staleMarks.clear(volumeId, node);
  }

  async list(volumeId: number): Promise<StaleMarkRecord[]> {
    return [...await this.#metadata.staleMarks.list(volumeId)];
  }

  async close(): Promise<void> {
    await this.#watch?.unsubscribe().catch(() => {});
    this.#watch = null;
  }
}
