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

/** A disk sector: block volume sizes and NBD export sizes are whole numbers of sectors. */
export const SECTOR_SIZE_BYTES = 512;

/**
 * Most slots (blocks) one file block store may have: 16 million, 7.6 TiB at the default block
 * size. The store's index lives in typed arrays (about 46 bytes per used slot, measured; pages are
 * committed only for slots in use): a full store of this size holds about 0.7 GiB of index and
 * opens in about twice the time of the 8M-slot store measured by `deno task bench`
 * (docs/benchmarks.md); an empty one opens at once, as opening reads only the entries below the
 * high-water mark (tested at this size). Beyond it, memory and open time, not the data
 * structures, are the limit (the index's slot numbers are 32-bit).
 */
export const STORE_SLOTS_MAX = 16_000_000;

/** Default replication factor of a new ring. */
export const REPLICATION_DEFAULT = 2;
/** Default copies of the `rep` blockset layer. */
export const REP_LAYER_COPIES_DEFAULT = 2;
/** Most copies a `rep` layer may keep (each costs a full block write). */
export const REP_LAYER_COPIES_MAX = 16;
/**
 * Most indexes one blockset may hold. A blockset keeps 24 bytes (+4 per crc layer, +24 per extra
 * copy) per index in memory, so this bounds a map at 24 GiB before any allocation is attempted; at
 * the default block size it is a 512 PiB volume.
 */
export const BLOCKSET_BLOCKS_MAX = 2 ** 30;

/**
 * Ketama points of a member of average capacity. 1024 keeps every one of 3..50 equal peers
 * within about ±15% of the mean share and builds a 50-peer ring in ~20 ms
 * (docs/adr/0002-ketama-placement.md). Changing it moves data: every ring's placement changes.
 */
export const KETAMA_POINTS_PER_PEER = 1024;
/** Most members a ring may have; a ring proto listing more is rejected as invalid. */
export const RING_MEMBERS_MAX = 4096;

/**
 * Longest new volume or snapshot name, in characters; names are ASCII (src/core/names.ts), so
 * this is also their length in bytes.
 */
export const NAME_LENGTH_MAX = 255;
/**
 * Longest name looked up (or listed) in UTF-8 bytes. Larger than NAME_LENGTH_MAX because names
 * stored by older builds (up to 255 UTF-16 units of any script) must stay deletable.
 */
export const NAME_LOOKUP_MAX_BYTES = 1024;
/** Longest peer address accepted in a peer record or ring member (`tdp://host:port`). */
export const PEER_ADDRESS_LENGTH_MAX = 1024;
/**
 * Rings memoize the permutation of each distinct lookup outcome (a ketama point, a mod start)
 * while outcomes x members stays within this many array slots (8 bytes each); larger rings
 * compute each permutation on demand.
 */
export const RING_PERMUTATION_CACHE_ENTRIES_MAX = 2 ** 21;

/** Most blocks `torus ringtool` simulates in one run (about 2 µs each). */
export const RINGTOOL_BLOCKS_MAX = 2 ** 26;
/**
 * Highest replication `torus ringtool` simulates: finding R holders on a ketama ring walks about
 * R points while R is small against the peers, and real clusters replicate 2 to 5 times.
 */
export const RINGTOOL_REPLICATION_MAX = 16;
/**
 * Most ketama points of one simulated ring (peers x --ketama-points): each costs 16 bytes while
 * the ring is built. 4096 peers at the built-in 1024 points make 4 Mi.
 */
export const RINGTOOL_KETAMA_POINTS_MAX = 2 ** 23;

/**
 * Longest wait of a process that lost a lock file (the data-dir lock) for the holder to record
 * who it is, which the holder does right after taking the lock; it only improves the message.
 */
export const LOCK_HOLDER_DESCRIPTION_WAIT_MS = 2_000;
/** How long `torus ctl config` waits for another one writing the same config file. */
export const CONFIG_FILE_LOCK_WAIT_MS = 10_000;

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

/** Largest metadata key, in UTF-8 bytes. */
export const KV_KEY_MAX_BYTES = 4 * 1024;
/** Largest metadata value. */
export const KV_VALUE_MAX_BYTES = 1024 * 1024;
/** Most bytes of keys and values one put or transaction may carry (etcd refuses 1.5 MiB). */
export const KV_REQUEST_MAX_BYTES = 1280 * 1024;
/** Most guards, and most operations per branch, of one transaction (etcd's --max-txn-ops). */
export const KV_TXN_OPS_MAX = 128;
/** Largest get/range/transaction answer a metadata client accepts. */
export const KV_RESPONSE_MAX_BYTES = 64 * 1024 * 1024;
/** Longest lease TTL accepted. */
export const KV_LEASE_TTL_MAX_MS = 24 * 60 * 60 * 1000;
/** A watch that cannot reconnect for this long gives up and reports the error. */
export const KV_WATCH_RETRY_MAX_MS = 30_000;
/** Embedded metadata store: how often watches look for new changes from other processes. */
export const KV_WATCH_POLL_INTERVAL_MS = 50;
/** Embedded metadata store: how often expired leases are looked for when nobody writes. */
export const KV_LEASE_SWEEP_INTERVAL_MS = 250;
/**
 * Embedded metadata store: how much longer than its lock wait (METADATA_CALL_TIMEOUT_MS) the main
 * thread waits for the SQLite worker's answer to one request before it reports the worker stuck.
 * Generous on purpose: the worker cannot be interrupted, so giving up early never makes a call
 * shorter in effect; it only turns a commit whose fsync is slow on a loaded disk (seconds) into
 * an `outcome_unknown` write. Lock waits are bounded by SQLite itself, with a definite error.
 */
