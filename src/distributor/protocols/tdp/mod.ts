/**
 * TDP, the binary peer protocol over TCP (`tdp://host:port`): codec.ts has the frames, server.ts
 * answers from a local store, client.ts is a PeerStore of a remote one.
 * @module
 */

import { type Clock, systemClock } from "../../../core/mod.ts";
import { type StreamNetwork, tcpNetwork } from "../network.ts";
import {
  parsePeerUrl,
  type PeerDialOptions,
  type PeerProtocol,
  type PeerServeOptions,
} from "../protocol.ts";
import { TdpPeerStore } from "./client.ts";
import { TDP_FRAME_TIMEOUT_MS_DEFAULT, TdpServer } from "./server.ts";

export { TdpPeerStore } from "./client.ts";
export { TdpServer } from "./server.ts";

/** TDP over a network (TCP unless a test passes another) with a clock for deadlines. */
export class TdpProtocol implements PeerProtocol {
  readonly scheme = "tdp";
  readonly #network: StreamNetwork;
  readonly #clock: Clock;
  readonly #frameTimeoutMs: number;

  constructor(
    network: StreamNetwork = tcpNetwork,
    clock: Clock = systemClock,
    frameTimeoutMs = TDP_FRAME_TIMEOUT_MS_DEFAULT,
  ) {
    this.#network = network;
    this.#clock = clock;
    this.#frameTimeoutMs = frameTimeoutMs;
  }

  dial(address: string, options: PeerDialOptions): TdpPeerStore {
    const { hostname, port } = parsePeerUrl(address, this.scheme);
    return new TdpPeerStore(address, {
      ...options,
      network: this.#network,
      clock: this.#clock,
      hostname,
      port,
    });
  }

  listen(address: string, options: PeerServeOptions): Promise<TdpServer> {
    const { hostname, port } = parsePeerUrl(address, this.scheme);
    return Promise.resolve(TdpServer.listen(this.#network, hostname, port, {
      ...options,
      clock: this.#clock,
      frameTimeoutMs: this.#frameTimeoutMs,
    }));
  }
}
