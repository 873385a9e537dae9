/**
 * The peer protocol contract over gRPC, and what is gRPC's own: the original's four methods
 * called as an original client would, error replies, refusals, malformed and oversized messages,
 * long listings and the server's connection count. The tests of this file that use no file store
 * run with Deno's leak sanitizers on.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as grpc from "@grpc/grpc-js";
import { BlockRef, blockUnavailable, ErrorCode, isTorusError } from "../../../core/mod.ts";
import { blockRefToMessage, type StoreCounts } from "../../../models/mod.ts";
import { HeldStore, MemoryBlockStore, patternBlock, testRef } from "../../../storage/mod.ts";
import type { PeerIdentity } from "../protocol.ts";
import { peerProtocolContract } from "../protocol_contract.ts";
import { GrpcProtocol, type GrpcServer } from "./mod.ts";
import {
  errorOfFailure,
  identityMetadata,
  listRefsDefinition,
  rpcs,
  torusStorageService,
  type UnaryRpc,
  wireFailure,
  wireIdentity,
} from "./service.ts";

peerProtocolContract("gRPC", () => new GrpcProtocol());

const BLOCK = 4096;
const identity: PeerIdentity = { clusterId: "grpc-test", blockSizeBytes: BLOCK, nodeName: "s" };

/** A Deno.test with the op and resource sanitizers on: nothing may outlive the test. */
function sanitizedTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: true, sanitizeResources: true });
}

/** A server answering from a memory store of `totalBlocks`, for the length of `fn`. */
async function withServer(
  fn: (server: GrpcServer, store: MemoryBlockStore) => Promise<void>,
  totalBlocks = 16,
  blockSizeBytes = BLOCK,
): Promise<void> {
  const store = new MemoryBlockStore({ blockSizeBytes, totalBlocks });
  const server = await new GrpcProtocol().listen("http://127.0.0.1:0", {
    identity: { ...identity, blockSizeBytes },
    store,
  });
  try {
    await fn(server, store);
  } finally {
    await server.close();
    await store.close();
  }
}

/** A plain grpc-js client of the server, as a client of the original would be. */
async function withRawClient(
  server: GrpcServer,
  fn: (client: grpc.Client) => Promise<void>,
): Promise<void> {
  const client = new grpc.Client(
    new URL(server.address).host,
    grpc.credentials.createInsecure(),
    { "grpc.use_local_subchannel_pool": 1 },
  );
  try {
    await fn(client);
  } finally {
    client.close();
  }
}

/** One unary call through `client`: the reply, or the grpc-js error. */
function rawCall<Request, Reply extends StoreCounts>(
  client: grpc.Client,
  method: UnaryRpc<Request, Reply>,
  request: Request,
  metadata = identityMetadata(identity),
): Promise<Reply> {
  const { path, requestSerialize, responseDeserialize } = method.definition;
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      path,
      requestSerialize,
      responseDeserialize,
      request,
      metadata,
      { deadline: Date.now() + 5_000 },
      (error, reply) => error !== null || reply === undefined ? reject(error) : resolve(reply),
    );
  });
}

/** Raw bytes to a method: the status code grpc-js answers with (0 for a reply). */
function rawBytesCall(client: grpc.Client, path: string, bytes: Uint8Array): Promise<number> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (value: Uint8Array) => Buffer.from(value),
      (reply: Buffer) => reply,
      bytes,
      identityMetadata(identity),
      { deadline: Date.now() + 5_000 },
      (error) => resolve(error === null ? grpc.status.OK : error.code),
    );
  });
}

sanitizedTest(
  "gRPC: the original's four methods work as an original client calls them",
  async () => {
    await withServer(async (server, store) => {
      await withRawClient(server, async (client) => {
        const refs = [testRef(1), testRef(2)].map(blockRefToMessage);
        const blocks = [patternBlock(BLOCK, 1), new Uint8Array([7, 7])];
        const put = await rawCall(client, rpcs.PutBlock, { refs, blocks, fenceToken: 0n });
        assert.deepEqual({ ok: put.ok, err: put.err, used: put.usedBlocks }, {
          ok: true,
          err: "",
          used: 2n,
        });
        assert.equal(put.totalBlocks, 16n);
        const got = await rawCall(client, rpcs.Block, {
          blockRef: refs[0]!,
          checkCrc32: false,
          expectedCrc32: 0,
        });
        assert.equal(got.ok, true);
        assert.deepEqual(got.data, patternBlock(BLOCK, 1));
        const check = await rawCall(client, rpcs.RebalanceCheck, {
          blockRefs: [...refs, blockRefToMessage(testRef(3))],
        });
        assert.deepEqual(check.valid, [true, true, false]);
        const deleted = await rawCall(client, rpcs.DeleteBlock, { refs, fenceToken: 0n });
        assert.equal(deleted.ok, true);
        assert.equal(deleted.usedBlocks, 0n);
        assert.equal(store.usedBlocks(), 0);
      });
    });
  },
);

