/**
 * Cluster-wide roles over the KvStore: global settings and the ring ({@link ClusterMetadataImpl}),
 * leases ({@link LeaseMetadataImpl}) and peer registrations ({@link PeerMetadataImpl}).
 *
 * Invariants:
 * - `init` writes global metadata, the volume minter and the first ring in one transaction, so a
 *   cluster is either not initialised or completely initialised (the original wrote the ring in
 *   a second, unguarded put).
 * - A stored ring only ever moves to version current + 1, by compare-and-swap on the ring key's
 *   revision: two concurrent changes cannot both win, and no writer can regress the version.
 * - A ring watch never delivers a version lower than or equal to one it already delivered.
 * @module
 */

import {
  BLOCK_SIZE_MAX_BYTES,
  BLOCK_SIZE_MIN_BYTES,
  ErrorCode,
  exists,
  invalid,
  isTorusError,
  LEASE_TTL_MS,
  PEER_STALE_MS,
  randomUuid,
  TorusError,
} from "../core/mod.ts";
import {
  checkedPeerInfo,
  type PeerInfo,
  PeerInfoCodec,
  type Ring as RingMessage,
  RingCodec,
} from "../models/mod.ts";
import type { LeaseId, WatchEvent } from "./kv.ts";
import {
  decodeGlobalMetadata,
  decodeU64,
  encodeGlobalMetadata,
  encodeU64,
  type GlobalMetadata,
} from "./keys.ts";
import {
  absent,
  casLoop,
  get,
  type MetadataContext,
  notInitialised,
  put,
  RETRY,
  unchanged,
} from "./context.ts";
import type {
  ClusterMetadata,
  InitOptions,
  LeaseMetadata,
  ListPeersOptions,
  PeerMetadata,
  RingWatchOptions,
  Subscription,
} from "./metadata.ts";

/** Largest ring version the proto's uint32 can carry. */
const RING_VERSION_MAX = 2 ** 32 - 1;

/** Checks the settings `init` is asked to write. */
export function checkInitOptions(options: InitOptions): void {
  const size = options.blockSizeBytes;
  if (
    !Number.isSafeInteger(size) || size < BLOCK_SIZE_MIN_BYTES || size > BLOCK_SIZE_MAX_BYTES ||
    size % BLOCK_SIZE_MIN_BYTES !== 0
  ) {
    throw invalid(
      `block size ${size} must be a multiple of ${BLOCK_SIZE_MIN_BYTES} between ` +
        `${BLOCK_SIZE_MIN_BYTES} and ${BLOCK_SIZE_MAX_BYTES} bytes`,
    );
  }
  const spec = options.defaultBlockSpec;
  if (spec.length === 0 || spec[spec.length - 1]!.kind !== 0) {
    throw invalid("block spec must end with the base layer");
  }
  if (options.ring.version < 1) throw invalid("the first ring must have version >= 1");
}

/** Throws `compare_failed` unless `next` is the direct successor of `current`. */
export function checkRingSuccessor(current: RingMessage, next: RingMessage): void {
  if (current.version >= RING_VERSION_MAX) throw invalid("ring version cannot grow any more");
  if (next.version !== current.version + 1) {
    throw new TorusError(
      ErrorCode.CompareFailed,
      `ring version ${next.version} does not follow the current version ${current.version}`,
    );
  }
}

