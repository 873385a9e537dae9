/**
 * A node's disk in the simulation: a BlockStore whose flushed state is kept apart from what it
 * took since, so a crash (power loss) can lose any part of the unflushed changes, chosen from
 * the simulation's seed, while every flushed one stays. A change that survives may also come
 * back torn (some of its sectors written, some not): the file engine's sector checksums then
 * refuse to return the block (`block_unavailable`) until it is written whole again, and that is
 * what this disk does.
 * @module
 */

import { type BlockRef, blockUnavailable, type Random } from "../../src/core/mod.ts";
import { type BlockStore, ForwardingStore, MemoryBlockStore } from "../../src/storage/mod.ts";

/** See the module doc. `live` is the store a node serves (rebuilt after a crash). */
export class SimDisk {
  readonly blockSizeBytes: number;
  readonly #totalBlocks: number;
  /** The flushed state: ref key → bytes (absent: not stored). */
  readonly #durable = new Map<string, { ref: BlockRef; bytes: Uint8Array }>();
  /** Refs changed since the last flush. */
  readonly #dirty = new Map<string, BlockRef>();
  /** Refs whose copy came back torn from a power loss (reads refused until written whole). */
  readonly #torn = new Set<string>();
  /** Copies that came back torn, since the start. */
  tornCopies = 0;
  #live: MemoryBlockStore;

  constructor(blockSizeBytes: number, totalBlocks: number) {
    this.blockSizeBytes = blockSizeBytes;
    this.#totalBlocks = totalBlocks;
    this.#live = this.#fresh();
  }

  /** The store as the node serves it now (a new one after each crash). */
  store(): BlockStore {
    return new DiskStore(this.#live, this);
  }

  noteChange(ref: BlockRef, whole: boolean): void {
    this.#dirty.set(ref.key, ref);
    if (whole) this.#torn.delete(ref.key);
  }

  /** Refuses a read of a torn copy, as the file engine's sector checksums do. */
  checkTorn(ref: BlockRef): void {
    if (this.#torn.has(ref.key)) {
      throw blockUnavailable(`${ref}: a sector failed its checksum (torn by a power loss)`);
    }
  }

  /** Makes every change so far durable. */
  async flushed(live: MemoryBlockStore): Promise<void> {
    for (const [key, ref] of [...this.#dirty]) {
      if (await live.hasBlock(ref)) {
        this.#durable.set(key, { ref, bytes: await live.getBlock(ref) });
      } else this.#durable.delete(key);
      this.#dirty.delete(key);
    }
  }

  /**
   * Power loss: each unflushed change survives or not, as `random` says (a disk writes back in
   * any order), and one that survives may be torn. Returns how many were lost.
   */
  async crash(random: Random): Promise<number> {
    let lost = 0;
    for (const [key, ref] of this.#dirty) {
      if (random.chance(0.5)) {
        if (random.chance(0.25) && await this.#live.hasBlock(ref)) {
          this.#torn.add(key);
          this.tornCopies++;
        }
        if (await this.#live.hasBlock(ref)) {
          this.#durable.set(key, { ref, bytes: await this.#live.getBlock(ref) });
        } else this.#durable.delete(key);
      } else lost++;
    }
    this.#dirty.clear();
    await this.#live.close();
    this.#live = this.#fresh();
    for (const { ref, bytes } of this.#durable.values()) await this.#live.putBlock(ref, bytes);
    return lost;
  }

  /** Whether the copy of `ref` here is torn (reads refused). */
  isTorn(ref: BlockRef): boolean {
    return this.#torn.has(ref.key);
  }

  /** Whether `ref` is on this disk (live state). */
  has(ref: BlockRef): Promise<boolean> {
    return this.#live.hasBlock(ref);
  }

  /** Blocks on this disk (live state), as a heartbeat reports them. */
  usedBlocks(): number {
    return this.#live.usedBlocks();
  }

  get(ref: BlockRef): Promise<Uint8Array> {
    return this.#live.getBlock(ref);
  }

  #fresh(): MemoryBlockStore {
    return new MemoryBlockStore({
      blockSizeBytes: this.blockSizeBytes,
      totalBlocks: this.#totalBlocks,
    });
  }
}

/** The live store, noting every change for the crash and every flush for durability. */
class DiskStore extends ForwardingStore {
  readonly #disk: SimDisk;
  readonly #live: MemoryBlockStore;

  constructor(live: MemoryBlockStore, disk: SimDisk) {
    super(live);
    this.#live = live;
    this.#disk = disk;
  }

  override getBlock(...args: Parameters<BlockStore["getBlock"]>): Promise<Uint8Array> {
    try {
      this.#disk.checkTorn(args[0]);
    } catch (error) {
      return Promise.reject(error);
    }
    return super.getBlock(...args);
  }

  override readAt(...args: Parameters<BlockStore["readAt"]>): Promise<void> {
    try {
      this.#disk.checkTorn(args[0]);
    } catch (error) {
      return Promise.reject(error);
    }
    return super.readAt(...args);
  }

  override async putBlock(...args: Parameters<BlockStore["putBlock"]>): Promise<void> {
    await super.putBlock(...args);
    this.#disk.noteChange(args[0], true);
  }

  override async writeAt(...args: Parameters<BlockStore["writeAt"]>): Promise<void> {
    await super.writeAt(...args);
    const [, offsetBytes, data, options] = args;
    const whole = options?.fresh === true ||
      offsetBytes === 0 && data.length === this.#disk.blockSizeBytes;
    this.#disk.noteChange(args[0], whole);
  }

  override async zeroAt(...args: Parameters<BlockStore["zeroAt"]>): Promise<void> {
    await super.zeroAt(...args);
    const [, offsetBytes, lengthBytes, options] = args;
    const whole = options?.fresh === true ||
      offsetBytes === 0 && lengthBytes === this.#disk.blockSizeBytes;
    this.#disk.noteChange(args[0], whole);
  }

  override async deleteBlock(...args: Parameters<BlockStore["deleteBlock"]>): Promise<void> {
    await super.deleteBlock(...args);
    this.#disk.noteChange(args[0], true);
  }

  override async flush(): Promise<void> {
    await super.flush();
    await this.#disk.flushed(this.#live);
  }
}
