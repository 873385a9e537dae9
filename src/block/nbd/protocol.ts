/**
 * The NBD wire format (NetworkBlockDevice/nbd doc/proto.md): constants named as the spec names
 * them, and encoders/decoders for the fixed newstyle handshake, options, option replies, info
 * replies, metadata context options, transmission requests, simple replies and structured reply
 * chunks (content, block status, error). Pure: no I/O, no clock.
 *
 * Invariants:
 * - Every integer on the wire is big-endian (network byte order).
 * - Handshake and chunk payload decoders take exactly the bytes of one message and throw only a
 *   TorusError with code `invalid` on garbage (wrong magic, short, long or inconsistent input,
 *   bad UTF-8 in a string, a zero length where the spec demands a nonzero one).
 * - The transmission hot path ({@link decodeRequestHeader}, {@link encodeSimpleReply}) works on a
 *   caller's DataView at an offset and fills a caller's record, so decoding a request allocates
 *   nothing; a bad magic is reported by the return value, never thrown.
 * - The 64-bit handle is opaque: it travels as two unsigned 32-bit halves, so no BigInt is
 *   created per request. 64-bit offsets become numbers; an offset of 2^53 or more loses
 *   precision but stays >= 2^53, which is beyond every export, so range checks still reject it.
 * @module
 */

import { invalid } from "../../core/mod.ts";

// ---------------------------------------------------------------------------------------------
// Magic numbers.

/** `NBDMAGIC`, the first 8 bytes the server sends (also known as INIT_PASSWD). */
export const NBDMAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: newstyle negotiation, and the prefix of every option the client sends. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply (the spec calls it the "magic number for replies"). */
export const NBD_REP_MAGIC = 0x3e889045565a9n;
/** Magic of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk (sent only after NBD_OPT_STRUCTURED_REPLY). */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---------------------------------------------------------------------------------------------
// Handshake flags (server, 16 bits) and client flags (32 bits).

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---------------------------------------------------------------------------------------------
// Transmission flags (16 bits).

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---------------------------------------------------------------------------------------------
// Options.

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

// ---------------------------------------------------------------------------------------------
// Option reply types. Errors have bit 31 set.

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

/** Whether an option reply type is an error (bit 31 set). */
export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_FLAG_ERROR;
}

// ---------------------------------------------------------------------------------------------
// Information types of NBD_REP_INFO.

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ---------------------------------------------------------------------------------------------
// Commands and command flags.

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---------------------------------------------------------------------------------------------
// Structured replies: chunk flags and types, and the base:allocation context's status flags.

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
const NBD_REPLY_TYPE_ERROR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERROR_BIT + 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_BIT + 2;

/** Whether a chunk type is an error chunk (bit 15 set), known or not. */
export function isErrorChunkType(type: number): boolean {
  return (type & NBD_REPLY_TYPE_ERROR_BIT) !== 0;
}

/** base:allocation: the extent is not allocated. */
export const NBD_STATE_HOLE = 1 << 0;
/** base:allocation: the extent reads as zeros. */
export const NBD_STATE_ZERO = 1 << 1;

/** The one metadata context the spec defines. */
export const NBD_META_CONTEXT_BASE_ALLOCATION = "base:allocation";

// ---------------------------------------------------------------------------------------------
// Error values of the reply's error field.

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

// ---------------------------------------------------------------------------------------------
// Message sizes.