sanitizedTest(
  "gRPC: an error reply keeps its code, in the original's and the added methods",
  async () => {
    await withServer(async (server) => {
      await withRawClient(server, async (client) => {
        const ref = blockRefToMessage(testRef(9));
        const missing = await rawCall(client, rpcs.Block, {
          blockRef: ref,
          checkCrc32: false,
          expectedCrc32: 0,
        });
        assert.deepEqual([missing.ok, missing.errorCode], [false, ErrorCode.NotExist]);
        assert.equal(missing.totalBlocks, 16n, "an error reply carries the counts too");
        const deleted = await rawCall(client, rpcs.DeleteBlock, { refs: [ref], fenceToken: 0n });
        assert.deepEqual([deleted.ok, deleted.errorCode], [false, ErrorCode.NotExist]);
        const oversized = await rawCall(client, rpcs.PutBlock, {
          refs: [ref],
          blocks: [new Uint8Array(BLOCK + 1)],
          fenceToken: 0n,
        });
        assert.deepEqual([oversized.ok, oversized.errorCode], [false, ErrorCode.Invalid]);
        assert.match(oversized.err, /./);
        const read = await rawCall(client, rpcs.ReadAt, {
          blockRef: ref,
          offsetBytes: 0,
          lengthBytes: 0xffffffff,
        });
        assert.equal(read.errorCode, ErrorCode.Invalid);
        assert.match(read.errorMessage, /longer than a block/);
      });
    });
    // And through the client, a code survives as the same TorusError code.
    await withServer(async (server) => {
      const client = new GrpcProtocol().dial(server.address, { identity, callTimeoutMs: 2_000 });
      try {
        const error = await client.getBlock(testRef(1)).then(() => null, (e: unknown) => e);
        assert.ok(isTorusError(error, ErrorCode.NotExist), String(error));
        assert.match((error as Error).message, /127\.0\.0\.1/);
        const crc = await client.putBlock(testRef(1), new Uint8Array(1)).then(() =>
          client.getBlock(testRef(1), { expectedCrc32: 0 })
        ).then(() => null, (e: unknown) => e);
        assert.ok(isTorusError(crc, ErrorCode.BlockUnavailable), String(crc));
        // Far past the message bound: refused before it is sent, not lost on the way.
        const huge = new Uint8Array(8 * 1024 * 1024);
        for (
          const call of [client.putBlock(testRef(2), huge), client.writeAt(testRef(2), 0, huge)]
        ) {
          const refused = await call.then(() => null, (e: unknown) => e);
          assert.ok(isTorusError(refused, ErrorCode.Invalid), String(refused));
        }
      } finally {
        await client.close();
      }
    });
  },
);

sanitizedTest("gRPC: a code this node does not know reads as unavailable", () => {
  const error = errorOfFailure({ errorCode: "from_the_future", errorMessage: "m" }, "peer");
  assert.ok(isTorusError(error, ErrorCode.Unavailable));
  assert.equal(error.message, "peer: m");
  const long = wireFailure(ErrorCode.Invalid, "a\nb".repeat(2000));
  assert.ok(long.errorMessage.length <= 1024 && !long.errorMessage.includes("\n"));
  return Promise.resolve();
});

sanitizedTest(
  "gRPC: a call of another cluster, or that says nothing of its own, is refused",
  async () => {
    await withServer(async (server, store) => {
      await withRawClient(server, async (client) => {
        const request = {
          refs: [blockRefToMessage(testRef(1))],
          blocks: [new Uint8Array(1)],
          fenceToken: 0n,
        };
        const other = identityMetadata({ ...identity, clusterId: "elsewhere" });
        const refused = await rawCall(client, rpcs.PutBlock, request, other);
        assert.deepEqual([refused.ok, refused.errorCode], [false, ErrorCode.Invalid]);
        assert.match(refused.err, /cluster "elsewhere"/);
        const bigger = identityMetadata({ ...identity, blockSizeBytes: BLOCK * 2 });
        assert.match((await rawCall(client, rpcs.PutBlock, request, bigger)).err, /block size/);
        const silent = await rawCall(client, rpcs.PutBlock, request, new grpc.Metadata());
        assert.match(silent.err, /does not say which cluster/);
        const hello = await rawCall(client, rpcs.Hello, {
          protocolVersion: 1,
          clusterId: "elsewhere",
          blockSizeBytes: BLOCK,
          nodeName: "x",
        });
        assert.equal(hello.errorCode, ErrorCode.Invalid);
        assert.match(hello.errorMessage, /cluster "elsewhere"/);
        const future = await rawCall(client, rpcs.Hello, {
          ...wireIdentity(identity),
          protocolVersion: 2,
        });
        assert.match(future.errorMessage, /version 2 is not supported/);
        const listing = await rawListing(client, other);
        assert.deepEqual(listing.map((part) => part.errorCode), [ErrorCode.Invalid]);
        assert.equal(store.usedBlocks(), 0);
      });
    });
  },
);

