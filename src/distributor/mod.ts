/**
 * The distributor: a BlockStore over the cluster (distributor.ts), the peers it reaches
 * (peer_directory.ts) and the peer protocols it reaches them by (protocols/: TDP, gRPC).
 * @module
 */

export * from "./distributor.ts";
export * from "./levels.ts";
export * from "./peer_directory.ts";
export * from "./read_cache.ts";
export * from "./rebalancer.ts";
export * from "./scrubber.ts";
export * from "./stale_marks.ts";
export * from "./stats.ts";
export * from "./protocols/network.ts";
export * from "./protocols/protocol.ts";
export { TdpPeerStore, TdpProtocol, TdpServer } from "./protocols/tdp/mod.ts";
export { GrpcPeerStore, GrpcProtocol, GrpcServer } from "./protocols/grpc/mod.ts";
