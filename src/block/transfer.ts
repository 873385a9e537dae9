/**
 * Moving a whole device to and from a byte stream (`torus ctl block dump` and `load`), sparse:
 * ranges a device knows to be zero (its `extents`: a volume's block map, or NBD block status
 * through an NbdClient) are never read; inside what is read, and inside a load's input, every
 * aligned 4 KiB that is all zeros is skipped (a hole in a dump, no write and no block in a load),
 * as `qemu-img convert` does by default, so a sparse image stays sparse whatever carried it.
 * Reads run a few chunks ahead of the writes, so a remote device (NBD) keeps a pipeline full.
 * @module
 */

import { assert, invalid } from "../core/mod.ts";
import type { Device } from "./device.ts";

/** Bytes moved per read or write. */
export const TRANSFER_CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * Zero runs this long, aligned to it, are skipped inside data: the sector of the volumes' checksums
 * and the block size NBD clients prefer (qemu-img convert's default `-S 4k`).
 */
export const SPARSE_RUN_BYTES = 4096;
/** Chunks read ahead of the one being written. */
const READ_AHEAD_CHUNKS = 4;

/** Called as bytes move: how far the transfer got of how much. */
export type TransferProgress = (doneBytes: number, totalBytes: number) => void;

/** Where a dump goes, in order of offsets. */
export interface DumpSink {
  /** Appends `data` (the bytes at the current end). */
  write(data: Uint8Array): Promise<void>;
  /** Appends `lengthBytes` of zeros: a file leaves a hole, a stream writes them. */
  zeros(lengthBytes: number): Promise<void>;
}

/** Where a load comes from. */
export interface LoadSource {
  /** Fills as much of `into` as the input has; 0 at its end. */
  read(into: Uint8Array): Promise<number>;
}

/** What a transfer moved. */
export interface TransferResult {
  /** Bytes covered (the device's size for a dump, the input's length for a load). */
  readonly totalBytes: number;
  /** Bytes actually read and written; the rest were zero ranges skipped. */
  readonly dataBytes: number;
}

/** Options of {@link dumpDevice} and {@link loadDevice}. */
export interface TransferOptions {
  readonly onProgress?: TransferProgress;
  readonly signal?: AbortSignal;
  readonly chunkBytes?: number;
}

/** Copies every byte of `device` into `sink`, zero ranges as zeros (holes where possible). */
export async function dumpDevice(
  device: Device,
  sink: DumpSink,
  options: TransferOptions = {},
): Promise<TransferResult> {
  const chunkBytes = options.chunkBytes ?? TRANSFER_CHUNK_BYTES;
  const total = device.sizeBytes;
  const pending: Promise<ChunkPiece[]>[] = [];
  let next = 0;
  let done = 0;
  let dataBytes = 0;
  const fetch = (offset: number) => chunkOf(device, offset, Math.min(chunkBytes, total - offset));
  while (done < total) {
    options.signal?.throwIfAborted();
    while (pending.length < READ_AHEAD_CHUNKS && next < total) {
      pending.push(fetch(next));
      next += Math.min(chunkBytes, total - next);
    }
    for (const piece of await pending.shift()!) {
      if (typeof piece === "number") {
        await sink.zeros(piece);
        done += piece;
      } else {
        await sink.write(piece);
        done += piece.length;
        dataBytes += piece.length;
      }
    }
    options.onProgress?.(done, total);
  }
  return { totalBytes: total, dataBytes };
}

/** Part of a chunk: its bytes, or the length of a range that reads as zeros. */
type ChunkPiece = Uint8Array | number;

/** A chunk as pieces in order: only the ranges the device does not know to be zero are read. */
function chunkOf(device: Device, offset: number, length: number): Promise<ChunkPiece[]> {
  return device.extents(offset, length).then((extents) =>
    Promise.all(extents.map(async (extent): Promise<ChunkPiece[]> => {
      if (extent.zero) return [extent.lengthBytes];
      const bytes = new Uint8Array(extent.lengthBytes);
      await device.readAt(extent.offsetBytes, bytes);
      // A device that cannot tell (NBD without block status), or a block holding some zeros,
      // still leaves holes where it reads zeros.
      return splitZeroRuns(bytes, extent.offsetBytes);
    }))
  ).then((pieces) => pieces.flat());
}

/**
 * `bytes`, which sit at `offsetBytes` of a device, as pieces in order: the lengths of zero runs
 * (every `runBytes` window aligned to the device's offsets that is all zeros, merged) and the data
 * between them (views of `bytes`, merged).
 */
export function splitZeroRuns(
  bytes: Uint8Array,
  offsetBytes: number,
  runBytes = SPARSE_RUN_BYTES,
): ChunkPiece[] {
  const pieces: ChunkPiece[] = [];
  let pieceStart = 0;
  let pieceZero = false;
  let at = 0;
  while (at < bytes.length) {
    const end = Math.min(bytes.length, at + runBytes - ((offsetBytes + at) % runBytes));
    const zero = isAllZero(bytes.subarray(at, end));
    if (at > 0 && zero !== pieceZero) {
      pieces.push(pieceZero ? at - pieceStart : bytes.subarray(pieceStart, at));
      pieceStart = at;
    }
    pieceZero = zero;
    at = end;
  }
  if (bytes.length > 0) {
    pieces.push(pieceZero ? at - pieceStart : bytes.subarray(pieceStart, at));
  }
  return pieces;
}

/**
 * Writes `source` into `device` from offset 0 and flushes; zero runs ({@link splitZeroRuns}) are
 * skipped (the device must read as zeros where nothing is written: a new volume does). Fails with the
 * device's `invalid` when the input is longer than the device.
 */
export async function loadDevice(
  source: LoadSource,
  device: Device,
  options: TransferOptions & { expectedBytes?: number } = {},
): Promise<TransferResult> {
  const chunkBytes = options.chunkBytes ?? TRANSFER_CHUNK_BYTES;
  const writes = new Set<Promise<void>>();
  let offset = 0;
  let dataBytes = 0;
  for (;;) {
    options.signal?.throwIfAborted();
    const chunk = new Uint8Array(chunkBytes);
    const filled = await readFull(source, chunk);
    if (filled === 0) break;
    const data = chunk.subarray(0, filled);
    if (offset + filled > device.sizeBytes) {
      throw invalid(`the input is longer than the device (${device.sizeBytes} bytes)`);
    }
    const chunkWrites: Promise<void>[] = [];
    let at = offset;
    for (const piece of splitZeroRuns(data, offset)) {
      if (typeof piece !== "number") {
        chunkWrites.push(device.writeAt(at, piece));
        dataBytes += piece.length;
      }
      at += typeof piece === "number" ? piece : piece.length;
    }
    if (chunkWrites.length > 0) {
      // One entry per chunk, so at most READ_AHEAD_CHUNKS chunks are held, however many writes.
      const write = Promise.all(chunkWrites).then(() => {});
      writes.add(write);
      void write.then(() => writes.delete(write), () => {});
      if (writes.size >= READ_AHEAD_CHUNKS) await Promise.race(writes);
    }
    offset += filled;
    options.onProgress?.(offset, options.expectedBytes ?? offset);
    if (filled < chunkBytes) break;
  }
  await Promise.all(writes);
  await device.flush();
  return { totalBytes: offset, dataBytes };
}

/** Reads until `into` is full or the source ends; returns the bytes read. */
async function readFull(source: LoadSource, into: Uint8Array): Promise<number> {
  let filled = 0;
  while (filled < into.length) {
    const got = await source.read(into.subarray(filled));
    assert(got >= 0 && got <= into.length - filled, "a source read more than it was given");
    if (got === 0) break;
    filled += got;
  }
  return filled;
}

/** Whether every byte is zero (a 32-bit word at a time where aligned). */
export function isAllZero(bytes: Uint8Array): boolean {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes.length - (bytes.length % 4) : 0;
  if (aligned > 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, aligned / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  }
  for (let i = aligned; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
