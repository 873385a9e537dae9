/**
 * TDP, the torus data protocol, version 1: the frames and their bytes. Pure: no I/O.
 *
 * Every frame is a 16-byte header and a body; all integers are little-endian:
 *
 * ```
 * 0  u16 magic 0x5444 ("DT")   2  u8 opcode (replies: request opcode | 0x80)   3  u8 flags
 * 4  u32 request id            8  u32 body bytes                                12 u16 status (replies)
 * 14 u16 reserved, zero
 * ```
 *
 * The client's first frame is HELLO (protocol version, block size, cluster id, name); the server
 * answers with its own HELLO or an error and closes. Then requests with ids of the client's choice,
 * many in flight; replies come in any order. An ok reply to a store call starts with the store's
 * counts (used u64, total u64); an error reply (status = an error code number) carries a UTF-8
 * message. Refs are the 24-byte BlockRef form; fencing tokens and ring versions are u64, 0 for
 * none.
 *
 * Request bodies (offsets in the body; `data` runs to the end of the body):
 *
 * ```
 * GET                 0 ref  24 u32 expected CRC-32
 * PUT                 0 ref  24 u64 fence  32 u64 ring  40 data
 * HAS                 0 u32 count  4 refs
 * READ_AT             0 ref  24 u32 offset  28 u32 length
 * WRITE_AT            0 ref  24 u64 fence  32 u64 ring  40 u32 offset  44 data
 * ZERO_AT             0 ref  24 u64 fence  32 u64 ring  40 u32 offset  44 u32 length
 * DELETE              0 ref  24 u64 fence  32 u64 ring
 * LIST_NEXT           0 u32 cursor  4 u32 max refs
 * LIST_CLOSE          0 u32 cursor
 * PING, FLUSH, COUNTS, LIST_OPEN: empty
 * ```
 *
 * `fence` is the writer's fencing token; `ring` the version of the ring the sender placed the
 * change by, which a node that knows a newer ring refuses with `compare_failed`.
 *
 * Request flags are per opcode ({@link Flag}); every other bit is zero:
 *
 * ```
 * GET                 0x01 EXPECTED_CRC  the expected CRC-32 field is set
 * PUT                 0x01 IF_ABSENT     refuse with `exists` when the ref is stored
 * WRITE_AT, ZERO_AT   0x01 FRESH         reset the block to zeros first
 *                     0x02 MUST_EXIST    refuse with `not_exist` when the ref is absent
 *                                        (FRESH wins)
 * ```
 *
 * Unlike the original's TDP (no handshake, one request at a time, fixed-size frames, errors never
 * sent), every bound is explicit: a header that is not one of ours or a body over the bound the
 * handshake set ends the connection ({@link TdpFrameError}); a frame that parses but asks for
 * something impossible (a read longer than a block) gets an `invalid` error reply.
 * @module
 */

import {
  BLOCK_REF_BYTES,
  BlockRef,
  ErrorCode,
  invalid,
  isErrorCode,
  TorusError,
} from "../../../core/mod.ts";

/** 2: changes carry the sender's ring version; range writes and puts carry mustExist and ifAbsent. */
export const TDP_VERSION = 2;
export const TDP_MAGIC = 0x5444;
export const TDP_HEADER_BYTES = 16;
/** Body bound before the handshake settled the block size. */
export const TDP_HELLO_BODY_MAX_BYTES = 1024;
/** Refs of one HAS request (and of one LIST_NEXT reply). */
export const TDP_REFS_PER_FRAME_MAX = 16384;
/** Bytes of an error reply's message (longer ones are cut). */
export const TDP_ERROR_MESSAGE_MAX_BYTES = 1024;
/** Bytes of the cluster id and of the name in HELLO. */
export const TDP_HELLO_TEXT_MAX_BYTES = 255;
/** Room above one block (the fixed fields of a write, or a block one byte too long, refused). */
const BODY_SLACK_BYTES = 4096;

/** The largest body either end accepts once the block size is known. */
export function tdpBodyMaxBytes(blockSizeBytes: number): number {
  return Math.max(blockSizeBytes, TDP_REFS_PER_FRAME_MAX * BLOCK_REF_BYTES) + BODY_SLACK_BYTES;
}

