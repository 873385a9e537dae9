/**
 * The gRPC client: a {@link PeerStore} over a grpc-js channel to one peer. The channel is opened
 * on first use with a Hello, and every call carries this node's identity as metadata. A channel
 * that lost its connection is dropped and the next call opens a new one (Hello again), the way a
 * TDP client reconnects. Calls have grpc deadlines; one that fails without an answer is
 * `unavailable` when it only read and `outcome_unknown` when it changed something.
 *
 * Changes of one ref go out one after the other: separate unary calls may overtake each other
 * on the way, and the BlockStore contract keeps changes of one ref in call order. Reads and
 * changes of different refs are all in flight at once.
 * @module
 */

import * as grpc from "@grpc/grpc-js";
import {
  type BlockRef,
  errorMessage,
  invalid,
  outcomeUnknown,
  TorusError,
  unavailable,
} from "../../../core/mod.ts";
import {
  blockRefFromMessage,
  blockRefToMessage,
  type ListRefsResponse,
  type StoreCounts,
} from "../../../models/mod.ts";
import type { PutOptions, RangeWriteOptions } from "../../../storage/mod.ts";
import { tcpNetwork } from "../network.ts";
import { PeerStoreBase, sentData, wireRingVersion, wireU32 } from "../peer_store_base.ts";
import type { PeerCallOptions, PeerDialOptions } from "../protocol.ts";
import {
  errorOfFailure,
  GRPC_REFS_PER_MESSAGE_MAX,
  grpcMessageMaxBytes,
  identityMetadata,
  identityMismatch,
  listRefsDefinition,
  rpcs,
  type UnaryRpc,
  wireIdentity,
} from "./service.ts";

/** Where a gRPC client connects. */
export interface GrpcClientOptions extends PeerDialOptions {
  readonly hostname: string;
  readonly port: number;
}

/** What a call is, for its failure: a read fails `unavailable`, a change `outcome_unknown`. */
type CallKind = "read" | "change";

/** A peer's block store over gRPC. */
export class GrpcPeerStore extends PeerStoreBase {
  readonly kind = "grpc";
  readonly #options: GrpcClientOptions;
  #channel: PeerChannel | null = null;
  #connecting: Promise<PeerChannel> | null = null;
  /** Per ref, the end of the last change of it called (the next one waits for it). */
  readonly #changeTurns = new Map<string, Promise<void>>();
  /** Listings a caller is still reading: close ends them. */
  readonly #listings = new Set<grpc.ClientReadableStream<ListRefsResponse>>();

  constructor(address: string, options: GrpcClientOptions) {
    super(address, options.identity.blockSizeBytes, "gRPC");
    this.#options = options;
  }

  async refreshCounts(options?: PeerCallOptions): Promise<void> {
    await this.#call(rpcs.Counts, {}, "read", options);
  }

  async getBlock(ref: BlockRef, options?: PeerCallOptions): Promise<Uint8Array> {
    const crc = options?.expectedCrc32;
    const request = {
      blockRef: blockRefToMessage(ref),
      checkCrc32: crc !== undefined,
      expectedCrc32: (crc ?? 0) >>> 0,
    };
    const { data } = await this.#call(rpcs.Block, request, "read", options);
    return this.checkedBlock(data);
  }

  async putBlock(
    ref: BlockRef,
    data: Uint8Array,
    options?: PutOptions & PeerCallOptions,
  ): Promise<void> {
    // The call may wait for an earlier change of the same ref before it is encoded.
    checkFits(data.length, this.blockSizeBytes);
    const request = {
      refs: [blockRefToMessage(ref)],
      blocks: [sentData(data, options)],
      fenceToken: fenceOf(options),
      ifAbsent: options?.ifAbsent ?? false,
      ringVersion: BigInt(wireRingVersion(options)),
    };
    await this.#change(ref, rpcs.PutBlock, request, options);
  }

  async hasBlock(ref: BlockRef, options?: PeerCallOptions): Promise<boolean> {
    return (await this.hasBlocks([ref], options))[0]!;
  }

  async hasBlocks(refs: readonly BlockRef[], options?: PeerCallOptions): Promise<boolean[]> {
    this.checkOpen();
    const held: boolean[] = [];
    for (let first = 0; first < refs.length; first += GRPC_REFS_PER_MESSAGE_MAX) {
      const page = refs.slice(first, first + GRPC_REFS_PER_MESSAGE_MAX);
      const request = { blockRefs: page.map(blockRefToMessage) };
      const { valid } = await this.#call(rpcs.RebalanceCheck, request, "read", options);
      if (valid.length !== page.length) {
        throw unavailable(`${this.address} checked ${valid.length} of ${page.length} refs`);
      }
      held.push(...valid);
    }
    return held;
  }

