/**
 * The TorusStorage service (proto/rpc.proto) as grpc-js sees it: one method definition per RPC,
 * whose serializers are the models' codecs; how each reply says that it failed; and the identity
 * a client sends as metadata on every call, with the rule both ends check it by. No I/O here.
 * @module
 */

import { Buffer } from "node:buffer";
import { Metadata, type MethodDefinition, type ServiceDefinition } from "@grpc/grpc-js";
import { ErrorCode, isErrorCode, TorusError } from "../../../core/mod.ts";
import {
  type Codec,
  type EmptyRequest,
  type ListRefsResponse,
  type PutBlockRequest,
  type PutResponse,
  type ServiceMethod,
  type StoreCounts,
  TORUS_STORAGE_SERVICE,
  torusStorageMethods,
} from "../../../models/mod.ts";
import type { PeerIdentity } from "../protocol.ts";

/** The version of the service's rules (metadata, replies) both ends must speak. */
export const GRPC_PROTOCOL_VERSION = 1;
/** Characters of an error message in a reply (longer ones are cut). */
export const GRPC_ERROR_MESSAGE_MAX_CHARS = 1024;
/** Refs of one RebalanceCheck, and of one ListRefs message. */
export const GRPC_REFS_PER_MESSAGE_MAX = 16384;
/** grpc-js's default message bound; raised only to fit a block and its fields. */
const MESSAGE_DEFAULT_MAX_BYTES = 4 * 1024 * 1024;
/** Room above one block for the other fields of a message. */
const MESSAGE_SLACK_BYTES = 64 * 1024;

/** The largest message either end sends or accepts for blocks of `blockSizeBytes`. */
export function grpcMessageMaxBytes(blockSizeBytes: number): number {
  return Math.max(MESSAGE_DEFAULT_MAX_BYTES, blockSizeBytes + MESSAGE_SLACK_BYTES);
}

/** A failure as a reply carries it: a code string (possibly one this node does not know). */
export interface WireFailure {
  readonly errorCode: string;
  readonly errorMessage: string;
}

/** One unary RPC: its grpc-js definition and how its reply carries a failure. */
export interface UnaryRpc<Request, Reply extends StoreCounts> {
  readonly definition: MethodDefinition<Request, Reply>;
  /** The failure `reply` reports, or null when the call succeeded. */
  failureOf(reply: Reply): WireFailure | null;
  /** The reply that reports `failure`, with the store's counts. */
  failed(failure: WireFailure, counts: StoreCounts): Reply;
}

function definition<Request, Reply>(
  name: string,
  method: ServiceMethod<Request, Reply>,
): MethodDefinition<Request, Reply> {
  return {
    path: `/${TORUS_STORAGE_SERVICE}/${name}`,
    originalName: name,
    requestStream: false,
    responseStream: method.responseStream,
    requestSerialize: (value) => toBuffer(method.request.encode(value)),
    // A codec throws `invalid` on malformed bytes; grpc-js answers the call with an error status.
    requestDeserialize: (bytes) => method.request.decode(bytes),
    responseSerialize: (value) => toBuffer(method.response.encode(value)),
    responseDeserialize: (bytes) => method.response.decode(bytes),
  };
}

/** A Buffer over the same bytes (grpc-js writes Buffers; the codecs return Uint8Arrays). */
function toBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The failure of a reply added by torus: an empty code is success. */
function codeFailure(reply: WireFailure): WireFailure | null {
  return reply.errorCode === "" ? null : reply;
}

/** The failure of the original's replies with an `ok` flag. */
function okFailure(reply: WireFailure & { ok: boolean }): WireFailure | null {
  return reply.ok ? null : reply;
}

/** A reply of `codec` with every field at its default but the failure and the counts. */
function failedWith<Reply extends WireFailure & StoreCounts>(
  codec: Codec<Reply>,
): (failure: WireFailure, counts: StoreCounts) => Reply {
  return (failure, counts) => ({
    ...codec.empty(),
    ...counts,
    errorCode: failure.errorCode,
    errorMessage: failure.errorMessage,
  });
}

function rpc<Request, Reply extends WireFailure & StoreCounts>(
  name: keyof typeof torusStorageMethods,
  method: ServiceMethod<Request, Reply>,
  failureOf: (reply: Reply) => WireFailure | null = codeFailure,
): UnaryRpc<Request, Reply> {
  return { definition: definition(name, method), failureOf, failed: failedWith(method.response) };
}

const m = torusStorageMethods;

/** PutBlock: the original's PutResponse names its message `err`. */
const putBlock: UnaryRpc<PutBlockRequest, PutResponse> = {
  definition: definition("PutBlock", m.PutBlock),
  failureOf: (reply) => reply.ok ? null : { errorCode: reply.errorCode, errorMessage: reply.err },
  failed: (failure, counts) => ({
    ...m.PutBlock.response.empty(),
    ...counts,
    errorCode: failure.errorCode,
    err: failure.errorMessage,
  }),
};

/** The unary RPCs of TorusStorage. */
export const rpcs = {
  Block: rpc("Block", m.Block, okFailure),
  PutBlock: putBlock,
  RebalanceCheck: rpc("RebalanceCheck", m.RebalanceCheck),
  DeleteBlock: rpc("DeleteBlock", m.DeleteBlock, okFailure),
  Hello: rpc("Hello", m.Hello),
  ReadAt: rpc("ReadAt", m.ReadAt),
  WriteAt: rpc("WriteAt", m.WriteAt),
  ZeroAt: rpc("ZeroAt", m.ZeroAt),
  Flush: rpc("Flush", m.Flush),
  Counts: rpc("Counts", m.Counts),
} as const;

