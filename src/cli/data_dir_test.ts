/** The data-dir lock: creation of the dir, the holder's message, release. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { tryLockFile } from "../sys/mod.ts";
import { dataDirLockPath, lockDataDir } from "./data_dir.ts";

Deno.test("data dir lock: creates the dir 0700, names the holder, and can be taken again", async () => {
  const parent = await Deno.makeTempDir({ prefix: "torus-datadir-" });
  const dataDir = `${parent}/a/data`;
  try {
    const lock = await lockDataDir(dataDir, "torus serve");
    assert.equal((await Deno.stat(dataDir)).mode! & 0o777, 0o700);
    assert.equal(await Deno.readTextFile(dataDirLockPath(dataDir)), `${Deno.pid} torus serve\n`);
    await assert.rejects(lockDataDir(`${dataDir}/`, "torus ctl init"), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Locked));
      assert.equal(
        (error as Error).message,
        `data dir ${dataDir}/ is in use by torus serve, pid ${Deno.pid}`,
      );
      return true;
    });
    lock.release();
    using again = await lockDataDir(dataDir, "torus ctl init");
    assert.equal(again.dataDir, dataDir);
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test("data dir lock: the holder's text and the path are escaped in the message", async () => {
  const parent = await Deno.makeTempDir({ prefix: "torus-datadir-" });
  const dataDir = `${parent}/d\x1b[2J`;
  try {
    await Deno.mkdir(dataDir);
    // Whoever wrote the lock file may have put terminal escapes in it.
    using _held = (await tryLockFile(dataDirLockPath(dataDir), "evil\x1b[2J\u202e")).held;
    await assert.rejects(lockDataDir(dataDir, "torus serve"), (error: unknown) => {
      const message = (error as Error).message;
      assert.ok(!message.includes("\x1b") && !message.includes("\u202e"), message);
      assert.match(message, /is in use by evil\\x1b\[2J\\u202e, pid \d+$/);
      return true;
    });
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});
