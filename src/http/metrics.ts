/**
 * `/metrics`: the node's counters in the Prometheus text exposition format (version 0.0.4),
 * written by prom-client. Metric names are the original's where the thing exists
 * (`torus_storage_*` with label `storage`, `torus_server_open_files{volume}`,
 * `torus_server_file_written_bytes{volume}`), so its Grafana dashboard's storage panels work;
 * the NBD server's are our own (`torus_nbd_*`). The list with meanings is in docs/http.md.
 *
 * The node keeps plain counters on its hot paths (BlockStoreStats, NbdServerStats, a volume's
 * written bytes); nothing here runs per request. A render copies one {@link LiveReport} into the
 * registry and writes it out; both happen before the first await, so concurrent scrapes each
 * see one consistent moment. Label sets that disappeared (a volume closed) disappear from the
 * output with them.
 * @module
 */

import { Counter, Gauge, Registry } from "prom-client";
import type { LiveReport } from "./report.ts";

/** Content type of the exposition. */
export const METRICS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

type StoreLabel = "storage";
type PeerLabel = "peer";

/** The AoE targets' counters: AoeTargetStats field, metric name, help. */
const AOE_COUNTERS: readonly (readonly [string, string, string])[] = [
  ["framesReceived", "torus_aoe_frames_received_total", "AoE frames the target received"],
  ["repliesSent", "torus_aoe_replies_sent_total", "AoE replies sent (the advertisement included)"],
  [
    "ignored",
    "torus_aoe_frames_ignored_total",
    "AoE frames for other targets, responses, config tests that did not match",
  ],
  [
    "malformed",
    "torus_aoe_frames_malformed_total",
    "AoE frames dropped because they did not parse (truncated, oversized, garbage)",
  ],
  [
    "busyDropped",
    "torus_aoe_frames_busy_dropped_total",
    "AoE requests dropped because the advertised buffer count was in flight",
  ],
  [
    "duplicates",
    "torus_aoe_duplicates_total",
    "Retransmitted AoE requests answered from the reply cache, not applied again",
  ],
  ["ataErrors", "torus_aoe_ata_errors_total", "AoE replies with an ATA error status"],
  ["aoeErrors", "torus_aoe_aoe_errors_total", "AoE replies with an AoE error code"],
  ["bytesRead", "torus_aoe_read_bytes_total", "Bytes returned by AoE reads"],
  ["bytesWritten", "torus_aoe_written_bytes_total", "Bytes stored by AoE writes"],
  ["flushes", "torus_aoe_flushes_total", "Device flushes of the target (ATA, periodic, stop)"],
  ["syncFailures", "torus_aoe_sync_failures_total", "Periodic flushes of the target that failed"],
  ["sendFailures", "torus_aoe_send_failures_total", "AoE replies the interface refused"],
];

