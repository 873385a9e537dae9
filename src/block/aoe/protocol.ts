/**
 * The ATA-over-Ethernet codec (Coraid's "AoE Protocol Definition", revision 11): pure functions
 * that parse and encode whole Ethernet frames, with no I/O. The target (target.ts) and the test
 * initiator (initiator.ts) both speak through it.
 *
 * Frame layout (offsets from the start of the Ethernet frame, multi-byte fields big-endian except
 * the ATA LBA, which is little-endian as the ATA registers are):
 * - 0 Ethernet header: destination MAC (6), source MAC (6), EtherType 0x88A2 (2).
 * - 14 AoE header: version (high nibble, 1) | flags (low nibble: R response 0x08, E error 0x04),
 *   error (1), major (2), minor (1), command (1), tag (4).
 * - 24 command 0, Issue ATA Command: aflags (E LBA48 0x40, D 0x10, A async 0x02, W write 0x01),
 *   err/feature, sector count, cmd/status, lba0..lba5, 2 reserved; then data (36).
 * - 24 command 1, Query Config Information: buffer count (2), firmware version (2), sector
 *   count (1), AoE version (high nibble) | config command (low nibble), config string length (2,
 *   at most 1024), config string (32).
 *
 * Parsing is strict about what it reads and lenient about what follows: a frame may be shorter
 * than the 60-byte Ethernet minimum (the Linux aoe driver sends 32–36-byte requests) or longer
 * than its content (padding). Anything malformed throws `invalid` naming what is wrong; no other
 * exception type escapes a parser, whatever the bytes. Every encoder pads its frame with zeros to
 * ETHERNET_MIN_FRAME_BYTES, since veth, tap and bridges do not pad and real initiators drop short
 * frames (`pad: false` exists only for tests that need a short frame).
 * @module
 */

import { invalid } from "../../core/mod.ts";
import { AOE_ETHERTYPE, ETHERNET_HEADER_BYTES, ETHERNET_MIN_FRAME_BYTES } from "./port.ts";

/** The only protocol version there is. */
export const AOE_VERSION = 1;
/** Bytes of the AoE header after the Ethernet header. */
export const AOE_HEADER_BYTES = 10;
/** Bytes of the ATA command header after the AoE header. */
export const AOE_ATA_HEADER_BYTES = 12;
/** Bytes of the Query Config header (without the config string) after the AoE header. */
export const AOE_CONFIG_HEADER_BYTES = 8;
/** Offset of the command-specific part of a frame. */
export const AOE_BODY_OFFSET = ETHERNET_HEADER_BYTES + AOE_HEADER_BYTES;
/** Offset of the data of an ATA frame (36). */
export const AOE_ATA_DATA_OFFSET = AOE_BODY_OFFSET + AOE_ATA_HEADER_BYTES;
/** Offset of the config string of a config frame (32). */
export const AOE_CONFIG_STRING_OFFSET = AOE_BODY_OFFSET + AOE_CONFIG_HEADER_BYTES;
/** The longest config string. */
export const AOE_CONFIG_STRING_MAX_BYTES = 1024;
/** An ATA sector. */
export const AOE_SECTOR_BYTES = 512;
/** The broadcast shelf (major) and slot (minor): every target answers them. */
export const AOE_BROADCAST_MAJOR = 0xffff;
export const AOE_BROADCAST_MINOR = 0xff;
/** The largest shelf and slot a target may have (the next value is the broadcast one). */
export const AOE_MAJOR_MAX = 0xfffe;
export const AOE_MINOR_MAX = 0xfe;
/** The highest LBA48 sector count (the LBA is 48 bits). */
export const ATA_LBA48_SECTORS_MAX = 2 ** 48;
/** LBA28 addresses sectors below this. */
export const ATA_LBA28_SECTORS_MAX = 2 ** 28;

/** Flags of the AoE header's low nibble. */
export const AoeFlag = { Response: 0x08, Error: 0x04 } as const;

/** AoE commands. */
export const AoeCommand = {
  Ata: 0,
  QueryConfig: 1,
  MacMaskList: 2,
  ReserveRelease: 3,
} as const;

/** The AoE header's error codes (set with the E flag in a response). */
export const AoeError = {
  UnrecognizedCommand: 1,
  BadArgument: 2,
  DeviceUnavailable: 3,
  ConfigStringPresent: 4,
  UnsupportedVersion: 5,
  TargetReserved: 6,
} as const;

