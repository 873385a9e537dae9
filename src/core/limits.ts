/**
 * Every limit in one file, with the relationships between them asserted when the module loads
 * (our stand-in for compile-time checks). Units are in the names.
 * @module
 */

import { assert } from "./assert.ts";

/** Default cluster block size (init, single-node mode). */
export const BLOCK_SIZE_DEFAULT_BYTES = 512 * 1024;
/** Smallest and largest block size a cluster may be initialised with. */
export const BLOCK_SIZE_MIN_BYTES = 512;
export const BLOCK_SIZE_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Most slots (blocks) one file block store may have: its in-memory index is a JavaScript Map, and
 * V8 caps a Map at 2^24 entries. 16M blocks are 8 TiB at the default block size.
 */
export const STORE_SLOTS_MAX = 16_000_000;

/** Default replication factor of a new ring. */
export const REPLICATION_DEFAULT = 2;
/** Default copies of the `rep` blockset layer. */
export const REP_LAYER_COPIES_DEFAULT = 2;
/** Most copies a `rep` layer may keep (each costs a full block write). */
export const REP_LAYER_COPIES_MAX = 16;

/** Virtual points per unit of ketama weight; see docs/adr/ for the balance measured. */
export const KETAMA_POINTS_PER_PEER = 160;

/** Lease TTL of a node or client registration and of the volume locks it holds. */
export const LEASE_TTL_MS = 30_000;
/** Heartbeat period; several heartbeats must fit into one lease TTL. */
export const HEARTBEAT_INTERVAL_MS = 5_000;
/** A peer whose last heartbeat is older than this is not listed as alive. */
export const PEER_STALE_MS = 50_000;
/** Deadline of one metadata call before it fails as `unavailable`. */
export const METADATA_CALL_TIMEOUT_MS = 5_000;
/** How long a client waits for etcd before it reports it unreachable. */
export const METADATA_CONNECT_TIMEOUT_MS = 3_000;

/** Deadlines of peer calls (distributor, TDP, gRPC). */
export const PEER_CONNECT_TIMEOUT_MS = 2_000;
export const PEER_READ_TIMEOUT_MS = 500;
export const PEER_WRITE_TIMEOUT_MS = 2_000;
export const REBALANCE_RPC_TIMEOUT_MS = 5_000;
/** Refs per has-many request and per rebalance tick. */
export const REBALANCE_BLOCKS_PER_TICK_MAX = 256;
/** Requests one peer connection may have in flight. */
export const PEER_REQUESTS_IN_FLIGHT_MAX = 64;
/** Largest TDP frame payload beside one block (headers, ref lists). */
export const TDP_FRAME_OVERHEAD_MAX_BYTES = 64 * 1024;

/** Default distributor read cache. */
export const READ_CACHE_DEFAULT_BYTES = 50 * 1024 * 1024;
export const READ_CACHE_ENTRIES_MIN = 100;

/** NBD: requests in flight per connection and the largest request payload. */
export const NBD_REQUESTS_IN_FLIGHT_MAX = 64;
export const NBD_REQUEST_LENGTH_MAX_BYTES = 32 * 1024 * 1024;
/** NBD option haggling: the largest option payload accepted. */
export const NBD_OPTION_LENGTH_MAX_BYTES = 4096;

/** AoE: period of the background sync. */
export const AOE_SYNC_INTERVAL_MS = 5_000;

assert(HEARTBEAT_INTERVAL_MS * 3 <= LEASE_TTL_MS, "a lease must survive two missed heartbeats");
assert(PEER_STALE_MS > LEASE_TTL_MS, "a peer goes stale only after its lease could expire");
assert(BLOCK_SIZE_DEFAULT_BYTES % BLOCK_SIZE_MIN_BYTES === 0, "default block size is aligned");
assert(
  BLOCK_SIZE_DEFAULT_BYTES >= BLOCK_SIZE_MIN_BYTES &&
    BLOCK_SIZE_DEFAULT_BYTES <= BLOCK_SIZE_MAX_BYTES,
  "default block size within limits",
);
assert(
  NBD_REQUEST_LENGTH_MAX_BYTES >= BLOCK_SIZE_MAX_BYTES,
  "an NBD request may cover a whole block",
);
assert(STORE_SLOTS_MAX < 2 ** 24, "a store's index fits one JavaScript Map");
assert(READ_CACHE_ENTRIES_MIN >= 1, "the read cache holds at least one block");
