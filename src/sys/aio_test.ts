/**
 * The two shortcuts of small file I/O: writes batched through Linux AIO (aio.ts) and reads of
 * what the page cache holds without waiting (libc.ts preadNowait). Both must give exactly what
 * the plain nonblocking calls give: the same bytes, the same errors.
 *
 * A healthy kernel and a buffered file never take AIO's fallbacks (events are posted inside
 * io_submit), so the tests reach them two ways: a file opened with O_DIRECT, whose events come
 * later and are waited for, and stand-ins for io_submit and io_getevents
 * (wrapAioCallsForTesting) that fail, lose or shorten what the kernel does.
 */

import assert from "node:assert/strict";
import { SeededRandom, testSeed } from "../core/mod.ts";
import {
  aioAvailable,
  type AioCalls,
  BATCHED_WRITE_BYTES_MAX,
  batchedPwrite,
  disableAioForTesting,
  wrapAioCallsForTesting,
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

/** open(2)'s O_DIRECT, which differs between the two architectures AIO batching runs on. */
const O_DIRECT = Deno.build.arch === "aarch64" ? 0o200000 : 0o40000;
/** Alignment of O_DIRECT buffers, offsets and lengths (the largest logical block size in use). */
const DIRECT_ALIGN = 4096;

/** Whether this process batches through AIO; prints why a test is skipped when it does not. */
function batching(): boolean {
  if (aioAvailable()) return true;
  console.log("skipped: no AIO batching here (another OS or architecture, or io_setup refused)");
  return false;
}

/** Runs `body` with a fresh AIO writer whose system calls go through `wrap`. */
async function withAioCalls(
  wrap: (calls: AioCalls) => AioCalls,
  body: () => Promise<void>,
): Promise<void> {
  wrapAioCallsForTesting(wrap);
  try {
    assert.ok(aioAvailable(), "the wrapped writer opened");
    await body();
  } finally {
    wrapAioCallsForTesting(null);
  }
}

async function assertFileHolds(fd: number, expected: Uint8Array): Promise<void> {
  const got = new Uint8Array(expected.length);
  await preadFull(fd, got, 0);
  const first = got.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(first, -1, `the file differs from what was written at byte ${first}`);
}

/**
 * One batch of eight writes issued in one turn, the fifth to a descriptor open for reading only:
 * the seven others must land exactly, and the fifth fail as the plain pwrite fails (EBADF).
 */
async function batchWithARefusedWrite(): Promise<void> {
  await withFiles(2, async (fds, paths) => {
    const readOnly = open(paths[1]!, OpenFlags.O_RDONLY);
    try {
      const random = new SeededRandom(testSeed());
      const expected = new Uint8Array(8 * 8192);
      const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => {
        const bytes = random.bytes(1 + random.int(8192));
        if (i === 4) return batchedPwrite(readOnly, bytes, 0);
        expected.set(bytes, i * 8192);
        return batchedPwrite(fds[0]!, bytes, i * 8192);
      }));
      await assertFileHolds(fds[0]!, expected);
      results.forEach((result, i) => {
        assert.equal(result.status, i === 4 ? "rejected" : "fulfilled", `write ${i}`);
      });
      const error = (results[4] as PromiseRejectedResult).reason;
      assert.ok(error instanceof SysError, `a SysError: ${error}`);
      assert.match(error.message, /pwrite\(.*EBADF/);
    } finally {
      close(readOnly);
    }
  });
}

/** What the wrapped calls did; counts of events are of those the writer was handed. */
interface CallLog {
  submits: number;
  posted: number;
  waits: number;
  waited: number;
  failed: number;
}

function callLog(): CallLog {
  return { submits: 0, posted: 0, waits: 0, waited: 0, failed: 0 };
}

/** Counts what the writer's calls do, changing nothing. */
function counting(log: CallLog): (calls: AioCalls) => AioCalls {
  return (calls) => ({
    ...calls,
    io_submit: (...args) => {
      log.submits++;
      return calls.io_submit(...args);
    },
    io_getevents: (...args) => {
      const events = calls.io_getevents(...args);
      log.posted += Math.max(Number(events), 0);
      return events;
    },
    io_getevents_wait: async (...args) => {
      log.waits++;
      const events = await calls.io_getevents_wait(...args);
      log.waited += Math.max(Number(events), 0);
      return events;
    },
  });
}

/**
 * io_submit hands the kernel only the first `kernelTakes(count)` writes of a batch yet says it
 * took them all, and every `failing` io_getevents call fails (-1, as syscall(2) fails): the writes
 * the kernel never saw can land only through the plain path.
 */
