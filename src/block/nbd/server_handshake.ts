/**
 * The server side of the fixed newstyle handshake: greeting, client flags, then option haggling
 * until the client picks an export (NBD_OPT_EXPORT_NAME or NBD_OPT_GO) or leaves.
 *
 * Behaviour (doc/proto.md):
 * - Handshake flags FIXED_NEWSTYLE | NO_ZEROES; a client flag we did not offer closes the
 *   connection (the spec's MUST).
 * - NBD_OPT_GO / NBD_OPT_INFO reply NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE (minimum 1,
 *   preferred = the device's, maximum = NBD_REQUEST_LENGTH_MAX_BYTES) and NBD_INFO_NAME when
 *   asked, then NBD_REP_ACK; an export that cannot be opened gets an error reply with a message
 *   and haggling goes on. NBD_OPT_EXPORT_NAME cannot carry an error: it closes the connection.
 * - NBD_OPT_LIST, NBD_OPT_ABORT are answered. NBD_OPT_STRUCTURED_REPLY is accepted: the
 *   transmission phase then uses structured replies (and advertises NBD_FLAG_SEND_DF, which is
 *   only allowed with them). After it, NBD_OPT_SET_META_CONTEXT selects `base:allocation` (the
 *   only context; `base:` and unknown namespaces select nothing, as the spec demands) and
 *   NBD_OPT_LIST_META_CONTEXT lists it; before it, both get NBD_REP_ERR_INVALID. The selection
 *   counts only if the export finally chosen has the name it was made for. The export is not
 *   opened for these options: every Device answers `extents`, and opening a volume to answer a
 *   query would take its lock; an unknown name is reported when the client picks it.
 * - NBD_OPT_STARTTLS and unknown options get NBD_REP_ERR_UNSUP and haggling goes on.
 * - Garbage (a bad magic, an undecodable name) closes only this connection: the functions here
 *   throw a TorusError `invalid`, and the caller drops the connection.
 * @module
 */

