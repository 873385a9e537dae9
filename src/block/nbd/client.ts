/**
 * An NBD client over any {@link ByteStream}, usable as a {@link Device}: `ctl block dump/load`
 * talk to `torus serve` through it, and the Device contract suite runs over it (client → server
 * → device), so the client and server check each other.
 *
 * @example
 * ```ts
 * import {
 *   connStream,
 *   DeviceHandle,
 *   MemoryDevice,
 *   NbdClient,
 *   NbdServer,
 *   SharedExports,
 * } from "../mod.ts";
 * const scratch = new MemoryDevice({ sizeBytes: 1024 * 1024 });
 * await using server = new NbdServer({
 *   exports: new SharedExports({
 *     list: () => Promise.resolve(["scratch"]),
 *     open: () => Promise.resolve(new DeviceHandle(scratch, () => Promise.resolve())),
 *   }),
 * });
 * const { port } = server.listen({ port: 0 });
 * const conn = connStream(await Deno.connect({ hostname: "127.0.0.1", port })); // TCP_NODELAY
 * const client = await NbdClient.connect(conn, { exportName: "scratch" });
 * await client.writeAt(4096, new Uint8Array([1, 2, 3]));
 * const back = new Uint8Array(3);
 * await client.readAt(4096, back); // many calls may be in flight; replies come in any order
 * await client.close(); // waits for calls, flushes, sends NBD_CMD_DISC
 * console.log(back); // Uint8Array(3) [ 1, 2, 3 ]
 * ```
 *
 * Mapping onto NBD: requests longer than the server's maximum block size (32 MiB when not
 * advertised) are split; `trim` is NBD_CMD_WRITE_ZEROES without NO_HOLE (NBD_CMD_TRIM does not
 * promise zeros, the Device contract does); `writeZeroes` is NBD_CMD_WRITE_ZEROES, or plain zero
 * writes on servers without it; FUA uses NBD_CMD_FLAG_FUA or, without it, a flush after the write.
 * `discard` is NBD_CMD_TRIM itself. Error replies become TorusErrors (errno.ts), with the
 * server's message when it sent one; a lost connection fails every call with `unavailable`.
 *
 * Structured replies and block status: unless told not to, the client asks for structured
 * replies and, when granted, selects `base:allocation` for its export. `extents` then asks
 * NBD_CMD_BLOCK_STATUS (as often as the server's partial answers need) and reports ranges with
 * NBD_STATE_ZERO as zero; without the context it reports one non-zero extent. Structured READ
 * replies are reassembled from data and hole chunks; a chunk outside its request, overlapping
 * another, of an unknown non-error type or with inconsistent lengths, or a reply that ends
 * without covering its whole range, is garbage: the connection is failed (the spec's hard
 * disconnect), never a silently wrong buffer. The client asks for the
 * server's block size constraints and keeps to them: against a server whose minimum block size is
 * above 1 (not torus's), unaligned calls fail with `invalid` (no read-modify-write is done).
 * @module
 */

import {
  closed,
  ErrorCode,
  errorMessage,
  invalid,
  NBD_REQUEST_LENGTH_MAX_BYTES,
  NBD_REQUESTS_IN_FLIGHT_MAX,
  TorusError,
} from "../../core/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "../device.ts";
import {
  type HandshakeDeadline,
  type NbdExportInfo,
  NbdNegotiation,
  withHandshakeDeadline,
} from "./client_handshake.ts";
import { nbdErrnoName, torusErrorOfErrno } from "./errno.ts";
import {
  type BlockStatusDescriptor,
  decodeBlockStatusPayload,
  decodeChunkOffset,
  decodeErrorPayload,
  decodeOffsetHolePayload,
  decodeReplyStart,
  decodeSimpleReply,
  encodeRequestHeader,
  isErrorChunkType,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_META_CONTEXT_BASE_ALLOCATION,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_MAGIC,
  newStructuredReplyHeader,
  type RequestHeader,
  type StructuredReplyHeader,
} from "./protocol.ts";
import type { ByteStream, StreamReader } from "./stream.ts";
import { writeAll } from "./stream.ts";

export { type NbdExportInfo, type NbdListedExport, NbdNegotiation } from "./client_handshake.ts";

