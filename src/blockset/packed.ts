/**
 * Growable arrays of fixed-size entries packed into one buffer: the in-memory form of a layer's
 * per-index metadata (24-byte refs, 4-byte CRCs). The packed form is also the wire form, so
 * marshalling is one copy, and a map of 2 M indexes costs 48 MiB rather than 2 M objects.
 *
 * Invariants: bytes [0, length * entryBytes) hold the entries; every entry that was never set, or
 * was unset, equals `unsetEntry`; nothing outside this class sees the buffer except through
 * {@link PackedEntries.view}, whose result must not be kept.
 * @module
 */

import { assert, BLOCKSET_BLOCKS_MAX } from "../core/mod.ts";

/** A growable array of `entryBytes`-sized entries. */
export class PackedEntries {
  readonly entryBytes: number;
  readonly #unsetEntry: Uint8Array;
  readonly #unsetIsZero: boolean;
  #bytes: Uint8Array;
  #length = 0;

  constructor(unsetEntry: Uint8Array) {
    assert(unsetEntry.length > 0, "packed entries need a positive entry size");
    this.entryBytes = unsetEntry.length;
    this.#unsetEntry = unsetEntry.slice();
    this.#unsetIsZero = unsetEntry.every((byte) => byte === 0);
    this.#bytes = new Uint8Array(0);
  }

  /** Number of entries. */
  get length(): number {
    return this.#length;
  }

  /** The bytes of entry `index`, as a view into the buffer: read it at once, never keep it. */
  view(index: number): Uint8Array {
    assert(index >= 0 && index < this.#length, "packed entries: index out of range");
    const start = index * this.entryBytes;
    return this.#bytes.subarray(start, start + this.entryBytes);
  }

  /** The bytes of entries [0, length), as a view (for scans; never keep it). */
  viewAll(): Uint8Array {
    return this.#bytes.subarray(0, this.#length * this.entryBytes);
  }

  /** Whether entry `index` equals the unset entry. */
  isUnset(index: number): boolean {
    const entry = this.view(index);
    for (let i = 0; i < entry.length; i++) if (entry[i] !== this.#unsetEntry[i]) return false;
    return true;
  }

  /** Sets entry `index` (< length) or appends it (== length). */
  set(index: number, entry: Uint8Array): void {
    assert(entry.length === this.entryBytes, "packed entries: wrong entry size");
    assert(index >= 0 && index <= this.#length, "packed entries: set beyond the end");
    if (index === this.#length) this.resize(index + 1);
    this.#bytes.set(entry, index * this.entryBytes);
  }

  /** Grows with unset entries or cuts to `length` entries. */
  resize(length: number): void {
    assert(Number.isSafeInteger(length) && length >= 0, "packed entries: bad length");
    assert(length <= BLOCKSET_BLOCKS_MAX, "packed entries: length above the limit");
    const previous = this.#length;
    if (length > previous) {
      this.#reserve(length);
      this.#fillUnset(previous, length);
    }
    this.#length = length;
  }

  /** Unsets entries [from, to). */
  unset(from: number, to: number): void {
    assert(0 <= from && from <= to && to <= this.#length, "packed entries: bad unset range");
    this.#fillUnset(from, to);
  }

  /** A fresh copy of the bytes of entries [from, to). */
  copyRange(from: number, to: number): Uint8Array {
    assert(0 <= from && from <= to && to <= this.#length, "packed entries: bad copy range");
    return this.#bytes.slice(from * this.entryBytes, to * this.entryBytes);
  }

  /**
   * Overwrites entries from `from` with the packed entries in `bytes`, growing as needed; entries
   * between the old end and `from` become unset.
   */
  writeRange(from: number, bytes: Uint8Array): void {
    assert(bytes.length % this.entryBytes === 0, "packed entries: partial entry");
    const end = from + bytes.length / this.entryBytes;
    if (end > this.#length) this.resize(end);
    this.#bytes.set(bytes, from * this.entryBytes);
  }

  #reserve(length: number): void {
    const neededBytes = length * this.entryBytes;
    if (neededBytes <= this.#bytes.length) return;
    // Doubling keeps appends amortised O(1); an exact size avoids doubling a huge truncate.
    const doubled = Math.min(this.#bytes.length * 2, BLOCKSET_BLOCKS_MAX * this.entryBytes);
    const grown = new Uint8Array(Math.max(neededBytes, doubled, 64 * this.entryBytes));
    grown.set(this.#bytes.subarray(0, this.#length * this.entryBytes));
    this.#bytes = grown;
  }

  #fillUnset(from: number, to: number): void {
    if (from >= to) return;
    const start = from * this.entryBytes;
    const end = to * this.entryBytes;
    if (this.#unsetIsZero) {
      this.#bytes.fill(0, start, end);
      return;
    }
    this.#bytes.set(this.#unsetEntry, start);
    // Double the filled prefix each step: O(log n) copies for a large range.
    for (let filled = this.entryBytes; start + filled < end; filled *= 2) {
      this.#bytes.copyWithin(start + filled, start, Math.min(start + filled, end - filled));
    }
  }
}
