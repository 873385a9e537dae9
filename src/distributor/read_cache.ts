/**
 * The distributor's read cache: whole blocks fetched from peers, least recently used evicted
 * first, bounded in bytes (the original's LRU counted entries and never updated a cached value,
 * so a replaced block could be served stale; here every change of a ref drops its entry).
 * @module
 */

/** A bounded LRU of blocks by ref key. */
export class ReadCache {
  readonly #capacityBlocks: number;
  /** Map iteration order is insertion order: the first entry is the least recently used. */
  readonly #blocks = new Map<string, Uint8Array>();

  /** A cache of `capacityBytes` (0 disables it) for blocks of `blockSizeBytes`. */
  constructor(capacityBytes: number, blockSizeBytes: number) {
    this.#capacityBlocks = Math.floor(capacityBytes / blockSizeBytes);
  }

  /** A copy of the cached block, or null. */
  get(key: string): Uint8Array | null {
    const block = this.#blocks.get(key);
    if (block === undefined) return null;
    this.#blocks.delete(key);
    this.#blocks.set(key, block);
    return block.slice();
  }

  /** A view of the cached block for a range read, or null (the caller copies what it needs). */
  peek(key: string): Uint8Array | null {
    return this.#blocks.get(key) ?? null;
  }

  /** Caches a copy of `block`. */
  put(key: string, block: Uint8Array): void {
    if (this.#capacityBlocks === 0) return;
    this.#blocks.delete(key);
    this.#blocks.set(key, block.slice());
    while (this.#blocks.size > this.#capacityBlocks) {
      this.#blocks.delete(this.#blocks.keys().next().value!);
    }
  }

  /** Drops `key` (its block changed). */
  drop(key: string): void {
    this.#blocks.delete(key);
  }

  /** Blocks cached now. */
  size(): number {
    return this.#blocks.size;
  }
}
