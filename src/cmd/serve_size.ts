/**
 * `torus serve --size SIZE|N%`: the capacity of the node's block store, checked against the
 * block size and the disk before the store is opened.
 *
 * - `N%` is a share of the space available to the store: the free space of the filesystem
 *   holding the data dir (df's "Avail") plus what the store's files already occupy there. Counting
 *   the store's own allocation keeps `50%` meaning the same size after the store has filled up.
 * - The store must hold at least one block beside its spare slot, and at most STORE_SLOTS_MAX
 *   blocks ("too large").
 * - A size beyond the available space is refused when it would create or grow the store (the
 *   data file is sparse, so it would only fail later, with out-of-space on some write). An
 *   existing store that no longer fits because the disk filled up from elsewhere still starts,
 *   with a warning: refusing to start would take its data offline.
 * @module
 */

import { statfsSync } from "node:fs";
import { type Capacity, capacityBytes, formatSize, invalid, STORE_SLOTS_MAX } from "../core/mod.ts";
import { SPARE_SLOTS } from "../storage/mod.ts";

/** Disk space as seen from the data dir. */
export interface StoreSpace {
  /** Bytes free on the filesystem for unprivileged users (df's "Avail"). */
  readonly freeBytes: number;
  /** Bytes the files of the block dir occupy on disk now (a sparse file counts what it uses). */
  readonly storeAllocatedBytes: number;
  /** Apparent size of the files of the block dir now (0 when there is no store yet). */
  readonly storeApparentBytes: number;
}

/** `path`, or its closest ancestor that exists (statfs needs an existing path). */
async function closestExisting(path: string): Promise<string> {
  let current = path;
  for (;;) {
    try {
      await Deno.stat(current);
      return current;
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    const parent = current.includes("/") ? current.slice(0, current.lastIndexOf("/")) : ".";
    current = parent === "" ? "/" : parent === current ? "." : parent;
  }
}

/** Measures {@link StoreSpace} for the block dir `blockDir` (absent: no store yet). */
export async function measureStoreSpace(blockDir: string): Promise<StoreSpace> {
  const stats = statfsSync(await closestExisting(blockDir));
  let storeAllocatedBytes = 0;
  let storeApparentBytes = 0;
  const files = await Array.fromAsync(Deno.readDir(blockDir)).catch((error) => {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  });
  for (const entry of files) {
    if (!entry.isFile) continue;
    // This runs before the data-dir lock: a serve that holds it may rename a file away (a
    // journal's temp file) between the listing and this stat. A file gone takes no space.
    const info = await Deno.stat(`${blockDir}/${entry.name}`).catch((error) => {
      if (error instanceof Deno.errors.NotFound) return null;
      throw error;
    });
    if (info === null) continue;
    storeApparentBytes += info.size;
    // st_blocks counts 512-byte units whatever the filesystem's block size.
    storeAllocatedBytes += (info.blocks ?? Math.ceil(info.size / 512)) * 512;
  }
  return { freeBytes: stats.bavail * stats.bsize, storeAllocatedBytes, storeApparentBytes };
}

/** The bytes `capacity` asks for on `space`: `N%` is of the free space plus the store's own. */
export function storeSizeBytes(capacity: Capacity, space: StoreSpace): number {
  return capacityBytes(capacity, () => space.freeBytes + space.storeAllocatedBytes);
}

function shownSize(capacity: Capacity, text: string, sizeBytes: number): string {
  return `--size ${text}${capacity.kind === "percent" ? ` (${formatSize(sizeBytes)})` : ""}`;
}

/** How `--size` was written, for messages. */
export interface SizeRequest {
  readonly capacity: Capacity;
  /** The flag's text as given. */
  readonly text: string;
}

/**
 * Checks a store of `sizeBytes` against `space` (see the module doc): throws `invalid` when a new
 * or growing store does not fit; returns a warning when an existing one no longer does, else
 * null.
 */
export function checkStoreSpace(
  sizeBytes: number,
  options: SizeRequest & { space: StoreSpace; where: string },
): string | null {
  const { space } = options;
  const availableBytes = space.freeBytes + space.storeAllocatedBytes;
  if (sizeBytes <= availableBytes) return null;
  const room = `the ${formatSize(availableBytes)} available in ${options.where} ` +
    `(free space plus what the block store already occupies)`;
  if (sizeBytes > space.storeApparentBytes) {
    throw invalid(`${shownSize(options.capacity, options.text, sizeBytes)} is more than ${room}`);
  }
  return `warning: the block store (${formatSize(sizeBytes)}) is larger than ${room}; ` +
    `writes may fail with out_of_space`;
}

/**
 * Throws `invalid` unless a store of `sizeBytes` holds at least one block beside its spare slot
 * and at most STORE_SLOTS_MAX blocks of `blockSizeBytes`.
 */
export function checkStoreBlocks(
  sizeBytes: number,
  options: SizeRequest & { blockSizeBytes: number },
): void {
  const { blockSizeBytes } = options;
  const shown = shownSize(options.capacity, options.text, sizeBytes);
  const blocks = Math.floor(sizeBytes / blockSizeBytes);
  const minBlocks = 1 + SPARE_SLOTS;
  if (blocks < minBlocks) {
    throw invalid(
      `${shown} is too small: the block store needs at least ` +
        `${formatSize(minBlocks * blockSizeBytes)} (${minBlocks} blocks of ` +
        `${formatSize(blockSizeBytes)}, ${SPARE_SLOTS} kept spare)`,
    );
  }
  if (blocks > STORE_SLOTS_MAX) {
    throw invalid(
      `${shown} is too large: a block store holds at most ${STORE_SLOTS_MAX} blocks ` +
        `(${formatSize(STORE_SLOTS_MAX * blockSizeBytes)} of ${formatSize(blockSizeBytes)} blocks)`,
    );
  }
}
