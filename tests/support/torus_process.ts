/**
 * `torus` as real processes for end-to-end tests: `startServe` runs `torus serve --nbd` on a free
 * port of a data dir and reports where its NBD server listens; `runTorus` runs one command to its
 * end. Every child gets NO_COLOR and is killed by `stop`/`kill` (a test's `finally` must call one).
 */

import { type ByteStream, connStream, NbdClient } from "../../src/block/mod.ts";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

/** The environment every child gets. */
const childEnv = { RUST_BACKTRACE: "0", NO_COLOR: "1" };

/**
 * Extra `deno run` flags for every child, from TORUS_CHILD_DENO_FLAGS (space-separated): how a
 * benchmark's processes get profiled, e.g. `--v8-flags=--perf-basic-prof` for `perf record`.
 */
const childDenoFlags = (Deno.env.get("TORUS_CHILD_DENO_FLAGS") ?? "").split(" ")
  .filter((flag) => flag !== "");

/** What a finished command printed. */
export interface TorusOutput {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `torus ARGS` to its end; `stdin` is written and closed when given. */
export async function runTorus(
  args: string[],
  options: { stdin?: Uint8Array; env?: Record<string, string>; stdoutBytes?: boolean } = {},
): Promise<TorusOutput & { stdoutRaw: Uint8Array }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...childDenoFlags, `${root}main.ts`, ...args],
    env: { ...childEnv, ...options.env },
    stdin: options.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    // A child that exits early closes the pipe: that is its answer, not the test's failure.
    await writer.write(options.stdin).catch(() => {});
    await writer.close().catch(() => {});
  }
  const output = await child.output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
    stdoutRaw: output.stdout,
  };
}

/** `torus ctl ARGS --data-dir DIR`, failing the test unless it exits 0. */
export async function ctlOk(dataDir: string, args: string[]): Promise<string> {
  const output = await runTorus(["ctl", ...args, "--data-dir", dataDir]);
  if (output.code !== 0) {
    throw new Error(`torus ctl ${args.join(" ")} exited ${output.code}: ${output.stderr}`);
  }
  return output.stdout;
}

/** A running `torus serve`. */
export interface ServeProcess extends AsyncDisposable {
  readonly dataDir: string;
  readonly child: Deno.ChildProcess;
  /** Where its NBD server listens. */
  readonly nbd: { hostname: string; port: number };
  /** Where its HTTP status server listens, when started with `--host` (an "HTTP:" line). */
  readonly http?: { hostname: string; port: number };
  /** Everything it printed so far. */
  output(): string;
  /** Connects an NBD client to export `name`. */
  connect(name: string): Promise<NbdClient>;
  /** SIGTERM and wait: the exit code. */
  stop(): Promise<number>;
  /** SIGKILL and wait. */
  kill(): Promise<void>;
}

/** Options of {@link startServe}. */
export interface ServeOptions {
  /** `--size` (default 256MiB). */
  readonly size?: string;
  /** Extra flags. */
  readonly args?: readonly string[];
  readonly readyTimeoutMs?: number;
}

/** A long-running `torus` process started by {@link startTorusProcess}. */
export interface TorusProcess extends AsyncDisposable {
  readonly child: Deno.ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Sends `signal` (if it still runs) and waits: the exit code. */
  signal(signal: Deno.Signal): Promise<number>;
  /** SIGTERM and wait: the exit code. */
  stop(): Promise<number>;
}

/** Starts `torus ARGS` and waits until its output matches `ready` (SIGKILLed if it never does). */
export async function startTorusProcess(
  args: readonly string[],
  ready: RegExp,
  readyTimeoutMs = 60_000,
): Promise<TorusProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...childDenoFlags, `${root}main.ts`, ...args],
    env: childEnv,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const signal = async (signal: Deno.Signal) => {
    if (!exited) {
      try {
        child.kill(signal);
      } catch {
        // Already gone.
      }
    }
    const s = await status;
    await pumped;
    return s.code;
  };
  try {
    const deadline = Date.now() + readyTimeoutMs;
    while (!ready.test(text)) {
      if (exited) throw new Error(`torus ${args[0]} exited before it was ready: ${text}`);
      if (Date.now() > deadline) throw new Error(`torus ${args[0]} not ready in time: ${text}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (error) {
    await signal("SIGKILL");
    throw error;
  }
  return {
    child,
    output: () => text,
    signal,
    stop: () => signal("SIGTERM"),
    [Symbol.asyncDispose]: async () => {
      await signal("SIGKILL");
    },
  };
}

/** Starts `torus serve --nbd 127.0.0.1:0 --data-dir DIR` and waits for "Ready.". */
export async function startServe(
  dataDir: string,
  options: ServeOptions = {},
): Promise<ServeProcess> {
  const process = await startTorusProcess(
    [
      "serve",
      "--data-dir",
      dataDir,
      "--size",
      options.size ?? "256MiB",
      "--nbd",
      "127.0.0.1:0",
      ...(options.args ?? []),
    ],
    /Ready\./,
    options.readyTimeoutMs ?? 60_000,
  );
  const text = process.output();
  const kill = (signal: Deno.Signal) => process.signal(signal);
  const child = process.child;
  const match = /NBD: +([0-9.]+):(\d+)/.exec(text);
  if (!match) {
    await kill("SIGKILL");
    throw new Error(`no NBD address in serve's output: ${text}`);
  }
  const nbd = { hostname: match[1]!, port: Number(match[2]) };
  const httpMatch = /HTTP: +http:\/\/([0-9.]+):(\d+)/.exec(text);
  return {
    dataDir,
    child,
    nbd,
    ...(httpMatch ? { http: { hostname: httpMatch[1]!, port: Number(httpMatch[2]) } } : {}),
    output: () => process.output(),
    async connect(name) {
      const conn = await Deno.connect(nbd);
      const stream: ByteStream = connStream(conn);
      return await NbdClient.connect(stream, { exportName: name });
    },
    stop: () => kill("SIGTERM"),
    kill: async () => {
      await kill("SIGKILL");
    },
    [Symbol.asyncDispose]: async () => {
      await kill("SIGKILL");
    },
  };
}