/** The server-streaming listing of every stored ref. */
export const listRefsDefinition: MethodDefinition<EmptyRequest, ListRefsResponse> = definition(
  "ListRefs",
  m.ListRefs,
);

/** The whole service, for `Server.addService`. */
export const torusStorageService: ServiceDefinition = {
  Block: rpcs.Block.definition,
  PutBlock: rpcs.PutBlock.definition,
  RebalanceCheck: rpcs.RebalanceCheck.definition,
  DeleteBlock: rpcs.DeleteBlock.definition,
  Hello: rpcs.Hello.definition,
  ReadAt: rpcs.ReadAt.definition,
  WriteAt: rpcs.WriteAt.definition,
  ZeroAt: rpcs.ZeroAt.definition,
  Flush: rpcs.Flush.definition,
  Counts: rpcs.Counts.definition,
  ListRefs: listRefsDefinition,
};

/** What a failure becomes on the wire: its code and a one-line message within the bound. */
export function wireFailure(code: ErrorCode, message: string): WireFailure {
  let line = message.replace(/\s*[\r\n]+\s*/g, " ");
  if (line.length > GRPC_ERROR_MESSAGE_MAX_CHARS) {
    line = `${line.slice(0, GRPC_ERROR_MESSAGE_MAX_CHARS - 3)}...`;
  }
  return { errorCode: code, errorMessage: line };
}

/** The error a reply's failure stands for (a code this node does not know is unavailable). */
export function errorOfFailure(failure: WireFailure, peer: string): TorusError {
  const code = isErrorCode(failure.errorCode) ? failure.errorCode : ErrorCode.Unavailable;
  const message = failure.errorMessage === "" ? `failed with ${code}` : failure.errorMessage;
  return new TorusError(code, `${peer}: ${message}`);
}

// ---- identity --------------------------------------------------------------------------------

/** The metadata keys of a caller's identity. */
export const IdentityKey = {
  Version: "torus-protocol-version",
  ClusterId: "torus-cluster-id",
  BlockSize: "torus-block-size",
  NodeName: "torus-node-name",
} as const;

/** One end's identity as the handshake compares it. */
export interface WireIdentity {
  readonly protocolVersion: number;
  readonly clusterId: string;
  readonly blockSizeBytes: number;
  readonly nodeName: string;
}

/** `identity` as this version speaks it. */
export function wireIdentity(identity: PeerIdentity): WireIdentity {
  return {
    protocolVersion: GRPC_PROTOCOL_VERSION,
    clusterId: identity.clusterId,
    blockSizeBytes: identity.blockSizeBytes,
    nodeName: identity.nodeName,
  };
}

/** The metadata every call of a client carries. */
export function identityMetadata(identity: PeerIdentity): Metadata {
  const metadata = new Metadata();
  metadata.set(IdentityKey.Version, String(GRPC_PROTOCOL_VERSION));
  // Metadata values must be printable ASCII; ids and names may be any text.
  metadata.set(IdentityKey.ClusterId, encodeURIComponent(identity.clusterId));
  metadata.set(IdentityKey.BlockSize, String(identity.blockSizeBytes));
  metadata.set(IdentityKey.NodeName, encodeURIComponent(identity.nodeName));
  return metadata;
}

/**
 * The identity a call's metadata names, or why it names none (a client that did not say who it
 * is gets no store call answered).
 */
export function identityOfMetadata(metadata: Metadata): WireIdentity | string {
  const text = (key: string): string | null => {
    const values = metadata.get(key);
    const value = values.length === 1 ? values[0] : undefined;
    if (typeof value !== "string") return null;
    try {
      return decodeURIComponent(value);
    } catch {
      return null;
    }
  };
  const version = text(IdentityKey.Version);
  const clusterId = text(IdentityKey.ClusterId);
  const blockSize = text(IdentityKey.BlockSize);
  if (version === null || clusterId === null || blockSize === null) {
    return `the call does not say which cluster, block size and protocol version it is of ` +
      `(metadata ${IdentityKey.ClusterId}, ${IdentityKey.BlockSize}, ${IdentityKey.Version})`;
  }
  return {
    protocolVersion: decimal(version),
    clusterId,
    blockSizeBytes: decimal(blockSize),
    nodeName: text(IdentityKey.NodeName) ?? "",
  };
}

/** A decimal number, or -1 for text that is not one (which then matches nothing). */
function decimal(text: string): number {
  return /^[0-9]{1,10}$/.test(text) ? Number(text) : -1;
}

/** Why `theirs` may not talk to `ours`, or null when both agree. */
export function identityMismatch(theirs: WireIdentity, ours: PeerIdentity): string | null {
  if (theirs.protocolVersion !== GRPC_PROTOCOL_VERSION) {
    return `TorusStorage protocol version ${theirs.protocolVersion} is not supported ` +
      `(this node speaks ${GRPC_PROTOCOL_VERSION})`;
  }
  if (theirs.clusterId !== ours.clusterId) {
    return `cluster ${JSON.stringify(theirs.clusterId)} is not this node's cluster ` +
      JSON.stringify(ours.clusterId);
  }
  if (theirs.blockSizeBytes !== ours.blockSizeBytes) {
    return `block size ${theirs.blockSizeBytes} differs from this node's ${ours.blockSizeBytes}`;
  }
  return null;
}
