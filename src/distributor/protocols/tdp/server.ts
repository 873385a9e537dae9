/**
 * The TDP server: answers peer calls from a local BlockStore. Each connection starts with the
 * HELLO check, then reads requests and starts their store calls in arrival order (so calls of
 * one ref keep the client's order), many at once, and replies as each completes. A frame that
 * breaks the protocol closes its connection only.
 * @module
 */

import {
  type BlockRef,
  type ByteStream,
  type Clock,
  ErrorCode,
  errorMessage,
  invalid,
  isTorusError,
  logger,
} from "../../../core/mod.ts";
import type { BlockCallOptions, BlockStore } from "../../../storage/mod.ts";
import type { StreamListener, StreamNetwork } from "../network.ts";
import type { PeerIdentity, PeerServeOptions, PeerServer } from "../protocol.ts";
import {
  COUNTS_BYTES,
  decodeHello,
  decodeRequest,
  encodeErrorReply,
  encodeHello,
  encodeOkReply,
  type Hello,
  Op,
  type Request,
  TDP_HELLO_BODY_MAX_BYTES,
  TDP_REFS_PER_FRAME_MAX,
  TDP_VERSION,
  tdpBodyMaxBytes,
  TdpFrameError,
  writeCounts,
} from "./codec.ts";
import { type Frame, FrameReader, FrameWriter } from "./frame_io.ts";

const log = logger("tdp");

/** Requests of one connection whose store calls run at once; more wait to be read. */
const REQUESTS_IN_FLIGHT_MAX = 256;
/** Ref listings one connection may keep open. */
const LIST_CURSORS_MAX = 16;
/** A frame begun and not finished for this long means a stalled or hostile peer. */
export const TDP_FRAME_TIMEOUT_MS_DEFAULT = 30_000;

/** What a TDP server needs besides the generic options. */
export interface TdpServerOptions extends PeerServeOptions {
  readonly clock: Clock;
  /** How long a frame may take to arrive once it began. */
  readonly frameTimeoutMs: number;
  /** This server's instance, said in HELLO (set by TdpServer: new at every start). */
  readonly instance?: string;
}

