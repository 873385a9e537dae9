/** Whole-file locks within one process (tests/sys/lock_file_test.ts covers other processes). */

import assert from "node:assert/strict";
import { lockFileWaiting, tryLockFile } from "./lock_file.ts";

async function withDir(body: (dir: string) => Promise<void> | void): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-lock-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("lock file: the holder records its pid and description in a 0600 file", async () => {
  await withDir(async (dir) => {
    const attempt = await tryLockFile(`${dir}/lock`, "torus serve");
    assert.ok(attempt.held);
    try {
      assert.equal(Deno.readTextFileSync(`${dir}/lock`), `${Deno.pid} torus serve\n`);
      assert.equal(Deno.statSync(`${dir}/lock`).mode! & 0o777, 0o600);
    } finally {
      attempt.held.release();
    }
  });
});

Deno.test("lock file: a second attempt in the same process, by any alias, is busy", async () => {
  await withDir(async (dir) => {
    Deno.mkdirSync(`${dir}/d`);
    Deno.symlinkSync(`${dir}/d`, `${dir}/alias`);
    using held = (await tryLockFile(`${dir}/d/lock`, "torus serve")).held;
    assert.ok(held);
    for (const path of [`${dir}/d/lock`, `${dir}/alias/lock`, `${dir}/d/./lock`]) {
      const again = await tryLockFile(path, "torus ctl init");
      assert.deepEqual(again.holder, { pid: Deno.pid, description: "torus serve" }, path);
    }
  });
});

Deno.test("lock file: released (or disposed) locks can be taken again; release is idempotent", async () => {
  await withDir(async (dir) => {
    const first = (await tryLockFile(`${dir}/lock`, "one")).held;
    assert.ok(first);
    first.release();
    first.release();
    {
      using second = (await tryLockFile(`${dir}/lock`, "two")).held;
      assert.ok(second);
      assert.equal(Deno.readTextFileSync(`${dir}/lock`), `${Deno.pid} two\n`);
    }
    using third = (await tryLockFile(`${dir}/lock`, "three")).held;
    assert.ok(third, "a disposed lock is free");
  });
});

Deno.test("lock file: a missing directory is an error, not a lock", async () => {
  await withDir(async (dir) => {
    await assert.rejects(tryLockFile(`${dir}/missing/lock`, "x"), Deno.errors.NotFound);
  });
});

Deno.test("lockFileWaiting: waits for a holder to release, or names it when the wait ends", async () => {
  await withDir(async (dir) => {
    const first = (await tryLockFile(`${dir}/lock`, "first")).held;
    assert.ok(first);
    const waiting = lockFileWaiting(`${dir}/lock`, "second", { waitMs: 60_000 });
    await new Promise((resolve) => setTimeout(resolve, 30));
    first.release();
    using second = (await waiting).held;
    assert.ok(second, "taken once the first holder let go");
    const timedOut = await lockFileWaiting(`${dir}/lock`, "third", { waitMs: 20 });
    assert.deepEqual(timedOut.holder, { pid: Deno.pid, description: "second" });
  });
});
