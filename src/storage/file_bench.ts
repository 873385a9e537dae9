/**
 * Storage engine benchmark (docs/adr/0001-block-file-io.md, docs/benchmarks.md): 512 KiB blocks
 * put and got through FileBlockStore against plain libc pwrite/pread of the same bytes to a plain
 * file, in one run. Sequential and random slots, one call at a time
 * (QD1) and eight in flight (QD8), from the page cache and cold (cache dropped), plus how long
 * cold gets block the event loop. Every iteration moves 64 blocks (32 MiB); names carry
 * `[32MiB/iter]` so scripts/bench.ts can print throughput, and each group's baseline is the
 * plain synchronous call, the fastest way to move these bytes through FFI. (Bench functions are
 * declared `async`: Deno awaits a bench only when its function is an async function.)
 *
 * Run: deno task bench (or deno bench -A src/storage/file_bench.ts). Files live in a temp dir on
 * the filesystem of $TMPDIR (removed at exit). The warm groups fit in the page cache and measure
 * the engine's CPU path; the cold groups measure the disk behind $TMPDIR as well.
 * @module
 */

import { BlockRef, crc32, crc32c, SeededRandom } from "../core/mod.ts";
import {
  Advice,
  close,
  fadvise,
  fdatasync,
  ftruncate,
  open,
  OpenFlags,
  preadFull,
  preadSync,
  pwriteFull,
  pwriteSync,
} from "../sys/mod.ts";
import { FileBlockStore } from "./file.ts";
import { HEADER_BYTES } from "./file_format.ts";

const BLOCK_BYTES = 512 * 1024;
const SLOTS = 1024;
const BATCH = 64;
const QUEUE_DEPTH = 8;
const TAG = "[32MiB/iter]";

const dir = await Deno.makeTempDir({ prefix: "torus-bench-" });
globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));

const random = new SeededRandom(1);
const payload = random.bytes(BLOCK_BYTES);
/** Slots 0..63 in order, and 64 distinct random slots of the 1024. */
const seqSlots = Array.from({ length: BATCH }, (_, i) => i);
const randSlots = shuffled(Array.from({ length: SLOTS }, (_, i) => i)).slice(0, BATCH);

function shuffled(values: number[]): number[] {
  for (let i = values.length - 1; i > 0; i--) {
    const j = random.int(i + 1);
    [values[i], values[j]] = [values[j]!, values[i]!];
  }
  return values;
}

function ref(slot: number): BlockRef {
  return new BlockRef({ volume: 2, inode: 3n, index: BigInt(slot) });
}

// The plain file: same layout as the engine's data file, every slot written once.
const plainFd = open(`${dir}/plain.bin`, OpenFlags.O_RDWR | OpenFlags.O_CREAT);
ftruncate(plainFd, HEADER_BYTES + SLOTS * BLOCK_BYTES);
for (let slot = 0; slot < SLOTS; slot++) pwriteSync(plainFd, payload, offset(slot));
globalThis.addEventListener("unload", () => close(plainFd));

function offset(slot: number): number {
  return HEADER_BYTES + slot * BLOCK_BYTES;
}

/**
 * An engine whose ref i lives in slot i, and whose free stack hands out `randSlots` (random) or
 * `seqSlots` (in order) to the next 64 puts; puts are undone by deleting in reverse order.
 */
function openEngine(): Promise<FileBlockStore> {
  return FileBlockStore.open({
    dir,
    blockSizeBytes: BLOCK_BYTES,
    sizeBytes: (SLOTS + 1) * BLOCK_BYTES,
  });
}

async function filledEngine(): Promise<FileBlockStore> {
  const store = await openEngine();
  for (let slot = 0; slot < SLOTS; slot++) await store.putBlock(ref(slot), payload);
  await store.flush();
  return store;
}

let engine = await filledEngine();
globalThis.addEventListener("unload", () => void engine.close());

/** Drops the cached pages of a file (after syncing them), so the next access goes to the disk. */
async function evict(path: string): Promise<void> {
  const fd = open(path, OpenFlags.O_RDONLY);
  try {
    await fdatasync(fd);
    fadvise(fd, { advice: Advice.POSIX_FADV_DONTNEED });
  } finally {
    close(fd);
  }
}

/**
 * Closes the engine, evicts its data file from the page cache and opens it again (reopening also
 * rebuilds the free stack in slot order).
 */
