/**
 * A process's place in the cluster. A node serves its store to peers (TDP or gRPC, by the scheme
 * of its peer address), registers itself under its lease every heartbeat (address, capacity,
 * usage), follows the ring, joins it when asked (`--auto-join`), and offers the distributor: the
 * cluster-wide BlockStore its volumes are written through. A client (`torus blk nbdserve -C`)
 * has no store: it follows the ring and the registrations and offers the distributor only.
 * Closing unregisters a node, then stops serving peers once the distributor has flushed.
 * @module
 */

import { type Clock, errorMessage, HEARTBEAT_INTERVAL_MS, invalid, logger } from "../core/mod.ts";
import {
  DialingPeerDirectory,
  Distributor,
  PEER_CALL_TIMEOUT_MS_DEFAULT,
  type PeerProtocol,
  type PeerServer,
  type ReadLevel,
  Rebalancer,
  Scrubber,
  type WriteLevel,
} from "../distributor/mod.ts";
import type { MetadataService, Subscription } from "../metadata/mod.ts";
import type { PeerInfo, RebalanceInfo } from "../models/mod.ts";
import { isModifiable, type Ring, ringFromMessage } from "../ring/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import { FencedStore, type FenceRecords } from "./fenced_store.ts";
import { WatchedStaleMarks } from "./watched_stale_marks.ts";
import type { LeaseKeeper } from "./lease_keeper.ts";

const log = logger("cluster");

/**
 * Deadline of one read attempt at one peer (doubling in later rounds of the `block` level): a
 * copy elsewhere is tried after it, so it is short; changes keep the peer call deadline.
 */
const READ_ATTEMPT_TIMEOUT_MS = 1_000;

/** The peer protocol version this node registers (PeerInfo.protocol_version). */
export const PEER_PROTOCOL_VERSION = 2n;

/** Options of {@link ClusterMember.start}. */
export interface ClusterMemberOptions {
  readonly uuid: string;
  readonly metadata: MetadataService;
  readonly leases: LeaseKeeper;
  /**
   * This node's store, served to peers, with where the newest fencing token of each volume is
   * kept (fenced_store.ts), and where peers reach it (`tdp://HOST:PORT`; port 0 takes a free
   * one, for tests). Null for a client (`torus blk nbdserve`): no store, not registered, never a
   * ring member; it only reaches the nodes.
   */
  readonly node: {
    readonly local: BlockStore;
    readonly fenceRecords: FenceRecords;
    readonly peerAddress: string;
  } | null;
  readonly protocols: readonly PeerProtocol[];
  /** Add this node to the ring when it is not a member. */
  readonly autoJoin: boolean;
  readonly readLevel: ReadLevel;
  readonly writeLevel: WriteLevel;
  readonly readCacheBytes: number;
  /** Bytes per second the rebalancer may copy to peers (0: no bound). */
  readonly rebalanceRateBytesPerSecond: number;
  /**
   * Holders a change needs at level `all` when others do not answer (those are durably marked
   * stale): 0 a majority of them (the default), R every one (writes fail while one is down).
   */
  readonly minCopies?: number;
  /** How the scrubber re-reads this node's blocks (a node only; interval 0: never). */
  readonly scrub?: { readonly intervalMs: number; readonly rateBytesPerSecond: number };
  readonly clock: Clock;
  /** Deadline of one read attempt at one peer (default 1 s); changes use the call deadline. */
  readonly peerTimeoutMs?: number;
  readonly heartbeatMs?: number;
}

/** A running member; see the module doc. */
export class ClusterMember {
  readonly distributor: Distributor;
  /** Moves this node's blocks after ring changes; null for a client. */
  readonly rebalancer: Rebalancer | null;
  /** Re-reads this node's blocks and repairs damaged copies; null for a client. */
  readonly scrubber: Scrubber | null;
  /** This node's store behind its fence (what peers and its own distributor change); null for a client. */
  readonly fence: FencedStore | null;
  /** The durable marks of holders that missed changes, as followed here. */
  readonly staleMarks: WatchedStaleMarks;
  /** The server peers reach this node's store by; null for a client. */
  readonly server: PeerServer | null;
  readonly #options: ClusterMemberOptions;
  readonly #directory: DialingPeerDirectory;
  #ring: Ring;
  #addresses = new Map<string, string>();
  #peers: PeerInfo[] = [];
  #ringWatch: Subscription | null = null;
  #lockWatch: Subscription | null = null;
  readonly #stop = new AbortController();
  #heartbeats: Promise<void> = Promise.resolve();
  /** Heartbeats done (torus_server_heartbeats). */
  heartbeatCount = 0;

