/**
 * The FramePort of real links: an AF_PACKET socket (src/sys/packet_socket.ts) bound to one
 * network interface for EtherType 0x88A2, so the kernel hands over only AoE frames.
 *
 * Invariants (the FramePort contract of port.ts, plus):
 * - `mac` and `mtu` are the interface's when the port was opened; the receive buffer is sized
 *   for that MTU, and a frame longer than `mtu + 14` is refused by `send` with `invalid` and
 *   dropped (counted in {@link PacketFramePort.statistics}) when received.
 * - The kernel's receive queue is 8 MiB unless `receiveBufferBytes` says otherwise.
 * - Opening needs CAP_NET_RAW; without it `open` fails with a message saying so.
 * @module
 */

import {
  openPacketSocket,
  type PacketSocket,
  type PacketSocketOptions,
  type PacketSocketStatistics,
} from "../../sys/mod.ts";
import { AOE_ETHERTYPE, type FramePort } from "./port.ts";

/** Options of {@link PacketFramePort.open}. */
export type PacketFramePortOptions = PacketSocketOptions;

/** A FramePort over an AF_PACKET socket on one interface. See the module doc. */
export class PacketFramePort implements FramePort {
  readonly #socket: PacketSocket;

  private constructor(socket: PacketSocket) {
    this.#socket = socket;
  }

  /**
   * Opens the port on `interfaceName` (which must be an Ethernet interface that is up).
   * `not_exist` when there is no such interface.
   */
  static open(interfaceName: string, options: PacketFramePortOptions = {}): PacketFramePort {
    return new PacketFramePort(openPacketSocket(interfaceName, AOE_ETHERTYPE, options));
  }

  get name(): string {
    return this.#socket.interfaceName;
  }

  get mac(): Uint8Array {
    return this.#socket.mac;
  }

  get mtu(): number {
    return this.#socket.mtu;
  }

  /** The receive queue the kernel granted, in bytes. */
  get receiveBufferBytes(): number {
    return this.#socket.receiveBufferBytes;
  }

  send(frame: Uint8Array): Promise<void> {
    return this.#socket.send(frame);
  }

  receive(): Promise<Uint8Array | null> {
    return this.#socket.receive();
  }

  /** Frames queued and dropped since open (queue full, oversized, transmit queue full). */
  statistics(): PacketSocketStatistics {
    return this.#socket.statistics();
  }

  close(): Promise<void> {
    return this.#socket.close();
  }
}