/** The parts of a ListRefs call made with `metadata`. */
function rawListing(client: grpc.Client, metadata: grpc.Metadata) {
  const stream = client.makeServerStreamRequest(
    listRefsDefinition.path,
    listRefsDefinition.requestSerialize,
    listRefsDefinition.responseDeserialize,
    {},
    metadata,
  );
  return stream.toArray();
}

sanitizedTest(
  "gRPC: malformed and oversized messages get an error status, not a crash",
  async () => {
    await withServer(async (server, store) => {
      await withRawClient(server, async (client) => {
        const garbage = [
          new Uint8Array([0x0f]), // wire type 7 does not exist
          new Uint8Array([0x08]), // a field without its value
          new Uint8Array([0x7a, 0xff, 0xff, 0xff, 0xff, 0x07]), // a field of 2 GiB
        ];
        for (const bytes of garbage) {
          for (const method of Object.keys(torusStorageService)) {
            const status = await rawBytesCall(client, `/models.TorusStorage/${method}`, bytes);
            assert.notEqual(status, grpc.status.OK, `${method} accepted garbage`);
          }
        }
        const huge = new Uint8Array(5 * 1024 * 1024);
        const status = await rawBytesCall(client, "/models.TorusStorage/PutBlock", huge);
        assert.equal(status, grpc.status.RESOURCE_EXHAUSTED);
        const unknown = await rawBytesCall(client, "/models.TorusStorage/Nope", new Uint8Array());
        assert.equal(unknown, grpc.status.UNIMPLEMENTED);
        // The server goes on serving, this connection included.
        const counts = await rawCall(client, rpcs.Counts, {});
        assert.deepEqual([counts.errorCode, counts.totalBlocks], ["", 16n]);
        assert.equal(store.usedBlocks(), 0);
      });
    });
  },
);

sanitizedTest("gRPC: a listing longer than one message, read whole or left early", async () => {
  await withServer(
    async (server, store) => {
      const count = 10_000;
      for (let i = 0; i < count; i++) await store.putBlock(testRef(i), new Uint8Array(1));
      const client = new GrpcProtocol().dial(server.address, {
        identity: { ...identity, blockSizeBytes: 512 },
        callTimeoutMs: 5_000,
      });
      try {
        const keys = new Set<string>();
        for await (const ref of client.blockRefs()) keys.add(ref.key);
        assert.equal(keys.size, count);
        assert.ok(keys.has(testRef(count - 1).key));
        let seen = 0;
        for await (const _ of client.blockRefs()) {
          if (++seen === 10) break;
        }
        assert.equal(client.usedBlocks(), count);
      } finally {
        await client.close();
      }
    },
    10_000,
    512,
  );
});

/** A memory store whose listing stops after `refsBeforeTrouble` refs: it fails, or stalls. */
class TroubledListing extends MemoryBlockStore {
  trouble: "fail" | "stall" = "fail";
  readonly #stalled = Promise.withResolvers<void>();

  override async *blockRefs(): AsyncIterable<BlockRef> {
    let count = 0;
    for await (const ref of super.blockRefs()) {
      if (count++ === 5000) {
        if (this.trouble === "fail") throw blockUnavailable("the index is damaged");
        await this.#stalled.promise;
      }
      yield ref;
    }
  }

  /** Lets a stalled listing go on. */
  unstall(): void {
    this.#stalled.resolve();
  }
}

sanitizedTest(
  "gRPC: a listing that fails or stalls on the server fails at the client",
  async () => {
    const store = new TroubledListing({ blockSizeBytes: 512, totalBlocks: 6000 });
    for (let i = 0; i < 6000; i++) await store.putBlock(testRef(i), new Uint8Array(1));
    const small = { ...identity, blockSizeBytes: 512 };
    const protocol = new GrpcProtocol();
    const server = await protocol.listen("http://127.0.0.1:0", { identity: small, store });
    const client = protocol.dial(server.address, { identity: small, callTimeoutMs: 300 });
    const listAll = async () => {
      let count = 0;
      for await (const _ of client.blockRefs()) count++;
      return count;
    };
    try {
      const failed = await listAll().then(() => null, (e: unknown) => e);
      assert.ok(isTorusError(failed, ErrorCode.BlockUnavailable), String(failed));
      assert.match((failed as Error).message, /the index is damaged/);
      store.trouble = "stall";
      const started = Date.now();
      const stalled = await listAll().then(() => null, (e: unknown) => e);
      assert.ok(isTorusError(stalled, ErrorCode.Unavailable), String(stalled));
      assert.ok(Date.now() - started < 2_000, "a stalled listing fails at the part's deadline");
    } finally {
      store.unstall();
      await client.close();
      await server.close();
      await store.close();
    }
  },
);

