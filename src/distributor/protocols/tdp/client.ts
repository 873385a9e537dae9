/**
 * The TDP client: a {@link PeerStore} over one connection to a peer, connected on first use and
 * again after a loss. Requests go out in call order with ids; replies are matched by id, in any
 * order. A call without an answer by its deadline fails (`unavailable` for reads,
 * `outcome_unknown` for changes, which may have been applied); its late reply is dropped.
 * @module
 */

import {
  type BlockRef,
  type ByteStream,
  type Clock,
  closed,
  ErrorCode,
  errorMessage,
  isTorusError,
  outcomeUnknown,
  TorusError,
  unavailable,
} from "../../../core/mod.ts";
import type { PutOptions, RangeWriteOptions } from "../../../storage/mod.ts";
import type { StreamNetwork } from "../network.ts";
import { PeerStoreBase, sentData, wireRingVersion, wireU32 } from "../peer_store_base.ts";
import type { PeerCallOptions, PeerDialOptions } from "../protocol.ts";
import {
  BodyReader,
  decodeErrorReply,
  decodeHello,
  encodeHelloRequest,
  encodeRequest,
  Op,
  readCounts,
  type Request,
  type StoreCounts,
  TDP_HELLO_BODY_MAX_BYTES,
  TDP_REFS_PER_FRAME_MAX,
  TDP_VERSION,
  tdpBodyMaxBytes,
  TdpFrameError,
} from "./codec.ts";
import { type Frame, FrameReader, FrameWriter } from "./frame_io.ts";
import { helloMismatch } from "./server.ts";

/** How often deadlines are checked (a call fails at most this late). */
const DEADLINE_TICK_MS = 25;
/** Refs asked for per LIST_NEXT. */
const LIST_PAGE_REFS = 4096;

/** A call waiting for its reply. */
interface Pending {
  readonly op: number;
  readonly deadlineMs: number;
  readonly change: boolean;
  resolve(frame: Frame): void;
  reject(error: unknown): void;
}

/** Where a TDP client connects, and how. */
export interface TdpClientOptions extends PeerDialOptions {
  readonly network: StreamNetwork;
  readonly clock: Clock;
  readonly hostname: string;
  readonly port: number;
}

/** A peer's block store over TDP. */
export class TdpPeerStore extends PeerStoreBase {
  readonly kind = "tdp";
  readonly #options: TdpClientOptions;
  #connection: Promise<ClientConnection> | null = null;

  constructor(address: string, options: TdpClientOptions) {
    super(address, options.identity.blockSizeBytes, "TDP");
    this.#options = options;
  }

  async refreshCounts(options?: PeerCallOptions): Promise<void> {
    await this.#call({ op: Op.Counts }, false, options);
  }

  async getBlock(ref: BlockRef, options?: PeerCallOptions): Promise<Uint8Array> {
    const request: Request = options?.expectedCrc32 === undefined
      ? { op: Op.Get, ref }
      : { op: Op.Get, ref, expectedCrc32: options.expectedCrc32 };
    const reader = await this.#call(request, false, options);
    const data = reader.rest();
    return this.checkedBlock(data);
  }

  async putBlock(
    ref: BlockRef,
    data: Uint8Array,
    options?: PutOptions & PeerCallOptions,
  ): Promise<void> {
    const request: Request = {
      op: Op.Put,
      ref,
      fence: options?.fenceToken ?? 0,
      ring: wireRingVersion(options),
      ifAbsent: options?.ifAbsent ?? false,
      data: sentData(data, options),
    };
    await this.#call(request, true, options);
  }

  async hasBlock(ref: BlockRef, options?: PeerCallOptions): Promise<boolean> {
    return (await this.hasBlocks([ref], options))[0]!;
  }

  async hasBlocks(refs: readonly BlockRef[], options?: PeerCallOptions): Promise<boolean[]> {
    const held: boolean[] = [];
    for (let first = 0; first < refs.length || first === 0; first += TDP_REFS_PER_FRAME_MAX) {
      const page = refs.slice(first, first + TDP_REFS_PER_FRAME_MAX);
      const reader = await this.#call({ op: Op.Has, refs: page }, false, options);
      const bits = reader.rest();
      if (bits.length !== Math.ceil(page.length / 8)) {
        throw unavailable(`${this.address} answered HAS with ${bits.length} bytes`);
      }
      for (let i = 0; i < page.length; i++) held.push((bits[i >> 3]! & (1 << (i & 7))) !== 0);
      if (refs.length === 0) break;
    }
    return held;
  }

