/**
 * The NBD bench: its pure report half (fio's JSON, block device stats, medians, ratios, tables),
 * the runner's choice of benches, and a smoke run of `scripts/bench_nbd.ts --quick` on one
 * workload against the three real servers (skipped, saying why, without fio, qemu-nbd or nbdkit).
 */

import assert from "node:assert/strict";
import { hasCommand } from "../tests/support/packages.ts";
import { selectBenches } from "./bench.ts";
import { configOf } from "./bench_nbd.ts";
import {
  costTable,
  fioArgs,
  formatSpread,
  median,
  parseBlockStat,
  parseContextSwitches,
  parseCpuTicks,
  parseFio,
  parseWriteChars,
  roundRatios,
  type Sample,
  switchesBetween,
  throughputTable,
  workloads,
  writeAmplification,
} from "./bench_nbd_report.ts";

const root = new URL("../", import.meta.url).pathname;

function fioSide(iops: number, ios: number, meanNs: number) {
  return {
    iops,
    bw_bytes: iops * 4096,
    io_bytes: ios * 4096,
    total_ios: ios,
    clat_ns: { mean: meanNs },
  };
}

Deno.test("bench_nbd: fio's JSON report gives IOPS, bandwidth, bytes and mean latency", () => {
  const report = {
    jobs: [{ error: 0, read: fioSide(700, 7000, 100_000), write: fioSide(300, 3000, 200_000) }],
  };
  const result = parseFio(`fio: connected to NBD server\n${JSON.stringify(report)}`);
  assert.equal(result.iops, 1000);
  assert.equal(result.mibPerSecond, 1000 * 4096 / (1024 * 1024));
  assert.equal(result.readBytes, 7000 * 4096);
  assert.equal(result.writeBytes, 3000 * 4096);
  assert.equal(result.meanLatencyUs, 130);
  assert.throws(() => parseFio("no json"), /no JSON/);
  const failed = { jobs: [{ ...report.jobs[0], error: 5 }] };
  assert.throws(() => parseFio(JSON.stringify(failed)), /error 5/);
});

Deno.test("bench_nbd: block device stats and /proc/<pid>/io parse", () => {
  const stat = "  100 0  2048  9  40 0 4096 7 0 12 16 0 0 0 0 0 0\n";
  assert.deepEqual(parseBlockStat(stat), { readBytes: 2048 * 512, writeBytes: 4096 * 512 });
  assert.throws(() => parseBlockStat("1 2"), /unexpected/);
  assert.equal(parseWriteChars("rchar: 5\nwchar: 81215\nsyscr: 1\n"), 81215);
  assert.throws(() => parseWriteChars("rchar: 5\n"), /no wchar/);
});

Deno.test("bench_nbd: medians, spreads and per-round ratios", () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2);
  assert.ok(Number.isNaN(median([])));
  assert.equal(formatSpread([1000, 1500]), "1000 (1000–1500)");
  assert.equal(formatSpread([2.004, 2.001], 2), "2.00");
  assert.equal(formatSpread([]), "-");
  const sample = (server: string, round: number, iops: number, disk: number | null): Sample => ({
    workload: "4k randwrite QD1",
    server,
    round,
    fio: { iops, mibPerSecond: 0, readBytes: 0, writeBytes: 1000, meanLatencyUs: 0 },
    diskWriteBytes: disk,
    diskReadBytes: 0,
    writeCallBytes: 0,
    cost: null,
  });
  const samples = [
    sample("torus", 0, 200, 2500),
    sample("qemu-nbd", 0, 100, 1000),
    sample("torus", 1, 300, null),
    sample("qemu-nbd", 1, 200, 1000),
  ];
  assert.deepEqual(roundRatios(samples, "4k randwrite QD1", "torus", "qemu-nbd"), [2, 1.5]);
  assert.equal(writeAmplification(samples[0]!), 2.5);
  assert.equal(writeAmplification(samples[2]!), null);
  const table = throughputTable(samples, ["torus", "qemu-nbd"], "torus").join("\n");
  assert.match(
    table,
    /\| 4k randwrite QD1 +\| +200 \(200–300\) \| +100 \(100–200\) \| +1\.50x \(1\.50–2\.00\)/,
  );
});

Deno.test("bench_nbd: a process's CPU and context switches from /proc, and garbage refused", () => {
  // The command name may hold spaces and parentheses: fields count from the last ")".
  const stat = "4242 (V8 (worker) 1) S 1 4242 4242 0 -1 4194560 9 0 0 0 1234 567 0 0 20 0 12 0";
  assert.equal(parseCpuTicks(stat), 1234 + 567);
  assert.ok(parseCpuTicks(Deno.readTextFileSync("/proc/self/stat")) >= 0, "this process's own");
  const garbage = [
    "",
    "no parenthesis at all 1 2 3",
    "1 (x) S 1 2",
    "1 (x) S 1 2 3 4 5 6 7 8 9 -5 6",
  ];
  garbage.push(`1 (x) S ${"9".repeat(400)} `.repeat(20), "1 (x)", stat.slice(0, 60));
  garbage.push(`1 (x) S${" 1".repeat(10)} ${"9".repeat(400)} 5`, `1 (x) S${" 1".repeat(10)} 1e3 5`);
  for (const text of garbage) assert.throws(() => parseCpuTicks(text), /unexpected/, text);

  const status = "Name:\tdeno\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
  assert.equal(parseContextSwitches(status), 127);
  assert.ok(parseContextSwitches(Deno.readTextFileSync("/proc/self/status")) > 0);
  for (const text of ["", "voluntary_ctxt_switches:\t1\n", "garbage\u0000\n".repeat(1000)]) {
    assert.throws(() => parseContextSwitches(text), /no context switches/);
  }
  // A thread born during the run counts from zero; one that ended is lost (a lower bound).
  const before = new Map([["10", 100], ["11", 50], ["12", 9]]);
  const after = new Map([["10", 130], ["11", 55], ["13", 4]]);
  assert.equal(switchesBetween(before, after), 30 + 5 + 4);
});

