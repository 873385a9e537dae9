/**
 * The server side of the NBD transmission phase for one connection: the hot path.
 *
 * How it is fast (measured in docs/benchmarks.md; the tricks toolchain.md found):
 * - One large input buffer per connection. Every socket read lands in it and every complete
 *   request in it is decoded and dispatched before the next read, so a client with 32 requests
 *   in flight costs about one read per 32 requests, not 32 (or 64: header, then payload).
 * - Decoding writes into one reused header record and requests live in pooled records whose
 *   completion callbacks are made once per record, so a request allocates no header object and
 *   no closure; payloads and read replies use pooled buffers (buffer_pool.ts).
 * - Replies are coalesced: completions are queued and written by one writer, started in a
 *   microtask so every request that completes in the same turn shares one write; while a write is
 *   on the socket, further completions gather for the next one. Small replies are copied into one
 *   output buffer; a large read reply is written straight from the buffer it was read into, its
 *   16-byte header placed in front of the data.
 * - A WRITE payload that is not yet in the input buffer is read straight into its own buffer.
 *
 * Rules it keeps:
 * - Requests run concurrently and are answered in completion order (out of order).
 * - At most `requestsInFlightMax` requests and `bufferedBytesMax` bytes of payloads and read
 *   replies are held per connection, counted until the reply has been written: a client that
 *   stops reading its replies stalls its own connection, it cannot grow the server's memory.
 * - NBD_CMD_DISC stops reading and the connection ends only after every request in flight has
 *   been answered. A bad magic or a WRITE longer than NBD_REQUEST_LENGTH_MAX_BYTES ends the
 *   connection the same way (the spec allows a hard disconnect); everything else malformed gets
 *   an error reply and the connection goes on.
 * - A client that disconnects aborts the signal given to device calls; their results are
 *   dropped. Device errors map to NBD errors through errno.ts.
 * @module
 */

import { closed, errorMessage, type Logger, NBD_REQUEST_LENGTH_MAX_BYTES } from "../../core/mod.ts";
import type { Device, DeviceCallOptions, WriteZeroesOptions } from "../device.ts";
import type { BufferPool, PooledBuffer } from "./buffer_pool.ts";
import { nbdErrnoOf } from "./errno.ts";
import {
  decodeRequestHeader,
  encodeSimpleReply,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
  newRequestHeader,
} from "./protocol.ts";
import { type ByteStream, writeAll } from "./stream.ts";

/**
 * Label of each slot of `requestsByCommand`: the spec's command names in lower case, by type
 * (NBD_CMD_READ = 0 … NBD_CMD_RESIZE = 8), then `other` for any type beyond them.
 */
export const NBD_COMMAND_LABELS: readonly string[] = [
  "read",
  "write",
  "disc",
  "flush",
  "trim",
  "cache",
  "write_zeroes",
  "block_status",
  "resize",
  "other",
];
const OTHER_COMMAND = NBD_COMMAND_LABELS.length - 1;

/** Counters of a server, shared by its connections (the node's /metrics exports them). */
export interface NbdServerStats {
  connectionsAccepted: number;
  connectionsOpen: number;
  /** Requests received in the transmission phase (DISC excluded). */
  requests: number;
  /**
   * Requests by command type (DISC included): index = type, types above the spec's last in the
   * last slot (labels: NBD_COMMAND_LABELS).
   */
  requestsByCommand: number[];
  /** Bytes returned by successful READs. */
  readBytes: number;
  /** Bytes stored by successful WRITEs. */
  writtenBytes: number;
  /** Requests answered with an error. */
  errorReplies: number;
  /** Connections closed for garbage (bad magic, oversized write, bad handshake). */
  protocolErrors: number;
  /** Most requests one connection had in flight at once. */
  requestsInFlightPeak: number;
  /** Most payload and reply bytes one connection held at once. */
  bufferedBytesPeak: number;
}

/** Zeroed counters. */
export function newServerStats(): NbdServerStats {
  return {
    connectionsAccepted: 0,
    connectionsOpen: 0,
    requests: 0,
    requestsByCommand: NBD_COMMAND_LABELS.map(() => 0),
    readBytes: 0,
    writtenBytes: 0,
    errorReplies: 0,
    protocolErrors: 0,
    requestsInFlightPeak: 0,
    bufferedBytesPeak: 0,
  };
}