/** Names of {@link AoeError} codes, for messages. */
export const AOE_ERROR_NAMES: Readonly<Record<number, string>> = {
  1: "unrecognized command",
  2: "bad argument",
  3: "device unavailable",
  4: "config string present",
  5: "unsupported version",
  6: "target reserved",
};

/** Query Config sub-commands (the low nibble of the version/command byte). */
export const ConfigCommand = {
  Read: 0,
  Test: 1,
  TestPrefix: 2,
  Set: 3,
  ForceSet: 4,
} as const;

/** The aflags byte of an ATA command. */
export const AtaFlag = { Lba48: 0x40, Device: 0x10, Async: 0x02, Write: 0x01 } as const;

/** ATA commands the target knows. */
export const AtaCommand = {
  ReadSectors: 0x20,
  ReadSectorsExt: 0x24,
  WriteSectors: 0x30,
  WriteSectorsExt: 0x34,
  CheckPowerMode: 0xe5,
  FlushCache: 0xe7,
  FlushCacheExt: 0xea,
  IdentifyDevice: 0xec,
} as const;

/** Bits of the ATA status register. */
export const AtaStatus = {
  Busy: 0x80,
  DeviceReady: 0x40,
  DeviceFault: 0x20,
  SeekComplete: 0x10,
  DataRequest: 0x08,
  Error: 0x01,
} as const;

/** Status bits that make a reply a failure (what the Linux aoe driver checks: 0xa9). */
export const ATA_STATUS_FAILURE_MASK = AtaStatus.Busy | AtaStatus.DeviceFault |
  AtaStatus.DataRequest | AtaStatus.Error;

/** Bits of the ATA error register. */
export const AtaErrorBit = {
  InterfaceCrc: 0x80,
  Uncorrectable: 0x40,
  IdNotFound: 0x10,
  Abort: 0x04,
} as const;

/** CHECK POWER MODE's sector count for "active or idle". */
export const ATA_POWER_MODE_ACTIVE = 0xff;

/** The Ethernet header of a frame. */
export interface EthernetHeader {
  readonly destination: Uint8Array;
  readonly source: Uint8Array;
  readonly etherType: number;
}

/** The Ethernet and AoE headers of an AoE frame. */
export interface AoeHeader {
  readonly destination: Uint8Array;
  readonly source: Uint8Array;
  readonly version: number;
  readonly response: boolean;
  readonly errorFlag: boolean;
  readonly errorCode: number;
  readonly major: number;
  readonly minor: number;
  readonly command: number;
  readonly tag: number;
}

/** The ATA command header (request registers, or reply registers in a response). */
export interface AtaHeader {
  readonly flags: number;
  /** Feature register in a request, error register in a reply. */
  readonly errorFeature: number;
  readonly sectorCount: number;
  /** Command in a request, status in a reply. */
  readonly commandStatus: number;
  /** All 48 LBA bits as sent; LBA28 users mask it (see {@link ataLba}). */
  readonly lba: number;
}

/** The Query Config header and its string. */
export interface ConfigHeader {
  readonly bufferCount: number;
  readonly firmwareVersion: number;
  readonly sectorCount: number;
  readonly aoeVersion: number;
  readonly configCommand: number;
  readonly configString: Uint8Array;
}

/** A parsed AoE frame. */
export type AoeMessage =
  | {
    readonly kind: "ata";
    readonly header: AoeHeader;
    readonly ata: AtaHeader;
    /** Everything after the ATA header: data, padding, or both. */
    readonly data: Uint8Array;
  }
  | { readonly kind: "config"; readonly header: AoeHeader; readonly config: ConfigHeader }
  | { readonly kind: "other"; readonly header: AoeHeader; readonly body: Uint8Array }
  | { readonly kind: "error"; readonly header: AoeHeader; readonly body: Uint8Array };

/** What an encoder needs for the Ethernet and AoE headers (version is always 1). */
export interface AoeHeaderInit {
  readonly destination: Uint8Array;
  readonly source: Uint8Array;
  readonly response: boolean;
  /** A non-zero code sets the E flag. */
  readonly errorCode?: number;
  readonly major: number;
  readonly minor: number;
  readonly tag: number;
}