export const Op = {
  Hello: 1,
  Ping: 2,
  Get: 3,
  Put: 4,
  Has: 5,
  ReadAt: 6,
  WriteAt: 7,
  ZeroAt: 8,
  Delete: 9,
  Flush: 10,
  Counts: 11,
  ListOpen: 12,
  ListNext: 13,
  ListClose: 14,
} as const;
export type Op = typeof Op[keyof typeof Op];
const OP_MAX = 14;
export const REPLY_BIT = 0x80;

/** Flag bits of requests, per opcode (the module doc has the table). */
export const Flag = {
  /** GET: the expected CRC-32 field is set. */
  ExpectedCrc: 1,
  /** PUT: refuse with `exists` when the ref is stored. */
  IfAbsent: 1,
  /** WRITE_AT / ZERO_AT: reset the block to zeros first. */
  Fresh: 1,
  /** WRITE_AT / ZERO_AT: refuse with `not_exist` when the ref is absent (unless fresh). */
  MustExist: 2,
} as const;

/** Error codes as numbers on the wire (0 is ok). Never renumber: peers of a cluster differ. */
const WIRE_ERROR_CODES: readonly ErrorCode[] = [
  ErrorCode.NotExist,
  ErrorCode.Exists,
  ErrorCode.Locked,
  ErrorCode.BlockUnavailable,
  ErrorCode.CompareFailed,
  ErrorCode.OutOfSpace,
  ErrorCode.Invalid,
  ErrorCode.Again,
  ErrorCode.Closed,
  ErrorCode.Unavailable,
  ErrorCode.OutcomeUnknown,
  ErrorCode.NotSupported,
  ErrorCode.ReadOnly,
];

/** The status number of `code`. */
export function statusOf(code: ErrorCode): number {
  const index = WIRE_ERROR_CODES.indexOf(code);
  return index < 0 ? statusOf(ErrorCode.Unavailable) : index + 1;
}

/** The code of status `status` (a number this version does not know reads as unavailable). */
export function codeOf(status: number): ErrorCode {
  const code = WIRE_ERROR_CODES[status - 1];
  return code !== undefined && isErrorCode(code) ? code : ErrorCode.Unavailable;
}

/** A frame that is not TDP or breaks a bound: the connection it came on must close. */
export class TdpFrameError extends TorusError {
  constructor(message: string) {
    super(ErrorCode.Invalid, message);
  }
}

/** A decoded header. */
export interface FrameHeader {
  readonly op: number;
  readonly flags: number;
  readonly requestId: number;
  readonly bodyBytes: number;
  readonly status: number;
}

/** Encodes a header into `into` at `offset`. */
export function writeHeader(into: Uint8Array, offset: number, header: FrameHeader): void {
  const view = new DataView(into.buffer, into.byteOffset + offset, TDP_HEADER_BYTES);
  view.setUint16(0, TDP_MAGIC, true);
  view.setUint8(2, header.op);
  view.setUint8(3, header.flags);
  view.setUint32(4, header.requestId, true);
  view.setUint32(8, header.bodyBytes, true);
  view.setUint16(12, header.status, true);
  view.setUint16(14, 0, true);
}

/**
 * Decodes the header at `offset` of `bytes` and checks it: magic, a known opcode in the
 * direction expected (`replies`), zero reserved bits, and a body within `bodyMaxBytes`.
 */
export function readHeader(
  bytes: Uint8Array,
  offset: number,
  replies: boolean,
  bodyMaxBytes: number,
): FrameHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, TDP_HEADER_BYTES);
  if (view.getUint16(0, true) !== TDP_MAGIC) throw new TdpFrameError("not a TDP frame (bad magic)");
  const op = view.getUint8(2);
  const base = op & ~REPLY_BIT;
  if ((op & REPLY_BIT) !== (replies ? REPLY_BIT : 0) || base < 1 || base > OP_MAX) {
    throw new TdpFrameError(`unknown TDP ${replies ? "reply" : "request"} opcode ${op}`);
  }
  if (view.getUint16(14, true) !== 0) throw new TdpFrameError("TDP frame with reserved bits set");
  const status = view.getUint16(12, true);
  if (!replies && status !== 0) throw new TdpFrameError("TDP request with a status");
  const bodyBytes = view.getUint32(8, true);
  if (bodyBytes > bodyMaxBytes) {
    throw new TdpFrameError(`TDP frame body of ${bodyBytes} bytes is over ${bodyMaxBytes}`);
  }
  return {
    op: base,
    flags: view.getUint8(3),
    requestId: view.getUint32(4, true),
    bodyBytes,
    status,
  };
}

