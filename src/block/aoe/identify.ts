/**
 * The ATA IDENTIFY DEVICE page (512 bytes, 256 little-endian words, ATA8-ACS) the AoE target
 * answers with, and a parser for it (the test initiator's, strict enough to read other targets').
 *
 * What the page claims, and why:
 * - LBA and 48-bit addressing (words 49, 83, 86), with the capacity in words 60–61 (capped at
 *   0x0FFFFFFF, as ATA requires of larger devices) and 100–103.
 * - A volatile write cache, supported and enabled (words 82/85 bit 5), and FLUSH CACHE and FLUSH
 *   CACHE EXT (words 83/86 bits 12–13): writes are durable only after a device flush, so an
 *   initiator must be told to send flushes.
 * - The power management feature set (words 82/85 bit 3), for CHECK POWER MODE.
 * - No TRIM (word 169 stays 0): the target does not implement DATA SET MANAGEMENT. The original
 *   claimed it and failed every TRIM.
 * - Strings (serial words 10–19, firmware 23–26, model 27–46) in ATA order: two characters per
 *   word, the first in the high byte, padded with spaces; characters outside printable ASCII
 *   become "_".
 * - Word 255 is the integrity word: 0xA5 in the low byte and, in the high byte, the value that
 *   makes all 512 bytes sum to 0 modulo 256.
 * @module
 */

import { invalid } from "../../core/mod.ts";
import { AOE_SECTOR_BYTES, ATA_LBA28_SECTORS_MAX, ATA_LBA48_SECTORS_MAX } from "./protocol.ts";

/** Bytes of an IDENTIFY DEVICE page. */
export const IDENTIFY_PAGE_BYTES = AOE_SECTOR_BYTES;
/** The model the target reports. */
export const IDENTIFY_MODEL_DEFAULT = "torus AoE";
/** The signature in the low byte of word 255. */
export const IDENTIFY_INTEGRITY_SIGNATURE = 0xa5;

const SERIAL_WORD = 10;
const SERIAL_CHARS = 20;
const FIRMWARE_WORD = 23;
const FIRMWARE_CHARS = 8;
const MODEL_WORD = 27;
const MODEL_CHARS = 40;
const LBA28_CAPACITY_MAX = ATA_LBA28_SECTORS_MAX - 1;

/** Word numbers and bits the page sets (ATA8-ACS names). */
const Word = {
  Capabilities: 49,
  CapabilitiesLbaSupported: 1 << 9,
  Lba28Capacity: 60,
  CommandSet1Supported: 82,
  CommandSet2Supported: 83,
  CommandSetExtension: 84,
  CommandSet1Enabled: 85,
  CommandSet2Enabled: 86,
  CommandSetDefault: 87,
  Lba48Capacity: 100,
  DataSetManagement: 169,
  Integrity: 255,
  /** Words 83, 84 and 87: bit 14 shall be one, bit 15 zero (the words are valid). */
  ValidSignature: 1 << 14,
  WriteCache: 1 << 5,
  PowerManagement: 1 << 3,
  FlushCacheExt: 1 << 13,
  FlushCache: 1 << 12,
  Lba48: 1 << 10,
  TrimSupported: 1 << 0,
} as const;

/** What the page describes. */
export interface IdentifyOptions {
  /** Capacity in 512-byte sectors (at most 2^48). */
  sectors: number;
  /** Serial number (up to 20 characters kept), e.g. derived from the volume's id. */
  serial: string;
  /** Firmware revision (up to 8 characters kept), e.g. the program version. */
  firmwareRevision: string;
  /** Model (up to 40 characters kept; default "torus AoE"). */
  model?: string;
  /**
   * Whether the volatile write cache is enabled (default true). Off for a write-through target:
   * every write is durable when answered, as the page then says.
   */
  writeCacheEnabled?: boolean;
}

/** Builds the IDENTIFY DEVICE page for a device. */
export function buildIdentifyPage(options: IdentifyOptions): Uint8Array {
  const { sectors } = options;
  if (!Number.isSafeInteger(sectors) || sectors < 0 || sectors > ATA_LBA48_SECTORS_MAX) {
    throw invalid(`IDENTIFY capacity of ${sectors} sectors is outside 0..2^48`);
  }
  const page = new Uint8Array(IDENTIFY_PAGE_BYTES);
  const view = new DataView(page.buffer);
  const setWord = (word: number, value: number) => view.setUint16(word * 2, value, true);
  setWord(0, 0x0040); // an ATA device (bit 15 zero), fixed (bit 6, obsolete but expected)
  setWord(47, 0x8000); // READ/WRITE MULTIPLE: no sectors per DRQ block (not supported)
  setWord(Word.Capabilities, Word.CapabilitiesLbaSupported);
  setWord(50, Word.ValidSignature);
  setWord(53, 0x0002); // words 64-70 are valid
  setWord(64, 0x0003); // PIO modes 3 and 4
  setWord(80, 0x01f0); // major version: ATA/ATAPI-4 to ATA8-ACS
  setWord(Word.CommandSet1Supported, Word.WriteCache | Word.PowerManagement);
  setWord(
    Word.CommandSet2Supported,
    Word.ValidSignature | Word.FlushCacheExt | Word.FlushCache | Word.Lba48,
  );
  setWord(Word.CommandSetExtension, Word.ValidSignature);
  setWord(
    Word.CommandSet1Enabled,
    (options.writeCacheEnabled ?? true ? Word.WriteCache : 0) | Word.PowerManagement,
  );
  setWord(Word.CommandSet2Enabled, Word.FlushCacheExt | Word.FlushCache | Word.Lba48);
  setWord(Word.CommandSetDefault, Word.ValidSignature);
  view.setUint32(Word.Lba28Capacity * 2, Math.min(sectors, LBA28_CAPACITY_MAX), true);
  view.setBigUint64(Word.Lba48Capacity * 2, BigInt(sectors), true);
  writeAtaString(page, SERIAL_WORD, SERIAL_CHARS, options.serial);
  writeAtaString(page, FIRMWARE_WORD, FIRMWARE_CHARS, options.firmwareRevision);
  writeAtaString(page, MODEL_WORD, MODEL_CHARS, options.model ?? IDENTIFY_MODEL_DEFAULT);
  page[510] = IDENTIFY_INTEGRITY_SIGNATURE;
  page[511] = integrityChecksum(page);
  return page;
}

