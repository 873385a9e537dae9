/**
 * A cluster of three `torus serve` processes on one etcd, each with its own data dir and a TDP
 * peer address, joined to the ring (replication 2): a volume written through one node's NBD
 * server with nbdcopy reads back byte-exact through another node's, and after SIGKILL of any one
 * node every flushed byte still reads back through a surviving node. (Placement on exactly the
 * ring's holders is checked in src/distributor/distributor_test.ts.)
 */

import assert from "node:assert/strict";
import { connStream, NbdClient } from "../../src/block/mod.ts";
import { openMetadata } from "../../src/cli/mod.ts";
import { BlockRef, ErrorCode, isTorusError } from "../../src/core/mod.ts";
import { TdpProtocol } from "../../src/distributor/mod.ts";
import { runCommand } from "../support/nbd_fixture.ts";
import { runTorus, startTorusProcess } from "../support/torus_process.ts";
import { freePort } from "../support/etcd.ts";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";
import { E2eNode, e2eTest, fio, MiB, randomFile } from "./e2e_support.ts";

async function runOk(command: string, args: string[]): Promise<void> {
  const result = await runCommand(command, args);
  assert.equal(result.code, 0, `${command} ${args.join(" ")}: ${result.stdout}${result.stderr}`);
}

async function sameFiles(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([Deno.readFile(a), Deno.readFile(b)]);
  return x.length === y.length && x.every((byte, i) => byte === y[i]);
}

/** `torus ctl list-peers --json`: each registered peer's member status and used bytes. */
async function listPeers(
  meta: readonly string[],
): Promise<{ member: string; usedBytes: number }[]> {
  const listed = await runTorus(["ctl", "list-peers", "--json", ...meta]);
  assert.equal(listed.code, 0, listed.stderr);
  return (JSON.parse(listed.stdout) as { peers: { member: string; usedBytes: number }[] }).peers;
}

/** How a member node is started: its peer URL's scheme and port, and more serve flags. */
interface NodeArgs {
  readonly scheme?: string;
  readonly port?: number;
  readonly extra?: readonly string[];
}

/** An etcd with a cluster initialised under a prefix of its own, and its member nodes. */
class Cluster implements AsyncDisposable {
  readonly meta: readonly string[];
  readonly #etcd: AsyncDisposable;

  private constructor(etcd: AsyncDisposable, meta: readonly string[]) {
    this.#etcd = etcd;
    this.meta = meta;
  }

  /** Starts etcd (or uses the shared one) and runs `torus ctl init` on it. */
  static async init(): Promise<Cluster> {
    const etcd = await testEtcd();
    const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-e2e-${crypto.randomUUID()}/`];
    const cluster = new Cluster(etcd, meta);
    await cluster.ctl("init");
    return cluster;
  }

  /** `torus ctl ARGS` on this cluster; throws unless it exits 0. */
  async ctl(...args: string[]): Promise<void> {
    const result = await runTorus(["ctl", ...args, ...this.meta]);
    assert.equal(result.code, 0, `torus ctl ${args.join(" ")}: ${result.stderr}`);
  }

  /**
   * The serve flags of a member at `scheme://127.0.0.1:port`: a fixed port, free now, as an
   * operator configures it (a restarted node is where it was), unless `port` says otherwise.
   */
  memberArgs(options: NodeArgs = {}): string[] {
    const address = `${options.scheme ?? "tdp"}://127.0.0.1:${options.port ?? freePort()}`;
    return [...this.meta, "--peer-address", address, "--auto-join", ...(options.extra ?? [])];
  }

  /** Starts a member node. */
  startNode(options: NodeArgs = {}): Promise<E2eNode> {
    return E2eNode.start({ args: this.memberArgs(options) });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#etcd[Symbol.asyncDispose]();
  }
}

e2eTest(
  "three nodes at replication 2: written through one node, read through another, and every " +
    "flushed byte survives SIGKILL of any one node",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    await using a = await cluster.startNode();
    await using b = await cluster.startNode();
    await using c = await cluster.startNode();
    const nodes = [a, b, c];
    assert.deepEqual((await listPeers(meta)).map((p) => p.member), ["OK", "OK", "OK"]);
    await cluster.ctl("volume", "create-block", "vol", "24MiB");

    const input = `${a.dir}/in.bin`;
    await randomFile(input, 24 * MiB);
    await runOk("nbdcopy", ["--flush", input, a.uri("vol")]);
    await runOk("nbdcopy", [b.uri("vol"), `${b.dir}/out.bin`]);
    assert.ok(await sameFiles(input, `${b.dir}/out.bin`), "node B reads what node A wrote");

    for (const [i, victim] of nodes.entries()) {
      await victim.stop("SIGKILL");
      const reader = nodes[(i + 1) % nodes.length]!;
      const out = `${reader.dir}/after-${i}.bin`;
      await runOk("nbdcopy", [reader.uri("vol"), out]);
      assert.ok(await sameFiles(input, out), `the volume reads back with node ${i} dead`);
      await victim.startAgain();
    }
  },
);