/** What one connection's transmission phase is given. */
export interface TransmissionOptions {
  stream: ByteStream;
  device: Device;
  /** Refuse writes with EPERM. */
  readOnly: boolean;
  /** The handshake's read buffer; bytes [start, end) were read ahead and are parsed first. */
  input: Uint8Array;
  start: number;
  end: number;
  pool: BufferPool;
  stats: NbdServerStats;
  log: Logger;
  requestsInFlightMax: number;
  bufferedBytesMax: number;
}

/** One request, from decoding to the written reply. Pooled and reused. */
interface Request {
  type: number;
  flags: number;
  handleHigh: number;
  handleLow: number;
  offsetBytes: number;
  lengthBytes: number;
  /** NBD error value of the reply (0: success). */
  error: number;
  /** Write payload, or read reply (header + data). */
  buffer: PooledBuffer | null;
  /** Bytes counted against the connection's buffered-bytes bound. */
  costBytes: number;
  readonly onSuccess: () => void;
  readonly onFailure: (error: unknown) => void;
}

const HEADER = NBD_REQUEST_HEADER_BYTES;
const REPLY = NBD_SIMPLE_REPLY_BYTES;
/** Read replies up to this size are copied into the shared output buffer. */
const INLINE_REPLY_MAX_BYTES = 64 * 1024;
const OUTPUT_BUFFER_BYTES = 256 * 1024;

/** What parsing the input buffer stopped at. */
const Parse = { NeedBytes: 0, NeedCapacity: 1, NeedPayload: 2, Stop: 3 } as const;
type Parse = typeof Parse[keyof typeof Parse];

/** The transmission phase of one connection. */
export class Transmission {
  readonly #stream: ByteStream;
  readonly #device: Device;
  readonly #readOnly: boolean;
  readonly #pool: BufferPool;
  readonly #stats: NbdServerStats;
  readonly #log: Logger;
  readonly #requestsInFlightMax: number;
  readonly #bufferedBytesMax: number;
  readonly #input: Uint8Array;
  readonly #inputView: DataView;
  #start: number;
  #end: number;
  readonly #output = new Uint8Array(OUTPUT_BUFFER_BYTES);
  readonly #outputView = new DataView(this.#output.buffer);
  readonly #header = newRequestHeader();
  readonly #freeRequests: Request[] = [];
  #completed: Request[] = [];
  #spareBatch: Request[] = [];
  #inFlight = 0;
  #bufferedBytes = 0;
  #partialWrite: Request | null = null;
  #partialFilled = 0;
  #writing = false;
  #writeQueued = false;
  #peerGone = false;
  #shuttingDown = false;
  #capacityWaiter: (() => void) | null = null;
  #capacityWanted = 0;
  #idle: Promise<void> | null = null;
  #idleResolve: (() => void) | null = null;
  readonly #abort = new AbortController();
  // Call options are made once per connection, not per request.
  readonly #plain: DeviceCallOptions;
  readonly #fua: DeviceCallOptions & { fua: boolean };
  readonly #zeroOptions: WriteZeroesOptions[];
  readonly #writeRepliesTask = () => void this.#writeReplies();

