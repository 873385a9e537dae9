/**
 * The one-file build: `deno task bundle` output runs from a clean directory (no node_modules, no
 * sources beside it) for `torus version`, `torus ringtool`, and `torus serve` with its HTTP
 * status server (prom-client inlined).
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

async function run(args: string[], cwd: string) {
  const output = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs `script` with /bin/sh, with this Deno first on PATH (the bundle execs `deno`). */
async function runSh(script: string, cwd: string) {
  const denoDir = Deno.execPath().replace(/\/[^/]*$/, "");
  const output = await new Deno.Command("/bin/sh", {
    args: ["-c", script],
    cwd,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1", PATH: `${denoDir}:${Deno.env.get("PATH") ?? ""}` },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Starts the bundle's `serve --host`, reads /healthz and /metrics, and stops it with SIGTERM. */
async function serveFromBundle(cleanDir: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "torus.js",
      "serve",
      "--data-dir",
      `${cleanDir}/data`,
      "--size",
      "16MiB",
      "--host",
      "127.0.0.1",
      "--port",
      "0",
    ],
    cwd: cleanDir,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const pumped = Promise.all([child.stdout, child.stderr].map(async (stream) => {
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  }));
  try {
    const deadline = Date.now() + 60_000;
    let match: RegExpExecArray | null = null;
    while ((match = /HTTP: +(http:\/\/[0-9.]+:\d+)/.exec(text)) === null) {
      assert.ok(Date.now() < deadline, `the bundled serve did not start: ${text}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const base = match[1]!;
    assert.equal(await (await fetch(`${base}/healthz`)).text(), "ok\n");
    const metrics = await (await fetch(`${base}/metrics`)).text();
    assert.match(metrics, /^# TYPE torus_storage_blocks gauge$/m);
    assert.match(metrics, /^torus_storage_blocks_total\{storage="current"\} 31$/m);
  } finally {
    child.kill("SIGTERM");
    const status = await child.status;
    await pumped;
    assert.equal(status.code, 0, text);
  }
}

Deno.test("bundled torus.js runs version, ringtool and serve with HTTP from a clean directory, and checks its arguments", async () => {
  const buildDir = await Deno.makeTempDir({ prefix: "torus-bundle-" });
  const cleanDir = await Deno.makeTempDir({ prefix: "torus-clean-" });
  try {
    const build = await run(["run", "-A", "scripts/bundle.ts", `${buildDir}/torus.js`], root);
    assert.equal(build.code, 0, build.stderr);
    await Deno.copyFile(`${buildDir}/torus.js`, `${cleanDir}/torus.js`);

    const version = await run(["run", "-A", "torus.js", "version"], cleanDir);
    assert.equal(version.code, 0, version.stderr);
    assert.match(version.stdout, /^torus\nVersion: /);

    const ringtool = await run(
      ["run", "-A", "torus.js", "ringtool", "--ring", "ketama", "--nodes", "5", "--delta", "1"],
      cleanDir,
    );
    assert.equal(ringtool.code, 0, ringtool.stderr);
    assert.match(ringtool.stdout, /Blocks Kept/i);

    // Run as a program, the file checks its arguments before Deno sees them.
    const direct = await runSh("exec ./torus.js version --json", cleanDir);
    assert.equal(direct.code, 0, direct.stderr);
    assert.match(direct.stdout, /"version":/);
    const bad = await runSh('exec ./torus.js ctl volume list "$(printf "a\\377")"', cleanDir);
    assert.equal(bad.code, 2, bad.stderr);
    assert.equal(bad.stderr, "torus: argument 4 is not valid UTF-8\n");
    assert.equal(bad.stdout, "");

    await serveFromBundle(cleanDir);
  } finally {
    await Deno.remove(buildDir, { recursive: true });
    await Deno.remove(cleanDir, { recursive: true });
  }
});
