/**
 * Garbage collection of block volume data in one block store: deletes the blocks that no volume
 * head, snapshot or clone can read any more (deleted volumes, blocks replaced or trimmed since
 * the snapshot that last saw them was deleted, maps and roots of such generations).
 *
 * Safe against everything that runs meanwhile (the original's GC was not, inventory §2.8):
 * - Volumes are listed first; a block of a volume id above the highest id minted then belongs to
 *   a volume created during the pass and is kept. Ids are never reused.
 * - A block of a generation at or above the head's generation read at the start belongs to the
 *   writer (its current generation, or one a snapshot started since) and is kept: writers only
 *   ever write their current generation.
 * - Every other block is kept when a live generation (the head, its base, a snapshot) maps it.
 *   Maps only ever stop naming older blocks, so reading a writer's map from the store (which may
 *   lag behind its memory) can only keep more. Snapshots deleted during the pass are still
 *   counted (their blocks go next time); snapshots taken during the pass seal a generation that
 *   was the head's, so its blocks are kept by the rule above.
 * - Any metadata record that cannot be read stops the pass: deleting blocks of a volume we cannot
 *   see would be data loss.
 * - In a cluster each node scans its own store and reads roots and maps through the cluster
 *   (`reader`): a root is "missing" only when every holder says so, and a map that cannot be
 *   read keeps every block it might name.
 * @module
 */

import {
  BlockType,
  ErrorCode,
  errorMessage,
  isTorusError,
  logger,
  TorusError,
} from "../core/mod.ts";
import type { BlockRef } from "../core/mod.ts";
import type { MetadataService } from "../metadata/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import {
  decodeRoot,
  ENTRY_UNWRITTEN,
  type MapGeometry,
  mapGeometry,
  rootRef,
} from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";

const log = logger("gc");

/** Refs examined between yields to the event loop. */
const REFS_PER_TURN = 4096;

/** What a pass did. */
export interface GcResult {
  /** Blocks examined. */
  readonly scanned: number;
  /** Blocks deleted. */
  readonly deleted: number;
}

/** Options of {@link collectGarbage}. */
export interface GcOptions {
  readonly metadata: MetadataService;
  /** The store whose blocks are scanned and deleted (a cluster node's own). */
  readonly store: BlockStore;
  /**
   * Where roots and maps are read (default: `store`). On a cluster node this is the cluster (the
   * distributor): a generation's root and maps are on their own holders, seldom on the node whose
   * blocks are scanned, and a map read from the wrong store would find nothing and keep nothing.
   */
  readonly reader?: BlockStore;
  /** Stops the pass early (nothing half-done is left: deletes are independent). */
  readonly signal?: AbortSignal;
}

/** The liveness facts of one volume, gathered before the store is scanned. */
class VolumeLiveness {
  readonly volumeId: number;
  readonly headGeneration: number;
  readonly generations: readonly number[];
  readonly #store: BlockStore;
  readonly #geometry: MapGeometry;
  readonly #maps = new Map<number, Promise<VolumeMap | null>>();

  constructor(
    store: BlockStore,
    geometry: MapGeometry,
    facts: { volumeId: number; headGeneration: number; generations: number[] },
  ) {
    this.#store = store;
    this.#geometry = geometry;
    this.volumeId = facts.volumeId;
    this.headGeneration = facts.headGeneration;
    this.generations = facts.generations;
  }

  /** The map of live generation `generation` (null when it has no root: it maps nothing). */
  map(generation: number): Promise<VolumeMap | null> {
    let map = this.#maps.get(generation);
    if (map === undefined) {
      map = this.#loadMap(generation);
      this.#maps.set(generation, map);
    }
    return map;
  }

