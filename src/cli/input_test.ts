/** The input rules of every command: blank values, negative numbers, lists, environment. */

import assert from "node:assert/strict";
import { parseFlags } from "./command.ts";
import {
  checkArgsNotBlank,
  envVar,
  protectNegativeNumbers,
  readProcessEnv,
  splitList,
} from "./input.ts";
import { UsageError } from "./usage_error.ts";

const options = {
  etcd: { type: "string", short: "C" },
  size: { type: "string", default: "1GiB" },
  delta: { type: "string" },
  json: { type: "boolean" },
} as const;

function usageError(pattern: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof UsageError, String(error));
    assert.match(error.message, pattern);
    assert.ok(!error.message.includes("\n"));
    return true;
  };
}

Deno.test("an empty or blank flag value is a usage error naming the flag, in every form", () => {
  const cases: [string[], RegExp][] = [
    [["-C", ""], /--etcd needs a value/],
    [["-C", "  "], /--etcd needs a value/],
    [["--etcd", ""], /--etcd needs a value/],
    [["--etcd="], /--etcd needs a value/],
    [["--etcd=\t"], /--etcd needs a value/],
    [["--size", ""], /--size needs a value/],
    [["--size="], /--size needs a value/],
    [["x", ""], /argument 2 is empty/],
    [[" "], /argument 1 is empty/],
    [["--json", ""], /argument 1 is empty/],
  ];
  for (const [args, pattern] of cases) {
    assert.throws(() => parseFlags(args, options), usageError(pattern), JSON.stringify(args));
  }
});

Deno.test("a value that only looks odd is still a value", () => {
  const { values, positionals } = parseFlags(["-C", " h:1 ", "--size=2GiB", "a b"], options);
  assert.equal(values.etcd, " h:1 ");
  assert.equal(values.size, "2GiB");
  assert.deepEqual(positionals, ["a b"]);
});

Deno.test("negative numbers are values and arguments, never flags", () => {
  const parsed = parseFlags(["--delta", "-1", "x", "-5", "-1GiB", "-.5", "--size", "-2"], options);
  assert.equal(parsed.values.delta, "-1");
  assert.equal(parsed.values.size, "-2");
  assert.deepEqual(parsed.positionals, ["x", "-5", "-1GiB", "-.5"]);
  assert.equal(parseFlags(["--delta=-3"], options).values.delta, "-3");
  assert.deepEqual(parseFlags(["--", "-7", "--json"], options).positionals, ["-7", "--json"]);
  // A dash followed by a letter is still a flag, and an unknown one is still refused.
  assert.throws(() => parseFlags(["-x"], options), usageError(/Unknown option '-x'/));
  assert.throws(() => parseFlags(["--size", "-x"], options), usageError(/ambiguous/));
});

Deno.test("protectNegativeNumbers restores exactly what it replaced", () => {
  const { args, restore } = protectNegativeNumbers(["-1", "a", "-2", "--", "-3"]);
  assert.equal(args.filter((a) => a.includes("\0")).length, 2);
  assert.deepEqual(args.map(restore), ["-1", "a", "-2", "--", "-3"]);
  assert.equal(restore("\0negative-9"), "\0negative-9");
});

Deno.test("commands that do not parse flags still refuse blank arguments and values", () => {
  checkArgsNotBlank(["nbd", "--x=1", "-v"]);
  assert.throws(() => checkArgsNotBlank(["--data-dir="]), usageError(/--data-dir needs a value/));
  assert.throws(() => checkArgsNotBlank(["a", " "]), usageError(/argument 2 is empty/));
});

Deno.test("lists refuse empty items instead of shrinking", () => {
  assert.deepEqual(splitList("a:1, b:2", "etcd endpoint"), ["a:1", "b:2"]);
  for (const text of [",", "a:1,", ",a:1", "a:1,,b:2", " , "]) {
    assert.throws(() => splitList(text, "UUID"), usageError(/empty UUID in the list/), text);
  }
});

Deno.test("a set but blank environment variable is a usage error, an unset one is absent", () => {
  const values = new Map([["A", ""], ["B", " \t"], ["C", "/x"]]);
  const env = { get: (name: string) => values.get(name) };
  assert.equal(envVar(env, "UNSET"), undefined);
  assert.equal(envVar(env, "C"), "/x");
  assert.throws(() => envVar(env, "A"), usageError(/^\$A is set but empty/));
  assert.throws(() => envVar(env, "B"), usageError(/^\$B is set but empty/));
});

Deno.test("readProcessEnv reads the real environment", () => {
  assert.equal(readProcessEnv("TORUS_SURELY_UNSET_VARIABLE"), undefined);
  assert.equal(readProcessEnv("PATH"), Deno.env.get("PATH"));
});
