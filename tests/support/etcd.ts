/**
 * Real etcd servers for tests, on loopback with a throwaway data dir. `npm test` starts one for
 * the whole run (TORUS_TEST_ETCD=host:port, see test_etcd.ts); tests that need to kill, restart
 * or secure a server own an {@link EtcdProcess}.
 * @module
 */

import { hasCommand } from "./packages.ts";

/** A free TCP port on loopback (bound, read and released). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Client TLS material etcd should demand (PEM file paths). */
export interface EtcdTls {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
}

/**
 * An etcd a test owns outright: fixed ports and data dir, so it can be killed (SIGKILL) and
 * started again on the same data, optionally serving TLS with client certificates. Its log goes
 * to `etcd.log` in its work dir, for when a test needs to know why.
 */
export class EtcdProcess implements AsyncDisposable {
  readonly endpoint: string;
  readonly workDir: string;
  #args: string[];
  #tls: boolean;
  #child: Deno.ChildProcess | null = null;
  #drained: Promise<void> = Promise.resolve();

  private constructor(workDir: string, tls: EtcdTls | undefined) {
    const clientPort = freePort();
    const peerPort = freePort();
    const client = `${tls ? "https" : "http"}://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    this.endpoint = `127.0.0.1:${clientPort}`;
    this.workDir = workDir;
    this.#tls = tls !== undefined;
    this.#args = [
      "--name=t",
      `--data-dir=${workDir}/data`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=t=${peer}`,
      "--log-level=error",
      ...(tls
        ? [
          `--cert-file=${tls.certFile}`,
          `--key-file=${tls.keyFile}`,
          `--trusted-ca-file=${tls.caFile}`,
          "--client-cert-auth",
        ]
        : []),
    ];
  }

  /** Starts etcd in a new temp dir (under `parentDir` if given) and waits until it serves. */
  static async start(options: { tls?: EtcdTls; parentDir?: string } = {}): Promise<EtcdProcess> {
    if (options.parentDir) await Deno.mkdir(options.parentDir, { recursive: true });
    const workDir = await Deno.makeTempDir({
      prefix: "torus-etcd-",
      ...(options.parentDir ? { dir: options.parentDir } : {}),
    });
    const etcd = new EtcdProcess(workDir, options.tls);
    try {
      await etcd.restart();
    } catch (error) {
      await etcd[Symbol.asyncDispose]();
      throw error;
    }
    return etcd;
  }

  /** Starts etcd again on the same data dir and ports (after `kill`). */
  async restart(): Promise<void> {
    if (this.#child) throw new Error("etcd is running");
    const log = await Deno.open(`${this.workDir}/etcd.log`, { append: true, create: true });
    const child = new Deno.Command("etcd", { args: this.#args, stdout: "null", stderr: "piped" })
      .spawn();
    this.#child = child;
    this.#drained = child.stderr.pipeTo(log.writable).catch(() => {});
    await this.#waitServing(15_000);
  }

  async #waitServing(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await this.#serving()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.kill();
    throw new Error(`etcd at ${this.endpoint} did not become ready in ${timeoutMs} ms`);
  }

  async #serving(): Promise<boolean> {
    try {
      if (this.#tls) {
        // /health would need a client certificate: a listening port is enough, after a moment
        // for the single member to elect itself.
        const port = Number(this.endpoint.split(":")[1]);
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        await new Promise((r) => setTimeout(r, 300));
        return true;
      }
      const response = await fetch(`http://${this.endpoint}/health`);
      return response.ok && (await response.text()).includes("true");
    } catch {
      return false;
    }
  }

  /** SIGKILLs etcd and waits for it to exit. */
  async kill(): Promise<void> {
    await this.#stop("SIGKILL");
  }

  async #stop(signal: Deno.Signal): Promise<void> {
    const child = this.#child;
    this.#child = null;
    if (!child) return;
    try {
      child.kill(signal);
    } catch {
      // already exited
    }
    await child.status;
    await this.#drained;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#stop("SIGTERM");
    await Deno.remove(this.workDir, { recursive: true }).catch(() => {});
  }
}

/** A running etcd, or none when the binary is missing. */
export interface EtcdServer extends AsyncDisposable {
  /** `127.0.0.1:PORT`, or null when etcd is not installed. */
  readonly endpoint: string | null;
  /** Kills the server abruptly (SIGKILL), for tests of a lost metadata connection. */
  kill(): Promise<void>;
}

/** Starts a throwaway etcd under `workDir`, or reports none when etcd is not installed. */
export async function startEtcd(options: { workDir: string }): Promise<EtcdServer> {
  if (!hasCommand("etcd")) {
    return { endpoint: null, kill: () => Promise.resolve(), [Symbol.asyncDispose]: async () => {} };
  }
  return await EtcdProcess.start({ parentDir: options.workDir });
}