/** Server greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export const NBD_GREETING_BYTES = 18;
/** Client flags. */
export const NBD_CLIENT_FLAGS_BYTES = 4;
/** Option header: IHAVEOPT, option, data length. */
export const NBD_OPTION_HEADER_BYTES = 16;
/** Option reply header: magic, option, reply type, data length. */
export const NBD_OPTION_REPLY_HEADER_BYTES = 20;
/** Reply to NBD_OPT_EXPORT_NAME without the 124 zero bytes: size, transmission flags. */
export const NBD_EXPORT_NAME_REPLY_BYTES = 10;
/** The reserved zeroes after an NBD_OPT_EXPORT_NAME reply, unless NO_ZEROES was negotiated. */
export const NBD_EXPORT_NAME_ZEROES_BYTES = 124;
/** Transmission request header (a WRITE's payload follows it). */
export const NBD_REQUEST_HEADER_BYTES = 28;
/** Simple reply header (a successful READ's data follows it). */
export const NBD_SIMPLE_REPLY_BYTES = 16;
/** Structured reply chunk header: magic, flags, type, handle, payload length. */
export const NBD_STRUCTURED_REPLY_HEADER_BYTES = 20;
/** What precedes the data of an NBD_REPLY_TYPE_OFFSET_DATA chunk: header and 64-bit offset. */
export const NBD_OFFSET_DATA_PREFIX_BYTES = NBD_STRUCTURED_REPLY_HEADER_BYTES + 8;
/** A whole NBD_REPLY_TYPE_OFFSET_HOLE chunk: header, 64-bit offset, 32-bit hole size. */
export const NBD_OFFSET_HOLE_CHUNK_BYTES = NBD_STRUCTURED_REPLY_HEADER_BYTES + 12;
/** Room a server leaves in front of read data for either reply header (simple or OFFSET_DATA). */
export const NBD_READ_REPLY_PREFIX_MAX_BYTES = 32;
/** Longest string (export name, message) the spec allows. */
export const NBD_STRING_MAX_BYTES = 4096;

const U32_SPAN = 2 ** 32;

// ---------------------------------------------------------------------------------------------
// Strings.

const utf8Encoder = new TextEncoder();
const utf8StrictDecoder = new TextDecoder("utf-8", { fatal: true });
const utf8LenientDecoder = new TextDecoder("utf-8");

/** A spec string (export name) as UTF-8; `invalid` if it has NUL or exceeds 4096 bytes. */
export function encodeString(text: string): Uint8Array {
  const bytes = utf8Encoder.encode(text);
  if (bytes.length > NBD_STRING_MAX_BYTES) throw invalid("NBD string longer than 4096 bytes");
  if (bytes.includes(0)) throw invalid("NBD string contains NUL");
  return bytes;
}

/** Decodes a spec string strictly: valid UTF-8, no NUL, at most 4096 bytes. */
export function decodeString(bytes: Uint8Array): string {
  if (bytes.length > NBD_STRING_MAX_BYTES) throw invalid("NBD string longer than 4096 bytes");
  if (bytes.includes(0)) throw invalid("NBD string contains NUL");
  try {
    return utf8StrictDecoder.decode(bytes);
  } catch {
    throw invalid("NBD string is not valid UTF-8");
  }
}