async function reopenCold(): Promise<FileBlockStore> {
  await engine.close();
  await evict(`${dir}/data-current.blk`);
  engine = await openEngine();
  return engine;
}

/** Refs put by the put benches; never stored before, so every put is a fresh ref. */
const freshRefs = Array.from(
  { length: BATCH },
  (_, i) => new BlockRef({ volume: 9, inode: 9n, index: BigInt(i) }),
);

/** Frees `slots` (deleting their refs) so the next puts get exactly those slots, in order. */
async function freeSlots(store: FileBlockStore, slots: number[]): Promise<void> {
  for (let i = slots.length - 1; i >= 0; i--) await store.deleteBlock(ref(slots[i]!));
}

/** Puts the original refs back into `slots` after a put bench borrowed them. */
async function restore(store: FileBlockStore, slots: number[]): Promise<void> {
  for (let i = slots.length - 1; i >= 0; i--) await store.deleteBlock(freshRefs[i]!);
  for (const slot of slots) await store.putBlock(ref(slot), payload);
}

async function inBatches(count: number, depth: number, op: (i: number) => Promise<unknown>) {
  for (let first = 0; first < count; first += depth) {
    const calls: Promise<unknown>[] = [];
    for (let i = first; i < Math.min(count, first + depth); i++) calls.push(op(i));
    await Promise.all(calls);
  }
}

for (const pattern of ["seq", "rand"] as const) {
  const slots = pattern === "seq" ? seqSlots : randSlots;
  registerPuts(pattern, slots);
  registerGets(pattern, slots);
}

function registerPuts(pattern: "seq" | "rand", slots: number[]): void {
  for (const depth of [1, QUEUE_DEPTH]) {
    const group = `put ${pattern} 512KiB QD${depth}`;
    Deno.bench({
      name: `plain pwrite (sync FFI) ${TAG}`,
      group,
      baseline: true,
      fn: () => {
        for (const slot of slots) pwriteSync(plainFd, payload, offset(slot));
      },
    });
    Deno.bench({
      name: `plain pwrite (nonblocking FFI) ${TAG}`,
      group,
      fn: async () => {
        await inBatches(BATCH, depth, (i) => pwriteFull(plainFd, payload, offset(slots[i]!)));
      },
    });
    Deno.bench({
      name: `engine putBlock ${TAG}`,
      group,
      fn: async (b) => {
        await freeSlots(engine, slots);
        b.start();
        await inBatches(BATCH, depth, (i) => engine.putBlock(freshRefs[i]!, payload));
        b.end();
        await restore(engine, slots);
      },
    });
  }
}

function registerGets(pattern: "seq" | "rand", slots: number[]): void {
  const buffers = Array.from({ length: QUEUE_DEPTH }, () => new Uint8Array(BLOCK_BYTES));
  for (const depth of [1, QUEUE_DEPTH]) {
    const group = `get ${pattern} 512KiB QD${depth}`;
    Deno.bench({
      name: `plain pread (sync FFI) ${TAG}`,
      group,
      baseline: true,
      fn: () => {
        for (const slot of slots) preadSync(plainFd, buffers[0]!, offset(slot));
      },
    });
    Deno.bench({
      name: `plain pread (nonblocking FFI) ${TAG}`,
      group,
      fn: async () => {
        await inBatches(
          BATCH,
          depth,
          (i) => preadFull(plainFd, buffers[i % depth]!, offset(slots[i]!)),
        );
      },
    });
    Deno.bench({
      name: `engine getBlock ${TAG}`,
      group,
      fn: async () => {
        await inBatches(BATCH, depth, (i) => engine.getBlock(ref(slots[i]!)));
      },
    });
  }
}

// Cold data: the same random slots with the page cache dropped before every iteration, so reads
// go to the disk. Writes cover whole pages, so pwrite never reads.
const coldSlots = [...randSlots].sort((a, b) => a - b);
const plainPath = `${dir}/plain.bin`;
registerColdGets();
registerColdPuts();
registerStall();
registerParts();

