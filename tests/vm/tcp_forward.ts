/**
 * A TCP forwarder for the guest of tests/vm/cluster_attach_test.ts:
 * `deno run -A tests/vm/tcp_forward.ts LISTEN_HOST:PORT=TARGET_HOST:PORT...`
 * listens on every LISTEN address and joins each connection it accepts to a new connection to its
 * TARGET, both ways, half-closes passed on. The cluster's nodes registered `tdp://127.0.0.1:PORT`
 * on the host; in the guest that is the guest's own loopback, so the guest listens there and
 * forwards to the host (10.0.2.2 under qemu's user network). Prints "Forwarding." when it listens
 * on all of them; runs until killed.
 * @module
 */

interface Route {
  readonly listen: { hostname: string; port: number };
  readonly target: { hostname: string; port: number };
}

function parseAddress(text: string): { hostname: string; port: number } {
  const at = text.lastIndexOf(":");
  const port = Number(text.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`not HOST:PORT: ${text}`);
  }
  return { hostname: text.slice(0, at), port };
}

function parseRoute(text: string): Route {
  const [listen, target, ...rest] = text.split("=");
  if (listen === undefined || target === undefined || rest.length > 0) {
    throw new Error(`not LISTEN=TARGET: ${text}`);
  }
  return {
    listen: parseAddress(listen),
    target: parseAddress(target),
  };
}

/** Copies `from` to `to` until `from` ends, then half-closes `to`; errors close both. */
async function pump(from: Deno.TcpConn, to: Deno.TcpConn): Promise<void> {
  const buffer = new Uint8Array(256 * 1024);
  for (;;) {
    const n = await from.read(buffer);
    if (n === null) break;
    let written = 0;
    while (written < n) written += await to.write(buffer.subarray(written, n));
  }
  await to.closeWrite();
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Closed already.
  }
}

async function forward(conn: Deno.TcpConn, route: Route): Promise<void> {
  let upstream: Deno.TcpConn;
  try {
    upstream = await Deno.connect(route.target);
  } catch (error) {
    console.error(`tcp_forward: connect ${route.target.hostname}:${route.target.port}: ${error}`);
    closeQuietly(conn);
    return;
  }
  conn.setNoDelay(true);
  upstream.setNoDelay(true);
  const both = [pump(conn, upstream), pump(upstream, conn)];
  try {
    await Promise.all(both);
  } catch {
    // A reset on either side: the other is closed below.
  } finally {
    closeQuietly(conn);
    closeQuietly(upstream);
    await Promise.allSettled(both);
  }
}

async function serve(listener: Deno.TcpListener, route: Route): Promise<void> {
  for await (const conn of listener) void forward(conn, route);
}

const routes = Deno.args.map(parseRoute);
if (routes.length === 0) {
  console.error("Usage: tcp_forward.ts LISTEN_HOST:PORT=TARGET_HOST:PORT...");
  Deno.exit(2);
}
const listeners = routes.map((route) => Deno.listen(route.listen));
for (const route of routes) {
  const { hostname, port } = route.listen;
  console.log(`${hostname}:${port} -> ${route.target.hostname}:${route.target.port}`);
}
console.log("Forwarding.");
await Promise.all(listeners.map((listener, i) => serve(listener, routes[i]!)));