function eventsLost(
  log: CallLog,
  kernelTakes: (count: number) => number,
  failing: "io_getevents" | "io_getevents_wait",
): (calls: AioCalls) => AioCalls {
  return (calls) => {
    const counted = counting(log)(calls);
    const fail = () => {
      log.failed++;
      return -1n;
    };
    return {
      ...counted,
      io_submit: async (call, context, count, iocbs) => {
        await counted.io_submit(call, context, BigInt(kernelTakes(Number(count))), iocbs);
        return count;
      },
      ...(failing === "io_getevents"
        ? { io_getevents: fail }
        : { io_getevents_wait: () => Promise.resolve(fail()) }),
    };
  };
}

/** Halves aio_nbytes (offset 32 of struct iocb) of the first `count` control blocks listed. */
function halveWrites(iocbPointers: AllowSharedBufferSource | null, count: number): void {
  assert.ok(iocbPointers !== null && ArrayBuffer.isView(iocbPointers), "a pointer array");
  const pointers = new BigUint64Array(iocbPointers.buffer, iocbPointers.byteOffset, count);
  for (const address of pointers) {
    const iocb = new DataView(
      Deno.UnsafePointerView.getArrayBuffer(Deno.UnsafePointer.create(address)!, 64),
    );
    iocb.setBigUint64(32, iocb.getBigUint64(32, true) / 2n, true);
  }
}

/** Counts io_submit calls and the most that were in the kernel at once. */
function submitsInFlight(
  log: { submits: number; inFlight: number; most: number },
): (calls: AioCalls) => AioCalls {
  return (calls) => ({
    ...calls,
    io_submit: async (...args) => {
      log.submits++;
      log.most = Math.max(log.most, ++log.inFlight);
      try {
        return await calls.io_submit(...args);
      } finally {
        log.inFlight--;
      }
    },
  });
}

Deno.test("batchedPwrite: large writes to one file go to the kernel one batch at a time", async () => {
  if (!batching()) return;
  // Parallel buffered writes to one ext4 file copy one at a time and spin on its inode lock.
  const log = { submits: 0, inFlight: 0, most: 0 };
  await withAioCalls(submitsInFlight(log), async () => {
    await withFiles(1, async ([fd]) => {
      const random = new SeededRandom(testSeed());
      const writeBytes = 2 * BATCHED_WRITE_BYTES_MAX;
      const expected = random.bytes(16 * writeBytes);
      await Promise.all(Array.from({ length: 16 }, (_, i) => {
        const at = i * writeBytes;
        return batchedPwrite(fd!, expected.subarray(at, at + writeBytes), at);
      }));
      await assertFileHolds(fd!, expected);
    });
  });
  assert.ok(log.submits >= 1, "large writes went through AIO");
  assert.ok(log.submits < 16, `batched: ${log.submits} io_submit calls for 16 writes`);
  assert.equal(log.most, 1, "one batch in the kernel at a time");
});

Deno.test("batchedPwrite: events not posted by io_submit are waited for, and settle their writes", async () => {
  if (!batching()) return;
  const log = callLog();
  await withAioCalls((calls) => {
    const counted = counting(log)(calls);
    let submitted = false;
    return {
      ...counted,
      io_submit: async (...args) => {
        const taken = await counted.io_submit(...args);
        submitted = true;
        return taken;
      },
      // The first look after io_submit finds nothing posted yet, as for a file opened O_DIRECT.
      io_getevents: (...args) => {
        if (!submitted) return counted.io_getevents(...args);
        submitted = false;
        return 0n;
      },
    };
  }, batchWithARefusedWrite);
  assert.equal(log.submits, 1, "one batch");
  assert.equal(log.waits, 1, "one wait");
  assert.equal(log.waited, 4, "it reaped the events of the four writes before the refused one");
});

Deno.test("batchedPwrite: when waiting for events fails after some came, the rest land plainly", async () => {
  if (!batching()) return;
  const log = callLog();
  const half = (count: number) => Math.ceil(count / 2);
  await withAioCalls(eventsLost(log, half, "io_getevents_wait"), batchWithARefusedWrite);
  assert.equal(log.submits, 1, "one batch");
  assert.equal(log.posted, 4, "the events of the half the kernel took");
  assert.equal(log.failed, 1, "then the wait for the rest failed, and nothing more was reaped");
});

Deno.test("batchedPwrite: when reaping events fails at once, the whole batch lands plainly", async () => {
  if (!batching()) return;
  const log = callLog();
  await withAioCalls(eventsLost(log, () => 0, "io_getevents"), batchWithARefusedWrite);
  assert.equal(log.submits, 1, "one batch");
  assert.equal(log.failed, 1, "the first io_getevents failed, and nothing more was reaped");
});

