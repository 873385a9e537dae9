/**
 * The one-file build: `deno task bundle` output runs from a clean directory (no node_modules, no
 * sources beside it) for `torus version` and `torus ringtool`.
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

Deno.test("bundled torus.js runs version and ringtool from a clean directory, and checks its arguments", async () => {
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
  } finally {
    await Deno.remove(buildDir, { recursive: true });
    await Deno.remove(cleanDir, { recursive: true });
  }
});
