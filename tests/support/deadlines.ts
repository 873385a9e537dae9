/**
 * For tests of deadlines: a promise bounded in time, so a hang fails the test instead of stalling
 * the run, and a listener that accepts connections and never says anything (the peer a client
 * meets at a port that is not its server's).
 * @module
 */

/** `promise`, or a failure saying what did not happen when it has not settled within `ms`. */
export async function withinMs<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** A loopback listener that accepts every connection and never writes to it. */
export interface SilentListener extends AsyncDisposable {
  readonly port: number;
}

/** Starts a {@link SilentListener}; disposing it closes the listener and what it accepted. */
export function silentListener(): SilentListener {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) held.push(conn);
  })();
  return {
    port: listener.addr.port,
    async [Symbol.asyncDispose]() {
      for (const conn of held) conn.close();
      listener.close();
      await accepting.catch(() => {});
    },
  };
}