e2eTest(
  "a cluster node's banner names its peer address and the ring; ctl peer list shows every node",
  { tools: etcdAvailable() ? [] : ["etcd"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    // Port 0: each node takes a free port and registers it.
    await using a = await cluster.startNode({ port: 0 });
    await using b = await cluster.startNode({ port: 0 });
    assert.match(a.output(), /peers: +tdp:\/\/127\.0\.0\.1:\d+ \(ring version 2: 1 member/);
    assert.match(b.output(), /peers: +tdp:\/\/127\.0\.0\.1:\d+ \(ring version 3: 2 members/);
    const peers = await listPeers(meta);
    assert.deepEqual(peers.map((p) => p.member), ["OK", "OK"]);
  },
);

e2eTest(
  "torus blk nbdserve: a client with no store writes through the nodes; a node reads it back",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    await using a = await cluster.startNode();
    await using _b = await cluster.startNode();
    await cluster.ctl("volume", "create-block", "v", "8MiB");
    const port = freePort();
    await using client = await startTorusProcess(
      ["blk", "nbdserve", ...meta, "-l", `127.0.0.1:${port}`],
      /Ready\./,
    );
    assert.match(client.output(), /cluster: +ring version 3, 2 nodes, replication 2/);
    const input = `${a.dir}/in.bin`;
    await randomFile(input, 8 * MiB);
    await runOk("nbdcopy", ["--flush", input, `nbd://127.0.0.1:${port}/v`]);
    assert.equal(await client.stop(), 0, client.output());
    await runOk("nbdcopy", [a.uri("v"), `${a.dir}/out.bin`]);
    assert.ok(await sameFiles(input, `${a.dir}/out.bin`), "node A reads what the client wrote");
  },
);

e2eTest(
  "a node on gRPC (http://) and a node on TDP in one cluster: each reads what the other wrote",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    await using a = await cluster.startNode({ scheme: "tdp" });
    await using b = await cluster.startNode({ scheme: "http" });
    assert.match(b.output(), /peers: +http:\/\/127\.0\.0\.1:\d+ /);
    await cluster.ctl("volume", "create-block", "g", "8MiB");
    const input = `${a.dir}/in.bin`;
    await randomFile(input, 8 * MiB);
    await runOk("nbdcopy", ["--flush", input, a.uri("g")]);
    await runOk("nbdcopy", [b.uri("g"), `${b.dir}/out.bin`]);
    assert.ok(await sameFiles(input, `${b.dir}/out.bin`), "B (gRPC) reads what A (TDP) wrote");
  },
);

for (const strict of [false, true]) {
  e2eTest(
    `a node that stops answering (SIGSTOP), ${
      strict
        ? "--min-copies 2: writes to its blocks fail within their deadline and flushes fail"
        : "default min copies: writes go on, marked in etcd, and flushes succeed"
    }; nothing hangs, and after SIGCONT it has every change before it serves the volume`,
    { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
    async () => {
      await using cluster = await Cluster.init();
      const extra = strict ? ["--min-copies", "2"] : [];
      await using a = await cluster.startNode({ extra });
      await using _b = await cluster.startNode({ extra });
      await using c = await cluster.startNode({ extra });
      const size = 8 * MiB;
      await cluster.ctl("volume", "create-block", "s", "8MiB");
      const input = `${a.dir}/in.bin`;
      await randomFile(input, size);
      await runOk("nbdcopy", ["--flush", input, a.uri("s")]);

      const client = await a.connect("s");
      const sector = new Uint8Array(4096).fill(0x5a);
      Deno.kill(c.serve.child.pid, "SIGSTOP");
      let stopped = true;
      try {
        // One write into every 512 KiB block: those C holds cannot reach it.
        const started = Date.now();
        const writes = await Promise.allSettled(
          Array.from(
            { length: size / (512 * 1024) },
            (_, i) => client.writeAt(i * 512 * 1024, sector),
          ),
        );
        const failed = writes.filter((w) => w.status === "rejected").length;
        if (strict) {
          assert.ok(
            failed > 0 && failed < writes.length,
            `${failed} of ${writes.length} writes failed`,
          );
          await assert.rejects(client.flush(), "a flush while C lacks changes must fail");
        } else {
          assert.equal(failed, 0, "writes go on with one of two holders");
          await client.flush();
        }
        assert.ok(Date.now() - started < 30_000, `took ${Date.now() - started} ms: something hung`);
        // While C is stopped and marked, reading through B never sees C's old copies.
        Deno.kill(c.serve.child.pid, "SIGCONT");
        stopped = false;
        // C is back: the flush writes it what it missed, then succeeds.
        await client.flush();
        const viewOfA = new Uint8Array(size);
        await client.readAt(0, viewOfA);
        await client.close();
        await runOk("nbdcopy", [c.uri("s"), `${c.dir}/out.bin`]);
        const viewOfC = await Deno.readFile(`${c.dir}/out.bin`);
        assert.ok(viewOfC.every((byte, i) => byte === viewOfA[i]), "C serves what A flushed");
      } finally {
        if (stopped) Deno.kill(c.serve.child.pid, "SIGCONT");
      }
    },
  );
}

e2eTest(
  "a writer that died while a node was down leaves marks in etcd: the node never serves its old " +
    "copies, and the next writer catches it up",
  { tools: etcdAvailable() ? [] : ["etcd"] },
  async () => {
    await using cluster = await Cluster.init();
    // Two nodes at replication 2: each holds every block.
    await using a = await cluster.startNode();
    await using c = await cluster.startNode({ extra: ["--host", "127.0.0.1", "--port", "0"] });
    const size = 4 * MiB;
    await cluster.ctl("volume", "create-block", "m", "4MiB");
    const port = freePort();
    const writerArgs = ["blk", "nbdserve", ...cluster.meta, "-l", `127.0.0.1:${port}`];
    await using first = await startTorusProcess(writerArgs, /Ready\./);
    const connect = async () =>
      await NbdClient.connect(
        connStream(await Deno.connect({ hostname: "127.0.0.1", port })),
        { exportName: "m" },
      );
    const writer = await connect();
    const old = new Uint8Array(size).fill(0x01);
    await writer.writeAt(0, old);
    await writer.flush();
    await c.stop("SIGKILL");
    const newer = new Uint8Array(size).fill(0x02);
    await writer.writeAt(0, newer);
    await writer.flush(); // C's blocks: one copy, C marked in etcd
    await first.signal("SIGKILL"); // the writer dies with C still behind
    await c.startAgain();
    // The next writer is C itself, once the dead writer's lease is gone: before anything else it
    // reads the marks, passes its own old copies over, and writes itself what it missed.
    const viaC = await retryUntil(() => c.connect("m"), 60_000);
    const seen = new Uint8Array(size);
    await viaC.readAt(0, seen);
    assert.ok(seen.every((byte) => byte === 0x02), "C never serves a block it missed");
    await viaC.flush();
    // The catch-up runs in the background while the volume is open (a busy machine takes its
    // time): A may go only once no block is marked any more, else only A has the current data.
    await waitUntil("C caught up (no block marked)", 60_000, async () => {
      const http = c.serve.http!;
      const response = await fetch(`http://${http.hostname}:${http.port}/status`);
      const status = await response.json() as {
        cluster: { distributor: { markedBlocks: number } };
      };
      return status.cluster.distributor.markedBlocks === 0;
    });
    await viaC.close();
    // A gone: C alone has every block, current.
    await a.stop("SIGKILL");
    const last = await c.connect("m");
    const fromC = new Uint8Array(size);
    await last.readAt(0, fromC);
    assert.ok(fromC.every((byte) => byte === 0x02), "C caught up");
    await last.close();
  },
);

/** Polls `check` every 200 ms until it holds; fails naming `what` after `timeoutMs`. */
async function waitUntil(what: string, timeoutMs: number, check: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** Calls `attempt` every second until it succeeds or `timeoutMs` passed (then its error). */
async function retryUntil<T>(attempt: () => Promise<T>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }
}

e2eTest(
  "a node's peer port: garbage and truncated frames close only that connection; SIGTERM " +
    "unregisters the node",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    const peerPort = freePort();
    await using a = await cluster.startNode({ port: peerPort });
    await using b = await cluster.startNode();
    await cluster.ctl("volume", "create-block", "w", "4MiB");
    const garbage = [
      new TextEncoder().encode("GET / HTTP/1.1\r\n\r\n"),
      new Uint8Array(70_000).fill(0xff),
      // A HELLO header that promises more body than it sends, then the end of the stream.
      new Uint8Array([0x44, 0x54, 1, 0, 0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 1, 2]),
    ];
    for (const bytes of garbage) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: peerPort });
      await conn.write(bytes).catch(() => 0);
      await conn.closeWrite().catch(() => {});
      const buffer = new Uint8Array(1024);
      while ((await conn.read(buffer).catch(() => null)) !== null) {
        /* until the node closes it */
      }
      conn.close();
    }
    const input = `${b.dir}/in.bin`;
    await randomFile(input, 4 * MiB);
    await runOk("nbdcopy", ["--flush", input, b.uri("w")]);
    await runOk("nbdcopy", [a.uri("w"), `${a.dir}/out.bin`]);
    assert.ok(await sameFiles(input, `${a.dir}/out.bin`), "the node still serves its peers");
    assert.match(a.output(), /closing the connection of TDP client/);
    await a.stop("SIGTERM");
    // Its registration is gone at once (not after its lease's 30 s): a ring member that is DOWN.
    const members = (await listPeers(meta)).map((p) => p.member).sort();
    assert.deepEqual(members, ["DOWN", "OK"]);
  },
);

