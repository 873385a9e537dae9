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
 * `discard` is NBD_CMD_TRIM itself. `extents` reports one non-zero extent (no block status). Error replies become TorusErrors
 * (errno.ts); a lost connection fails every call with `unavailable`. The client asks for the
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
import { type NbdExportInfo, NbdNegotiation } from "./client_handshake.ts";
import { torusErrorOfErrno } from "./errno.ts";
import {
  decodeSimpleReply,
  encodeRequestHeader,
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
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
  type RequestHeader,
} from "./protocol.ts";
import type { ByteStream, StreamReader } from "./stream.ts";
import { writeAll } from "./stream.ts";

export { type NbdExportInfo, type NbdListedExport, NbdNegotiation } from "./client_handshake.ts";

/** Options of {@link NbdClient.connect}. */
export interface NbdClientOptions {
  exportName: string;
  /** Most requests in flight (default NBD_REQUESTS_IN_FLIGHT_MAX). */
  requestsInFlightMax?: number;
}

interface Pending {
  what: string;
  /** Where a READ's data goes. */
  into: Uint8Array | null;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/** Small payloads are sent in the same write as their header. */
const JOIN_PAYLOAD_MAX_BYTES = 64 * 1024;
const ZERO_CHUNK_BYTES = 1024 * 1024;

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

  private constructor(negotiation: NbdNegotiation, info: NbdExportInfo, inFlightMax: number) {
    this.info = info;
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
    this.#requestsInFlightMax = inFlightMax;
    this.#receiving = this.#receive();
  }

  /** Negotiates `exportName` on `stream` and starts the transmission phase. */
  static async connect(stream: ByteStream, options: NbdClientOptions): Promise<NbdClient> {
    let negotiation: NbdNegotiation | null = null;
    try {
      negotiation = await NbdNegotiation.start(stream);
      const info = await negotiation.go(options.exportName);
      return new NbdClient(
        negotiation,
        info,
        options.requestsInFlightMax ?? NBD_REQUESTS_IN_FLIGHT_MAX,
      );
    } catch (error) {
      try {
        stream.close();
      } catch {
        // Already closed.
      }
      throw error;
    }
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
    return this.#track(offsetBytes, lengthBytes, false, () => {
      const extents = lengthBytes === 0 ? [] : [{ offsetBytes, lengthBytes, zero: false }];
      return Promise.resolve(extents);
    });
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
    call: (at: number, length: number) => Promise<void>,
  ): Promise<void> {
    if (lengthBytes <= this.#maxRequestBytes) {
      if (lengthBytes > 0) await call(0, lengthBytes);
      return;
    }
    const calls: Promise<void>[] = [];
    for (let at = 0; at < lengthBytes; at += this.#maxRequestBytes) {
      calls.push(call(at, Math.min(this.#maxRequestBytes, lengthBytes - at)));
    }
    const results = await Promise.allSettled(calls);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  /** Sends one request and waits for its reply. */
  async #request(request: {
    type: number;
    flags: number;
    offsetBytes: number;
    lengthBytes: number;
    into?: Uint8Array;
    payload?: Uint8Array;
    signal?: AbortSignal | undefined;
  }): Promise<void> {
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
    const replied = new Promise<void>((resolve, reject) => {
      this.#pending.set(handle, { what, into: request.into ?? null, resolve, reject });
    });
    // A failed send fails the connection, which rejects `replied` too.
    this.#send(encodeHeader(header, request.payload), request.payload ?? null).catch(() => {});
    await replied;
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
    try {
      for (;;) {
        const bytes = await this.#reader.readExact(NBD_SIMPLE_REPLY_BYTES);
        const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
        if (!decodeSimpleReply(view, 0, reply)) {
          throw invalid("NBD server sent a reply with a bad magic (or a structured reply)");
        }
        const pending = this.#pending.get(reply.handleLow);
        if (reply.handleHigh !== 0 || pending === undefined) {
          throw invalid(`NBD server replied to unknown handle ${reply.handleLow}`);
        }
        if (reply.error === 0 && pending.into !== null) await this.#reader.readInto(pending.into);
        this.#pending.delete(reply.handleLow);
        this.#slotWaiters.shift()?.();
        if (reply.error === 0) pending.resolve();
        else pending.reject(torusErrorOfErrno(reply.error, pending.what));
      }
    } catch (error) {
      this.#fail(this.#closing !== null ? closed("NBD client is closed") : lost(error));
    }
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
    default:
      return `command ${type}`;
  }
}
