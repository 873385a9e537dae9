/**
 * A child Deno process for multi-process tests: its stdout is collected line by line so a test
 * can wait for a line, and disposing it kills the process and waits for it, so no process or
 * pipe outlives the test.
 * @module
 */

const childScript = new URL("./embedded_child.ts", import.meta.url).pathname;

/** A running `embedded_child.ts`. */
export class Child implements AsyncDisposable {
  readonly lines: string[] = [];
  #stderr = "";
  #process: Deno.ChildProcess;
  #reading: Promise<void>;
  #exited = false;
  #status: Promise<Deno.CommandStatus>;

  /** Starts `embedded_child.ts ARGS...`; `env` adds variables (e.g. TORUS_TEST_WALL_STEP_MS). */
  constructor(args: string[], env: Record<string, string> = {}) {
    this.#process = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", childScript, ...args],
      stdout: "piped",
      stderr: "piped",
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1", ...env },
    }).spawn();
    this.#status = this.#process.status.then((status) => {
      this.#exited = true;
      return status;
    });
    this.#reading = Promise.all([this.#readLines(), this.#readStderr()]).then(() => {});
  }

  async #readLines(): Promise<void> {
    let buffered = "";
    for await (const chunk of this.#process.stdout.pipeThrough(new TextDecoderStream())) {
      buffered += chunk;
      const parts = buffered.split("\n");
      buffered = parts.pop() ?? "";
      this.lines.push(...parts);
    }
    if (buffered) this.lines.push(buffered);
  }

  async #readStderr(): Promise<void> {
    for await (const chunk of this.#process.stderr.pipeThrough(new TextDecoderStream())) {
      this.#stderr += chunk;
    }
  }

  /** What the child wrote to stderr so far (for failure messages). */
  get stderr(): string {
    return this.#stderr;
  }

  /** The first line matching `predicate`, waiting up to `timeoutMs` for it. */
  async waitLine(predicate: (line: string) => boolean, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.lines.find(predicate);
      if (line !== undefined) return line;
      if (this.#exited || Date.now() > deadline) {
        await this.#reading;
        const found = this.lines.find(predicate);
        if (found !== undefined) return found;
        throw new Error(
          `child ${this.#exited ? "exited" : "timed out"} before the expected line; ` +
            `stdout: ${this.lines.slice(-5).join(" | ")}; stderr: ${this.#stderr.trim()}`,
        );
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Waits for the process to exit on its own and its output to be read. */
  async exit(): Promise<Deno.CommandStatus> {
    const status = await this.#status;
    await this.#reading;
    return status;
  }

  /** Kills the process (SIGKILL unless told otherwise) and waits for it. */
  async kill(signal: Deno.Signal = "SIGKILL"): Promise<void> {
    if (!this.#exited) {
      try {
        this.#process.kill(signal);
      } catch {
        // exited meanwhile
      }
    }
    await this.exit();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.kill();
  }
}
