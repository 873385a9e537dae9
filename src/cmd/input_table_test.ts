/**
 * The input rules (src/cli/input.ts) over every command the program has, as a table built from
 * the command tree itself, so a new command or flag is covered without editing this file:
 *
 * - every flag named in every leaf command's help, given an empty or blank value in every form
 *   (`--flag=`, `--flag= `, `--flag ""`, `-X ""`), is a usage error (exit 2) that names the
 *   problem, and no metadata store is opened;
 * - a blank positional argument is a usage error everywhere;
 * - a set but empty $TORUS_DATA_DIR or $HOME is a usage error for every command that reads it;
 * - a negative number where a size or count belongs gets that value's error, not "Unknown option";
 * - names looked up from user input (profiles, ring types, block specs, commands) never match
 *   JavaScript built-ins such as `constructor`.
 *
 * `serve` is checked through its flag table (running it would start a node).
 */

import assert from "node:assert/strict";
import {
  type Command,
  type Env,
  type Io,
  type KvDrivers,
  openMetadata,
  parseFlags,
  runCommand,
  UsageError,
} from "../cli/mod.ts";
import { ManualClock } from "../core/mod.ts";
import { flagsInHelp } from "./ctl/completion.ts";
import type { CtlDeps } from "./ctl/common.ts";
import { ctlCommand } from "./ctl/mod.ts";
import { commands } from "./mod.ts";
import { serveFlags } from "./serve.ts";

interface Output {
  code: number;
  err: string;
}

interface Program {
  run(args: string[]): Promise<Output>;
  /** Stores the commands tried to open (must stay empty for usage errors). */
  opened: string[];
}

/** The program with ctl over injected deps: opening any store is recorded and refused. */
function program(variables: Record<string, string> = {}): Program {
  const opened: string[] = [];
  const refuse = (what: string) => {
    opened.push(what);
    return Promise.reject(new Error(`opened ${what}`));
  };
  const drivers: KvDrivers = {
    openEtcd: (options) => refuse(`etcd ${options.endpoints.join(",")}`),
    openEmbedded: (options) => refuse(options.path),
  };
  const values = new Map(Object.entries({ HOME: "/nonexistent-home", ...variables }));
  const env: Env = { get: (name) => values.get(name) };
  const deps: CtlDeps = {
    openMetadata: (flags, options) =>
      openMetadata(flags, { ...options, env, drivers, clock: new ManualClock(0) }),
    env,
    clock: new ManualClock(0),
    terminal: { isInteractive: () => false, readLine: () => Promise.resolve(null) },
    rootCommands: () => commands,
  };
  const root = commands.map((c) => c.name === "ctl" ? ctlCommand(deps) : c)
    .filter((c) => c.name !== "serve");
  return {
    opened,
    async run(args) {
      const output = { code: 0, err: "" };
      const io: Io = { stdout: () => {}, stderr: (text) => void (output.err += text) };
      const command = root.find((c) => c.name === args[0]);
      assert.ok(command, `no command ${args[0]}`);
      output.code = await runCommand(command, args.slice(1), io);
      return output;
    },
  };
}

/** Every leaf command (no subcommands) with its path, e.g. ["ctl", "volume", "list"]. */
function leaves(root: readonly Command[], path: string[] = []): [string[], Command][] {
  return root.flatMap((command) => {
    const here = [...path, command.name];
    return command.subcommands ? leaves(command.subcommands, here) : [[here, command]];
  });
}

const allLeaves = leaves(commands).filter(([path]) => path[0] !== "serve");

function blankForms(flag: string): string[][] {
  return flag.startsWith("--")
    ? [[`${flag}=`], [`${flag}= `], [flag, ""], [flag, " \t"]]
    : [[flag, ""], [flag, " "]];
}

/** The one-line explanations a blank value may get. */
const blankMessage = /needs a value|argument \d+ is empty|does not take an argument/;

function assertUsage(output: Output, pattern: RegExp, what: string): void {
  assert.equal(output.code, 2, `${what}: exit ${output.code}: ${output.err}`);
  assert.match(output.err.split("\n")[0]!, pattern, what);
}

Deno.test("every flag of every command refuses an empty or blank value", async () => {
  const torus = program();
  let cases = 0;
  for (const [path, command] of allLeaves) {
    const flags = flagsInHelp(command.help).filter((f) => f !== "--help" && f !== "-h");
    for (const flag of flags) {
      for (const form of blankForms(flag)) {
        const what = [...path, ...form].map((a) => JSON.stringify(a)).join(" ");
        assertUsage(await torus.run([...path, ...form]), blankMessage, what);
        cases++;
      }
    }
    for (const blank of ["", " "]) {
      assertUsage(await torus.run([...path, blank]), /argument 1 is empty/, path.join(" "));
    }
  }
  assert.deepEqual(torus.opened, []);
  // The table really covers the commands: ctl's metadata flags alone give dozens of cases.
  assert.ok(cases > 400, `only ${cases} cases`);
});

Deno.test("metadata flags before the ctl noun refuse blank values too", async () => {
  const torus = program();
  for (const flag of ["-C", "--etcd", "--data-dir", "--profile", "--config"]) {
    for (const form of blankForms(flag)) {
      const output = await torus.run(["ctl", ...form, "volume", "list"]);
      assertUsage(output, blankMessage, `ctl ${form.join(" ")} volume list`);
    }
  }
  assert.deepEqual(torus.opened, []);
});

Deno.test("serve's flags refuse blank values and take negative numbers as values", () => {
  const flags = Object.entries(serveFlags).flatMap(([name, option]) => [
    `--${name}`,
    ...("short" in option ? [`-${option.short}`] : []),
  ]);
  for (const flag of flags) {
    for (const form of blankForms(flag)) {
      assert.throws(() => parseFlags(form, serveFlags), UsageError, form.join(" "));
    }
  }
  assert.equal(parseFlags(["--size", "-5"], serveFlags).values.size, "-5");
});

