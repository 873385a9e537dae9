/**
 * Typed protobuf models. The wire schema is proto/*.proto (loaded from the generated descriptor);
 * these interfaces are its TypeScript face: 64-bit integers are bigint, bytes are Uint8Array, and
 * every decoded value is a fresh copy that shares no memory with the input buffer.
 * @module
 */

import protobuf from "protobufjs";
import { descriptor } from "./descriptor.gen.ts";
import { invalid } from "../core/mod.ts";

const root = protobuf.Root.fromJSON(descriptor);

export interface BlockLayer {
  type: number;
  content: Uint8Array;
}

export interface INode {
  volume: bigint;
  inode: bigint;
  filesize: bigint;
  attrs: Record<string, string>;
  blocks: BlockLayer[];
}

export interface Volume {
  name: string;
  id: bigint;
  type: string;
  maxBytes: bigint;
  /** A clone's parent volume id (0n or absent for none; decoding always fills it). */
  parentVolume?: bigint;
  /** The generation of the parent's snapshot (0n or absent for none). */
  parentInode?: bigint;
  /** The name of the parent's snapshot ("" or absent for none). */
  parentSnapshot?: string;
}

export interface RebalanceInfo {
  lastRebalanceFinish: bigint;
  lastRebalanceBlocks: bigint;
  rebalancing: boolean;
  /** The ring version the node's rebalancer last worked under (0: unknown, an older node). */
  ringVersion: bigint;
}

export interface PeerInfo {
  uuid: string;
  address: string;
  /** Unix nanoseconds. */
  lastSeen: bigint;
  totalBlocks: bigint;
  usedBlocks: bigint;
  timedOut: boolean;
  rebalanceInfo: RebalanceInfo | null;
  protocolVersion: bigint;
}

export interface Ring {
  type: number;
  version: number;
  replicationFactor: number;
  peers: PeerInfo[];
  attrs: Record<string, Uint8Array>;
}

/** Protobuf BlockRef: `volume` is the raw volume field (type bits included). */
export interface BlockRefMessage {
  volume: bigint;
  inode: bigint;
  block: bigint;
}

export interface INodeRefMessage {
  volume: bigint;
  inode: bigint;
}

/** The counts of the store that answered, carried in every reply of a store call. */
export interface StoreCounts {
  usedBlocks: bigint;
  totalBlocks: bigint;
}

/** How a reply added by torus says a call failed: an empty errorCode is success. */
export interface ReplyError {
  /** A stable error code (src/core/errors.ts), or "" on success. */
  errorCode: string;
  errorMessage: string;
}

