/**
 * An etcd server a test owns outright: fixed ports and data dir, so it can be killed (SIGKILL)
 * and started again on the same data, and optionally serving TLS with client certificates.
 * (tests/support/etcd.ts starts throwaway servers; these tests need to restart one.)
 * @module
 */

import { freePort } from "../support/etcd.ts";

/** Client TLS material etcd should demand (PEM file paths). */
export interface EtcdTls {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string;
}

/** A restartable etcd. */
export class EtcdProcess implements AsyncDisposable {
  readonly endpoint: string;
  #args: string[];
  #workDir: string;
  #child: Deno.ChildProcess | null = null;

  private constructor(workDir: string, tls: EtcdTls | undefined) {
    const clientPort = freePort();
    const peerPort = freePort();
    const scheme = tls ? "https" : "http";
    const client = `${scheme}://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    this.endpoint = `127.0.0.1:${clientPort}`;
    this.#workDir = workDir;
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

  /** Starts etcd in a new temp dir and waits until its client port accepts connections. */
  static async start(options: { tls?: EtcdTls } = {}): Promise<EtcdProcess> {
    const workDir = await Deno.makeTempDir({ prefix: "torus-etcdp-" });
    const etcd = new EtcdProcess(workDir, options.tls);
    await etcd.restart();
    return etcd;
  }

  /** Starts etcd again on the same data dir and ports (after `kill`). */
  async restart(): Promise<void> {
    if (this.#child) throw new Error("etcd is running");
    this.#child = new Deno.Command("etcd", {
      args: this.#args,
      stdout: "null",
      stderr: "null",
    }).spawn();
    await this.#waitListening(15_000);
  }

  async #waitListening(timeoutMs: number): Promise<void> {
    const port = Number(this.endpoint.split(":")[1]);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        conn.close();
        // Listening comes slightly before serving; give the server a moment to elect itself.
        await new Promise((r) => setTimeout(r, 300));
        return;
      } catch {
        if (Date.now() > deadline) throw new Error(`etcd did not listen on ${port}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  /** SIGKILLs etcd and waits for it to exit. */
  async kill(): Promise<void> {
    const child = this.#child;
    this.#child = null;
    if (!child) return;
    try {
      child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await child.status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
    await Deno.remove(this.#workDir, { recursive: true }).catch(() => {});
  }
}
