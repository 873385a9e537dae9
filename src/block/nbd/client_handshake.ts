/**
 * The client side of the fixed newstyle handshake over any {@link ByteStream}, so `torus blk
 * attach` can run it over a socket made through libc FFI and then hand that socket to the
 * kernel: greeting, client flags (FIXED_NEWSTYLE and NO_ZEROES when offered), then NBD_OPT_LIST,
 * NBD_OPT_INFO, NBD_OPT_GO (falling back to NBD_OPT_EXPORT_NAME on servers without it),
 * NBD_OPT_ABORT, and for {@link NbdClient} NBD_OPT_STRUCTURED_REPLY and the metadata context
 * options (a kernel cannot take structured replies: attach never asks for them).
 *
 * Invariants: after {@link NbdNegotiation.go} succeeds the server has sent nothing more, so the
 * stream can be handed to another transmission implementation (the kernel) with no bytes lost;
 * the reader's buffered bytes are kept for {@link NbdClient} otherwise. Option replies larger
 * than 64 KiB, replies to another option, or a GO success without NBD_INFO_EXPORT are `invalid`.
 * @module
 */

import {
  type Clock,
  ErrorCode,
  invalid,
  NBD_CLIENT_HANDSHAKE_TIMEOUT_MS,
  systemClock,
  TorusError,
  unavailable,
} from "../../core/mod.ts";
import {
  type BlockSizeConstraints,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoReply,
  decodeMessage,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerReplyData,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeString,
  isOptionReplyError,
  NBD_EXPORT_NAME_REPLY_BYTES,
  NBD_EXPORT_NAME_ZEROES_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_GREETING_BYTES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTION_REPLY_HEADER_BYTES,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from "./protocol.ts";
import { type ByteStream, StreamReader, writeAll } from "./stream.ts";

/** What the server told about an export. */
export interface NbdExportInfo {
  /** The name the client asked for (or the server's canonical one, when it sent it). */
  name: string;
  sizeBytes: number;
  transmissionFlags: number;
  readOnly: boolean;
  /** NBD_INFO_BLOCK_SIZE, when the server sent it. */
  blockSize: BlockSizeConstraints | null;
  description: string | null;
}

/** One export listed by NBD_OPT_LIST. */
export interface NbdListedExport {
  name: string;
  description: string;
}

const OPTION_REPLY_MAX_BYTES = 64 * 1024;
const READ_BUFFER_BYTES = 128 * 1024;

/** A client in option haggling. Start with {@link NbdNegotiation.start}. */
export class NbdNegotiation {
  readonly reader: StreamReader;
  readonly #fixedNewstyle: boolean;
  readonly #noZeroes: boolean;

  private constructor(reader: StreamReader, fixedNewstyle: boolean, noZeroes: boolean) {
    this.reader = reader;
    this.#fixedNewstyle = fixedNewstyle;
    this.#noZeroes = noZeroes;
  }

  /** Reads the greeting and answers with the client flags. */
  static async start(stream: ByteStream): Promise<NbdNegotiation> {
    const reader = new StreamReader(stream, new Uint8Array(READ_BUFFER_BYTES), "NBD server");
    const { handshakeFlags } = decodeGreeting(await reader.readExact(NBD_GREETING_BYTES));
    const fixedNewstyle = (handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
    const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
    const clientFlags = (fixedNewstyle ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) |
      (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0);
    await writeAll(stream, encodeClientFlags(clientFlags));
    return new NbdNegotiation(reader, fixedNewstyle, noZeroes);
  }

  get stream(): ByteStream {
    return this.reader.stream;
  }

  /** Whether the server does fixed newstyle negotiation (options other than EXPORT_NAME). */
  get fixedNewstyle(): boolean {
    return this.#fixedNewstyle;
  }

  /**
   * Asks for structured replies (NBD_OPT_STRUCTURED_REPLY): true when the server agreed; false
   * when it declined (UNSUP, POLICY or INVALID), after which replies stay simple.
   */
  async structuredReply(): Promise<boolean> {
    this.#requireFixedNewstyle("NBD_OPT_STRUCTURED_REPLY");
    await writeAll(this.stream, encodeOption(NBD_OPT_STRUCTURED_REPLY));
    const { replyType, data } = await this.#readReply(NBD_OPT_STRUCTURED_REPLY);
    if (replyType === NBD_REP_ACK) return true;
    if (isDeclined(replyType)) return false;
    if (isOptionReplyError(replyType)) {
      throw optionError("NBD_OPT_STRUCTURED_REPLY", replyType, data);
    }
    throw invalid(`NBD server answered NBD_OPT_STRUCTURED_REPLY with reply type ${replyType}`);
  }

  /**
   * Selects metadata contexts for `exportName` (NBD_OPT_SET_META_CONTEXT): the contexts the
   * server selected, name to id; empty when it selected none or declined the option.
   */
  async setMetaContext(exportName: string, queries: string[]): Promise<Map<string, number>> {
    const contexts = await this.#metaContexts(NBD_OPT_SET_META_CONTEXT, exportName, queries);
    return new Map(contexts.map(({ name, contextId }) => [name, contextId]));
  }

  /** The metadata contexts `queries` match on `exportName` (NBD_OPT_LIST_META_CONTEXT). */
  async listMetaContexts(exportName: string, queries: string[] = []): Promise<string[]> {
    const contexts = await this.#metaContexts(NBD_OPT_LIST_META_CONTEXT, exportName, queries);
    return contexts.map(({ name }) => name);
  }

  async #metaContexts(
    option: number,
    exportName: string,
    queries: string[],
  ): Promise<{ name: string; contextId: number }[]> {
    const what = option === NBD_OPT_SET_META_CONTEXT
      ? "NBD_OPT_SET_META_CONTEXT"
      : "NBD_OPT_LIST_META_CONTEXT";
    this.#requireFixedNewstyle(what);
    await writeAll(
      this.stream,
      encodeOption(option, encodeMetaContextRequest({ exportName, queries })),
    );
    const contexts: { name: string; contextId: number }[] = [];
    for (;;) {
      const { replyType, data } = await this.#readReply(option);
      if (replyType === NBD_REP_ACK) return contexts;
      if (replyType === NBD_REP_META_CONTEXT) {
        contexts.push(decodeMetaContextReply(data));
      } else if (isDeclined(replyType)) {
        // The spec: after an error the client disregards the contexts sent before it.
        return [];
      } else if (isOptionReplyError(replyType)) {
        throw optionError(what, replyType, data);
      } else {
        throw invalid(`NBD server answered ${what} with reply type ${replyType}`);
      }
    }
  }

  /** The server's exports (NBD_OPT_LIST). */
  async list(): Promise<NbdListedExport[]> {
    this.#requireFixedNewstyle("NBD_OPT_LIST");
    await writeAll(this.stream, encodeOption(NBD_OPT_LIST));
    const exports: NbdListedExport[] = [];
    for (;;) {
      const { replyType, data } = await this.#readReply(NBD_OPT_LIST);
      if (replyType === NBD_REP_ACK) return exports;
      if (replyType === NBD_REP_SERVER) exports.push(decodeServerReplyData(data));
      else if (isOptionReplyError(replyType)) throw optionError("NBD_OPT_LIST", replyType, data);
    }
  }

  /** Details of `name` without entering transmission (NBD_OPT_INFO). */
  async info(name: string): Promise<NbdExportInfo> {
    this.#requireFixedNewstyle("NBD_OPT_INFO");
    const info = await this.#infoOrGo(NBD_OPT_INFO, name);
    if (info === null) throw optionError("NBD_OPT_INFO", NBD_REP_ERR_UNSUP, new Uint8Array(0));
    return info;
  }

  /**
   * Picks `name` and enters transmission: NBD_OPT_GO, or NBD_OPT_EXPORT_NAME on a server
   * without it (which closes the connection instead of answering when it refuses).
   */
  async go(name: string): Promise<NbdExportInfo> {
    if (this.#fixedNewstyle) {
      const info = await this.#infoOrGo(NBD_OPT_GO, name);
      if (info !== null) return info;
    }
    return await this.#exportName(name);
  }

  /** Ends the negotiation politely (NBD_OPT_ABORT) and closes the stream. */
  async abort(): Promise<void> {
    try {
      if (this.#fixedNewstyle) {
        await writeAll(this.stream, encodeOption(NBD_OPT_ABORT));
        // The spec lets a server close without the ACK; either ends the session.
        await this.#readReply(NBD_OPT_ABORT).catch(() => {});
      }
    } finally {
      try {
        this.stream.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** INFO/GO; null when the server does not support the option. */
  async #infoOrGo(option: number, name: string): Promise<NbdExportInfo | null> {
    const what = option === NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO";
    const request = { name, infoTypes: [NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION] };
    await writeAll(this.stream, encodeOption(option, encodeInfoRequest(request)));
    const info: NbdExportInfo = {
      name,
      sizeBytes: -1,
      transmissionFlags: 0,
      readOnly: false,
      blockSize: null,
      description: null,
    };
    for (;;) {
      const { replyType, data } = await this.#readReply(option);
      if (replyType === NBD_REP_ACK) break;
      if (replyType === NBD_REP_ERR_UNSUP) return null;
      if (isOptionReplyError(replyType)) throw optionError(`${what} "${name}"`, replyType, data);
      if (replyType === NBD_REP_INFO) applyInfo(info, data);
    }
    if (info.sizeBytes < 0) throw invalid(`NBD server accepted ${what} without NBD_INFO_EXPORT`);
    return info;
  }

  async #exportName(name: string): Promise<NbdExportInfo> {
    await writeAll(this.stream, encodeOption(NBD_OPT_EXPORT_NAME, encodeString(name)));
    let reply: { sizeBytes: number; transmissionFlags: number };
    try {
      reply = decodeExportNameReply(await this.reader.readExact(NBD_EXPORT_NAME_REPLY_BYTES));
    } catch (error) {
      if (error instanceof TorusError && error.code === ErrorCode.Closed) {
        throw new TorusError(
          ErrorCode.NotExist,
          `NBD server closed the connection on export "${name}" (no such export?)`,
          { cause: error },
        );
      }
      throw error;
    }
    if (!this.#noZeroes) await this.reader.readExact(NBD_EXPORT_NAME_ZEROES_BYTES);
    return {
      name,
      ...reply,
      readOnly: (reply.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0,
      blockSize: null,
      description: null,
    };
  }

  async #readReply(option: number): Promise<{ replyType: number; data: Uint8Array }> {
    const header = decodeOptionReplyHeader(
      await this.reader.readExact(NBD_OPTION_REPLY_HEADER_BYTES),
    );
    if (header.option !== option) {
      throw invalid(`NBD server answered option ${header.option} to option ${option}`);
    }
    if (header.lengthBytes > OPTION_REPLY_MAX_BYTES) {
      throw invalid(`NBD option reply of ${header.lengthBytes} bytes is too large`);
    }
    const data = (await this.reader.readExact(header.lengthBytes)).slice();
    return { replyType: header.replyType, data };
  }

  #requireFixedNewstyle(what: string): void {
    if (!this.#fixedNewstyle) {
      throw new TorusError(
        ErrorCode.NotSupported,
        `NBD server does not do fixed newstyle negotiation: no ${what}`,
      );
    }
  }
}

/** Errors that mean "not here, carry on without it" for an optional feature. */
function isDeclined(replyType: number): boolean {
  return replyType === NBD_REP_ERR_UNSUP || replyType === NBD_REP_ERR_POLICY ||
    replyType === NBD_REP_ERR_INVALID;
}

function applyInfo(info: NbdExportInfo, data: Uint8Array): void {
  const reply = decodeInfoReply(data);
  switch (reply.type) {
    case NBD_INFO_EXPORT:
      info.sizeBytes = reply.sizeBytes;
      info.transmissionFlags = reply.transmissionFlags;
      info.readOnly = (reply.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
      return;
    case NBD_INFO_BLOCK_SIZE:
      info.blockSize = {
        minimumBytes: reply.minimumBytes,
        preferredBytes: reply.preferredBytes,
        maximumBytes: reply.maximumBytes,
      };
      return;
    case NBD_INFO_NAME:
      info.name = reply.name;
      return;
    case NBD_INFO_DESCRIPTION:
      info.description = reply.description;
      return;
    default:
      // The spec: a client MUST ignore information types it does not understand.
      return;
  }
}

/** The TorusError for an option error reply, with the server's message. */
function optionError(what: string, replyType: number, data: Uint8Array): TorusError {
  const message = data.length > 0 ? `: ${decodeMessage(data)}` : "";
  const code = optionErrorCode(replyType);
  return new TorusError(code, `NBD server refused ${what}${message}`);
}

function optionErrorCode(replyType: number): ErrorCode {
  switch (replyType) {
    case NBD_REP_ERR_UNKNOWN:
      return ErrorCode.NotExist;
    case NBD_REP_ERR_POLICY:
      // What torus's server answers for a volume locked by another client.
      return ErrorCode.Locked;
    case NBD_REP_ERR_INVALID:
    case NBD_REP_ERR_TOO_BIG:
      return ErrorCode.Invalid;
    case NBD_REP_ERR_SHUTDOWN:
      return ErrorCode.Closed;
    case NBD_REP_ERR_UNSUP:
    case NBD_REP_ERR_PLATFORM:
    case NBD_REP_ERR_TLS_REQD:
      return ErrorCode.NotSupported;
    default:
      return ErrorCode.Unavailable;
  }
}

/** How long a client gives the server to finish the handshake, and the time source. */
export interface HandshakeDeadline {
  /** Default NBD_CLIENT_HANDSHAKE_TIMEOUT_MS. */
  readonly timeoutMs?: number;
  readonly clock?: Clock;
}

/**
 * Runs a client's side of the handshake (`negotiate`) under a deadline: when it passes, the
 * stream is closed and the call fails with `unavailable`, naming the likely cause (a port that
 * is not an NBD server never greets).
 */
export async function withHandshakeDeadline<T>(
  stream: ByteStream,
  deadline: HandshakeDeadline,
  negotiate: () => Promise<T>,
): Promise<T> {
  const timeoutMs = deadline.timeoutMs ?? NBD_CLIENT_HANDSHAKE_TIMEOUT_MS;
  const clock = deadline.clock ?? systemClock;
  const stop = new AbortController();
  let expired = false;
  clock.sleep(timeoutMs, stop.signal).then(() => {
    expired = true;
    try {
      stream.close();
    } catch {
      // Already closed.
    }
  }, () => {});
  try {
    return await negotiate();
  } catch (error) {
    if (!expired) throw error;
    throw unavailable(
      `the server did not finish the NBD handshake within ${timeoutMs / 1000} s ` +
        `(is it an NBD server?)`,
    );
  } finally {
    stop.abort();
  }
}

/** Handshake only: picks `name` and returns what the server said (for kernel attach). */
export function nbdHandshake(
  stream: ByteStream,
  name: string,
  deadline: HandshakeDeadline = {},
): Promise<NbdExportInfo> {
  return withHandshakeDeadline(stream, deadline, async () => {
    const negotiation = await NbdNegotiation.start(stream);
    const info = await negotiation.go(name);
    if (negotiation.reader.end > negotiation.reader.start) {
      throw invalid("NBD server sent data after the handshake");
    }
    return info;
  });
}
