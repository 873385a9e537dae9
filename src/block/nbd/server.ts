/**
 * The NBD network server: serves the devices of an {@link NbdExports} provider to any NBD client
 * (qemu, libnbd tools, nbd-client, the kernel through `torus blk attach`) over TCP and Unix
 * sockets.
 *
 * Public API: `new NbdServer({ exports })` (an {@link NbdExports} provider, exports.ts), then
 * `listen({ hostname, port })` for TCP (default 127.0.0.1:10809, port 0 picks a free one) and
 * `listenUnix(path)`, as many listeners as wanted; `stats` (NbdServerStats) are live counters;
 * `close()` stops, answers what is in flight and closes the devices.
 * @example
 * ```ts
 * import { DeviceHandle, MemoryDevice, NbdServer, SharedExports } from "../mod.ts";
 * const scratch = new MemoryDevice({ sizeBytes: 1024 * 1024 });
 * const exports = new SharedExports({
 *   list: () => Promise.resolve(["scratch"]),
 *   open: () => Promise.resolve(new DeviceHandle(scratch, () => Promise.resolve())),
 * });
 * await using server = new NbdServer({ exports });
 * const { port } = server.listen({ hostname: "127.0.0.1", port: 0 });
 * console.log(port > 0, server.stats.connectionsOpen); // true 0
 * ```
 * `serve(stream)` serves one already-connected {@link ByteStream} (tests, socketpairs).
 *
 * Behaviour: fixed newstyle handshake with NO_ZEROES, structured replies and the
 * `base:allocation` metadata context when a client asks for them (server_handshake.ts);
 * transmission with many requests in flight per connection, answered out of order, sparse
 * structured reads and NBD_CMD_BLOCK_STATUS from the device's extents (transmission.ts). Each
 * connection opens its export through the provider and closes that device when it ends, so
 * several connections to one export share the provider's device. A malformed or vanished client
 * ends only its own connection. `close()` stops accepting, refuses further options with
 * NBD_REP_ERR_SHUTDOWN and further requests with ESHUTDOWN, waits until every request in flight
 * is answered, then closes the connections and their devices.
 * @module
 */

import {
  type Clock,
  ErrorCode,
  errorMessage,
  isTorusError,
  type Logger,
  logger,
  NBD_BUFFER_POOL_RETAINED_BYTES_MAX,
  NBD_CLOSE_GRACE_MS,
  NBD_CONNECTION_BUFFERED_BYTES_MAX,
  NBD_HANDSHAKE_TIMEOUT_MS,
  NBD_REQUESTS_IN_FLIGHT_MAX,
  systemClock,
} from "../../core/mod.ts";
import { acceptEach } from "../../distributor/mod.ts";
import { BufferPool } from "./buffer_pool.ts";
import type { NbdExports } from "./exports.ts";
import { type NegotiatedExport, serverHandshake } from "./server_handshake.ts";
import { type ByteStream, connStream, StreamReader } from "./stream.ts";
import { type NbdServerStats, newServerStats, Transmission } from "./transmission.ts";

export { NBD_COMMAND_LABELS, type NbdServerStats } from "./transmission.ts";

/** Accept failures are logged at most this often (they are retried every 100 ms). */
const ACCEPT_ERROR_LOG_INTERVAL_MS = 10_000;

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /** Where exports come from. */
  exports: NbdExports;
  /** Serve every export read-only. */
  readOnly?: boolean;
  /** Time source for the handshake deadline. */
  clock?: Clock;
  /** A client must finish option haggling within this (default NBD_HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  /**
   * `close()` lets connections receive their replies for this long, then closes them anyway
   * (default NBD_CLOSE_GRACE_MS).
   */
  closeGraceMs?: number;
  /** Requests in flight per connection (default NBD_REQUESTS_IN_FLIGHT_MAX). */
  requestsInFlightMax?: number;
  /** Payload and reply bytes held per connection (default NBD_CONNECTION_BUFFERED_BYTES_MAX). */
  bufferedBytesMax?: number;
  log?: Logger;
}

/** Read buffer of a connection: the handshake's, then the transmission's input buffer. */
const INPUT_BUFFER_BYTES = 256 * 1024;

interface Connection {
  stream: ByteStream;
  transmission: Transmission | null;
}

/** An NBD server. */
export class NbdServer implements AsyncDisposable {
  /** Counters, updated live. */
  readonly stats: NbdServerStats = newServerStats();
  readonly #exports: NbdExports;
  readonly #readOnly: boolean;
  readonly #clock: Clock;
  readonly #handshakeTimeoutMs: number;
  readonly #closeGraceMs: number;
  readonly #requestsInFlightMax: number;
  readonly #bufferedBytesMax: number;
  readonly #log: Logger;
  readonly #pool = new BufferPool({ retainedBytesMax: NBD_BUFFER_POOL_RETAINED_BYTES_MAX });
  readonly #listeners: { listener: Deno.Listener; unixPath: string | null }[] = [];
  readonly #accepting: Promise<void>[] = [];
  readonly #connections = new Map<Connection, Promise<void>>();
  #closing: Promise<void> | null = null;

  constructor(options: NbdServerOptions) {
    this.#exports = options.exports;
    this.#readOnly = options.readOnly ?? false;
    this.#clock = options.clock ?? systemClock;
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs ?? NBD_HANDSHAKE_TIMEOUT_MS;
    this.#closeGraceMs = options.closeGraceMs ?? NBD_CLOSE_GRACE_MS;
    this.#requestsInFlightMax = options.requestsInFlightMax ?? NBD_REQUESTS_IN_FLIGHT_MAX;
    this.#bufferedBytesMax = options.bufferedBytesMax ?? NBD_CONNECTION_BUFFERED_BYTES_MAX;
    this.#log = options.log ?? logger("nbd");
  }

