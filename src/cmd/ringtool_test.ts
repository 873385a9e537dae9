import assert from "node:assert/strict";
import { BlockRef, SeededRandom } from "../core/mod.ts";
import { type Io, runCommand, UsageError } from "../cli/mod.ts";
import { RingType } from "../ring/mod.ts";
import {
  buildRings,
  createRingtoolCommand,
  parseRingtoolArgs,
  perfectReplicasSent,
  processRingtoolDeps,
  runRingtool,
  synthesizeRefs,
} from "./ringtool.ts";

const seed = () => 99;

Deno.test("ringtool: defaults are ketama, rep 2, 5 peers +2, 64GiB of 256KiB blocks", () => {
  const options = parseRingtoolArgs([], seed);
  assert.deepEqual(options, {
    ringType: RingType.Ketama,
    replication: 2,
    replicationEnd: 2,
    nodes: 5,
    delta: 2,
    blockSizeBytes: 256 * 1024,
    blocks: 262_144,
    rewriteEdgePercent: 40,
    seed: 99,
    ketamaPoints: null,
    json: false,
  });
});

Deno.test("ringtool: accepts --delta -1 as well as --delta=-1", () => {
  assert.equal(parseRingtoolArgs(["--delta", "-1"], seed).delta, -1);
  assert.equal(parseRingtoolArgs(["--delta=-1"], seed).delta, -1);
  assert.throws(() => parseRingtoolArgs(["--delta", "-5"], seed), UsageError);
});

Deno.test("ringtool: perfect traffic is what joiners receive or leavers held", () => {
  // Adding d to n: total·d/(n+d). Removing d of n: total·d/n (the original divided by n-d).
  assert.equal(
    perfectReplicasSent({ nodes: 5, delta: 1, replicasBefore: 600, replicasAfter: 600 }),
    100,
  );
  assert.equal(
    perfectReplicasSent({ nodes: 5, delta: -1, replicasBefore: 500, replicasAfter: 500 }),
    100,
  );
  // Raising replication 2 -> 3 on the same peers: every third replica is new.
  assert.equal(
    perfectReplicasSent({ nodes: 4, delta: 0, replicasBefore: 200, replicasAfter: 300 }),
    100,
  );
  assert.equal(
    perfectReplicasSent({ nodes: 4, delta: 0, replicasBefore: 300, replicasAfter: 200 }),
    0,
  );
});

Deno.test("ringtool: synthesised refs are replayable, exact in count, indexes kept", () => {
  const collect = (s: number) => {
    const refs: BlockRef[] = [];
    const rewritten = synthesizeRefs(
      { blocks: 5000, rewriteEdgePercent: 40, random: new SeededRandom(s) },
      (ref) => refs.push(ref),
    );
    return { refs, rewritten };
  };
  const a = collect(3);
  const b = collect(3);
  assert.equal(a.refs.length, 5000);
  assert.deepEqual(a.refs.map((r) => r.key), b.refs.map((r) => r.key));
  assert.equal(new Set(a.refs.map((r) => r.key)).size, 5000, "refs are unique");
  assert.ok(a.rewritten > 0 && a.rewritten < 5000);
  assert.ok(new Set(a.refs.map((r) => r.inode)).size > 10, "rewrites use new INode ids");
  assert.equal(a.refs[0]!.index, 0n);
  const other = collect(4);
  assert.notDeepEqual(other.refs.map((r) => r.key), a.refs.map((r) => r.key));
});

Deno.test("ringtool: the rings before and after differ by the delta and replication", () => {
  const options = parseRingtoolArgs(["--nodes", "4", "--delta", "-2", "--rep-end", "1"], seed);
  const { before, after } = buildRings(options);
  assert.equal(before.memberUuids().length, 4);
  assert.equal(after.memberUuids().length, 2);
  assert.equal(after.replication, 1);
  assert.ok(after.version > before.version);
});

Deno.test("ringtool: kept + sent covers every replica after the change", () => {
  const options = parseRingtoolArgs(["--total-data", "1GiB", "--ring", "mod"], seed);
  const report = runRingtool(options);
  assert.equal(report.blocksKept + report.blocksSent, report.blocks * report.after.replication);
  assert.equal(
    report.before.perPeer.reduce((sum, peer) => sum + peer.blocks, 0),
    report.blocks * report.before.replication,
  );
});