  async #loadMap(generation: number): Promise<VolumeMap | null> {
    let bytes: Uint8Array;
    try {
      bytes = await this.#store.getBlock(rootRef(this.volumeId, generation));
    } catch (error) {
      if (isTorusError(error, ErrorCode.NotExist)) return null;
      throw error;
    }
    const root = decodeRoot(bytes, { volume: this.volumeId, generation }, this.#geometry);
    return new VolumeMap(this.#store, root, this.#geometry);
  }

  /** Whether some live generation reads block `ref` (of an older generation than the head's). */
  async isReferenced(ref: BlockRef): Promise<boolean> {
    const generation = Number(ref.inode);
    const index = Number(ref.index);
    if (ref.type === BlockType.INode) return this.generations.includes(generation);
    for (const live of this.generations) {
      const map = await this.map(live);
      if (map === null) continue;
      if (ref.type === BlockType.Map) {
        if (index < this.#geometry.chunkCapacity && map.chunkGeneration(index) === generation) {
          return true;
        }
      } else if (ref.type === BlockType.Data) {
        const entry = await map.entry(index);
        if (entry !== ENTRY_UNWRITTEN && entry === generation) return true;
      } else {
        return true; // a kind of block this code does not know: never ours to delete
      }
    }
    return false;
  }
}

/** Gathers what is live, before the store is scanned. */
async function gatherLiveness(
  metadata: MetadataService,
  store: BlockStore,
  geometry: MapGeometry,
): Promise<{ highestId: number; volumes: Map<number, VolumeLiveness> }> {
  const listed = await metadata.volumes.listVolumes();
  if (listed.invalid.length > 0) {
    throw new TorusError(
      ErrorCode.Invalid,
      `garbage collection stopped: ${listed.invalid.length} volume record(s) cannot be read ` +
        `(${listed.invalid[0]!.key}: ${listed.invalid[0]!.reason})`,
    );
  }
  const volumes = new Map<number, VolumeLiveness>();
  for (const info of listed.volumes) {
    const state = await metadata.blockVolumes.headState(info.id);
    const snapshots = await metadata.snapshots.listSnapshots(info.id);
    const generations = new Set<number>([Number(state.head.inode)]);
    if (state.base !== null) generations.add(Number(state.base));
    for (const snapshot of snapshots) generations.add(Number(snapshot.inodeRef.inode));
    volumes.set(
      info.id,
      new VolumeLiveness(store, geometry, {
        volumeId: info.id,
        headGeneration: Number(state.head.inode),
        generations: [...generations],
      }),
    );
  }
  return { highestId: listed.highestId, volumes };
}

/** One garbage collection pass over `store` (see the module doc). */
export async function collectGarbage(options: GcOptions): Promise<GcResult> {
  const { metadata, store, signal } = options;
  const geometry = mapGeometry(store.blockSizeBytes);
  const { highestId, volumes } = await gatherLiveness(metadata, options.reader ?? store, geometry);
  let scanned = 0;
  let deleted = 0;
  for await (const ref of store.blockRefs()) {
    signal?.throwIfAborted();
    scanned++;
    if (scanned % REFS_PER_TURN === 0) await new Promise((resolve) => setTimeout(resolve, 0));
    if (!(await isGarbage(ref, highestId, volumes))) continue;
    try {
      await store.deleteBlock(ref);
      deleted++;
    } catch (error) {
      if (!isTorusError(error, ErrorCode.NotExist)) throw error;
    }
  }
  if (deleted > 0) await store.flush();
  if (deleted > 0) log.info(`deleted ${deleted} of ${scanned} blocks no volume can read`);
  return { scanned, deleted };
}

async function isGarbage(
  ref: BlockRef,
  highestId: number,
  volumes: Map<number, VolumeLiveness>,
): Promise<boolean> {
  const volume = volumes.get(ref.volume);
  if (volume === undefined) return ref.volume <= highestId; // deleted, or created after listing
  if (Number(ref.inode) >= volume.headGeneration) return false; // the writer's
  try {
    return !(await volume.isReferenced(ref));
  } catch (error) {
    // A map that cannot be read keeps everything it might have named.
    log.warn(`keeping ${ref}: reading the maps of volume ${ref.volume}: ${errorMessage(error)}`);
    return false;
  }
}
