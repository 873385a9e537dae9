/**
 * The AoE bench: its pure helpers (options, offsets, /proc parsing, the repairs of vblade's
 * replies, the window of frames on the wire, the tables), and a smoke run of
 * `scripts/bench_aoe.ts` on a small export against torus aoe and vblade (root and vblade only)
 * that also checks it left no link or namespace behind.
 */

import assert from "node:assert/strict";
import { AoeCommand, AoeFlag, AtaFlag } from "../src/block/aoe/protocol.ts";
import { ip, netnsSkipReason } from "../tests/support/netns.ts";
import { hasCommand } from "../tests/support/packages.ts";
import {
  type AoeSample,
  aoeWorkloads,
  ataTag,
  configOf,
  costTable,
  FrameWindow,
  MEMORY,
  parseProcStatTicks,
  randomLba,
  rateOf,
  repairFrame,
  roundRatios,
  SeededRandom,
  selectWorkloads,
  throughputTable,
  TORUS,
  VBLADE,
} from "./bench_aoe.ts";

const root = new URL("../", import.meta.url).pathname;
const MiB = 1024 * 1024;

Deno.test("bench_aoe: options, with --quick and without", () => {
  const full = configOf([]);
  assert.equal(full.volumeBytes, 256 * MiB);
  assert.equal(full.seqBytes, 64 * MiB);
  assert.equal(full.rounds, 3);
  assert.equal(full.runtimeSeconds, 5);
  assert.equal(full.mtu, 1500);
  assert.equal(full.framesInFlight, 16);
  assert.equal(full.memory, true);
  const quick = configOf(["--quick", "--filter", "QD16", "--no-memory", "--mtu", "9000"]);
  assert.equal(quick.rounds, 1);
  assert.equal(quick.runtimeSeconds, 1);
  assert.equal(quick.filter, "QD16");
  assert.equal(quick.memory, false);
  assert.equal(quick.mtu, 9000);
  assert.throws(() => configOf(["--rounds", "0"]), /whole number/);
  assert.throws(() => configOf(["--volume-mib", "4", "--seq-mib", "8"]), /larger/);
  assert.throws(() => configOf(["--mtu", "100"]), /1024\.\.65535/);
  assert.deepEqual(
    selectWorkloads("randread").map((w) => w.name),
    ["4k randread QD1", "4k randread QD16"],
  );
  assert.equal(selectWorkloads(null).length, aoeWorkloads.length);
});

Deno.test("bench_aoe: random offsets are seeded, aligned and inside the export", () => {
  const draw = (seed: number) => {
    const random = new SeededRandom(seed);
    return Array.from({ length: 1000 }, () => randomLba(random, 64 * MiB, 4096));
  };
  const lbas = draw(42);
  assert.deepEqual(draw(42), lbas, "the same seed gives the same offsets");
  assert.notDeepEqual(draw(43), lbas);
  assert.ok(lbas.every((lba) => lba % 8 === 0 && lba >= 0 && lba + 8 <= (64 * MiB) / 512));
  assert.ok(new Set(lbas).size > 900, "spread over the export");
  assert.ok(new SeededRandom(0).nextU32() !== 0, "a zero seed does not stick at zero");
});

Deno.test("bench_aoe: CPU ticks from /proc/PID/stat, even with a strange command name", () => {
  const fields = ["S", "1", "2", "3", "0", "-1", "4194304", "10", "0", "0", "0", "250", "75"];
  const line = `1234 (a (weird) name) ${fields.join(" ")} 0 0 20 0 1 0 100 0 0\n`;
  assert.equal(parseProcStatTicks(line), 325);
  assert.throws(() => parseProcStatTicks("garbage"), /not a \/proc\/PID\/stat line/);
});