/** Decodes a human-readable message (an error reply's data), replacing bad UTF-8. */
export function decodeMessage(bytes: Uint8Array): string {
  return utf8LenientDecoder.decode(bytes.subarray(0, NBD_STRING_MAX_BYTES));
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function expectLength(bytes: Uint8Array, lengthBytes: number, what: string): DataView {
  if (bytes.length !== lengthBytes) {
    throw invalid(`${what}: expected ${lengthBytes} bytes, got ${bytes.length}`);
  }
  return viewOf(bytes);
}

/** A 64-bit size as a safe number; `invalid` beyond 2^53 - 1. */
function readSize(view: DataView, at: number, what: string): number {
  const size = view.getBigUint64(at);
  if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what}: size ${size} too large`);
  return Number(size);
}

// ---------------------------------------------------------------------------------------------
// Greeting and client flags.

/** The server's first message: NBDMAGIC, IHAVEOPT and the handshake flags. */
export function encodeGreeting(handshakeFlags: number): Uint8Array {
  const bytes = new Uint8Array(NBD_GREETING_BYTES);
  const view = viewOf(bytes);
  view.setBigUint64(0, NBDMAGIC);
  view.setBigUint64(8, IHAVEOPT);
  view.setUint16(16, handshakeFlags);
  return bytes;
}

/** Decodes the greeting; `invalid` unless it is a newstyle greeting. */
export function decodeGreeting(bytes: Uint8Array): { handshakeFlags: number } {
  const view = expectLength(bytes, NBD_GREETING_BYTES, "NBD greeting");
  if (view.getBigUint64(0) !== NBDMAGIC) throw invalid("not an NBD server (bad NBDMAGIC)");
  if (view.getBigUint64(8) !== IHAVEOPT) {
    throw invalid("NBD server does not speak newstyle negotiation (oldstyle is not supported)");
  }
  return { handshakeFlags: view.getUint16(16) };
}

/** The client's 32-bit flags. */
export function encodeClientFlags(clientFlags: number): Uint8Array {
  const bytes = new Uint8Array(NBD_CLIENT_FLAGS_BYTES);
  viewOf(bytes).setUint32(0, clientFlags >>> 0);
  return bytes;
}

/** Decodes the client flags (any value; the server checks them against what it offered). */
export function decodeClientFlags(bytes: Uint8Array): number {
  return expectLength(bytes, NBD_CLIENT_FLAGS_BYTES, "NBD client flags").getUint32(0);
}

// ---------------------------------------------------------------------------------------------
// Options (client to server).

/** The header of one option. */
export interface OptionHeader {
  option: number;
  lengthBytes: number;
}

/** One option: IHAVEOPT, the option code, the data length and the data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const bytes = new Uint8Array(NBD_OPTION_HEADER_BYTES + data.length);
  const view = viewOf(bytes);
  view.setBigUint64(0, IHAVEOPT);
  view.setUint32(8, option >>> 0);
  view.setUint32(12, data.length);
  bytes.set(data, NBD_OPTION_HEADER_BYTES);
  return bytes;
}

/** Decodes an option header; `invalid` on a wrong magic. The length is not bounded here. */
export function decodeOptionHeader(bytes: Uint8Array): OptionHeader {
  const view = expectLength(bytes, NBD_OPTION_HEADER_BYTES, "NBD option header");
  if (view.getBigUint64(0) !== IHAVEOPT) throw invalid("NBD option without IHAVEOPT magic");
  return { option: view.getUint32(8), lengthBytes: view.getUint32(12) };
}

/** What NBD_OPT_INFO and NBD_OPT_GO carry: an export name and the information requested. */
export interface InfoRequest {
  name: string;
  infoTypes: number[];
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO. */
export function encodeInfoRequest(request: InfoRequest): Uint8Array {
  const name = encodeString(request.name);
  const bytes = new Uint8Array(4 + name.length + 2 + 2 * request.infoTypes.length);
  const view = viewOf(bytes);
  view.setUint32(0, name.length);
  bytes.set(name, 4);
  view.setUint16(4 + name.length, request.infoTypes.length);
  request.infoTypes.forEach((type, i) => view.setUint16(6 + name.length + 2 * i, type));
  return bytes;
}

/** Decodes the data of NBD_OPT_INFO / NBD_OPT_GO; `invalid` when lengths disagree. */
export function decodeInfoRequest(data: Uint8Array): InfoRequest {
  if (data.length < 6) throw invalid("NBD info request shorter than 6 bytes");
  const view = viewOf(data);
  const nameBytes = view.getUint32(0);
  if (nameBytes > data.length - 6) throw invalid("NBD info request: name longer than the data");
  const name = decodeString(data.subarray(4, 4 + nameBytes));
  const count = view.getUint16(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) {
    throw invalid("NBD info request: information list does not match the data length");
  }
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(view.getUint16(6 + nameBytes + 2 * i));
  return { name, infoTypes };
}

// ---------------------------------------------------------------------------------------------
// Option replies (server to client).

/** The header of one option reply. */
export interface OptionReplyHeader {
  option: number;
  replyType: number;
  lengthBytes: number;
}

/** One option reply: magic, the option it answers, its type, the data length and the data. */
export function encodeOptionReply(
  option: number,
  replyType: number,
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(NBD_OPTION_REPLY_HEADER_BYTES + data.length);
  const view = viewOf(bytes);
  view.setBigUint64(0, NBD_REP_MAGIC);
  view.setUint32(8, option >>> 0);
  view.setUint32(12, replyType >>> 0);
  view.setUint32(16, data.length);
  bytes.set(data, NBD_OPTION_REPLY_HEADER_BYTES);
  return bytes;
}

/** An error reply with a human-readable message (truncated to the spec's 4096 bytes). */
export function encodeOptionError(option: number, replyType: number, message: string): Uint8Array {
  return encodeOptionReply(option, replyType, messageBytes(message));
}

/** Decodes an option reply header; `invalid` on a wrong magic. */
export function decodeOptionReplyHeader(bytes: Uint8Array): OptionReplyHeader {
  const view = expectLength(bytes, NBD_OPTION_REPLY_HEADER_BYTES, "NBD option reply header");
  if (view.getBigUint64(0) !== NBD_REP_MAGIC) throw invalid("NBD option reply with a bad magic");
  return {
    option: view.getUint32(8),
    replyType: view.getUint32(12),
    lengthBytes: view.getUint32(16),
  };
}

/** The data of NBD_REP_SERVER: the export name, then an optional description. */
export function encodeServerReplyData(name: string, description = ""): Uint8Array {
  const nameBytes = encodeString(name);
  const descriptionBytes = encodeString(description);
  const bytes = new Uint8Array(4 + nameBytes.length + descriptionBytes.length);
  viewOf(bytes).setUint32(0, nameBytes.length);
  bytes.set(nameBytes, 4);
  bytes.set(descriptionBytes, 4 + nameBytes.length);
  return bytes;
}

/** Decodes the data of NBD_REP_SERVER; `invalid` when the name overruns the data. */
export function decodeServerReplyData(data: Uint8Array): { name: string; description: string } {
  if (data.length < 4) throw invalid("NBD_REP_SERVER shorter than 4 bytes");
  const nameBytes = viewOf(data).getUint32(0);
  if (nameBytes > data.length - 4) throw invalid("NBD_REP_SERVER: name longer than the data");
  return {
    name: decodeString(data.subarray(4, 4 + nameBytes)),
    description: decodeMessage(data.subarray(4 + nameBytes)),
  };
}

/** Block size constraints of NBD_INFO_BLOCK_SIZE. */
export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

/** One NBD_REP_INFO payload, decoded. Unknown types keep their raw data. */
export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; sizeBytes: number; transmissionFlags: number }
  | { type: typeof NBD_INFO_NAME; name: string }
  | { type: typeof NBD_INFO_DESCRIPTION; description: string }
  | ({ type: typeof NBD_INFO_BLOCK_SIZE } & BlockSizeConstraints)
  | { type: "unknown"; infoType: number; data: Uint8Array };

/** The data of an NBD_REP_INFO reply. */
export function encodeInfoReply(info: InfoReply): Uint8Array {
  switch (info.type) {
    case NBD_INFO_EXPORT: {
      const bytes = new Uint8Array(12);
      const view = viewOf(bytes);
      view.setUint16(0, NBD_INFO_EXPORT);
      view.setBigUint64(2, BigInt(info.sizeBytes));
      view.setUint16(10, info.transmissionFlags);
      return bytes;
    }
    case NBD_INFO_NAME:
      return typedString(NBD_INFO_NAME, encodeString(info.name));
    case NBD_INFO_DESCRIPTION:
      return typedString(NBD_INFO_DESCRIPTION, encodeString(info.description));
    case NBD_INFO_BLOCK_SIZE: {
      const bytes = new Uint8Array(14);
      const view = viewOf(bytes);
      view.setUint16(0, NBD_INFO_BLOCK_SIZE);
      view.setUint32(2, info.minimumBytes);
      view.setUint32(6, info.preferredBytes);
      view.setUint32(10, info.maximumBytes);
      return bytes;
    }
    case "unknown":
      return typedString(info.infoType, info.data);
  }
}

function typedString(type: number, payload: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(2 + payload.length);
  viewOf(bytes).setUint16(0, type);
  bytes.set(payload, 2);
  return bytes;
}

/** Decodes the data of an NBD_REP_INFO reply; `invalid` when a known type has a bad length. */
export function decodeInfoReply(data: Uint8Array): InfoReply {
  if (data.length < 2) throw invalid("NBD_REP_INFO shorter than 2 bytes");
  const view = viewOf(data);
  const type = view.getUint16(0);
  switch (type) {
    case NBD_INFO_EXPORT:
      expectLength(data, 12, "NBD_INFO_EXPORT");
      return {
        type,
        sizeBytes: readSize(view, 2, "NBD_INFO_EXPORT"),
        transmissionFlags: view.getUint16(10),
      };
    case NBD_INFO_NAME:
      return { type, name: decodeString(data.subarray(2)) };
    case NBD_INFO_DESCRIPTION:
      return { type, description: decodeMessage(data.subarray(2)) };
    case NBD_INFO_BLOCK_SIZE:
      expectLength(data, 14, "NBD_INFO_BLOCK_SIZE");
      return {
        type,
        minimumBytes: view.getUint32(2),
        preferredBytes: view.getUint32(6),
        maximumBytes: view.getUint32(10),
      };
    default:
      return { type: "unknown", infoType: type, data: data.slice(2) };
  }
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and, unless NO_ZEROES, 124 zeroes. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Uint8Array {
  const zeroes = noZeroes ? 0 : NBD_EXPORT_NAME_ZEROES_BYTES;
  const bytes = new Uint8Array(NBD_EXPORT_NAME_REPLY_BYTES + zeroes);
  const view = viewOf(bytes);
  view.setBigUint64(0, BigInt(sizeBytes));
  view.setUint16(8, transmissionFlags);
  return bytes;
}

/** Decodes the first 10 bytes of the NBD_OPT_EXPORT_NAME reply. */
export function decodeExportNameReply(
  bytes: Uint8Array,
): { sizeBytes: number; transmissionFlags: number } {
  const view = expectLength(bytes, NBD_EXPORT_NAME_REPLY_BYTES, "NBD export reply");
  return { sizeBytes: readSize(view, 0, "NBD export reply"), transmissionFlags: view.getUint16(8) };
}

// ---------------------------------------------------------------------------------------------
// Transmission: requests and simple replies, allocation-free.

/** A decoded request header. Reused: the decoder overwrites every field. */
export interface RequestHeader {
  flags: number;
  type: number;
  /** The client's opaque handle, high and low 32 bits. */
  handleHigh: number;
  handleLow: number;
  offsetBytes: number;
  lengthBytes: number;
}

/** A fresh, zeroed request record (allocate once, reuse for every request). */
export function newRequestHeader(): RequestHeader {
  return { flags: 0, type: 0, handleHigh: 0, handleLow: 0, offsetBytes: 0, lengthBytes: 0 };
}

/**
 * Decodes the 28-byte request header at `at` into `into`. Returns false (and leaves `into`
 * unspecified) when the magic is wrong; the caller guarantees 28 readable bytes.
 */
export function decodeRequestHeader(view: DataView, at: number, into: RequestHeader): boolean {
  if (view.getUint32(at) !== NBD_REQUEST_MAGIC) return false;
  into.flags = view.getUint16(at + 4);
  into.type = view.getUint16(at + 6);
  into.handleHigh = view.getUint32(at + 8);
  into.handleLow = view.getUint32(at + 12);
  into.offsetBytes = view.getUint32(at + 16) * U32_SPAN + view.getUint32(at + 20);
  into.lengthBytes = view.getUint32(at + 24);
  return true;
}

/** Encodes a 28-byte request header at `at` (the offset must be a safe integer). */
export function encodeRequestHeader(view: DataView, at: number, header: RequestHeader): void {
  view.setUint32(at, NBD_REQUEST_MAGIC);
  view.setUint16(at + 4, header.flags);
  view.setUint16(at + 6, header.type);
  view.setUint32(at + 8, header.handleHigh);
  view.setUint32(at + 12, header.handleLow);
  view.setUint32(at + 16, Math.floor(header.offsetBytes / U32_SPAN));
  view.setUint32(at + 20, header.offsetBytes >>> 0);
  view.setUint32(at + 24, header.lengthBytes);
}

/** Encodes a 16-byte simple reply header at `at`. */
export function encodeSimpleReply(
  view: DataView,
  at: number,
  reply: { error: number; handleHigh: number; handleLow: number },
): void {
  view.setUint32(at, NBD_SIMPLE_REPLY_MAGIC);
  view.setUint32(at + 4, reply.error);
  view.setUint32(at + 8, reply.handleHigh);
  view.setUint32(at + 12, reply.handleLow);
}

/** A decoded simple reply header. Reused like {@link RequestHeader}. */
export interface SimpleReply {
  error: number;
  handleHigh: number;
  handleLow: number;
}

/** Decodes a simple reply header at `at`; false when the magic is not the simple reply's. */
export function decodeSimpleReply(view: DataView, at: number, into: SimpleReply): boolean {
  if (view.getUint32(at) !== NBD_SIMPLE_REPLY_MAGIC) return false;
  into.error = view.getUint32(at + 4);
  into.handleHigh = view.getUint32(at + 8);
  into.handleLow = view.getUint32(at + 12);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Metadata contexts (NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT).

/** The data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** Encodes a metadata context request. */
export function encodeMetaContextRequest(request: MetaContextRequest): Uint8Array {
  const name = encodeString(request.exportName);
  const queries = request.queries.map(encodeString);
  const total = 8 + name.length + queries.reduce((sum, q) => sum + 4 + q.length, 0);
  const bytes = new Uint8Array(total);
  const view = viewOf(bytes);
  view.setUint32(0, name.length);
  bytes.set(name, 4);
  let at = 4 + name.length;
  view.setUint32(at, queries.length);
  at += 4;
  for (const query of queries) {
    view.setUint32(at, query.length);
    bytes.set(query, at + 4);
    at += 4 + query.length;
  }
  return bytes;
}

/**
 * Decodes a metadata context request; `invalid` when a length overruns the data, the query count
 * cannot fit, bytes are left over, or a string is not a valid spec string.
 */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest {
  if (data.length < 8) throw invalid("NBD meta context request shorter than 8 bytes");
  const view = viewOf(data);
  const nameBytes = view.getUint32(0);
  if (nameBytes > data.length - 8) {
    throw invalid("NBD meta context request: export name longer than the data");
  }
  const exportName = decodeString(data.subarray(4, 4 + nameBytes));
  let at = 4 + nameBytes;
  const count = view.getUint32(at);
  at += 4;
  // Each query takes at least its 4-byte length: a count that cannot fit is rejected up front,
  // so a forged count never drives a long loop.
  if (count > (data.length - at) / 4) {
    throw invalid(`NBD meta context request: ${count} queries do not fit the data`);
  }
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) throw invalid("NBD meta context request: truncated query");
    const queryBytes = view.getUint32(at);
    if (queryBytes > data.length - at - 4) {
      throw invalid("NBD meta context request: query longer than the data");
    }
    queries.push(decodeString(data.subarray(at + 4, at + 4 + queryBytes)));
    at += 4 + queryBytes;
  }
  if (at !== data.length) throw invalid("NBD meta context request: bytes after the last query");
  return { exportName, queries };
}

/** The data of NBD_REP_META_CONTEXT: a context id and the context's name. */
export function encodeMetaContextReply(contextId: number, name: string): Uint8Array {
  const nameBytes = encodeString(name);
  const bytes = new Uint8Array(4 + nameBytes.length);
  viewOf(bytes).setUint32(0, contextId >>> 0);
  bytes.set(nameBytes, 4);
  return bytes;
}

/** Decodes the data of NBD_REP_META_CONTEXT; `invalid` when short or the name is bad. */
export function decodeMetaContextReply(data: Uint8Array): { contextId: number; name: string } {
  if (data.length < 4) throw invalid("NBD_REP_META_CONTEXT shorter than 4 bytes");
  return { contextId: viewOf(data).getUint32(0), name: decodeString(data.subarray(4)) };
}

// ---------------------------------------------------------------------------------------------
// Structured reply chunks.

/** A decoded structured reply chunk header. Reused like {@link RequestHeader}. */
export interface StructuredReplyHeader {
  flags: number;
  type: number;
  handleHigh: number;
  handleLow: number;
  /** Length of the payload that follows the header. */
  lengthBytes: number;
}

/** A fresh, zeroed chunk header record. */
export function newStructuredReplyHeader(): StructuredReplyHeader {
  return { flags: 0, type: 0, handleHigh: 0, handleLow: 0, lengthBytes: 0 };
}

/** Encodes a 20-byte structured reply chunk header at `at`. */
export function encodeStructuredReplyHeader(
  view: DataView,
  at: number,
  header: StructuredReplyHeader,
): void {
  view.setUint32(at, NBD_STRUCTURED_REPLY_MAGIC);
  view.setUint16(at + 4, header.flags);
  view.setUint16(at + 6, header.type);
  view.setUint32(at + 8, header.handleHigh);
  view.setUint32(at + 12, header.handleLow);
  view.setUint32(at + 16, header.lengthBytes);
}

/** Decodes a whole 20-byte chunk header at `at`; false when the magic is not a chunk's. */
export function decodeStructuredReplyHeader(
  view: DataView,
  at: number,
  into: StructuredReplyHeader,
): boolean {
  if (decodeReplyStart(view, at, into) !== NBD_STRUCTURED_REPLY_MAGIC) return false;
  into.lengthBytes = view.getUint32(at + 16);
  return true;
}

/**
 * Decodes the 16 bytes a simple reply header and a chunk header share (magic, flags+type or
 * error, handle): returns the magic, so the caller knows whether 4 more bytes (the chunk's
 * payload length) follow. Fills `into` only for a structured reply.
 */
export function decodeReplyStart(
  view: DataView,
  at: number,
  into: StructuredReplyHeader,
): number {
  const magic = view.getUint32(at);
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
    into.flags = view.getUint16(at + 4);
    into.type = view.getUint16(at + 6);
    into.handleHigh = view.getUint32(at + 8);
    into.handleLow = view.getUint32(at + 12);
  }
  return magic;
}

/** A whole chunk: header for `handle` and `payload`. */
export function encodeChunk(
  header: Omit<StructuredReplyHeader, "lengthBytes">,
  payload: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(NBD_STRUCTURED_REPLY_HEADER_BYTES + payload.length);
  encodeStructuredReplyHeader(viewOf(bytes), 0, { ...header, lengthBytes: payload.length });
  bytes.set(payload, NBD_STRUCTURED_REPLY_HEADER_BYTES);
  return bytes;
}

/** The 8-byte offset that opens OFFSET_DATA and OFFSET_HOLE payloads; `invalid` beyond 2^53. */
export function decodeChunkOffset(bytes: Uint8Array): number {
  return readSize(expectLength(bytes, 8, "NBD chunk offset"), 0, "NBD chunk offset");
}

/** The payload of NBD_REPLY_TYPE_OFFSET_HOLE. */
export function encodeOffsetHolePayload(offsetBytes: number, holeBytes: number): Uint8Array {
  const bytes = new Uint8Array(12);
  const view = viewOf(bytes);
  view.setBigUint64(0, BigInt(offsetBytes));
  view.setUint32(8, holeBytes);
  return bytes;
}

/** Decodes an OFFSET_HOLE payload; `invalid` unless 12 bytes with a nonzero size. */
export function decodeOffsetHolePayload(
  payload: Uint8Array,
): { offsetBytes: number; holeBytes: number } {
  const view = expectLength(payload, 12, "NBD_REPLY_TYPE_OFFSET_HOLE");
  const holeBytes = view.getUint32(8);
  if (holeBytes === 0) throw invalid("NBD_REPLY_TYPE_OFFSET_HOLE with a zero hole size");
  return { offsetBytes: readSize(view, 0, "NBD_REPLY_TYPE_OFFSET_HOLE"), holeBytes };
}

/** One extent of an NBD_REPLY_TYPE_BLOCK_STATUS chunk. */
export interface BlockStatusDescriptor {
  lengthBytes: number;
  /** Status flags of the context (base:allocation: NBD_STATE_HOLE, NBD_STATE_ZERO). */
  flags: number;
}

/** The payload of NBD_REPLY_TYPE_BLOCK_STATUS: context id, then one or more descriptors. */
export function encodeBlockStatusPayload(
  contextId: number,
  descriptors: readonly BlockStatusDescriptor[],
): Uint8Array {
  const bytes = new Uint8Array(4 + 8 * descriptors.length);
  const view = viewOf(bytes);
  view.setUint32(0, contextId >>> 0);
  descriptors.forEach((descriptor, i) => {
    view.setUint32(4 + 8 * i, descriptor.lengthBytes);
    view.setUint32(8 + 8 * i, descriptor.flags >>> 0);
  });
  return bytes;
}

/** Decodes a BLOCK_STATUS payload; `invalid` unless 4 + 8n bytes, n >= 1, lengths nonzero. */
export function decodeBlockStatusPayload(
  payload: Uint8Array,
): { contextId: number; descriptors: BlockStatusDescriptor[] } {
  if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
    throw invalid(`NBD_REPLY_TYPE_BLOCK_STATUS of ${payload.length} bytes (4 + 8n, n >= 1)`);
  }
  const view = viewOf(payload);
  const descriptors: BlockStatusDescriptor[] = [];
  for (let at = 4; at < payload.length; at += 8) {
    const lengthBytes = view.getUint32(at);
    if (lengthBytes === 0) throw invalid("NBD_REPLY_TYPE_BLOCK_STATUS with a zero-length extent");
    descriptors.push({ lengthBytes, flags: view.getUint32(at + 4) });
  }
  return { contextId: view.getUint32(0), descriptors };
}

/** An error chunk's contents. `offsetBytes` only for NBD_REPLY_TYPE_ERROR_OFFSET. */
export interface ErrorChunk {
  error: number;
  message: string;
  offsetBytes: number | null;
}

/** The payload of NBD_REPLY_TYPE_ERROR (no offset) or NBD_REPLY_TYPE_ERROR_OFFSET. */
export function encodeErrorPayload(chunk: ErrorChunk): Uint8Array {
  const message = messageBytes(chunk.message);
  const withOffset = chunk.offsetBytes !== null;
  const bytes = new Uint8Array(6 + message.length + (withOffset ? 8 : 0));
  const view = viewOf(bytes);
  view.setUint32(0, chunk.error);
  view.setUint16(4, message.length);
  bytes.set(message, 6);
  if (chunk.offsetBytes !== null) view.setBigUint64(6 + message.length, BigInt(chunk.offsetBytes));
  return bytes;
}

/**
 * Decodes the payload of an error chunk of `type`. Known types must be exactly as long as their
 * message (and offset); an unknown error type needs only its message to fit (the spec lets a
 * client carry on after one). `invalid` for a zero error value or a message that overruns.
 */
export function decodeErrorPayload(type: number, payload: Uint8Array): ErrorChunk {
  if (payload.length < 6) throw invalid(`NBD error chunk of ${payload.length} bytes (at least 6)`);
  const view = viewOf(payload);
  const error = view.getUint32(0);
  if (error === 0) throw invalid("NBD error chunk with error value 0");
  const messageLength = view.getUint16(4);
  const tail = type === NBD_REPLY_TYPE_ERROR_OFFSET ? 8 : 0;
  const fits = type === NBD_REPLY_TYPE_ERROR || type === NBD_REPLY_TYPE_ERROR_OFFSET
    ? payload.length === 6 + messageLength + tail
    : payload.length >= 6 + messageLength;
  if (!fits) {
    throw invalid(
      `NBD error chunk: message of ${messageLength} bytes does not match its ${payload.length}`,
    );
  }
  const message = decodeMessage(payload.subarray(6, 6 + messageLength));
  const offsetBytes = tail > 0 ? readSize(view, 6 + messageLength, "NBD error offset") : null;
  return { error, message, offsetBytes };
}

/** A message as UTF-8 without NUL, cut at a character boundary to the spec's 4096 bytes. */
function messageBytes(message: string): Uint8Array {
  const bytes = utf8Encoder.encode(message.replaceAll("\0", " "));
  if (bytes.length <= NBD_STRING_MAX_BYTES) return bytes;
  let end = NBD_STRING_MAX_BYTES;
  // Back off over continuation bytes (10xxxxxx) so no character is split.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
