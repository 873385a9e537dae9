/**
 * The FileIo contract suite (file_io.ts states the rules): each implementation's test file calls
 * {@link fileIoContract} with a factory, and the same tests run against it. The factory returns
 * a FileIo and an empty directory it may use; `cleanup` removes what the factory made.
 * @module
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import type { FileIo } from "./file_io.ts";

/** What a contract factory returns. */
export interface FileIoFixture {
  io: FileIo;
  /** An empty directory for the test's files. */
  dir: string;
  cleanup(): Promise<void>;
}

async function rejectsWithCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTorusError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

function bytes(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Registers the contract tests for the FileIo `factory` makes. */
export function fileIoContract(name: string, factory: () => Promise<FileIoFixture>): void {
  const test = (behaviour: string, body: (fixture: FileIoFixture) => Promise<void>) =>
    Deno.test(`${name}: ${behaviour}`, async () => {
      const fixture = await factory();
      try {
        await body(fixture);
      } finally {
        await fixture.cleanup();
      }
    });

  test("written bytes read back; a read past the end is short", async ({ io, dir }) => {
    const file = await io.open(`${dir}/f`, { create: true });
    const data = bytes(10_000, 1);
    await file.write(data, 100);
    assert.equal(await file.sizeBytes(), 10_100);
    const back = new Uint8Array(10_000);
    assert.equal(await file.read(back, 100), 10_000);
    assert.deepEqual(back, data);
    assert.equal(await file.read(new Uint8Array(50), 10_080), 20);
    assert.equal(await file.read(new Uint8Array(50), 20_000), 0);
    // Bytes never written (a hole) read as zero.
    const hole = new Uint8Array(100).fill(9);
    assert.equal(await file.read(hole, 0), 100);
    assert.ok(hole.every((b) => b === 0));
    await file.datasync();
    await file.sync();
    await file.close();
  });

  test("readCached fills whole from memory or declines", async ({ io, dir }) => {
    const file = await io.open(`${dir}/f`, { create: true });
    const data = bytes(8192, 3);
    await file.write(data, 0);
    const into = new Uint8Array(4096);
    if (file.readCached(into, 4096)) assert.deepEqual(into, data.subarray(4096));
    // Never a short read: past the end it declines.
    assert.equal(file.readCached(new Uint8Array(100), 8150), false);
    assert.equal(file.readCached(new Uint8Array(100), 20_000), false);
    await file.close();
    assert.equal(file.readCached(new Uint8Array(1), 0), false, "closed");
  });

  test("writes in flight together on disjoint ranges all land", async ({ io, dir }) => {
    const file = await io.open(`${dir}/f`, { create: true });
    await Promise.all(Array.from({ length: 16 }, (_, i) => file.write(bytes(512, i), i * 512)));
    for (let i = 0; i < 16; i++) {
      const back = new Uint8Array(512);
      await file.read(back, i * 512);
      assert.deepEqual(back, bytes(512, i));
    }
    await file.close();
  });

  test("truncate and allocate set the length; truncated bytes come back zero", async (f) => {
    const file = await f.io.open(`${f.dir}/f`, { create: true });
    await file.write(bytes(4096, 2), 0);
    await file.truncate(1000);
    assert.equal(await file.sizeBytes(), 1000);
    await file.truncate(4096);
    const back = new Uint8Array(4096);
    await file.read(back, 0);
    assert.deepEqual(back.subarray(0, 1000), bytes(4096, 2).subarray(0, 1000));
    assert.ok(back.subarray(1000).every((b) => b === 0));
    if (await file.allocate(0, 8192)) assert.equal(await file.sizeBytes(), 8192);
    await file.close();
  });

  test("open: missing files are not_exist unless created; truncate empties", async (f) => {
    await rejectsWithCode(f.io.open(`${f.dir}/missing`), ErrorCode.NotExist);
    assert.equal(await f.io.exists(`${f.dir}/missing`), false);
    const file = await f.io.open(`${f.dir}/f`, { create: true });
    await file.write(bytes(100, 3), 0);
    await file.close();
    assert.equal(await f.io.exists(`${f.dir}/f`), true);
    const again = await f.io.open(`${f.dir}/f`, { truncate: true });
    assert.equal(await again.sizeBytes(), 0);
    await again.close();
  });

  test("rename replaces the target; remove deletes; syncDirectory succeeds", async (f) => {
    const a = await f.io.open(`${f.dir}/a`, { create: true });
    await a.write(bytes(10, 4), 0);
    await a.close();
    const b = await f.io.open(`${f.dir}/b`, { create: true });
    await b.write(bytes(20, 5), 0);
    await b.close();
    await f.io.rename(`${f.dir}/a`, `${f.dir}/b`);
    await f.io.syncDirectory(f.dir);
    assert.equal(await f.io.exists(`${f.dir}/a`), false);
    const renamed = await f.io.open(`${f.dir}/b`);
    assert.equal(await renamed.sizeBytes(), 10);
    await renamed.close();
    await f.io.remove(`${f.dir}/b`);
    assert.equal(await f.io.exists(`${f.dir}/b`), false);
    await rejectsWithCode(f.io.remove(`${f.dir}/b`), ErrorCode.NotExist);
    await f.io.mkdir(`${f.dir}/sub/deeper`);
    await f.io.mkdir(`${f.dir}/sub/deeper`);
    assert.equal(await f.io.exists(`${f.dir}/sub/deeper`), true);
  });

  test("the lock excludes a second open file until unlocked or closed", async (f) => {
    const first = await f.io.open(`${f.dir}/f`, { create: true });
    const second = await f.io.open(`${f.dir}/f`);
    assert.equal(await first.tryLock(), true);
    assert.equal(await second.tryLock(), false);
    await first.unlock();
    assert.equal(await second.tryLock(), true);
    assert.equal(await first.tryLock(), false);
    await second.close();
    assert.equal(await first.tryLock(), true);
    await first.close();
  });

  test("a closed file throws closed", async (f) => {
    const file = await f.io.open(`${f.dir}/f`, { create: true });
    await file.close();
    await rejectsWithCode(file.read(new Uint8Array(1), 0), ErrorCode.Closed);
    await rejectsWithCode(file.write(new Uint8Array(1), 0), ErrorCode.Closed);
    await rejectsWithCode(file.datasync(), ErrorCode.Closed);
  });
}
