/**
 * The peer protocol boundary: how one node (or a cluster client) uses the block store of another.
 * Implementations: TDP (tdp/, the binary protocol over TCP, `tdp://host:port`) and gRPC (grpc/,
 * the original's TorusStorage service extended with the same calls, `http://host:port`). Both run
 * `protocol_contract.ts`, which is the BlockStore contract played over the wire plus the rules
 * below.
 *
 * Contract:
 * - The client side is a {@link PeerStore}: a BlockStore whose every call (whole blocks, ranges,
 *   deletes, flush, the ref inventory) runs on the remote store, in call order per ref, with many
 *   calls in flight at once. Errors keep their codes across the wire (`not_exist` stays
 *   `not_exist`), so the distributor decides on codes, never on messages.
 * - A connection starts with a handshake naming the protocol version, the cluster id and the
 *   block size; a server refuses a client of another cluster, block size or version with a
 *   one-line reason, before any store call.
 * - A call that gets no answer within its deadline (`timeoutMs`, or the store's default) or loses
 *   its connection fails: a read with `unavailable`, a change with `outcome_unknown` (it may have
 *   been applied). The next call connects again.
 * - A frame that is garbage, truncated or larger than the protocol's bound closes that one
 *   connection; the server goes on serving every other.
 * - `usedBlocks()` and `totalBlocks()` answer from the latest reply (each reply of a store call
 *   carries the remote counts), so they are as fresh as the last call.
 * - Writes carry the writer's fencing token (`fenceToken`) and the version of the ring they were
 *   placed by (`ringVersion`) to the remote store, which decides (`locked`, `compare_failed`).
 * @module
 */

import { type BlockRef, invalid } from "../../core/mod.ts";
import type { BlockCallOptions, BlockStore } from "../../storage/mod.ts";

/** Who is at each end of a connection: both must agree before any store call. */
export interface PeerIdentity {
  /** The cluster's id (from the metadata service); peers of other clusters are refused. */
  readonly clusterId: string;
  /** The cluster block size; both ends must use the same. */
  readonly blockSizeBytes: number;
  /** This end's node UUID (or a client's name), for logs and metrics on the other end. */
  readonly nodeName: string;
}

/** Per-call options of a peer store (`timeoutMs` unset: the store's default deadline). */
export type PeerCallOptions = BlockCallOptions;

/** A remote block store: the BlockStore contract, plus calls that only make sense remotely. */
export interface PeerStore extends BlockStore {
  /** The peer's address as a URL (`tdp://10.0.0.2:40000`). */
  readonly address: string;
  /**
   * The peer server's instance as of the latest handshake: a new one each time it starts (null
   * before the first call). Changes it acknowledged under an older instance and had not flushed
   * may be gone (a power loss): the distributor copies them there again before a flush counts.
   */
  readonly instance: string | null;
  /** For each ref, whether the peer holds it (the rebalancer's check, one round trip). */
  hasBlocks(refs: readonly BlockRef[], options?: PeerCallOptions): Promise<boolean[]>;
  /** Asks the peer for its current counts (refreshes usedBlocks()/totalBlocks()). */
  refreshCounts(options?: PeerCallOptions): Promise<void>;
}

/** Options of a client connection to one peer. */
export interface PeerDialOptions {
  /** This end of the handshake. */
  readonly identity: PeerIdentity;
  /** Default deadline of a call, including connecting when there is no connection. */
  readonly callTimeoutMs: number;
}

/** A server answering peer calls from a local store. */
export interface PeerServer {
  /** The address it listens on, as a URL with the port it got (`tdp://127.0.0.1:40123`). */
  readonly address: string;
  /** Connections open now. */
  connections(): number;
  /** Stops listening and closes every connection (calls in flight on the store complete). */
  close(): Promise<void>;
}

/** Options of a peer server. */
export interface PeerServeOptions {
  /** This end of the handshake. */
  readonly identity: PeerIdentity;
  /** The store the server answers from. The server never closes it. */
  readonly store: BlockStore;
}

/** One peer protocol: a URL scheme, a client and a server. */
export interface PeerProtocol {
  /** The URL scheme that selects it (`tdp`, `http`). */
  readonly scheme: string;
  /** A client of the peer at `address` (`scheme://host:port`); it connects on first use. */
  dial(address: string, options: PeerDialOptions): PeerStore;
  /** Listens on `address` (`scheme://host:port`, port 0 for any) and serves `options.store`. */
  listen(address: string, options: PeerServeOptions): Promise<PeerServer>;
}

/** The default deadline of a peer call (connect included). */
export const PEER_CALL_TIMEOUT_MS_DEFAULT = 5_000;

/** Host and port of a peer URL of `scheme`; `invalid` with the reason otherwise. */
export function parsePeerUrl(address: string, scheme: string): { hostname: string; port: number } {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw invalid(`peer address ${JSON.stringify(address)} is not a URL`);
  }
  if (url.protocol !== `${scheme}:`) {
    throw invalid(`peer address ${address} is not a ${scheme}:// URL`);
  }
  const port = url.port === "" ? PEER_PORT_DEFAULT : Number(url.port);
  // URL keeps the brackets of an IPv6 literal; sockets want the bare address.
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (hostname === "" || url.pathname.replace(/^\/$/, "") !== "" || url.search !== "") {
    throw invalid(`peer address ${address} must be ${scheme}://HOST[:PORT]`);
  }
  return { hostname, port };
}

/** The port of a peer address without one (the original's 40000). */
export const PEER_PORT_DEFAULT = 40000;
