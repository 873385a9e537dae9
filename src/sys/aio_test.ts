/**
 * The two shortcuts of small file I/O: writes batched through Linux AIO (aio.ts) and reads of
 * what the page cache holds without waiting (libc.ts preadNowait). Both must give exactly what
 * the plain nonblocking calls give: the same bytes, the same errors.
 */

import assert from "node:assert/strict";
import { SeededRandom, testSeed } from "../core/mod.ts";
import {
  aioAvailable,
  BATCHED_WRITE_BYTES_MAX,
  batchedPwrite,
  disableAioForTesting,
} from "./aio.ts";
import { SysError } from "./errno.ts";
import {
  Advice,
  close,
  fadvise,
  fdatasync,
  NOWAIT_READ_BYTES_MAX,
  open,
  OpenFlags,
  preadFull,
  preadNowait,
  pwriteFull,
} from "./libc.ts";

async function withFiles(
  count: number,
  body: (fds: number[], paths: string[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-aio-" });
  const paths = Array.from({ length: count }, (_, i) => `${dir}/f${i}`);
  const fds = paths.map((path) => open(path, OpenFlags.O_RDWR | OpenFlags.O_CREAT));
  try {
    await body(fds, paths);
  } finally {
    for (const fd of fds) close(fd);
    await Deno.remove(dir, { recursive: true });
  }
}

/** Random small and large writes to random places of two files, many in flight at once. */
async function scatteredWrites(): Promise<void> {
  const random = new SeededRandom(testSeed());
  // Each unit of each file takes one write (so writes in flight never overlap): a large one
  // (more than a batch takes) at its start, or a small one anywhere in it.
  const unitBytes = BATCHED_WRITE_BYTES_MAX + 16 * 1024;
  const units = 64;
  await withFiles(2, async (fds) => {
    const expected = fds.map(() => new Uint8Array(units * unitBytes));
    const order = Array.from({ length: 2 * units }, (_, i) => i);
    for (let i = order.length - 1; i > 0; i--) {
      const j = random.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const writes: Promise<void>[] = [];
    for (const [n, which] of order.entries()) {
      const file = which % 2;
      const unit = Math.floor(which / 2);
      const large = random.chance(0.1);
      const bytes = random.bytes(large ? BATCHED_WRITE_BYTES_MAX + 4096 : 1 + random.int(4096));
      const offset = unit * unitBytes + (large ? 0 : random.int(unitBytes - bytes.length));
      expected[file]!.set(bytes, offset);
      writes.push(batchedPwrite(fds[file]!, bytes, offset));
      // Some writes in one turn, some across turns.
      if (n % 40 === 39) await new Promise((resolve) => setTimeout(resolve, 0));
    }
    await Promise.all(writes);
    for (let file = 0; file < 2; file++) {
      const got = new Uint8Array(units * unitBytes);
      await preadFull(fds[file]!, got, 0);
      assert.ok(
        got.every((byte, i) => byte === expected[file]![i]),
        `file ${file} reads back what was written`,
      );
    }
  });
}

Deno.test("batchedPwrite: this machine batches through AIO", () => {
  if (Deno.build.os !== "linux" || !["x86_64", "aarch64"].includes(Deno.build.arch)) {
    console.log("skipped: AIO batching is for Linux on x86-64 and arm64 only");
    return;
  }
  assert.ok(aioAvailable(), "io_setup worked (fs.aio-max-nr not used up?)");
});

Deno.test("batchedPwrite: scattered small and large writes to two files land exactly", async () => {
  await scatteredWrites();
});

Deno.test("batchedPwrite: with AIO off, every write takes the plain path and lands exactly", async () => {
  disableAioForTesting(true);
  try {
    assert.equal(aioAvailable(), false);
    await scatteredWrites();
  } finally {
    disableAioForTesting(false);
  }
});

Deno.test("batchedPwrite: a write the kernel refuses fails with the errno, its batch mates land", async () => {
  await withFiles(2, async (fds, paths) => {
    const readOnly = open(paths[1]!, OpenFlags.O_RDONLY);
    try {
      const good = new Uint8Array(4096).fill(7);
      const results = await Promise.allSettled([
        batchedPwrite(fds[0]!, good, 0),
        batchedPwrite(readOnly, new Uint8Array(4096).fill(8), 0),
        batchedPwrite(fds[0]!, good, 8192),
      ]);
      assert.equal(results[0]!.status, "fulfilled");
      assert.equal(results[2]!.status, "fulfilled");
      const refused = results[1]!;
      assert.equal(refused.status, "rejected");
      const error = (refused as PromiseRejectedResult).reason;
      assert.ok(error instanceof SysError, `a SysError: ${error}`);
      assert.match(error.message, /pwrite\(.*EBADF/);
      const back = new Uint8Array(12288);
      await preadFull(fds[0]!, back, 0);
      assert.ok(back.subarray(0, 4096).every((b) => b === 7));
      assert.ok(back.subarray(8192).every((b) => b === 7));
    } finally {
      close(readOnly);
    }
  });
});

Deno.test("batchedPwrite: a write that fails in the kernel after submission reports its errno", async () => {
  await withFiles(1, async ([fd]) => {
    // Past ext4's largest file (16 TiB): io_submit takes it, and its event carries -EFBIG.
    const far = 2 ** 46;
    const plain = await pwriteFull(fd!, new Uint8Array(4096), far).then(() => null, (e) => e);
    if (plain === null || !/EFBIG/.test(String(plain))) {
      console.log("skipped: this file system takes a write at 64 TiB");
      return;
    }
    const results = await Promise.allSettled([
      batchedPwrite(fd!, new Uint8Array(4096).fill(1), 0),
      batchedPwrite(fd!, new Uint8Array(4096).fill(2), far),
      batchedPwrite(fd!, new Uint8Array(4096).fill(3), 4096),
    ]);
    assert.equal(results[0]!.status, "fulfilled");
    assert.equal(results[2]!.status, "fulfilled");
    assert.equal(results[1]!.status, "rejected", "the write past the largest file fails");
    assert.match(String((results[1] as PromiseRejectedResult).reason), /pwrite\(.*EFBIG/);
  });
});

Deno.test("preadNowait: cached bytes come at once; an uncached or failing read says -1", async () => {
  await withFiles(1, async ([fd]) => {
    const bytes = new SeededRandom(testSeed()).bytes(64 * 1024);
    await pwriteFull(fd!, bytes, 0);
    const page = new Uint8Array(4096);
    assert.equal(preadNowait(fd!, page, 8192), 4096, "just written: in the page cache");
    assert.deepEqual(page, bytes.subarray(8192, 12288));
    assert.equal(preadNowait(fd!, new Uint8Array(4096), 64 * 1024), 0, "end of file");
    assert.equal(preadNowait(-1, page, 0), -1, "a bad descriptor");
    assert.equal(preadNowait(fd!, new Uint8Array(NOWAIT_READ_BYTES_MAX + 1), 0), -1, "too large");
    // Dropped from the page cache (where the file system honours the advice, as ext4 does):
    // then nothing comes without waiting, and it says so rather than block.
    await fdatasync(fd!);
    fadvise(fd!, { advice: Advice.POSIX_FADV_DONTNEED });
    const got = preadNowait(fd!, page.fill(0), 16384);
    if (got !== -1) assert.deepEqual(page.subarray(0, got), bytes.subarray(16384, 16384 + got));
  });
});
