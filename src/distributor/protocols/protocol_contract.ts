/**
 * The peer protocol contract suite (protocol.ts states the rules). Each protocol's test file
 * calls {@link peerProtocolContract}; the same tests run over every protocol, on real loopback
 * sockets:
 * - the whole BlockStore contract, played by a protocol client against a server answering from
 *   a memory store, and from a file store that is reopened behind the server;
 * - the protocol's own rules: the handshake refuses another cluster or block size, deadlines
 *   fail a call that gets no answer, a lost server fails calls and a new one is reconnected to,
 *   garbage on the port closes only that connection.
 * @module
 */

import assert from "node:assert/strict";
import { type BlockRef, ErrorCode, isTorusError } from "../../core/mod.ts";
import {
  type BlockStore,
  blockStoreContract,
  type ContractFixture,
  FileBlockStore,
  HeldStore,
  type IoHold,
  MemoryBlockStore,
  patternBlock,
  testRef,
} from "../../storage/mod.ts";
import type { PeerIdentity, PeerProtocol, PeerServer, PeerStore } from "./protocol.ts";
import { RingCheckedStore } from "./ring_checked_store.ts";

const BLOCK = 4096;
const identity: PeerIdentity = {
  clusterId: "contract-cluster",
  blockSizeBytes: BLOCK,
  nodeName: "a",
};

/** Registers the contract for `protocol` (made fresh for every test). */
export function peerProtocolContract(name: string, makeProtocol: () => PeerProtocol): void {
  blockStoreContract(`${name} over a memory store`, async () => {
    const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 16 }));
    const served = await serveStore(makeProtocol(), store);
    return {
      store: served.client,
      holdNextIo: () => store.holdNext(),
      cleanup: () => served.close(),
    };
  });
  blockStoreContract(`${name} over a file store`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "torus-peer-" });
    const protocol = makeProtocol();
    const options = { dir, blockSizeBytes: BLOCK, sizeBytes: BLOCK * 17 };
    const store = new HeldStore(await FileBlockStore.open(options));
    let served = await serveStore(protocol, store);
    const fixture: ContractFixture = {
      store: served.client,
      holdNextIo: () => store.holdNext(),
      // The node behind the server restarts: its store closes and opens again.
      reopen: async () => {
        await served.close();
        served = await serveStore(protocol, await FileBlockStore.open(options));
        return served.client;
      },
      cleanup: async () => {
        await served.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
    return fixture;
  });
  registerProtocolTests(name, makeProtocol);
}

/** A server on a loopback port answering from `store`, and a connected client. */
interface Served {
  server: PeerServer;
  client: PeerStore;
  /** Closes the client, the server and the store. */
  close(): Promise<void>;
}

async function serveStore(
  protocol: PeerProtocol,
  store: BlockStore,
  clientIdentity: PeerIdentity = { ...identity, nodeName: "b" },
  serverIdentity: PeerIdentity = identity,
): Promise<Served> {
  const server = await protocol.listen(`${protocol.scheme}://127.0.0.1:0`, {
    identity: serverIdentity,
    store,
  });
  const client = protocol.dial(server.address, { identity: clientIdentity, callTimeoutMs: 5_000 });
  // The contract reads totalBlocks() before its first call; a peer store knows it once asked.
  await client.refreshCounts();
  return {
    server,
    client,
    async close() {
      await client.close().catch(() => {});
      await server.close();
      await store.close();
    },
  };
}

/**
 * 16 whole-block puts, 16 range writes of 128 KiB and 64 of 4 KiB at once, then each read back
 * from `store`.
 */