function registerColdGets(): void {
  const group = `get rand cold 512KiB QD${QUEUE_DEPTH}`;
  const buffers = Array.from({ length: QUEUE_DEPTH }, () => new Uint8Array(BLOCK_BYTES));
  Deno.bench({
    name: `plain pread (nonblocking FFI) ${TAG}`,
    group,
    baseline: true,
    fn: async (b) => {
      await evict(plainPath);
      b.start();
      await inBatches(
        BATCH,
        QUEUE_DEPTH,
        (i) => preadFull(plainFd, buffers[i % QUEUE_DEPTH]!, offset(coldSlots[i]!)),
      );
      b.end();
    },
  });
  Deno.bench({
    name: `engine getBlock ${TAG}`,
    group,
    fn: async (b) => {
      const store = await reopenCold();
      b.start();
      await inBatches(BATCH, QUEUE_DEPTH, (i) => store.getBlock(ref(coldSlots[i]!)));
      b.end();
    },
  });
}

function registerColdPuts(): void {
  const group = `put rand cold 512KiB QD${QUEUE_DEPTH}`;
  Deno.bench({
    name: `plain pwrite (nonblocking FFI) ${TAG}`,
    group,
    baseline: true,
    fn: async (b) => {
      await evict(plainPath);
      b.start();
      await inBatches(
        BATCH,
        QUEUE_DEPTH,
        (i) => pwriteFull(plainFd, payload, offset(coldSlots[i]!)),
      );
      b.end();
    },
  });
  Deno.bench({
    name: `engine putBlock ${TAG}`,
    group,
    fn: async (b) => {
      await freeSlots(engine, coldSlots);
      // Reopening rebuilds the free stack in slot order: the puts get coldSlots in order.
      const store = await reopenCold();
      b.start();
      await inBatches(BATCH, QUEUE_DEPTH, (i) => store.putBlock(freshRefs[i]!, payload));
      b.end();
      await restore(store, coldSlots);
    },
  });
}

/**
 * How long the event loop is blocked while 8 gets of cold blocks start: the time until a 0 ms
 * timer set right after the calls fires (the gets complete afterwards, untimed).
 */
function registerStall(): void {
  const group = `event-loop stall while ${QUEUE_DEPTH} cold gets start`;
  Deno.bench({
    name: "no gets (the timer alone)",
    group,
    baseline: true,
    fn: async (b) => {
      b.start();
      await new Promise((resolve) => setTimeout(resolve, 0));
      b.end();
    },
  });
  Deno.bench({
    name: "engine getBlock",
    group,
    fn: async (b) => {
      const store = await reopenCold();
      b.start();
      const gets = coldSlots.slice(0, QUEUE_DEPTH).map((slot) => store.getBlock(ref(slot)));
      await new Promise((resolve) => setTimeout(resolve, 0));
      b.end();
      await Promise.all(gets);
    },
  });
}

/**
 * The parts of a get, one block at a time, to see where its time goes: the nonblocking read into
 * a reused buffer, into a fresh buffer (what a get must return), plus the checksum; and the two
 * checksums the format could use.
 */
function registerParts(): void {
  const group = "get parts, one 512KiB block";
  const reused = new Uint8Array(BLOCK_BYTES);
  let sink = 0;
  Deno.bench({
    name: "pread (nonblocking) into a reused buffer [512KiB/iter]",
    group,
    baseline: true,
    fn: async () => {
      await preadFull(plainFd, reused, offset(randSlots[0]!));
    },
  });
  Deno.bench({
    name: "pread (nonblocking) into a fresh buffer [512KiB/iter]",
    group,
    fn: async () => {
      await preadFull(plainFd, new Uint8Array(BLOCK_BYTES), offset(randSlots[0]!));
    },
  });
  Deno.bench({
    name: "pread (nonblocking) into a fresh buffer + CRC-32 [512KiB/iter]",
    group,
    fn: async () => {
      const block = new Uint8Array(BLOCK_BYTES);
      await preadFull(plainFd, block, offset(randSlots[0]!));
      sink ^= crc32(block);
    },
  });
  Deno.bench({
    name: "CRC-32 (IEEE) [512KiB/iter]",
    group: "checksum of one 512KiB block",
    baseline: true,
    fn: () => {
      sink ^= crc32(payload);
    },
  });
  Deno.bench({
    name: "CRC-32C [512KiB/iter]",
    group: "checksum of one 512KiB block",
    fn: () => {
      sink ^= crc32c(payload);
    },
  });
  globalThis.addEventListener("unload", () => void sink);
}
