/**
 * Test helpers shared by the volume's unit tests (volume_test.ts) and its crash tests
 * (tests/block/volume_crash_test.ts): a volume made directly over a BlockStore, without a
 * metadata service (its root written by hand, generation changes with nothing to publish).
 * @module
 */

import type { BlockStore } from "../storage/mod.ts";
import { BlockVolume } from "./volume.ts";
import { decodeRoot, encodeRoot, mapGeometry, rootRef } from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";
import { VolumeReader } from "./volume_reader.ts";

/** The volume id the helpers use. */
export const FIXTURE_VOLUME = 5;

/** Writes the root of a fresh volume of `sizeBytes` and opens it for write. */
export async function createVolume(
  store: BlockStore,
  options: { sizeBytes: number; generation?: number },
): Promise<BlockVolume> {
  const generation = options.generation ?? 2;
  const geometry = mapGeometry(store.blockSizeBytes);
  const root = encodeRoot(
    { volume: FIXTURE_VOLUME, generation, sizeBytes: options.sizeBytes, parent: null },
    geometry,
  );
  await store.putBlock(rootRef(FIXTURE_VOLUME, generation), root);
  await store.flush();
  return await openVolume(store, generation, options.sizeBytes);
}

/** The block map of `generation`, from its root in `store`. */
export async function loadMap(store: BlockStore, generation: number): Promise<VolumeMap> {
  const geometry = mapGeometry(store.blockSizeBytes);
  const bytes = await store.getBlock(rootRef(FIXTURE_VOLUME, generation));
  return new VolumeMap(
    store,
    decodeRoot(bytes, { volume: FIXTURE_VOLUME, generation }, geometry),
    geometry,
  );
}

/** Opens `generation` for write. */
export async function openVolume(
  store: BlockStore,
  generation: number,
  sizeBytes: number,
): Promise<BlockVolume> {
  const map = await loadMap(store, generation);
  return new BlockVolume({ store, geometry: map.geometry, map, sizeBytes, parent: null });
}

/** Opens `generation` read-only. */
export async function openReader(
  store: BlockStore,
  generation: number,
  sizeBytes: number,
): Promise<VolumeReader> {
  return new VolumeReader({
    store,
    map: await loadMap(store, generation),
    sizeBytes,
    parent: null,
  });
}

/** Every byte of `device`. */
export async function readAll(
  device: { sizeBytes: number; readAt: BlockVolume["readAt"] },
): Promise<Uint8Array> {
  const bytes = new Uint8Array(device.sizeBytes);
  await device.readAt(0, bytes);
  return bytes;
}

/** Generation changes without a metadata service: the next number, nothing to publish. */
export function nextGeneration(volume: BlockVolume): Promise<number> {
  return volume.changeGeneration((ending) =>
    Promise.resolve({ generation: ending + 1, commit: () => Promise.resolve() })
  );
}
