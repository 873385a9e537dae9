/**
 * The NBD protocol: the pure codec (protocol.ts), the network server (server.ts) and its export
 * providers (exports.ts), and the client (client.ts, client_handshake.ts) over any byte stream.
 * @module
 */

export * from "./client.ts";
export * from "./client_handshake.ts";
export * from "./errno.ts";
export * from "./exports.ts";
export * from "./protocol.ts";
export * from "./server.ts";
export * from "./stream.ts";
export * from "./attach.ts";
export * from "./kernel.ts";
export * from "./kernel_devices.ts";
export * from "./uri.ts";