  private constructor(
    options: ClusterMemberOptions,
    server: PeerServer | null,
    ring: Ring,
    directory: DialingPeerDirectory,
    distributor: Distributor,
    rebalancer: Rebalancer | null,
    scrubber: Scrubber | null,
    fence: FencedStore | null,
    staleMarks: WatchedStaleMarks,
  ) {
    this.#options = options;
    this.server = server;
    this.#ring = ring;
    this.#directory = directory;
    this.distributor = distributor;
    this.rebalancer = rebalancer;
    this.scrubber = scrubber;
    this.fence = fence;
    this.staleMarks = staleMarks;
  }

  /** Serves peers, registers, follows the ring (and joins it when asked). */
  static async start(options: ClusterMemberOptions): Promise<ClusterMember> {
    const { metadata } = options;
    const [clusterId, global, ringMessage] = await Promise.all([
      metadata.cluster.clusterId(),
      metadata.cluster.globalMetadata(),
      metadata.cluster.getRing(),
    ]);
    const identity = { clusterId, blockSizeBytes: global.blockSizeBytes, nodeName: options.uuid };
    const node = options.node;
    // Set once started; the closures below read it (a peer's call may come before).
    let member: ClusterMember | null = null;
    const staleMarks = await WatchedStaleMarks.start(metadata);
    // Peers and this node's own distributor change the store only through the fence.
    // Changes placed by an older ring than this node follows are refused: the sender reads the
    // ring again (a block may have moved on from here).
    const fenced = node === null
      ? null
      : await FencedStore.open(node.local, node.fenceRecords, () => member?.ring().version ?? 0);
    // Before serving: the locks held now fence earlier writers from the first call on.
    const lockWatch = fenced === null ? null : await followLocks(metadata, fenced);
    let server: PeerServer | null;
    try {
      server = node === null || fenced === null ? null : await protocolOf(
        options.protocols,
        node.peerAddress,
      ).listen(node.peerAddress, { identity, store: fenced });
    } catch (error) {
      await lockWatch?.unsubscribe().catch(() => {});
      await staleMarks.close();
      throw error;
    }
    try {
      const directory = new DialingPeerDirectory(
        options.protocols,
        (uuid) => member?.addressOf(uuid) ?? null,
        { identity, callTimeoutMs: options.peerTimeoutMs ?? PEER_CALL_TIMEOUT_MS_DEFAULT },
        () => member?.refreshPeers() ?? Promise.resolve(),
        options.clock,
      );
      const distributor = new Distributor({
        blockSizeBytes: global.blockSizeBytes,
        self: node === null ? null : options.uuid,
        local: fenced,
        ring: () => member!.ring(),
        peers: directory,
        outsideRing: () => member?.outsideRing() ?? [],
        staleMarks,
        minCopies: options.minCopies ?? 0,
        refreshRing: () => member?.refreshRing() ?? Promise.resolve(),
        moving: () => member?.moving() ?? true,
        unsettled: () => member?.unsettled() ?? [],
        readLevel: options.readLevel,
        writeLevel: options.writeLevel,
        readCacheBytes: options.readCacheBytes,
        peerTimeoutMs: options.peerTimeoutMs ?? READ_ATTEMPT_TIMEOUT_MS,
        clock: options.clock,
      });
      const rebalancer = fenced === null ? null : new Rebalancer({
        self: options.uuid,
        local: fenced,
        ring: () => member!.ring(),
        peers: directory,
        clock: options.clock,
        rateBytesPerSecond: options.rebalanceRateBytesPerSecond,
        isStale: (ref, uuid) => staleMarks.isStale(ref, uuid),
      });
      const scrubber = fenced === null ? null : new Scrubber({
        self: options.uuid,
        local: fenced,
        ring: () => member!.ring(),
        peers: directory,
        clock: options.clock,
        intervalMs: options.scrub?.intervalMs ?? 0,
        rateBytesPerSecond: options.scrub?.rateBytesPerSecond ?? 0,
        isStale: (ref, uuid) => staleMarks.isStale(ref, uuid),
      });
      member = new ClusterMember(
        options,
        server,
        ringFromMessage(ringMessage),
        directory,
        distributor,
        rebalancer,
        scrubber,
        fenced,
        staleMarks,
      );
      member.#lockWatch = lockWatch;
      await member.#begin();
      return member;
    } catch (error) {
      await member?.close().catch(() => {});
      await lockWatch?.unsubscribe().catch(() => {});
      await server?.close();
      await staleMarks.close();
      throw error;
    }
  }