export interface BlockRequest {
  blockRef: BlockRefMessage | null;
  /** Whether expectedCrc32 is set (0 is a CRC like any other). */
  checkCrc32: boolean;
  expectedCrc32: number;
}
export interface BlockResponse extends ReplyError, StoreCounts {
  ok: boolean;
  data: Uint8Array;
}
export interface PutBlockRequest {
  refs: BlockRefMessage[];
  blocks: Uint8Array[];
  fenceToken: bigint;
  /** Refuse refs already stored (false or absent: replace; decoding always fills it). */
  ifAbsent?: boolean;
  /**
   * The ring version the sender placed the change by; a node knowing a newer ring refuses it
   * (0n or absent: none; decoding always fills it).
   */
  ringVersion?: bigint;
}
export interface PutResponse extends StoreCounts {
  ok: boolean;
  /** The error message when ok is false. */
  err: string;
  errorCode: string;
}
export interface RebalanceCheckRequest {
  blockRefs: BlockRefMessage[];
}
export interface RebalanceCheckResponse extends ReplyError, StoreCounts {
  valid: boolean[];
  status: number;
}
export interface DeleteBlockRequest {
  refs: BlockRefMessage[];
  fenceToken: bigint;
  /** As in PutBlockRequest. */
  ringVersion?: bigint;
}
export interface DeleteBlockResponse extends ReplyError, StoreCounts {
  ok: boolean;
}
export interface HelloRequest {
  protocolVersion: number;
  clusterId: string;
  blockSizeBytes: number;
  nodeName: string;
}
export interface HelloResponse extends ReplyError, StoreCounts, HelloRequest {
  /** The server's instance, new at every start ("" from an older server). */
  instance?: string;
}
export interface ReadAtRequest {
  blockRef: BlockRefMessage | null;
  offsetBytes: number;
  lengthBytes: number;
}
export interface ReadAtResponse extends ReplyError, StoreCounts {
  data: Uint8Array;
}
export interface WriteAtRequest {
  blockRef: BlockRefMessage | null;
  offsetBytes: number;
  data: Uint8Array;
  fresh: boolean;
  fenceToken: bigint;
  /** Refuse an absent ref (false or absent: create it; decoding always fills it). */
  mustExist?: boolean;
  /** As in PutBlockRequest. */
  ringVersion?: bigint;
}
export interface ZeroAtRequest {
  blockRef: BlockRefMessage | null;
  offsetBytes: number;
  lengthBytes: number;
  fresh: boolean;
  fenceToken: bigint;
  /** As in WriteAtRequest. */
  mustExist?: boolean;
  /** As in PutBlockRequest. */
  ringVersion?: bigint;
}
/** FlushRequest, CountsRequest and ListRefsRequest have no fields. */
export type EmptyRequest = Record<string, never>;
export type StoreResponse = ReplyError & StoreCounts;
export interface ListRefsResponse extends ReplyError, StoreCounts {
  refs: BlockRefMessage[];
}

/** Encoder and decoder of one message type. */
export interface Codec<T> {
  /** The fully qualified protobuf name, e.g. `models.INode`. */
  readonly typeName: string;
  encode(message: T): Uint8Array;
  /** Decodes `bytes`; throws `invalid` on malformed input. */
  decode(bytes: Uint8Array): T;
  /** A message with every field at its default. */
  empty(): T;
}

const longTypes = new Set(["uint64", "int64", "sint64", "fixed64", "sfixed64"]);

type Plain = Record<string, unknown>;

/** Converts protobufjs's toObject form (longs as strings) into our form (bigint, Uint8Array). */
function fromWire(type: protobuf.Type, object: Plain): Plain {
  const out: Plain = {};
  for (const field of type.fieldsArray) {
    const value = object[field.name];
    out[field.name] = convertIn(field, value);
  }
  return out;
}

function convertIn(field: protobuf.Field, value: unknown): unknown {
  const one = (v: unknown): unknown => {
    if (field.resolvedType instanceof protobuf.Type) {
      return v === null || v === undefined ? null : fromWire(field.resolvedType, v as Plain);
    }
    if (longTypes.has(field.type)) return BigInt(v as string);
    if (field.type === "bytes") return new Uint8Array(v as Uint8Array); // copy, never alias
    return v;
  };
  if (field instanceof protobuf.MapField) {
    const entries = Object.entries((value ?? {}) as Plain);
    return Object.fromEntries(entries.map(([k, v]) => [k, one(v)]));
  }
  if (field.repeated) return ((value ?? []) as unknown[]).map(one);
  return one(value);
}

/** Whether `value` is the proto3 default of a singular scalar field. */
function isScalarDefault(field: protobuf.Field, value: unknown): boolean {
  if (field.repeated || field instanceof protobuf.MapField) return false;
  if (field.resolvedType instanceof protobuf.Type) return false;
  if (value instanceof Uint8Array) return value.length === 0;
  return value === 0n || value === 0 || value === false || value === "";
}

/**
 * Converts our form into what protobufjs's fromObject accepts (longs as decimal strings).
 * Scalars at their default are left out, as proto3 encoders (the original's Go code among them)
 * do: protobufjs would write every field fromObject set, zeros included.
 */
