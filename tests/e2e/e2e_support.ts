/**
 * Shared pieces of the end-to-end tests in tests/e2e/: a node (`torus serve --nbd` on a temp data
 * dir) that a test can stop, SIGKILL and restart on the same data dir, tests gated on third-party
 * tools (skipped with the reason in their name), and byte helpers.
 *
 * Every process a test starts is SIGKILLed in a `finally` (disposing the node), and the temp dir is
 * removed, whatever the test did.
 * @module
 */

import assert from "node:assert/strict";
import { NbdClient } from "../../src/block/mod.ts";
import { runCommand } from "../support/nbd_fixture.ts";
import { hasCommand } from "../support/packages.ts";
import { runTorus, type ServeProcess, startServe } from "../support/torus_process.ts";
export { randomFile } from "../support/nbd_fixture.ts";

export const MiB = 1024 * 1024;
/** The unit of "old or new" after a crash. */
export const SECTOR = 4096;

/** What a test needs beyond Deno. */
export interface Needs {
  /** Commands that must be on PATH. */
  readonly tools?: readonly string[];
  /** Paths that must exist (device nodes). */
  readonly paths?: readonly string[];
  readonly root?: boolean;
}

/** Why a test cannot run here, or null when it can. */
export function missingNeeds(needs: Needs): string | null {
  const reasons: string[] = [];
  const tools = (needs.tools ?? []).filter((tool) => !hasCommand(tool));
  if (tools.length > 0) reasons.push(`${tools.join(", ")} not installed`);
  if (needs.root && Deno.uid() !== 0) reasons.push("needs root");
  for (const path of needs.paths ?? []) {
    try {
      Deno.statSync(path);
    } catch {
      reasons.push(`no ${path}`);
    }
  }
  return reasons.length > 0 ? reasons.join("; ") : null;
}

/** A test that needs `needs`; skipped, with the reason in its name, when they are not met. */
export function e2eTest(name: string, needs: Needs, fn: () => Promise<void>): void {
  const missing = missingNeeds(needs);
  Deno.test({
    name: missing === null ? `e2e: ${name}` : `e2e: ${name} [skipped: ${missing}]`,
    ignore: missing !== null,
    fn,
  });
}

/** Options of {@link E2eNode.start}. */
export interface NodeOptions {
  /** `--size` of the block store (default 256MiB). */
  readonly size?: string;
  /** Extra flags of `torus serve`. */
  readonly args?: readonly string[];
  /** Use this data dir instead of a new one under the node's temp dir. */
  readonly dataDir?: string;
}

/**
 * One `torus serve --nbd` on a temp data dir that outlives its processes: `restart` stops the
 * running serve (SIGTERM or SIGKILL) and starts a new one on the same data dir.
 */
export class E2eNode implements AsyncDisposable {
  readonly dir: string;
  readonly dataDir: string;
  readonly #options: NodeOptions;
  readonly #ownsDir: boolean;
  #serve: ServeProcess;
  /** Output of earlier serve processes of this node. */
  #history = "";

  private constructor(
    dir: string,
    serve: ServeProcess,
    options: NodeOptions & { ownsDir: boolean },
  ) {
    this.dir = dir;
    this.dataDir = serve.dataDir;
    this.#serve = serve;
    this.#options = options;
    this.#ownsDir = options.ownsDir;
  }

  /** Starts a node in a new temp dir. */
  static async start(options: NodeOptions = {}): Promise<E2eNode> {
    const dir = await Deno.makeTempDir({ prefix: "torus-e2e-" });
    try {
      const serve = await startServe(options.dataDir ?? `${dir}/data`, serveOptions(options));
      return new E2eNode(dir, serve, { ...options, ownsDir: true });
    } catch (error) {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw error;
    }
  }

  /** The running serve. */
  get serve(): ServeProcess {
    return this.#serve;
  }

  /** The NBD URI of an export. */
  uri(exportName: string): string {
    const { hostname, port } = this.#serve.nbd;
    return `nbd://${hostname}:${port}/${encodeURIComponent(exportName)}`;
  }

  /** Our NBD client on export `name`. */
  connect(name: string): Promise<NbdClient> {
    return this.#serve.connect(name);
  }

