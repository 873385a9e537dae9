/**
 * Input that is not valid UTF-8. Deno refuses such a command line before any torus code runs
 * (its own usage text, a Rust backtrace with RUST_BACKTRACE=1), and `deno task` drops such
 * arguments, so bin/torus checks the arguments itself; environment variables reach the program
 * and are checked by it. Every case is one line on stderr and exit 2, never a backtrace.
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

/** Deno's cache, kept when the tests move $HOME, so nothing is compiled again. */
const denoDir = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;

/**
 * Runs `script` with /bin/sh in an empty temp dir (`created` lists what appeared in it), with
 * `$TORUS` naming bin/torus and $HOME another temp dir; bytes come from printf.
 */
async function sh(script: string) {
  const cwd = await Deno.makeTempDir({ prefix: "torus-launcher-" });
  const home = await Deno.makeTempDir({ prefix: "torus-home-" });
  try {
    const output = await new Deno.Command("/bin/sh", {
      args: ["-c", script],
      cwd,
      env: {
        TORUS: `${root}bin/torus`,
        HOME: home,
        DENO_DIR: denoDir,
        RUST_BACKTRACE: "1",
        NO_COLOR: "1",
      },
    }).output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
      created: (await Array.fromAsync(Deno.readDir(cwd))).map((e) => e.name),
    };
  } finally {
    await Deno.remove(cwd, { recursive: true });
    await Deno.remove(home, { recursive: true });
  }
}

Deno.test("bin/torus refuses an argument that is not valid UTF-8 in one line, exit 2", async () => {
  const cases: [string, number][] = [
    [`"$TORUS" ctl volume list "$(printf '\\377')"`, 4],
    [`"$TORUS" "$(printf 'a\\300\\257')" version`, 1],
    [`"$TORUS" serve --data-dir "$(printf '/tmp/\\355\\240\\200')"`, 3],
    [`"$TORUS" ctl volume create-block ok 1GiB "$(printf '\\342\\202')"`, 6],
  ];
  for (const [script, index] of cases) {
    const result = await sh(script);
    assert.equal(result.code, 2, `${script}: ${result.stderr}`);
    assert.equal(result.stderr, `torus: argument ${index} is not valid UTF-8\n`, script);
    assert.equal(result.stdout, "");
    assert.deepEqual(result.created, []);
  }
});

Deno.test("bin/torus runs torus with valid arguments, UTF-8 included", async () => {
  const version = await sh(`"$TORUS" version --json`);
  assert.equal(version.code, 0, version.stderr);
  assert.equal(typeof JSON.parse(version.stdout).version, "string");
  const named = await sh(`"$TORUS" ctl volume list --data-dir "$(printf 'd\\303\\251')"`);
  assert.equal(named.code, 1, named.stderr);
  assert.match(named.stderr, /^torus ctl volume list: cluster not initialised/);
});

Deno.test("an environment variable that is not valid UTF-8 is one line and exit 2", async () => {
  const cases: [string, RegExp][] = [
    [
      `TORUS_DATA_DIR="$(printf '\\377')" "$TORUS" ctl volume list`,
      /^torus ctl volume list: \$TORUS_DATA_DIR is not valid UTF-8$/,
    ],
    [
      `TORUS_DATA_DIR="$(printf '\\377')" "$TORUS" serve`,
      /^torus serve: \$TORUS_DATA_DIR is not valid UTF-8$/,
    ],
    [`HOME="$(printf '\\377')" "$TORUS" ctl ring get`, /^torus ctl ring get: \$HOME is not valid/],
  ];
  for (const [script, pattern] of cases) {
    const result = await sh(script);
    assert.equal(result.code, 2, `${script}: ${result.stderr}`);
    assert.match(result.stderr.split("\n")[0]!, pattern);
    assert.doesNotMatch(result.stderr, /Uncaught|backtrace|^ +at /im);
    assert.deepEqual(result.created, []);
  }
  // A test knob read while modules load must not crash the program either.
  const verify = await sh(`TORUS_VERIFY="$(printf '\\377')" "$TORUS" version`);
  assert.equal(verify.code, 0, verify.stderr);
  assert.equal(verify.stderr, "");
});
