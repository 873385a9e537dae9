/**
 * The network a peer protocol runs over, passed in: TCP through Deno here, an in-memory network
 * with injected drops and delays in simulations. Protocol code never opens a socket itself.
 * @module
 */

import { type ByteStream, TorusError, unavailable } from "../../core/mod.ts";

/** Connections accepted on one address. */
export interface StreamListener extends AsyncIterable<ByteStream> {
  readonly hostname: string;
  /** The port listened on (the one the system chose for port 0). */
  readonly port: number;
  /** Stops accepting; connections already accepted stay open. */
  close(): void;
}

/** Opens and accepts byte streams. */
export interface StreamNetwork {
  /** Connects to `hostname:port`; `unavailable` if that fails or takes longer than `timeoutMs`. */
  connect(hostname: string, port: number, timeoutMs: number): Promise<ByteStream>;
  /** Listens on `hostname:port`. */
  listen(hostname: string, port: number): StreamListener;
}

/** Pause after a failed accept that did not close the listener. */
const ACCEPT_RETRY_MS = 100;

/** Whether an accept failed because the listener was closed (the end of accepting). */
function closedListener(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource || error instanceof Deno.errors.Interrupted;
}

/** TCP through Deno, with Nagle's algorithm off (frames are small and wait on each other). */
export const tcpNetwork: StreamNetwork = {
  async connect(hostname, port, timeoutMs) {
    const connecting = Deno.connect({ hostname, port, transport: "tcp" });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<null>((resolve) =>
      timer = setTimeout(() => resolve(null), timeoutMs)
    );
    try {
      const conn = await Promise.race([connecting, timeout]);
      if (conn === null) {
        // A connection that comes after its deadline is closed, not leaked.
        connecting.then((late) => late.close(), () => {});
        throw unavailable(`connecting to ${hostname}:${port} took longer than ${timeoutMs} ms`);
      }
      conn.setNoDelay(true);
      return conn;
    } catch (error) {
      if (error instanceof TorusError) throw error;
      throw unavailable(`cannot connect to ${hostname}:${port}: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  },

  listen(hostname, port) {
    const listener = Deno.listen({ hostname, port, transport: "tcp" });
    const address = listener.addr;
    let closed = false;
    return {
      hostname: address.hostname,
      port: address.port,
      close: () => {
        closed = true;
        try {
          listener.close();
        } catch {
          // Already closed.
        }
      },
      async *[Symbol.asyncIterator]() {
        for (;;) {
          let conn: Deno.TcpConn;
          try {
            conn = await listener.accept();
          } catch (error) {
            if (closed || closedListener(error)) return;
            // Out of file descriptors or a connection reset before it was taken: the listener
            // still works, so a node keeps serving its peers once the condition passes.
            await new Promise((resolve) => setTimeout(resolve, ACCEPT_RETRY_MS));
            continue;
          }
          conn.setNoDelay(true);
          yield conn;
        }
      },
    };
  },
};
