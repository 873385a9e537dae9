/**
 * The gRPC server: answers TorusStorage calls from a local BlockStore. Connections are accepted
 * here and handed to grpc-js, so the server knows how many are open and closes them itself.
 * Hello compares identities; every other call is answered only when its metadata names this
 * node's cluster, block size and protocol version. A store failure is a reply carrying its code;
 * bytes that are not HTTP/2 end their connection, a message that does not decode gets an error
 * status (grpc-js), and neither reaches the store.
 * @module
 */

import * as net from "node:net";
import * as grpc from "@grpc/grpc-js";
import {
  assert,
  type BlockRef,
  ErrorCode,
  errorMessage,
  invalid,
  isTorusError,
  logger,
  unavailable,
} from "../../../core/mod.ts";
import {
  blockRefFromMessage,
  type BlockRefMessage,
  blockRefToMessage,
  type EmptyRequest,
  type HelloRequest,
  type HelloResponse,
  type ListRefsResponse,
  type StoreCounts,
} from "../../../models/mod.ts";
import type { BlockCallOptions, BlockStore } from "../../../storage/mod.ts";
import type { PeerIdentity, PeerServeOptions, PeerServer } from "../protocol.ts";
import {
  GRPC_REFS_PER_MESSAGE_MAX,
  grpcMessageMaxBytes,
  identityMismatch,
  identityOfMetadata,
  rpcs,
  torusStorageService,
  type UnaryRpc,
  type WireFailure,
  wireFailure,
  wireIdentity,
} from "./service.ts";

const log = logger("grpc");

/** Refs per ListRefs message. */
const LIST_REFS_PER_MESSAGE = 4096;

/** A gRPC server on a TCP port. */
export class GrpcServer implements PeerServer {
  readonly address: string;
  readonly #store: BlockStore;
  readonly #identity: PeerIdentity;
  /** New at every start: clients tell a restarted peer by it. */
  readonly #instance = crypto.randomUUID();
  readonly #grpc: grpc.Server;
  readonly #listener: net.Server;
  readonly #sockets = new Set<net.Socket>();
  /** Store calls (and listings) not settled yet: close waits for them. */
  readonly #inFlight = new Set<Promise<unknown>>();
  #closed = false;

