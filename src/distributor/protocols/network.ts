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

/**
 * Yields what `accept` returns until the listener is closed. A failed accept that did not close
 * it (out of file descriptors, a connection reset before it was taken) is retried after a pause,
 * so a node keeps serving its peers once the condition passes.
 */
export async function* acceptEach<C, T>(
  accept: () => Promise<C>,
  isClosed: () => boolean,
  prepare: (conn: C) => T,
  retryMs = ACCEPT_RETRY_MS,
  onRetry: (error: unknown) => void = () => {},
): AsyncGenerator<T> {
  for (;;) {
    let conn: C;
    try {
      conn = await accept();
    } catch (error) {
      if (isClosed() || closedListener(error)) return;
      onRetry(error);
      await new Promise((resolve) => setTimeout(resolve, retryMs));
      continue;
    }
    yield prepare(conn);
  }
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
      [Symbol.asyncIterator]: () =>
        acceptEach(
          () => listener.accept(),
          () => closed,
          (conn) => {
            conn.setNoDelay(true);
            return conn;
          },
        ),
    };
  },
};
