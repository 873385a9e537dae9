/**
 * The FramePort contract: the raw Ethernet link the AoE target and the test initiator talk over.
 * Implementations: an AF_PACKET socket bound to one interface for EtherType 0x88A2
 * (`packet_port.ts`, through Deno FFI to libc), and an in-memory pair of ports for unit tests
 * (`memory_port.ts`). One contract suite (`port_contract.ts`) runs over both.
 *
 * Contract:
 * - A frame is a whole Ethernet frame without the FCS: destination MAC (6 bytes), source MAC
 *   (6), EtherType (2, big-endian), payload. `send` puts the frame on the link as given: padding
 *   short frames to the 60-byte minimum is the sender's job (veth and tap do not pad, and real
 *   initiators drop short frames).
 * - `send` copies the frame before its promise settles; a frame longer than `mtu + 14` bytes is
 *   refused with `invalid` and nothing is sent.
 * - `receive` resolves with the next frame of EtherType 0x88A2 that reached the interface, in a
 *   buffer of its own (never reused), or null once the port is closed. Frames arriving while no
 *   `receive` is pending are queued (by the kernel's receive buffer, sized for bursts: at least
 *   8 MiB); when that overflows, frames are dropped, as on any Ethernet. Frames of other
 *   EtherTypes never come out.
 * - No call stalls the event loop: every wait is a poll on a worker thread or a non-blocking
 *   call.
 * - `close` ends a pending `receive` with null and releases the socket. Idempotent.
 * @module
 */

/** EtherType of ATA over Ethernet. */
export const AOE_ETHERTYPE = 0x88a2;
/** Bytes of the Ethernet header (destination, source, EtherType). */
export const ETHERNET_HEADER_BYTES = 14;
/** The smallest Ethernet frame without its FCS: shorter frames are padded with zeros. */
export const ETHERNET_MIN_FRAME_BYTES = 60;
/** The broadcast MAC address. */
export const BROADCAST_MAC: Uint8Array = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

/** A raw Ethernet link carrying AoE frames (see the module doc). */
export interface FramePort {
  /** The interface's name (`eth0`, `veth-a`, or a test name). */
  readonly name: string;
  /** The interface's MAC address (6 bytes). */
  readonly mac: Uint8Array;
  /** The interface's MTU: the most payload bytes a frame carries after the Ethernet header. */
  readonly mtu: number;
  /** Sends one whole Ethernet frame. */
  send(frame: Uint8Array): Promise<void>;
  /** The next AoE frame received, or null once the port is closed. */
  receive(): Promise<Uint8Array | null>;
  /** Stops receiving and releases the port. */
  close(): Promise<void>;
}
