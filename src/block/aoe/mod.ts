/**
 * ATA over Ethernet: the FramePort contract (port.ts) and its in-memory pair (memory_port.ts),
 * the codec (protocol.ts), the IDENTIFY DEVICE page (identify.ts), the target that serves a Device
 * (target.ts), a strict test initiator (initiator.ts), and the FramePort of real links over an
 * AF_PACKET socket (packet_port.ts).
 * @module
 */

export * from "./port.ts";
export * from "./protocol.ts";
export * from "./identify.ts";
export * from "./memory_port.ts";
export * from "./target.ts";
export * from "./initiator.ts";
export * from "./packet_port.ts";