/** Reads the Ethernet header (any EtherType). */
export function parseEthernetHeader(frame: Uint8Array): EthernetHeader {
  if (frame.length < ETHERNET_HEADER_BYTES) {
    throw invalid(`Ethernet frame of ${frame.length} bytes is shorter than its 14-byte header`);
  }
  return {
    destination: frame.slice(0, 6),
    source: frame.slice(6, 12),
    etherType: readU16(frame, 12),
  };
}

/** Writes an Ethernet header at the start of `frame`. */
export function encodeEthernetHeader(frame: Uint8Array, header: EthernetHeader): void {
  checkMac(header.destination, "destination");
  checkMac(header.source, "source");
  frame.set(header.destination, 0);
  frame.set(header.source, 6);
  writeU16(frame, 12, header.etherType);
}

/**
 * Reads the Ethernet and AoE headers, whatever the version and flags, so a receiver can route a
 * frame (and answer a version it does not speak) before parsing the rest.
 */
export function parseAoeHeader(frame: Uint8Array): AoeHeader {
  const ethernet = parseEthernetHeader(frame);
  if (ethernet.etherType !== AOE_ETHERTYPE) {
    throw invalid(`EtherType 0x${ethernet.etherType.toString(16)} is not AoE (0x88a2)`);
  }
  if (frame.length < AOE_BODY_OFFSET) {
    throw invalid(`AoE frame of ${frame.length} bytes is shorter than its 24-byte headers`);
  }
  const versionFlags = frame[14]!;
  return {
    destination: ethernet.destination,
    source: ethernet.source,
    version: versionFlags >> 4,
    response: (versionFlags & AoeFlag.Response) !== 0,
    errorFlag: (versionFlags & AoeFlag.Error) !== 0,
    errorCode: frame[15]!,
    major: readU16(frame, 16),
    minor: frame[18]!,
    command: frame[19]!,
    tag: readU32(frame, 20),
  };
}

/** Parses a frame sent to a target: version 1, neither R nor E set. */
export function parseAoeRequest(frame: Uint8Array): AoeMessage {
  const header = parseAoeHeader(frame);
  checkVersion(header);
  if (header.response) throw invalid("AoE request has the response flag set");
  if (header.errorFlag) throw invalid("AoE request has the error flag set");
  return parseBody(frame, header);
}

/**
 * Parses a frame sent by a target: version 1, R set. With E set the body is not parsed (targets
 * echo what they like after the header) and the message is of kind "error".
 */
export function parseAoeResponse(frame: Uint8Array): AoeMessage {
  const header = parseAoeHeader(frame);
  checkVersion(header);
  if (!header.response) throw invalid("AoE response lacks the response flag");
  if (header.errorFlag) {
    if (header.errorCode === 0) throw invalid("AoE response has the error flag but no error code");
    return { kind: "error", header, body: frame.subarray(AOE_BODY_OFFSET) };
  }
  return parseBody(frame, header);
}

function checkVersion(header: AoeHeader): void {
  if (header.version !== AOE_VERSION) {
    throw invalid(`AoE version ${header.version} is not supported (only version 1)`);
  }
}

function parseBody(frame: Uint8Array, header: AoeHeader): AoeMessage {
  if (header.command === AoeCommand.Ata) {
    return {
      kind: "ata",
      header,
      ata: parseAtaHeader(frame),
      data: frame.subarray(AOE_ATA_DATA_OFFSET),
    };
  }
  if (header.command === AoeCommand.QueryConfig) {
    return { kind: "config", header, config: parseConfigHeader(frame) };
  }
  return { kind: "other", header, body: frame.subarray(AOE_BODY_OFFSET) };
}

/** Reads the ATA header of an ATA frame (the data is whatever follows it). */
export function parseAtaHeader(frame: Uint8Array): AtaHeader {
  if (frame.length < AOE_ATA_DATA_OFFSET) {
    throw invalid(`AoE ATA frame of ${frame.length} bytes is shorter than its 36-byte headers`);
  }
  let lba = 0;
  for (let i = 5; i >= 0; i--) lba = lba * 256 + frame[28 + i]!;
  return {
    flags: frame[24]!,
    errorFeature: frame[25]!,
    sectorCount: frame[26]!,
    commandStatus: frame[27]!,
    lba,
  };
}

