/**
 * TCP client sockets made through libc, for when the file descriptor itself is needed (kernel NBD
 * attach hands it to the kernel): name resolution, a non-blocking connect with a deadline, and
 * {@link FdSocket}, a byte stream over the descriptor with the shape of NBD's ByteStream.
 *
 * Invariants:
 * - The event loop never waits in a system call: the socket is non-blocking, recv/send are
 *   synchronous calls that return at once, and waiting for readiness is a `nonblocking` poll(2)
 *   on a worker thread.
 * - The descriptor is closed exactly once, and never while a poll on it is in flight (a reused
 *   descriptor number must not be polled): close() shuts the socket down, which wakes pollers,
 *   and the last one out closes it. {@link FdSocket.release} hands the descriptor over instead.
 * - Every wait has a deadline when the socket was made with `ioTimeoutMs`: a silent peer fails
 *   the call with `unavailable` instead of hanging.
 * @module
 */

import { type Clock, ErrorCode, systemClock, TorusError } from "../core/mod.ts";
import { Errno } from "./errno.ts";
import { pinned } from "./libc.ts";
import { callFailure, gaiStrerror, lastErrno, libcIo } from "./libc_io.ts";

/** Address families, socket types and options (Linux, x86-64 and arm64). */
export const SocketConsts = {
  AF_INET: 2,
  AF_INET6: 10,
  SOCK_STREAM: 1,
  SOCK_NONBLOCK: 0o4000,
  SOCK_CLOEXEC: 0o2000000,
  SOL_SOCKET: 1,
  SO_ERROR: 4,
  SO_KEEPALIVE: 9,
  IPPROTO_TCP: 6,
  TCP_NODELAY: 1,
  MSG_DONTWAIT: 0x40,
  MSG_NOSIGNAL: 0x4000,
  SHUT_RDWR: 2,
  F_GETFL: 3,
  F_SETFL: 4,
  O_NONBLOCK: 0o4000,
} as const;

const POLLIN = 0x001;
const POLLOUT = 0x004;
const POLLFD_BYTES = 8;
const ADDRINFO_BYTES = 48;
/** Offsets in `struct addrinfo` (x86-64 and arm64). */
const AddrinfoField = { family: 4, socktype: 8, addrlen: 16, addr: 24, next: 40 } as const;
const EAI_SYSTEM = -11;

/** A resolved socket address: the family and the raw `struct sockaddr_in`/`_in6` bytes. */
export interface SocketAddress {
  readonly family: number;
  readonly sockaddr: Uint8Array;
  /** The address as text (`127.0.0.1`, `::1`), for messages. */
  readonly text: string;
}

const encoder = new TextEncoder();

/**
 * Resolves `hostname` (a name, or an IPv4/IPv6 literal) for a TCP connection to `port`, through
 * getaddrinfo (so /etc/hosts counts), on a worker thread. `not_exist` when the name is unknown.
 */
export async function resolveTcp(hostname: string, port: number): Promise<SocketAddress[]> {
  const hints = pinned(new Uint8Array(ADDRINFO_BYTES));
  new DataView(hints.buffer).setInt32(AddrinfoField.socktype, SocketConsts.SOCK_STREAM, true);
  const resultPointer = pinned(new Uint8Array(8));
  const node = pinned(encoder.encode(`${hostname}\0`));
  const service = pinned(encoder.encode(`${port}\0`));
  const code = await libcIo().getaddrinfo(node, service, hints, resultPointer);
  if (code !== 0) {
    const why = code === EAI_SYSTEM ? "system error" : gaiStrerror(code);
    throw new TorusError(ErrorCode.NotExist, `cannot resolve host "${hostname}": ${why}`);
  }
  const list = Deno.UnsafePointer.create(
    new DataView(resultPointer.buffer).getBigUint64(0, true),
  );
  try {
    return readAddrinfoList(list);
  } finally {
    libcIo().freeaddrinfo(list);
  }
}

function readAddrinfoList(list: Deno.PointerValue): SocketAddress[] {
  const addresses: SocketAddress[] = [];
  for (let entry = list; entry !== null;) {
    const view = new Deno.UnsafePointerView(entry);
    const family = view.getInt32(AddrinfoField.family);
    const length = view.getUint32(AddrinfoField.addrlen);
    const addr = view.getPointer(AddrinfoField.addr);
    if ((family === SocketConsts.AF_INET || family === SocketConsts.AF_INET6) && addr !== null) {
      const sockaddr = new Uint8Array(length);
      new Deno.UnsafePointerView(addr).copyInto(sockaddr);
      addresses.push({ family, sockaddr, text: sockaddrText(family, sockaddr) });
    }
    entry = view.getPointer(AddrinfoField.next);
  }
  return addresses;
}