/** The checksum byte that makes the 512 bytes of `page` (with its signature) sum to 0 mod 256. */
export function integrityChecksum(page: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < IDENTIFY_PAGE_BYTES - 1; i++) sum += page[i]!;
  return (256 - (sum % 256)) % 256;
}

/** What an initiator learns from an IDENTIFY DEVICE page. */
export interface IdentifyInfo {
  readonly model: string;
  readonly serial: string;
  readonly firmwareRevision: string;
  readonly lbaSupported: boolean;
  readonly lba48Supported: boolean;
  /** Words 60–61. */
  readonly lba28Sectors: number;
  /** Words 100–103. */
  readonly lba48Sectors: number;
  /** The capacity an initiator uses: LBA48's when supported, else LBA28's. */
  readonly sectors: number;
  readonly writeCacheSupported: boolean;
  readonly writeCacheEnabled: boolean;
  readonly flushCacheSupported: boolean;
  readonly flushCacheExtSupported: boolean;
  readonly trimSupported: boolean;
  /** Whether word 255 carries the signature (then its checksum was verified). */
  readonly integrityWordPresent: boolean;
}

/**
 * Parses an IDENTIFY DEVICE page. Throws `invalid` on a page that is not 512 bytes, whose
 * integrity word has the signature but a wrong checksum, or whose capacity does not fit 48 bits.
 */
export function parseIdentifyPage(page: Uint8Array): IdentifyInfo {
  if (page.length !== IDENTIFY_PAGE_BYTES) {
    throw invalid(`IDENTIFY page of ${page.length} bytes, not 512`);
  }
  const integrityWordPresent = page[510] === IDENTIFY_INTEGRITY_SIGNATURE;
  if (integrityWordPresent && page[511] !== integrityChecksum(page)) {
    throw invalid(
      `IDENTIFY integrity checksum is 0x${page[511]!.toString(16)}, ` +
        `expected 0x${integrityChecksum(page).toString(16)}`,
    );
  }
  const view = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const word = (n: number) => view.getUint16(n * 2, true);
  const lba48Wide = view.getBigUint64(Word.Lba48Capacity * 2, true);
  if (lba48Wide > BigInt(ATA_LBA48_SECTORS_MAX)) {
    throw invalid(`IDENTIFY LBA48 capacity ${lba48Wide} exceeds 2^48 sectors`);
  }
  const lba48Supported = (word(Word.CommandSet2Supported) & Word.Lba48) !== 0;
  const lba28Sectors = view.getUint32(Word.Lba28Capacity * 2, true);
  const lba48Sectors = Number(lba48Wide);
  return {
    model: readAtaString(page, MODEL_WORD, MODEL_CHARS),
    serial: readAtaString(page, SERIAL_WORD, SERIAL_CHARS),
    firmwareRevision: readAtaString(page, FIRMWARE_WORD, FIRMWARE_CHARS),
    lbaSupported: (word(Word.Capabilities) & Word.CapabilitiesLbaSupported) !== 0,
    lba48Supported,
    lba28Sectors,
    lba48Sectors,
    sectors: lba48Supported ? lba48Sectors : lba28Sectors,
    writeCacheSupported: (word(Word.CommandSet1Supported) & Word.WriteCache) !== 0,
    writeCacheEnabled: (word(Word.CommandSet1Enabled) & Word.WriteCache) !== 0,
    flushCacheSupported: (word(Word.CommandSet2Supported) & Word.FlushCache) !== 0,
    flushCacheExtSupported: (word(Word.CommandSet2Supported) & Word.FlushCacheExt) !== 0,
    trimSupported: (word(Word.DataSetManagement) & Word.TrimSupported) !== 0,
    integrityWordPresent,
  };
}

/** Writes `text` as an ATA string of `chars` characters starting at word `firstWord`. */
function writeAtaString(page: Uint8Array, firstWord: number, chars: number, text: string): void {
  const padded = Array.from(text.slice(0, chars).padEnd(chars, " "), (char) => {
    const code = char.charCodeAt(0);
    return code >= 0x20 && code <= 0x7e ? code : 0x5f; // "_"
  });
  // `Array.from` walks code points: a surrogate pair counted as two UTF-16 units above but is
  // one character here, so pad again.
  while (padded.length < chars) padded.push(0x20);
  for (let i = 0; i < chars; i += 2) {
    const at = (firstWord + i / 2) * 2;
    page[at] = padded[i + 1]!;
    page[at + 1] = padded[i]!;
  }
}

/** Reads an ATA string, trailing spaces removed. */
function readAtaString(page: Uint8Array, firstWord: number, chars: number): string {
  let text = "";
  for (let i = 0; i < chars; i += 2) {
    const at = (firstWord + i / 2) * 2;
    text += String.fromCharCode(page[at + 1]!, page[at]!);
  }
  return text.replace(/[ \0]+$/, "");
}
