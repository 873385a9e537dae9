/**
 * Whole-file locks between real processes: the loser learns the holder's pid (from the kernel)
 * and description; a process's second attempt never drops the lock it holds; a SIGKILLed holder
 * leaves no stale lock behind.
 */

import assert from "node:assert/strict";
import { tryLockFile } from "../../src/sys/mod.ts";

const helper = new URL("./helpers/lock_child.ts", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Child {
  process: Deno.ChildProcess;
  /** The first line the child printed. */
  firstLine: Promise<string>;
  writer: WritableStreamDefaultWriter<Uint8Array>;
}

function spawnLocker(path: string, description: string): Child {
  const process = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", helper, path, description],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const firstLine = (async () => {
    let text = "";
    for await (const chunk of process.stdout) {
      text += decoder.decode(chunk);
      if (text.includes("\n")) break;
    }
    return text.split("\n")[0]!;
  })();
  return { process, firstLine, writer: process.stdin.getWriter() };
}

async function stop(child: Child): Promise<void> {
  await child.writer.close().catch(() => {});
  await child.process.status;
  await child.process.stdout.cancel().catch(() => {});
}

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-lock-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("lock file: the loser names the holding process, pid from the kernel", async () => {
  await withDir(async (dir) => {
    const holder = spawnLocker(`${dir}/lock`, "torus serve");
    try {
      assert.equal(await holder.firstLine, "held");
      const attempt = await tryLockFile(`${dir}/lock`, "torus ctl init");
      assert.deepEqual(attempt.holder, { pid: holder.process.pid, description: "torus serve" });
    } finally {
      await stop(holder);
    }
    using after = (await tryLockFile(`${dir}/lock`, "torus ctl init")).held;
    assert.ok(after, "a released lock can be taken");
  });
});

Deno.test("lock file: a second attempt in the holding process keeps the lock held", async () => {
  await withDir(async (dir) => {
    using held = (await tryLockFile(`${dir}/lock`, "torus serve")).held;
    assert.ok(held);
    // Opening and closing the file again in this process would drop its POSIX lock.
    assert.ok((await tryLockFile(`${dir}/lock`, "again")).holder);
    const other = spawnLocker(`${dir}/lock`, "other");
    try {
      assert.equal(await other.firstLine, `busy ${Deno.pid} torus serve`);
    } finally {
      await stop(other);
    }
  });
});

Deno.test("lock file: a SIGKILLed holder leaves no stale lock, and stale contents mislead no one", async () => {
  await withDir(async (dir) => {
    const holder = spawnLocker(`${dir}/lock`, "torus serve");
    assert.equal(await holder.firstLine, "held");
    holder.process.kill("SIGKILL");
    await stop(holder);
    // The dead holder's line is still in the file; nobody holds the lock.
    assert.equal(Deno.readTextFileSync(`${dir}/lock`), `${holder.process.pid} torus serve\n`);
    using held = (await tryLockFile(`${dir}/lock`, "torus serve")).held;
    assert.ok(held, "the lock of a killed process is free");
  });
});

Deno.test("lock file: a holder's description is used only when its pid is the kernel's", async () => {
  await withDir(async (dir) => {
    const holder = spawnLocker(`${dir}/lock`, "torus serve");
    try {
      assert.equal(await holder.firstLine, "held");
      // Someone overwrote the file: the pid still comes from the kernel, the text is ignored.
      Deno.writeTextFileSync(`${dir}/lock`, "1 init\n");
      const attempt = await tryLockFile(`${dir}/lock`, "x", { descriptionWaitMs: 50 });
      assert.deepEqual(attempt.holder, { pid: holder.process.pid, description: null });
    } finally {
      await stop(holder);
    }
  });
});