function toWire(type: protobuf.Type, message: Plain): Plain {
  const out: Plain = {};
  for (const field of type.fieldsArray) {
    const value = message[field.name];
    if (value === undefined || value === null) continue;
    const converted = convertOut(field, value);
    if (!isScalarDefault(field, value)) out[field.name] = converted;
  }
  return out;
}

/** Inclusive ranges of the integer field types; protobufjs would wrap values outside them. */
const integerRanges: ReadonlyMap<string, readonly [bigint, bigint]> = new Map([
  ["uint64", [0n, (1n << 64n) - 1n]],
  ["fixed64", [0n, (1n << 64n) - 1n]],
  ["int64", [-(1n << 63n), (1n << 63n) - 1n]],
  ["sint64", [-(1n << 63n), (1n << 63n) - 1n]],
  ["sfixed64", [-(1n << 63n), (1n << 63n) - 1n]],
  ["uint32", [0n, (1n << 32n) - 1n]],
  ["fixed32", [0n, (1n << 32n) - 1n]],
  ["int32", [-(1n << 31n), (1n << 31n) - 1n]],
  ["sint32", [-(1n << 31n), (1n << 31n) - 1n]],
  ["sfixed32", [-(1n << 31n), (1n << 31n) - 1n]],
]);

/**
 * Checks an integer field before encoding: 64-bit fields take bigints, 32-bit fields integer
 * numbers, both within the type's range. Without this, -1n would be written as 2^64-1 and 2^32
 * as 0.
 */
function checkInteger(field: protobuf.Field, value: unknown): void {
  const range = integerRanges.get(field.type);
  if (range === undefined) return;
  const long = longTypes.has(field.type);
  const exact = long ? typeof value === "bigint" : Number.isSafeInteger(value);
  const asBigint = exact ? BigInt(value as bigint | number) : undefined;
  if (asBigint === undefined || asBigint < range[0] || asBigint > range[1]) {
    const shown = typeof value === "bigint" ? `${value}n` : String(value);
    throw invalid(`cannot encode ${field.fullName.slice(1)} = ${shown}: not a ${field.type}`);
  }
}

function convertOut(field: protobuf.Field, value: unknown): unknown {
  const one = (v: unknown): unknown => {
    if (field.resolvedType instanceof protobuf.Type) return toWire(field.resolvedType, v as Plain);
    checkInteger(field, v);
    if (longTypes.has(field.type)) return (v as bigint).toString();
    return v;
  };
  if (field instanceof protobuf.MapField) {
    return Object.fromEntries(Object.entries(value as Plain).map(([k, v]) => [k, one(v)]));
  }
  if (field.repeated) return (value as unknown[]).map(one);
  return one(value);
}

const toObjectOptions: protobuf.IConversionOptions = {
  longs: String,
  defaults: true,
  arrays: true,
  objects: true,
};

function codec<T>(name: string): Codec<T> {
  const type = root.lookupType(`models.${name}`);
  return {
    typeName: `models.${name}`,
    encode(message: T): Uint8Array {
      const wire = type.fromObject(toWire(type, message as Plain));
      // protobufjs writes into a Node Buffer under Deno; hand out a plain Uint8Array copy, whose
      // slice() copies as callers expect (Buffer's slice() is a view).
      return new Uint8Array(type.encode(wire).finish());
    },
    decode(bytes: Uint8Array): T {
      let decoded: protobuf.Message;
      try {
        decoded = type.decode(bytes);
      } catch (error) {
        throw invalid(`malformed ${name} message: ${(error as Error).message}`, { cause: error });
      }
      return fromWire(type, type.toObject(decoded, toObjectOptions)) as T;
    },
    empty(): T {
      return fromWire(type, type.toObject(type.create(), toObjectOptions)) as T;
    },
  };
}

