/**
 * `torus serve` as a real process: first start initialises a single-node cluster on the embedded
 * store and creates the node's identity and block store; a restart keeps them; SIGINT and SIGTERM
 * stop it cleanly; bad flags fail with one line.
 */

import assert from "node:assert/strict";
import { statfsSync } from "node:fs";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Running {
  child: Deno.ChildProcess;
  output: () => string;
  waitFor(text: string, timeoutMs?: number): Promise<void>;
}

function torus(
  args: string[],
  options: { env?: Record<string, string>; cwd?: string } = {},
): Running {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}main.ts`, ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1", ...options.env },
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
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

    const unknown = await finish(torus(["serve", "--no-such-flag"]));
    assert.equal(unknown.code, 2);
    assert.match(unknown.output, /Unknown option '--no-such-flag'/);
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

/** Waits for a serve that must refuse to start; one that starts instead is killed and fails. */
async function refused(running: Running, timeoutMs = 30_000) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const started = new Promise<"started">((resolve) => {
    timer = setTimeout(() => resolve("started"), timeoutMs);
  });
  const outcome = await Promise.race([running.child.status, started]);
  clearTimeout(timer);
  if (outcome === "started") {
    running.child.kill("SIGKILL");
    await finish(running);
    assert.fail(`serve did not exit: ${running.output()}`);
  }
  const result = await finish(running);
  assert.doesNotMatch(result.output, /Ready/);
  return result;
}

async function entries(dir: string): Promise<string[]> {
  return (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
}

Deno.test("serve refuses sizes under two blocks, negative and too-large sizes, in one line", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-" });
  try {
    const cases: [string, RegExp][] = [
      ["0", /^torus serve: --size 0 is too small: the block store needs at least 1 MiB/],
      ["512KiB", /too small/],
      ["1000000", /too small/],
      ["-5", /^torus serve: invalid size "-5": a size cannot be negative$/],
      ["-5%", /cannot be negative/],
      ["8TiB", /^torus serve: --size 8TiB is too large: a block store holds at most 16000000/],
      ["9EiB", /^torus serve: size "9EiB" is too large/],
    ];
    for (const [size, pattern] of cases) {
      const result = await refused(torus(["serve", "--data-dir", dataDir, "--size", size]));
      assert.equal(result.code, 1, result.output);
      assert.equal(result.output.trim().split("\n").length, 1, result.output);
      assert.match(result.output.trim(), pattern);
    }
    // Nothing was created: no metadata, no identity, no block store.
    assert.deepEqual(await entries(dataDir), []);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("serve refuses a new store larger than the free space, and N% is of the free space", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-serve-" });
  try {
    const stats = statfsSync(dataDir);
    const freeBytes = stats.bavail * stats.bsize;
    const tooBig = Math.ceil((freeBytes + 64 * 2 ** 30) / 2 ** 30);
    // A store holds at most 16M blocks (7.6 TiB); beyond that the size is "too large" anyway.
    if (tooBig * 2 ** 30 < 16_000_000 * 512 * 1024) {
      const result = await refused(
        torus(["serve", "--data-dir", dataDir, "--size", `${tooBig}GiB`]),
      );
      assert.equal(result.code, 1, result.output);
      assert.match(
        result.output,
        new RegExp(`^torus serve: --size ${tooBig}GiB is more than the .* available in ${dataDir}`),
      );
      assert.deepEqual(await entries(dataDir), []);
    }
    const running = torus(["serve", "--data-dir", dataDir, "--size", "1%"]);
    await running.waitFor("Ready.");
    const blocks = Number(/block store: (\d+) blocks of 512 KiB/.exec(running.output())![1]);
    // 1% of the free space (which other processes may change a little meanwhile).
    const expected = freeBytes / 100 / (512 * 1024);
    assert.ok(Math.abs(blocks - expected) <= expected * 0.1 + 2, `${blocks} vs ${expected}`);
    running.child.kill("SIGTERM");
    assert.equal((await finish(running)).code, 0);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test("an empty --data-dir, $TORUS_DATA_DIR or -C is a usage error, and nothing is created", async () => {
  const cwd = await Deno.makeTempDir({ prefix: "torus-cwd-" });
  try {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["serve", "--data-dir", ""], {}, /^torus serve: --data-dir needs a value/],
      [["serve", "--data-dir= "], {}, /--data-dir needs a value/],
      [["serve"], { TORUS_DATA_DIR: "" }, /^torus serve: \$TORUS_DATA_DIR is set but empty/],
      [["serve", "-C", ""], {}, /--etcd needs a value/],
      [["serve", "--size", ""], {}, /--size needs a value/],
      [["serve", "--peer-address", "tdp://127.0.0.1:4000"], {}, /--peer-address needs -C/],
      [["serve", "-C", "127.0.0.1:2379"], {}, /-C\/--etcd needs --peer-address/],
      [["serve", "--auto-join"], {}, /--auto-join needs --peer-address/],
      [["serve", "--debug-init"], {}, /--debug-init needs --peer-address/],
      [
        ["serve", "-C", "127.0.0.1:2379", "--peer-address", "ftp://x:1"],
        {},
        /--peer-address ftp:\/\/x:1: it must start with tdp:\/\/ or http:\/\//,
      ],
      [
        ["serve", "-C", "127.0.0.1:2379", "--peer-address", "tdp://0.0.0.0:1"],
        {},
        /not a wildcard/,
      ],
      [
        ["serve", "-C", "127.0.0.1:2379", "--peer-address", "tdp://h:1", "--read-level", "x"],
        {},
        /--read-level: read level "x" is not one of block, seq, spread/,
      ],
    ];
    for (const [args, env, pattern] of cases) {
      const result = await refused(torus(args, { env, cwd }));
      assert.equal(result.code, 2, result.output);
      assert.match(result.output.split("\n")[0]!, pattern);
    }
    assert.deepEqual(await entries(cwd), [], "nothing in the working directory");
    for (const path of ["/metadata", "/block"]) {
      await assert.rejects(Deno.lstat(path), Deno.errors.NotFound, `${path} was created`);
    }
  } finally {
    await Deno.remove(cwd, { recursive: true });
  }
});
