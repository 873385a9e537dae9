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
 * Structured replies (when the client negotiated NBD_OPT_STRUCTURED_REPLY):
 * - A READ is answered with content chunks. Below SPARSE_READ_MIN_BYTES, or with
 *   NBD_CMD_FLAG_DF, it is one NBD_REPLY_TYPE_OFFSET_DATA chunk flagged DONE, written from the
 *   buffer it was read into like a simple reply, so small reads cost no more than before. A larger
 *   read first asks the device for its extents: ranges known to read as zeros become
 *   NBD_REPLY_TYPE_OFFSET_HOLE chunks and are never read; each data range is read on its own and
 *   becomes an OFFSET_DATA chunk, or an NBD_REPLY_TYPE_ERROR_OFFSET chunk (with the device's
 *   message) when that range alone failed, so one bad range does not hide the good ones.
 * - NBD_CMD_BLOCK_STATUS (only after `base:allocation` was selected for this export) answers one
 *   NBD_REPLY_TYPE_BLOCK_STATUS chunk: NBD_STATE_HOLE | NBD_STATE_ZERO for ranges the device
 *   knows read as zeros (never written, trimmed, zeroed), 0 for data; with NBD_CMD_FLAG_REQ_ONE a
 *   single extent. A reply covers at most NBD_BLOCK_STATUS_QUERY_MAX_BYTES and
 *   NBD_BLOCK_STATUS_EXTENTS_MAX extents; the client asks again for the rest.
 * - Every error is an NBD_REPLY_TYPE_ERROR chunk carrying a one-line message; other successes
 *   stay 16-byte simple replies (the spec allows them for replies without a payload).
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

import {
  closed,
  errorMessage,
  type Logger,
  NBD_BLOCK_STATUS_EXTENTS_MAX,
  NBD_BLOCK_STATUS_QUERY_MAX_BYTES,
  NBD_REQUEST_LENGTH_MAX_BYTES,
} from "../../core/mod.ts";
import type { Device, DeviceCallOptions, DeviceExtent, WriteZeroesOptions } from "../device.ts";
import type { BufferPool, PooledBuffer } from "./buffer_pool.ts";
import { nbdErrnoOf } from "./errno.ts";
import {
  type BlockStatusDescriptor,
  decodeRequestHeader,
  encodeBlockStatusPayload,
  encodeErrorPayload,
  encodeSimpleReply,
  encodeStructuredReplyHeader,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBD_OFFSET_DATA_PREFIX_BYTES,
  NBD_OFFSET_HOLE_CHUNK_BYTES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  NBD_STRUCTURED_REPLY_HEADER_BYTES,
  newRequestHeader,
  newStructuredReplyHeader,
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
  /** Bytes returned by successful READs (holes included). */
  readBytes: number;
  /** Bytes of READs answered as holes (structured replies), never read from the device. */
  holeBytes: number;
  /** NBD_CMD_BLOCK_STATUS requests answered. */
  blockStatusRequests: number;
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
    holeBytes: 0,
    blockStatusRequests: 0,
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
  /** Answer with structured replies (NBD_OPT_STRUCTURED_REPLY was negotiated). */
  structuredReplies: boolean;
  /** The id of `base:allocation` when selected: NBD_CMD_BLOCK_STATUS is served. */
  metaContextId: number | null;
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
  /** What went wrong, for a structured error chunk ("" on success). */
  message: string;
  /** Write payload, or read reply (header room + data). */
  buffer: PooledBuffer | null;
  /** A sparse READ's ranges, each a hole, data, or a failed range (structured replies only). */
  pieces: ReadPiece[] | null;
  /** A BLOCK_STATUS reply's extents. */
  descriptors: BlockStatusDescriptor[] | null;
  /** Bytes counted against the connection's buffered-bytes bound. */
  costBytes: number;
  readonly onSuccess: () => void;
  readonly onFailure: (error: unknown) => void;
}

