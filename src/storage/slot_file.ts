/**
 * How the file engine moves block bytes between memory and the data file: one slot of
 * `blockSizeBytes` at `HEADER_BYTES + slot * blockSizeBytes`. Two variants, compared in
 * docs/adr/0001-block-file-io.md:
 * - `pread`: nonblocking FFI pread/pwrite (a worker thread per call); the event loop never waits
 *   on the disk. The default.
 * - `mmap`: a shared mapping of the whole file; copies are plain memory copies on the main thread,
 *   so a page fault on cold data (or on a sparse page being allocated) stalls the event loop, and
 *   a file shrunk behind our back kills the process with SIGBUS. Kept for the benchmark.
 * Both keep the caller's buffers: no view of file memory is ever handed out.
 * @module
 */

import { assert, blockUnavailable } from "../core/mod.ts";
import {
  fdatasync,
  mappedBytes,
  type Mapping,
  mmap,
  MmapFlags,
  msync,
  munmap,
  preadFull,
  pwriteFull,
} from "../sys/mod.ts";
import { HEADER_BYTES } from "./file_format.ts";

/** Data I/O variants of the file engine. */
export const DataIo = { Pread: "pread", Mmap: "mmap" } as const;
export type DataIo = typeof DataIo[keyof typeof DataIo];

/** Block-sized reads and writes of the slots of one data file. */
export interface SlotFile {
  readonly dataIo: DataIo;
  /** Fills `into` (one block) with the bytes of `slot`. */
  read(slot: number, into: Uint8Array): Promise<void>;
  /** Writes `block` (one block) into `slot`; on return the bytes are in the page cache. */
  write(slot: number, block: Uint8Array): Promise<void>;
  /** Makes every completed write durable. */
  sync(): Promise<void>;
  /** Releases what the variant holds (the fd belongs to the caller). */
  close(): void;
}

/** Byte offset of `slot` in the data file. */
export function slotOffsetBytes(slot: number, blockSizeBytes: number): number {
  return HEADER_BYTES + slot * blockSizeBytes;
}

/** Slots through nonblocking pread/pwrite. */
export class PreadSlotFile implements SlotFile {
  readonly dataIo = DataIo.Pread;
  readonly #fd: number;
  readonly #blockSizeBytes: number;

  constructor(fd: number, blockSizeBytes: number) {
    this.#fd = fd;
    this.#blockSizeBytes = blockSizeBytes;
  }

  async read(slot: number, into: Uint8Array): Promise<void> {
    assert(into.length === this.#blockSizeBytes, "slot read needs a block-sized buffer");
    const offset = slotOffsetBytes(slot, this.#blockSizeBytes);
    const got = await preadFull(this.#fd, into, offset);
    if (got !== into.length) {
      throw blockUnavailable(`data file ends inside slot ${slot} (read ${got} bytes)`);
    }
  }

  write(slot: number, block: Uint8Array): Promise<void> {
    assert(block.length === this.#blockSizeBytes, "slot write needs a block-sized buffer");
    return pwriteFull(this.#fd, block, slotOffsetBytes(slot, this.#blockSizeBytes));
  }

  sync(): Promise<void> {
    return fdatasync(this.#fd);
  }

  close(): void {}
}

/** Slots through one shared read-write mapping of the data file. */
export class MmapSlotFile implements SlotFile {
  readonly dataIo = DataIo.Mmap;
  readonly #blockSizeBytes: number;
  #mapping: Mapping | null;

  /** Maps `slotCount` slots of `fd`; the file must already be that large. */
  constructor(fd: number, options: { blockSizeBytes: number; slotCount: number }) {
    this.#blockSizeBytes = options.blockSizeBytes;
    this.#mapping = mmap(fd, {
      lengthBytes: slotOffsetBytes(options.slotCount, options.blockSizeBytes),
      prot: MmapFlags.PROT_READ | MmapFlags.PROT_WRITE,
      flags: MmapFlags.MAP_SHARED,
    });
  }

  #view(slot: number): Uint8Array {
    assert(this.#mapping !== null, "mmap slot file used after close");
    const offset = slotOffsetBytes(slot, this.#blockSizeBytes);
    return mappedBytes(this.#mapping, offset, this.#blockSizeBytes);
  }

  read(slot: number, into: Uint8Array): Promise<void> {
    assert(into.length === this.#blockSizeBytes, "slot read needs a block-sized buffer");
    into.set(this.#view(slot));
    return Promise.resolve();
  }

  write(slot: number, block: Uint8Array): Promise<void> {
    assert(block.length === this.#blockSizeBytes, "slot write needs a block-sized buffer");
    this.#view(slot).set(block);
    return Promise.resolve();
  }

  sync(): Promise<void> {
    assert(this.#mapping !== null, "mmap slot file used after close");
    return msync(this.#mapping, {
      offsetBytes: 0,
      lengthBytes: this.#mapping.lengthBytes,
      flags: MmapFlags.MS_SYNC,
    });
  }

  close(): void {
    if (this.#mapping === null) return;
    munmap(this.#mapping);
    this.#mapping = null;
  }
}