sanitizedTest("gRPC: refs and names of any text cross the wire intact", async () => {
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
  const unusual = { clusterId: "clüster ✓ /?&=", blockSizeBytes: BLOCK, nodeName: "nœud" };
  const protocol = new GrpcProtocol();
  const server = await protocol.listen("http://127.0.0.1:0", { identity: unusual, store });
  const client = protocol.dial(server.address, { identity: unusual, callTimeoutMs: 2_000 });
  try {
    const ref = new BlockRef({ type: 2, volume: 2 ** 40 - 1, inode: 2n ** 64n - 1n, index: 5n });
    await client.putBlock(ref, patternBlock(BLOCK, 3), { fenceToken: Number.MAX_SAFE_INTEGER });
    assert.deepEqual(await client.getBlock(ref), patternBlock(BLOCK, 3));
    const listed: BlockRef[] = [];
    for await (const one of client.blockRefs()) listed.push(one);
    assert.deepEqual(listed.map((r) => r.key), [ref.key]);
    await assert.rejects(client.putBlock(ref, new Uint8Array(1), { fenceToken: -1 }), /fencing/);
  } finally {
    await client.close();
    await server.close();
    await store.close();
  }
});

sanitizedTest("gRPC: a change of a ref waits for the earlier one; others do not", async () => {
  // Unary calls are separate HTTP/2 streams: nothing in gRPC keeps a later call from reaching
  // the store first. The put is held at the store; the range write after it must not pass it.
  const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 8 }));
  const protocol = new GrpcProtocol();
  const server = await protocol.listen("http://127.0.0.1:0", { identity, store });
  const client = protocol.dial(server.address, { identity, callTimeoutMs: 5_000 });
  const hold = store.holdNext();
  const put = client.putBlock(testRef(1), patternBlock(BLOCK, 1));
  let patch: Promise<void> = Promise.resolve();
  try {
    await hold.arrived;
    patch = client.writeAt(testRef(1), 0, new Uint8Array([1, 2, 3]));
    // A read of the ref and a change of another ref go through while the put is held.
    assert.equal(await client.hasBlock(testRef(1)), false);
    await client.putBlock(testRef(2), new Uint8Array(1));
    assert.equal(hold.laterOperations(), 2, "only the read and the other ref's put arrived");
    hold.release();
    await Promise.all([put, patch]);
    const expected = patternBlock(BLOCK, 1);
    expected.set([1, 2, 3]);
    assert.deepEqual(await client.getBlock(testRef(1)), expected);
  } finally {
    hold.release();
    await Promise.allSettled([put, patch]);
    await client.close();
    await server.close();
    await store.close();
  }
});

sanitizedTest("gRPC: the server counts its open connections", async () => {
  await withServer(async (server) => {
    assert.equal(server.connections(), 0);
    const client = new GrpcProtocol().dial(server.address, { identity, callTimeoutMs: 2_000 });
    await client.refreshCounts();
    assert.equal(client.totalBlocks(), 16);
    assert.ok(server.connections() >= 1);
    await client.close();
    await waitFor(() => server.connections() === 0);
  });
});

sanitizedTest(
  "gRPC: a closed server stops a client's calls at once; a new one is reconnected to",
  async () => {
    const protocol = new GrpcProtocol();
    const first = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const server = await protocol.listen("http://127.0.0.1:0", { identity, store: first });
    const client = protocol.dial(server.address, { identity, callTimeoutMs: 3_000 });
    const second = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    let again: GrpcServer | null = null;
    try {
      await client.putBlock(testRef(1), new Uint8Array(1));
      await server.close();
      const started = Date.now();
      const read = await client.hasBlock(testRef(1)).then(() => null, (e: unknown) => e);
      assert.ok(isTorusError(read, ErrorCode.Unavailable), String(read));
      const change = await client.deleteBlock(testRef(1)).then(() => null, (e: unknown) => e);
      assert.ok(isTorusError(change, ErrorCode.Unavailable), "refused before sending: not done");
      assert.ok(Date.now() - started < 1_000, "a refused connection does not wait for a deadline");
      again = await protocol.listen(server.address, { identity, store: second });
      assert.equal(await client.hasBlock(testRef(1)), false);
    } finally {
      await client.close();
      await again?.close();
      await first.close();
      await second.close();
    }
  },
);

async function waitFor(condition: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !condition(); i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.ok(condition(), "the condition never held");
}
