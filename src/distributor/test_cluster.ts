/**
 * Test clusters for the distributor's and rebalancer's tests: TDP servers on loopback, each over
 * a memory (or file) store, a ring over them, and distributors that reach them.
 * @module
 */

import { type BlockRef, systemClock } from "../core/mod.ts";
import type { PeerInfo } from "../models/mod.ts";
import { createRing, type Ring, RingType } from "../ring/mod.ts";
import {
  type BlockStore,
  FileBlockStore,
  HeldStore,
  type IoHold,
  MemoryBlockStore,
} from "../storage/mod.ts";
import { Distributor, type DistributorOptions } from "./distributor.ts";
import { DialingPeerDirectory, type PeerDirectory } from "./peer_directory.ts";
import type { PeerServer } from "./protocols/protocol.ts";
import { RingCheckedStore } from "./protocols/ring_checked_store.ts";
import type { StaleMarkRecord, StaleMarkStore } from "./stale_marks.ts";
import { TdpProtocol } from "./protocols/tdp/mod.ts";
import type { ReadLevel, WriteLevel } from "./levels.ts";

export const BLOCK = 4096;
export const CLUSTER = "distributor-test";

/** A cluster of `count` TDP servers over memory stores, and distributors over it. */
export class TestCluster {
  readonly stores: HeldStore[] = [];
  readonly servers: (PeerServer | null)[] = [];
  readonly uuids: string[] = [];
  ring!: Ring;
  readonly #directories: DialingPeerDirectory[] = [];
  readonly #protocol = new TdpProtocol();

  /** Data dirs of file stores (when the cluster has them). */
  readonly dirs: string[] = [];

  #files = false;
  #blocksPerPeer = 64;

  static async start(
    count: number,
    replication = 2,
    blocksPerPeer = 64,
    files = false,
  ): Promise<TestCluster> {
    const cluster = new TestCluster();
    cluster.#files = files;
    cluster.#blocksPerPeer = blocksPerPeer;
    const peers: PeerInfo[] = [];
    for (let i = 0; i < count; i++) peers.push(await cluster.startPeer());
    cluster.ring = createRing(RingType.Ketama, { version: 1, replication, peers });
    return cluster;
  }

