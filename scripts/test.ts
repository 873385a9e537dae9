/**
 * `npm test`: installs what the tests need when missing, starts the shared test services
 * (etcd on loopback), runs every test, and prints one summary line `N passed, N failed` taken from
 * the JUnit report of the real run. Exit status 0 only when nothing failed.
 *
 * Usage: deno run -A scripts/test.ts [deno test arguments, e.g. a file or --filter X]
 */

import { ensurePackages, requiredPackages } from "../tests/support/packages.ts";
import { startEtcd } from "../tests/support/etcd.ts";

const root = new URL("../", import.meta.url).pathname;
const workDir = `${root}.test-work`;
const junitPath = `${workDir}/junit.xml`;
const summaryPath = `${workDir}/summary.txt`;

interface Counts {
  passed: number;
  failed: number;
  ignored: number;
}

/** Counts test cases in Deno's JUnit XML (steps included, as Deno reports them). */
export function countJunit(xml: string): Counts {
  let passed = 0;
  let failed = 0;
  let ignored = 0;
  const cases = xml.match(/<testcase\b[\s\S]*?(?:\/>|<\/testcase>)/g) ?? [];
  for (const testCase of cases) {
    if (/<failure\b|<error\b/.test(testCase)) failed++;
    else if (/<skipped\b/.test(testCase)) ignored++;
    else passed++;
  }
  return { passed, failed, ignored };
}

async function runDenoTest(extraArgs: string[], env: Record<string, string>): Promise<number> {
  const targets = extraArgs.some((a) => !a.startsWith("-")) ? [] : ["src/", "tests/", "scripts/"];
  const args = [
    "test",
    "-A",
    "--parallel",
    "--doc",
    `--junit-path=${junitPath}`,
    ...extraArgs,
    ...targets,
  ];
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: root,
    env: { ...env, RUST_BACKTRACE: "0", TORUS_VERIFY: "1" },
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  return (await child.status).code;
}

async function main(): Promise<number> {
  await Deno.mkdir(workDir, { recursive: true });
  await Deno.remove(junitPath).catch(() => {});
  await ensurePackages(requiredPackages);
  await using etcd = await startEtcd({ workDir });
  const env: Record<string, string> = {};
  if (etcd.endpoint) env.TORUS_TEST_ETCD = etcd.endpoint;
  const code = await runDenoTest(Deno.args, env);
  const xml = await Deno.readTextFile(junitPath).catch(() => "");
  const counts = countJunit(xml);
  // A run that died before writing its report (a crash in a test module) must not read as green.
  if (code !== 0 && counts.failed === 0) counts.failed = 1;
  const summary = `${counts.passed} passed, ${counts.failed} failed`;
  await Deno.writeTextFile(summaryPath, summary + "\n");
  if (counts.ignored > 0) console.log(`(${counts.ignored} ignored: see the names above for why)`);
  console.log(summary);
  return counts.failed > 0 ? 1 : 0;
}

if (import.meta.main) {
  Deno.exit(await main());
}
