/**
 * An in-memory Device: sparse 4 KiB pages allocated on first write, so a large device costs
 * only what was written. Production code held to the whole Device contract (device.ts): used as
 * a scratch export, by the NBD tests and benchmarks, and as the reference the contract suite is
 * checked against.
 *
 * Invariants:
 * - A page that is absent reads as zeros; trim and write-zeroes without `noHole` drop whole pages
 *   inside the range and zero the partial ones; with `noHole` every page of the range exists.
 * - Every call does all of its work synchronously before returning its promise, so calls are
 *   atomic with respect to each other (overlapping writes land whole), `writeAt` has copied the
 *   caller's bytes before it returns, and nothing handed out aliases a page.
 * - Memory is volatile, so every resolved write is as durable as this device gets: `flush` and
 *   `fua` need no work. After `close`, every call fails with `closed` and the pages are freed.
 * - Hot path: a resolved call returns one shared resolved promise and aligned whole-page copies
 *   use `set` on the page itself, so a 4 KiB read or overwrite allocates nothing.
 * @module
 */

import { closed, invalid, TorusError } from "../core/mod.ts";
import { ErrorCode } from "../core/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "./device.ts";

/** Allocation unit, and the device's preferred I/O size. */
export const MEMORY_DEVICE_PAGE_BYTES = 4096;
const PAGE = MEMORY_DEVICE_PAGE_BYTES;
const SECTOR_BYTES = 512;

/** Options of {@link MemoryDevice}. */
export interface MemoryDeviceOptions {
  /** Size in bytes: a whole number of 512-byte sectors. */
  sizeBytes: number;
  /** Refuse writes with `read_only`. */
  readOnly?: boolean;
}

const resolved: Promise<void> = Promise.resolve();

/** A sparse in-memory block device. */
export class MemoryDevice implements Device {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly preferredBlockSizeBytes = PAGE;
  #pages: Map<number, Uint8Array> = new Map();
  #closed = false;