/** Why a HELLO is refused, or null when it is acceptable. */
export function helloMismatch(theirs: Hello, ours: PeerIdentity): string | null {
  if (theirs.version !== TDP_VERSION) {
    return `TDP version ${theirs.version} is not supported (this node speaks ${TDP_VERSION})`;
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

/** A TDP server on a listener. */
export class TdpServer implements PeerServer {
  readonly address: string;
  readonly #listener: StreamListener;
  readonly #options: TdpServerOptions;
  readonly #connections = new Set<ServerConnection>();
  #accepting: Promise<void>;
  #closed = false;

  private constructor(listener: StreamListener, options: TdpServerOptions) {
    this.#listener = listener;
    // A new instance at every start: clients tell a restarted peer from one that was there all
    // along (a restart may have lost changes it had not flushed).
    this.#options = { ...options, instance: options.instance ?? crypto.randomUUID() };
    const host = listener.hostname.includes(":") ? `[${listener.hostname}]` : listener.hostname;
    this.address = `tdp://${host}:${listener.port}`;
    this.#accepting = this.#accept();
  }

  /** Listens on `hostname:port` of `network` and serves `options.store`. */
  static listen(
    network: StreamNetwork,
    hostname: string,
    port: number,
    options: TdpServerOptions,
  ): TdpServer {
    return new TdpServer(network.listen(hostname, port), options);
  }

  connections(): number {
    return this.#connections.size;
  }

  async #accept(): Promise<void> {
    for await (const stream of this.#listener) {
      if (this.#closed) {
        stream.close();
        break;
      }
      this.serve(stream);
    }
  }

  /** Serves one connection (accepted here, or handed in by a test or simulation). */
  serve(stream: ByteStream): void {
    const connection = new ServerConnection(stream, this.#options);
    this.#connections.add(connection);
    void connection.run().finally(() => this.#connections.delete(connection));
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#listener.close();
    await this.#accepting;
    await Promise.all([...this.#connections].map((connection) => connection.close()));
  }
}

/** One client's connection. */
class ServerConnection {
  readonly #stream: ByteStream;
  readonly #store: BlockStore;
  readonly #identity: PeerIdentity;
  readonly #options: TdpServerOptions;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  #peer = "TDP client";
  #inFlight = 0;
  #slotFreed: (() => void) | null = null;
  #drained: (() => void) | null = null;
  readonly #cursors = new Map<number, RefCursor>();
  #nextCursor = 1;
  #closed = false;
  #done: Promise<void> | null = null;

  readonly #stopWatching = new AbortController();

  constructor(stream: ByteStream, options: TdpServerOptions) {
    this.#stream = stream;
    this.#options = options;
    this.#store = options.store;
    this.#identity = options.identity;
    this.#reader = new FrameReader(stream, {
      replies: false,
      peer: this.#peer,
      bodyMaxBytes: TDP_HELLO_BODY_MAX_BYTES,
      // #dispatch passes a request's data to the store, which copies it at the call.
      lendsLargeBodies: true,
    });
    this.#writer = new FrameWriter(
      stream,
      (error) => {
        log.debug(`writing to ${this.#peer} failed: ${errorMessage(error)}`);
        this.#closeStream();
      },
      // The reply being sent is still counted until it settles.
      () => this.#inFlight > 1,
    );
  }

  run(): Promise<void> {
    this.#done ??= this.#run();
    return this.#done;
  }

  async #run(): Promise<void> {
    void this.#watchForStalls();
    try {
      if (await this.#handshake()) await this.#serveRequests();
    } catch (error) {
      if (error instanceof TdpFrameError) {
        log.warn(`closing the connection of ${this.#peer}: ${error.message}`);
      } else if (!isTorusError(error, ErrorCode.Closed) && !this.#closed) {
        log.debug(`connection of ${this.#peer} ended: ${errorMessage(error)}`);
      }
    } finally {
      this.#stopWatching.abort();
      await this.#drain();
      await this.#writer.idle();
      for (const cursor of this.#cursors.values()) cursor.close();
      this.#closeStream();
    }
  }

  /** Closes the connection when a frame stops arriving halfway for longer than allowed. */
  async #watchForStalls(): Promise<void> {
    const { clock, frameTimeoutMs } = this.#options;
    const checkMs = Math.max(10, Math.min(1_000, frameTimeoutMs / 4));
    let framesSeen = -1;
    let sinceMs = 0;
    try {
      for (;;) {
        await clock.sleep(checkMs, this.#stopWatching.signal);
        const reader = this.#reader;
        if (!reader.reading || !reader.inFrame || reader.framesRead !== framesSeen) {
          framesSeen = reader.reading && reader.inFrame ? reader.framesRead : -1;
          sinceMs = clock.nowMs();
          continue;
        }
        if (clock.nowMs() - sinceMs >= frameTimeoutMs) {
          log.warn(
            `closing the connection of ${this.#peer}: a frame stalled for ${frameTimeoutMs} ms`,
          );
          this.#closeStream();
          return;
        }
      }
    } catch {
      // Stopped: the connection ended.
    }
  }

  /**
   * Reads the client's HELLO and answers it; false if the connection must end. A peer says HELLO
   * as soon as it connects; a connection that sends nothing (an NBD client at the wrong port waits
   * for a greeting that never comes) is closed after the frame timeout, so neither end hangs.
   */
  async #handshake(): Promise<boolean> {
    const { clock, frameTimeoutMs } = this.#options;
    const deadline = new AbortController();
    clock.sleep(frameTimeoutMs, deadline.signal).then(() => {
      log.warn(`closing a connection that sent no HELLO in ${frameTimeoutMs} ms`);
      this.#closeStream();
    }, () => {});
    let frame;
    try {
      frame = await this.#reader.next();
    } finally {
      deadline.abort();
    }
    if (frame === null) return false;
    if (frame.header.op !== Op.Hello) throw new TdpFrameError("the first frame is not HELLO");
    const hello = decodeHello(frame.body);
    this.#peer = `TDP client ${JSON.stringify(hello.nodeName)}`;
    const mismatch = helloMismatch(hello, this.#identity);
    if (mismatch !== null) {
      log.warn(`refusing ${this.#peer}: ${mismatch}`);
      this.#writer.send([
        encodeErrorReply(Op.Hello, frame.header.requestId, ErrorCode.Invalid, mismatch),
      ]);
      return false;
    }
    const ours = encodeHello({
      version: TDP_VERSION,
      blockSizeBytes: this.#identity.blockSizeBytes,
      clusterId: this.#identity.clusterId,
      nodeName: this.#identity.nodeName,
      instance: this.#options.instance ?? "",
    });
    this.#writer.send(encodeOkReply(Op.Hello, frame.header.requestId, [this.#counts(), ours]));
    this.#reader.bodyMaxBytes = tdpBodyMaxBytes(this.#identity.blockSizeBytes);
    return true;
  }

  async #serveRequests(): Promise<void> {
    for (;;) {
      if (this.#inFlight >= REQUESTS_IN_FLIGHT_MAX) {
        await new Promise<void>((resolve) => this.#slotFreed = resolve);
      }
      const frame = await this.#reader.next();
      if (frame === null) return;
      this.#dispatch(frame);
    }
  }

  /** Starts the store call of one request now (in arrival order) and replies when it settles. */
  #dispatch(frame: Frame): void {
    const { op, requestId } = frame.header;
    if (op === Op.Hello) throw new TdpFrameError("HELLO after the handshake");
    const request = decodeRequest(frame.header, frame.body);
    this.#inFlight++;
    let reply: Promise<Uint8Array[]> | Uint8Array[];
    try {
      reply = this.#call(request);
    } catch (error) {
      reply = Promise.reject(error);
    }
    if (Array.isArray(reply)) {
      // Done at once (a read from memory): no promise to wait for.
      this.#writer.send(encodeOkReply(op, requestId, [this.#counts(), ...reply]));
      this.#settled();
      return;
    }
    reply.then(
      (parts) => this.#writer.send(encodeOkReply(op, requestId, [this.#counts(), ...parts])),
      (error) => this.#writer.send([this.#errorReply(op, requestId, error)]),
    ).finally(() => this.#settled());
  }

  #settled(): void {
    this.#inFlight--;
    const freed = this.#slotFreed;
    this.#slotFreed = null;
    freed?.();
    if (this.#inFlight === 0) {
      const drained = this.#drained;
      this.#drained = null;
      drained?.();
    }
  }

  #errorReply(op: number, requestId: number, error: unknown): Uint8Array {
    if (isTorusError(error)) return encodeErrorReply(op, requestId, error.code, error.message);
    // Not an operating error: a bug of this node. The client gets an answer, the node goes on.
    log.error(`${this.#peer}: a store call failed unexpectedly: ${errorMessage(error)}`);
    return encodeErrorReply(
      op,
      requestId,
      ErrorCode.Unavailable,
      `internal error: ${errorMessage(error)}`,
    );
  }

  /**
   * The store call of `request`; resolves to the reply's parts after the counts, or returns them
   * when the call was done at once.
   */
  #call(request: Request): Promise<Uint8Array[]> | Uint8Array[] {
    const store = this.#store;
    switch (request.op) {
      case Op.Ping:
      case Op.Counts:
        return Promise.resolve([]);
      case Op.Get: {
        const options = request.expectedCrc32 === undefined
          ? undefined
          : { expectedCrc32: request.expectedCrc32 };
        return store.getBlock(request.ref, options).then((data) => [data]);
      }
      case Op.Put:
        return store.putBlock(request.ref, request.data, {
          ...changeOptions(request),
          ifAbsent: request.ifAbsent,
        }).then(() => []);
      case Op.Has:
        return Promise.all(request.refs.map((ref) => store.hasBlock(ref))).then((
          held,
        ) => [bitset(held)]);
      case Op.ReadAt: {
        if (request.lengthBytes > store.blockSizeBytes) {
          return Promise.reject(
            invalid(`a read of ${request.lengthBytes} bytes is longer than a block`),
          );
        }
        const into = new Uint8Array(request.lengthBytes);
        if (store.readCachedAt?.(request.ref, request.offsetBytes, into) === true) return [into];
        return store.readAt(request.ref, request.offsetBytes, into).then(() => [into]);
      }
      case Op.WriteAt:
        return store.writeAt(request.ref, request.offsetBytes, request.data, {
          ...changeOptions(request),
          fresh: request.fresh,
          mustExist: request.mustExist,
        }).then(() => []);
      case Op.ZeroAt:
        return store.zeroAt(request.ref, request.offsetBytes, request.lengthBytes, {
          ...changeOptions(request),
          fresh: request.fresh,
          mustExist: request.mustExist,
        }).then(() => []);
      case Op.Delete:
        return store.deleteBlock(request.ref, changeOptions(request)).then(() => []);
      case Op.Flush:
        return store.flush().then(() => []);
      case Op.ListOpen:
        return this.#openCursor();
      case Op.ListNext:
        return this.#cursor(request.cursor).next(Math.min(request.maxRefs, TDP_REFS_PER_FRAME_MAX));
      case Op.ListClose:
        this.#cursor(request.cursor).close();
        this.#cursors.delete(request.cursor);
        return Promise.resolve([]);
    }
  }

  #openCursor(): Promise<Uint8Array[]> {
    if (this.#cursors.size >= LIST_CURSORS_MAX) {
      return Promise.reject(invalid(`more than ${LIST_CURSORS_MAX} ref listings open at once`));
    }
    const id = this.#nextCursor++;
    const cursor = new RefCursor(this.#store.blockRefs());
    this.#cursors.set(id, cursor);
    const reply = new Uint8Array(4);
    new DataView(reply.buffer).setUint32(0, id, true);
    // The listing's snapshot is taken now, in call order with the requests before it.
    return cursor.start().then(() => [reply]);
  }

  #cursor(id: number): RefCursor {
    const cursor = this.#cursors.get(id);
    if (cursor === undefined) throw invalid(`no ref listing ${id} is open on this connection`);
    return cursor;
  }

  #counts(): Uint8Array {
    const counts = new Uint8Array(COUNTS_BYTES);
    writeCounts(counts, 0, {
      usedBlocks: this.#store.usedBlocks(),
      totalBlocks: this.#store.totalBlocks(),
    });
    return counts;
  }

  #drain(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drained = resolve);
  }

  #closeStream(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#stream.close();
    } catch {
      // Already closed by the other end.
    }
  }

  /** Ends the connection: reading stops, calls in flight complete first. */
  async close(): Promise<void> {
    this.#closeStream();
    await this.run();
  }
}

