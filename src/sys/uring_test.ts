/**
 * Reads batched through io_uring (uring.ts) give exactly what preadFull gives: the same bytes,
 * the same short counts at the end of a file, the same errors.
 */

import assert from "node:assert/strict";
import { SeededRandom, testSeed } from "../core/mod.ts";
import { SysError } from "./errno.ts";
import { Advice, close, fadvise, fdatasync, open, OpenFlags, pwriteFull } from "./libc.ts";
import {
  batchedPreadFull,
  disableUringForTesting,
  URING_READ_BYTES_MAX,
  uringAvailable,
} from "./uring.ts";

const FILE_BYTES = 8 * 1024 * 1024;

async function withFile(body: (fd: number, bytes: Uint8Array) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-uring-" });
  const fd = open(`${dir}/f`, OpenFlags.O_RDWR | OpenFlags.O_CREAT);
  try {
    const bytes = new SeededRandom(testSeed()).bytes(FILE_BYTES);
    await pwriteFull(fd, bytes, 0);
    await body(fd, bytes);
  } finally {
    close(fd);
    await Deno.remove(dir, { recursive: true });
  }
}

/** Many reads at once, of every size up to twice what a ring read takes, checked byte for byte. */
async function scatteredReads(fd: number, bytes: Uint8Array, seed: number): Promise<void> {
  const random = new SeededRandom(seed);
  const reads = Array.from({ length: 200 }, () => {
    const length = random.chance(0.1)
      ? URING_READ_BYTES_MAX + 1 + random.int(URING_READ_BYTES_MAX)
      : 1 + random.int(8192);
    const offset = random.int(FILE_BYTES - length);
    const into = new Uint8Array(length);
    return batchedPreadFull(fd, into, offset).then((got) => ({ got, into, offset }));
  });
  for (const { got, into, offset } of await Promise.all(reads)) {
    assert.equal(got, into.length);
    assert.ok(
      into.every((byte, i) => byte === bytes[offset + i]),
      `bytes at ${offset} (${into.length})`,
    );
  }
}

Deno.test("uring: this machine reads through io_uring", () => {
  if (Deno.build.os !== "linux") {
    console.log("skipped: io_uring is Linux only");
    return;
  }
  const disabled = Deno.readTextFileSync("/proc/sys/kernel/io_uring_disabled").trim();
  if (disabled !== "0") {
    console.log(`skipped: kernel.io_uring_disabled is ${disabled}`);
    return;
  }
  assert.ok(uringAvailable());
});

Deno.test("uring: scattered reads, cached and from the disk, match the file", async () => {
  await withFile(async (fd, bytes) => {
    await scatteredReads(fd, bytes, testSeed());
    await fdatasync(fd);
    fadvise(fd, { advice: Advice.POSIX_FADV_DONTNEED });
    await scatteredReads(fd, bytes, testSeed() + 1);
  });
});

Deno.test("uring: with io_uring off, every read takes the plain path and matches", async () => {
  disableUringForTesting(true);
  try {
    assert.equal(uringAvailable(), false);
    await withFile((fd, bytes) => scatteredReads(fd, bytes, testSeed()));
  } finally {
    disableUringForTesting(false);
  }
});

Deno.test("uring: the end of the file gives short counts and zero, as preadFull does", async () => {
  await withFile(async (fd, bytes) => {
    const into = new Uint8Array(4096).fill(0xee);
    assert.equal(await batchedPreadFull(fd, into, FILE_BYTES - 1000), 1000);
    assert.deepEqual(into.subarray(0, 1000), bytes.subarray(FILE_BYTES - 1000));
    assert.ok(into.subarray(1000).every((byte) => byte === 0xee), "nothing past the end written");
    assert.equal(await batchedPreadFull(fd, new Uint8Array(4096), FILE_BYTES + 8192), 0);
  });
});

Deno.test("uring: a failed read names its errno and leaves its batch mates correct", async () => {
  await withFile(async (fd, bytes) => {
    const results = await Promise.allSettled([
      batchedPreadFull(fd, new Uint8Array(4096), 0),
      batchedPreadFull(-1, new Uint8Array(4096), 0),
      batchedPreadFull(fd, new Uint8Array(4096), 8192),
    ]);
    assert.equal(results[0]!.status, "fulfilled");
    assert.equal(results[2]!.status, "fulfilled");
    const refused = results[1]!;
    assert.equal(refused.status, "rejected");
    const error = (refused as PromiseRejectedResult).reason;
    assert.ok(error instanceof SysError, `a SysError: ${error}`);
    assert.match(error.message, /pread\(.*EBADF/);
    const again = new Uint8Array(4096);
    assert.equal(await batchedPreadFull(fd, again, 8192), 4096);
    assert.deepEqual(again, bytes.subarray(8192, 12288));
  });
});