  constructor(options: MemoryDeviceOptions) {
    const { sizeBytes } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0 || sizeBytes % SECTOR_BYTES !== 0) {
      throw invalid(`device size ${sizeBytes} is not a whole number of 512-byte sectors`);
    }
    this.sizeBytes = sizeBytes;
    this.readOnly = options.readOnly ?? false;
  }

  /** Bytes of pages allocated (4 KiB per page ever written and not trimmed). */
  get allocatedBytes(): number {
    return this.#pages.size * PAGE;
  }

  /** A read-only copy of the current contents (a snapshot; costs a copy of every page). */
  snapshot(): MemoryDevice {
    const copy = new MemoryDevice({ sizeBytes: this.sizeBytes, readOnly: true });
    for (const [index, page] of this.#pages) copy.#pages.set(index, page.slice());
    return copy;
  }

  readAt(offsetBytes: number, into: Uint8Array, _options?: DeviceCallOptions): Promise<void> {
    const error = this.#check(offsetBytes, into.length, false);
    if (error) return Promise.reject(error);
    let at = 0;
    while (at < into.length) {
      const position = offsetBytes + at;
      const index = Math.floor(position / PAGE);
      const inPage = position - index * PAGE;
      const n = Math.min(PAGE - inPage, into.length - at);
      const page = this.#pages.get(index);
      if (page === undefined) into.fill(0, at, at + n);
      else if (n === PAGE) into.set(page, at);
      else into.set(page.subarray(inPage, inPage + n), at);
      at += n;
    }
    return resolved;
  }

  writeAt(offsetBytes: number, data: Uint8Array, _options?: DeviceWriteOptions): Promise<void> {
    const error = this.#check(offsetBytes, data.length, true);
    if (error) return Promise.reject(error);
    let at = 0;
    while (at < data.length) {
      const position = offsetBytes + at;
      const index = Math.floor(position / PAGE);
      const inPage = position - index * PAGE;
      const n = Math.min(PAGE - inPage, data.length - at);
      let page = this.#pages.get(index);
      if (page === undefined) {
        page = n === PAGE ? data.slice(at, at + PAGE) : new Uint8Array(PAGE);
        this.#pages.set(index, page);
        if (n === PAGE) {
          at += n;
          continue;
        }
      }
      page.set(n === data.length ? data : data.subarray(at, at + n), inPage);
      at += n;
    }
    return resolved;
  }

  flush(_options?: DeviceCallOptions): Promise<void> {
    if (this.#closed) return Promise.reject(closed("memory device is closed"));
    return resolved;
  }

  trim(offsetBytes: number, lengthBytes: number, _options?: DeviceWriteOptions): Promise<void> {
    const error = this.#check(offsetBytes, lengthBytes, true);
    if (error) return Promise.reject(error);
    this.#zero(offsetBytes, lengthBytes, false);
    return resolved;
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    const error = this.#check(offsetBytes, lengthBytes, true);
    if (error) return Promise.reject(error);
    this.#zero(offsetBytes, lengthBytes, options?.noHole ?? false);
    return resolved;
  }

  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    const error = this.#check(offsetBytes, lengthBytes, false);
    if (error) return Promise.reject(error);
    const end = offsetBytes + lengthBytes;
    const extents: DeviceExtent[] = [];
    const push = (from: number, to: number, zero: boolean) => {
      const last = extents.at(-1);
      if (last !== undefined && last.zero === zero) {
        extents[extents.length - 1] = { ...last, lengthBytes: to - last.offsetBytes };
      } else {
        extents.push({ offsetBytes: from, lengthBytes: to - from, zero });
      }
    };
    let position = offsetBytes;
    for (const index of this.#allocatedIndexes(offsetBytes, end)) {
      const pageStart = Math.max(index * PAGE, offsetBytes);
      if (pageStart > position) push(position, pageStart, true);
      const pageEnd = Math.min((index + 1) * PAGE, end);
      push(pageStart, pageEnd, false);
      position = pageEnd;
    }
    if (position < end) push(position, end, true);
    return Promise.resolve(extents);
  }

  close(): Promise<void> {
    this.#closed = true;
    this.#pages.clear();
    return resolved;
  }

  /** Sorted indexes of the allocated pages overlapping [start, end). */
  #allocatedIndexes(start: number, end: number): number[] {
    if (end <= start) return [];
    const first = Math.floor(start / PAGE);
    const last = Math.floor((end - 1) / PAGE);
    const indexes: number[] = [];
    // Walk whichever is smaller: the pages of the range, or the allocated pages.
    if (last - first + 1 <= this.#pages.size) {
      for (let index = first; index <= last; index++) {
        if (this.#pages.has(index)) indexes.push(index);
      }
      return indexes;
    }
    for (const index of this.#pages.keys()) {
      if (index >= first && index <= last) indexes.push(index);
    }
    return indexes.sort((a, b) => a - b);
  }

  /** Zeroes [offset, offset + length): drops whole pages unless `keepAllocated`. */
  #zero(offsetBytes: number, lengthBytes: number, keepAllocated: boolean): void {
    const end = offsetBytes + lengthBytes;
    let position = offsetBytes;
    while (position < end) {
      const index = Math.floor(position / PAGE);
      const inPage = position - index * PAGE;
      const n = Math.min(PAGE - inPage, end - position);
      const page = this.#pages.get(index);
      if (keepAllocated && page === undefined) this.#pages.set(index, new Uint8Array(PAGE));
      else if (page !== undefined && n === PAGE && !keepAllocated) this.#pages.delete(index);
      else page?.fill(0, inPage, inPage + n);
      position += n;
    }
  }

  #check(offsetBytes: number, lengthBytes: number, writes: boolean): TorusError | null {
    if (this.#closed) return closed("memory device is closed");
    if (writes && this.readOnly) {
      return new TorusError(ErrorCode.ReadOnly, "memory device is read-only");
    }
    if (
      !Number.isSafeInteger(offsetBytes) || offsetBytes < 0 ||
      !Number.isSafeInteger(lengthBytes) || lengthBytes < 0 ||
      offsetBytes + lengthBytes > this.sizeBytes
    ) {
      return invalid(
        `range ${offsetBytes}+${lengthBytes} is outside the device (${this.sizeBytes} bytes)`,
      );
    }
    return null;
  }
}