  /** Listens on TCP (default 127.0.0.1:10809) and returns the bound address. */
  listen(options: { hostname?: string; port?: number } = {}): Deno.NetAddr {
    const listener = Deno.listen({
      hostname: options.hostname ?? "127.0.0.1",
      port: options.port ?? 10809,
      transport: "tcp",
    });
    this.#accept(listener, null);
    return listener.addr;
  }

  /** Listens on a Unix socket at `path` (removed again by {@link close}). */
  listenUnix(path: string): Deno.UnixAddr {
    const listener = Deno.listen({ path, transport: "unix" });
    this.#accept(listener, path);
    return listener.addr;
  }

  /** Serves one connected stream until it ends. */
  async serve(stream: ByteStream): Promise<void> {
    if (this.#closing) {
      closeQuietly(stream);
      return;
    }
    const connection: Connection = { stream, transmission: null };
    const served = this.#serveConnection(connection);
    this.#connections.set(connection, served);
    try {
      await served;
    } finally {
      this.#connections.delete(connection);
    }
  }

  /**
   * Stops accepting, answers the requests in flight, closes every connection and device.
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    for (const { listener } of this.#listeners) closeQuietly(listener);
    await Promise.all(this.#accepting);
    for (const connection of this.#connections.keys()) {
      if (connection.transmission) void connection.transmission.shutdown();
      else closeQuietly(connection.stream);
    }
    // A client that stopped reading its replies would hold shutdown forever: after the grace
    // period its connection is closed, which fails the pending writes and ends it.
    const grace = new AbortController();
    this.#clock.sleep(this.#closeGraceMs, grace.signal).then(() => {
      for (const connection of this.#connections.keys()) closeQuietly(connection.stream);
    }, () => {});
    await Promise.all(this.#connections.values());
    grace.abort();
    for (const { unixPath } of this.#listeners) {
      if (unixPath !== null) await Deno.remove(unixPath).catch(() => {});
    }
  }

  #accept(listener: Deno.Listener, unixPath: string | null): void {
    this.#listeners.push({ listener, unixPath });
    this.#accepting.push(this.#acceptLoop(listener));
  }

  async #acceptLoop(listener: Deno.Listener): Promise<void> {
    // A failed accept (out of file descriptors, a connection reset before it was taken) does not
    // end serving: the server takes clients again once the condition passes.
    let lastLogMs = 0;
    const onRetry = (error: unknown) => {
      if (Date.now() - lastLogMs < ACCEPT_ERROR_LOG_INTERVAL_MS) return;
      lastLogMs = Date.now();
      this.#log.error(`NBD accept failed, retrying: ${errorMessage(error)}`);
    };
    const conns = acceptEach(
      () => listener.accept(),
      () => this.#closing !== null,
      (conn: Deno.Conn) => conn,
      undefined,
      onRetry,
    );
    for await (const conn of conns) void this.serve(connStream(conn));
  }

  async #serveConnection(connection: Connection): Promise<void> {
    const stats = this.stats;
    stats.connectionsAccepted++;
    stats.connectionsOpen++;
    const input = new Uint8Array(INPUT_BUFFER_BYTES);
    const reader = new StreamReader(connection.stream, input, "NBD client");
    let negotiated: NegotiatedExport | null = null;
    try {
      negotiated = await this.#handshake(reader);
      if (negotiated === null || this.#closing) return;
      connection.transmission = new Transmission({
        stream: connection.stream,
        device: negotiated.device,
        readOnly: negotiated.readOnly,
        structuredReplies: negotiated.structuredReplies,
        metaContextId: negotiated.metaContextId,
        input,
        start: reader.start,
        end: reader.end,
        pool: this.#pool,
        stats,
        log: this.#log,
        requestsInFlightMax: this.#requestsInFlightMax,
        bufferedBytesMax: this.#bufferedBytesMax,
      });
      await connection.transmission.run();
    } catch (error) {
      if (isTorusError(error, ErrorCode.Invalid)) {
        stats.protocolErrors++;
        this.#log.warn(`NBD handshake failed: ${errorMessage(error)}`);
      } else {
        this.#log.debug(`NBD connection ended: ${errorMessage(error)}`);
      }
    } finally {
      closeQuietly(connection.stream);
      if (negotiated !== null) {
        await negotiated.device.close().catch((error) => {
          this.#log.error(`closing NBD export "${negotiated?.name}": ${errorMessage(error)}`);
        });
      }
      stats.connectionsOpen--;
    }
  }

  /** The handshake under its deadline: a client too slow to finish it is disconnected. */
  async #handshake(reader: StreamReader): Promise<NegotiatedExport | null> {
    const deadline = new AbortController();
    this.#clock.sleep(this.#handshakeTimeoutMs, deadline.signal).then(() => {
      this.#log.warn("NBD client did not finish the handshake in time: disconnecting");
      closeQuietly(reader.stream);
    }, () => {});
    try {
      return await serverHandshake(reader, {
        exports: this.#exports,
        readOnly: this.#readOnly,
        shuttingDown: () => this.#closing !== null,
      });
    } finally {
      deadline.abort();
    }
  }
}

function closeQuietly(closable: { close(): void }): void {
  try {
    closable.close();
  } catch {
    // Already closed.
  }
}
