/**
 * `torus ringtool` as a user runs it: a subprocess of main.ts, checked through its exit status
 * and output only.
 * @module
 */

import assert from "node:assert/strict";
import { hasCommand } from "../support/packages.ts";

const root = new URL("../../", import.meta.url).pathname;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function ringtool(...args: string[]): Promise<Run> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "ringtool", ...args],
    cwd: root,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** The value of the `Name: value` line of the report. */
function field(stdout: string, name: string): string {
  const line = stdout.split("\n").find((l) => l.startsWith(`${name}: `));
  assert.ok(line !== undefined, `no "${name}:" line in:\n${stdout}`);
  return line.slice(name.length + 2);
}

const small = ["--seed", "7", "--total-data", "2GiB", "--nodes", "5", "--delta", "1"];

Deno.test("ringtool: ketama going 5->6 peers sends about what the newcomer must get", async () => {
  const run = await ringtool("--ring", "ketama", ...small);
  assert.equal(run.code, 0, run.stderr);
  const kept = Number(field(run.stdout, "Blocks Kept"));
  const sent = Number(field(run.stdout, "Blocks Sent"));
  assert.equal(kept + sent, 8192 * 2, "every replica after the change is kept or sent");
  const percent = Number(field(run.stdout, "Percentage Sent").replace("%", ""));
  assert.ok(Math.abs(percent - 100 / 6) < 4, `ketama sent ${percent}%`);
  assert.match(field(run.stdout, "Ring"), /^ketama, seed 7$/);
  assert.match(field(run.stdout, "Perfect Traffic"), /GiB|MiB/);
  assert.equal(run.stdout.match(/^ {2}[0-9a-f-]{36} /gm)?.length, 5 + 6, "one row per peer");
});

Deno.test("ringtool: mod going 5->6 peers moves most replicas", async () => {
  const run = await ringtool("--ring", "mod", ...small);
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stderr, "", "no progress on a stderr that is not a terminal");
  const percent = Number(field(run.stdout, "Percentage Sent").replace("%", ""));
  assert.ok(percent > 60, `mod sent only ${percent}%`);
});

Deno.test("ringtool: the same seed replays the same run", async () => {
  const [a, b] = await Promise.all([ringtool(...small), ringtool(...small)]);
  assert.equal(a.code, 0);
  assert.equal(a.stdout, b.stdout);
});

Deno.test("ringtool: --json prints one object with the same figures", async () => {
  const run = await ringtool("--json", "--delta=-2", "--rep-end", "3", ...small.slice(0, 6));
  assert.equal(run.code, 0, run.stderr);
  const report = JSON.parse(run.stdout);
  assert.equal(report.ring, "ketama");
  assert.equal(report.seed, 7);
  assert.equal(report.blocks, 8192);
  assert.equal(report.before.peers, 5);
  assert.equal(report.after.peers, 3);
  assert.equal(report.after.replication, 3);
  assert.equal(report.blocksKept + report.blocksSent, 8192 * 3);
  assert.equal(report.networkTrafficBytes, report.blocksSent * 256 * 1024);
  assert.equal(report.before.perPeer.length, 5);
});

Deno.test("ringtool: bad flags exit 2 with a one-line error and the usage hint", async () => {
  const bad = [
    ["--ring", "union"],
    ["--ring", "bogus"],
    ["--nodes", "0"],
    ["--delta", "-5"],
    ["--rep", "two"],
    ["--block-size", "12Q"],
    ["--total-data", "1KiB"],
    ["--rep", "17"],
    ["--rewrite-edge", "1000"],
    ["--ketama-points", "100000"],
    ["--no-such-flag"],
    ["stray"],
  ];
  const runs = await Promise.all(bad.map((args) => ringtool(...args)));
  runs.forEach((run, i) => {
    assert.equal(run.code, 2, `${bad[i]!.join(" ")}: ${run.stderr}`);
    assert.equal(run.stdout, "");
    const lines = run.stderr.trimEnd().split("\n");
    assert.equal(lines.length, 2, run.stderr);
    assert.match(lines[0]!, /^torus ringtool: \S/);
    assert.equal(lines[1], "Run 'torus ringtool --help' for usage.");
  });
});

Deno.test("ringtool: --help documents every flag", async () => {
  const run = await ringtool("--help");
  assert.equal(run.code, 0);
  for (
    const flag of [
      "--ring",
      "--rep",
      "--rep-end",
      "--nodes",
      "--delta",
      "--block-size",
      "--total-data",
      "--rewrite-edge",
      "--seed",
      "--ketama-points",
      "--json",
    ]
  ) {
    assert.ok(run.stdout.includes(`  ${flag} `), flag);
  }
});

const haveScript = hasCommand("script");

Deno.test({
  name: "ringtool: on a real terminal, progress is shown on one line and erased" +
    (haveScript ? "" : ": skipped, `script` (bsdutils) is not installed"),
  ignore: !haveScript,
  async fn() {
    // script(1) runs the command on a pseudo-terminal: stdout and stderr both land there.
    const command = `'${Deno.execPath()}' run -A main.ts ringtool --total-data 32GiB --ring mod ` +
      `--seed 1 --json`;
    const output = await new Deno.Command("script", {
      args: ["-qec", command, "/dev/null"],
      cwd: root,
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, text);
    assert.ok(text.includes("\rtorus ringtool: placed 65536 of 131072 blocks (50%)\x1b[K"), text);
    const erased = text.lastIndexOf("\r\x1b[K");
    assert.ok(erased >= 0 && text.slice(erased + 4).startsWith('{"ring":"mod"'), text);
    // The same run through pipes: the same report and no progress at all.
    const piped = await ringtool("--total-data", "32GiB", "--ring", "mod", "--seed", "1", "--json");
    assert.equal(piped.stderr, "");
    assert.equal(text.slice(erased + 4).replaceAll("\r\n", "\n"), piped.stdout);
  },
});
