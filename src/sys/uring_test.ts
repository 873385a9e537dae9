/**
 * Reads batched through io_uring (uring.ts) give exactly what preadFull gives: the same bytes,
 * the same short counts at the end of a file, the same errors.
 *
 * A healthy kernel never makes a ring lose completions, so the tests that drop rings enter them
 * through a stand-in (wrapUringEnterForTesting) that fails or throws as a cut-short enter would.
 */

import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import { SeededRandom, testSeed } from "../core/mod.ts";
import { SysError } from "./errno.ts";
import {
  Advice,
  close,
  fadvise,
  fdatasync,
  open,
  OpenFlags,
  pwriteFull,
  tuneMallocForLargeBuffers,
} from "./libc.ts";
import {
  batchedPreadFull,
  disableUringForTesting,
  URING_READ_BYTES_MAX,
  uringAvailable,
  type UringEnter,
  wrapUringEnterForTesting,
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

/** What a stand-in enter does for a ring: the kernel's enter, a failure, or a throw. */
type EnterOutcome = "kernel" | "interrupted" | "throws";

/**
 * An io_uring_enter that logs the ring (descriptor) of every call and does what `outcome` says:
 * "interrupted" returns -1 having submitted nothing, as syscall(2) does when a signal cuts the
 * wait short (EINTR), so the batch's completions never come within the ring's attempts.
 */
function enterThrough(
  log: number[],
  outcome: (ringFd: number, args: Parameters<UringEnter>) => EnterOutcome,
): (enter: UringEnter) => UringEnter {
  return (enter) => (...args) => {
    const ringFd = args[1];
    log.push(ringFd);
    switch (outcome(ringFd, args)) {
      case "kernel":
        return enter(...args);
      case "interrupted":
        return Promise.resolve(-1n);
      case "throws":
        return Promise.reject(new Error("injected io_uring_enter failure"));
    }
  };
}

/** Runs `body` with fresh rings entered through `wrap`; skips where there is no io_uring. */
async function withEnter(
  wrap: (enter: UringEnter) => UringEnter,
  body: () => Promise<void>,
): Promise<void> {
  if (!uringAvailable()) {
    console.log("skipped: no io_uring here");
    return;
  }
  wrapUringEnterForTesting(wrap);
  try {
    assert.ok(uringAvailable(), "the wrapped rings opened");
    await body();
  } finally {
    wrapUringEnterForTesting(null);
  }
}

/** `promise`, or a failure naming `what` when it has not settled after `ms` (no hang). */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("uring: a dropped ring is never entered again, and reads stay exact", async () => {
  const log: number[] = [];
  let dropped: number | null = null;
  const outcome = (ring: number): EnterOutcome => {
    dropped ??= ring;
    return ring === dropped ? "interrupted" : "kernel";
  };
  await withEnter(enterThrough(log, outcome), async () => {
    await withFile(async (fd, bytes) => {
      await within(5000, "the reads", scatteredReads(fd, bytes, testSeed()));
      const enteredBefore = log.length;
      for (let wave = 1; wave <= 3; wave++) await scatteredReads(fd, bytes, testSeed() + wave);
      const later = log.slice(enteredBefore);
      assert.ok(dropped !== null, "a ring was entered and dropped");
      assert.ok(later.length > 0, "the other rings kept reading");
      assert.ok(!later.includes(dropped), "the dropped ring was never entered again");
    });
  });
});

for (const failure of ["interrupted", "throws"] as const) {
  Deno.test(`uring: with every ring dropped (enter ${failure}), reads take the plain path`, async () => {
    const log: number[] = [];
    await withEnter(enterThrough(log, () => failure), async () => {
      await withFile(async (fd, bytes) => {
        // The first batches drop every ring; the reads queued behind them are read plainly.
        const bad = batchedPreadFull(-1, new Uint8Array(4096), 0).then(() => null, (e) => e);
        await within(5000, "the reads", scatteredReads(fd, bytes, testSeed()));
        const error = await bad;
        assert.ok(error instanceof SysError, `a SysError: ${error}`);
        assert.match(error.message, /pread\(.*EBADF/);
        assert.ok(log.length > 0, "rings were entered");
        const entered = log.length;
        await scatteredReads(fd, bytes, testSeed() + 1);
        assert.equal(log.length, entered, "no ring was entered once all were dropped");
      });
    });
  });
}

/** V8's gc(), which deno test does not expose; null where V8 refuses the flag. */
function exposedGc(): (() => void) | null {
  v8.setFlagsFromString("--expose-gc");
  const gc: unknown = vm.runInNewContext("typeof gc === 'function' ? gc : null");
  return typeof gc === "function" ? () => void gc() : null;
}

/** Collects garbage until the memory of unreachable buffers is back with the allocator. */
async function collectGarbage(gc: () => void): Promise<void> {
  for (let i = 0; i < 3; i++) {
    gc();
    // Buffers are freed after the collection, on a V8 thread.
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The bytes of one ring's buffers: a read of up to URING_READ_BYTES_MAX for each of 16. */
const RING_BUFFER_BYTES = 16 * URING_READ_BYTES_MAX;
const MARK = 0xa5;

Deno.test("uring: a dropped ring's late reads never land in memory a caller got", async () => {
  const gc = exposedGc();
  if (gc === null) {
    console.log("skipped: V8 refused --expose-gc");
    return;
  }
  // As a storage engine does (FileBlockStore.open): freed large buffers stay in the heap and are
  // handed out again, so a ring's buffers freed too early would become a caller's.
  tuneMallocForLargeBuffers();
  const log: number[] = [];
  let held: Parameters<UringEnter> | null = null;
  let kernelEnter: UringEnter | null = null;
  const outcome = (ring: number, args: Parameters<UringEnter>): EnterOutcome => {
    held ??= args;
    return ring === held[1] ? "interrupted" : "kernel";
  };
  await withEnter((enter) => {
    kernelEnter = enter;
    return enterThrough(log, outcome)(enter);
  }, async () => {
    await withFile(async (fd, bytes) => {
      const intos = [0, 1, 2, 3].map(() => new Uint8Array(URING_READ_BYTES_MAX));
      await Promise.all(intos.map((into, i) => batchedPreadFull(fd, into, i * into.length)));
      intos.forEach((into, i) => {
        const at = i * into.length;
        assert.equal(into.findIndex((byte, j) => byte !== bytes[at + j]), -1, `bytes at ${at}`);
      });
      // The caller reuses its buffers and takes new ones, once nothing refers to the ring.
      for (const into of intos) into.fill(MARK);
      await collectGarbage(gc);
      const fresh = Array.from({ length: 8 }, () => new Uint8Array(RING_BUFFER_BYTES).fill(MARK));
      // Only now does the kernel see the held ring's reads, and do them.
      assert.ok(held !== null && kernelEnter !== null, "a ring was held");
      assert.equal(Number(await kernelEnter(...held)), intos.length, "the late reads ran");
      for (const buffer of [...intos, ...fresh]) {
        assert.equal(buffer.findIndex((byte) => byte !== MARK), -1, "a caller's buffer changed");
      }
    });
  });
});