/** Reads the Query Config header and string of a config frame. */
export function parseConfigHeader(frame: Uint8Array): ConfigHeader {
  if (frame.length < AOE_CONFIG_STRING_OFFSET) {
    throw invalid(`AoE config frame of ${frame.length} bytes is shorter than its 32-byte headers`);
  }
  const length = readU16(frame, 30);
  if (length > AOE_CONFIG_STRING_MAX_BYTES) {
    throw invalid(`AoE config string length ${length} exceeds the limit of 1024 bytes`);
  }
  const available = frame.length - AOE_CONFIG_STRING_OFFSET;
  if (length > available) {
    throw invalid(`AoE config string length ${length} exceeds the ${available} bytes that follow`);
  }
  return {
    bufferCount: readU16(frame, 24),
    firmwareVersion: readU16(frame, 26),
    sectorCount: frame[28]!,
    aoeVersion: frame[29]! >> 4,
    configCommand: frame[29]! & 0x0f,
    configString: frame.slice(AOE_CONFIG_STRING_OFFSET, AOE_CONFIG_STRING_OFFSET + length),
  };
}

/** Options of the encoders. */
export interface EncodeOptions {
  /** Pad to the 60-byte minimum (default true; false only to build short frames in tests). */
  pad?: boolean;
}

/**
 * Encodes an ATA frame with room for `dataBytes` of data after the header, filled from `data` when
 * given (else zeros, for the caller to fill in place: a target reads the device straight into it).
 */
export function encodeAtaFrame(
  init: AoeHeaderInit,
  ata: AtaHeader,
  dataBytes = 0,
  data?: Uint8Array,
  options?: EncodeOptions,
): Uint8Array {
  if (data !== undefined && data.length > dataBytes) {
    throw invalid(`ATA data of ${data.length} bytes exceeds the ${dataBytes} reserved`);
  }
  checkUint(ata.flags, 0xff, "aflags");
  checkUint(ata.errorFeature, 0xff, "err/feature");
  checkUint(ata.sectorCount, 0xff, "sector count");
  checkUint(ata.commandStatus, 0xff, "cmd/status");
  checkUint(ata.lba, ATA_LBA48_SECTORS_MAX - 1, "LBA");
  const frame = newFrame(AOE_ATA_DATA_OFFSET + dataBytes, options);
  encodeHeader(frame, init, AoeCommand.Ata);
  frame[24] = ata.flags;
  frame[25] = ata.errorFeature;
  frame[26] = ata.sectorCount;
  frame[27] = ata.commandStatus;
  let lba = ata.lba;
  for (let i = 0; i < 6; i++) {
    frame[28 + i] = lba % 256;
    lba = Math.floor(lba / 256);
  }
  if (data !== undefined) frame.set(data, AOE_ATA_DATA_OFFSET);
  return frame;
}

/** Encodes a Query Config frame. */
export function encodeConfigFrame(
  init: AoeHeaderInit,
  config: ConfigHeader,
  options?: EncodeOptions,
): Uint8Array {
  checkUint(config.bufferCount, 0xffff, "buffer count");
  checkUint(config.firmwareVersion, 0xffff, "firmware version");
  checkUint(config.sectorCount, 0xff, "sector count");
  checkUint(config.aoeVersion, 0x0f, "AoE version");
  checkUint(config.configCommand, 0x0f, "config command");
  const length = config.configString.length;
  if (length > AOE_CONFIG_STRING_MAX_BYTES) {
    throw invalid(`AoE config string of ${length} bytes exceeds the limit of 1024 bytes`);
  }
  const frame = newFrame(AOE_CONFIG_STRING_OFFSET + length, options);
  encodeHeader(frame, init, AoeCommand.QueryConfig);
  writeU16(frame, 24, config.bufferCount);
  writeU16(frame, 26, config.firmwareVersion);
  frame[28] = config.sectorCount;
  frame[29] = (config.aoeVersion << 4) | config.configCommand;
  writeU16(frame, 30, length);
  frame.set(config.configString, AOE_CONFIG_STRING_OFFSET);
  return frame;
}

/** Encodes a frame of any command with `body` after the AoE header (error replies, tests). */
export function encodeAoeFrame(
  init: AoeHeaderInit,
  command: number,
  body: Uint8Array,
  options?: EncodeOptions,
): Uint8Array {
  const frame = newFrame(AOE_BODY_OFFSET + body.length, options);
  encodeHeader(frame, init, command);
  frame.set(body, AOE_BODY_OFFSET);
  return frame;
}