  async readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: PeerCallOptions,
  ): Promise<void> {
    const request = {
      blockRef: blockRefToMessage(ref),
      offsetBytes: wireU32(offsetBytes, "offset"),
      lengthBytes: into.length,
    };
    const { data } = await this.#call(rpcs.ReadAt, request, "read", options);
    this.fillFrom(into, data);
  }

  async writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void> {
    checkFits(data.length, this.blockSizeBytes);
    const request = {
      blockRef: blockRefToMessage(ref),
      offsetBytes: wireU32(offsetBytes, "offset"),
      data: sentData(data, options),
      fresh: options?.fresh ?? false,
      fenceToken: fenceOf(options),
      mustExist: options?.mustExist ?? false,
      ringVersion: BigInt(wireRingVersion(options)),
    };
    await this.#change(ref, rpcs.WriteAt, request, options);
  }

  async zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions & PeerCallOptions,
  ): Promise<void> {
    const request = {
      blockRef: blockRefToMessage(ref),
      offsetBytes: wireU32(offsetBytes, "offset"),
      lengthBytes: wireU32(lengthBytes, "length"),
      fresh: options?.fresh ?? false,
      fenceToken: fenceOf(options),
      mustExist: options?.mustExist ?? false,
      ringVersion: BigInt(wireRingVersion(options)),
    };
    await this.#change(ref, rpcs.ZeroAt, request, options);
  }

  async deleteBlock(ref: BlockRef, options?: PeerCallOptions): Promise<void> {
    const request = {
      refs: [blockRefToMessage(ref)],
      fenceToken: fenceOf(options),
      ringVersion: BigInt(wireRingVersion(options)),
    };
    await this.#change(ref, rpcs.DeleteBlock, request, options);
  }

  async flush(): Promise<void> {
    // Noted before the call: a change sent while the flush is on its way needs another.
    this.noteSent("flush");
    await this.#call(rpcs.Flush, {}, "read");
  }

  async *blockRefs(): AsyncIterable<BlockRef> {
    this.checkOpen();
    const timeoutMs = this.#options.callTimeoutMs;
    const channel = await this.tracked(() => this.#connect(Date.now() + timeoutMs));
    const listing = new Listing(channel, this.address, timeoutMs);
    this.#listings.add(listing.stream);
    try {
      for (;;) {
        this.checkOpen(); // close ends a listing a caller still holds
        const part = await this.tracked(() => listing.next());
        if (part === null) return;
        this.#takeCounts(part);
        for (const ref of part.refs) yield blockRefFromMessage(ref);
      }
    } finally {
      this.#listings.delete(listing.stream);
      listing.stop();
    }
  }

  protected async release(): Promise<void> {
    for (const stream of this.#listings) stream.cancel();
    const channel = this.#channel ?? await this.#connecting?.catch(() => null) ?? null;
    channel?.close();
    this.#channel = null;
  }

  /** A change of `ref`: sent once every earlier change of `ref` has its answer. */
  async #change<Request, Reply extends StoreCounts>(
    ref: BlockRef,
    method: UnaryRpc<Request, Reply>,
    request: Request,
    options?: PeerCallOptions,
  ): Promise<void> {
    this.checkOpen();
    const key = ref.key;
    const before = this.#changeTurns.get(key);
    let finished!: () => void;
    const mine = new Promise<void>((resolve) => finished = resolve);
    this.#changeTurns.set(key, mine);
    try {
      await this.#call(method, request, "change", options, before);
    } finally {
      finished();
      if (this.#changeTurns.get(key) === mine) this.#changeTurns.delete(key);
    }
  }

  /**
   * Sends `request` (after `after`, when given) and returns its successful reply, whose counts
   * it keeps; the reply's failure, or the transport's, otherwise.
   */
  async #call<Request, Reply extends StoreCounts>(
    method: UnaryRpc<Request, Reply>,
    request: Request,
    kind: CallKind,
    options?: PeerCallOptions,
    after?: Promise<void>,
  ): Promise<Reply> {
    this.checkOpen();
    options?.signal?.throwIfAborted();
    if (kind === "change") this.noteSent("change");
    const timeoutMs = options?.timeoutMs ?? this.#options.callTimeoutMs;
    // The deadline runs from the call, through any wait for its turn and for a connection.
    const deadlineMs = Date.now() + timeoutMs;
    return await this.tracked(async () => {
      await after;
      if (after !== undefined && Date.now() >= deadlineMs) {
        throw unavailable(
          `${this.address}: an earlier change of the same block took the whole deadline ` +
            `(${timeoutMs} ms); this one was not sent`,
        );
      }
      const channel = await this.#connect(deadlineMs);
      options?.signal?.throwIfAborted();
      let reply: Reply;
      try {
        reply = await channel.unary(method, request, deadlineMs);
      } catch (error) {
        throw this.#lost(channel, error, kind, timeoutMs);
      }
      this.#takeCounts(reply);
      const failure = method.failureOf(reply);
      if (failure !== null) throw errorOfFailure(failure, this.address);
      return reply;
    });
  }

  #takeCounts(reply: StoreCounts): void {
    // A server that could not count sends zeros: keep what the last reply said.
    if (reply.totalBlocks === 0n) return;
    this.counts = { usedBlocks: Number(reply.usedBlocks), totalBlocks: Number(reply.totalBlocks) };
  }

  /** The error of a call that got no reply; a channel whose connection failed is dropped. */
  #lost(channel: PeerChannel, error: unknown, kind: CallKind, timeoutMs: number): TorusError {
    const status = statusOf(error);
    if (status === grpc.status.UNAVAILABLE) this.#drop(channel);
    const reason = status === grpc.status.DEADLINE_EXCEEDED
      ? `${this.address} did not answer within ${timeoutMs} ms`
      : `${this.address}: ${grpcDetails(error)}`;
    return kind === "change"
      ? outcomeUnknown(`${reason} (the change may have been applied)`)
      : unavailable(reason);
  }

  #drop(channel: PeerChannel): void {
    if (this.#channel === channel) this.#channel = null;
    channel.close();
  }

  /** The open channel, or a new one (its Hello answered) within the deadline. */
  #connect(deadlineMs: number): Promise<PeerChannel> {
    const current = this.#channel;
    if (current !== null && !current.lost()) return Promise.resolve(current);
    if (current !== null) this.#drop(current);
    this.#connecting ??= this.#open(deadlineMs).then(
      (channel) => {
        this.#connecting = null;
        this.#channel = channel;
        return channel;
      },
      (error: unknown) => {
        // A failed attempt is forgotten, so the next call tries again.
        this.#connecting = null;
        throw error;
      },
    );
    return this.#connecting;
  }

  /**
   * Opens a channel and says Hello. The peer's port is tried first with a plain TCP connect:
   * grpc-js retries a refused channel in the background on its own backoff and fails calls until
   * that ends, while this client wants the next call to find a peer that came back at once.
   */
  async #open(deadlineMs: number): Promise<PeerChannel> {
    const { hostname, port, identity } = this.#options;
    const probe = await tcpNetwork.connect(hostname, port, Math.max(1, deadlineMs - Date.now()));
    probe.close();
    const channel = new PeerChannel(hostname, port, identity);
    try {
      const reply = await channel.unary(rpcs.Hello, wireIdentity(identity), deadlineMs);
      const failure = rpcs.Hello.failureOf(reply);
      if (failure !== null) throw errorOfFailure(failure, `${this.address} refused this node`);
      const mismatch = identityMismatch(reply, identity);
      if (mismatch !== null) throw unavailable(`${this.address}: ${mismatch}`);
      this.#takeCounts(reply);
      this.serverInstance = reply.instance ?? "";
      return channel;
    } catch (error) {
      channel.close();
      if (error instanceof TorusError) throw error;
      // Nothing was sent yet: even a change fails as not done.
      throw unavailable(`${this.address} did not answer Hello: ${grpcDetails(error)}`);
    }
  }
}