/** Global settings and the ring. */
export class ClusterMetadataImpl implements ClusterMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async init(options: InitOptions): Promise<void> {
    checkInitOptions(options);
    const { kv, keys } = this.#context;
    const global: GlobalMetadata = {
      blockSizeBytes: options.blockSizeBytes,
      defaultBlockSpec: options.defaultBlockSpec,
    };
    const response = await kv.txn({
      compare: [absent(keys.globalMetadata())],
      success: [
        put(keys.volumeMinter(), encodeU64(1n)),
        put(keys.ring(), RingCodec.encode(options.ring)),
        put(keys.globalMetadata(), encodeGlobalMetadata(global)),
        put(keys.clusterId(), new TextEncoder().encode(randomUuid(this.#context.random))),
      ],
    });
    if (!response.succeeded) throw exists(`cluster already initialised under ${keys.prefix}`);
  }

  async isInitialised(): Promise<boolean> {
    return (await this.#context.kv.get(this.#context.keys.globalMetadata())) !== null;
  }

  async globalMetadata(): Promise<GlobalMetadata> {
    const entry = await this.#context.kv.get(this.#context.keys.globalMetadata());
    if (!entry) throw notInitialised();
    return decodeGlobalMetadata(entry.value);
  }

  async clusterId(): Promise<string> {
    const { kv, keys } = this.#context;
    const [global, id] = await Promise.all([
      kv.get(keys.globalMetadata()),
      kv.get(keys.clusterId()),
    ]);
    if (!global) throw notInitialised();
    if (id === null) return "";
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(id.value);
    } catch {
      throw invalid(`${keys.clusterId()} is not UTF-8 text`);
    }
  }

  async wipe(): Promise<number> {
    return await this.#context.kv.deletePrefix(this.#context.keys.prefix);
  }

  async getRing(): Promise<RingMessage> {
    return (await this.#readRing()).ring;
  }

  async setRing(next: RingMessage): Promise<void> {
    const { ring: current, modRevision } = await this.#readRing();
    checkRingSuccessor(current, next);
    if (!(await this.#swapRing(modRevision, next))) {
      throw new TorusError(
        ErrorCode.Again,
        `ring changed concurrently (was version ${current.version}); read it again`,
      );
    }
  }

  async updateRing(change: (current: RingMessage) => RingMessage): Promise<RingMessage> {
    return await casLoop(this.#context, "ring update", async () => {
      const { ring: current, modRevision } = await this.#readRing();
      const next = change(current);
      checkRingSuccessor(current, next);
      return (await this.#swapRing(modRevision, next)) ? next : RETRY;
    });
  }

  async watchRing(
    onRing: (ring: RingMessage) => void,
    options: RingWatchOptions = {},
  ): Promise<Subscription> {
    const { kv, keys, log } = this.#context;
    const key = keys.ring();
    // One transaction reads the ring and the store revision, so the watch starts exactly after
    // what was read: no ring change can fall into a gap.
    const snapshot = await kv.txn({ compare: [], success: [get(key)] });
    let lastVersion = -1;
    const deliver = (bytes: Uint8Array) => {
      let ring: RingMessage;
      try {
        ring = RingCodec.decode(bytes);
      } catch (error) {
        log.warn(`ignoring an undecodable ring: ${(error as Error).message}`);
        return;
      }
      if (ring.version <= lastVersion) {
        log.warn(`ignoring ring version ${ring.version}: already at ${lastVersion}`);
        return;
      }
      lastVersion = ring.version;
      try {
        onRing(ring);
      } catch (error) {
        // A subscriber's bug must not end the watch for every other subscriber.
        log.error(`ring subscriber failed on version ${ring.version}: ${(error as Error).message}`);
      }
    };
    const first = snapshot.results[0];
    if (first?.type === "get" && first.entries[0]) deliver(first.entries[0].value);
    const onEvents = (events: readonly WatchEvent[]) => {
      for (const event of events) {
        if (event.key === key && event.type === "put") deliver(event.value);
      }
    };
    const watch = await kv.watchPrefix(key, onEvents, {
      fromRevision: snapshot.revision + 1,
      ...(options.onError ? { onError: options.onError } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
    return { unsubscribe: () => watch.close() };
  }

  async #readRing(): Promise<{ ring: RingMessage; modRevision: number }> {
    const entry = await this.#context.kv.get(this.#context.keys.ring());
    if (!entry) throw notInitialised();
    return { ring: RingCodec.decode(entry.value), modRevision: entry.modRevision };
  }

  async #swapRing(modRevision: number, next: RingMessage): Promise<boolean> {
    const key = this.#context.keys.ring();
    const response = await this.#context.kv.txn({
      compare: [unchanged(key, modRevision)],
      success: [put(key, RingCodec.encode(next))],
    });
    return response.succeeded;
  }
}

/** Leases over the store. */
export class LeaseMetadataImpl implements LeaseMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async grant(ttlMs: number = LEASE_TTL_MS): Promise<LeaseId> {
    return await this.#context.kv.grantLease(ttlMs);
  }

  async keepAlive(lease: LeaseId): Promise<void> {
    return await this.#context.kv.keepAliveLease(lease);
  }

  async renewOrGrant(lease: LeaseId, ttlMs: number = LEASE_TTL_MS): Promise<LeaseId> {
    try {
      await this.#context.kv.keepAliveLease(lease);
      return lease;
    } catch (error) {
      if (!isTorusError(error, ErrorCode.NotExist)) throw error;
      this.#context.log.info(`lease ${lease} was lost; granting a new one`);
      return await this.#context.kv.grantLease(ttlMs);
    }
  }

  async revoke(lease: LeaseId): Promise<void> {
    return await this.#context.kv.revokeLease(lease);
  }
}

/** Peer registrations. */
export class PeerMetadataImpl implements PeerMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  newUuid(): string {
    return randomUuid(this.#context.random);
  }

  async registerPeer(info: PeerInfo, lease: LeaseId): Promise<void> {
    const peer = checkedPeerInfo(info);
    if (lease === 0n) throw invalid("a peer registration needs a lease");
    const stamped: PeerInfo = {
      ...peer,
      lastSeen: BigInt(this.#context.clock.nowMs()) * 1_000_000n,
    };
    await this.#context.kv.put(this.#context.keys.node(peer.uuid), PeerInfoCodec.encode(stamped), {
      lease,
    });
  }

  async unregisterPeer(uuid: string): Promise<void> {
    await this.#context.kv.delete(this.#context.keys.node(uuid));
  }

  async recordBalanced(uuid: string, ringVersion: number): Promise<void> {
    if (!Number.isSafeInteger(ringVersion) || ringVersion < 0) {
      throw invalid(`bad ring version ${ringVersion}`);
    }
    const key = this.#context.keys.balanced(uuid);
    await casLoop(this.#context, "balanced record", async () => {
      const entry = await this.#context.kv.get(key);
      const recorded = entry === null ? -1n : decodeBalanced(entry.value);
      if (recorded >= BigInt(ringVersion)) return undefined;
      const swapped = await this.#context.kv.txn({
        compare: [entry === null ? absent(key) : unchanged(key, entry.modRevision)],
        success: [put(key, encodeU64(BigInt(ringVersion)))],
      });
      return swapped.succeeded ? undefined : RETRY;
    });
  }

  async balancedRings(): Promise<Map<string, number>> {
    const { kv, keys, log } = this.#context;
    const rings = new Map<string, number>();
    for (const entry of await kv.range(keys.balancedDir())) {
      const uuid = entry.key.slice(keys.balancedDir().length);
      const version = decodeBalanced(entry.value);
      if (version < 0n || version > BigInt(Number.MAX_SAFE_INTEGER)) {
        log.warn(`skipping invalid balanced record ${entry.key}`);
        continue;
      }
      rings.set(uuid, Number(version));
    }
    return rings;
  }

  async listPeers(options: ListPeersOptions = {}): Promise<PeerInfo[]> {
    const { kv, keys, clock, log } = this.#context;
    const entries = await kv.range(keys.nodesDir());
    const oldestNs = BigInt(clock.nowMs() - PEER_STALE_MS) * 1_000_000n;
    const peers: PeerInfo[] = [];
    for (const entry of entries) {
      let peer: PeerInfo;
      try {
        peer = peerFromRecord(entry.key.slice(keys.nodesDir().length), entry.value);
      } catch (error) {
        // One bad record must not break every command that lists peers (`--all-peers`); the
        // logger escapes the line, as the key and the message may carry anything.
        log.warn(`skipping invalid peer record ${entry.key}: ${(error as Error).message}`);
        continue;
      }
      if (!options.includeStale && peer.lastSeen < oldestNs) continue;
      peers.push(peer);
    }
    return peers;
  }
}

/** A `balanced/<uuid>` value; -1 when it is not 8 bytes (a record to skip). */
function decodeBalanced(value: Uint8Array): bigint {
  return value.length === 8 ? decodeU64(value, "balanced ring version") : -1n;
}

/**
 * Decodes and checks the registration stored under `nodes/<keyUuid>`: a valid PeerInfo whose UUID
 * (normalised) is the key's. A record whose key and value disagree would list one node twice.
 */
export function peerFromRecord(keyUuid: string, value: Uint8Array): PeerInfo {
  const peer = checkedPeerInfo(PeerInfoCodec.decode(value));
  if (keyUuid !== peer.uuid) {
    throw invalid(`the record of ${peer.uuid} is stored under another key`);
  }
  return peer;
}