  /** `torus ctl ARGS` on this node's data dir; throws unless it exits 0. */
  async ctl(...args: string[]): Promise<string> {
    const output = await runTorus(["ctl", ...args, "--data-dir", this.dataDir]);
    if (output.code !== 0) {
      throw new Error(`torus ctl ${args.join(" ")} exited ${output.code}: ${output.stderr}`);
    }
    return output.stdout;
  }

  /** Creates a block volume. */
  async createVolume(name: string, size: string): Promise<void> {
    await this.ctl("volume", "create-block", name, size);
  }

  /**
   * Stops serve with `how` and starts it again on the same data dir. A SIGTERM must end it with
   * exit code 0 (a clean stop is part of what is tested).
   */
  async restart(how: "SIGTERM" | "SIGKILL"): Promise<void> {
    await this.stop(how);
    await this.startAgain();
  }

  /** Stops serve with `how` (see {@link restart}); {@link startAgain} starts it again. */
  async stop(how: "SIGTERM" | "SIGKILL"): Promise<void> {
    if (how === "SIGTERM") {
      const code = await this.#serve.stop();
      if (code !== 0) throw new Error(`serve exited ${code} on SIGTERM: ${this.#serve.output()}`);
    } else {
      await this.#serve.kill();
    }
  }

  /** Starts serve again on the same data dir after {@link stop}. */
  async startAgain(): Promise<void> {
    this.#history += this.#serve.output();
    this.#serve = await startServe(this.dataDir, serveOptions(this.#options));
  }

  /** Everything every serve of this node printed. */
  output(): string {
    return this.#history + this.#serve.output();
  }

  /** The "N used" blocks serve reported when it last started. */
  usedBlocksAtStart(): number {
    const match = /block store: \d+ blocks of .*, (\d+) used/.exec(this.#serve.output());
    if (match === null) throw new Error(`no block count in serve's output: ${this.output()}`);
    return Number(match[1]);
  }

  /**
   * Runs `body`; if it throws, the node's files (data dir and every serve's output, in
   * `serve.log`) are kept under /tmp/torus-e2e-failed-* for whoever looks into it (a CI run's
   * temp dirs are otherwise gone), then the error is thrown on.
   */
  async keepOnFailure<T>(body: () => Promise<T>): Promise<T> {
    try {
      return await body();
    } catch (error) {
      await this.#serve.kill();
      const kept = `/tmp/torus-e2e-failed-${Date.now()}`;
      const copied = await new Deno.Command("cp", { args: ["-a", this.dir, kept] }).output();
      if (copied.success) {
        await Deno.writeTextFile(`${kept}/serve.log`, this.output());
        console.error(`the node's files and serve.log are kept in ${kept}`);
      }
      throw error;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#serve.kill();
    if (this.#ownsDir) await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

function serveOptions(options: NodeOptions): { size: string; args: readonly string[] } {
  return { size: options.size ?? "256MiB", args: options.args ?? [] };
}

/** Reads all of a device into a new buffer. */
export async function readAll(client: NbdClient): Promise<Uint8Array> {
  const bytes = new Uint8Array(client.sizeBytes);
  await client.readAt(0, bytes);
  return bytes;
}

/** Closes a client whose server may be gone (after a SIGKILL): errors are expected. */
export async function closeQuietly(client: NbdClient | null | undefined): Promise<void> {
  await client?.close().catch(() => {});
}

/** The first offset where two buffers differ, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : length;
}

/** Fails with the first differing offset unless the buffers are equal. */
export function assertEqualBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  const at = firstDifference(actual, expected);
  if (at >= 0) {
    throw new Error(
      `${what}: differs at byte ${at} (sector ${Math.floor(at / SECTOR)}): ` +
        `got ${actual[at]}, expected ${expected[at]} (lengths ${actual.length}/${expected.length})`,
    );
  }
}

/** The part of fio's JSON job report the tests read. */
export interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

/** Runs fio and returns its (grouped) job report; fails on any error or verify failure. */
export async function fio(args: string[]): Promise<FioJob> {
  const result = await runCommand("fio", args);
  assert.equal(result.code, 0, `fio ${args.join(" ")}\n${result.stdout}\n${result.stderr}`);
  const report = JSON.parse(result.stdout.slice(result.stdout.indexOf("{")));
  const job = report.jobs[0] as FioJob;
  assert.equal(job.error, 0, result.stdout);
  return job;
}