export const INodeCodec: Codec<INode> = codec("INode");
export const BlockLayerCodec: Codec<BlockLayer> = codec("BlockLayer");
export const VolumeCodec: Codec<Volume> = codec("Volume");
export const PeerInfoCodec: Codec<PeerInfo> = codec("PeerInfo");
export const RebalanceInfoCodec: Codec<RebalanceInfo> = codec("RebalanceInfo");
export const RingCodec: Codec<Ring> = codec("Ring");
export const BlockRefCodec: Codec<BlockRefMessage> = codec("BlockRef");
export const INodeRefCodec: Codec<INodeRefMessage> = codec("INodeRef");
export const BlockRequestCodec: Codec<BlockRequest> = codec("BlockRequest");
export const BlockResponseCodec: Codec<BlockResponse> = codec("BlockResponse");
export const PutBlockRequestCodec: Codec<PutBlockRequest> = codec("PutBlockRequest");
export const PutResponseCodec: Codec<PutResponse> = codec("PutResponse");
export const RebalanceCheckRequestCodec: Codec<RebalanceCheckRequest> = codec(
  "RebalanceCheckRequest",
);
export const RebalanceCheckResponseCodec: Codec<RebalanceCheckResponse> = codec(
  "RebalanceCheckResponse",
);
export const DeleteBlockRequestCodec: Codec<DeleteBlockRequest> = codec("DeleteBlockRequest");
export const DeleteBlockResponseCodec: Codec<DeleteBlockResponse> = codec("DeleteBlockResponse");
export const HelloRequestCodec: Codec<HelloRequest> = codec("HelloRequest");
export const HelloResponseCodec: Codec<HelloResponse> = codec("HelloResponse");
export const ReadAtRequestCodec: Codec<ReadAtRequest> = codec("ReadAtRequest");
export const ReadAtResponseCodec: Codec<ReadAtResponse> = codec("ReadAtResponse");
export const WriteAtRequestCodec: Codec<WriteAtRequest> = codec("WriteAtRequest");
export const ZeroAtRequestCodec: Codec<ZeroAtRequest> = codec("ZeroAtRequest");
export const FlushRequestCodec: Codec<EmptyRequest> = codec("FlushRequest");
export const CountsRequestCodec: Codec<EmptyRequest> = codec("CountsRequest");
export const StoreResponseCodec: Codec<StoreResponse> = codec("StoreResponse");
export const ListRefsRequestCodec: Codec<EmptyRequest> = codec("ListRefsRequest");
export const ListRefsResponseCodec: Codec<ListRefsResponse> = codec("ListRefsResponse");

/** One RPC of a service: its codecs, and whether the server answers with a stream. */
export interface ServiceMethod<Request, Response> {
  readonly request: Codec<Request>;
  readonly response: Codec<Response>;
  readonly responseStream: boolean;
}

function method<Request, Response>(
  request: Codec<Request>,
  response: Codec<Response>,
  responseStream = false,
): ServiceMethod<Request, Response> {
  return { request, response, responseStream };
}

/** The methods of the TorusStorage service, for the gRPC transport (proto/rpc.proto). */
export const torusStorageMethods = {
  Block: method(BlockRequestCodec, BlockResponseCodec),
  PutBlock: method(PutBlockRequestCodec, PutResponseCodec),
  RebalanceCheck: method(RebalanceCheckRequestCodec, RebalanceCheckResponseCodec),
  DeleteBlock: method(DeleteBlockRequestCodec, DeleteBlockResponseCodec),
  Hello: method(HelloRequestCodec, HelloResponseCodec),
  ReadAt: method(ReadAtRequestCodec, ReadAtResponseCodec),
  WriteAt: method(WriteAtRequestCodec, StoreResponseCodec),
  ZeroAt: method(ZeroAtRequestCodec, StoreResponseCodec),
  Flush: method(FlushRequestCodec, StoreResponseCodec),
  Counts: method(CountsRequestCodec, StoreResponseCodec),
  ListRefs: method(ListRefsRequestCodec, ListRefsResponseCodec, true),
} as const;

/** Service path prefix of TorusStorage methods (`/models.TorusStorage/Block`). */
export const TORUS_STORAGE_SERVICE = "models.TorusStorage";