import {
  ErrorCode,
  errorMessage,
  invalid,
  isTorusError,
  NBD_OPTION_LENGTH_MAX_BYTES,
  NBD_REQUEST_LENGTH_MAX_BYTES,
} from "../../core/mod.ts";
import type { Device } from "../device.ts";
import type { NbdExports } from "./exports.ts";
import {
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoReply,
  encodeMetaContextReply,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReplyData,
  type InfoRequest,
  type MetaContextRequest,
  NBD_CLIENT_FLAGS_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_META_CONTEXT_BASE_ALLOCATION,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTION_HEADER_BYTES,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from "./protocol.ts";
import { type StreamReader, writeAll } from "./stream.ts";

/** The outcome of a successful handshake: the export chosen and what was advertised for it. */
export interface NegotiatedExport {
  name: string;
  device: Device;
  transmissionFlags: number;
  /** Writes are refused with EPERM (the device or the server is read-only). */
  readOnly: boolean;
  /** The client negotiated NBD_OPT_STRUCTURED_REPLY. */
  structuredReplies: boolean;
  /** The id of `base:allocation` when selected for this export (NBD_CMD_BLOCK_STATUS allowed). */
  metaContextId: number | null;
}

/** The id given to `base:allocation` (opaque to clients; one context, so one id). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

/** What the handshake needs from the server. */
export interface ServerHandshakeContext {
  exports: NbdExports;
  /** Serve every export read-only. */
  readOnly: boolean;
  /** Whether the server is shutting down (options are then refused with ERR_SHUTDOWN). */
  shuttingDown(): boolean;
}

const SUPPORTED_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
const empty = new Uint8Array(0);

/**
 * The transmission flags advertised for a device (read-only if either says so). NBD_FLAG_SEND_DF
 * only with structured replies: the spec forbids it otherwise.
 */
export function transmissionFlagsFor(
  device: Device,
  readOnly: boolean,
  structuredReplies = false,
): number {
  // Multi-conn is honest because the Device contract makes a flush cover every write any
  // connection saw acknowledged, and SharedExports gives all connections one device.
  const common = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN |
    (structuredReplies ? NBD_FLAG_SEND_DF : 0);
  if (readOnly || device.readOnly) return common | NBD_FLAG_READ_ONLY;
  return common | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
}

/**
 * Runs the handshake on `reader`'s stream. Returns the export the client chose (the caller owns
 * and must close its device), or null when the client aborted or left. Throws `invalid` on
 * garbage (the caller closes the connection).
 */
export async function serverHandshake(
  reader: StreamReader,
  context: ServerHandshakeContext,
): Promise<NegotiatedExport | null> {
  await writeAll(reader.stream, encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
  const clientFlags = decodeClientFlags(await reader.readExact(NBD_CLIENT_FLAGS_BYTES));
  if ((clientFlags & ~SUPPORTED_CLIENT_FLAGS) !== 0) {
    throw invalid(`NBD client sent unknown client flags 0x${clientFlags.toString(16)}`);
  }
  const state: HandshakeState = {
    noZeroes: (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0,
    structuredReplies: false,
    metaContext: null,
  };
  for (;;) {
    const { option, lengthBytes } = decodeOptionHeader(
      await reader.readExact(NBD_OPTION_HEADER_BYTES),
    );
    if (lengthBytes > NBD_OPTION_LENGTH_MAX_BYTES) {
      if (option === NBD_OPT_EXPORT_NAME) throw invalid("NBD export name longer than 4096 bytes");
      // Skipping keeps the stream in step; the handshake deadline bounds how long it may take.
      await reader.skip(lengthBytes);
      await reply(reader, encodeOptionError(option, NBD_REP_ERR_TOO_BIG, "option data too long"));
      continue;
    }
    const data = (await reader.readExact(lengthBytes)).slice();
    const outcome = await answerOption(reader, context, { option, data, state });
    if (outcome !== "continue") return outcome;
  }
}

/** What option haggling has settled so far on one connection. */
interface HandshakeState {
  readonly noZeroes: boolean;
  structuredReplies: boolean;
  /** `base:allocation` selected by the last NBD_OPT_SET_META_CONTEXT, for this export name. */
  metaContext: { exportName: string } | null;
}

interface OptionRequest {
  option: number;
  data: Uint8Array;
  state: HandshakeState;
}

async function answerOption(
  reader: StreamReader,
  context: ServerHandshakeContext,
  request: OptionRequest,
): Promise<NegotiatedExport | null | "continue"> {
  const { option, data } = request;
  if (option === NBD_OPT_ABORT) {
    // The client may already have closed its end: a failed ACK is not an error.
    await reply(reader, encodeOptionReply(option, NBD_REP_ACK)).catch(() => {});
    return null;
  }
  if (context.shuttingDown()) {
    if (option === NBD_OPT_EXPORT_NAME) return null;
    await reply(reader, encodeOptionError(option, NBD_REP_ERR_SHUTDOWN, "server shutting down"));
    return "continue";
  }
  switch (option) {
    case NBD_OPT_EXPORT_NAME:
      return await exportName(reader, context, request);
    case NBD_OPT_GO:
    case NBD_OPT_INFO:
      return await infoOrGo(reader, context, request);
    case NBD_OPT_LIST:
      await list(reader, context, data);
      return "continue";
    case NBD_OPT_STRUCTURED_REPLY:
      await structuredReply(reader, request);
      return "continue";
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
      await metaContext(reader, request);
      return "continue";
    default:
      await reply(
        reader,
        encodeOptionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`),
      );
      return "continue";
  }
}

async function exportName(
  reader: StreamReader,
  context: ServerHandshakeContext,
  request: OptionRequest,
): Promise<NegotiatedExport | null> {
  const name = decodeString(request.data);
  // NBD_OPT_EXPORT_NAME cannot carry an error: a failure ends the session (the spec's MUST).
  const device = await context.exports.open(name, { readOnly: context.readOnly });
  const { state } = request;
  const transmissionFlags = transmissionFlagsFor(device, context.readOnly, state.structuredReplies);
  try {
    await reply(
      reader,
      encodeExportNameReply(device.sizeBytes, transmissionFlags, state.noZeroes),
    );
  } catch (error) {
    await device.close().catch(() => {});
    throw error;
  }
  return negotiated(name, device, transmissionFlags, state);
}

function negotiated(
  name: string,
  device: Device,
  transmissionFlags: number,
  state: HandshakeState,
): NegotiatedExport {
  return {
    name,
    device,
    transmissionFlags,
    readOnly: isReadOnly(transmissionFlags),
    structuredReplies: state.structuredReplies,
    metaContextId: state.metaContext?.exportName === name ? BASE_ALLOCATION_CONTEXT_ID : null,
  };
}

async function infoOrGo(
  reader: StreamReader,
  context: ServerHandshakeContext,
  { option, data, state }: OptionRequest,
): Promise<NegotiatedExport | "continue"> {
  let request: InfoRequest;
  try {
    request = decodeInfoRequest(data);
  } catch (error) {
    await reply(reader, encodeOptionError(option, NBD_REP_ERR_INVALID, errorMessage(error)));
    return "continue";
  }
  let device: Device;
  try {
    device = await context.exports.open(request.name, { readOnly: context.readOnly });
  } catch (error) {
    await reply(reader, openErrorReply(option, request.name, error));
    return "continue";
  }
  const transmissionFlags = transmissionFlagsFor(device, context.readOnly, state.structuredReplies);
  try {
    await reply(reader, ...infoReplies(option, request, device, transmissionFlags));
  } catch (error) {
    await device.close().catch(() => {});
    throw error;
  }
  if (option === NBD_OPT_GO) return negotiated(request.name, device, transmissionFlags, state);
  await device.close();
  return "continue";
}

function isReadOnly(transmissionFlags: number): boolean {
  return (transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
}

function infoReplies(
  option: number,
  request: InfoRequest,
  device: Device,
  transmissionFlags: number,
): Uint8Array[] {
  const info = (bytes: Uint8Array) => encodeOptionReply(option, NBD_REP_INFO, bytes);
  const replies = [
    info(
      encodeInfoReply({ type: NBD_INFO_EXPORT, sizeBytes: device.sizeBytes, transmissionFlags }),
    ),
    // Always sent (the spec allows unrequested info): clients that did not ask ignore it.
    info(encodeInfoReply({
      type: NBD_INFO_BLOCK_SIZE,
      minimumBytes: 1,
      preferredBytes: device.preferredBlockSizeBytes,
      maximumBytes: NBD_REQUEST_LENGTH_MAX_BYTES,
    })),
  ];
  if (request.infoTypes.includes(NBD_INFO_NAME)) {
    replies.push(info(encodeInfoReply({ type: NBD_INFO_NAME, name: request.name })));
  }
  replies.push(encodeOptionReply(option, NBD_REP_ACK));
  return replies;
}

/** The option error reply for an export that could not be opened. */
export function openErrorReply(option: number, name: string, error: unknown): Uint8Array {
  const message = errorMessage(error);
  if (!isTorusError(error)) {
    return encodeOptionError(option, NBD_REP_ERR_UNKNOWN, `export "${name}": ${message}`);
  }
  switch (error.code) {
    case ErrorCode.NotExist:
      return encodeOptionError(option, NBD_REP_ERR_UNKNOWN, `no export named "${name}"`);
    case ErrorCode.Locked:
      return encodeOptionError(
        option,
        NBD_REP_ERR_POLICY,
        `export "${name}" is in use elsewhere (its volume is locked by another client): ${message}`,
      );
    case ErrorCode.Invalid:
      return encodeOptionError(option, NBD_REP_ERR_INVALID, `export "${name}": ${message}`);
    case ErrorCode.Closed:
      return encodeOptionError(option, NBD_REP_ERR_SHUTDOWN, `export "${name}": ${message}`);
    default:
      return encodeOptionError(
        option,
        NBD_REP_ERR_UNKNOWN,
        `export "${name}" is not available: ${message}`,
      );
  }
}

async function list(
  reader: StreamReader,
  context: ServerHandshakeContext,
  data: Uint8Array,
): Promise<void> {
  if (data.length > 0) {
    await reply(reader, encodeOptionError(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "LIST takes no data"));
    return;
  }
  let names: string[];
  try {
    names = await context.exports.list();
  } catch (error) {
    const message = `cannot list exports: ${errorMessage(error)}`;
    await reply(reader, encodeOptionError(NBD_OPT_LIST, NBD_REP_ERR_POLICY, message));
    return;
  }
  const replies = names.map((name) =>
    encodeOptionReply(NBD_OPT_LIST, NBD_REP_SERVER, encodeServerReplyData(name))
  );
  await reply(reader, ...replies, encodeOptionReply(NBD_OPT_LIST, NBD_REP_ACK, empty));
}

async function structuredReply(reader: StreamReader, request: OptionRequest): Promise<void> {
  if (request.data.length > 0) {
    const message = "STRUCTURED_REPLY takes no data";
    await reply(reader, encodeOptionError(request.option, NBD_REP_ERR_INVALID, message));
    return;
  }
  // A repeat is acknowledged again: the state it asks for is the state it gets.
  request.state.structuredReplies = true;
  await reply(reader, encodeOptionReply(request.option, NBD_REP_ACK));
}

async function metaContext(reader: StreamReader, request: OptionRequest): Promise<void> {
  const { option, state } = request;
  const setting = option === NBD_OPT_SET_META_CONTEXT;
  // The spec: a SET replaces the selection even when it fails.
  if (setting) state.metaContext = null;
  let query: MetaContextRequest;
  let contexts: string[];
  try {
    if (!state.structuredReplies) {
      throw invalid("meta contexts need structured replies (NBD_OPT_STRUCTURED_REPLY) first");
    }
    query = decodeMetaContextRequest(request.data);
    contexts = matchMetaContexts(query.queries, setting ? "set" : "list");
  } catch (error) {
    await reply(reader, encodeOptionError(option, NBD_REP_ERR_INVALID, errorMessage(error)));
    return;
  }
  // LIST replies carry id 0 (reserved); SET gives each selected context its id.
  const contextId = setting ? BASE_ALLOCATION_CONTEXT_ID : 0;
  if (setting && contexts.length > 0) state.metaContext = { exportName: query.exportName };
  const replies = contexts.map((name) =>
    encodeOptionReply(option, NBD_REP_META_CONTEXT, encodeMetaContextReply(contextId, name))
  );
  await reply(reader, ...replies, encodeOptionReply(option, NBD_REP_ACK));
}

/**
 * The contexts that `queries` select: for a LIST, no query means every context and `base:`
 * lists the base namespace; for a SET, `base:` selects nothing. Queries in other namespaces and
 * unknown leaf names are ignored (the spec's MUST); a query without a namespace is `invalid`.
 */
export function matchMetaContexts(queries: readonly string[], mode: "list" | "set"): string[] {
  if (queries.length === 0) return mode === "list" ? [NBD_META_CONTEXT_BASE_ALLOCATION] : [];
  let allocation = false;
  for (const query of queries) {
    const colon = query.indexOf(":");
    if (colon <= 0) throw invalid(`meta context query "${query}" has no namespace`);
    if (query.slice(0, colon) !== "base") continue;
    const leaf = query.slice(colon + 1);
    if (leaf === "allocation" || (leaf === "" && mode === "list")) allocation = true;
  }
  return allocation ? [NBD_META_CONTEXT_BASE_ALLOCATION] : [];
}

/** Writes option replies as one write. */
async function reply(reader: StreamReader, ...messages: Uint8Array[]): Promise<void> {
  if (messages.length === 1) return await writeAll(reader.stream, messages[0]!);
  const total = messages.reduce((sum, m) => sum + m.length, 0);
  const joined = new Uint8Array(total);
  let at = 0;
  for (const message of messages) {
    joined.set(message, at);
    at += message.length;
  }
  await writeAll(reader.stream, joined);
}
