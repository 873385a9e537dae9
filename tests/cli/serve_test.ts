/**
 * `torus serve` as a real process: first start initialises a single-node cluster on the embedded
 * store and creates the node's identity and block store; a restart keeps them; SIGINT and SIGTERM
 * stop it cleanly; bad flags fail with one line.
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Running {
  child: Deno.ChildProcess;
  output: () => string;
  waitFor(text: string, timeoutMs?: number): Promise<void>;
}

function torus(args: string[]): Running {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}main.ts`, ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += decoder.decode(chunk);
  };
  const pumped = Promise.all([pump(child.stdout), pump(child.stderr)]);
  return {
    child,
    output: () => text,
    async waitFor(expected, timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      while (!text.includes(expected)) {
        const status = await Promise.race([
          child.status.then((s) => s),
          new Promise<null>((r) => setTimeout(() => r(null), 50)),
        ]);
        if (status !== null) {
          await pumped;
          if (text.includes(expected)) return;
          throw new Error(`serve exited with ${status.code} before "${expected}": ${text}`);
        }
        if (Date.now() > deadline) throw new Error(`no "${expected}" within ${timeoutMs} ms`);
      }
    },
  };
}

async function finish(running: Running) {
  const status = await running.child.status;
  // Drain whatever is left of the pipes before reading the output.
  await new Promise((r) => setTimeout(r, 20));
  return { code: status.code, output: running.output() };
}

async function ctl(args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}main.ts`, "ctl", ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

Deno.test("serve initialises a single-node cluster, keeps its identity across restarts and stops on signals", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-" });
  try {
    const first = torus(["serve", "--data-dir", dataDir, "--size", "16MiB"]);
    await first.waitFor("Ready.");
    assert.match(first.output(), /Initialised a single-node cluster/);
    assert.match(first.output(), /block store: 31 blocks of 512 KiB/);
    const uuid = (await Deno.readTextFile(`${dataDir}/metadata/uuid`)).trim();
    assert.match(first.output(), new RegExp(`node ${uuid}`));

    // Another local process uses the same embedded store while serve holds it open.
    const created = await ctl(["volume", "create-block", "--data-dir", dataDir, "v1", "1MiB"]);
    assert.equal(created.code, 0, created.stderr);

    first.child.kill("SIGTERM");
    const stopped = await finish(first);
    assert.equal(stopped.code, 0, stopped.output);
    assert.match(stopped.output, /Received SIGTERM/);

    const second = torus(["serve", "--data-dir", dataDir, "--size", "16MiB"]);
    await second.waitFor("Ready.");
    assert.doesNotMatch(second.output(), /Initialised/);
    assert.match(second.output(), new RegExp(`node ${uuid}`));
    second.child.kill("SIGINT");
    assert.equal((await finish(second)).code, 0);

    const listed = await ctl(["volume", "list", "--data-dir", dataDir]);
    assert.match(listed.stdout, /v1 /);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("serve rejects a bad size with one line and exit 1, and an unknown flag with exit 2", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-" });
  try {
    const badSize = await finish(torus(["serve", "--data-dir", dataDir, "--size", "lots"]));
    assert.equal(badSize.code, 1);
    assert.equal(badSize.output.trim().split("\n").length, 1, badSize.output);
    assert.match(badSize.output, /^torus serve: invalid size "lots"/);

    const badPercent = await finish(torus(["serve", "--data-dir", dataDir, "--size", "150%"]));
    assert.equal(badPercent.code, 1);
    assert.match(badPercent.output, /between 1% and 100%/);

    const unknown = await finish(torus(["serve", "--peer-address", "tdp://127.0.0.1:4000"]));
    assert.equal(unknown.code, 2);
    assert.match(unknown.output, /Unknown option '--peer-address'/);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("serve refuses an existing block store made with another block size", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-" });
  try {
    const init = await ctl(["init", "--data-dir", dataDir, "--block-size", "64KiB"]);
    assert.equal(init.code, 0, init.stderr);
    const first = torus(["serve", "--data-dir", dataDir, "--size", "1MiB"]);
    await first.waitFor("Ready.");
    assert.match(first.output(), /blocks of 64 KiB/);
    first.child.kill("SIGTERM");
    assert.equal((await finish(first)).code, 0);

    // The block size lives in the metadata: a wiped and re-initialised cluster with another
    // block size must not reuse the old store's slots.
    const wipe = await ctl(["wipe", "--yes-i-am-sure", "--data-dir", dataDir]);
    assert.equal(wipe.code, 0, wipe.stderr);
    const reinit = await ctl(["init", "--data-dir", dataDir]);
    assert.equal(reinit.code, 0, reinit.stderr);
    const refused = await finish(torus(["serve", "--data-dir", dataDir, "--size", "1MiB"]));
    assert.equal(refused.code, 1, refused.output);
    assert.match(refused.output, /block size/i);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
