/** The program's dispatch: help, unknown commands, exit codes, honest "not implemented yet". */

import assert from "node:assert/strict";
import { main } from "../../main.ts";
import type { Io } from "../../src/cli/mod.ts";

function captureIo(): Io & { out: string; err: string } {
  const io = {
    out: "",
    err: "",
    stdout(text: string) {
      io.out += text;
    },
    stderr(text: string) {
      io.err += text;
    },
  };
  return io;
}

Deno.test("torus with no command prints usage to stderr and exits 2", async () => {
  const io = captureIo();
  assert.equal(await main([], io), 2);
  assert.match(io.err, /Usage: torus <command>/);
});

Deno.test("torus help lists every command and exits 0", async () => {
  const io = captureIo();
  assert.equal(await main(["help"], io), 0);
  for (const name of ["serve", "ctl", "blk", "aoe", "ringtool", "version"]) {
    assert.match(io.out, new RegExp(`\\n  ${name} `));
  }
});

Deno.test("an unknown command is a one-line usage error with exit 2", async () => {
  const io = captureIo();
  assert.equal(await main(["frobnicate"], io), 2);
  assert.match(io.err, /^torus: unknown command "frobnicate"\n/);
});

Deno.test("an unknown command is printed escaped: typed input cannot drive the terminal", async () => {
  for (const args of [["\x1b[2J\u202e"], ["help", "\x1b[2J\u202e"]]) {
    const io = captureIo();
    assert.equal(await main(args, io), 2);
    assert.match(io.err, /unknown command "\\x1b\[2J\\u202e"\n/);
  }
});

Deno.test("an unknown flag is a usage error with exit 2 and a hint", async () => {
  const io = captureIo();
  assert.equal(await main(["version", "--bogus"], io), 2);
  assert.equal(
    io.err,
    "torus version: Unknown option '--bogus'\nRun 'torus version --help' for usage.\n",
  );
});

Deno.test("version prints the program version, and --json parses", async () => {
  const text = captureIo();
  assert.equal(await main(["version"], text), 0);
  assert.match(text.out, /^torus\nVersion: \d+\.\d+\.\d+/);
  const json = captureIo();
  assert.equal(await main(["version", "--json"], json), 0);
  assert.equal(typeof JSON.parse(json.out).version, "string");
});

Deno.test("every command answers --help with its usage and exit 0", async () => {
  for (const name of ["serve", "ctl", "blk", "aoe", "ringtool", "version"]) {
    const io = captureIo();
    assert.equal(await main([name, "--help"], io), 0, name);
    assert.match(io.out, /Usage: torus /, name);
  }
});