  async readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: PeerCallOptions,
  ): Promise<void> {
    const request: Request = {
      op: Op.ReadAt,
      ref,
      offsetBytes: wireU32(offsetBytes, "offset"),
      lengthBytes: into.length,
    };
    const data = (await this.#call(request, false, options)).rest();
    this.fillFrom(into, data);
  }

  async writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void> {
    const request: Request = {
      op: Op.WriteAt,
      ref,
      fence: options?.fenceToken ?? 0,
      ring: wireRingVersion(options),
      fresh: options?.fresh ?? false,
      mustExist: options?.mustExist ?? false,
      offsetBytes: wireU32(offsetBytes, "offset"),
      data: sentData(data, options),
    };
    await this.#call(request, true, options);
  }

  async zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void> {
    const request: Request = {
      op: Op.ZeroAt,
      ref,
      fence: options?.fenceToken ?? 0,
      ring: wireRingVersion(options),
      fresh: options?.fresh ?? false,
      mustExist: options?.mustExist ?? false,
      offsetBytes: wireU32(offsetBytes, "offset"),
      lengthBytes: wireU32(lengthBytes, "length"),
    };
    await this.#call(request, true, options);
  }

  async deleteBlock(ref: BlockRef, options?: PeerCallOptions): Promise<void> {
    const request: Request = {
      op: Op.Delete,
      ref,
      fence: options?.fenceToken ?? 0,
      ring: wireRingVersion(options),
    };
    await this.#call(request, true, options);
  }

  async flush(): Promise<void> {
    await this.#call({ op: Op.Flush }, false);
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    const opened = await this.#call({ op: Op.ListOpen }, false);
    const cursor = opened.u32();
    let done = false;
    try {
      while (!done) {
        const page = await this.#call({ op: Op.ListNext, cursor, maxRefs: LIST_PAGE_REFS }, false);
        done = page.u8() === 1;
        const count = page.u32();
        for (let i = 0; i < count; i++) yield page.ref();
        page.end();
      }
    } finally {
      // A listing left early is closed on the peer (a lost connection closed it already).
      if (!done) await this.#call({ op: Op.ListClose, cursor }, false).catch(() => {});
    }
  }

  protected async release(): Promise<void> {
    const connection = await this.#connection?.catch(() => null);
    connection?.close();
    this.#connection = null;
  }

  /**
   * Sends `request` and waits for its ok reply, past the counts (which it keeps); the reply's
   * error, or the deadline's, otherwise.
   */
  async #call(request: Request, change: boolean, options?: PeerCallOptions): Promise<BodyReader> {
    this.checkOpen();
    options?.signal?.throwIfAborted();
    this.noteSent(change ? "change" : request.op === Op.Flush ? "flush" : "read");
    const timeoutMs = options?.timeoutMs ?? this.#options.callTimeoutMs;
    const deadlineMs = this.#options.clock.nowMs() + timeoutMs;
    return await this.tracked(() => this.#exchange(request, change, deadlineMs, options));
  }

  /** One request and its reply (a call in flight). */
  async #exchange(
    request: Request,
    change: boolean,
    deadlineMs: number,
    options: PeerCallOptions | undefined,
  ): Promise<BodyReader> {
    try {
      const connection = await this.#connect(deadlineMs);
      options?.signal?.throwIfAborted();
      const frame = await connection.call(request, change, deadlineMs);
      const reader = new BodyReader(frame.body, `${this.address} reply`);
      if (request.op !== Op.ListClose && request.op !== Op.Ping) this.counts = readCounts(reader);
      return reader;
    } catch (error) {
      if (error instanceof TdpFrameError) {
        throw unavailable(`${this.address} broke the protocol: ${error.message}`);
      }
      throw error;
    }
  }

  /** The open connection, or a new one (connect and HELLO within the deadline). */
  #connect(deadlineMs: number): Promise<ClientConnection> {
    const current = this.#connection;
    if (current !== null) return current;
    const connecting = ClientConnection.open(this.#options, this.address, deadlineMs).then(
      (connection) => {
        this.counts = connection.helloCounts;
        this.serverInstance = connection.helloInstance;
        connection.ended.then(() => {
          if (this.#connection === connecting) this.#connection = null;
        });
        return connection;
      },
    );
    this.#connection = connecting;
    // A failed attempt is forgotten, so the next call tries again.
    connecting.catch(() => {
      if (this.#connection === connecting) this.#connection = null;
    });
    return connecting;
  }
}

/** One TCP connection to a peer, after its HELLO. */
class ClientConnection {
  readonly #stream: ByteStream;
  readonly #reader: FrameReader;
  readonly #writer: FrameWriter;
  readonly #clock: Clock;
  readonly #address: string;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #lost: TorusError | null = null;
  #ticking = false;
  readonly ended: Promise<void>;
  #end!: () => void;
  helloCounts: StoreCounts = { usedBlocks: 0, totalBlocks: 0 };
  /** The server's instance, from its HELLO. */
  helloInstance = "";