/** One range of a sparse structured READ reply. */
interface ReadPiece {
  offsetBytes: number;
  lengthBytes: number;
  /** Known to read as zeros: sent as a hole, never read. */
  zero: boolean;
  /** NBD error value when reading this range failed (0: fine). */
  error: number;
  message: string;
}

const HEADER = NBD_REQUEST_HEADER_BYTES;
const REPLY = NBD_SIMPLE_REPLY_BYTES;
const CHUNK = NBD_STRUCTURED_REPLY_HEADER_BYTES;
/**
 * Structured READs at least this long are answered sparse (holes as OFFSET_HOLE chunks, found
 * through the device's extents); shorter ones are one data chunk, so the small-I/O hot path costs
 * no extra device call. A hole shorter than this saves little on the wire anyway.
 */
export const SPARSE_READ_MIN_BYTES = 64 * 1024;
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
  readonly #structured: boolean;
  readonly #metaContextId: number | null;
  /** Room in front of read data for its reply header (simple reply or OFFSET_DATA prefix). */
  readonly #readPrefix: number;
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
  /** Bytes of the output buffer filled by the batch being written. */
  #used = 0;
  readonly #header = newRequestHeader();
  readonly #chunkHeader = newStructuredReplyHeader();
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
    this.#structured = options.structuredReplies;
    this.#metaContextId = options.metaContextId;
    this.#readPrefix = this.#structured ? NBD_OFFSET_DATA_PREFIX_BYTES : REPLY;
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
    request.message = "";
    request.pieces = null;
    request.descriptors = null;
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
      message: "",
      buffer: null,
      pieces: null,
      descriptors: null,
      costBytes: 0,
      onSuccess: () => this.#finish(request, 0),
      onFailure: (error: unknown) =>
        this.#finish(request, this.#errnoOf(request, error), errorMessage(error)),
    };
    return request;
  }

  // -------------------------------------------------------------------------------------------
  // Dispatching requests to the device.

  #dispatch(request: Request): void {
    if (this.#shuttingDown) return this.#finish(request, NBD_ESHUTDOWN, SHUTTING_DOWN);
    switch (request.type) {
      case NBD_CMD_READ:
        return this.#read(request);
      case NBD_CMD_FLUSH:
        return this.#flush(request);
      case NBD_CMD_TRIM:
        return this.#trim(request);
      case NBD_CMD_WRITE_ZEROES:
        return this.#writeZeroes(request);
      case NBD_CMD_BLOCK_STATUS:
        return this.#blockStatus(request);
      default:
        // Unknown commands, and NBD_CMD_CACHE, which is not offered.
        return this.#finish(request, NBD_EINVAL, `unknown command ${request.type}`);
    }
  }

  #inRange(request: Request): boolean {
    return request.offsetBytes + request.lengthBytes <= this.#device.sizeBytes;
  }

  #read(request: Request): void {
    const length = request.lengthBytes;
    // NBD_CMD_FLAG_DF is ours to honour only with structured replies (SEND_DF is offered then).
    const allowedFlags = this.#structured ? NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF : NBD_CMD_FLAG_FUA;
    if ((request.flags & ~allowedFlags) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    if (length > NBD_REQUEST_LENGTH_MAX_BYTES) {
      return this.#finish(request, NBD_EINVAL, TOO_LONG);
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_EINVAL, OUT_OF_RANGE);
    if (length === 0) return this.#finish(request, 0);
    // The reply header goes in front of the data, so a large reply is written in one piece.
    const prefix = this.#readPrefix;
    const buffer = this.#pool.take(prefix + length);
    request.buffer = buffer;
    if (
      this.#structured && length >= SPARSE_READ_MIN_BYTES && (request.flags & NBD_CMD_FLAG_DF) === 0
    ) {
      this.#sparseRead(request, buffer).then(
        (errno) => this.#finish(request, errno),
        request.onFailure,
      );
      return;
    }
    try {
      this.#device.readAt(
        request.offsetBytes,
        buffer.bytes.subarray(prefix, prefix + length),
        this.#plain,
      )
        .then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  /**
   * Reads only the data extents of a READ's range. Fails (one error chunk) only when the extents
   * cannot be had; a data range that fails to read becomes an error piece of its own.
   */
  async #sparseRead(request: Request, buffer: PooledBuffer): Promise<number> {
    const start = request.offsetBytes;
    const extents = await this.#device.extents(start, request.lengthBytes);
    if (extents.length === 1 && !extents[0]!.zero) {
      // All data: the plain one-chunk reply.
      const prefix = this.#readPrefix;
      await this.#device.readAt(
        start,
        buffer.bytes.subarray(prefix, prefix + request.lengthBytes),
        this.#plain,
      );
      return 0;
    }
    const pieces = extents.map((extent): ReadPiece => ({
      offsetBytes: extent.offsetBytes,
      lengthBytes: extent.lengthBytes,
      zero: extent.zero,
      error: 0,
      message: "",
    }));
    const at = this.#readPrefix - start;
    await Promise.all(
      pieces.filter((piece) => !piece.zero).map(async (piece) => {
        const into = buffer.bytes.subarray(
          at + piece.offsetBytes,
          at + piece.offsetBytes + piece.lengthBytes,
        );
        try {
          await this.#device.readAt(piece.offsetBytes, into, this.#plain);
        } catch (error) {
          piece.error = this.#errnoOf(request, error);
          piece.message = errorMessage(error);
        }
      }),
    );
    request.pieces = pieces;
    // A failed range makes the reply an error reply; the pieces still carry what could be read.
    return pieces.find((piece) => piece.error !== 0)?.error ?? 0;
  }

  #blockStatus(request: Request): void {
    if (this.#metaContextId === null) {
      return this.#finish(request, NBD_EINVAL, "no metadata context was selected");
    }
    if ((request.flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE)) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    if (request.lengthBytes === 0) {
      return this.#finish(request, NBD_EINVAL, "block status of an empty range");
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_EINVAL, OUT_OF_RANGE);
    const length = Math.min(request.lengthBytes, NBD_BLOCK_STATUS_QUERY_MAX_BYTES);
    const one = (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    try {
      this.#device.extents(request.offsetBytes, length).then((extents) => {
        request.descriptors = descriptorsOf(extents, one ? 1 : NBD_BLOCK_STATUS_EXTENTS_MAX);
        request.onSuccess();
      }, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #dispatchWrite(request: Request): void {
    if (this.#shuttingDown) return this.#finish(request, NBD_ESHUTDOWN, SHUTTING_DOWN);
    if (this.#readOnly) return this.#finish(request, NBD_EPERM, READ_ONLY);
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_ENOSPC, OUT_OF_RANGE);
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
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    try {
      this.#device.flush(this.#plain).then(request.onSuccess, request.onFailure);
    } catch (error) {
      request.onFailure(error);
    }
  }

  #trim(request: Request): void {
    if (this.#readOnly) return this.#finish(request, NBD_EPERM, READ_ONLY);
    if ((request.flags & ~NBD_CMD_FLAG_FUA) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_EINVAL, OUT_OF_RANGE);
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
    if (this.#readOnly) return this.#finish(request, NBD_EPERM, READ_ONLY);
    const flags = request.flags;
    if ((flags & ~(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE)) !== 0) {
      return this.#finish(request, NBD_EINVAL, BAD_FLAGS);
    }
    if (!this.#inRange(request)) return this.#finish(request, NBD_ENOSPC, OUT_OF_RANGE);
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
  #finish(request: Request, error: number, message = ""): void {
    request.error = error;
    if (message !== "") request.message = message;
    const stats = this.#stats;
    if (error !== 0) {
      stats.errorReplies++;
    } else if (request.type === NBD_CMD_READ) {
      stats.readBytes += request.lengthBytes;
      if (request.pieces !== null) stats.holeBytes += holeBytesOf(request.pieces);
    } else if (request.type === NBD_CMD_WRITE) {
      stats.writtenBytes += request.lengthBytes;
    } else if (request.type === NBD_CMD_BLOCK_STATUS) {
      stats.blockStatusRequests++;
    }
    // A write payload, or a failed read's buffer, is not needed for the reply (a sparse read's
    // is: its good ranges are still sent).
    if (
      request.buffer !== null &&
      (request.type !== NBD_CMD_READ || (error !== 0 && request.pieces === null))
    ) {
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

  /**
   * Writes a batch's replies: small ones gathered in the output buffer, large read data straight
   * from the buffer it was read into (its header placed in front of it).
   */
  async #writeBatch(batch: Request[]): Promise<void> {
    this.#used = 0;
    const alone = batch.length === 1;
    for (let i = 0; i < batch.length; i++) {
      const request = batch[i]!;
      if (!this.#putInline(request, alone)) await this.#writeLarge(request);
    }
    if (this.#used > 0) await this.#flushOutput();
  }

  /** Data bytes a successful one-piece READ reply carries (0 for every other reply). */
  #readData(request: Request): number {
    return request.type === NBD_CMD_READ && request.error === 0 && request.pieces === null
      ? request.lengthBytes
      : 0;
  }

  /**
   * Puts a reply into the output buffer when it is small and fits; false when it must be written
   * by {@link #writeLarge} (large or lone read data, sparse reads, a full buffer).
   */
  #putInline(request: Request, alone: boolean): boolean {
    const data = this.#readData(request);
    if (data > 0 && (data > INLINE_REPLY_MAX_BYTES || alone)) return false;
    if (!this.#structured) {
      if (this.#used + REPLY + data > this.#output.length) return false;
      encodeSimpleReply(this.#outputView, this.#used, request);
      this.#used += REPLY;
      if (data > 0) this.#copyData(request, data);
      return true;
    }
    if (request.pieces !== null) return false;
    if (data > 0) {
      if (this.#used + NBD_OFFSET_DATA_PREFIX_BYTES + data > this.#output.length) return false;
      this.#putDataPrefix(request, request.offsetBytes, data, NBD_REPLY_FLAG_DONE);
      this.#copyData(request, data);
      return true;
    }
    const chunk = this.#structuredReply(request);
    if (chunk === null) {
      // A success without payload: a simple reply is allowed and shortest.
      if (this.#used + REPLY > this.#output.length) return false;
      encodeSimpleReply(this.#outputView, this.#used, request);
      this.#used += REPLY;
      return true;
    }
    if (this.#used + chunk.length > this.#output.length) return false;
    this.#output.set(chunk, this.#used);
    this.#used += chunk.length;
    return true;
  }

  /**
   * The one chunk of a structured reply that is not read data: an error, a zero-length READ, a
   * block status; null for a success that a simple reply answers.
   */
  #structuredReply(request: Request): Uint8Array | null {
    if (request.error !== 0) {
      const message = request.message || `command ${request.type} failed`;
      const payload = encodeErrorPayload({ error: request.error, message, offsetBytes: null });
      return this.#chunk(request, NBD_REPLY_TYPE_ERROR, NBD_REPLY_FLAG_DONE, payload);
    }
    if (request.type === NBD_CMD_READ) {
      return this.#chunk(request, NBD_REPLY_TYPE_NONE, NBD_REPLY_FLAG_DONE, EMPTY);
    }
    if (request.type === NBD_CMD_BLOCK_STATUS) {
      const payload = encodeBlockStatusPayload(this.#metaContextId!, request.descriptors!);
      return this.#chunk(request, NBD_REPLY_TYPE_BLOCK_STATUS, NBD_REPLY_FLAG_DONE, payload);
    }
    return null;
  }

  #chunk(request: Request, type: number, flags: number, payload: Uint8Array): Uint8Array {
    const bytes = new Uint8Array(CHUNK + payload.length);
    const header = this.#chunkHeader;
    header.flags = flags;
    header.type = type;
    header.handleHigh = request.handleHigh;
    header.handleLow = request.handleLow;
    header.lengthBytes = payload.length;
    encodeStructuredReplyHeader(new DataView(bytes.buffer), 0, header);
    bytes.set(payload, CHUNK);
    return bytes;
  }

  /** Copies a read's data from its buffer into the output buffer. */
  #copyData(request: Request, data: number): void {
    const prefix = this.#readPrefix;
    this.#output.set(request.buffer!.bytes.subarray(prefix, prefix + data), this.#used);
    this.#used += data;
  }

  /** An OFFSET_DATA chunk's header and offset for `data` bytes at `offsetBytes`, in the output. */
  #putDataPrefix(request: Request, offsetBytes: number, data: number, flags: number): void {
    encodeDataPrefix(this.#outputView, this.#used, this.#chunkHeader, {
      request,
      offsetBytes,
      data,
      flags,
    });
    this.#used += NBD_OFFSET_DATA_PREFIX_BYTES;
  }

  async #flushOutput(): Promise<void> {
    if (this.#used === 0) return;
    const used = this.#used;
    this.#used = 0;
    await writeAll(this.#stream, this.#output.subarray(0, used));
  }

  /** Makes room for `bytes` in the output buffer (they always fit an empty one). */
  async #room(bytes: number): Promise<void> {
    if (this.#used + bytes > this.#output.length) await this.#flushOutput();
  }

  /** Writes a reply that {@link #putInline} did not take. */
  async #writeLarge(request: Request): Promise<void> {
    const data = this.#readData(request);
    if (data > 0) {
      // One data chunk or simple reply: header in front of the data, one write.
      if (this.#used > 0) await this.#flushOutput();
      const buffer = request.buffer!;
      const prefix = this.#readPrefix;
      if (this.#structured) {
        encodeDataPrefix(buffer.view, 0, this.#chunkHeader, {
          request,
          offsetBytes: request.offsetBytes,
          data,
          flags: NBD_REPLY_FLAG_DONE,
        });
      } else {
        encodeSimpleReply(buffer.view, 0, request);
      }
      await writeAll(this.#stream, buffer.bytes.subarray(0, prefix + data));
      return;
    }
    if (request.pieces !== null) return await this.#writePieces(request, request.pieces);
    // Anything else is small: it fits once the output is empty.
    await this.#flushOutput();
    if (!this.#putInline(request, false)) throw new Error("an NBD reply larger than the buffer");
  }

  /** A sparse READ: a hole, data or error-offset chunk per piece, the last flagged DONE. */
  async #writePieces(request: Request, pieces: ReadPiece[]): Promise<void> {
    const buffer = request.buffer!;
    const at = this.#readPrefix - request.offsetBytes;
    for (let i = 0; i < pieces.length; i++) {
      const piece = pieces[i]!;
      const flags = i === pieces.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if (piece.error !== 0) {
        const payload = encodeErrorPayload({
          error: piece.error,
          message: piece.message || "read failed",
          offsetBytes: piece.offsetBytes,
        });
        const chunk = this.#chunk(request, NBD_REPLY_TYPE_ERROR_OFFSET, flags, payload);
        await this.#room(chunk.length);
        this.#output.set(chunk, this.#used);
        this.#used += chunk.length;
      } else if (piece.zero) {
        await this.#room(NBD_OFFSET_HOLE_CHUNK_BYTES);
        encodeHoleChunk(this.#outputView, this.#used, this.#chunkHeader, {
          request,
          offsetBytes: piece.offsetBytes,
          data: piece.lengthBytes,
          flags,
        });
        this.#used += NBD_OFFSET_HOLE_CHUNK_BYTES;
      } else {
        const from = at + piece.offsetBytes;
        const bytes = buffer.bytes.subarray(from, from + piece.lengthBytes);
        await this.#room(
          NBD_OFFSET_DATA_PREFIX_BYTES + Math.min(bytes.length, INLINE_REPLY_MAX_BYTES),
        );
        this.#putDataPrefix(request, piece.offsetBytes, piece.lengthBytes, flags);
        if (bytes.length <= INLINE_REPLY_MAX_BYTES) {
          this.#output.set(bytes, this.#used);
          this.#used += bytes.length;
        } else {
          await this.#flushOutput();
          await writeAll(this.#stream, bytes);
        }
      }
    }
  }

  /** A request is done with: its reply was written (or dropped). */
  #release(request: Request): void {
    if (request.buffer !== null) {
      this.#pool.give(request.buffer);
      request.buffer = null;
    }
    request.pieces = null;
    request.descriptors = null;
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

const EMPTY = new Uint8Array(0);
const SHUTTING_DOWN = "the server is shutting down";
const BAD_FLAGS = "command flags not supported for this command";
const TOO_LONG = "request longer than 32 MiB";
const OUT_OF_RANGE = "range beyond the end of the export";
const READ_ONLY = "the export is read-only";

/** Where a chunk goes and what it says about the READ it answers. */
interface ChunkPlace {
  request: Request;
  offsetBytes: number;
  /** Data bytes (OFFSET_DATA) or hole bytes (OFFSET_HOLE). */
  data: number;
  flags: number;
}

/** Writes an OFFSET_DATA chunk's header and offset (28 bytes) at `at`. */
function encodeDataPrefix(
  view: DataView,
  at: number,
  header: StructuredHeaderRecord,
  place: ChunkPlace,
): void {
  fillHeader(header, place, NBD_REPLY_TYPE_OFFSET_DATA, 8 + place.data);
  encodeStructuredReplyHeader(view, at, header);
  setOffset(view, at + CHUNK, place.offsetBytes);
}

/** Writes a whole OFFSET_HOLE chunk (32 bytes) at `at`. */
function encodeHoleChunk(
  view: DataView,
  at: number,
  header: StructuredHeaderRecord,
  place: ChunkPlace,
): void {
  fillHeader(header, place, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
  encodeStructuredReplyHeader(view, at, header);
  setOffset(view, at + CHUNK, place.offsetBytes);
  view.setUint32(at + CHUNK + 8, place.data);
}

type StructuredHeaderRecord = ReturnType<typeof newStructuredReplyHeader>;

function fillHeader(
  header: StructuredHeaderRecord,
  place: ChunkPlace,
  type: number,
  lengthBytes: number,
): void {
  header.flags = place.flags;
  header.type = type;
  header.handleHigh = place.request.handleHigh;
  header.handleLow = place.request.handleLow;
  header.lengthBytes = lengthBytes;
}

/** A 64-bit offset (a safe integer) as two 32-bit halves: no BigInt on the hot path. */
function setOffset(view: DataView, at: number, offsetBytes: number): void {
  view.setUint32(at, Math.floor(offsetBytes / 2 ** 32));
  view.setUint32(at + 4, offsetBytes >>> 0);
}

/** Block status descriptors of extents: zero ranges are holes that read as zeros. */
export function descriptorsOf(
  extents: readonly DeviceExtent[],
  countMax: number,
): BlockStatusDescriptor[] {
  return extents.slice(0, countMax).map((extent) => ({
    lengthBytes: extent.lengthBytes,
    flags: extent.zero ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0,
  }));
}

function holeBytesOf(pieces: readonly ReadPiece[]): number {
  let holes = 0;
  for (const piece of pieces) if (piece.zero) holes += piece.lengthBytes;
  return holes;
}