e2eTest(
  "--debug-init initialises the cluster on etcd when it is not (and only then)",
  { tools: etcdAvailable() ? [] : ["etcd"] },
  async () => {
    await using etcd = await testEtcd();
    const meta = ["-C", etcd.endpoint, "--metadata-prefix", `/torus-e2e-${crypto.randomUUID()}/`];
    const node = (port: number) => [
      ...meta,
      "--peer-address",
      `tdp://127.0.0.1:${port}`,
      "--auto-join",
      "--debug-init",
    ];
    await using a = await E2eNode.start({ args: node(freePort()) });
    assert.match(a.output(), /Initialised the cluster on etcd 127\.0\.0\.1:\d+ \(--debug-init\)/);
    await using b = await E2eNode.start({ args: node(freePort()) });
    assert.doesNotMatch(b.output(), /Initialised/);
    assert.deepEqual((await listPeers(meta)).map((p) => p.member), ["OK", "OK"]);
  },
);

/** The peer table, as `torus ctl list-peers --json` prints it. */
async function peerTable(meta: readonly string[]): Promise<{
  balanced: boolean;
  peers: {
    uuid: string;
    address: string;
    member: string;
    usedBytes: number;
    rebalancing: boolean;
  }[];
}> {
  const listed = await runTorus(["ctl", "list-peers", "--json", ...meta]);
  assert.equal(listed.code, 0, listed.stderr);
  return JSON.parse(listed.stdout);
}