/** Arguments that make each ctl command that reads metadata go as far as opening it. */
const reachesMetadata: Record<string, string[]> = {
  "ctl init": [],
  "ctl list-peers": [],
  "ctl peer list": [],
  "ctl peer add": ["--all-peers"],
  "ctl peer remove": ["--all-peers"],
  "ctl ring get": [],
  "ctl ring set-replication": ["1"],
  "ctl ring manual-change": [],
  "ctl volume list": [],
  "ctl volume create-block": ["v", "1GiB"],
  "ctl volume delete": ["v"],
  "ctl block create": ["v", "1GiB"],
  "ctl block snapshot create": ["v@s"],
  "ctl block snapshot list": ["v"],
  "ctl block snapshot delete": ["v@s"],
  "ctl block snapshot restore": ["v@s"],
  "ctl block clone": ["v@s", "w"],
  "ctl block dump": ["v", "/dev/null"],
  "ctl block load": ["/dev/null", "v", "1MiB"],
  "ctl volume resize": ["v", "2GiB"],
  "ctl wipe": ["--yes-i-am-sure"],
};
/** ctl commands that never open metadata. */
const noMetadata = new Set([
  "ctl config",
  "ctl version",
  "ctl completion",
]);

Deno.test("a set but empty $TORUS_DATA_DIR or $HOME stops every ctl command", async () => {
  const ctlLeaves = allLeaves.filter(([path]) => path[0] === "ctl").map(([p]) => p.join(" "));
  for (const name of ctlLeaves) {
    if (noMetadata.has(name)) continue;
    assert.ok(Object.hasOwn(reachesMetadata, name), `add ${name} to reachesMetadata`);
    const args = [...name.split(" "), ...reachesMetadata[name]!];
    for (const value of ["", "  "]) {
      for (const variable of ["TORUS_DATA_DIR", "HOME"]) {
        const torus = program({ [variable]: value });
        const output = await torus.run(args);
        assertUsage(output, new RegExp(`^torus .*: \\$${variable} is set but empty`), name);
        assert.deepEqual(torus.opened, [], name);
      }
    }
    // With the variable set the same command goes past it (to "not initialised", or to the
    // store for init), so the rows above fail if the rule is dropped.
    const dir = await Deno.makeTempDir({ prefix: "torus-env-" });
    try {
      const control = await program({ TORUS_DATA_DIR: `${dir}/data` }).run(args);
      assert.equal(control.code, 1, `${name}: ${control.err}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  const config = program({ HOME: "" });
  assertUsage(await config.run(["ctl", "config", "-C", "h:1"]), /\$HOME is set but empty/, "cfg");
});

Deno.test("negative numbers get the error of their value, never 'Unknown option'", async () => {
  const torus = program();
  const cases: [string[], RegExp][] = [
    [["ctl", "volume", "create-block", "x", "-5"], /invalid size "-5": a size cannot be negative/],
    [["ctl", "block", "create", "x", "-1GiB"], /cannot be negative/],
    [["ctl", "init", "--block-size", "-512KiB"], /cannot be negative/],
    [["ctl", "ring", "set-replication", "-1"], /replication "-1" must be a whole number/],
    [["ctl", "ring", "manual-change", "-r", "-2"], /replication "-2" must be a whole number/],
    [["ringtool", "--block-size", "-4KiB"], /--block-size: .*cannot be negative/],
    [["ringtool", "--total-data", "-1GiB"], /--total-data: .*cannot be negative/],
    [["ringtool", "--nodes", "-3"], /--nodes must be an integer in 1\.\./],
    [["ringtool", "--seed", "-1"], /--seed must be an integer in 0\.\./],
  ];
  for (const [args, pattern] of cases) {
    const output = await torus.run(args);
    assert.notEqual(output.code, 0, args.join(" "));
    assert.doesNotMatch(output.err, /Unknown option|ambiguous/, args.join(" "));
    assert.match(output.err.split("\n")[0]!, pattern, args.join(" "));
  }
});

Deno.test("names from user input never match JavaScript built-ins", async () => {
  // A config file exists, so a profile lookup really looks into its profiles.
  const home = await Deno.makeTempDir({ prefix: "torus-home-" });
  await Deno.mkdir(`${home}/.torus`);
  await Deno.writeTextFile(
    `${home}/.torus/config.json`,
    JSON.stringify({ etcd_config: { default: { etcd: "127.0.0.1:1" } } }),
  );
  using _cleanup = { [Symbol.dispose]: () => Deno.removeSync(home, { recursive: true }) };
  const torus = program({ HOME: home });
  for (const name of ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf"]) {
    const cases: [string[], RegExp][] = [
      [["ctl", name], /unknown command/],
      [["ctl", "volume", name], /unknown command/],
      [["ctl", "ring", "manual-change", "--type", name], /unknown ring type/],
      [["ctl", "init", "--block-spec", name], /unknown|invalid/i],
      [["ringtool", "--ring", name], /unknown ring type/],
      [["ctl", "completion", name], /unsupported shell/],
      [["ctl", "volume", "list", "--profile", name], /profile ".*" is not in config file/],
      [["ctl", "volume", "list", `--${name}`], /Unknown option/],
    ];
    for (const [args, pattern] of cases) {
      const output = await torus.run(args);
      assert.notEqual(output.code, 0, args.join(" "));
      assert.match(output.err.split("\n")[0]!, pattern, args.join(" "));
    }
  }
  assert.deepEqual(torus.opened, []);
});
