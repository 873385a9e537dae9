/**
 * Another user's data dir: the embedded store is readable but not writable. `torus ctl volume list`,
 * `init --view`, `ring get` and `list-peers` must work there, and a write must fail with one clear line, both
 * when no process has the store open (no write-ahead log: read as immutable) and while one does
 * (read through its log). The program runs as the unprivileged user `nobody` (setpriv), since
 * root may write anything; skipped, with the reason in the name, when that is not possible.
 * @module
 */

import assert from "node:assert/strict";
import { hasCommand } from "../support/packages.ts";
import { Child } from "./child_process.ts";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();
const NOBODY = 65534;

function whyNot(): string | null {
  if (Deno.uid() !== 0) return "needs root to run a command as another user";
  if (!hasCommand("setpriv")) return "setpriv is not installed";
  return null;
}

const skip = whyNot();

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `torus ARGS...`, as `nobody` when `asNobody`, with its own Deno cache and home. */
async function torus(args: string[], options: { asNobody: boolean; home: string }) {
  const deno = [Deno.execPath(), "run", "-A", "main.ts", ...args];
  const command = options.asNobody
    ? ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--", ...deno]
    : deno;
  const output = await new Deno.Command(command[0]!, {
    args: command.slice(1),
    cwd: root,
    env: {
      HOME: options.home,
      DENO_DIR: `${options.home}/deno`,
      RUST_BACKTRACE: "0",
      NO_COLOR: "1",
      TORUS_DATA_DIR: "",
    },
    stdin: "null",
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  } satisfies Result;
}

function ok(result: Result): string {
  assert.equal(result.code, 0, `expected success, got ${result.code}: ${result.stderr}`);
  return result.stdout;
}

async function checkReads(dataDir: string, home: string): Promise<void> {
  const asNobody = { asNobody: true, home };
  const list = ok(await torus(["ctl", "volume", "list", "--data-dir", dataDir], asNobody));
  assert.match(list, /^VOLUME NAME +SIZE +TYPE +STATUS\nv1 +1 GiB +block +free\n$/);
  const view = ok(await torus(["ctl", "init", "--view", "--data-dir", dataDir], asNobody));
  assert.match(view, /^Block size: 524288 bytes \(512 KiB\)\nBlock spec: crc,base\n$/);
  const ring = ok(await torus(["ctl", "ring", "get", "--data-dir", dataDir], asNobody));
  assert.match(ring, /^Ring: ketama\nVersion: 1\n/);
  ok(await torus(["ctl", "list-peers", "--data-dir", dataDir], asNobody));
  const create = await torus(
    ["ctl", "volume", "create-block", "v2", "1GiB", "--data-dir", dataDir],
    asNobody,
  );
  assert.equal(create.code, 1, create.stdout + create.stderr);
  const lines = create.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line expected: ${create.stderr}`);
  assert.match(
    lines[0]!,
    /^torus ctl volume create-block: metadata store .*kv\.sqlite is read-only for this user/,
  );
}

Deno.test({
  name: "a data dir another user cannot write: volume list and init --view work, writes fail " +
    `with one line${skip ? ` (ignored: ${skip})` : ""}`,
  ignore: skip !== null,
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "torus-readonly-" });
    try {
      const dataDir = `${dir}/data`;
      const home = `${dir}/home`;
      await Deno.mkdir(`${home}/deno`, { recursive: true });
      await Deno.chmod(dir, 0o755);
      await Deno.chown(home, NOBODY, NOBODY);
      await Deno.chown(`${home}/deno`, NOBODY, NOBODY);
      const asRoot = { asNobody: false, home };
      ok(await torus(["ctl", "init", "--data-dir", dataDir], asRoot));
      ok(
        await torus(["ctl", "volume", "create-block", "v1", "1GiB", "--data-dir", dataDir], asRoot),
      );
      // Readable by others, writable by its owner only.
      for (const path of [dataDir, `${dataDir}/metadata`]) await Deno.chmod(path, 0o755);
      await Deno.chmod(`${dataDir}/metadata/kv.sqlite`, 0o644);

      // No process has the store open: there is no write-ahead log.
      await checkReads(dataDir, home);

      // A process of the owner has it open: its log and index exist.
      await using holder = new Child([
        "hold",
        `${dataDir}/metadata/kv.sqlite`,
        "other/held",
        "30000",
      ]);
      await holder.waitLine((l) => l === "ready");
      await Deno.stat(`${dataDir}/metadata/kv.sqlite-wal`);
      await checkReads(dataDir, home);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