/** An AoE frame: the Ethernet and AoE headers, an ATA header, then `data`. */
function aoeFrame(
  options: { response: boolean; command?: number; ataFlags?: number; tag?: number },
  data: Uint8Array = new Uint8Array(),
): Uint8Array {
  const frame = new Uint8Array(36 + data.length);
  frame[12] = 0x88;
  frame[13] = 0xa2;
  frame[14] = 0x10 | (options.response ? AoeFlag.Response : 0);
  frame[19] = options.command ?? AoeCommand.Ata;
  new DataView(frame.buffer).setUint32(20, options.tag ?? 0x01020304);
  frame[24] = options.ataFlags ?? 0;
  frame.set(data, 36);
  return frame;
}

Deno.test("bench_aoe: short replies are padded, write replies' padding zeroed, others kept", () => {
  const config = aoeFrame({ response: true, command: AoeCommand.QueryConfig }).subarray(0, 32);
  const padded = repairFrame(config);
  assert.equal(padded.repair, "short reply padded");
  assert.equal(padded.frame.length, 60);
  assert.deepEqual(padded.frame.subarray(0, 32), config);
  assert.ok(padded.frame.subarray(32).every((b) => b === 0));

  const leaked = aoeFrame(
    { response: true, ataFlags: AtaFlag.Write | AtaFlag.Lba48 },
    new Uint8Array(24).fill(7),
  );
  const zeroed = repairFrame(leaked);
  assert.equal(zeroed.repair, "write reply padding zeroed");
  assert.equal(zeroed.frame.length, 60);
  assert.ok(zeroed.frame.subarray(36).every((b) => b === 0));

  const clean = aoeFrame({ response: true, ataFlags: AtaFlag.Write }, new Uint8Array(24));
  assert.equal(repairFrame(clean).repair, null, "a write reply padded with zeros is fine");
  const read = aoeFrame({ response: true, ataFlags: AtaFlag.Lba48 }, new Uint8Array(24).fill(9));
  assert.equal(repairFrame(read).repair, null, "a read reply's bytes are its data");
  assert.ok(repairFrame(read).frame.subarray(36).every((b) => b === 9));
});

Deno.test("bench_aoe: the window keeps at most its size of tags on the wire, in order", async () => {
  assert.equal(ataTag(aoeFrame({ response: false, tag: 77 })), 77);
  assert.equal(ataTag(aoeFrame({ response: false, command: AoeCommand.QueryConfig })), null);
  const window = new FrameWindow();
  window.size = 2;
  const entered: number[] = [];
  const enter = (tag: number) => window.enter(tag).then(() => entered.push(tag));
  const all = [enter(1), enter(2), enter(3), enter(4)];
  await Promise.resolve();
  await Promise.resolve();
  assert.deepEqual(entered, [1, 2]);
  await window.enter(2);
  assert.equal(window.onWire, 2, "a retransmission takes no second place");
  window.leave(99);
  assert.equal(window.onWire, 2, "a reply to a tag not on the wire frees nothing");
  window.leave(2);
  await all[2];
  assert.deepEqual(entered, [1, 2, 3]);
  window.leave(1);
  await Promise.all(all);
  assert.deepEqual(entered, [1, 2, 3, 4]);
  assert.equal(window.onWire, 2);
});

function sample(
  workload: string,
  target: string,
  round: number,
  requests: number,
  seconds: number,
): AoeSample {
  const requestBytes = aoeWorkloads.find((w) => w.name === workload)!.requestBytes;
  return {
    workload,
    target,
    round,
    requests,
    bytes: requests * requestBytes,
    seconds,
    flushMs: workload.includes("write") ? 2 : null,
    frames: requests * 4,
    retransmits: 0,
    initiatorCpuSeconds: seconds / 2,
    targetCpuSeconds: seconds / 4,
  };
}