Deno.test("bench_nbd: CPU and switches per I/O, per workload and server", () => {
  const sample = (server: string, round: number, cpuMs: number, switches: number): Sample => ({
    workload: "4k randread QD1",
    server,
    round,
    // 10000 reads of 4 KiB.
    fio: { iops: 0, mibPerSecond: 0, readBytes: 10000 * 4096, writeBytes: 0, meanLatencyUs: 0 },
    diskWriteBytes: null,
    diskReadBytes: null,
    writeCallBytes: 0,
    cost: { cpuMs, contextSwitches: switches },
  });
  const samples = [
    sample("torus", 0, 1000, 20000),
    sample("torus", 1, 1200, 30000),
    sample("qemu-nbd", 0, 700, 31000),
    { ...sample("qemu-nbd", 1, 0, 0), cost: null },
  ];
  const table = costTable(samples, ["torus", "qemu-nbd"]).join("\n");
  assert.match(table, /torus CPU µs\/IO \| qemu-nbd CPU µs\/IO \| torus switches\/IO/);
  assert.match(
    table,
    /\| 4k randread QD1 \| +100 \(100–120\) \| +70 \| +2\.0 \(2\.0–3\.0\) \| +3\.1 \|/,
  );
  assert.equal(costTable([{ ...samples[0]!, cost: null }], ["torus"]).length, 2, "no rows");
});

Deno.test("bench_nbd: fio's command line for a workload", () => {
  const flushing = workloads.find((w) => w.fsyncEvery === 32)!;
  const args = fioArgs({ uri: "nbd://h:1/v", workload: flushing, sizeBytes: 4096 * 1024 });
  assert.ok(args.includes("--ioengine=nbd") && args.includes("--uri=nbd://h:1/v"));
  assert.ok(args.includes("--fsync=32") && args.includes("--end_fsync=1"));
  const read = workloads[0]!;
  const timed = fioArgs({ uri: "u", workload: read, sizeBytes: 1, runtimeSeconds: 10 });
  assert.ok(timed.includes("--time_based") && timed.includes("--runtime=10"));
  assert.ok(!timed.some((a) => a.startsWith("--end_fsync")), "reads end without a FLUSH");
  assert.equal(workloads.length, 8);
});

Deno.test("bench_nbd: options and the runner's choice of benches", () => {
  const quick = configOf(["--quick", "--filter", "QD1"]);
  assert.equal(quick.runtimeSeconds, 1);
  assert.equal(quick.rounds, 1);
  assert.equal(quick.filter, "QD1");
  assert.equal(configOf([]).rounds, 2);
  assert.throws(() => configOf(["--rounds", "0"]), /whole number/);
  assert.equal(configOf([]).coldWarmUpIos, 2000);
  assert.equal(configOf(["--no-warm-up"]).coldWarmUpIos, 0);
  assert.ok(quick.coldWarmUpIos > 0 && quick.coldWarmUpIos < 2000, "a short warm-up in CI");
  assert.deepEqual(selectBenches([], undefined), {
    benchFiles: null,
    programs: [
      PROGRAM,
      "scripts/bench_cluster.ts",
      "scripts/bench_rebuild.ts",
      "scripts/bench_aoe.ts",
    ],
  });
  assert.deepEqual(selectBenches([], "x"), { benchFiles: null, programs: [] });
  assert.deepEqual(selectBenches(["src/a_bench.ts", PROGRAM], undefined), {
    benchFiles: ["src/a_bench.ts"],
    programs: [PROGRAM],
  });
});

const PROGRAM = "scripts/bench_nbd.ts";
const tools = ["fio", "qemu-nbd", "nbdkit"].filter((tool) => !hasCommand(tool));

Deno.test({
  name: `bench_nbd: --quick runs against torus, qemu-nbd and nbdkit${
    tools.length > 0 ? ` (skipped: no ${tools.join(", ")})` : ""
  }`,
  ignore: tools.length > 0,
  async fn() {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}${PROGRAM}`, "--quick", "--filter", "fsync=32"],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    const errors = new TextDecoder().decode(output.stderr);
    assert.equal(output.code, 0, `${text}\n${errors}`);
    const row = /^\| 4k randwrite QD32 fsync=32 +\| +(\d+)[^|]*\| +(\d+)[^|]*\| +(\d+)/m.exec(text);
    assert.ok(row, `no throughput row for torus, qemu-nbd and nbdkit:\n${text}`);
    assert.ok(row.slice(1).every((iops) => Number(iops) > 0), row[0]);
    assert.match(text, /Cold 4 KiB random reads/);
    const cost =
      /^\| 4k randwrite QD32 fsync=32 +\| +(\d+)[^|]*\| +(\d+)[^|]*\| +(\d+)[^|]*\| +([\d.]+)/m
        .exec(text.slice(text.indexOf("Where the time goes")));
    assert.ok(cost, `no CPU and switches row:\n${text}`);
    assert.ok(cost.slice(1, 4).every((us) => Number(us) > 0), `every server spent CPU: ${cost[0]}`);
    assert.match(text, /\| 256MiB steady +\| +\d+/, "the write amplification part ran");
  },
});
