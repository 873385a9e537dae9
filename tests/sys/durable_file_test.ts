/**
 * The system calls behind durable creation, observed with strace on a real process: a new file
 * is fsynced before it is renamed into place and its directory after; each created directory's
 * parent is fsynced. A crash can only be simulated by the kernel, so the order of calls is what a
 * test can check.
 */

import assert from "node:assert/strict";
import { hasCommand } from "../support/packages.ts";

const helper = new URL("./helpers/durable_child.ts", import.meta.url).pathname;

/** strace's lines for `dir`, with fds shown as their paths (`-y`), pids and results dropped. */
async function traceCalls(dir: string): Promise<string[] | string> {
  const log = `${dir}/strace.log`;
  const output = await new Deno.Command("strace", {
    args: [
      "-f",
      "-qq",
      "-y",
      "-o",
      log,
      "-e",
      "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat",
      Deno.execPath(),
      "run",
      "-A",
      helper,
      `${dir}/work`,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(output.stderr);
  if (!output.success) return `strace failed (${output.code}): ${stderr.trim()}`;
  const text = await Deno.readTextFile(log);
  return text.split("\n")
    .filter((line) => line.includes(`${dir}/work`) && !line.includes("resumed"))
    .map((line) =>
      line.replace(/^\d+\s+/, "").replace(/\s+=\s+.*$/, "").replace(/^(\w+)\(\d+</, "$1(<")
    )
    .map((line) => line.replaceAll(`${dir}/work`, "W"));
}

const haveStrace = hasCommand("strace");

Deno.test({
  name: "durable files: fsync of file before rename, of directories after (strace)" +
    (haveStrace ? "" : ": skipped, strace is not installed"),
  ignore: !haveStrace,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "torus-strace-" });
    try {
      await Deno.mkdir(`${dir}/work`);
      const calls = await traceCalls(dir);
      if (typeof calls === "string") assert.fail(calls);
      const index = (pattern: RegExp) => {
        const at = calls.findIndex((line) => pattern.test(line));
        assert.ok(at >= 0, `no ${pattern} in:\n${calls.join("\n")}`);
        return at;
      };
      const madeA = index(/^mkdir(at)?\(.*"W\/a"/);
      const madeB = index(/^mkdir(at)?\(.*"W\/a\/b"/);
      const syncedW = index(/^fsync\(<W>\)/);
      const syncedA = index(/^fsync\(<W\/a>\)/);
      const syncedTemp = index(/^fsync\(<W\/a\/b\/\.f\.tmp-\d+-\d+>\)/);
      const renamed = index(/^rename(at2?)?\(.*W\/a\/b\/\.f\.tmp-\d+-\d+.*W\/a\/b\/f"/);
      const syncedB = calls.findLastIndex((line) => /^fsync\(<W\/a\/b>\)/.test(line));
      assert.ok(madeA < syncedW && madeB < syncedA, "created directories' parents are synced");
      assert.ok(syncedTemp < renamed, "the new file is synced before it is renamed into place");
      assert.ok(renamed < syncedB, "the directory is synced after the rename");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