  /** Starts one more peer (not in the ring: add it with `ring.addPeers`). */
  async startPeer(): Promise<PeerInfo> {
    const uuid = `peer-${this.uuids.length}`;
    const dir = this.#files ? await Deno.makeTempDir({ prefix: "torus-dist-" }) : "";
    if (this.#files) this.dirs.push(dir);
    const blockSizeBytes = BLOCK;
    const store = new HeldStore(
      this.#files
        ? await FileBlockStore.open({ dir, blockSizeBytes, sizeBytes: BLOCK * this.#blocksPerPeer })
        : new MemoryBlockStore({ blockSizeBytes, totalBlocks: this.#blocksPerPeer }),
    );
    const server = await this.#protocol.listen("tdp://127.0.0.1:0", {
      identity: { clusterId: CLUSTER, blockSizeBytes, nodeName: uuid },
      store: new RingCheckedStore(store, () => this.#ringVersionAt(uuid)),
    });
    this.stores.push(store);
    this.servers.push(server);
    this.uuids.push(uuid);
    this.addresses.set(uuid, server.address);
    return peerInfo(uuid, server.address);
  }

  /**
   * The ring version the nodes know (0: they check none): a change placed by an older one is
   * refused with `compare_failed`, as a node's FencedStore does.
   */
  nodeRingVersion = 0;
  /** Nodes that have not seen a ring yet (they check none). */
  readonly laggingNodes = new Set<string>();

  #ringVersionAt(uuid: string): number {
    return this.laggingNodes.has(uuid) ? 0 : this.nodeRingVersion;
  }

  /** Where every peer started is served (ring member or not). */
  readonly addresses = new Map<string, string>();

  /** A directory of clients to every peer started. */
  directory(nodeName = "client"): DialingPeerDirectory {
    const directory = new DialingPeerDirectory(
      [this.#protocol],
      (uuid) => this.addresses.get(uuid) ?? null,
      { identity: { clusterId: CLUSTER, blockSizeBytes: BLOCK, nodeName }, callTimeoutMs: 2_000 },
    );
    this.#directories.push(directory);
    return directory;
  }

  /** A distributor; `self` makes it member `self` using that member's store directly. */
  async distributor(
    options: {
      self?: number | undefined;
      readLevel?: ReadLevel;
      writeLevel?: WriteLevel;
      cacheBytes?: number;
      /** Blocks may not be where the ring puts them (DistributorOptions.moving). */
      moving?: boolean;
      /** Nodes that may keep copies the ring puts elsewhere (DistributorOptions.unsettled). */
      unsettled?: () => readonly string[];
      /** The ring this distributor follows (default: the cluster's), and how it reads it again. */
      ring?: () => Ring;
      refreshRing?: () => Promise<void>;
      /** Durable marks (DistributorOptions.staleMarks) and the copies a change needs. */
      staleMarks?: StaleMarkStore;
      minCopies?: number;
      /** Wraps the directory of peer clients (a test watching what is sent). */
      wrapPeers?: (directory: PeerDirectory) => PeerDirectory;
    } = {},
  ): Promise<Distributor> {
    const dialing = this.directory();
    const directory = options.wrapPeers?.(dialing) ?? dialing;
    const distributorOptions: DistributorOptions = {
      blockSizeBytes: BLOCK,
      self: options.self === undefined ? null : this.uuids[options.self]!,
      local: options.self === undefined ? null : this.stores[options.self]!,
      ring: options.ring ?? (() => this.ring),
      ...(options.refreshRing ? { refreshRing: options.refreshRing } : {}),
      peers: directory,
      // As a node's registered peers: the ones started and not (or no longer) in the ring.
      outsideRing: () => this.uuids.filter((uuid) => !this.ring.memberUuids().includes(uuid)),
      moving: () => options.moving ?? false,
      ...(options.unsettled ? { unsettled: options.unsettled } : {}),
      ...(options.staleMarks ? { staleMarks: options.staleMarks } : {}),
      ...(options.minCopies !== undefined ? { minCopies: options.minCopies } : {}),
      readLevel: options.readLevel ?? "block",
      writeLevel: options.writeLevel ?? "all",
      readCacheBytes: options.cacheBytes ?? 0,
      peerTimeoutMs: 300,
      clock: systemClock,
    };
    // Counts come with replies: ask every member once, as a node does when it starts.
    for (const uuid of this.uuids) {
      if (uuid !== distributorOptions.self) {
        await directory.storeOf(uuid)?.refreshCounts().catch(() => {});
      }
    }
    return new Distributor(distributorOptions);
  }

  /** Which stores hold `ref` now. */
  async holdersOf(ref: BlockRef): Promise<string[]> {
    const held: string[] = [];
    for (const [i, store] of this.stores.entries()) {
      if (await store.hasBlock(ref)) held.push(this.uuids[i]!);
    }
    return held;
  }

  storeOf(uuid: string): BlockStore {
    return this.stores[this.uuids.indexOf(uuid)]!;
  }

  /** Stops peer `uuid`'s server (its store stays, as a node that is down). */
  async stop(uuid: string): Promise<void> {
    const i = this.uuids.indexOf(uuid);
    await this.servers[i]?.close();
    this.servers[i] = null;
  }

  /** Serves peer `uuid`'s store again at its address (the node is back). */
  async restart(uuid: string): Promise<void> {
    const i = this.uuids.indexOf(uuid);
    const address = this.addresses.get(uuid)!;
    this.servers[i] = await this.#protocol.listen(address, {
      identity: { clusterId: CLUSTER, blockSizeBytes: BLOCK, nodeName: uuid },
      store: new RingCheckedStore(this.stores[i]!, () => this.#ringVersionAt(uuid)),
    });
  }

  async close(): Promise<void> {
    for (const directory of this.#directories) await directory.close();
    for (const server of this.servers) await server?.close();
    for (const store of this.stores) await store.close();
    for (const dir of this.dirs) await Deno.remove(dir, { recursive: true });
  }
}

/** Stale marks in memory, as the metadata service keeps them (a test double). */
export class MemoryStaleMarks implements StaleMarkStore {
  readonly #records = new Map<
    string,
    { volumeId: number; node: string; refs: Map<string, BlockRef> }
  >();
  /** Calls of add, to see that marks were recorded. */
  adds = 0;
  /** Fail every add from now on (the metadata service cannot be reached). */
  failAdds = false;

  add(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    this.adds++;
    if (this.failAdds) return Promise.reject(new Error("metadata unreachable"));
    const key = `${volumeId} ${node}`;
    const record = this.#records.get(key) ?? { volumeId, node, refs: new Map() };
    for (const ref of refs) record.refs.set(ref.key, ref);
    this.#records.set(key, record);
    return Promise.resolve();
  }

  remove(volumeId: number, node: string, refs: readonly BlockRef[]): Promise<void> {
    const key = `${volumeId} ${node}`;
    const record = this.#records.get(key);
    for (const ref of refs) record?.refs.delete(ref.key);
    if (record !== undefined && record.refs.size === 0) this.#records.delete(key);
    return Promise.resolve();
  }

  clear(volumeId: number, node: string): Promise<void> {
    this.#records.delete(`${volumeId} ${node}`);
    return Promise.resolve();
  }

  list(volumeId: number): Promise<StaleMarkRecord[]> {
    return Promise.resolve(
      [...this.#records.values()].filter((r) => r.volumeId === volumeId).map((r) => ({
        volumeId: r.volumeId,
        node: r.node,
        refs: [...r.refs.values()],
        wholeVolume: false,
      })),
    );
  }

  watched(volumeId: number): StaleMarkRecord[] {
    return [...this.#records.values()].filter((r) => r.volumeId === volumeId).map((r) => ({
      volumeId: r.volumeId,
      node: r.node,
      refs: [...r.refs.values()],
      wholeVolume: false,
    }));
  }