/** One grpc-js channel to a peer, with the identity metadata of its calls. */
class PeerChannel {
  readonly #client: grpc.Client;
  readonly #metadata: grpc.Metadata;
  #closed = false;

  constructor(hostname: string, port: number, identity: PeerDialOptions["identity"]) {
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    const bound = grpcMessageMaxBytes(identity.blockSizeBytes);
    this.#client = new grpc.Client(`${host}:${port}`, grpc.credentials.createInsecure(), {
      // Its own subchannel, so a dropped channel takes its connection and backoff state along.
      "grpc.use_local_subchannel_pool": 1,
      // A change is sent at most once; a lost answer is this client's outcome_unknown.
      "grpc.enable_retries": 0,
      "grpc.max_receive_message_length": bound,
      "grpc.max_send_message_length": bound,
    });
    this.#metadata = identityMetadata(identity);
  }

  /** Whether the connection this channel had is gone (the next call would reconnect it). */
  lost(): boolean {
    return this.#closed ||
      this.#client.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY;
  }

  unary<Request, Reply extends StoreCounts>(
    method: UnaryRpc<Request, Reply>,
    request: Request,
    deadlineMs: number,
  ): Promise<Reply> {
    const { path, requestSerialize, responseDeserialize } = method.definition;
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        path,
        requestSerialize,
        responseDeserialize,
        request,
        this.#metadata.clone(),
        { deadline: deadlineMs },
        (error, reply) => {
          if (error !== null) reject(error);
          else if (reply === undefined) reject(new Error("an empty answer"));
          else resolve(reply);
        },
      );
    });
  }

  listRefs(): grpc.ClientReadableStream<ListRefsResponse> {
    return this.#client.makeServerStreamRequest(
      listRefsDefinition.path,
      listRefsDefinition.requestSerialize,
      listRefsDefinition.responseDeserialize,
      {},
      this.#metadata.clone(),
    );
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }
}

