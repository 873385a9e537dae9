/** Version of the program and of its wire protocols. @module */

/** Program version, printed by `torus version`. */
export const VERSION = "0.1.0-dev";
/** Peer protocol version announced in heartbeats and the TDP handshake. */
export const PROTOCOL_VERSION = 2;
/** Oldest peer protocol version this build can talk to. */
export const PROTOCOL_VERSION_MIN = 2;
