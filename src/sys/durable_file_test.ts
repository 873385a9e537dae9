/**
 * Durable creation of small files and directories in one process (tests/sys/durable_file_test.ts
 * checks the fsync and rename order under strace).
 */

import assert from "node:assert/strict";
import { makeDirectoryDurable, writeFileAtomic } from "./durable_file.ts";

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-durable-" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((entry) => entry.name).sort();
}

Deno.test("writeFileAtomic: creates and replaces a file with exactly the mode asked", async () => {
  await withDir(async (dir) => {
    await writeFileAtomic(`${dir}/f`, "first\n", { mode: 0o600 });
    assert.equal(Deno.readTextFileSync(`${dir}/f`), "first\n");
    assert.equal(Deno.statSync(`${dir}/f`).mode! & 0o777, 0o600);
    // 0666 would come out 0644 under the usual umask without the explicit chmod.
    await writeFileAtomic(`${dir}/f`, new Uint8Array([1, 2, 3]), { mode: 0o666 });
    assert.deepEqual(Deno.readFileSync(`${dir}/f`), new Uint8Array([1, 2, 3]));
    assert.equal(Deno.statSync(`${dir}/f`).mode! & 0o777, 0o666);
    await writeFileAtomic(`${dir}/f`, "", { mode: 0o600 });
    assert.equal(Deno.readTextFileSync(`${dir}/f`), "");
    assert.deepEqual(names(dir), ["f"], "no temporary file is left behind");
  });
});

Deno.test("writeFileAtomic: concurrent writers leave one whole content and no temporary", async () => {
  await withDir(async (dir) => {
    const contents = Array.from({ length: 20 }, (_, i) => `writer ${i} `.repeat(1000 + i));
    await Promise.all(contents.map((text) => writeFileAtomic(`${dir}/f`, text, { mode: 0o600 })));
    assert.ok(contents.includes(Deno.readTextFileSync(`${dir}/f`)), "the file is one whole write");
    assert.deepEqual(names(dir), ["f"]);
  });
});

Deno.test("writeFileAtomic: a failed write leaves the old file and no temporary", async () => {
  await withDir(async (dir) => {
    await writeFileAtomic(`${dir}/f`, "old\n", { mode: 0o600 });
    Deno.mkdirSync(`${dir}/d`);
    // Renaming a file over a directory fails after the temporary file was written.
    await assert.rejects(writeFileAtomic(`${dir}/d`, "new\n", { mode: 0o600 }));
    assert.deepEqual(names(dir), ["d", "f"]);
    assert.equal(Deno.readTextFileSync(`${dir}/f`), "old\n");
    await assert.rejects(writeFileAtomic(`${dir}/missing/f`, "x", { mode: 0o600 }));
  });
});

Deno.test("makeDirectoryDurable: creates missing parents with the mode; existing is fine", async () => {
  await withDir(async (dir) => {
    await makeDirectoryDurable(`${dir}/a/b/c`, 0o700);
    for (const path of [`${dir}/a`, `${dir}/a/b`, `${dir}/a/b/c`]) {
      assert.equal(Deno.statSync(path).mode! & 0o777, 0o700, path);
    }
    await makeDirectoryDurable(`${dir}/a/b/c`, 0o700);
    await makeDirectoryDurable(`${dir}/a/b/c/`, 0o700);
    await Promise.all([1, 2, 3, 4].map(() => makeDirectoryDurable(`${dir}/x/y`, 0o700)));
    assert.ok(Deno.statSync(`${dir}/x/y`).isDirectory);
    Deno.writeTextFileSync(`${dir}/file`, "");
    await assert.rejects(makeDirectoryDurable(`${dir}/file/sub`, 0o700));
  });
});