// ---- bodies -------------------------------------------------------------------------------

/** HELLO in either direction. */
export interface Hello {
  readonly version: number;
  readonly blockSizeBytes: number;
  readonly clusterId: string;
  readonly nodeName: string;
  /**
   * The server's instance: new every time it starts (a client says ""). A client that sees
   * another one than before knows the peer restarted and may have lost what it had not flushed.
   */
  readonly instance: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A HELLO body. */
export function encodeHello(hello: Hello): Uint8Array {
  const cluster = boundedText(hello.clusterId, "cluster id");
  const name = boundedText(hello.nodeName, "node name");
  const instance = boundedText(hello.instance, "instance");
  const body = new Uint8Array(14 + cluster.length + name.length + instance.length);
  const view = new DataView(body.buffer);
  view.setUint16(0, hello.version, true);
  view.setUint16(2, 0, true);
  view.setUint32(4, hello.blockSizeBytes, true);
  view.setUint16(8, cluster.length, true);
  body.set(cluster, 10);
  view.setUint16(10 + cluster.length, name.length, true);
  body.set(name, 12 + cluster.length);
  view.setUint16(12 + cluster.length + name.length, instance.length, true);
  body.set(instance, 14 + cluster.length + name.length);
  return body;
}

function boundedText(text: string, what: string): Uint8Array {
  const bytes = encoder.encode(text);
  if (bytes.length > TDP_HELLO_TEXT_MAX_BYTES) {
    throw invalid(`${what} is longer than ${TDP_HELLO_TEXT_MAX_BYTES} bytes`);
  }
  return bytes;
}

/** The client's HELLO frame. */
export function encodeHelloRequest(hello: Hello, requestId: number): Uint8Array[] {
  const body = encodeHello(hello);
  const header = new Uint8Array(TDP_HEADER_BYTES);
  writeHeader(header, 0, { op: Op.Hello, flags: 0, requestId, bodyBytes: body.length, status: 0 });
  return [header, body];
}

/** Decodes a HELLO body; TdpFrameError if it is not one. */
export function decodeHello(body: Uint8Array): Hello {
  const reader = new BodyReader(body, "HELLO");
  const version = reader.u16();
  if (reader.u16() !== 0) throw new TdpFrameError("HELLO with reserved bits set");
  const blockSizeBytes = reader.u32();
  const clusterId = reader.text(reader.u16());
  const nodeName = reader.text(reader.u16());
  const instance = reader.text(reader.u16());
  reader.end();
  return { version, blockSizeBytes, clusterId, nodeName, instance };
}

/** The store's counts at the head of every ok reply to a store call. */
export interface StoreCounts {
  readonly usedBlocks: number;
  readonly totalBlocks: number;
}

export const COUNTS_BYTES = 16;

/** Writes `counts` at `offset` of `into`. */
export function writeCounts(into: Uint8Array, offset: number, counts: StoreCounts): void {
  const view = new DataView(into.buffer, into.byteOffset + offset, COUNTS_BYTES);
  putU64(view, 0, counts.usedBlocks);
  putU64(view, 8, counts.totalBlocks);
}

/** A request, decoded. */
export type Request =
  | { readonly op: typeof Op.Ping }
  | { readonly op: typeof Op.Get; readonly ref: BlockRef; readonly expectedCrc32?: number }
  | {
    readonly op: typeof Op.Put;
    readonly ref: BlockRef;
    readonly fence: number;
    readonly ring: number;
    readonly ifAbsent: boolean;
    readonly data: Uint8Array;
  }
  | { readonly op: typeof Op.Has; readonly refs: BlockRef[] }
  | {
    readonly op: typeof Op.ReadAt;
    readonly ref: BlockRef;
    readonly offsetBytes: number;
    readonly lengthBytes: number;
  }
  | {
    readonly op: typeof Op.WriteAt;
    readonly ref: BlockRef;
    readonly fence: number;
    readonly ring: number;
    readonly fresh: boolean;
    readonly mustExist: boolean;
    readonly offsetBytes: number;
    readonly data: Uint8Array;
  }
  | {
    readonly op: typeof Op.ZeroAt;
    readonly ref: BlockRef;
    readonly fence: number;
    readonly ring: number;
    readonly fresh: boolean;
    readonly mustExist: boolean;
    readonly offsetBytes: number;
    readonly lengthBytes: number;
  }
  | {
    readonly op: typeof Op.Delete;
    readonly ref: BlockRef;
    readonly fence: number;
    readonly ring: number;
  }
  | { readonly op: typeof Op.Flush }
  | { readonly op: typeof Op.Counts }
  | { readonly op: typeof Op.ListOpen }
  | { readonly op: typeof Op.ListNext; readonly cursor: number; readonly maxRefs: number }
  | { readonly op: typeof Op.ListClose; readonly cursor: number };

/**
 * The frame of `request` with id `requestId`, as chunks to write in order (a write's data is its
 * own chunk, so it is never copied here).
 */
export function encodeRequest(request: Request, requestId: number): Uint8Array[] {
  const fixed = new Uint8Array(TDP_HEADER_BYTES + fixedBytesOf(request));
  const view = new DataView(fixed.buffer, TDP_HEADER_BYTES);
  let flags = 0;
  let data: Uint8Array | null = null;
  switch (request.op) {
    case Op.Get:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      if (request.expectedCrc32 !== undefined) {
        flags |= Flag.ExpectedCrc;
        view.setUint32(24, request.expectedCrc32 >>> 0, true);
      }
      break;
    case Op.Put:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      putU64(view, 24, request.fence);
      putU64(view, 32, request.ring);
      if (request.ifAbsent) flags |= Flag.IfAbsent;
      data = request.data;
      break;
    case Op.Has:
      view.setUint32(0, request.refs.length, true);
      request.refs.forEach((ref, i) =>
        ref.writeTo(fixed, TDP_HEADER_BYTES + 4 + i * BLOCK_REF_BYTES)
      );
      break;
    case Op.ReadAt:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      view.setUint32(24, request.offsetBytes, true);
      view.setUint32(28, request.lengthBytes, true);
      break;
    case Op.WriteAt:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      putU64(view, 24, request.fence);
      putU64(view, 32, request.ring);
      view.setUint32(40, request.offsetBytes, true);
      flags |= rangeFlags(request);
      data = request.data;
      break;
    case Op.ZeroAt:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      putU64(view, 24, request.fence);
      putU64(view, 32, request.ring);
      view.setUint32(40, request.offsetBytes, true);
      view.setUint32(44, request.lengthBytes, true);
      flags |= rangeFlags(request);
      break;
    case Op.Delete:
      request.ref.writeTo(fixed, TDP_HEADER_BYTES);
      putU64(view, 24, request.fence);
      putU64(view, 32, request.ring);
      break;
    case Op.ListNext:
      view.setUint32(0, request.cursor, true);
      view.setUint32(4, request.maxRefs, true);
      break;
    case Op.ListClose:
      view.setUint32(0, request.cursor, true);
      break;
  }
  const bodyBytes = fixed.length - TDP_HEADER_BYTES + (data?.length ?? 0);
  writeHeader(fixed, 0, { op: request.op, flags, requestId, bodyBytes, status: 0 });
  return data === null || data.length === 0 ? [fixed] : [fixed, data];
}

/** The flags of a range write. */
function rangeFlags(request: { readonly fresh: boolean; readonly mustExist: boolean }): number {
  return (request.fresh ? Flag.Fresh : 0) | (request.mustExist ? Flag.MustExist : 0);
}

/** Bytes of a request's body before its data. */
function fixedBytesOf(request: Request): number {
  switch (request.op) {
    case Op.Get:
      return BLOCK_REF_BYTES + 4;
    case Op.Put:
    case Op.Delete:
      return BLOCK_REF_BYTES + 16;
    case Op.Has:
      return 4 + request.refs.length * BLOCK_REF_BYTES;
    case Op.ReadAt:
      return BLOCK_REF_BYTES + 8;
    case Op.WriteAt:
      return BLOCK_REF_BYTES + 20;
    case Op.ZeroAt:
      return BLOCK_REF_BYTES + 24;
    case Op.ListNext:
      return 8;
    case Op.ListClose:
      return 4;
    default:
      return 0;
  }
}

/**
 * Decodes the body of a request (header already checked); TdpFrameError when the body does not
 * have the request's shape. Data fields are views of `body`.
 */
export function decodeRequest(header: FrameHeader, body: Uint8Array): Request {
  const reader = new BodyReader(body, opName(header.op));
  const fresh = (header.flags & Flag.Fresh) !== 0;
  const mustExist = (header.flags & Flag.MustExist) !== 0;
  let request: Request;
  switch (header.op) {
    case Op.Ping:
    case Op.Flush:
    case Op.Counts:
    case Op.ListOpen:
      request = { op: header.op };
      break;
    case Op.Get: {
      const ref = reader.ref();
      const crc = reader.u32();
      request = (header.flags & Flag.ExpectedCrc) !== 0
        ? { op: Op.Get, ref, expectedCrc32: crc }
        : { op: Op.Get, ref };
      break;
    }
    case Op.Put: {
      const ref = reader.ref();
      const fence = reader.u64();
      const ring = reader.u64();
      const ifAbsent = (header.flags & Flag.IfAbsent) !== 0;
      request = { op: Op.Put, ref, fence, ring, ifAbsent, data: reader.rest() };
      break;
    }
    case Op.Has: {
      const count = reader.u32();
      if (count > TDP_REFS_PER_FRAME_MAX) throw new TdpFrameError(`HAS of ${count} refs`);
      const refs: BlockRef[] = [];
      for (let i = 0; i < count; i++) refs.push(reader.ref());
      request = { op: Op.Has, refs };
      break;
    }
    case Op.ReadAt:
      request = {
        op: Op.ReadAt,
        ref: reader.ref(),
        offsetBytes: reader.u32(),
        lengthBytes: reader.u32(),
      };
      break;
    case Op.WriteAt: {
      const ref = reader.ref();
      const fence = reader.u64();
      const ring = reader.u64();
      request = {
        op: Op.WriteAt,
        ref,
        fence,
        ring,
        fresh,
        mustExist,
        offsetBytes: reader.u32(),
        data: reader.rest(),
      };
      break;
    }
    case Op.ZeroAt: {
      const ref = reader.ref();
      const fence = reader.u64();
      const ring = reader.u64();
      const offsetBytes = reader.u32();
      const lengthBytes = reader.u32();
      request = { op: Op.ZeroAt, ref, fence, ring, fresh, mustExist, offsetBytes, lengthBytes };
      break;
    }
    case Op.Delete: {
      const ref = reader.ref();
      const fence = reader.u64();
      request = { op: Op.Delete, ref, fence, ring: reader.u64() };
      break;
    }
    case Op.ListNext:
      request = { op: Op.ListNext, cursor: reader.u32(), maxRefs: reader.u32() };
      break;
    case Op.ListClose:
      request = { op: Op.ListClose, cursor: reader.u32() };
      break;
    default:
      throw new TdpFrameError(`${opName(header.op)} is not a request after HELLO`);
  }
  reader.end();
  return request;
}

/** The name of an opcode, for messages. */
export function opName(op: number): string {
  const entry = Object.entries(Op).find(([, value]) => value === op);
  return entry === undefined ? `opcode ${op}` : entry[0].toUpperCase();
}

/** An ok reply: header, then `parts` (the counts first, for store calls). */
export function encodeOkReply(
  op: number,
  requestId: number,
  parts: readonly Uint8Array[],
): Uint8Array[] {
  const header = new Uint8Array(TDP_HEADER_BYTES);
  const bodyBytes = parts.reduce((sum, part) => sum + part.length, 0);
  writeHeader(header, 0, { op: op | REPLY_BIT, flags: 0, requestId, bodyBytes, status: 0 });
  return [header, ...parts];
}

/** An error reply carrying `code` and a one-line `message` (cut to the bound). */
export function encodeErrorReply(
  op: number,
  requestId: number,
  code: ErrorCode,
  message: string,
): Uint8Array {
  let text = encoder.encode(message.replace(/[\r\n]+/g, " "));
  if (text.length > TDP_ERROR_MESSAGE_MAX_BYTES) {
    // Cut on a character boundary so the message stays UTF-8.
    text = encoder.encode(
      new TextDecoder().decode(text.subarray(0, TDP_ERROR_MESSAGE_MAX_BYTES - 3)).replace(
        /\uFFFD$/,
        "",
      ),
    );
  }
  const frame = new Uint8Array(TDP_HEADER_BYTES + text.length);
  writeHeader(frame, 0, {
    op: op | REPLY_BIT,
    flags: 0,
    requestId,
    bodyBytes: text.length,
    status: statusOf(code),
  });
  frame.set(text, TDP_HEADER_BYTES);
  return frame;
}

/** The error an error reply carries. */
export function decodeErrorReply(status: number, body: Uint8Array, peer: string): TorusError {
  let message: string;
  try {
    message = decoder.decode(body);
  } catch {
    message = "(message not UTF-8)";
  }
  return new TorusError(codeOf(status), `${peer}: ${message}`);
}

/** Reads the counts at the head of an ok reply body. */
export function readCounts(reader: BodyReader): StoreCounts {
  return { usedBlocks: reader.u64(), totalBlocks: reader.u64() };
}

/** Sequential reads of a body; TdpFrameError on a short body or leftover bytes. */
export class BodyReader {
  readonly #body: Uint8Array;
  readonly #view: DataView;
  readonly #what: string;
  #offset = 0;