async function changeManyAtOnce(
  client: BlockStore,
  store: BlockStore,
  blockBytes: number,
): Promise<void> {
  const rangeBytes = 128 * 1024;
  const blocks = Array.from({ length: 16 }, (_, i) => patternBlock(blockBytes, i + 1));
  const ranges = Array.from({ length: 16 }, (_, i) => patternBlock(rangeBytes, i + 100));
  const sectorBytes = 4096;
  const sectors = Array.from({ length: 64 }, (_, i) => patternBlock(sectorBytes, i + 200));
  await Promise.all([
    ...blocks.map((block, i) => client.putBlock(testRef(i), block)),
    ...ranges.map((range, i) => client.writeAt(testRef(i + 16), rangeBytes, range)),
    ...sectors.map((sector, i) => client.writeAt(testRef(32), i * sectorBytes, sector)),
  ]);
  for (const [i, block] of blocks.entries()) {
    assert.ok(equalBytes(await store.getBlock(testRef(i)), block), `block ${i}`);
  }
  for (const [i, range] of ranges.entries()) {
    const stored = await store.getBlock(testRef(i + 16));
    assert.ok(equalBytes(stored.subarray(rangeBytes, 2 * rangeBytes), range), `range ${i}`);
    assert.ok(stored.subarray(0, rangeBytes).every((b) => b === 0), `zeros before range ${i}`);
  }
  const small = await store.getBlock(testRef(32));
  for (const [i, sector] of sectors.entries()) {
    const stored = small.subarray(i * sectorBytes, (i + 1) * sectorBytes);
    assert.ok(equalBytes(stored, sector), `sector ${i}`);
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

function registerProtocolTests(name: string, makeProtocol: () => PeerProtocol): void {
  const test = (behaviour: string, fn: (protocol: PeerProtocol) => Promise<void>) =>
    Deno.test(`${name}: ${behaviour}`, () => fn(makeProtocol()));

  test("a change's bytes are copied at the call, unless the caller never changes them", async (protocol) => {
    const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const served = await serveStore(protocol, store);
    try {
      for (const unchangingData of [false, true]) {
        // Without the promise the copy is what was passed; with it, the bytes go as they are.
        const expected = unchangingData ? 2 : 1;
        const block = new Uint8Array(BLOCK).fill(1);
        // Changed right after the call began, before its request was written.
        const put = served.client.putBlock(testRef(1), block, { unchangingData });
        block.fill(2);
        await put;
        assert.deepEqual(await store.getBlock(testRef(1)), new Uint8Array(BLOCK).fill(expected));
        const range = new Uint8Array(16).fill(1);
        const written = served.client.writeAt(testRef(1), 0, range, { unchangingData });
        range.fill(2);
        await written;
        const got = new Uint8Array(16);
        await store.readAt(testRef(1), 0, got);
        assert.deepEqual(got, new Uint8Array(16).fill(expected));
      }
    } finally {
      await served.close();
    }
  });

  test("changes in flight together on one connection (blocks, large and small ranges) each store their own bytes", async (protocol) => {
    // A server may read every large body into one buffer (TDP does): the store copies it at
    // the call, before the next frame is read. Many changes at once put that to the test.
    const blockBytes = 512 * 1024;
    const big = { ...identity, blockSizeBytes: blockBytes };
    const dir = await Deno.makeTempDir({ prefix: "torus-peer-" });
    const stores: BlockStore[] = [
      new MemoryBlockStore({ blockSizeBytes: blockBytes, totalBlocks: 64 }),
      await FileBlockStore.open({ dir, blockSizeBytes: blockBytes, sizeBytes: blockBytes * 65 }),
    ];
    try {
      for (const store of stores) {
        const served = await serveStore(protocol, store, { ...big, nodeName: "b" }, big);
        try {
          await changeManyAtOnce(served.client, store, blockBytes);
        } finally {
          await served.close();
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  test("a client of another cluster or block size is refused with the reason", async (protocol) => {
    const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const server = await protocol.listen(`${protocol.scheme}://127.0.0.1:0`, { identity, store });
    try {
      const others: [PeerIdentity, RegExp][] = [
        [{ ...identity, clusterId: "other-cluster" }, /cluster/],
        [{ ...identity, blockSizeBytes: BLOCK * 2 }, /block size/],
      ];
      for (const [other, reason] of others) {
        const client = protocol.dial(server.address, { identity: other, callTimeoutMs: 5_000 });
        const error = await client.hasBlock(testRef(1)).then(() => null, (e: unknown) => e);
        assert.ok(isTorusError(error), `a mismatched client was served: ${String(error)}`);
        assert.match(error.message, reason);
        await client.close();
      }
      assert.equal(store.usedBlocks(), 0);
    } finally {
      await server.close();
      await store.close();
    }
  });

  test("a call without an answer fails at its deadline: reads unavailable, changes unknown", async (protocol) => {
    const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 }));
    const served = await serveStore(protocol, store);
    const holds: IoHold[] = [];
    try {
      holds.push(store.holdNext());
      const started = Date.now();
      const put = served.client.putBlock(testRef(1), new Uint8Array(8), { timeoutMs: 300 });
      await rejectsWithCode(put, ErrorCode.OutcomeUnknown);
      holds.push(store.holdNext());
      const get = served.client.getBlock(testRef(1), { timeoutMs: 300 });
      await rejectsWithCode(get, ErrorCode.Unavailable);
      assert.ok(Date.now() - started < 4_000, "the deadline was not kept");
      for (const hold of holds) hold.release();
      // The held put lands after all; the connection still serves.
      await waitFor(async () => await served.client.hasBlock(testRef(1)));
    } finally {
      for (const hold of holds) hold.release();
      await served.close();
    }
  });

  test("a lost server fails calls; a new one on the port is connected to, and is another instance", async (protocol) => {
    const first = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const server = await protocol.listen(`${protocol.scheme}://127.0.0.1:0`, {
      identity,
      store: first,
    });
    const client = protocol.dial(server.address, { identity, callTimeoutMs: 2_000 });
    assert.equal(client.instance, null, "no handshake yet");
    await client.putBlock(testRef(1), patternBlock(BLOCK, 1));
    const firstInstance = client.instance;
    assert.ok(firstInstance !== null && firstInstance !== "", "the server said its instance");
    await server.close();
    const error = await client.getBlock(testRef(1)).then(() => null, (e: unknown) => e);
    assert.ok(isTorusError(error, ErrorCode.Unavailable), `got ${String(error)}`);
    const second = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    await second.putBlock(testRef(1), patternBlock(BLOCK, 2));
    const again = await protocol.listen(server.address, { identity, store: second });
    try {
      assert.deepEqual(await client.getBlock(testRef(1)), patternBlock(BLOCK, 2));
      // The restarted server is another instance: what the first took unflushed may be gone.
      assert.ok(client.instance !== null && client.instance !== firstInstance, "a new instance");
    } finally {
      await client.close();
      await again.close();
      await first.close();
      await second.close();
    }
  });

  test("garbage on the port closes that connection only", async (protocol) => {
    const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const served = await serveStore(protocol, store);
    try {
      await served.client.putBlock(testRef(1), patternBlock(BLOCK, 1));
      const { port } = new URL(served.server.address);
      for (const garbage of garbageInputs()) {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port: Number(port) });
        await conn.write(garbage).catch(() => 0);
        // The server ends the connection: a read returns end of stream or fails.
        const buffer = new Uint8Array(65536);
        const ended = await readUntilEnd(conn, buffer);
        conn.close();
        assert.ok(
          ended,
          `the server kept a connection open after ${garbage.length} bytes of garbage`,
        );
      }
      assert.deepEqual(await served.client.getBlock(testRef(1)), patternBlock(BLOCK, 1));
    } finally {
      await served.close();
    }
  });

  test("hasBlocks answers many refs in order", async (protocol) => {
    const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 64 });
    const served = await serveStore(protocol, store);
    try {
      for (let i = 0; i < 64; i += 3) await served.client.putBlock(testRef(i), new Uint8Array(1));
      const refs: BlockRef[] = [];
      for (let i = 0; i < 20_000; i++) refs.push(testRef(i % 70, 3 + Math.floor(i / 70)));
      const held = await served.client.hasBlocks(refs);
      assert.equal(held.length, refs.length);
      held.forEach((h, i) => assert.equal(h, i < 70 && i % 3 === 0 && i < 64, `ref ${i}`));
      assert.deepEqual(await served.client.hasBlocks([]), []);
    } finally {
      await served.close();
    }
  });

  test("a write carries its fencing token to the remote store", async (protocol) => {
    const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 }));
    const served = await serveStore(protocol, store);
    try {
      await served.client.putBlock(testRef(1), new Uint8Array(1), { fenceToken: 7 });
      await served.client.writeAt(testRef(1), 0, new Uint8Array(1), { fenceToken: 2 ** 40 + 3 });
      await served.client.zeroAt(testRef(1), 0, 1, { fenceToken: 9 });
      await served.client.deleteBlock(testRef(1), { fenceToken: 11 });
      await served.client.putBlock(testRef(2), new Uint8Array(1));
      assert.deepEqual(store.fenceTokens, [7, 2 ** 40 + 3, 9, 11, undefined]);
    } finally {
      await served.close();
    }
  });

  test("a change carries its ring version to the remote store", async (protocol) => {
    const store = new HeldStore(new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 }));
    const served = await serveStore(protocol, store);
    try {
      const { client } = served;
      await client.putBlock(testRef(1), new Uint8Array(1), { ringVersion: 3 });
      await client.writeAt(testRef(1), 0, new Uint8Array(1), { ringVersion: 2 ** 40 + 3 });
      await client.zeroAt(testRef(1), 0, 1, { ringVersion: 9, fenceToken: 4 });
      await client.deleteBlock(testRef(1), { ringVersion: Number.MAX_SAFE_INTEGER });
      await client.putBlock(testRef(2), new Uint8Array(1), { ringVersion: 0, fenceToken: 5 });
      assert.deepEqual(store.ringVersions, [
        3,
        2 ** 40 + 3,
        9,
        Number.MAX_SAFE_INTEGER,
        undefined,
      ]);
      assert.deepEqual(store.fenceTokens, [undefined, undefined, 4, undefined, 5]);
      // A version no wire can carry is refused before it is sent.
      for (const ringVersion of [-1, 1.5, 2 ** 53]) {
        const error = await client.putBlock(testRef(3), new Uint8Array(1), { ringVersion })
          .then(() => null, (e: unknown) => e);
        assert.ok(isTorusError(error, ErrorCode.Invalid), `${ringVersion}: ${String(error)}`);
      }
      assert.equal(store.ringVersions.length, 5, "an invalid version was sent");
    } finally {
      await served.close();
    }
  });

  test("a change refused for an older ring comes back as compare_failed", async (protocol) => {
    const inner = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 4 });
    const served = await serveStore(protocol, new RingCheckedStore(inner, () => 5));
    try {
      const { client } = served;
      await client.putBlock(testRef(1), patternBlock(BLOCK, 1), { ringVersion: 5 });
      const old = { ringVersion: 4 };
      const refused: [string, Promise<void>][] = [
        ["put", client.putBlock(testRef(2), new Uint8Array(1), old)],
        ["writeAt", client.writeAt(testRef(1), 0, new Uint8Array(1), old)],
        ["zeroAt", client.zeroAt(testRef(1), 0, 1, old)],
        ["deleteBlock", client.deleteBlock(testRef(1), old)],
      ];
      for (const [what, call] of refused) {
        const error = await call.then(() => null, (e: unknown) => e);
        assert.ok(isTorusError(error, ErrorCode.CompareFailed), `${what}: ${String(error)}`);
        assert.match(error.message, /ring version 4 is older than 5/);
      }
      assert.deepEqual(await client.getBlock(testRef(1)), patternBlock(BLOCK, 1));
      assert.equal(await client.hasBlock(testRef(2)), false);
      // The connection goes on: the same change by the current ring lands.
      await client.deleteBlock(testRef(1), { ringVersion: 5 });
      assert.equal(inner.usedBlocks(), 0);
    } finally {
      await served.close();
    }
  });
}

/** Inputs no protocol accepts as a first message. */
function garbageInputs(): Uint8Array[] {
  const random = new Uint8Array(4096);
  let x = 12345;
  for (let i = 0; i < random.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    random[i] = x >>> 24;
  }
  const huge = new Uint8Array(64);
  huge.fill(0xff);
  return [random, huge, new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n")];
}

/** Reads until end of stream or an error: true. False if the stream stays open for 5 s. */
async function readUntilEnd(conn: Deno.Conn, buffer: Uint8Array): Promise<boolean> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) return false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), left)
    );
    const read = conn.read(buffer).catch(() => null);
    const result = await Promise.race([read, timeout]);
    clearTimeout(timer);
    if (result === "timeout") return false;
    if (result === null) return true;
  }
}

async function waitFor(condition: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await condition()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.fail("the condition never held");
}

async function rejectsWithCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  const error = await promise.then(() => null, (e: unknown) => e);
  assert.ok(isTorusError(error, code), `expected ${code}, got ${String(error)}`);
}
