/**
 * Raw Ethernet frames through libc: {@link PacketSocket} is an AF_PACKET SOCK_RAW socket bound to
 * one network interface for one EtherType (the AoE FramePort is built on it). A frame is a whole
 * Ethernet frame without the FCS: destination MAC, source MAC, EtherType, payload.
 *
 * Invariants:
 * - The event loop never waits in a system call: the socket is non-blocking, recv/send are
 *   synchronous calls that return at once, and waiting for readiness is a `nonblocking` poll(2)
 *   on a worker thread. Opening makes only calls that return at once (name lookup, ioctls, bind).
 * - The interface must be an Ethernet interface that is up when the socket is opened; its MAC
 *   and MTU are read then, once.
 * - Only frames of the bound EtherType that reached the bound interface are queued: the socket is
 *   made with protocol 0, which queues nothing, and starts receiving at bind, so no frame of
 *   another interface slips in between socket() and bind().
 * - A received frame comes out whole, in a fresh buffer, or not at all: the receive buffer holds
 *   MTU + 14 bytes and recv is given MSG_TRUNC (it then returns the frame's real length), so a
 *   longer frame (the MTU was raised after open) is dropped and counted instead of returned cut.
 * - The kernel's receive queue is raised to 8 MiB by default with SO_RCVBUFFORCE (SO_RCVBUF,
 *   capped by net.core.rmem_max, without CAP_NET_ADMIN): the default of ~208 KiB overflows on a
 *   burst of about a hundred full-size frames.
 * - The descriptors are closed exactly once, and never while a poll on them is in flight (a
 *   reused descriptor number must not be polled). An AF_PACKET socket cannot be shut down
 *   (shutdown(2) fails with EOPNOTSUPP), so every poll also watches an eventfd that close()
 *   signals; the last poller out closes both descriptors.
 * - Errors are TorusErrors naming the call and errno. The link going down (or the interface
 *   being deleted) fails the pending receive or the send with `unavailable` once; the socket
 *   stays open and frames flow again once the link is back up. A full transmit queue (ENOBUFS)
 *   drops the frame, as an Ethernet switch would, and counts it.
 * @module
 */

import { assert, ErrorCode, TorusError } from "../core/mod.ts";
import { Errno } from "./errno.ts";
import { ioctl } from "./ioctl.ts";
import { pinned } from "./libc.ts";
import { callFailure, lastErrno, libcIo } from "./libc_io.ts";
import { SocketConsts } from "./socket.ts";

/** Constants of AF_PACKET sockets and interface ioctls (Linux, x86-64 and arm64). */
export const PacketConsts = {
  AF_PACKET: 17,
  SOCK_RAW: 3,
  SO_RCVBUF: 8,
  SO_RCVBUFFORCE: 33,
  SOL_PACKET: 263,
  PACKET_STATISTICS: 6,
  MSG_TRUNC: 0x20,
  SIOCGIFFLAGS: 0x8913,
  SIOCGIFMTU: 0x8921,
  SIOCGIFHWADDR: 0x8927,
  IFF_UP: 0x1,
  ARPHRD_ETHER: 1,
  EFD_NONBLOCK: 0o4000,
  EFD_CLOEXEC: 0o2000000,
} as const;

/** Bytes of an Ethernet header: destination MAC, source MAC, EtherType. */
const ETHERNET_HEADER_BYTES = 14;
/** Receive queue asked for when none is given (see the module doc). */
export const DEFAULT_RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024;
/** The largest receive queue that can be asked for (the kernel doubles an int). */
const RECEIVE_BUFFER_BYTES_MAX = 2 ** 30 - 1;
/** Longest interface name plus its NUL (IFNAMSIZ). */
const IFNAMSIZ = 16;
/** `struct ifreq`: the name, then a union at offset 16 (an int, or a struct sockaddr). */
const IFREQ_BYTES = 40;
const IFREQ_UNION_OFFSET = 16;
/** `struct sockaddr_ll`: family u16, protocol u16 (big-endian), ifindex i32, then unused here. */
const SOCKADDR_LL_BYTES = 20;
/** `struct tpacket_stats`: tp_packets u32, tp_drops u32. */
const TPACKET_STATS_BYTES = 8;
const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLFD_BYTES = 8;
const POLL_FOREVER = -1;
/** The smallest EtherType: lower values of that field are 802.3 frame lengths. */
const ETHERTYPE_MIN = 0x0600;