  private constructor(stream: ByteStream, clock: Clock, address: string) {
    this.#stream = stream;
    this.#clock = clock;
    this.#address = address;
    this.ended = new Promise((resolve) => this.#end = resolve);
    this.#reader = new FrameReader(stream, {
      replies: true,
      peer: `TDP peer ${address}`,
      bodyMaxBytes: TDP_HELLO_BODY_MAX_BYTES,
    });
    this.#writer = new FrameWriter(stream, (error) => this.#fail(error));
  }

  /** Connects, says HELLO and checks the answer, all before `deadlineMs`. */
  static async open(
    options: TdpClientOptions,
    address: string,
    deadlineMs: number,
  ): Promise<ClientConnection> {
    const left = () => Math.max(1, deadlineMs - options.clock.nowMs());
    const stream = await options.network.connect(options.hostname, options.port, left());
    const connection = new ClientConnection(stream, options.clock, address);
    try {
      await connection.#hello(options, deadlineMs);
    } catch (error) {
      connection.close();
      throw error;
    }
    void connection.#readReplies();
    return connection;
  }

  async #hello(options: TdpClientOptions, deadlineMs: number): Promise<void> {
    const { identity } = options;
    this.#writer.send(encodeHelloRequest({
      version: TDP_VERSION,
      blockSizeBytes: identity.blockSizeBytes,
      clusterId: identity.clusterId,
      nodeName: identity.nodeName,
      instance: "",
    }, 0));
    const reply = await this.#withDeadline(this.#reader.next(), deadlineMs, "HELLO");
    if (reply === null) throw unavailable(`${this.#address} closed the connection during HELLO`);
    if (reply.header.op !== Op.Hello) throw unavailable(`${this.#address} did not answer HELLO`);
    if (reply.header.status !== 0) {
      throw decodeErrorReply(reply.header.status, reply.body, `${this.#address} refused this node`);
    }
    const reader = new BodyReader(reply.body, "HELLO reply");
    this.helloCounts = readCounts(reader);
    const theirs = decodeHello(reader.rest());
    this.helloInstance = theirs.instance;
    const mismatch = helloMismatch(theirs, identity);
    if (mismatch !== null) throw unavailable(`${this.#address}: ${mismatch}`);
    this.#reader.bodyMaxBytes = tdpBodyMaxBytes(identity.blockSizeBytes);
  }

  async #withDeadline<T>(promise: Promise<T>, deadlineMs: number, what: string): Promise<T> {
    const controller = new AbortController();
    const timeout = this.#clock.sleep(
      Math.max(0, deadlineMs - this.#clock.nowMs()),
      controller.signal,
    )
      .then(() => {
        throw unavailable(`${this.#address} did not answer ${what} in time`);
      });
    try {
      return await Promise.race([promise, timeout]);
    } finally {
      controller.abort();
      timeout.catch(() => {});
    }
  }

  /** Sends `request` and resolves with its ok reply frame. */
  call(request: Request, change: boolean, deadlineMs: number): Promise<Frame> {
    if (this.#lost !== null) return Promise.reject(this.#failureFor(change, this.#lost));
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xffffffff ? 1 : this.#nextId + 1;
    return new Promise<Frame>((resolve, reject) => {
      this.#pending.set(id, { op: request.op, deadlineMs, change, resolve, reject });
      this.#writer.send(encodeRequest(request, id));
      this.#tick();
    });
  }

  /** Fails calls past their deadline, while any wait. */
  #tick(): void {
    if (this.#ticking) return;
    this.#ticking = true;
    void (async () => {
      while (this.#pending.size > 0 && this.#lost === null) {
        await this.#clock.sleep(DEADLINE_TICK_MS);
        const nowMs = this.#clock.nowMs();
        for (const [id, pending] of this.#pending) {
          if (pending.deadlineMs > nowMs) continue;
          this.#pending.delete(id);
          const late = unavailable(`${this.#address} did not answer in time`);
          pending.reject(this.#failureFor(pending.change, late));
        }
      }
      this.#ticking = false;
    })();
  }

  async #readReplies(): Promise<void> {
    try {
      for (;;) {
        const frame = await this.#reader.next();
        if (frame === null) throw closed(`${this.#address} closed the connection`);
        const pending = this.#pending.get(frame.header.requestId);
        // A reply to a call that timed out is dropped; one to no call at all breaks the protocol.
        if (pending === undefined) {
          if (frame.header.requestId >= this.#nextId) {
            throw new TdpFrameError(`a reply to request ${frame.header.requestId}, never sent`);
          }
          continue;
        }
        if (frame.header.op !== pending.op) {
          throw new TdpFrameError(`a reply of another opcode to request ${frame.header.requestId}`);
        }
        this.#pending.delete(frame.header.requestId);
        if (frame.header.status === 0) pending.resolve(frame);
        else pending.reject(decodeErrorReply(frame.header.status, frame.body, this.#address));
      }
    } catch (error) {
      this.#fail(error);
    }
  }

  /** The connection is lost: every waiting call fails, and the store connects anew next time. */
  #fail(error: unknown): void {
    if (this.#lost !== null) return;
    const reason = isTorusError(error, ErrorCode.Closed)
      ? errorMessage(error)
      : `connection to ${this.#address} lost: ${errorMessage(error)}`;
    this.#lost = unavailable(reason);
    for (const pending of this.#pending.values()) {
      pending.reject(this.#failureFor(pending.change, this.#lost));
    }
    this.#pending.clear();
    this.close();
    this.#end();
  }

  /** A read that failed is unavailable; a change that failed may have been applied. */
  #failureFor(change: boolean, error: TorusError): TorusError {
    return change ? outcomeUnknown(`${error.message} (the change may have been applied)`) : error;
  }

  close(): void {
    if (this.#lost === null) this.#fail(closed("closed by this node"));
    try {
      this.#stream.close();
    } catch {
      // Closed already.
    }
  }
}