/** Options carrying a change's fencing token and ring version (each left out when 0). */
function changeOptions(
  request: { readonly fence: number; readonly ring: number },
): BlockCallOptions | undefined {
  if (request.fence === 0 && request.ring === 0) return undefined;
  return {
    ...(request.fence === 0 ? {} : { fenceToken: request.fence }),
    ...(request.ring === 0 ? {} : { ringVersion: request.ring }),
  };
}

/** Bit i of byte i/8, LSB first (the original's RebalanceCheck layout). */
function bitset(bits: readonly boolean[]): Uint8Array {
  const bytes = new Uint8Array(Math.ceil(bits.length / 8));
  bits.forEach((bit, i) => {
    if (bit) bytes[i >> 3]! |= 1 << (i & 7);
  });
  return bytes;
}

/** A ref listing kept open across LIST_NEXT requests. */
class RefCursor {
  readonly #iterator: AsyncIterator<BlockRef>;
  #first: Promise<IteratorResult<BlockRef>> | null = null;
  #done = false;

  constructor(refs: AsyncIterable<BlockRef>) {
    this.#iterator = refs[Symbol.asyncIterator]();
  }

  /** Starts the iteration (its snapshot) now. */
  start(): Promise<void> {
    this.#first = this.#iterator.next();
    return this.#first.then(() => {});
  }

  /** Up to `maxRefs` refs: a done byte, a count, then the refs. */
  async next(maxRefs: number): Promise<Uint8Array[]> {
    const refs: BlockRef[] = [];
    while (!this.#done && refs.length < maxRefs) {
      const result = this.#first ?? this.#iterator.next();
      this.#first = null;
      const { value, done } = await result;
      if (done === true) this.#done = true;
      else refs.push(value);
    }
    const body = new Uint8Array(5 + refs.length * 24);
    body[0] = this.#done ? 1 : 0;
    new DataView(body.buffer).setUint32(1, refs.length, true);
    refs.forEach((ref, i) => ref.writeTo(body, 5 + i * 24));
    return [body];
  }

  close(): void {
    if (!this.#done) void this.#iterator.return?.();
    this.#done = true;
  }
}
