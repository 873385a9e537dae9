/**
 * Counters of the distributor's work, read by the node's metrics under the original's names
 * (`torus_distributor_*`, so its Grafana dashboard keeps working).
 * @module
 */

/** Counters since the distributor started. */
export class DistributorStats {
  /** torus_distributor_block_requests_total */
  blockRequests = 0;
  /** torus_distributor_block_cached_blocks */
  cachedBlocks = 0;
  /** torus_distributor_block_local_blocks */
  localBlocks = 0;
  /** torus_distributor_block_local_block_fails */
  localBlockFails = 0;
  /** torus_distributor_block_peer_blocks{peer} */
  readonly peerBlocks = new Map<string, number>();
  /** torus_distributor_block_peer_block_fails{peer} */
  readonly peerBlockFails = new Map<string, number>();
  /** torus_distributor_block_request_failures */
  requestFailures = 0;
  /** torus_distributor_repaired_blocks (new: copies rewritten after a checksum failure) */
  repairedBlocks = 0;
  /** Whole copies written to holders that had missed changes (ours) */
  resyncedBlocks = 0;
  /** Blocks copied to their holders from where an earlier ring placed them, on a write (ours) */
  pulledBlocks = 0;
  /** Changes that counted with fewer holders than R, the others durably marked stale (ours) */
  degradedWrites = 0;
}