  constructor(options: TransmissionOptions) {
    this.#stream = options.stream;
    this.#device = options.device;
    this.#readOnly = options.readOnly;
    this.#pool = options.pool;
    this.#stats = options.stats;
    this.#log = options.log;
    this.#requestsInFlightMax = options.requestsInFlightMax;
    this.#bufferedBytesMax = options.bufferedBytesMax;
    this.#input = options.input;
    this.#inputView = new DataView(this.#input.buffer, this.#input.byteOffset);
    this.#start = options.start;
    this.#end = options.end;
    const signal = this.#abort.signal;
    this.#plain = { signal };
    this.#fua = { signal, fua: true };
    // Indexed by (fua ? 1 : 0) | (noHole ? 2 : 0).
    this.#zeroOptions = [
      { signal },
      { signal, fua: true },
      { signal, noHole: true },
      { signal, fua: true, noHole: true },
    ];
  }

  /** Serves requests until the client disconnects, then waits for every request in flight. */
  async run(): Promise<void> {
    try {
      await this.#readRequests();
    } catch (error) {
      if (!this.#peerGone && !this.#shuttingDown) {
        this.#log.debug(`NBD connection read failed: ${errorMessage(error)}`);
      }
      this.#abort.abort(closed("NBD client disconnected"));
    }
    if (this.#partialWrite !== null) {
      this.#release(this.#partialWrite);
      this.#partialWrite = null;
    }
    await this.#whenIdle();
  }

  /**
   * Server shutdown: requests received from now on are answered ESHUTDOWN; resolves once every
   * request in flight is answered, then closes the stream (which ends {@link run}).
   */
  async shutdown(): Promise<void> {
    this.#shuttingDown = true;
    await this.#whenIdle();
    this.#closeStream();
  }

  // -------------------------------------------------------------------------------------------
  // Reading and parsing.

  async #readRequests(): Promise<void> {
    for (;;) {
      const parsed = this.#parseInput();
      if (parsed === Parse.Stop) return;
      if (parsed === Parse.NeedCapacity) {
        await new Promise<void>((resolve) => this.#capacityWaiter = resolve);
        continue;
      }
      if (parsed === Parse.NeedPayload) {
        if (!await this.#readPayload()) return;
        continue;
      }
      // Less than a header is left: move it to the front and read more behind it.
      if (this.#start > 0) {
        this.#input.copyWithin(0, this.#start, this.#end);
        this.#end -= this.#start;
        this.#start = 0;
      }
      const n = await this.#stream.read(this.#input.subarray(this.#end));
      if (n === null) {
        this.#abort.abort(closed("NBD client disconnected"));
        return;
      }
      this.#end += n;
    }
  }

  /** Dispatches every complete request in the input buffer. */
  #parseInput(): Parse {
    const header = this.#header;
    while (this.#end - this.#start >= HEADER) {
      if (!decodeRequestHeader(this.#inputView, this.#start, header)) {
        return this.#protocolError("a request with a bad magic");
      }
      const type = header.type;
      if (type === NBD_CMD_DISC) {
        this.#stats.requestsByCommand[NBD_CMD_DISC]!++;
        this.#start += HEADER;
        return Parse.Stop;
      }
      const length = header.lengthBytes;
      if (type === NBD_CMD_WRITE && length > NBD_REQUEST_LENGTH_MAX_BYTES) {
        return this.#protocolError(`a WRITE of ${length} bytes (most accepted: 32 MiB)`);
      }
      const carriesData = (type === NBD_CMD_WRITE || type === NBD_CMD_READ) &&
        length <= NBD_REQUEST_LENGTH_MAX_BYTES;
      const cost = carriesData ? length : 0;
      if (!this.#hasCapacity(cost)) {
        this.#capacityWanted = cost;
        return Parse.NeedCapacity;
      }
      this.#start += HEADER;
      const request = this.#take(cost);
      if (type !== NBD_CMD_WRITE) {
        this.#dispatch(request);
        continue;
      }
      const payload = this.#pool.take(length);
      request.buffer = payload;
      const available = Math.min(this.#end - this.#start, length);
      if (available > 0) {
        payload.bytes.set(this.#input.subarray(this.#start, this.#start + available));
        this.#start += available;
      }
      if (available < length) {
        this.#partialWrite = request;
        this.#partialFilled = available;
        return Parse.NeedPayload;
      }
      this.#dispatchWrite(request);
    }
    return Parse.NeedBytes;
  }

  /** Reads the rest of a WRITE payload straight into its buffer; false if the client left. */
  async #readPayload(): Promise<boolean> {
    const request = this.#partialWrite!;
    const bytes = request.buffer!.bytes;
    while (this.#partialFilled < request.lengthBytes) {
      const n = await this.#stream.read(bytes.subarray(this.#partialFilled, request.lengthBytes));
      if (n === null) {
        this.#abort.abort(closed("NBD client disconnected in the middle of a write"));
        return false;
      }
      this.#partialFilled += n;
    }
    this.#partialWrite = null;
    this.#dispatchWrite(request);
    return true;
  }

  #protocolError(what: string): Parse {
    this.#stats.protocolErrors++;
    this.#log.warn(`NBD client sent ${what}: closing its connection`);
    return Parse.Stop;
  }

  #hasCapacity(costBytes: number): boolean {
    if (this.#inFlight === 0) return true;
    return this.#inFlight < this.#requestsInFlightMax &&
      this.#bufferedBytes + costBytes <= this.#bufferedBytesMax;
  }

  /** A request record for the decoded header, counted as in flight. */
  #take(costBytes: number): Request {
    const header = this.#header;
    const request = this.#freeRequests.pop() ?? this.#newRequest();
    request.type = header.type;
    request.flags = header.flags;
    request.handleHigh = header.handleHigh;
    request.handleLow = header.handleLow;
    request.offsetBytes = header.offsetBytes;
    request.lengthBytes = header.lengthBytes;
    request.error = 0;
    request.costBytes = costBytes;
    this.#inFlight++;
    this.#bufferedBytes += costBytes;
    const stats = this.#stats;
    stats.requests++;
    stats.requestsByCommand[header.type < OTHER_COMMAND ? header.type : OTHER_COMMAND]!++;
    if (this.#inFlight > stats.requestsInFlightPeak) stats.requestsInFlightPeak = this.#inFlight;
    if (this.#bufferedBytes > stats.bufferedBytesPeak) {
      stats.bufferedBytesPeak = this.#bufferedBytes;
    }
    return request;
  }

  #newRequest(): Request {
    const request: Request = {
      type: 0,
      flags: 0,
      handleHigh: 0,
      handleLow: 0,
      offsetBytes: 0,
      lengthBytes: 0,
      error: 0,
      buffer: null,
      costBytes: 0,
      onSuccess: () => this.#finish(request, 0),
      onFailure: (error: unknown) => this.#finish(request, this.#errnoOf(request, error)),
    };
    return request;
  }

  // -------------------------------------------------------------------------------------------
  // Dispatching requests to the device.

  #dispatch(request: Request): void {
    if (this.#shuttingDown) return this.#finish(request, NBD_ESHUTDOWN);
    switch (request.type) {
      case NBD_CMD_READ:
        return this.#read(request);
      case NBD_CMD_FLUSH:
        return this.#flush(request);
      case NBD_CMD_TRIM:
        return this.#trim(request);
      case NBD_CMD_WRITE_ZEROES:
        return this.#writeZeroes(request);
      default:
        // Unknown commands, and NBD_CMD_CACHE / NBD_CMD_BLOCK_STATUS, which are not offered.
        return this.#finish(request, NBD_EINVAL);
    }
  }

  #inRange(request: Request): boolean {
    return request.offsetBytes + request.lengthBytes <= this.#device.sizeBytes;
  }

  #read(request: Request): void {
    const length = request.lengthBytes;
    if (
      (request.flags & ~NBD_CMD_FLAG_FUA) !== 0 || length > NBD_REQUEST_LENGTH_MAX_BYTES ||
      !this.#inRange(request)
    ) {
      return this.#finish(request, NBD_EINVAL);
    }
    if (length === 0) return this.#finish(request, 0);
    // The reply header goes in front of the data, so a large reply is written in one piece.
    const buffer = this.#pool.take(REPLY + length);
    request.buffer = buffer;
    try {
      this.#device.readAt(
        request.offsetBytes,
        buffer.bytes.subarray(REPLY, REPLY + length),
        this.#plain,
      )
        .then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #dispatchWrite(request: Request): void {
    if (this.#shuttingDown) return this.#finish(request, NBD_ESHUTDOWN);
    if (this.#readOnly) return this.#finish(request, NBD_EPERM);
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0) return this.#finish(request, NBD_EINVAL);
    if (!this.#inRange(request)) return this.#finish(request, NBD_ENOSPC);
    const length = request.lengthBytes;
    if (length === 0) return this.#finish(request, 0);
    const options = (request.flags & NBD_CMD_FLAG_FUA) !== 0 ? this.#fua : this.#plain;
    try {
      this.#device.writeAt(request.offsetBytes, request.buffer!.bytes.subarray(0, length), options)
        .then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #flush(request: Request): void {
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0) return this.#finish(request, NBD_EINVAL);
    try {
      this.#device.flush(this.#plain).then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #trim(request: Request): void {
    if (this.#readOnly) return this.#finish(request, NBD_EPERM);
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0 || !this.#inRange(request)) {
      return this.#finish(request, NBD_EINVAL);
    }
    if (request.lengthBytes === 0) return this.#finish(request, 0);
    const options = (request.flags & NBD_CMD_FLAG_FUA) !== 0 ? this.#fua : this.#plain;
    try {
      this.#device.trim(request.offsetBytes, request.lengthBytes, options)
        .then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #writeZeroes(request: Request): void {
    if (this.#readOnly) return this.#finish(request, NBD_EPERM);
    const flags = request.flags;
    if ((flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE)) !== 0) {
      return this.#finish(request, NBD_EINVAL);
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_ENOSPC);
    if (request.lengthBytes === 0) return this.#finish(request, 0);
    const options = this.#zeroOptions[
      ((flags & NBD_CMD_FLAG_FUA) !== 0 ? 1 : 0) | ((flags & NBD_CMD_FLAG_NO_HOLE) !== 0 ? 2 : 0)
    ]!;
    try {
      this.#device.writeZeroes(request.offsetBytes, request.lengthBytes, options)
        .then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #errnoOf(request: Request, error: unknown): number {
    const errno = nbdErrnoOf(error);
    if (!this.#abort.signal.aborted) {
      this.#log.debug(
        `NBD command ${request.type} at ${request.offsetBytes}+${request.lengthBytes} failed: ` +
          errorMessage(error),
      );
    }
    return errno;
  }

  // -------------------------------------------------------------------------------------------
  // Replies.

  /** Records a request's outcome and queues its reply. */
  #finish(request: Request, error: number): void {
    request.error = error;
    const stats = this.#stats;
    if (error !== 0) {
      stats.errorReplies++;
    } else if (request.type === NBD_CMD_READ) {
      stats.readBytes += request.lengthBytes;
    } else if (request.type === NBD_CMD_WRITE) {
      stats.writtenBytes += request.lengthBytes;
    }
    // A write payload, or a failed read's buffer, is not needed for the reply.
    if (request.buffer !== null && (request.type !== NBD_CMD_READ || error !== 0)) {
      this.#pool.give(request.buffer);
      request.buffer = null;
    }
    this.#completed.push(request);
    if (!this.#writing && !this.#writeQueued) {
      this.#writeQueued = true;
      queueMicrotask(this.#writeRepliesTask);
    }
  }

  /** The one writer: sends queued replies in batches until none are left. */
  async #writeReplies(): Promise<void> {
    this.#writeQueued = false;
    if (this.#writing) return;
    this.#writing = true;
    try {
      while (this.#completed.length > 0) {
        // Swap the queues so completions during the write gather for the next batch.
        const batch = this.#completed;
        this.#completed = this.#spareBatch;
        this.#spareBatch = batch;
        if (!this.#peerGone) {
          try {
            await this.#writeBatch(batch);
          } catch (error) {
            this.#lostPeer(error);
          }
        }
        for (let i = 0; i < batch.length; i++) this.#release(batch[i]!);
        batch.length = 0;
      }
    } finally {
      this.#writing = false;
    }
  }

  async #writeBatch(batch: Request[]): Promise<void> {
    const output = this.#output;
    let used = 0;
    for (let i = 0; i < batch.length; i++) {
      const request = batch[i]!;
      const data = request.type === NBD_CMD_READ && request.error === 0 ? request.lengthBytes : 0;
      if (data > 0 && (data > INLINE_REPLY_MAX_BYTES || batch.length === 1)) {
        if (used > 0) await writeAll(this.#stream, output.subarray(0, used));
        used = 0;
        const buffer = request.buffer!;
        encodeSimpleReply(buffer.view, 0, request);
        await writeAll(this.#stream, buffer.bytes.subarray(0, REPLY + data));
        continue;
      }
      if (used + REPLY + data > output.length) {
        await writeAll(this.#stream, output.subarray(0, used));
        used = 0;
      }
      encodeSimpleReply(this.#outputView, used, request);
      used += REPLY;
      if (data > 0) {
        output.set(request.buffer!.bytes.subarray(REPLY, REPLY + data), used);
        used += data;
      }
    }
    if (used > 0) await writeAll(this.#stream, output.subarray(0, used));
  }

  /** A request is done with: its reply was written (or dropped). */
  #release(request: Request): void {
    if (request.buffer !== null) {
      this.#pool.give(request.buffer);
      request.buffer = null;
    }
    this.#inFlight--;
    this.#bufferedBytes -= request.costBytes;
    this.#freeRequests.push(request);
    if (this.#capacityWaiter !== null && this.#hasCapacity(this.#capacityWanted)) {
      const wake = this.#capacityWaiter;
      this.#capacityWaiter = null;
      wake();
    }
    if (this.#inFlight === 0 && this.#idleResolve !== null) {
      const resolve = this.#idleResolve;
      this.#idle = null;
      this.#idleResolve = null;
      resolve();
    }
  }

  #whenIdle(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    this.#idle ??= new Promise<void>((resolve) => this.#idleResolve = resolve);
    return this.#idle;
  }

  #lostPeer(error: unknown): void {
    if (!this.#shuttingDown) this.#log.debug(`NBD reply write failed: ${errorMessage(error)}`);
    this.#peerGone = true;
    this.#abort.abort(closed("NBD client disconnected"));
    // Wakes a reader blocked on the socket, so the connection ends.
    this.#closeStream();
  }

  #closeStream(): void {
    try {
      this.#stream.close();
    } catch {
      // Already closed.
    }
  }
}