  private constructor(listener: net.Server, options: PeerServeOptions) {
    this.#store = options.store;
    this.#identity = options.identity;
    const messageMaxBytes = grpcMessageMaxBytes(options.identity.blockSizeBytes);
    this.#grpc = new grpc.Server({
      "grpc.max_receive_message_length": messageMaxBytes,
      "grpc.max_send_message_length": messageMaxBytes,
    });
    this.#grpc.addService(torusStorageService, this.#handlers());
    const injector = this.#grpc.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    this.#listener = listener;
    listener.on("connection", (socket: net.Socket) => this.#accept(socket, injector));
    const bound = listener.address();
    assert(bound !== null && typeof bound !== "string", "a TCP listener has a host and port");
    const host = bound.address.includes(":") ? `[${bound.address}]` : bound.address;
    this.address = `http://${host}:${bound.port}`;
  }

  /** Listens on `hostname:port` (0 for any free port) and serves `options.store`. */
  static async listen(
    hostname: string,
    port: number,
    options: PeerServeOptions,
  ): Promise<GrpcServer> {
    const listener = net.createServer();
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen({ host: hostname, port }, () => {
        listener.off("error", reject);
        resolve();
      });
    }).catch((error: unknown) => {
      throw unavailable(`cannot listen on ${hostname}:${port}: ${errorMessage(error)}`);
    });
    return new GrpcServer(listener, options);
  }

  connections(): number {
    return this.#sockets.size;
  }

  #accept(socket: net.Socket, injector: grpc.ConnectionInjector): void {
    if (this.#closed) {
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    socket.on("close", () => this.#sockets.delete(socket));
    // A reset by the client is its business; without a listener it would be thrown.
    socket.on("error", (error) => log.debug(`connection error: ${errorMessage(error)}`));
    socket.setNoDelay(true);
    injector.injectConnection(socket);
  }

  /**
   * Stops listening and drops every connection at once; store calls in flight complete, their
   * replies are lost as on any lost connection. The sockets go first, without a GOAWAY: under
   * Deno, an HTTP/2 client that receives a GOAWAY on a session that served calls can crash
   * inside nghttp2 (denoland/deno#36788), and grpc-js's shutdown would send one.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const stopped = new Promise<void>((resolve) => this.#listener.close(() => resolve()));
    await Promise.all([...this.#sockets].map(closeSocket));
    this.#grpc.forceShutdown();
    await Promise.allSettled([...this.#inFlight]);
    await stopped;
  }

  /** Keeps `work` in the set close waits for, until it settles. */
  #track<T>(work: Promise<T>): Promise<T> {
    this.#inFlight.add(work);
    const forget = () => this.#inFlight.delete(work);
    work.then(forget, forget);
    return work;
  }

  // ---- calls --------------------------------------------------------------------------------

  #handlers(): grpc.UntypedServiceImplementation {
    return {
      Hello: this.#unary(rpcs.Hello, (request) => Promise.resolve(this.#hello(request)), false),
      Counts: this.#unary(rpcs.Counts, () => Promise.resolve(this.#ok(rpcs.Counts))),
      ListRefs: (call: grpc.ServerWritableStream<EmptyRequest, ListRefsResponse>) =>
        void this.#track(this.#listRefs(call)).catch((error: unknown) =>
          log.error(`a ref listing failed: ${errorMessage(error)}`)
        ),
      ...this.#readHandlers(),
      ...this.#changeHandlers(),
    };
  }

  #readHandlers(): grpc.UntypedServiceImplementation {
    const store = this.#store;
    return {
      Block: this.#unary(rpcs.Block, async (request) => {
        const options = request.checkCrc32 ? { expectedCrc32: request.expectedCrc32 } : undefined;
        const data = await store.getBlock(refOf(request.blockRef), options);
        return { ...this.#ok(rpcs.Block), ok: true, data };
      }),
      RebalanceCheck: this.#unary(rpcs.RebalanceCheck, async (request) => {
        const refs = boundedRefs(request.blockRefs);
        const valid = await Promise.all(refs.map((ref) => store.hasBlock(ref)));
        return { ...this.#ok(rpcs.RebalanceCheck), valid };
      }),
      ReadAt: this.#unary(rpcs.ReadAt, async (request) => {
        // Checked before the buffer is made: the length is the caller's to choose.
        if (request.lengthBytes > store.blockSizeBytes) {
          throw invalid(`a read of ${request.lengthBytes} bytes is longer than a block`);
        }
        const data = new Uint8Array(request.lengthBytes);
        await store.readAt(refOf(request.blockRef), request.offsetBytes, data);
        return { ...this.#ok(rpcs.ReadAt), data };
      }),
    };
  }

  #changeHandlers(): grpc.UntypedServiceImplementation {
    const store = this.#store;
    return {
      PutBlock: this.#unary(rpcs.PutBlock, async (request) => {
        if (request.refs.length !== request.blocks.length) {
          throw invalid(`${request.refs.length} refs for ${request.blocks.length} blocks`);
        }
        const options = { ...changeOptions(request), ifAbsent: request.ifAbsent ?? false };
        // In order, as the original did; the first failure ends the call.
        for (const [i, ref] of request.refs.entries()) {
          await store.putBlock(refOf(ref), request.blocks[i]!, options);
        }
        return { ...this.#ok(rpcs.PutBlock), ok: true };
      }),
      DeleteBlock: this.#unary(rpcs.DeleteBlock, async (request) => {
        const options = changeOptions(request);
        for (const ref of request.refs) await store.deleteBlock(refOf(ref), options);
        return { ...this.#ok(rpcs.DeleteBlock), ok: true };
      }),
      WriteAt: this.#unary(rpcs.WriteAt, async (request) => {
        const options = {
          ...changeOptions(request),
          fresh: request.fresh,
          mustExist: request.mustExist ?? false,
        };
        await store.writeAt(refOf(request.blockRef), request.offsetBytes, request.data, options);
        return this.#ok(rpcs.WriteAt);
      }),
      ZeroAt: this.#unary(rpcs.ZeroAt, async (request) => {
        const options = {
          ...changeOptions(request),
          fresh: request.fresh,
          mustExist: request.mustExist ?? false,
        };
        const { blockRef, offsetBytes, lengthBytes } = request;
        await store.zeroAt(refOf(blockRef), offsetBytes, lengthBytes, options);
        return this.#ok(rpcs.ZeroAt);
      }),
      Flush: this.#unary(rpcs.Flush, async () => {
        await store.flush();
        return this.#ok(rpcs.Flush);
      }),
    };
  }

  /**
   * The handler of a unary RPC: checks the caller (unless `checked` is false), runs `serve`,
   * and turns whatever it throws into a reply carrying the failure, so no call goes unanswered.
   */
  #unary<Request, Reply extends StoreCounts>(
    method: UnaryRpc<Request, Reply>,
    serve: (request: Request) => Promise<Reply>,
    checked = true,
  ): grpc.handleUnaryCall<Request, Reply> {
    return (call, callback) => {
      const refusal = checked ? this.#refusal(call.metadata) : null;
      const work = refusal !== null
        ? Promise.resolve(method.failed(refusal, this.#counts()))
        : this.#track(serve(call.request)).catch((error: unknown) =>
          method.failed(this.#failure(error), this.#counts())
        );
      // A reply to a call the client gave up on is dropped by grpc-js.
      void work.then((reply) => callback(null, reply)).catch((error: unknown) =>
        log.error(`answering a call failed: ${errorMessage(error)}`)
      );
    };
  }

  /** Why a call may not reach the store (another cluster, block size or version), or null. */
  #refusal(metadata: grpc.Metadata): WireFailure | null {
    const caller = identityOfMetadata(metadata);
    const reason = typeof caller === "string" ? caller : identityMismatch(caller, this.#identity);
    if (reason === null) return null;
    log.debug(`refusing a call: ${reason}`);
    return wireFailure(ErrorCode.Invalid, reason);
  }

  #hello(request: HelloRequest): HelloResponse {
    const mismatch = identityMismatch(request, this.#identity);
    if (mismatch !== null) {
      log.warn(`refusing ${JSON.stringify(request.nodeName)}: ${mismatch}`);
      return rpcs.Hello.failed(wireFailure(ErrorCode.Invalid, mismatch), this.#counts());
    }
    return {
      ...this.#ok(rpcs.Hello),
      ...wireIdentity(this.#identity),
      instance: this.#instance,
    };
  }

  /** A successful reply of `method` with the store's counts (fields to be filled in). */
  #ok<Request, Reply extends StoreCounts>(method: UnaryRpc<Request, Reply>): Reply {
    return method.failed({ errorCode: "", errorMessage: "" }, this.#counts());
  }

  #failure(error: unknown): WireFailure {
    if (isTorusError(error)) return wireFailure(error.code, error.message);
    // Not an operating error: a bug of this node. The caller gets an answer, the node goes on.
    log.error(`a store call failed unexpectedly: ${errorMessage(error)}`);
    return wireFailure(ErrorCode.Unavailable, `internal error: ${errorMessage(error)}`);
  }

  /** The store's counts now; zeros when it cannot say (closed), which clients ignore. */
  #counts(): StoreCounts {
    try {
      return {
        usedBlocks: BigInt(this.#store.usedBlocks()),
        totalBlocks: BigInt(this.#store.totalBlocks()),
      };
    } catch {
      return { usedBlocks: 0n, totalBlocks: 0n };
    }
  }

  /** Streams the store's refs in messages; the last one carries the counts, or the failure. */
  async #listRefs(call: grpc.ServerWritableStream<EmptyRequest, ListRefsResponse>): Promise<void> {
    const refusal = this.#refusal(call.metadata);
    if (refusal !== null) {
      await send(call, { refs: [], ...this.#counts(), ...refusal });
      call.end();
      return;
    }
    const iterator = this.#store.blockRefs()[Symbol.asyncIterator]();
    let done = false;
    try {
      let part: BlockRefMessage[] = [];
      for (;;) {
        const next = await iterator.next();
        if (next.done === true) break;
        part.push(blockRefToMessage(next.value));
        if (part.length < LIST_REFS_PER_MESSAGE) continue;
        const sent = await send(call, { refs: part, ...this.#counts(), ...noFailure });
        part = [];
        if (!sent) return; // the client went away
      }
      done = true;
      await send(call, { refs: part, ...this.#counts(), ...noFailure });
    } catch (error) {
      done = true;
      await send(call, { refs: [], ...this.#counts(), ...this.#failure(error) });
    } finally {
      if (!done) await iterator.return?.();
    }
    call.end();
  }
}

/** Destroys `socket` and resolves once it is closed. */
function closeSocket(socket: net.Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => {
    socket.once("close", () => resolve());
    socket.destroy();
  });
}

const noFailure: WireFailure = { errorCode: "", errorMessage: "" };

/**
 * Writes `message` and waits while the stream is full: true once it may go on, false when the
 * call ended first (cancelled, connection lost).
 */
function send(
  call: grpc.ServerWritableStream<EmptyRequest, ListRefsResponse>,
  message: ListRefsResponse,
): Promise<boolean> {
  if (call.cancelled || call.destroyed) return Promise.resolve(false);
  if (call.write(message)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const settle = (goOn: boolean) => () => {
      call.off("drain", onDrain);
      call.off("cancelled", onEnd);
      call.off("close", onEnd);
      resolve(goOn);
    };
    const onDrain = settle(true);
    const onEnd = settle(false);
    call.once("drain", onDrain);
    call.once("cancelled", onEnd);
    call.once("close", onEnd);
  });
}

/** The ref of a message field; `invalid` when it is absent or out of range. */
function refOf(message: BlockRefMessage | null): BlockRef {
  if (message === null) throw invalid("the call names no block ref");
  return blockRefFromMessage(message);
}

/** The refs of a RebalanceCheck, within the bound. */
function boundedRefs(messages: readonly BlockRefMessage[]): BlockRef[] {
  if (messages.length > GRPC_REFS_PER_MESSAGE_MAX) {
    throw invalid(`a check of ${messages.length} refs is over ${GRPC_REFS_PER_MESSAGE_MAX}`);
  }
  return messages.map(refOf);
}

/**
 * Options carrying a change's fencing token and ring version (each left out when 0); `invalid`
 * beyond a safe integer.
 */
function changeOptions(
  request: { readonly fenceToken: bigint; readonly ringVersion?: bigint },
): BlockCallOptions | undefined {
  const fenceToken = safeU64(request.fenceToken, "fencing token");
  const ringVersion = safeU64(request.ringVersion ?? 0n, "ring version");
  if (fenceToken === 0 && ringVersion === 0) return undefined;
  return {
    ...(fenceToken === 0 ? {} : { fenceToken }),
    ...(ringVersion === 0 ? {} : { ringVersion }),
  };
}

/** A uint64 field as a number; `invalid` beyond a safe integer. */
function safeU64(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid(`${what} ${value} is too large`);
  return Number(value);
}