  async #begin(): Promise<void> {
    this.#ringWatch = await this.#options.metadata.cluster.watchRing((message) => {
      this.#takeRing(ringFromMessage(message));
    }, { onError: (error) => log.error(`the ring watch ended: ${errorMessage(error)}`) });
    await this.#heartbeat();
    if (this.#options.autoJoin && this.server !== null) await this.#join();
    this.rebalancer?.start();
    this.scrubber?.start();
    this.#heartbeats = this.#beat();
  }

  /** The current ring. */
  ring(): Ring {
    return this.#ring;
  }

  /** Reads the ring from the metadata service now (a peer knows a newer one than the watch). */
  async refreshRing(): Promise<void> {
    this.#takeRing(ringFromMessage(await this.#options.metadata.cluster.getRing()));
  }

  /** Follows `ring` unless it is older than the one followed (the watch and reads may race). */
  #takeRing(ring: Ring): void {
    if (ring.version <= this.#ring.version) return;
    this.#ring = ring;
    this.rebalancer?.ringChanged();
    // Tell the others at once that this node is rebalancing (list-peers, their moving()).
    void this.#heartbeat().catch(() => {});
  }

  /** The peers registered at the last heartbeat. */
  peers(): readonly PeerInfo[] {
    return this.#peers;
  }

  /**
   * Whether blocks may not yet be where the ring puts them: some node is unsettled (see
   * {@link unsettled}). Range writes are then sent with `mustExist`, so a new holder without the
   * block refuses instead of making a block of zeros (distributor.ts).
   */
  moving(): boolean {
    return this.unsettled().length > 0;
  }

  /**
   * Nodes that may hold copies the current ring puts elsewhere: ring members that have not
   * finished applying it (rebalancing, on an older ring, or down since before they recorded it
   * as balanced), and registered nodes out of the ring that still hold blocks. The distributor
   * sends them every change too while any are listed, so a copy they keep never falls behind
   * (ADR 0006 §3a).
   */
  unsettled(): readonly string[] {
    if (this.#unsettled.ring === this.#ring && this.#unsettled.peers === this.#peers) {
      return this.#unsettled.uuids;
    }
    const ring = this.#ring;
    const members = new Set(ring.memberUuids());
    const registered = new Map(
      this.#peers.filter((peer) => peer.address !== "").map((peer) => [peer.uuid, peer]),
    );
    const uuids: string[] = [];
    for (const uuid of members) {
      const peer = registered.get(uuid);
      const info = peer?.rebalanceInfo ?? null;
      const settled = peer === undefined
        ? (this.#balanced.get(uuid) ?? -1) >= ring.version
        : info !== null && !info.rebalancing && (info.ringVersion ?? 0n) >= BigInt(ring.version);
      if (!settled) uuids.push(uuid);
    }
    for (const peer of registered.values()) {
      if (!members.has(peer.uuid) && peer.usedBlocks > 0n) uuids.push(peer.uuid);
    }
    this.#unsettled = { ring, peers: this.#peers, uuids };
    return uuids;
  }

  #unsettled: { ring: Ring | null; peers: readonly PeerInfo[] | null; uuids: readonly string[] } = {
    ring: null,
    peers: null,
    uuids: [],
  };
  /** The ring version each node last recorded as balanced (metadata `balanced/`). */
  #balanced = new Map<string, number>();
  /** The version this node last recorded as balanced. */
  #recordedBalanced = -1;

  /** Registered nodes with an address that are not ring members (removed ones draining). */
  outsideRing(): readonly string[] {
    // Asked on every read: worked out again only when the ring or the registrations changed.
    if (this.#outside.ring !== this.#ring || this.#outside.addresses !== this.#addresses) {
      const members = new Set(this.#ring.memberUuids());
      this.#outside = {
        ring: this.#ring,
        addresses: this.#addresses,
        uuids: [...this.#addresses.keys()].filter((uuid) => !members.has(uuid)),
      };
    }
    return this.#outside.uuids;
  }

  #outside: {
    ring: Ring | null;
    addresses: ReadonlyMap<string, string> | null;
    uuids: readonly string[];
  } = { ring: null, addresses: null, uuids: [] };

  /** The address to reach `uuid` at: its registration, else what the ring recorded. */
  addressOf(uuid: string): string | null {
    return this.#addresses.get(uuid) ??
      this.#ring.members().find((peer) => peer.uuid === uuid)?.address ?? null;
  }

  /** This node as it registers itself (a client has no address and no blocks). */
  info(): PeerInfo {
    const local = this.#options.node?.local ?? null;
    return {
      uuid: this.#options.uuid,
      address: this.server?.address ?? "",
      lastSeen: BigInt(this.#options.clock.nowMs()) * 1_000_000n,
      totalBlocks: BigInt(local?.totalBlocks() ?? 0),
      usedBlocks: BigInt(local?.usedBlocks() ?? 0),
      timedOut: false,
      rebalanceInfo: this.#rebalanceInfo(),
      protocolVersion: PEER_PROTOCOL_VERSION,
    };
  }

  /** What the rebalancer did, as the original's heartbeat carried it (list-peers REB/REP). */
  #rebalanceInfo(): RebalanceInfo | null {
    if (this.rebalancer === null) return null;
    const progress = this.rebalancer.progress();
    return {
      rebalancing: progress.rebalancing,
      lastRebalanceBlocks: BigInt(
        progress.rebalancing ? progress.passSentBlocks : progress.lastPassSentBlocks,
      ),
      lastRebalanceFinish: BigInt(progress.lastFinishMs ?? 0) * 1_000_000n,
      ringVersion: BigInt(progress.ringVersion),
    };
  }

  async #beat(): Promise<void> {
    const intervalMs = this.#options.heartbeatMs ?? HEARTBEAT_INTERVAL_MS;
    for (;;) {
      try {
        await this.#options.clock.sleep(intervalMs, this.#stop.signal);
      } catch {
        return; // Stopped.
      }
      await this.#heartbeat().catch((error) => {
        log.warn(`heartbeat failed: ${errorMessage(error)}`);
      });
    }
  }

  /** Registers this node under the current lease and refreshes the peer map. */
  async #heartbeat(): Promise<void> {
    if (this.server !== null) {
      await this.#options.metadata.peers.registerPeer(this.info(), this.#options.leases.lease);
      await this.#recordBalanced();
    }
    await this.refreshPeers();
    this.heartbeatCount++;
  }

  /**
   * Records durably that this node finished applying the ring (writers then stop sending it the
   * changes of blocks it does not hold, even while it is down).
   */
  async #recordBalanced(): Promise<void> {
    const progress = this.rebalancer?.progress();
    if (progress === undefined || progress.rebalancing) return;
    if (progress.ringVersion <= this.#recordedBalanced) return;
    await this.#options.metadata.peers.recordBalanced(this.#options.uuid, progress.ringVersion);
    this.#recordedBalanced = progress.ringVersion;
  }

  /** Reads the registered peers again (their addresses, counts and states). */
  async refreshPeers(): Promise<void> {
    const [peers, balanced] = await Promise.all([
      this.#options.metadata.peers.listPeers(),
      this.#options.metadata.peers.balancedRings(),
    ]);
    this.#balanced = balanced;
    this.#peers = peers;
    this.#addresses = new Map(
      this.#peers.filter((p) => p.address !== "").map((p) => [p.uuid, p.address]),
    );
  }

  /** Adds this node to the ring unless it is a member. */
  async #join(): Promise<void> {
    const uuid = this.#options.uuid;
    if (this.#ring.memberUuids().includes(uuid)) return;
    const next = await this.#options.metadata.cluster.updateRing((current) => {
      const ring = ringFromMessage(current);
      if (ring.memberUuids().includes(uuid)) return current;
      if (!isModifiable(ring)) throw invalid(`a ${ring.describe()} ring cannot take new peers`);
      return ring.addPeers([this.info()]).toMessage();
    });
    this.#ring = ringFromMessage(next);
    log.info(`joined the ring (version ${next.version})`);
  }

  /** Stops heartbeats, unregisters, flushes the distributor and stops serving peers. */
  async close(): Promise<void> {
    this.#stop.abort();
    await this.#heartbeats;
    await this.rebalancer?.stop();
    await this.scrubber?.stop();
    await this.#ringWatch?.unsubscribe().catch(() => {});
    await this.#lockWatch?.unsubscribe().catch(() => {});
    if (this.server !== null) {
      await this.#options.metadata.peers.unregisterPeer(this.#options.uuid).catch((error) => {
        log.warn(`unregistering failed: ${errorMessage(error)}`);
      });
    }
    await this.distributor.close();
    await this.staleMarks.close();
    await this.#directory.close();
    await this.server?.close();
  }
}

/**
 * Records every new writer's token in `fence` as soon as it holds the lock, so an earlier writer
 * is refused here even before the new one reaches this node (ADR 0005, section 7).
 */
function followLocks(metadata: MetadataService, fence: FencedStore): Promise<Subscription> {
  return metadata.blockVolumes.watchLocks((lock) => {
    fence.learn(lock.volumeId, Number(lock.fencingToken)).catch((error) => {
      log.error(`recording the fencing token of volume ${lock.volumeId}: ${errorMessage(error)}`);
    });
  }, { onError: (error) => log.error(`the lock watch ended: ${errorMessage(error)}`) });
}

/** The protocol of `address`'s scheme. */
function protocolOf(protocols: readonly PeerProtocol[], address: string): PeerProtocol {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(address)?.[1]?.toLowerCase();
  const protocol = protocols.find((p) => p.scheme === scheme);
  if (protocol === undefined) {
    throw invalid(
      `peer address ${address} must start with ${
        protocols.map((p) => `${p.scheme}://`).join(" or ")
      }`,
    );
  }
  return protocol;
}