Deno.test("bench_aoe: rates, per-round ratios and the tables", () => {
  const seq = aoeWorkloads[0]!;
  const rand = aoeWorkloads[4]!;
  const samples = [
    sample(seq.name, TORUS, 0, 160, 1),
    sample(seq.name, VBLADE, 0, 320, 1),
    sample(seq.name, TORUS, 1, 160, 2),
    sample(seq.name, VBLADE, 1, 160, 1),
    sample(rand.name, TORUS, 0, 3000, 1),
    sample(rand.name, VBLADE, 0, 1000, 1),
    sample(rand.name, MEMORY, 0, 2000, 1),
  ];
  assert.equal(rateOf(samples[0]!, seq), 10, "64 KiB × 160 in 1 s is 10 MiB/s");
  assert.equal(rateOf(samples[4]!, rand), 3000, "IOPS for random workloads");
  assert.deepEqual(roundRatios(samples, seq, TORUS, VBLADE), [0.5, 0.5]);
  assert.deepEqual(roundRatios(samples, rand, TORUS, VBLADE), [3]);
  const text = throughputTable(samples, [TORUS, VBLADE, MEMORY]).join("\n");
  assert.match(
    text,
    /\| workload +\| torus aoe \| +vblade \| memory \(reference\) \| torus \/ vblade \|/,
  );
  assert.match(
    text,
    /\| 64k seq write MiB\/s +\| +5 \(5–10\) \| +10 \(10–20\) \| +- \| +0\.50x \|/,
  );
  assert.match(text, /\| 4k randread QD1 IOPS +\| +3000 \| +1000 \| +2000 \| +3\.00x \|/);
  const costs = costTable(samples, [TORUS, VBLADE, MEMORY]).join("\n");
  // 160 requests in 1 s and 320 in 2 s: 6250 µs each; half of that in the initiator.
  assert.match(
    costs,
    /\| 64k seq write +\| +torus \| +6250 \| +3125 \| +1563 \| +4\.0 \| +2\.0 \| +0 \|/,
  );
  assert.match(
    costs,
    /\| 4k randread QD1 +\| +memory \| +500 \| +250 \| +125 \| +4\.0 \| +- \| +0 \|/,
  );
});

const skip = (await netnsSkipReason()) ?? (hasCommand("vblade") ? null : "vblade not installed");

Deno.test({
  name: `bench_aoe: a small run against torus aoe and vblade, nothing left behind${
    skip === null ? "" : ` (skipped: ${skip})`
  }`,
  ignore: skip !== null,
  async fn() {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ...["run", "-A", `${root}scripts/bench_aoe.ts`, "--quick", "--no-memory"],
        ...["--volume-mib", "4", "--seq-mib", "1", "--filter", "randread QD16"],
      ],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const output = await child.output();
    const text = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, `${text}\n${new TextDecoder().decode(output.stderr)}`);
    // Columns: torus, torus --write-cache, vblade, then the two ratios.
    const row =
      /^\| 4k randread QD16 IOPS +\| +(\d+)[^|]*\| +(\d+)[^|]*\| +(\d+)[^|]*\| +([\d.]+)x[^|]*\| +([\d.]+)x/m
        .exec(text);
    assert.ok(row, `no row for torus, torus-wc and vblade:\n${text}`);
    assert.ok(Number(row[1]) > 0 && Number(row[2]) > 0 && Number(row[3]) > 0, row[0]);
    assert.match(
      text,
      /write runs end with: torus FLUSH CACHE EXT, torus-wc FLUSH CACHE EXT, vblade FLUSH CACHE/,
    );
    assert.match(text, /torus: none; torus-wc: none; vblade: \d+ short reply padded/);
    // NetnsLab names what it makes after the pid: trs-PID-… namespaces, trsPID36-… links.
    const links = await ip(["-o", "link", "show"]);
    assert.ok(!links.includes(`trs${child.pid.toString(36)}-`), `links left behind:\n${links}`);
    const namespaces = await ip(["netns", "list"]);
    assert.ok(!namespaces.includes(`trs-${child.pid}-`), `namespaces left:\n${namespaces}`);
  },
});