/** Options of {@link NbdClient.connect}. */
export interface NbdClientOptions {
  exportName: string;
  /** Most requests in flight (default NBD_REQUESTS_IN_FLIGHT_MAX). */
  requestsInFlightMax?: number;
  /** Ask for structured replies (default true). */
  structuredReplies?: boolean;
  /** With structured replies, select `base:allocation` so `extents` asks the server (default true). */
  blockStatus?: boolean;
  /** How long the server gets to finish the handshake (default NBD_CLIENT_HANDSHAKE_TIMEOUT_MS). */
  handshake?: HandshakeDeadline;
}

interface Pending {
  what: string;
  type: number;
  offsetBytes: number;
  lengthBytes: number;
  /** Where a READ's data goes. */
  into: Uint8Array | null;
  /** Parts of a structured READ's range that chunks have filled. */
  covered: CoveredRanges | null;
  /** A BLOCK_STATUS reply's extents. */
  status: BlockStatusDescriptor[] | null;
  /** The first error chunk of a structured reply. */
  error: TorusError | null;
  /** Chunks received so far (a simple reply may not follow one). */
  chunks: number;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Small payloads are sent in the same write as their header. */
const JOIN_PAYLOAD_MAX_BYTES = 64 * 1024;
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** Longest chunk payload accepted other than OFFSET_DATA (block status, errors). */
const CHUNK_PAYLOAD_MAX_BYTES = 1024 * 1024;
/** Most of a range one NBD_CMD_BLOCK_STATUS asks about (a multiple of every minimum block size). */
const BLOCK_STATUS_ASK_MAX_BYTES = 2 ** 31;

/** An NBD client in the transmission phase; a Device. */
export class NbdClient implements Device {
  readonly info: NbdExportInfo;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly preferredBlockSizeBytes: number;
  readonly #stream: ByteStream;
  readonly #reader: StreamReader;
  readonly #maxRequestBytes: number;
  /** The server's minimum block size: offsets and lengths must be multiples of it. */
  readonly #minimumBytes: number;
  readonly #requestsInFlightMax: number;
  /** Replies may be structured (NBD_OPT_STRUCTURED_REPLY was granted). */
  readonly #structured: boolean;
  /** The id of `base:allocation`, when the server selected it. */
  readonly #contextId: number | null;
  readonly #pending = new Map<number, Pending>();
  readonly #slotWaiters: (() => void)[] = [];
  readonly #idleWaiters: (() => void)[] = [];
  /** Public calls in flight. */
  #calls = 0;
  #nextHandle = 1;
  #sending: Promise<void> = Promise.resolve();
  #failure: TorusError | null = null;
  #closing: Promise<void> | null = null;
  readonly #receiving: Promise<void>;

  private constructor(
    negotiation: NbdNegotiation,
    info: NbdExportInfo,
    options: { inFlightMax: number; structured: boolean; contextId: number | null },
  ) {
    this.info = info;
    this.#structured = options.structured;
    this.#contextId = options.contextId;
    this.sizeBytes = info.sizeBytes;
    this.readOnly = info.readOnly;
    const preferred = info.blockSize?.preferredBytes ?? 4096;
    this.preferredBlockSizeBytes = preferred >= 512 ? preferred : 4096;
    const maximum = info.blockSize?.maximumBytes ?? 0;
    this.#maxRequestBytes = maximum > 0
      ? Math.min(maximum, NBD_REQUEST_LENGTH_MAX_BYTES)
      : NBD_REQUEST_LENGTH_MAX_BYTES;
    this.#minimumBytes = Math.max(1, info.blockSize?.minimumBytes ?? 1);
    this.#stream = negotiation.stream;
    this.#reader = negotiation.reader;
    this.#requestsInFlightMax = options.inFlightMax;
    this.#receiving = this.#receive();
  }

  /** Negotiates `exportName` on `stream` and starts the transmission phase. */
  static async connect(stream: ByteStream, options: NbdClientOptions): Promise<NbdClient> {
    try {
      const { negotiation, info, structured, contextId } = await withHandshakeDeadline(
        stream,
        options.handshake ?? {},
        async () => {
          const negotiation = await NbdNegotiation.start(stream);
          const extensions = await negotiateExtensions(negotiation, options);
          const info = await negotiation.go(options.exportName);
          return { negotiation, info, ...extensions };
        },
      );
      return new NbdClient(negotiation, info, {
        inFlightMax: options.requestsInFlightMax ?? NBD_REQUESTS_IN_FLIGHT_MAX,
        structured,
        contextId,
      });
    } catch (error) {
      try {
        stream.close();
      } catch {
        // Already closed.
      }
      throw error;
    }
  }

