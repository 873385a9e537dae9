/**
 * gRPC, the alternative peer protocol (`http://host:port`): the original's TorusStorage service
 * extended with the calls of the peer protocol contract. service.ts has the methods and the
 * identity rules, server.ts answers from a local store, client.ts is a PeerStore of a remote one.
 * It runs over real TCP only (grpc-js opens its own sockets); simulations use TDP.
 * @module
 */

import {
  parsePeerUrl,
  type PeerDialOptions,
  type PeerProtocol,
  type PeerServeOptions,
} from "../protocol.ts";
import { GrpcPeerStore } from "./client.ts";
import { GrpcServer } from "./server.ts";

export { GrpcPeerStore } from "./client.ts";
export { GrpcServer } from "./server.ts";
export { GRPC_PROTOCOL_VERSION, IdentityKey, torusStorageService } from "./service.ts";

/** The TorusStorage service over grpc-js. */
export class GrpcProtocol implements PeerProtocol {
  readonly scheme = "http";

  dial(address: string, options: PeerDialOptions): GrpcPeerStore {
    const { hostname, port } = parsePeerUrl(address, this.scheme);
    return new GrpcPeerStore(address, { ...options, hostname, port });
  }

  listen(address: string, options: PeerServeOptions): Promise<GrpcServer> {
    const { hostname, port } = parsePeerUrl(address, this.scheme);
    return GrpcServer.listen(hostname, port, options);
  }
}
