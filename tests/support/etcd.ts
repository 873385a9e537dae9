/**
 * A real etcd server for tests, on loopback with a throwaway data dir. `npm test` starts one for
 * the whole run (TORUS_TEST_ETCD=host:port); a test run on its own starts a private one.
 * @module
 */

import { hasCommand } from "./packages.ts";

/** A running etcd (or none, when the binary is missing). */
export interface EtcdServer extends AsyncDisposable {
  /** `127.0.0.1:PORT`, or null when etcd is not installed. */
  readonly endpoint: string | null;
  /** Kills the server abruptly (SIGKILL), for tests of a lost metadata connection. */
  kill(): Promise<void>;
}

/** A free TCP port on loopback (bound, read and released). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

async function waitReady(endpoint: string, child: Deno.ChildProcess, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const response = await fetch(`http://${endpoint}/health`);
      const body = await response.text();
      if (response.ok && body.includes("true")) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill("SIGKILL");
  throw new Error(`etcd at ${endpoint} did not become ready in ${timeoutMs} ms`);
}

/** Starts etcd on free loopback ports; `workDir` holds its data dir and log. */
export async function startEtcd(options: { workDir: string }): Promise<EtcdServer> {
  if (!hasCommand("etcd")) {
    return { endpoint: null, kill: () => Promise.resolve(), [Symbol.asyncDispose]: async () => {} };
  }
  await Deno.mkdir(options.workDir, { recursive: true });
  const dataDir = await Deno.makeTempDir({ dir: options.workDir, prefix: "etcd-" });
  const clientPort = freePort();
  const peerPort = freePort();
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
  const log = await Deno.open(`${dataDir}.log`, { write: true, create: true, truncate: true });
  const child = new Deno.Command("etcd", {
    args: [
      "--name=t",
      `--data-dir=${dataDir}/data`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=t=${peer}`,
      "--log-level=error",
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  // Keep etcd's log in a file next to its data dir, for when a test needs to know why.
  const drain = child.stderr.pipeTo(log.writable).catch(() => {});
  const endpoint = `127.0.0.1:${clientPort}`;
  await waitReady(endpoint, child, 15_000);
  let stopped = false;
  const stop = async (signal: Deno.Signal) => {
    if (stopped) return;
    stopped = true;
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
    await child.status;
    await drain;
  };
  return {
    endpoint,
    kill: () => stop("SIGKILL"),
    async [Symbol.asyncDispose]() {
      await stop("SIGTERM");
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
    },
  };
}