  constructor(body: Uint8Array, what: string) {
    this.#body = body;
    this.#view = new DataView(body.buffer, body.byteOffset, body.byteLength);
    this.#what = what;
  }

  #take(bytes: number): number {
    if (this.#body.length - this.#offset < bytes) {
      throw new TdpFrameError(`${this.#what} body is too short`);
    }
    const at = this.#offset;
    this.#offset += bytes;
    return at;
  }

  u8(): number {
    return this.#view.getUint8(this.#take(1));
  }

  u16(): number {
    return this.#view.getUint16(this.#take(2), true);
  }

  u32(): number {
    return this.#view.getUint32(this.#take(4), true);
  }

  /** A u64 that must fit a safe integer. */
  u64(): number {
    const at = this.#take(8);
    const high = this.#view.getUint32(at + 4, true);
    if (high > 0x1fffff) throw new TdpFrameError(`${this.#what} has a u64 over 2^53`);
    return high * 2 ** 32 + this.#view.getUint32(at, true);
  }

  ref(): BlockRef {
    const at = this.#take(BLOCK_REF_BYTES);
    try {
      return BlockRef.fromBytes(this.#body, at);
    } catch (error) {
      throw new TdpFrameError(`${this.#what} has a bad ref: ${(error as Error).message}`);
    }
  }

  text(bytes: number): string {
    const at = this.#take(bytes);
    try {
      return decoder.decode(this.#body.subarray(at, at + bytes));
    } catch {
      throw new TdpFrameError(`${this.#what} has text that is not UTF-8`);
    }
  }

  bytes(count: number): Uint8Array {
    const at = this.#take(count);
    return this.#body.subarray(at, at + count);
  }

  /** The rest of the body. */
  rest(): Uint8Array {
    return this.bytes(this.#body.length - this.#offset);
  }

  /** Checks that nothing is left. */
  end(): void {
    if (this.#offset !== this.#body.length) {
      throw new TdpFrameError(
        `${this.#what} body has ${this.#body.length - this.#offset} extra bytes`,
      );
    }
  }
}

/** Writes a safe integer as u64. */
export function putU64(view: DataView, offset: number, value: number): void {
  view.setUint32(offset, value % 2 ** 32, true);
  view.setUint32(offset + 4, Math.floor(value / 2 ** 32), true);
}
