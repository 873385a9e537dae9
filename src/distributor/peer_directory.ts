/**
 * Connections to peers by UUID: the address comes from the ring members or heartbeats, the
 * protocol from the address's URL scheme (`tdp://` or `http://`), and each peer gets one client
 * store, made on first use and replaced when the peer's address changes.
 * @module
 */

import { type Clock, invalid, systemClock } from "../core/mod.ts";

/** Least time between two lookups of the addresses after failed calls. */
const REFRESH_INTERVAL_MS = 1_000;
import type { PeerDialOptions, PeerProtocol, PeerStore } from "./protocols/protocol.ts";

/** Where peers are, and a client for each. */
export interface PeerDirectory {
  /** The client of peer `uuid`, or null when its address is unknown. */
  storeOf(uuid: string): PeerStore | null;
  /**
   * A call to `uuid` could not connect: the peer may have moved (restarted elsewhere), so the
   * addresses are looked up again soon rather than at the next heartbeat. Resolves when that
   * lookup is done (a caller may then try again).
   */
  unreachable(uuid: string): Promise<void>;
  /** Closes every client. */
  close(): Promise<void>;
}

/** A directory over a function from UUID to address (ring members, heartbeats). */
export class DialingPeerDirectory implements PeerDirectory {
  readonly #protocols: ReadonlyMap<string, PeerProtocol>;
  readonly #addressOf: (uuid: string) => string | null;
  readonly #dial: PeerDialOptions;
  readonly #stores = new Map<string, PeerStore>();
  readonly #refresh: () => Promise<void>;

  /**
   * `refresh` looks the addresses up again (the node's peer map); it is called at most once per
   * REFRESH_INTERVAL_MS however many calls fail.
   */
  constructor(
    protocols: readonly PeerProtocol[],
    addressOf: (uuid: string) => string | null,
    dial: PeerDialOptions,
    refresh: () => Promise<void> = () => Promise.resolve(),
    clock: Clock = systemClock,
  ) {
    this.#protocols = new Map(protocols.map((p) => [p.scheme, p]));
    this.#addressOf = addressOf;
    this.#dial = dial;
    let lastMs = -Infinity;
    let last: Promise<void> = Promise.resolve();
    this.#refresh = () => {
      if (clock.nowMs() - lastMs < REFRESH_INTERVAL_MS) return last;
      lastMs = clock.nowMs();
      last = refresh().catch(() => {});
      return last;
    };
  }

  unreachable(_uuid: string): Promise<void> {
    return this.#refresh();
  }

  storeOf(uuid: string): PeerStore | null {
    const address = this.#addressOf(uuid);
    if (address === null || address === "") return null;
    const current = this.#stores.get(uuid);
    if (current !== undefined && current.address === address) return current;
    // The peer moved (or is new): a client for the new address; the old one closes when idle.
    if (current !== undefined) void current.close().catch(() => {});
    const store = this.#protocolOf(address).dial(address, this.#dial);
    this.#stores.set(uuid, store);
    return store;
  }

  #protocolOf(address: string): PeerProtocol {
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(address)?.[1]?.toLowerCase() ?? "";
    const protocol = this.#protocols.get(scheme);
    if (protocol === undefined) {
      throw invalid(
        `peer address ${address} has no known protocol (${[...this.#protocols.keys()].join(", ")})`,
      );
    }
    return protocol;
  }

  async close(): Promise<void> {
    const stores = [...this.#stores.values()];
    this.#stores.clear();
    await Promise.all(stores.map((store) => store.close().catch(() => {})));
  }
}