function newFrame(contentBytes: number, options: EncodeOptions | undefined): Uint8Array {
  const pad = options?.pad ?? true;
  return new Uint8Array(pad ? Math.max(contentBytes, ETHERNET_MIN_FRAME_BYTES) : contentBytes);
}

function encodeHeader(frame: Uint8Array, init: AoeHeaderInit, command: number): void {
  const errorCode = init.errorCode ?? 0;
  checkUint(errorCode, 0xff, "error code");
  checkUint(init.major, 0xffff, "major");
  checkUint(init.minor, 0xff, "minor");
  checkUint(command, 0xff, "command");
  checkUint(init.tag, 0xffffffff, "tag");
  encodeEthernetHeader(frame, {
    destination: init.destination,
    source: init.source,
    etherType: AOE_ETHERTYPE,
  });
  const flags = (init.response ? AoeFlag.Response : 0) | (errorCode !== 0 ? AoeFlag.Error : 0);
  frame[14] = (AOE_VERSION << 4) | flags;
  frame[15] = errorCode;
  writeU16(frame, 16, init.major);
  frame[18] = init.minor;
  frame[19] = command;
  writeU32(frame, 20, init.tag);
}

/**
 * Sectors an ATA READ/WRITE covers: the sector count, where 0 means 256 (LBA28) or 65536 (LBA48)
 * as in ATA.
 */
export function ataSectorCount(ata: AtaHeader, lba48: boolean): number {
  if (ata.sectorCount !== 0) return ata.sectorCount;
  return lba48 ? 65536 : 256;
}

/**
 * The address an ATA command names: 48 bits with the E flag, else 28 bits (the high nibble of
 * lba3 is the device register, 0xE0 from the Linux driver, and lba4..5 are unused).
 */
export function ataLba(ata: AtaHeader, lba48: boolean): number {
  return lba48 ? ata.lba : ata.lba % ATA_LBA28_SECTORS_MAX;
}

/** How many whole sectors fit in one frame's data at this MTU (0 when not even one does). */
export function sectorsPerFrame(mtu: number): number {
  const dataBytes = mtu - AOE_HEADER_BYTES - AOE_ATA_HEADER_BYTES;
  return Math.max(0, Math.min(0xff, Math.floor(dataBytes / AOE_SECTOR_BYTES)));
}

/**
 * The sectors per frame a target offers at `mtu`: what fits, rounded down to whole 4 KiB pages
 * when at least one fits (16 at MTU 9000, not 17), so a page-aligned request of the initiator
 * stays aligned frame after frame (the Linux driver uses the smaller of this and what its own
 * MTU allows); storage with 4 KiB sectors then never merges a partial one.
 */
export function offeredSectorsPerFrame(mtu: number): number {
  const fit = sectorsPerFrame(mtu);
  const page = 4096 / AOE_SECTOR_BYTES;
  return fit >= page ? fit - (fit % page) : fit;
}

/** Whether a MAC is the broadcast address. */
export function isBroadcastMac(mac: Uint8Array): boolean {
  return mac.length === 6 && mac.every((byte) => byte === 0xff);
}

/** Whether two MACs are equal. */
export function sameMac(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A MAC as aa:bb:cc:dd:ee:ff. */
export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (byte) => byte.toString(16).padStart(2, "0")).join(":");
}

function checkMac(mac: Uint8Array, what: string): void {
  if (mac.length !== 6) throw invalid(`${what} MAC has ${mac.length} bytes, not 6`);
}

function checkUint(value: number, max: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0 || value > max) {
    throw invalid(`AoE ${what} ${value} is outside 0..${max}`);
  }
}

function readU16(frame: Uint8Array, at: number): number {
  return (frame[at]! << 8) | frame[at + 1]!;
}

function readU32(frame: Uint8Array, at: number): number {
  return ((frame[at]! << 24) | (frame[at + 1]! << 16) | (frame[at + 2]! << 8) | frame[at + 3]!) >>>
    0;
}

function writeU16(frame: Uint8Array, at: number, value: number): void {
  frame[at] = value >> 8;
  frame[at + 1] = value & 0xff;
}

function writeU32(frame: Uint8Array, at: number, value: number): void {
  frame[at] = value >>> 24;
  frame[at + 1] = (value >>> 16) & 0xff;
  frame[at + 2] = (value >>> 8) & 0xff;
  frame[at + 3] = value & 0xff;
}