/** Polls the peer table until `done` holds (heartbeats report every 5 s). */
async function waitForPeers(
  meta: readonly string[],
  what: string,
  done: (table: Awaited<ReturnType<typeof peerTable>>) => boolean,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let table = await peerTable(meta);
  while (!done(table)) {
    if (Date.now() > deadline) {
      assert.fail(`timed out waiting for ${what}: ${JSON.stringify(table, null, 1)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    table = await peerTable(meta);
  }
}

/**
 * The bytes all nodes hold once their counts settle: at least `atLeastBytes`, and the same in
 * two tables a heartbeat and more apart (a node's count is as of its last heartbeat).
 */
async function settledUsage(meta: readonly string[], atLeastBytes: number): Promise<number> {
  let last = -1;
  for (let round = 0; round < 20; round++) {
    const total = totalUsedBytes(await peerTable(meta));
    if (total === last && total >= atLeastBytes) return total;
    last = total;
    await new Promise((resolve) => setTimeout(resolve, 6_000));
  }
  return assert.fail(`the nodes' usage did not settle (last ${last} bytes)`);
}

async function uuidOf(node: E2eNode): Promise<string> {
  return (await Deno.readTextFile(`${node.dataDir}/metadata/uuid`)).trim();
}

function usedBytesOf(table: Awaited<ReturnType<typeof peerTable>>, uuid: string): number {
  return table.peers.find((p) => p.uuid === uuid)?.usedBytes ?? -1;
}

function totalUsedBytes(table: Awaited<ReturnType<typeof peerTable>>): number {
  return table.peers.reduce((sum, p) => sum + p.usedBytes, 0);
}

e2eTest(
  "a node added: blocks move to it and off the others while a client writes into every block, " +
    "and it serves the volume; the node removed (peer remove): its blocks drain off",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    // Slow copies (1 MiB/s a node), so the client's writes land while blocks are moving.
    const slow = { extra: ["--rebalance-rate", "1MiB"] };
    await using a = await cluster.startNode(slow);
    await using _b = await cluster.startNode(slow);
    await using _c = await cluster.startNode(slow);
    const size = 24 * MiB;
    await cluster.ctl("volume", "create-block", "r", "24MiB");
    const input = `${a.dir}/in.bin`;
    await randomFile(input, size);
    await runOk("nbdcopy", ["--flush", input, a.uri("r")]);
    // Two copies of every block of the volume (data, map and root), as the nodes count them.
    const copiesBytes = await settledUsage(meta, 2 * size);

    await using d = await cluster.startNode(slow);
    const added = await uuidOf(d);
    await waitForPeers(meta, "the rebalance to start", (table) => !table.balanced);
    // 4 KiB into every 512 KiB block, while its block may be on its way to the new node.
    const expected = await Deno.readFile(input);
    const client = await a.connect("r");
    const patch = new Uint8Array(4096).fill(0xa5);
    for (let offset = 8192; offset < size; offset += 512 * 1024) {
      await client.writeAt(offset, patch);
      expected.set(patch, offset);
    }
    await client.flush();
    await client.close();
    await waitForPeers(
      meta,
      "the new node to take its share",
      (table) =>
        table.balanced && usedBytesOf(table, added) > 0 && totalUsedBytes(table) === copiesBytes,
    );
    await runOk("nbdcopy", [d.uri("r"), `${d.dir}/out.bin`]);
    const viaD = await Deno.readFile(`${d.dir}/out.bin`);
    assert.ok(viaD.every((byte, i) => byte === expected[i]), "the new node reads every write");

    await cluster.ctl("peer", "remove", added);
    await waitForPeers(
      meta,
      "the removed node to drain",
      (table) =>
        table.balanced && usedBytesOf(table, added) === 0 && totalUsedBytes(table) === copiesBytes,
    );
    await runOk("nbdcopy", [a.uri("r"), `${a.dir}/out.bin`]);
    const viaA = await Deno.readFile(`${a.dir}/out.bin`);
    assert.ok(
      viaA.every((byte, i) => byte === expected[i]),
      "the volume reads back after the drain",
    );
  },
);

e2eTest(
  "a node SIGKILLed and forced out of the ring (peer remove --force): the others bring every " +
    "block back to 2 copies, and the volume reads back",
  { tools: etcdAvailable() ? ["nbdcopy"] : ["etcd", "nbdcopy"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    await using a = await cluster.startNode();
    await using b = await cluster.startNode();
    await using c = await cluster.startNode();
    await cluster.ctl("volume", "create-block", "k", "16MiB");
    const input = `${a.dir}/in.bin`;
    await randomFile(input, 16 * MiB);
    await runOk("nbdcopy", ["--flush", input, a.uri("k")]);
    const copiesBytes = await settledUsage(meta, 2 * 16 * MiB);
    const dead = await uuidOf(c);
    await c.stop("SIGKILL");
    await cluster.ctl("peer", "remove", "--force", dead);
    const living = [await uuidOf(a), await uuidOf(b)];
    // With two nodes left at replication 2, each holds one copy of every block.
    await waitForPeers(
      meta,
      "two copies of everything on the living nodes",
      (table) =>
        table.balanced && living.every((uuid) => usedBytesOf(table, uuid) === copiesBytes / 2),
    );
    await runOk("nbdcopy", [b.uri("k"), `${b.dir}/out.bin`]);
    assert.ok(await sameFiles(input, `${b.dir}/out.bin`), "the volume reads back");
  },
);

/** The `cluster.fence` counters of a node's /status. */
async function fenceRefusals(node: E2eNode): Promise<number> {
  const http = node.serve.http!;
  const response = await fetch(`http://${http.hostname}:${http.port}/status`);
  const status = await response.json() as { cluster: { fence: { refusedStaleWriters: number } } };
  return status.cluster.fence.refusedStaleWriters;
}

/**
 * Sends a change of volume `name` with fencing token 1 (older than any writer's since) to every
 * node over TDP, as a writer that lost its lock but has not noticed: each must refuse it
 * (`locked`) and count it.
 */
async function assertNodesRefuseOldToken(
  meta: readonly string[],
  nodes: readonly E2eNode[],
  name: string,
): Promise<void> {
  await using metadata = await openMetadata({ etcd: meta[1]!, "metadata-prefix": meta[3]! });
  const clusterId = await metadata.service.cluster.clusterId();
  const { blockSizeBytes } = await metadata.service.cluster.globalMetadata();
  const volume = (await metadata.service.volumes.getVolume(name)).id;
  const peers = (await peerTable(meta)).peers;
  // A block the new writer never wrote: the fence at takeover covers it too.
  const ref = new BlockRef({ volume, inode: 1n, index: 7n });
  for (const node of nodes) {
    const before = await fenceRefusals(node);
    const uuid = await uuidOf(node);
    const address = peers.find((p) => p.uuid === uuid)!.address;
    const peer = new TdpProtocol().dial(address, {
      identity: { clusterId, blockSizeBytes, nodeName: "stale-writer" },
      callTimeoutMs: 5_000,
    });
    try {
      await assert.rejects(
        peer.writeAt(ref, 0, new Uint8Array(512).fill(0x44), { fenceToken: 1 }),
        (error: unknown) => isTorusError(error, ErrorCode.Locked),
        `${address} refuses the old token`,
      );
    } finally {
      await peer.close();
    }
    assert.equal(await fenceRefusals(node), before + 1, "the refusal is counted");
  }
}

e2eTest(
  "a stale writer (its lease expired while it was SIGSTOPped) cannot change the volume when it " +
    "resumes: the new writer's data stands",
  { tools: etcdAvailable() ? [] : ["etcd"] },
  async () => {
    await using cluster = await Cluster.init();
    const http = { extra: ["--host", "127.0.0.1", "--port", "0"] };
    await using a = await cluster.startNode(http);
    await using b = await cluster.startNode(http);
    // A third node: the new writer fences the volume at every node when it takes the lock (that
    // it reaches even nodes it never writes to is shown by src/server/fence_volume_test.ts).
    await using c = await cluster.startNode(http);
    await cluster.ctl("volume", "create-block", "f", "4MiB");
    const port = freePort();
    await using stale = await startTorusProcess(
      ["blk", "nbdserve", ...cluster.meta, "-l", `127.0.0.1:${port}`],
      /Ready\./,
    );
    const writer = await NbdClient.connect(
      connStream(await Deno.connect({ hostname: "127.0.0.1", port })),
      { exportName: "f" },
    );
    const first = new Uint8Array(64 * 1024).fill(0x11);
    await writer.writeAt(0, first);
    await writer.flush();

    Deno.kill(stale.child.pid, "SIGSTOP");
    let stopped = true;
    try {
      // Past the lease (30 s): the volume's lock is free for another writer.
      await new Promise((resolve) => setTimeout(resolve, 36_000));
      const taker = await a.connect("f");
      const second = new Uint8Array(64 * 1024).fill(0x22);
      await taker.writeAt(0, second);
      await taker.flush();
      // The stale writer's requests wait in its socket while it is stopped.
      const late = Array.from(
        { length: 16 },
        (_, i) => writer.writeAt(i * 4096, new Uint8Array(4096).fill(0x33)),
      );
      Deno.kill(stale.child.pid, "SIGCONT");
      stopped = false;
      const results = await Promise.allSettled(late);
      const succeeded = results.filter((r) => r.status === "fulfilled").length;
      assert.equal(succeeded, 0, "every write of the stale writer fails");
      // Its flush has nothing of its own to make durable: whether it fails (the volume is ended)
      // or runs before the failures reach the volume, no stale byte can be behind it.
      await writer.flush().catch(() => {});
      const seen = new Uint8Array(64 * 1024);
      await taker.readAt(0, seen);
      assert.ok(seen.every((byte) => byte === 0x22), "the new writer's data stands");
      // The stale process noticed its lost lease itself (it checks the lease's deadline on
      // its own clock). The data nodes are the second line: a change with the old writer's
      // fencing token sent to them straight over TDP is refused and changes nothing.
      await assertNodesRefuseOldToken(cluster.meta, [a, b, c], "f");
      const after = new Uint8Array(64 * 1024);
      await taker.readAt(0, after);
      assert.ok(after.every((byte) => byte === 0x22), "the old token changed nothing");
      await taker.close();
    } finally {
      if (stopped) Deno.kill(stale.child.pid, "SIGCONT");
      await writer.close().catch(() => {});
    }
  },
);

e2eTest(
  "five nodes at replication 3: fio's crc32c-verified writes through torus blk nbdserve verify " +
    "again through a node's server, and again with two nodes SIGKILLed",
  { tools: etcdAvailable() ? ["fio"] : ["etcd", "fio"] },
  async () => {
    await using cluster = await Cluster.init();
    const nodes: E2eNode[] = [];
    try {
      for (let i = 0; i < 5; i++) nodes.push(await cluster.startNode());
      await cluster.ctl("ring", "set-replication", "3");
      await cluster.ctl("volume", "create-block", "five", "16MiB");
      const port = freePort();
      await using client = await startTorusProcess(
        ["blk", "nbdserve", ...cluster.meta, "-l", `127.0.0.1:${port}`],
        /Ready\./,
      );
      const job = (uri: string) => [
        "--ioengine=nbd",
        `--uri=${uri}`,
        "--name=five",
        "--rw=randwrite",
        "--bssplit=4k/60:64k/30:1m/10",
        "--iodepth=8",
        "--size=16M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--end_fsync=1",
        "--randrepeat=1",
        "--output-format=json",
      ];
      const written = await fio([...job(`nbd://127.0.0.1:${port}/five`), "--do_verify=1"]);
      assert.ok(written.write.io_bytes >= 16 * MiB, "fio wrote the whole volume");
      assert.equal(await client.stop(), 0, client.output());
      const viaNode = await fio([...job(nodes[3]!.uri("five")), "--verify_only"]);
      assert.ok(viaNode.read.io_bytes >= 16 * MiB, "fio verified it through node 4");
      await nodes[0]!.stop("SIGKILL");
      await nodes[1]!.stop("SIGKILL");
      const degraded = await fio([...job(nodes[4]!.uri("five")), "--verify_only"]);
      assert.ok(degraded.read.io_bytes >= 16 * MiB, "and through node 5 with two nodes dead");
    } finally {
      for (const node of nodes) await node[Symbol.asyncDispose]();
    }
  },
);

e2eTest(
  "a node SIGKILLed during a write stream at replication 2: every flushed write reads back, and " +
    "after peer remove --force the stream goes on and the cluster is back to 2 copies",
  { tools: etcdAvailable() ? [] : ["etcd"] },
  async () => {
    await using cluster = await Cluster.init();
    const meta = cluster.meta;
    await using a = await cluster.startNode();
    await using b = await cluster.startNode();
    await using c = await cluster.startNode();
    const chunk = 64 * 1024;
    const chunks = 256; // 16 MiB
    await cluster.ctl("volume", "create-block", "stream", "16MiB");
    const writer = await a.connect("stream");
    const pattern = (i: number) => new Uint8Array(chunk).fill(1 + (i % 250));
    let flushed = -1;
    let next = 0;
    const dead = await uuidOf(c);
    try {
      // Write and flush in groups of 8 chunks; node C dies a third of the way in.
      while (next < chunks) {
        if (next === 80) await c.stop("SIGKILL");
        try {
          for (let i = next; i < next + 8; i++) await writer.writeAt(i * chunk, pattern(i));
          await writer.flush();
          flushed = next + 7;
          next += 8;
        } catch {
          // Writes to blocks C holds fail at level `all` until C is out of the ring.
          break;
        }
      }
      assert.ok(flushed >= 79, `${flushed + 1} chunks were flushed before the kill`);
      // Every flushed chunk reads back with C dead.
      for (let i = 0; i <= flushed; i++) {
        const seen = new Uint8Array(chunk);
        await writer.readAt(i * chunk, seen);
        assert.ok(seen.every((byte) => byte === 1 + (i % 250)), `chunk ${i} after the kill`);
      }
      await cluster.ctl("peer", "remove", "--force", dead);
      // The stream goes on where it stopped, to the ring without C.
      for (let i = flushed + 1; i < chunks; i++) await writer.writeAt(i * chunk, pattern(i));
      await writer.flush();
    } finally {
      await writer.close();
    }
    const living = [await uuidOf(a), await uuidOf(b)];
    const total = await settledUsage(meta, 2 * 16 * MiB);
    await waitForPeers(
      meta,
      "two copies of everything on the living nodes",
      (table) =>
        table.balanced &&
        living.every((uuid) => usedBytesOf(table, uuid) === usedBytesOf(table, living[0]!)),
    );
    assert.ok(total > 0);
    await runOk("nbdcopy", [b.uri("stream"), `${b.dir}/out.bin`]);
    const back = await Deno.readFile(`${b.dir}/out.bin`);
    for (let i = 0; i < chunks; i++) {
      const at = i * chunk;
      assert.ok(
        back.subarray(at, at + chunk).every((byte) => byte === 1 + (i % 250)),
        `chunk ${i}`,
      );
    }
  },
);