/** The calls libc_io.ts does not have: interface lookup, bind, and the eventfd that wakes polls. */
const symbols = {
  if_nametoindex: { parameters: ["buffer"], result: "u32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  eventfd_write: { parameters: ["i32", "u64"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof symbols> | null = null;

/** The symbols, opened on first use (so modules that never call them need no --allow-ffi). */
function packetLibc(): Deno.DynamicLibrary<typeof symbols>["symbols"] {
  library ??= Deno.dlopen("libc.so.6", symbols);
  return library.symbols;
}

/** Options of {@link openPacketSocket}. */
export interface PacketSocketOptions {
  /** Receive queue to ask the kernel for (default {@link DEFAULT_RECEIVE_BUFFER_BYTES}). */
  readonly receiveBufferBytes?: number;
}

/** Frame counts of a {@link PacketSocket} since it was opened. */
export interface PacketSocketStatistics {
  /** Frames the kernel queued for this socket (PACKET_STATISTICS). */
  readonly framesQueued: number;
  /** Frames the kernel dropped because the receive queue was full. */
  readonly framesDroppedQueueFull: number;
  /** Frames longer than the receive buffer (MTU + 14), dropped rather than returned cut. */
  readonly framesDroppedOversized: number;
  /** Frames the interface's transmit queue refused (ENOBUFS), dropped. */
  readonly framesDroppedOnSend: number;
}

const encoder = new TextEncoder();

/**
 * Opens an AF_PACKET socket on `interfaceName` receiving frames of `etherType` (see the module
 * doc). `not_exist` when there is no such interface; `invalid` without CAP_NET_RAW; `unavailable`
 * when the interface is down; `not_supported` when it is not Ethernet.
 */
export function openPacketSocket(
  interfaceName: string,
  etherType: number,
  options: PacketSocketOptions = {},
): PacketSocket {
  checkInterfaceName(interfaceName);
  checkEtherType(etherType);
  const askedBufferBytes = options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER_BYTES;
  checkReceiveBufferBytes(askedBufferBytes);
  const interfaceIndex = interfaceIndexOf(interfaceName);
  const fd = createPacketSocket();
  let wakeFd = -1;
  try {
    const link = readLink(fd, interfaceName);
    const receiveBufferBytes = setReceiveBuffer(fd, askedBufferBytes);
    bindToInterface(fd, interfaceName, interfaceIndex, etherType);
    wakeFd = createWakeFd();
    return new PacketSocket({
      fd,
      wakeFd,
      interfaceName,
      interfaceIndex,
      etherType,
      receiveBufferBytes,
      ...link,
    });
  } catch (error) {
    libcIo().close(fd);
    if (wakeFd >= 0) libcIo().close(wakeFd);
    throw error;
  }
}

function checkInterfaceName(name: string): void {
  const bytes = encoder.encode(name).length;
  if (bytes === 0 || bytes >= IFNAMSIZ || /[\0/\s]/.test(name)) {
    throw new TorusError(
      ErrorCode.Invalid,
      `"${name}" is not an interface name (1-${IFNAMSIZ - 1} bytes, no spaces or slashes)`,
    );
  }
}

function checkEtherType(etherType: number): void {
  if (Number.isInteger(etherType) && etherType >= ETHERTYPE_MIN && etherType <= 0xffff) return;
  throw new TorusError(ErrorCode.Invalid, `EtherType ${etherType} is not in 0x0600-0xffff`);
}

function checkReceiveBufferBytes(bytes: number): void {
  // The kernel takes an int and doubles it.
  if (Number.isSafeInteger(bytes) && bytes > 0 && bytes <= RECEIVE_BUFFER_BYTES_MAX) return;
  throw new TorusError(
    ErrorCode.Invalid,
    `a receive buffer of ${bytes} bytes is not in 1-${RECEIVE_BUFFER_BYTES_MAX}`,
  );
}

function interfaceIndexOf(name: string): number {
  const index = packetLibc().if_nametoindex(encoder.encode(`${name}\0`));
  if (index !== 0) return index;
  const error = callFailure("if_nametoindex", name);
  if (error.errno !== Errno.ENODEV) throw error;
  throw new TorusError(ErrorCode.NotExist, `no such interface ${name}: ${error.message}`, {
    cause: error,
  });
}

function createPacketSocket(): number {
  const type = PacketConsts.SOCK_RAW | SocketConsts.SOCK_NONBLOCK | SocketConsts.SOCK_CLOEXEC;
  const fd = libcIo().socket(PacketConsts.AF_PACKET, type, 0);
  if (fd >= 0) return fd;
  const error = callFailure("socket", "AF_PACKET, SOCK_RAW");
  if (error.errno !== Errno.EPERM && error.errno !== Errno.EACCES) throw error;
  throw new TorusError(
    error.code,
    `AF_PACKET needs CAP_NET_RAW (run as root or grant the capability): ${error.message}`,
    { cause: error },
  );
}

/** What the interface's ioctls tell: its MAC address and MTU. */
interface LinkFacts {
  readonly mac: Uint8Array;
  readonly mtu: number;
}

function readLink(fd: number, name: string): LinkFacts {
  const flags = interfaceRequest(fd, name, PacketConsts.SIOCGIFFLAGS, "SIOCGIFFLAGS");
  // Bound to a down interface, the socket would get nothing and its first recv would fail.
  if ((flags.getInt16(IFREQ_UNION_OFFSET, true) & PacketConsts.IFF_UP) === 0) {
    throw new TorusError(ErrorCode.Unavailable, `interface ${name} is down`);
  }
  const hardware = interfaceRequest(fd, name, PacketConsts.SIOCGIFHWADDR, "SIOCGIFHWADDR");
  const hardwareType = hardware.getUint16(IFREQ_UNION_OFFSET, true);
  if (hardwareType !== PacketConsts.ARPHRD_ETHER) {
    throw new TorusError(
      ErrorCode.NotSupported,
      `interface ${name} is not Ethernet (hardware type ${hardwareType})`,
    );
  }
  const macOffset = hardware.byteOffset + IFREQ_UNION_OFFSET + 2;
  const mac = new Uint8Array(hardware.buffer.slice(macOffset, macOffset + 6));
  const mtuRequest = interfaceRequest(fd, name, PacketConsts.SIOCGIFMTU, "SIOCGIFMTU");
  return { mac, mtu: mtuRequest.getInt32(IFREQ_UNION_OFFSET, true) };
}

/** One interface ioctl on a `struct ifreq` naming `name`; returns the filled-in struct. */
function interfaceRequest(fd: number, name: string, request: number, what: string): DataView {
  const ifreq = pinned(new Uint8Array(IFREQ_BYTES));
  ifreq.set(encoder.encode(name));
  const address = Deno.UnsafePointer.value(Deno.UnsafePointer.of(ifreq));
  ioctl(fd, request, address, `${what} of ${name}`);
  return new DataView(ifreq.buffer, ifreq.byteOffset, ifreq.byteLength);
}

/** Sets the receive queue; returns the size the kernel reports (twice the request: overhead). */
function setReceiveBuffer(fd: number, bytes: number): number {
  let errno = trySetIntOption(fd, SocketConsts.SOL_SOCKET, PacketConsts.SO_RCVBUFFORCE, bytes);
  // SO_RCVBUFFORCE needs CAP_NET_ADMIN; plain SO_RCVBUF still works, capped at rmem_max.
  if (errno === Errno.EPERM) {
    errno = trySetIntOption(fd, SocketConsts.SOL_SOCKET, PacketConsts.SO_RCVBUF, bytes);
  }
  if (errno !== 0) throw callFailure("setsockopt", `fd ${fd}, SO_RCVBUF ${bytes}`, errno);
  const value = new DataView(new ArrayBuffer(4));
  getOption(fd, SocketConsts.SOL_SOCKET, PacketConsts.SO_RCVBUF, value);
  return value.getInt32(0, true);
}

/** setsockopt(2) of an int: 0, or the errno it failed with. */
function trySetIntOption(fd: number, level: number, name: number, value: number): number {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  return libcIo().setsockopt(fd, level, name, bytes, bytes.length) === 0 ? 0 : lastErrno();
}

/** getsockopt(2) into all of `into`. */
function getOption(fd: number, level: number, name: number, into: DataView): void {
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, into.byteLength, true);
  const bytes = new Uint8Array(into.buffer, into.byteOffset, into.byteLength);
  if (libcIo().getsockopt(fd, level, name, bytes, length) !== 0) {
    throw callFailure("getsockopt", `fd ${fd}, option ${name}`);
  }
}

function bindToInterface(fd: number, name: string, index: number, etherType: number): void {
  const address = new Uint8Array(SOCKADDR_LL_BYTES);
  const view = new DataView(address.buffer);
  view.setUint16(0, PacketConsts.AF_PACKET, true);
  view.setUint16(2, etherType, false); // network byte order
  view.setInt32(4, index, true);
  if (packetLibc().bind(fd, address, address.length) !== 0) {
    throw callFailure("bind", `${name} (index ${index}), EtherType 0x${etherType.toString(16)}`);
  }
}

function createWakeFd(): number {
  const flags = PacketConsts.EFD_NONBLOCK | PacketConsts.EFD_CLOEXEC;
  const fd = packetLibc().eventfd(0, flags);
  if (fd < 0) throw callFailure("eventfd", "wake descriptor");
  return fd;
}

/** What {@link openPacketSocket} found and made, handed to the socket. */
interface PacketSocketParts extends LinkFacts {
  readonly fd: number;
  readonly wakeFd: number;
  readonly interfaceName: string;
  readonly interfaceIndex: number;
  readonly etherType: number;
  readonly receiveBufferBytes: number;
}

/** An AF_PACKET socket bound to one interface and EtherType. See the module doc. */
export class PacketSocket {
  readonly interfaceName: string;
  readonly interfaceIndex: number;
  readonly etherType: number;
  /** The interface's MAC address when the socket was opened (6 bytes). */
  readonly mac: Uint8Array;
  /** The interface's MTU when the socket was opened. */
  readonly mtu: number;
  /** The receive queue the kernel granted (it reports twice the bytes asked for). */
  readonly receiveBufferBytes: number;
  readonly #fd: number;
  readonly #wakeFd: number;
  /** Reused by every recv: recv is synchronous, so no two calls share it at once. */
  readonly #receiveBuffer: Uint8Array;
  readonly #closed = Promise.withResolvers<void>();
  #polling = 0;
  #state: "open" | "closing" | "closed" = "open";
  #framesQueued = 0;
  #framesDroppedQueueFull = 0;
  #framesDroppedOversized = 0;
  #framesDroppedOnSend = 0;

  constructor(parts: PacketSocketParts) {
    this.#fd = parts.fd;
    this.#wakeFd = parts.wakeFd;
    this.interfaceName = parts.interfaceName;
    this.interfaceIndex = parts.interfaceIndex;
    this.etherType = parts.etherType;
    this.mac = parts.mac;
    this.mtu = parts.mtu;
    this.receiveBufferBytes = parts.receiveBufferBytes;
    this.#receiveBuffer = pinned(new Uint8Array(parts.mtu + ETHERNET_HEADER_BYTES));
  }

  /** The longest frame this socket sends or receives: MTU + the Ethernet header. */
  get frameBytesMax(): number {
    return this.mtu + ETHERNET_HEADER_BYTES;
  }

  /**
   * Sends one whole frame. `invalid` (nothing sent) when it is shorter than an Ethernet header or
   * longer than {@link frameBytesMax}; `closed` after close.
   */
  async send(frame: Uint8Array): Promise<void> {
    this.#checkFrameLength(frame);
    for (;;) {
      this.#checkOpen();
      const n = Number(libcIo().send(this.#fd, frame, BigInt(frame.length), sendFlags));
      if (n >= 0) {
        assert(n === frame.length, `AF_PACKET sent ${n} of ${frame.length} bytes`);
        return;
      }
      const errno = lastErrno();
      if (errno === Errno.EAGAIN) await this.#waitReady(POLLOUT);
      else if (errno === Errno.ENOBUFS) {
        this.#framesDroppedOnSend++;
        return;
      } else if (errno !== Errno.EINTR) throw this.#ioFailure("send", errno);
    }
  }

  /** The next frame received, in a buffer of its own; null once the socket is closed. */
  async receive(): Promise<Uint8Array | null> {
    const buffer = this.#receiveBuffer;
    for (;;) {
      if (this.#state !== "open") return null;
      const n = Number(libcIo().recv(this.#fd, buffer, BigInt(buffer.length), receiveFlags));
      if (n > buffer.length) this.#framesDroppedOversized++;
      else if (n >= 0) return buffer.slice(0, n);
      else {
        const errno = lastErrno();
        if (errno === Errno.EAGAIN) await this.#waitReady(POLLIN);
        else if (errno !== Errno.EINTR) throw this.#ioFailure("recv", errno);
      }
    }
  }

  /** Frame counts since open; reads the kernel's counters (which reset on every read). */
  statistics(): PacketSocketStatistics {
    if (this.#state === "open") this.#collectKernelStatistics();
    return {
      framesQueued: this.#framesQueued,
      framesDroppedQueueFull: this.#framesDroppedQueueFull,
      framesDroppedOversized: this.#framesDroppedOversized,
      framesDroppedOnSend: this.#framesDroppedOnSend,
    };
  }

  /**
   * Ends every pending receive with null and closes the descriptors, at once or as soon as the
   * polls in flight return; resolves when they are closed. Idempotent.
   */
  close(): Promise<void> {
    if (this.#state === "open") {
      this.#state = "closing";
      if (this.#polling === 0) this.#closeDescriptors();
      else {
        // The eventfd stays readable from now on, so every poll in flight returns at once.
        const result = packetLibc().eventfd_write(this.#wakeFd, 1n);
        assert(result === 0, "eventfd_write on the wake descriptor failed");
      }
    }
    return this.#closed.promise;
  }

  /** Waits until the socket is ready for `events`, has an error, or close() was called. */
  async #waitReady(events: number): Promise<void> {
    const pollfds = pinned(new Uint8Array(2 * POLLFD_BYTES));
    const view = new DataView(pollfds.buffer);
    view.setInt32(0, this.#fd, true);
    view.setInt16(4, events, true);
    view.setInt32(POLLFD_BYTES, this.#wakeFd, true);
    view.setInt16(POLLFD_BYTES + 4, POLLIN, true);
    this.#polling++;
    try {
      // -1 (EINTR) or an error event: the caller's next call tells what happened.
      await libcIo().poll(pollfds, 2n, POLL_FOREVER);
    } finally {
      this.#polling--;
      if (this.#state === "closing" && this.#polling === 0) this.#closeDescriptors();
    }
  }

  #collectKernelStatistics(): void {
    const stats = new DataView(new ArrayBuffer(TPACKET_STATS_BYTES));
    getOption(this.#fd, PacketConsts.SOL_PACKET, PacketConsts.PACKET_STATISTICS, stats);
    // The kernel's tp_packets counts the dropped frames too.
    const dropped = stats.getUint32(4, true);
    this.#framesQueued += stats.getUint32(0, true) - dropped;
    this.#framesDroppedQueueFull += dropped;
  }

  #checkFrameLength(frame: Uint8Array): void {
    if (frame.length >= ETHERNET_HEADER_BYTES && frame.length <= this.frameBytesMax) return;
    throw new TorusError(
      ErrorCode.Invalid,
      `a ${frame.length}-byte frame does not fit ${this.interfaceName}: ` +
        `frames take ${ETHERNET_HEADER_BYTES} to ${this.frameBytesMax} bytes (MTU ${this.mtu})`,
    );
  }

  #checkOpen(): void {
    if (this.#state !== "open") {
      throw new TorusError(ErrorCode.Closed, `packet socket on ${this.interfaceName} is closed`);
    }
  }

  #closeDescriptors(): void {
    this.#state = "closed";
    try {
      this.#collectKernelStatistics();
    } catch {
      // Only the last counts are lost; closing must go on.
    }
    libcIo().close(this.#fd);
    libcIo().close(this.#wakeFd);
    this.#closed.resolve();
  }

  #ioFailure(call: string, errno: number): TorusError {
    const error = callFailure(call, this.interfaceName, errno);
    if (errno !== Errno.ENETDOWN && errno !== Errno.ENXIO) return error;
    return new TorusError(
      ErrorCode.Unavailable,
      `interface ${this.interfaceName} is down or gone: ${error.message}`,
      { cause: error },
    );
  }
}

const sendFlags = SocketConsts.MSG_DONTWAIT;
/** MSG_TRUNC: recv returns the frame's real length even when the buffer was too short. */
const receiveFlags = SocketConsts.MSG_DONTWAIT | PacketConsts.MSG_TRUNC;