  /** Whether the server agreed to structured replies. */
  get structuredReplies(): boolean {
    return this.#structured;
  }

  /** Whether `extents` asks the server (base:allocation was selected). */
  get blockStatus(): boolean {
    return this.#contextId !== null;
  }

  /** Whether the server offered a flag (NBD_FLAG_…). */
  has(transmissionFlag: number): boolean {
    return (this.info.transmissionFlags & transmissionFlag) !== 0;
  }

  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    return this.#track(
      offsetBytes,
      into.length,
      false,
      () =>
        this.#chunked(into.length, (at, length) =>
          this.#request({
            type: NBD_CMD_READ,
            flags: 0,
            offsetBytes: offsetBytes + at,
            lengthBytes: length,
            into: into.subarray(at, at + length),
            signal: options?.signal,
          })),
    );
  }

  writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions): Promise<void> {
    return this.#track(
      offsetBytes,
      data.length,
      true,
      () => this.#writeAt(offsetBytes, data, options),
    );
  }

  flush(options?: DeviceCallOptions): Promise<void> {
    return this.#track(0, 0, false, () => this.#flush(options));
  }

  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    // Not NBD_CMD_TRIM: after it the contents are unspecified, and a Device trim reads as zeros.
    return this.writeZeroes(offsetBytes, lengthBytes, { ...options, noHole: false });
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    return this.#track(
      offsetBytes,
      lengthBytes,
      true,
      () => this.#writeZeroes(offsetBytes, lengthBytes, options),
    );
  }

  /**
   * NBD_CMD_TRIM: a hint that the range is no longer needed, so the server may free its space.
   * Unlike {@link trim}, the range's contents are unspecified afterwards. A no-op on servers
   * that do not offer it.
   */
  discard(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    return this.#track(offsetBytes, lengthBytes, true, async () => {
      if (!this.has(NBD_FLAG_SEND_TRIM)) return;
      const fua = options?.fua === true && this.has(NBD_FLAG_SEND_FUA);
      await this.#chunked(lengthBytes, (at, length) =>
        this.#request({
          type: NBD_CMD_TRIM,
          flags: fua ? NBD_CMD_FLAG_FUA : 0,
          offsetBytes: offsetBytes + at,
          lengthBytes: length,
          signal: options?.signal,
        }));
    });
  }

  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    return this.#track(offsetBytes, lengthBytes, false, async () => {
      if (lengthBytes === 0) return [];
      if (this.#contextId === null) return [{ offsetBytes, lengthBytes, zero: false }];
      const extents: DeviceExtent[] = [];
      const end = offsetBytes + lengthBytes;
      let at = offsetBytes;
      while (at < end) {
        // The server may describe less than was asked: ask again from where it stopped.
        for (const descriptor of await this.#blockStatus(at, end - at)) {
          const length = Math.min(descriptor.lengthBytes, end - at);
          appendExtent(extents, at, length, (descriptor.flags & NBD_STATE_ZERO) !== 0);
          at += length;
          if (at >= end) break;
        }
      }
      return extents;
    });
  }

  async #blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusDescriptor[]> {
    const pending = await this.#request({
      type: NBD_CMD_BLOCK_STATUS,
      flags: 0,
      offsetBytes,
      lengthBytes: Math.min(lengthBytes, BLOCK_STATUS_ASK_MAX_BYTES),
    });
    return pending.status!;
  }

  /** Waits for calls in flight, flushes a writable export, sends NBD_CMD_DISC and closes. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    try {
      if (this.#calls > 0) await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
      if (this.#failure === null && !this.readOnly) await this.#flush();
      if (this.#failure === null) {
        const header = encodeHeader({
          type: NBD_CMD_DISC,
          flags: 0,
          handleHigh: 0,
          handleLow: 0,
          offsetBytes: 0,
          lengthBytes: 0,
        }, undefined);
        await this.#send(header, null).catch(() => {});
      }
    } finally {
      this.#fail(closed("NBD client is closed"));
      await this.#receiving;
    }
  }

  // -------------------------------------------------------------------------------------------

  /** Checks a call and counts it in flight until it settles, so close() can wait for it. */
  async #track<T>(
    offsetBytes: number,
    lengthBytes: number,
    writes: boolean,
    call: () => Promise<T>,
  ): Promise<T> {
    this.#check(offsetBytes, lengthBytes, writes);
    this.#calls++;
    try {
      return await call();
    } finally {
      if (--this.#calls === 0) { for (const wake of this.#idleWaiters.splice(0)) wake(); }
    }
  }

  #check(offsetBytes: number, lengthBytes: number, writes: boolean): void {
    if (this.#closing !== null) throw closed("NBD client is closed");
    if (this.#failure !== null) throw this.#failure;
    if (writes && this.readOnly) {
      throw new TorusError(ErrorCode.ReadOnly, `NBD export "${this.info.name}" is read-only`);
    }
    if (
      !Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || !Number.isSafeInteger(lengthBytes) ||
      lengthBytes < 0 || offsetBytes + lengthBytes > this.sizeBytes
    ) {
      throw invalid(
        `range ${offsetBytes}+${lengthBytes} is outside NBD export "${this.info.name}" ` +
          `(${this.sizeBytes} bytes)`,
      );
    }
    // Having asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, the client must keep to it.
    if (offsetBytes % this.#minimumBytes !== 0 || lengthBytes % this.#minimumBytes !== 0) {
      throw invalid(
        `range ${offsetBytes}+${lengthBytes} is not aligned to the ${this.#minimumBytes}-byte ` +
          `minimum block size of NBD export "${this.info.name}"`,
      );
    }
  }

  async #writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions) {
    const fua = options?.fua === true && this.has(NBD_FLAG_SEND_FUA);
    await this.#chunked(data.length, (at, length) =>
      this.#request({
        type: NBD_CMD_WRITE,
        flags: fua ? NBD_CMD_FLAG_FUA : 0,
        offsetBytes: offsetBytes + at,
        lengthBytes: length,
        payload: data.subarray(at, at + length),
        signal: options?.signal,
      }));
    if (options?.fua === true && !fua) await this.#flush(options);
  }

  async #flush(options?: DeviceCallOptions): Promise<void> {
    if (!this.has(NBD_FLAG_SEND_FLUSH)) return;
    await this.#request({
      type: NBD_CMD_FLUSH,
      flags: 0,
      offsetBytes: 0,
      lengthBytes: 0,
      signal: options?.signal,
    });
  }

  async #writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    if (!this.has(NBD_FLAG_SEND_WRITE_ZEROES)) {
      const zeros = new Uint8Array(Math.min(lengthBytes, ZERO_CHUNK_BYTES));
      const writes: Promise<void>[] = [];
      for (let at = 0; at < lengthBytes; at += zeros.length) {
        const length = Math.min(zeros.length, lengthBytes - at);
        writes.push(this.#writeAt(offsetBytes + at, zeros.subarray(0, length), options));
      }
      await Promise.all(writes);
      return;
    }
    const fua = options?.fua === true && this.has(NBD_FLAG_SEND_FUA);
    const flags = (fua ? NBD_CMD_FLAG_FUA : 0) | (options?.noHole ? NBD_CMD_FLAG_NO_HOLE : 0);
    await this.#chunked(lengthBytes, (at, length) =>
      this.#request({
        type: NBD_CMD_WRITE_ZEROES,
        flags,
        offsetBytes: offsetBytes + at,
        lengthBytes: length,
        signal: options?.signal,
      }));
    if (options?.fua === true && !fua) await this.#flush(options);
  }

  /** Runs `call` over pieces of at most the server's maximum request length, all in flight. */
  async #chunked(
    lengthBytes: number,
    call: (at: number, length: number) => Promise<unknown>,
  ): Promise<void> {
    if (lengthBytes <= this.#maxRequestBytes) {
      if (lengthBytes > 0) await call(0, lengthBytes);
      return;
    }
    const calls: Promise<unknown>[] = [];
    for (let at = 0; at < lengthBytes; at += this.#maxRequestBytes) {
      calls.push(call(at, Math.min(this.#maxRequestBytes, lengthBytes - at)));
    }
    const results = await Promise.allSettled(calls);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Sends one request and waits for its reply; the settled record (a block status's extents). */
  async #request(request: {
    type: number;
    flags: number;
    offsetBytes: number;
    lengthBytes: number;
    into?: Uint8Array;
    payload?: Uint8Array;
    signal?: AbortSignal | undefined;
  }): Promise<Pending> {
    while (this.#pending.size >= this.#requestsInFlightMax) {
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    request.signal?.throwIfAborted();
    if (this.#failure !== null) throw this.#failure;
    const handle = this.#newHandle();
    const what = `${commandName(request.type)} at ${request.offsetBytes}+${request.lengthBytes}`;
    const header: RequestHeader = {
      type: request.type,
      flags: request.flags,
      handleHigh: 0,
      handleLow: handle,
      offsetBytes: request.offsetBytes,
      lengthBytes: request.lengthBytes,
    };
    let pending: Pending | null = null;
    const replied = new Promise<void>((resolve, reject) => {
      pending = {
        what,
        type: request.type,
        offsetBytes: request.offsetBytes,
        lengthBytes: request.lengthBytes,
        into: request.into ?? null,
        covered: null,
        status: null,
        error: null,
        chunks: 0,
        resolve,
        reject,
      };
      this.#pending.set(handle, pending);
    });
    // A failed send fails the connection, which rejects `replied` too.
    this.#send(encodeHeader(header, request.payload), request.payload ?? null).catch(() => {});
    await replied;
    return pending!;
  }

  #newHandle(): number {
    // Handles are 32-bit counters (the high half stays 0), skipping any still in flight.
    do {
      this.#nextHandle = (this.#nextHandle + 1) >>> 0;
    } while (this.#pending.has(this.#nextHandle));
    return this.#nextHandle;
  }

  /** Queues bytes for the socket; requests go out whole and in the order they were made. */
  #send(header: Uint8Array, payload: Uint8Array | null): Promise<void> {
    const joined = payload === null || payload.length > JOIN_PAYLOAD_MAX_BYTES ? null : header;
    const sent = this.#sending.then(async () => {
      if (this.#failure !== null) throw this.#failure;
      await writeAll(this.#stream, joined ?? header);
      if (joined === null && payload !== null) await writeAll(this.#stream, payload);
    });
    this.#sending = sent.catch((error) => this.#fail(lost(error)));
    return sent;
  }

  /** Reads replies until the connection ends. */
  async #receive(): Promise<void> {
    const reply = { error: 0, handleHigh: 0, handleLow: 0 };
    const chunk = newStructuredReplyHeader();
    try {
      for (;;) {
        const bytes = await this.#reader.readExact(NBD_SIMPLE_REPLY_BYTES);
        const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        const magic = decodeReplyStart(view, 0, chunk);
        if (magic === NBD_SIMPLE_REPLY_MAGIC) {
          decodeSimpleReply(view, 0, reply);
          await this.#simpleReply(reply);
        } else if (magic === NBD_STRUCTURED_REPLY_MAGIC && this.#structured) {
          const length = await this.#reader.readExact(4);
          chunk.lengthBytes = new DataView(length.buffer, length.byteOffset, 4).getUint32(0);
          await this.#chunk(chunk);
        } else {
          throw invalid("NBD server sent a reply with a bad magic");
        }
      }
    } catch (error) {
      this.#fail(this.#closing !== null ? closed("NBD client is closed") : lost(error));
    }
  }

  async #simpleReply(reply: { error: number; handleHigh: number; handleLow: number }) {
    const pending = this.#pendingFor(reply.handleHigh, reply.handleLow);
    // With structured replies a READ (and a successful BLOCK_STATUS) must come in chunks.
    if (
      this.#structured &&
      (pending.type === NBD_CMD_READ || pending.chunks > 0 ||
        (pending.type === NBD_CMD_BLOCK_STATUS && reply.error === 0))
    ) {
      throw invalid(`NBD server sent a simple reply to ${pending.what}`);
    }
    if (reply.error === 0 && pending.into !== null) await this.#reader.readInto(pending.into);
    this.#settle(
      reply.handleLow,
      pending,
      reply.error === 0 ? null : torusErrorOfErrno(reply.error, pending.what),
    );
  }

  #pendingFor(handleHigh: number, handleLow: number): Pending {
    const pending = this.#pending.get(handleLow);
    if (handleHigh !== 0 || pending === undefined) {
      throw invalid(`NBD server replied to unknown handle ${handleLow}`);
    }
    return pending;
  }

  /** One structured reply chunk: checked against its request, applied, and settled when DONE. */
  async #chunk(chunk: StructuredReplyHeader): Promise<void> {
    const { type, flags, lengthBytes, handleLow } = chunk;
    const pending = this.#pendingFor(chunk.handleHigh, handleLow);
    pending.chunks++;
    if (type === NBD_REPLY_TYPE_OFFSET_DATA || type === NBD_REPLY_TYPE_OFFSET_HOLE) {
      await this.#contentChunk(pending, type, lengthBytes);
    } else if (type === NBD_REPLY_TYPE_BLOCK_STATUS) {
      await this.#statusChunk(pending, lengthBytes);
    } else if (isErrorChunkType(type)) {
      await this.#errorChunk(pending, type, lengthBytes);
    } else if (type !== NBD_REPLY_TYPE_NONE || lengthBytes !== 0) {
      throw invalid(`NBD server sent a chunk of type ${type} (${lengthBytes} bytes)`);
    } else if ((flags & NBD_REPLY_FLAG_DONE) === 0) {
      throw invalid("NBD server sent NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE");
    }
    if ((flags & NBD_REPLY_FLAG_DONE) === 0) return;
    if (pending.error === null) checkComplete(pending);
    this.#settle(handleLow, pending, pending.error);
  }

  async #contentChunk(pending: Pending, type: number, lengthBytes: number): Promise<void> {
    if (pending.type !== NBD_CMD_READ || pending.into === null) {
      throw invalid(`NBD server sent read data in reply to ${pending.what}`);
    }
    let offset: number;
    let length: number;
    if (type === NBD_REPLY_TYPE_OFFSET_DATA) {
      if (lengthBytes < 9) throw invalid(`NBD_REPLY_TYPE_OFFSET_DATA of ${lengthBytes} bytes`);
      offset = decodeChunkOffset(await this.#reader.readExact(8));
      length = lengthBytes - 8;
    } else {
      if (lengthBytes !== 12) throw invalid(`NBD_REPLY_TYPE_OFFSET_HOLE of ${lengthBytes} bytes`);
      const hole = decodeOffsetHolePayload(await this.#reader.readExact(12));
      offset = hole.offsetBytes;
      length = hole.holeBytes;
    }
    const from = offset - pending.offsetBytes;
    if (from < 0 || from + length > pending.lengthBytes) {
      throw invalid(`NBD server sent data at ${offset}+${length} for ${pending.what}`);
    }
    pending.covered ??= new CoveredRanges();
    if (!pending.covered.add(from, from + length)) {
      throw invalid(`NBD server sent overlapping data at ${offset}+${length} for ${pending.what}`);
    }
    const into = pending.into.subarray(from, from + length);
    if (type === NBD_REPLY_TYPE_OFFSET_DATA) await this.#reader.readInto(into);
    else into.fill(0);
  }

  async #statusChunk(pending: Pending, lengthBytes: number): Promise<void> {
    if (pending.type !== NBD_CMD_BLOCK_STATUS || pending.status !== null) {
      throw invalid(`NBD server sent an unexpected block status for ${pending.what}`);
    }
    const { contextId, descriptors } = decodeBlockStatusPayload(
      await this.#payload(lengthBytes),
    );
    if (contextId !== this.#contextId) {
      throw invalid(`NBD server sent block status of unknown context ${contextId}`);
    }
    pending.status = descriptors;
  }

  async #errorChunk(pending: Pending, type: number, lengthBytes: number): Promise<void> {
    const chunk = decodeErrorPayload(type, await this.#payload(lengthBytes));
    const { offsetBytes } = chunk;
    if (
      offsetBytes !== null &&
      (offsetBytes < pending.offsetBytes ||
        offsetBytes >= pending.offsetBytes + pending.lengthBytes)
    ) {
      throw invalid(`NBD server reported an error at ${offsetBytes}, outside ${pending.what}`);
    }
    if (pending.error !== null) return;
    const where = offsetBytes === null ? "" : ` at ${offsetBytes}`;
    const message = chunk.message === "" ? "" : `: ${chunk.message}`;
    const error = torusErrorOfErrno(chunk.error, pending.what);
    pending.error = new TorusError(
      error.code,
      `NBD ${pending.what} failed${where}: ${nbdErrnoName(chunk.error)}${message}`,
    );
  }

  /** A chunk payload other than read data, read whole (bounded). */
  async #payload(lengthBytes: number): Promise<Uint8Array> {
    if (lengthBytes > CHUNK_PAYLOAD_MAX_BYTES) {
      throw invalid(`NBD server sent a chunk payload of ${lengthBytes} bytes`);
    }
    const payload = new Uint8Array(lengthBytes);
    await this.#reader.readInto(payload);
    return payload;
  }

  /** A reply is complete: the request settles and its slot is free. */
  #settle(handle: number, pending: Pending, error: TorusError | null): void {
    this.#pending.delete(handle);
    this.#slotWaiters.shift()?.();
    if (error === null) pending.resolve();
    else pending.reject(error);
  }

  /** Fails the connection: every pending and later call rejects with `error`. */
  #fail(error: TorusError): void {
    if (this.#failure === null) {
      this.#failure = error;
      try {
        this.#stream.close();
      } catch {
        // Already closed.
      }
    }
    for (const pending of this.#pending.values()) pending.reject(this.#failure);
    this.#pending.clear();
    for (const wake of this.#slotWaiters.splice(0)) wake();
  }
}

