/**
 * `deno task bench`: runs every `*_bench.ts` under src/ (one `deno bench --json` process per file,
 * so one failing file does not hide the others) and prints, per group, each bench's mean time per
 * iteration, its throughput when its name ends with a `[<size>/iter]` tag (e.g. `[32MiB/iter]`,
 * any size parseSize accepts), and its speed relative to the group's baseline bench
 * (`baseline: true`): `0.50x` means half the baseline's throughput. Each file runs with its own
 * TMPDIR (a fresh directory in the system's temp dir), removed afterwards even after a crash.
 *
 * Then the whole-program benches (`scripts/bench_nbd.ts`: torus serve against qemu-nbd and
 * nbdkit under fio, docs/benchmarks.md), which print their own report; they run when no file and
 * no --filter is given, or when named. `--quick` asks them for a short smoke run.
 *
 * Usage: deno run -A scripts/bench.ts [--filter TEXT] [--quick] [files...]
 */

import { parseArgs } from "node:util";
import { parseSize } from "../src/core/mod.ts";

/** One bench result from `deno bench --json`. */
interface BenchResult {
  group: string | null;
  name: string;
  baseline: boolean;
  /** Mean nanoseconds per iteration; null when the bench failed. */
  avgNs: number | null;
  minNs: number | null;
  error: string | null;
}

const root = new URL("../", import.meta.url).pathname;
/** Benches that are programs of their own, run with `deno run` after the `deno bench` files. */
export const programBenches: readonly string[] = [
  "scripts/bench_nbd.ts",
  "scripts/bench_cluster.ts",
  "scripts/bench_rebuild.ts",
  "scripts/bench_aoe.ts",
];
const sizeTag = /\[([^\]/]+)\/iter\]\s*$/;

async function* walk(dir: string): AsyncIterable<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(path);
    else if (entry.isFile && entry.name.endsWith("_bench.ts")) yield path;
  }
}

/** Parses the JSON report of `deno bench --json`. */
export function parseReport(text: string): BenchResult[] {
  const start = text.indexOf("{");
  if (start < 0) return [];
  const report = JSON.parse(text.slice(start)) as {
    benches: {
      group: string | null;
      name: string;
      baseline: boolean;
      results: ({ ok: { avg: number; min: number } } | { failed: string })[];
    }[];
  };
  return report.benches.map((bench) => {
    const result = bench.results[0];
    const ok = result !== undefined && "ok" in result ? result.ok : null;
    return {
      group: bench.group,
      name: bench.name,
      baseline: bench.baseline,
      avgNs: ok?.avg ?? null,
      minNs: ok?.min ?? null,
      error: result !== undefined && "failed" in result ? String(result.failed) : null,
    };
  });
}

/** Bytes per iteration from a `[<size>/iter]` tag, or null. */
export function bytesPerIteration(name: string): number | null {
  const match = sizeTag.exec(name);
  if (!match) return null;
  try {
    return parseSize(match[1]!);
  } catch {
    return null;
  }
}

function formatNs(ns: number): string {
  if (ns >= 1e9) return `${(ns / 1e9).toFixed(2)} s`;
  if (ns >= 1e6) return `${(ns / 1e6).toFixed(2)} ms`;
  if (ns >= 1e3) return `${(ns / 1e3).toFixed(1)} µs`;
  return `${ns.toFixed(0)} ns`;
}

/** The table of one file's results, grouped, as lines. */
export function formatResults(results: BenchResult[]): string[] {
  const lines: string[] = [];
  const groups = Map.groupBy(results, (r) => r.group ?? "(no group)");
  const nameWidth = Math.max(10, ...results.map((r) => r.name.length));
  for (const [group, benches] of groups) {
    const baseline = benches.find((b) => b.baseline && b.avgNs !== null);
    lines.push("", `group ${group}`);
    lines.push(
      `  ${"bench".padEnd(nameWidth)}  ${"time/iter".padStart(10)}  ${"GB/s".padStart(6)}  vs base`,
    );
    for (const bench of benches) {
      if (bench.avgNs === null) {
        lines.push(`  ${bench.name.padEnd(nameWidth)}  FAILED ${bench.error ?? ""}`);
        continue;
      }
      const bytes = bytesPerIteration(bench.name);
      const rate = bytes === null ? "" : (bytes / bench.avgNs).toFixed(2);
      const ratio = baseline?.avgNs ? `${(baseline.avgNs / bench.avgNs).toFixed(2)}x` : "";
      lines.push(
        `  ${bench.name.padEnd(nameWidth)}  ${formatNs(bench.avgNs).padStart(10)}  ` +
          `${rate.padStart(6)}  ${bench.baseline ? "baseline" : ratio}`,
      );
    }
  }
  return lines;
}

async function runFile(file: string, filter: string | undefined): Promise<BenchResult[] | null> {
  const args = ["bench", "-A", "--json", ...(filter ? ["--filter", filter] : []), file];
  // Each bench file gets its own TMPDIR, removed afterwards even when the bench crashed.
  const tmpDir = await Deno.makeTempDir({ prefix: "torus-bench-run-" });
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: root,
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1", TMPDIR: tmpDir },
      stdout: "piped",
      stderr: "inherit",
    }).output();
  } finally {
    await Deno.remove(tmpDir, { recursive: true });
  }
  const text = new TextDecoder().decode(output.stdout);
  try {
    const results = parseReport(text);
    return output.success || results.length > 0 ? results : null;
  } catch {
    return null;
  }
}

/** Runs a whole-program bench; whether it succeeded. */
async function runProgram(file: string, quick: boolean): Promise<boolean> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", file, ...(quick ? ["--quick"] : [])],
    cwd: root,
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "inherit",
    stderr: "inherit",
  });
  return (await child.output()).success;
}

/** Splits the named files into `deno bench` files and program benches. */
export function selectBenches(
  positionals: readonly string[],
  filter: string | undefined,
): { benchFiles: string[] | null; programs: string[] } {
  if (positionals.length === 0) {
    return { benchFiles: null, programs: filter === undefined ? [...programBenches] : [] };
  }
  const isProgram = (file: string) => programBenches.some((p) => file.endsWith(p));
  return {
    benchFiles: positionals.filter((file) => !isProgram(file)),
    programs: positionals.filter(isProgram),
  };
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    options: { filter: { type: "string" }, quick: { type: "boolean", default: false } },
    allowPositionals: true,
  });
  const selected = selectBenches(positionals, values.filter);
  const files = selected.benchFiles ?? [];
  if (selected.benchFiles === null) {
    for await (const file of walk(`${root}src`)) {
      files.push(file);
    }
  }
  files.sort();
  let failed = 0;
  console.log(`torus benchmarks, ${new Date().toISOString()}, ${Deno.build.target}`);
  for (const file of files) {
    const shown = file.replace(root, "");
    console.log(`\n== ${shown}`);
    const results = await runFile(file, values.filter);
    if (results === null) {
      console.log("  FAILED (see the errors above)");
      failed++;
      continue;
    }
    failed += results.filter((r) => r.avgNs === null).length;
    for (const line of formatResults(results)) console.log(line);
  }
  for (const program of selected.programs) {
    console.log(`\n== ${program}`);
    if (!(await runProgram(program, values.quick))) {
      console.log("  FAILED (see the errors above)");
      failed++;
    }
  }
  return failed > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