/**
 * A ListRefs call read part by part. The listing as a whole has no deadline (a large store takes
 * long); each part must come within `timeoutMs` of being asked for.
 */
class Listing {
  readonly stream: grpc.ClientReadableStream<ListRefsResponse>;
  readonly #parts: AsyncIterator<ListRefsResponse>;
  readonly #address: string;
  readonly #timeoutMs: number;
  #ended = false;

  constructor(channel: PeerChannel, address: string, timeoutMs: number) {
    this.stream = channel.listRefs();
    // Errors come through the iterator; without a listener a late one would be thrown.
    this.stream.on("error", () => {});
    this.#parts = this.stream[Symbol.asyncIterator]();
    this.#address = address;
    this.#timeoutMs = timeoutMs;
  }

  /** The next part, or null after the last; the failure a part carries is thrown. */
  async next(): Promise<ListRefsResponse | null> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), this.#timeoutMs);
    });
    const next = this.#parts.next();
    try {
      const result = await Promise.race([next, late]);
      if (result === "late") {
        next.catch(() => {}); // it fails once the call is cancelled
        throw unavailable(`${this.#address} sent no part of the ref listing in time`);
      }
      if (result.done === true) {
        this.#ended = true;
        return null;
      }
      const failure = result.value.errorCode === "" ? null : result.value;
      if (failure !== null) throw errorOfFailure(failure, this.#address);
      return result.value;
    } catch (error) {
      if (error instanceof TorusError) throw error;
      throw unavailable(`${this.#address}: the ref listing failed: ${grpcDetails(error)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the call if the peer has not (a caller that stopped reading, a failure). */
  stop(): void {
    if (!this.#ended) this.stream.cancel();
  }
}

/** The gRPC status code of a call's error, if it is one. */
function statusOf(error: unknown): number | null {
  if (typeof error !== "object" || error === null || !("code" in error)) return null;
  return typeof error.code === "number" ? error.code : null;
}

/** What grpc-js says about a failed call, as one line. */
function grpcDetails(error: unknown): string {
  if (typeof error === "object" && error !== null && "details" in error) {
    if (typeof error.details === "string" && error.details !== "") return error.details;
  }
  return errorMessage(error);
}

/** The fencing token of a change as the wire's uint64 (0 for none); `invalid` if it is not one. */
function fenceOf(options?: PeerCallOptions): bigint {
  const token = options?.fenceToken ?? 0;
  if (!Number.isSafeInteger(token) || token < 0) throw invalid(`fencing token ${token} is invalid`);
  return BigInt(token);
}

/**
 * `invalid` for data longer than a block: the store would refuse it anyway, and data far longer
 * would break the message bound and fail as a lost call instead.
 */
function checkFits(lengthBytes: number, blockSizeBytes: number): void {
  if (lengthBytes > blockSizeBytes) {
    throw invalid(`${lengthBytes} bytes do not fit a block of ${blockSizeBytes}`);
  }
}