Deno.test("batchedPwrite: when io_submit fails, the whole batch lands plainly", async () => {
  if (!batching()) return;
  let refused = 0;
  await withAioCalls((calls) => ({
    ...calls,
    // -1, as syscall(2) fails (EAGAIN when the context has no room), and nothing submitted.
    io_submit: () => {
      refused++;
      return Promise.resolve(-1n);
    },
  }), batchWithARefusedWrite);
  assert.equal(refused, 1, "the batch was offered to io_submit");
});

Deno.test("batchedPwrite: writes the kernel does short are finished plainly", async () => {
  if (!batching()) return;
  const log = callLog();
  await withAioCalls((calls) => {
    const counted = counting(log)(calls);
    return {
      ...counted,
      io_submit: (call, context, count, iocbs) => {
        halveWrites(iocbs, Number(count));
        return counted.io_submit(call, context, count, iocbs);
      },
    };
  }, batchWithARefusedWrite);
  assert.equal(log.submits, 1, "one batch");
  assert.equal(log.posted, 4, "the kernel wrote half of each write before the refused one");
});

/**
 * Runs `body` on a file of `bytes` (already written and synced, so O_DIRECT writes overwrite
 * allocated blocks: ext4 finishes writes that extend a file inside io_submit) opened with
 * O_DIRECT and plainly, in a directory of a disk file system (tmpfs refuses O_DIRECT). Skips,
 * saying why, where O_DIRECT is refused.
 */
async function withDirectFile(
  bytes: number,
  body: (direct: number, buffered: number) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ dir: "/var/tmp", prefix: "torus-aio-direct-" }).catch(
    (error) => console.log(`skipped: no directory for O_DIRECT under /var/tmp (${error})`),
  );
  if (dir === undefined) return;
  const buffered = open(`${dir}/f`, OpenFlags.O_RDWR | OpenFlags.O_CREAT);
  try {
    await pwriteFull(buffered, new Uint8Array(bytes), 0);
    await fdatasync(buffered);
    let direct: number;
    try {
      direct = open(`${dir}/f`, OpenFlags.O_RDWR | O_DIRECT);
    } catch (error) {
      console.log(`skipped: ${dir} refuses O_DIRECT (${error})`);
      return;
    }
    try {
      await body(direct, buffered);
    } finally {
      close(direct);
    }
  } finally {
    close(buffered);
    await Deno.remove(dir, { recursive: true });
  }
}

/** `bytes` long, at an address O_DIRECT takes. */
function alignedBuffer(bytes: number): Uint8Array {
  const room = new Uint8Array(bytes + DIRECT_ALIGN);
  const address = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(room)));
  const skip = (DIRECT_ALIGN - address % DIRECT_ALIGN) % DIRECT_ALIGN;
  return room.subarray(skip, skip + bytes);
}

/** Rounds of O_DIRECT writes tried before concluding that their events come inside io_submit. */
const DIRECT_ROUNDS_MAX = 8;

/**
 * One round: `writes` aligned writes of DIRECT_ALIGN bytes, covering `direct`'s file in one
 * batch, each round with other bytes, read back exactly through `buffered`; `log` is reset
 * first.
 */
async function directRound(
  direct: number,
  buffered: number,
  writes: number,
  round: number,
  log: CallLog,
): Promise<void> {
  Object.assign(log, callLog());
  const expected = new SeededRandom(testSeed() + round).bytes(writes * DIRECT_ALIGN);
  const source = alignedBuffer(expected.length);
  source.set(expected);
  await Promise.all(Array.from({ length: writes }, (_, i) => {
    const at = i * DIRECT_ALIGN;
    return batchedPwrite(direct, source.subarray(at, at + DIRECT_ALIGN), at);
  }));
  await assertFileHolds(buffered, expected);
  assert.equal(log.submits, 1, "one batch");
}

Deno.test("batchedPwrite: O_DIRECT writes, whose events come after io_submit, are waited for", async () => {
  if (!batching()) return;
  const writes = 64;
  const log = callLog();
  await withDirectFile(writes * DIRECT_ALIGN, async (direct, buffered) => {
    await withAioCalls(counting(log), async () => {
      // Whether an event is posted by the time io_submit's promise settles is a race with the
      // disk: rounds are repeated until one leaves events to wait for.
      for (let round = 0; round < DIRECT_ROUNDS_MAX; round++) {
        await directRound(direct, buffered, writes, round, log);
        if (log.posted === writes) continue;
        assert.ok(log.waits > 0, "events not posted by io_submit were waited for");
        assert.equal(log.posted + log.waited, writes, "every write was settled by its event");
        return;
      }
      console.log("skipped: every O_DIRECT write here finished inside io_submit");
    });
  });
});
