/**
 * A loopback TCP proxy that can freeze: it stops forwarding in both directions but keeps every
 * socket open, as a network partition looks to both ends (no reset, no FIN, just silence). It can
 * also freeze only the replies: requests still reach the server and are applied, but the client
 * never hears back, as when a server stalls after applying a write or the return path fails.
 * @module
 */

/** A running proxy to `target`. */
export class FreezableProxy implements AsyncDisposable {
  readonly endpoint: string;
  #listener: Deno.Listener;
  #conns: Deno.Conn[] = [];
  #pumps: Promise<void>[] = [];
  #frozen = false;
  #repliesFrozen = false;
  #accepting: Promise<void>;
  #target: { hostname: string; port: number };

  constructor(target: string) {
    const [hostname, port] = target.split(":");
    this.#target = { hostname: hostname!, port: Number(port) };
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.endpoint = `127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
    this.#accepting = this.#accept();
  }

  async #accept(): Promise<void> {
    try {
      for await (const inbound of this.#listener) {
        this.#conns.push(inbound);
        if (this.#frozen) continue;
        const outbound = await Deno.connect(this.#target).catch(() => null);
        if (outbound === null) {
          inbound.close();
          continue;
        }
        this.#conns.push(outbound);
        this.#pumps.push(this.#pump(inbound, outbound, false), this.#pump(outbound, inbound, true));
      }
    } catch {
      // listener closed
    }
  }

  async #pump(from: Deno.Conn, to: Deno.Conn, replies: boolean): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        // While frozen, bytes are swallowed: the other side hears nothing.
        const frozen = this.#frozen || (replies && this.#repliesFrozen);
        if (!frozen) await to.write(buffer.subarray(0, n));
      }
    } catch {
      // a socket closed
    }
  }

  /** Stops forwarding on every connection, present and future, without closing any. */
  freeze(): void {
    this.#frozen = true;
  }

  /** Stops forwarding replies (server to client) only; requests still reach the server. */
  freezeReplies(): void {
    this.#repliesFrozen = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch {
        // already closed
      }
    }
    await Promise.all(this.#pumps);
  }
}