  isStale(ref: BlockRef, node: string): boolean {
    return this.#records.get(`${ref.volume} ${node}`)?.refs.has(ref.key) ?? false;
  }

  /** Marks now: `node` → ref keys. */
  marked(): Map<string, string[]> {
    return new Map([...this.#records.values()].map((r) => [r.node, [...r.refs.keys()]]));
  }
}

export function peerInfo(uuid: string, address: string): PeerInfo {
  return {
    uuid,
    address,
    lastSeen: 0n,
    totalBlocks: 0n,
    usedBlocks: 0n,
    timedOut: false,
    rebalanceInfo: null,
    protocolVersion: 1n,
  };
}

/** Holds the next store call at every peer at once (the put in flight goes to two of them). */
export function holdAll(stores: readonly HeldStore[]): IoHold {
  const holds = stores.map((store) => store.holdNext());
  return {
    arrived: Promise.any(holds.map((h) => h.arrived)),
    laterOperations: () => holds.reduce((sum, h) => sum + h.laterOperations(), 0),
    release: () => holds.forEach((h) => h.release()),
  };
}

/** Flips byte `at` of the first occurrence of `needle` in any file under `dir`. */
export async function flipByteOf(dir: string, needle: Uint8Array, at: number): Promise<boolean> {
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile) continue;
    const path = `${dir}/${entry.name}`;
    const bytes = await Deno.readFile(path);
    const found = indexOf(bytes, needle);
    if (found < 0) continue;
    const file = await Deno.open(path, { write: true });
    try {
      await file.seek(found + at, Deno.SeekMode.Start);
      await file.write(new Uint8Array([bytes[found + at]! ^ 0x40]));
    } finally {
      file.close();
    }
    return true;
  }
  return false;
}

function indexOf(haystack: Uint8Array, needle: Uint8Array): number {
  outer: for (let i = 0; i + needle.length <= haystack.length; i++) {
    for (let j = 0; j < needle.length; j++) if (haystack[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}