/** `a.b.c.d` or the full (uncompressed) IPv6 form, from a sockaddr's address bytes. */
function sockaddrText(family: number, sockaddr: Uint8Array): string {
  if (family === SocketConsts.AF_INET) return sockaddr.subarray(4, 8).join(".");
  const words: string[] = [];
  const view = new DataView(sockaddr.buffer, sockaddr.byteOffset + 8, 16);
  for (let i = 0; i < 8; i++) words.push(view.getUint16(i * 2).toString(16));
  return words.join(":");
}

/** Options of {@link connectTcp}. */
export interface ConnectOptions {
  /** Deadline of the connect and of every later wait for the peer (0 = none). */
  readonly ioTimeoutMs: number;
  readonly clock?: Clock;
}

/**
 * Connects to `hostname:port`, trying each resolved address in turn; the socket has TCP_NODELAY
 * and SO_KEEPALIVE set. `unavailable` naming the last address's error when none accepts.
 */
export async function connectTcp(
  hostname: string,
  port: number,
  options: ConnectOptions,
): Promise<FdSocket> {
  const addresses = await resolveTcp(hostname, port);
  if (addresses.length === 0) {
    throw new TorusError(ErrorCode.NotExist, `host "${hostname}" has no IPv4 or IPv6 address`);
  }
  let lastError: unknown = null;
  for (const address of addresses) {
    try {
      return await connectAddress(address, port, options);
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

async function connectAddress(
  address: SocketAddress,
  port: number,
  options: ConnectOptions,
): Promise<FdSocket> {
  const io = libcIo();
  const type = SocketConsts.SOCK_STREAM | SocketConsts.SOCK_NONBLOCK | SocketConsts.SOCK_CLOEXEC;
  const fd = io.socket(address.family, type, 0);
  if (fd < 0) throw callFailure("socket", `family ${address.family}`);
  const socket = new FdSocket(fd, { ...options, peer: `${address.text} port ${port}` });
  try {
    setIntOption(fd, SocketConsts.IPPROTO_TCP, SocketConsts.TCP_NODELAY, 1);
    setIntOption(fd, SocketConsts.SOL_SOCKET, SocketConsts.SO_KEEPALIVE, 1);
    if (io.connect(fd, address.sockaddr, address.sockaddr.length) !== 0) {
      const errno = lastErrno();
      if (errno !== Errno.EINPROGRESS) throw connectFailure(socket.peer, errno);
      await socket.waitReady(POLLOUT);
      const pending = getIntOption(fd, SocketConsts.SOL_SOCKET, SocketConsts.SO_ERROR);
      if (pending !== 0) throw connectFailure(socket.peer, pending);
    }
    return socket;
  } catch (error) {
    socket.close();
    throw error;
  }
}

function connectFailure(peer: string, errno: number): TorusError {
  const error = callFailure("connect", peer, errno);
  return new TorusError(ErrorCode.Unavailable, `cannot connect to ${peer}: ${error.message}`, {
    cause: error,
  });
}

function setIntOption(fd: number, level: number, name: number, value: number): void {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setInt32(0, value, true);
  if (libcIo().setsockopt(fd, level, name, bytes, 4) !== 0) {
    throw callFailure("setsockopt", `fd ${fd}, option ${name}`);
  }
}

function getIntOption(fd: number, level: number, name: number): number {
  const bytes = new Uint8Array(4);
  const length = new Uint8Array(4);
  new DataView(length.buffer).setUint32(0, 4, true);
  if (libcIo().getsockopt(fd, level, name, bytes, length) !== 0) {
    throw callFailure("getsockopt", `fd ${fd}, option ${name}`);
  }
  return new DataView(bytes.buffer).getInt32(0, true);
}

/**
 * A connected non-blocking TCP socket as a byte stream (read, write, close: NBD's ByteStream).
 * See the module doc for its invariants.
 */
export class FdSocket {
  /** `ADDRESS port N`, for messages. */
  readonly peer: string;
  readonly #fd: number;
  readonly #ioTimeoutMs: number;
  readonly #clock: Clock;
  #polling = 0;
  #state: "open" | "closing" | "closed" | "released" = "open";

  constructor(fd: number, options: ConnectOptions & { peer: string }) {
    this.#fd = fd;
    this.peer = options.peer;
    this.#ioTimeoutMs = options.ioTimeoutMs;
    this.#clock = options.clock ?? systemClock;
  }

  /** Reads into `into`: the bytes read (at least 1), or null when the peer closed. */
  async read(into: Uint8Array): Promise<number | null> {
    if (into.length === 0) return 0;
    for (;;) {
      this.#checkOpen();
      const flags = SocketConsts.MSG_DONTWAIT;
      const n = Number(libcIo().recv(this.#fd, into, BigInt(into.length), flags));
      if (n > 0) return n;
      if (n === 0) return null;
      const errno = lastErrno();
      if (errno === Errno.EAGAIN) await this.waitReady(POLLIN);
      else if (errno !== Errno.EINTR) throw this.#ioFailure("recv", errno);
    }
  }

  /** Writes some of `data`: the bytes written (at least 1). */
  async write(data: Uint8Array): Promise<number> {
    if (data.length === 0) return 0;
    for (;;) {
      this.#checkOpen();
      const flags = SocketConsts.MSG_DONTWAIT | SocketConsts.MSG_NOSIGNAL;
      const n = Number(libcIo().send(this.#fd, data, BigInt(data.length), flags));
      if (n >= 0) return n;
      const errno = lastErrno();
      if (errno === Errno.EAGAIN) await this.waitReady(POLLOUT);
      else if (errno !== Errno.EINTR) throw this.#ioFailure("send", errno);
    }
  }

  /** Shuts the connection down (waking any wait) and closes the descriptor. Idempotent. */
  close(): void {
    if (this.#state !== "open") return;
    this.#state = "closing";
    libcIo().shutdown(this.#fd, SocketConsts.SHUT_RDWR);
    if (this.#polling === 0) this.#closeFd();
  }

  /**
   * Gives up the descriptor, in blocking mode, to a new owner (the kernel, through
   * NBD_SET_SOCK); this object no longer reads, writes or closes it. No wait may be in flight.
   */
  release(): number {
    if (this.#state !== "open" || this.#polling > 0) {
      throw new TorusError(ErrorCode.Closed, `socket to ${this.peer} is closed or busy`);
    }
    const flags = libcIo().fcntl_int(this.#fd, SocketConsts.F_GETFL, 0n);
    if (flags < 0) throw callFailure("fcntl", `fd ${this.#fd}, F_GETFL`);
    const blocking = BigInt(flags & ~SocketConsts.O_NONBLOCK);
    if (libcIo().fcntl_int(this.#fd, SocketConsts.F_SETFL, blocking) < 0) {
      throw callFailure("fcntl", `fd ${this.#fd}, F_SETFL`);
    }
    this.#state = "released";
    return this.#fd;
  }

  /**
   * Waits until the socket is ready for `events` (POLLIN, POLLOUT), it failed or hung up (the
   * next call then reports why), or it is closed; `unavailable` after the I/O timeout.
   */
  async waitReady(events: number): Promise<void> {
    const pollfd = pinned(new Uint8Array(POLLFD_BYTES));
    const view = new DataView(pollfd.buffer);
    view.setInt32(0, this.#fd, true);
    view.setInt16(4, events, true);
    const deadlineMs = this.#ioTimeoutMs > 0 ? this.#clock.nowMs() + this.#ioTimeoutMs : null;
    for (;;) {
      const waitMs = deadlineMs === null ? -1 : Math.max(0, deadlineMs - this.#clock.nowMs());
      this.#polling++;
      let ready: number;
      try {
        ready = await libcIo().poll(pollfd, 1n, waitMs);
      } finally {
        this.#polling--;
        if (this.#state === "closing" && this.#polling === 0) this.#closeFd();
      }
      this.#checkOpen();
      // -1 is EINTR or a descriptor error; either way the caller's next call tells.
      if (ready !== 0) return;
      if (deadlineMs !== null && this.#clock.nowMs() >= deadlineMs) {
        throw new TorusError(
          ErrorCode.Unavailable,
          `no answer from ${this.peer} within ${this.#ioTimeoutMs} ms`,
        );
      }
    }
  }

  #checkOpen(): void {
    if (this.#state !== "open") {
      throw new TorusError(ErrorCode.Closed, `connection to ${this.peer} is closed`);
    }
  }

  #closeFd(): void {
    this.#state = "closed";
    // A socket's close cannot lose data that matters here (the peer has it or never will).
    libcIo().close(this.#fd);
  }

  #ioFailure(call: string, errno: number): TorusError {
    const error = callFailure(call, this.peer, errno);
    const code = errno === Errno.ECONNRESET || errno === Errno.EPIPE
      ? ErrorCode.Closed
      : ErrorCode.Unavailable;
    return new TorusError(code, `connection to ${this.peer} failed: ${error.message}`, {
      cause: error,
    });
  }
}