Deno.test("ringtool: every numeric flag is bounded, and the error states the range", () => {
  const cases: [string[], RegExp][] = [
    [["--nodes", "0"], /--nodes must be an integer in 1\.\.4096, got "0"/],
    [["--nodes", "4097"], /--nodes must be an integer in 1\.\.4096/],
    [["--nodes", "1e3"], /--nodes must be an integer in 1\.\.4096, got "1e3"/],
    [["--nodes", "10", "--delta", "-10"], /--delta must be an integer in -9\.\.4086, got "-10"/],
    [["--nodes", "4096", "--delta", "1"], /--delta must be an integer in -4095\.\.0/],
    [["--nodes", "40", "--rep", "0"], /--rep must be an integer in 1\.\.16, got "0"/],
    [["--nodes", "40", "--rep", "17"], /--rep must be an integer in 1\.\.16, got "17"/],
    [["--nodes", "40", "--rep-end", "4096"], /--rep-end must be an integer in 0\.\.16/],
    [
      ["--nodes", "5", "--rep", "6"],
      /--rep must be an integer in 1\.\.5 with 5 peers \(a ring keeps at most max\(peers, 2\) copies\), got "6"/,
    ],
    [
      ["--nodes", "5", "--delta", "-4", "--rep-end", "3"],
      /--rep-end must be an integer in 0\.\.2 with 1 peers/,
    ],
    [["--block-size", "1000"], /--block-size must be a multiple of 512 B in 512 B\.\.16 MiB/],
    [["--block-size", "32MiB"], /--block-size must be a multiple of 512 B in 512 B\.\.16 MiB/],
    [["--block-size", "0"], /--block-size must be more than 0 bytes/],
    [
      ["--total-data", "1KiB"],
      /--total-data must be 1\.\.67108864 blocks of 256 KiB \(256 KiB\.\.16 TiB\), got "1KiB" = 0 blocks/,
    ],
    [["--total-data", "17TiB"], /--total-data must be 1\.\.67108864 blocks/],
    [["--rewrite-edge", "401"], /--rewrite-edge must be a number in -400\.\.400, got "401"/],
    [["--rewrite-edge", "-1e9"], /--rewrite-edge must be a number in -400\.\.400/],
    [["--rewrite-edge", "Infinity"], /--rewrite-edge must be a number in -400\.\.400/],
    [["--rewrite-edge", "0x10"], /--rewrite-edge must be a number in -400\.\.400/],
    [["--rewrite-edge", ""], /--rewrite-edge needs a value/],
    [["--seed", "4294967296"], /--seed must be an integer in 0\.\.4294967295/],
    [["--seed", "-1"], /--seed must be an integer in 0\.\.4294967295/],
    [["--ketama-points", "0"], /--ketama-points must be an integer in 1\.\.65536/],
    [["--ketama-points", "65537"], /--ketama-points must be an integer in 1\.\.65536/],
    [
      ["--nodes", "4000", "--delta", "96", "--ketama-points", "4096"],
      /--ketama-points with 4096 peers must be in 1\.\.2048 \(at most 8388608 points in a ring\)/,
    ],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseRingtoolArgs(args, seed), (error: unknown) => {
      assert.ok(error instanceof UsageError, `${args.join(" ")}: ${error}`);
      assert.match(error.message, message, args.join(" "));
      return true;
    });
  }
  // The edges of every range are accepted.
  const edges = [
    ["--nodes", "4096", "--delta", "-4095"],
    ["--nodes", "1", "--delta", "4095"],
    ["--nodes", "16", "--delta", "0", "--rep", "16", "--rep-end", "16"],
    ["--nodes", "1", "--delta", "0", "--rep", "2", "--rep-end", "2"],
    ["--block-size", "512", "--total-data", "512"],
    ["--block-size", "16MiB", "--total-data", "16MiB"],
    ["--rewrite-edge", "-400"],
    ["--rewrite-edge", "400.0"],
    ["--rewrite-edge", "12.5"],
    ["--seed", "4294967295"],
    ["--nodes", "4096", "--delta", "0", "--ketama-points", "2048"],
  ];
  for (const args of edges) parseRingtoolArgs(args, seed);
});

function captureIo(): { io: Io; out: () => string; err: () => string } {
  let out = "";
  let err = "";
  return {
    io: { stdout: (text) => void (out += text), stderr: (text) => void (err += text) },
    out: () => out,
    err: () => err,
  };
}

Deno.test("ringtool: progress goes to stderr only when it is a terminal, then is erased", async () => {
  const args = ["--seed", "5", "--total-data", "1GiB", "--ring", "mod", "--json"];
  const run = async (terminal: boolean) => {
    const capture = captureIo();
    const command = createRingtoolCommand({
      newSeed: seed,
      stderrIsTerminal: () => terminal,
      progressIntervalBlocks: 1024,
    });
    assert.equal(await runCommand(command, args, capture.io), 0);
    return { out: capture.out(), err: capture.err() };
  };
  const piped = await run(false);
  assert.equal(piped.err, "", "no progress noise in a pipe");
  const shown = await run(true);
  assert.equal(shown.out, piped.out, "the report itself does not change");
  const updates = shown.err.split("\r").filter((line) => line !== "");
  assert.deepEqual(updates, [
    "torus ringtool: building rings of 5 and 7 peers\x1b[K",
    "torus ringtool: placed 1024 of 4096 blocks (25%)\x1b[K",
    "torus ringtool: placed 2048 of 4096 blocks (50%)\x1b[K",
    "torus ringtool: placed 3072 of 4096 blocks (75%)\x1b[K",
    "torus ringtool: placed 4096 of 4096 blocks (100%)\x1b[K",
    "\x1b[K",
  ]);
  assert.ok(shown.err.endsWith("\r\x1b[K"), "the progress line is erased at the end");
});

Deno.test("ringtool: the process's stderr check is what decides", () => {
  assert.equal(processRingtoolDeps.stderrIsTerminal(), Deno.stderr.isTerminal());
});

Deno.test("ringtool: negative values may follow their flag as a separate word", () => {
  assert.equal(parseRingtoolArgs(["--rewrite-edge", "-12.5"], seed).rewriteEdgePercent, -12.5);
  assert.equal(parseRingtoolArgs(["--nodes", "9", "--delta", "-3"], seed).delta, -3);
});

Deno.test("ringtool: lowering replication while peers leave follows the one replication rule", () => {
  const args = ["--nodes", "3", "--delta", "-1", "--rep", "3", "--rep-end", "2"];
  const { before, after } = buildRings(parseRingtoolArgs(args, seed));
  assert.deepEqual([before.replication, after.replication], [3, 2]);
  assert.equal(after.memberUuids().length, 2);
  const grow = ["--nodes", "2", "--delta", "1", "--rep", "2", "--rep-end", "3"];
  assert.equal(buildRings(parseRingtoolArgs(grow, seed)).after.replication, 3);
});