function encodeHeader(header: RequestHeader, payload: Uint8Array | undefined): Uint8Array {
  const join = payload !== undefined && payload.length <= JOIN_PAYLOAD_MAX_BYTES;
  const bytes = new Uint8Array(NBD_REQUEST_HEADER_BYTES + (join ? payload.length : 0));
  encodeRequestHeader(new DataView(bytes.buffer), 0, header);
  if (join) bytes.set(payload, NBD_REQUEST_HEADER_BYTES);
  return bytes;
}

/** A successful structured reply must have said everything its request asked for. */
function checkComplete(pending: Pending): void {
  if (pending.type === NBD_CMD_READ && (pending.covered?.totalBytes ?? 0) !== pending.lengthBytes) {
    throw invalid(`NBD server ended its reply to ${pending.what} before sending all the data`);
  }
  if (pending.type === NBD_CMD_BLOCK_STATUS && pending.status === null) {
    throw invalid(`NBD server ended its reply to ${pending.what} without a block status`);
  }
}

/**
 * The parts of a range that a reply's chunks have filled, as sorted, disjoint [start, end)
 * ranges; chunks usually come in order, so adding one is an append.
 */
export class CoveredRanges {
  readonly #starts: number[] = [];
  readonly #ends: number[] = [];
  totalBytes = 0;