export const KV_EMBEDDED_ANSWER_GRACE_MS = 30_000;
/** Embedded metadata store: changes kept for watches (older ones are compacted away). */
export const KV_CHANGE_LOG_MAX_ENTRIES = 10_000;
export const KV_CHANGE_LOG_MAX_BYTES = 64 * 1024 * 1024;

/**
 * Most bytes read from a file or stream whose size is not ours to trust (a config file, a TLS
 * PEM file, the node identity file, a line typed at a confirmation prompt): `--config /dev/zero`
 * must fail at once, not fill the memory.
 */
export const CONFIG_FILE_MAX_BYTES = 1024 * 1024;
export const TLS_FILE_MAX_BYTES = 1024 * 1024;
export const NODE_ID_FILE_MAX_BYTES = 4 * 1024;
export const CONFIRMATION_LINE_MAX_BYTES = 1024;

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
/**
 * NBD_CMD_BLOCK_STATUS: the most of a request's range one reply describes, and the most extents
 * it lists (the spec lets a server answer less; clients ask again from where it stopped). Bounds
 * the block-map walk and the reply (8 bytes an extent) of one request.
 */
export const NBD_BLOCK_STATUS_QUERY_MAX_BYTES = 1024 * 1024 * 1024;
export const NBD_BLOCK_STATUS_EXTENTS_MAX = 8192;
/** NBD option haggling: the largest option payload accepted. */
export const NBD_OPTION_LENGTH_MAX_BYTES = 4096;
/**
 * NBD: most payload and read-reply bytes one connection holds at once (requests received and not
 * yet answered). A client that stops reading replies stalls at this much; one request of the
 * largest length is always let through, so it never deadlocks.
 */
export const NBD_CONNECTION_BUFFERED_BYTES_MAX = 64 * 1024 * 1024;
/** NBD: free request/reply buffers a server keeps for reuse, across its connections. */
export const NBD_BUFFER_POOL_RETAINED_BYTES_MAX = 128 * 1024 * 1024;
/** NBD: a client must finish option haggling within this time, or it is disconnected. */
export const NBD_HANDSHAKE_TIMEOUT_MS = 30_000;
/**
 * NBD client: the server must greet and finish the handshake within this time. A port that is not
 * an NBD server (HTTP, TDP) may never speak; a client must not wait for it forever.
 */
export const NBD_CLIENT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * NBD server shutdown: how long connections get to receive the replies to their requests in
 * flight before they are closed anyway (a client that stopped reading must not stall shutdown).
 */
export const NBD_CLOSE_GRACE_MS = 10_000;

/** HTTP status server: the default port of `torus serve --port`, as the original's. */
export const HTTP_PORT_DEFAULT = 4321;
/**
 * HTTP status server: how long `/healthz` waits for the metadata service to answer a read, and
 * `/status` for the volume list, before it reports the service unusable.
 */
export const HTTP_METADATA_CHECK_TIMEOUT_MS = 5_000;

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
assert(BLOCK_SIZE_MIN_BYTES % SECTOR_SIZE_BYTES === 0, "a block is whole sectors");
assert(
  NAME_LOOKUP_MAX_BYTES >= 3 * NAME_LENGTH_MAX,
  "older names of 255 UTF-16 units stay reachable",
);
assert(NAME_LOOKUP_MAX_BYTES * 2 <= KV_KEY_MAX_BYTES, "a name key leaves room for its prefix");
assert(
  NBD_CONNECTION_BUFFERED_BYTES_MAX >= NBD_REQUEST_LENGTH_MAX_BYTES,
  "an NBD connection can hold one request of the largest length",
);
assert(STORE_SLOTS_MAX < 2 ** 31, "a store's slot numbers (+1) fit the index's 32-bit table");
assert(READ_CACHE_ENTRIES_MIN >= 1, "the read cache holds at least one block");
assert(
  KV_KEY_MAX_BYTES + KV_VALUE_MAX_BYTES <= KV_REQUEST_MAX_BYTES,
  "one largest key and value fit a metadata request",
);
assert(KV_REQUEST_MAX_BYTES < 1536 * 1024, "a metadata request stays under etcd's 1.5 MiB limit");
assert(KV_RESPONSE_MAX_BYTES >= KV_REQUEST_MAX_BYTES, "a written entry can be read back");
assert(METADATA_CONNECT_TIMEOUT_MS <= METADATA_CALL_TIMEOUT_MS, "connecting is one call");
assert(
  KV_LEASE_SWEEP_INTERVAL_MS * 4 <= LEASE_TTL_MS,
  "expired leases are swept well within a TTL",
);
assert(KV_WATCH_RETRY_MAX_MS >= LEASE_TTL_MS, "a watch outlives a lease's worth of outage");
assert(
  RING_MEMBERS_MAX * KETAMA_POINTS_PER_PEER <= RINGTOOL_KETAMA_POINTS_MAX,
  "ringtool simulates the largest ring with the built-in ketama points",
);