/** A registry of the node's metrics; see the module doc. */
export class NodeMetrics {
  readonly #registry = new Registry();
  /** The cluster's series, rendered only by a cluster node (a single node has none at all). */
  readonly #clusterRegistry = new Registry();
  /** Every metric of the registry, reset before each render. */
  readonly #all: { reset(): void }[] = [];
  readonly #build = this.#gauge("torus_build_info", "Build of this node (value 1)", ["version"]);
  readonly #storage = {
    blocks: this.#gauge<StoreLabel>("torus_storage_blocks", "Blocks stored", ["storage"]),
    blocksTotal: this.#gauge<StoreLabel>(
      "torus_storage_blocks_total",
      "Capacity of the store in blocks",
      ["storage"],
    ),
    blockBytes: this.#gauge<StoreLabel>(
      "torus_storage_block_bytes",
      "Size of one block in bytes",
      ["storage"],
    ),
    failed: this.#gauge<StoreLabel>(
      "torus_storage_failed",
      "1 once the store failed after an I/O error (it refuses every call until restarted)",
      ["storage"],
    ),
    readBlocks: this.#counter<StoreLabel>(
      "torus_storage_read_blocks",
      "Block reads (whole or a byte range) that returned their bytes",
      ["storage"],
    ),
    readBytes: this.#counter<StoreLabel>(
      "torus_storage_read_bytes_total",
      "Bytes returned by block reads",
      ["storage"],
    ),
    failedBlocks: this.#counter<StoreLabel>(
      "torus_storage_failed_blocks",
      "Block reads that failed (checksum mismatch, unreadable copy, I/O error)",
      ["storage"],
    ),
    writtenBlocks: this.#counter<StoreLabel>(
      "torus_storage_written_blocks",
      "Block writes (whole, a byte range, or a zeroing) that took effect",
      ["storage"],
    ),
    writtenBytes: this.#counter<StoreLabel>(
      "torus_storage_written_bytes_total",
      "Bytes covered by block writes",
      ["storage"],
    ),
    failedWrittenBlocks: this.#counter<StoreLabel>(
      "torus_storage_failed_written_blocks",
      "Block writes that failed (out of space, I/O error)",
      ["storage"],
    ),
    deletedBlocks: this.#counter<StoreLabel>(
      "torus_storage_deleted_blocks",
      "Blocks deleted",
      ["storage"],
    ),
    flushes: this.#counter<StoreLabel>(
      "torus_storage_flushes",
      "Flushes of the store that completed",
      ["storage"],
    ),
  };
  readonly #volumes = {
    openFiles: this.#gauge<"volume">(
      "torus_server_open_files",
      "Handles on a volume open for write here (one per NBD connection to it)",
      ["volume"],
    ),
    writtenBytes: this.#counter<"volume">(
      "torus_server_file_written_bytes",
      "Bytes written to a volume open here since it was opened",
      ["volume"],
    ),
  };
  readonly #nbd = {
    connections: this.#gauge("torus_nbd_connections", "NBD connections open", []),
    accepted: this.#counter(
      "torus_nbd_connections_accepted_total",
      "NBD connections accepted",
      [],
    ),
    requests: this.#counter<"command">(
      "torus_nbd_requests_total",
      "NBD requests received, by command",
      ["command"],
    ),
    errors: this.#counter(
      "torus_nbd_request_errors_total",
      "NBD requests answered with an error",
      [],
    ),
    protocolErrors: this.#counter(
      "torus_nbd_protocol_errors_total",
      "NBD connections closed for a malformed request or handshake",
      [],
    ),
    readBytes: this.#counter("torus_nbd_read_bytes_total", "Bytes returned by NBD reads", []),
    writtenBytes: this.#counter("torus_nbd_written_bytes_total", "Bytes stored by NBD writes", []),
  };
  /** One counter per AoeTargetStats field, by target. */
  readonly #aoe = new Map(
    AOE_COUNTERS.map(([field, name, help]) => [
      field,
      this.#counter<"target" | "interface" | "volume">(name, help, [
        "target",
        "interface",
        "volume",
      ]),
    ]),
  );

  readonly #cluster = {
    heartbeats: this.#clusterCounter("torus_server_heartbeats", "Heartbeats of this node", []),
    peers: this.#clusterGauge(
      "torus_server_peers_total",
      "Nodes registered at the last heartbeat",
      [],
    ),
    blockRequests: this.#clusterCounter(
      "torus_distributor_block_requests_total",
      "Block reads asked of the distributor",
      [],
    ),
    cachedBlocks: this.#clusterCounter(
      "torus_distributor_block_cached_blocks",
      "Block reads served from the read cache",
      [],
    ),
    localBlocks: this.#clusterCounter(
      "torus_distributor_block_local_blocks",
      "Block reads served by this node's own copy",
      [],
    ),
    localBlockFails: this.#clusterCounter(
      "torus_distributor_block_local_block_fails",
      "Reads of this node's own copy that failed",
      [],
    ),
    peerBlocks: this.#clusterCounter<PeerLabel>(
      "torus_distributor_block_peer_blocks",
      "Block reads served by a peer",
      ["peer"],
    ),
    peerBlockFails: this.#clusterCounter<PeerLabel>(
      "torus_distributor_block_peer_block_fails",
      "Block reads a peer could not serve",
      ["peer"],
    ),
    requestFailures: this.#clusterCounter(
      "torus_distributor_block_request_failures",
      "Block reads no copy could serve",
      [],
    ),
    repairedBlocks: this.#clusterCounter(
      "torus_distributor_repaired_blocks",
      "Copies rewritten from a good one after a checksum failure",
      [],
    ),
    resyncedBlocks: this.#clusterCounter(
      "torus_distributor_resynced_blocks",
      "Whole copies written to holders that had missed changes",
      [],
    ),
    staleBlocks: this.#clusterGauge(
      "torus_distributor_stale_blocks",
      "Blocks some holder lacks changes of (flushes fail while any are left)",
      [],
    ),
    pulledBlocks: this.#clusterCounter(
      "torus_distributor_pulled_blocks",
      "Blocks copied to new holders from where an earlier ring placed them, on a write",
      [],
    ),
    degradedWrites: this.#clusterCounter(
      "torus_distributor_degraded_writes",
      "Changes that counted with fewer holders than the replication, the others marked stale",
      [],
    ),
    markedBlocks: this.#clusterGauge(
      "torus_distributor_marked_blocks",
      "Blocks some node is durably marked as lacking changes of (cluster-wide)",
      [],
    ),
    rebalancing: this.#clusterGauge(
      "torus_rebalance_rebalancing",
      "1 while this node has not applied the last ring change it saw",
      [],
    ),
    rebalanceRingVersion: this.#clusterGauge(
      "torus_rebalance_ring_version",
      "Ring version of the rebalance pass running now, or of the last one",
      [],
    ),
    rebalanceScanned: this.#clusterGauge(
      "torus_rebalance_pass_scanned_blocks",
      "Blocks of this node the current (or last) rebalance pass looked at",
      [],
    ),
    rebalanceTotal: this.#clusterGauge(
      "torus_rebalance_pass_total_blocks",
      "Blocks of this node when the current (or last) rebalance pass began",
      [],
    ),
    rebalanceSentBlocks: this.#clusterCounter(
      "torus_rebalance_sent_blocks_total",
      "Blocks this node copied to their holders after ring changes",
      [],
    ),
    rebalanceSentBytes: this.#clusterCounter(
      "torus_rebalance_sent_bytes_total",
      "Bytes this node copied to their holders after ring changes",
      [],
    ),
    rebalanceDeleted: this.#clusterCounter(
      "torus_rebalance_deleted_blocks_total",
      "Surplus copies this node deleted once their holders confirmed them",
      [],
    ),
    scrubbedBlocks: this.#clusterCounter(
      "torus_scrub_scrubbed_blocks_total",
      "Blocks of this node the scrubber read and verified",
      [],
    ),
    scrubDamaged: this.#clusterCounter(
      "torus_scrub_damaged_blocks_total",
      "Copies on this node the scrubber found damaged",
      [],
    ),
    scrubRepaired: this.#clusterCounter(
      "torus_scrub_repaired_blocks_total",
      "Damaged copies the scrubber replaced from another holder",
      [],
    ),
    scrubUnrepaired: this.#clusterCounter(
      "torus_scrub_unrepaired_blocks_total",
      "Damaged copies no other holder had a good copy of when found",
      [],
    ),
    scrubPasses: this.#clusterCounter(
      "torus_scrub_passes_total",
      "Complete scrub passes over this node's blocks",
      [],
    ),
    refusedStaleWriters: this.#clusterCounter(
      "torus_server_refused_stale_writer_changes_total",
      "Changes refused from writers whose volume lock was taken over (older fencing token)",
      [],
    ),
    refusedStaleRing: this.#clusterCounter(
      "torus_server_refused_stale_ring_changes_total",
      "Changes refused because they were placed by a ring older than this node's",
      [],
    ),
    rebalanceFailures: this.#clusterCounter(
      "torus_distributor_rebalance_rpc_failures",
      "Rebalance calls to peers that failed (the pass tries again)",
      [],
    ),
  };

  #gauge<L extends string = never>(
    name: string,
    help: string,
    labelNames: L[],
    registry = this.#registry,
  ): Gauge<L> {
    const gauge = new Gauge<L>({ name, help, labelNames, registers: [registry] });
    this.#all.push(gauge);
    return gauge;
  }

  #counter<L extends string = never>(
    name: string,
    help: string,
    labelNames: L[],
    registry = this.#registry,
  ): Counter<L> {
    const counter = new Counter<L>({ name, help, labelNames, registers: [registry] });
    this.#all.push(counter);
    return counter;
  }

  #clusterGauge<L extends string = never>(name: string, help: string, labelNames: L[]): Gauge<L> {
    return this.#gauge(name, help, labelNames, this.#clusterRegistry);
  }

  #clusterCounter<L extends string = never>(
    name: string,
    help: string,
    labelNames: L[],
  ): Counter<L> {
    return this.#counter(name, help, labelNames, this.#clusterRegistry);
  }

  /** The exposition of `live`. */
  render(live: LiveReport): Promise<string> {
    this.#update(live);
    // Both expositions are taken before the first await: one consistent moment.
    const node = this.#registry.metrics();
    if (live.cluster === null) return node;
    const cluster = this.#clusterRegistry.metrics();
    return Promise.all([node, cluster]).then(([a, b]) => a + b);
  }

  #update(live: LiveReport): void {
    for (const metric of this.#all) metric.reset();
    this.#build.set({ version: live.node.version }, 1);
    this.#updateStore(live);
    this.#updateCluster(live);
    for (const volume of live.openVolumes) {
      const labels = { volume: volume.name };
      this.#volumes.openFiles.set(labels, volume.handles);
      this.#volumes.writtenBytes.inc(labels, volume.writtenBytes);
    }
    this.#updateAoe(live);
    const nbd = live.nbd;
    if (nbd === null) return;
    this.#nbd.connections.set(nbd.connectionsOpen);
    this.#nbd.accepted.inc(nbd.connectionsAccepted);
    for (const [command, count] of Object.entries(nbd.requestsByCommand)) {
      this.#nbd.requests.inc({ command }, count);
    }
    this.#nbd.errors.inc(nbd.errorReplies);
    this.#nbd.protocolErrors.inc(nbd.protocolErrors);
    this.#nbd.readBytes.inc(nbd.readBytes);
    this.#nbd.writtenBytes.inc(nbd.writtenBytes);
  }

  #updateAoe(live: LiveReport): void {
    for (const target of live.aoe) {
      const labels = { target: target.address, interface: target.interface, volume: target.volume };
      for (const [field, counter] of this.#aoe) counter.inc(labels, target.counters[field] ?? 0);
    }
  }

  #updateCluster(live: LiveReport): void {
    const cluster = live.cluster;
    if (cluster === null) return;
    const m = this.#cluster;
    const d = cluster.distributor;
    m.heartbeats.inc(cluster.heartbeats);
    m.peers.set(cluster.peers.length);
    m.blockRequests.inc(d.blockRequests);
    m.cachedBlocks.inc(d.cachedBlocks);
    m.localBlocks.inc(d.localBlocks);
    m.localBlockFails.inc(d.localBlockFails);
    for (const [peer, count] of Object.entries(d.peerBlocks)) m.peerBlocks.inc({ peer }, count);
    for (const [peer, count] of Object.entries(d.peerBlockFails)) {
      m.peerBlockFails.inc({ peer }, count);
    }
    m.requestFailures.inc(d.requestFailures);
    m.repairedBlocks.inc(d.repairedBlocks);
    m.resyncedBlocks.inc(d.resyncedBlocks);
    m.staleBlocks.set(d.staleBlocks);
    m.pulledBlocks.inc(d.pulledBlocks);
    m.degradedWrites.inc(d.degradedWrites);
    m.markedBlocks.set(d.markedBlocks);
    if (cluster.fence !== null) {
      m.refusedStaleWriters.inc(cluster.fence.refusedStaleWriters);
      m.refusedStaleRing.inc(cluster.fence.refusedStaleRing);
    }
    const scrub = cluster.scrub;
    if (scrub !== null) {
      m.scrubbedBlocks.inc(scrub.scrubbedBlocks);
      m.scrubDamaged.inc(scrub.damagedBlocks);
      m.scrubRepaired.inc(scrub.repairedBlocks);
      m.scrubUnrepaired.inc(scrub.unrepairedBlocks);
      m.scrubPasses.inc(scrub.passes);
    }
    const r = cluster.rebalance;
    if (r === null) return;
    m.rebalancing.set(r.rebalancing ? 1 : 0);
    m.rebalanceRingVersion.set(r.ringVersion);
    m.rebalanceScanned.set(r.passScannedBlocks);
    m.rebalanceTotal.set(r.passTotalBlocks);
    m.rebalanceSentBlocks.inc(r.sentBlocks);
    m.rebalanceSentBytes.inc(r.sentBytes);
    m.rebalanceDeleted.inc(r.deletedBlocks);
    m.rebalanceFailures.inc(r.failedCalls);
  }

  #updateStore(live: LiveReport): void {
    const store = live.store;
    if (store === null) return;
    const labels = { storage: store.name };
    const m = this.#storage;
    if (store.usedBlocks !== null) m.blocks.set(labels, store.usedBlocks);
    if (store.totalBlocks !== null) m.blocksTotal.set(labels, store.totalBlocks);
    m.blockBytes.set(labels, store.blockSizeBytes);
    m.failed.set(labels, store.failure === null ? 0 : 1);
    const c = store.counters;
    m.readBlocks.inc(labels, c.readBlocks);
    m.readBytes.inc(labels, c.readBytes);
    m.failedBlocks.inc(labels, c.failedBlocks);
    m.writtenBlocks.inc(labels, c.writtenBlocks);
    m.writtenBytes.inc(labels, c.writtenBytes);
    m.failedWrittenBlocks.inc(labels, c.failedWrittenBlocks);
    m.deletedBlocks.inc(labels, c.deletedBlocks);
    m.flushes.inc(labels, c.flushes);
  }
}