  /** Adds [start, end); false (nothing added) when it overlaps a range already there. */
  add(start: number, end: number): boolean {
    const starts = this.#starts;
    // The first range starting at or after `end`... found from the back, where appends land.
    let i = starts.length;
    while (i > 0 && starts[i - 1]! >= end) i--;
    if (i > 0 && this.#ends[i - 1]! > start) return false;
    starts.splice(i, 0, start);
    this.#ends.splice(i, 0, end);
    this.totalBytes += end - start;
    return true;
  }
}

/** Appends an extent, joining it to the previous one when both say the same. */
function appendExtent(
  extents: DeviceExtent[],
  offsetBytes: number,
  lengthBytes: number,
  zero: boolean,
) {
  const last = extents.at(-1);
  if (last !== undefined && last.zero === zero) {
    extents[extents.length - 1] = { ...last, lengthBytes: last.lengthBytes + lengthBytes };
  } else {
    extents.push({ offsetBytes, lengthBytes, zero });
  }
}

/** Structured replies and `base:allocation`, as far as the options ask and the server grants. */
async function negotiateExtensions(
  negotiation: NbdNegotiation,
  options: NbdClientOptions,
): Promise<{ structured: boolean; contextId: number | null }> {
  if (options.structuredReplies === false || !negotiation.fixedNewstyle) {
    return { structured: false, contextId: null };
  }
  const structured = await negotiation.structuredReply();
  if (!structured || options.blockStatus === false) return { structured, contextId: null };
  const contexts = await negotiation.setMetaContext(options.exportName, [
    NBD_META_CONTEXT_BASE_ALLOCATION,
  ]);
  return { structured, contextId: contexts.get(NBD_META_CONTEXT_BASE_ALLOCATION) ?? null };
}

function lost(error: unknown): TorusError {
  if (error instanceof TorusError && error.code === ErrorCode.Unavailable) return error;
  return new TorusError(
    ErrorCode.Unavailable,
    `NBD connection lost: ${errorMessage(error)}`,
    { cause: error },
  );
}

function commandName(type: number): string {
  switch (type) {
    case NBD_CMD_READ:
      return "read";
    case NBD_CMD_WRITE:
      return "write";
    case NBD_CMD_FLUSH:
      return "flush";
    case NBD_CMD_WRITE_ZEROES:
      return "write-zeroes";
    case NBD_CMD_TRIM:
      return "trim";
    case NBD_CMD_BLOCK_STATUS:
      return "block-status";
    default:
      return `command ${type}`;
  }
}
