import assert from "node:assert/strict";
import { BlockRef, SeededRandom } from "../core/mod.ts";
import { UsageError } from "../cli/mod.ts";
import { RingType } from "../ring/mod.ts";
import {
  buildRings,
  parseRingtoolArgs,
  perfectReplicasSent,
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

Deno.test("ringtool: lowering replication while peers leave follows the one replication rule", () => {
  const args = ["--nodes", "3", "--delta", "-1", "--rep", "3", "--rep-end", "2"];
  const { before, after } = buildRings(parseRingtoolArgs(args, seed));
  assert.deepEqual([before.replication, after.replication], [3, 2]);
  assert.equal(after.memberUuids().length, 2);
  const grow = ["--nodes", "2", "--delta", "1", "--rep", "2", "--rep-end", "3"];
  assert.equal(buildRings(parseRingtoolArgs(grow, seed)).after.replication, 3);
});
