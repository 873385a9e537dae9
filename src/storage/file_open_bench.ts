/**
 * How long a FileBlockStore takes to open and how much memory its index holds, for stores of 1M
 * and 8M slots (docs/benchmarks.md): full ones, and one of 8M slots with only 1000 used (opening
 * reads the entries below the high-water mark, so it should cost about as little as a tiny
 * store). Also how long `blockRefs` keeps the event loop from running other work.
 *
 * The stores are written directly (valid entries, sparse data file) so that setting them up takes
 * seconds, not the hours of putting millions of blocks. Each case is first measured in a fresh
 * process (`--measure`), so its memory is the index's alone: RSS and V8 heap after open, open time,
 * and the longest gap between two timer ticks while every ref is walked. Those figures are in the
 * bench names (and printed to stderr); the timed bench then opens and closes the store in this
 * process.
 *
 * Run: deno task bench (or deno bench -A src/storage/file_open_bench.ts). Needs about 2 GiB of
 * memory and 600 MiB of disk in $TMPDIR (the data files are sparse).
 * @module
 */

import { BlockRef, crc32 } from "../core/mod.ts";
import { FileBlockStore } from "./file.ts";
import {
  encodeEntry,
  encodeHeader,
  encodeHighWaterMark,
  ENTRY_BYTES,
  entryOffsetBytes,
  FileMagic,
  HWM_RECORD_OFFSETS,
  slotOffsetBytes,
} from "./file_format.ts";

const BLOCK_BYTES = 4096;
const ENTRIES_PER_WRITE = 65_536;

interface Case {
  name: string;
  slots: number;
  used: number;
}

const cases: Case[] = [
  { name: "1M slots, all used", slots: 1_000_000, used: 1_000_000 },
  { name: "8M slots, all used", slots: 8_000_000, used: 8_000_000 },
  { name: "8M slots, 1000 used", slots: 8_000_000, used: 1000 },
];

/** Writes a store of `slots` slots whose first `used` slots hold blocks of zeros. */
async function writeStore(dir: string, store: Case): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const header = {
    blockSizeBytes: BLOCK_BYTES,
    slotCount: store.slots,
    storeId: new Uint8Array(16).fill(7),
  };
  const data = await Deno.open(`${dir}/data-current.blk`, { create: true, write: true });
  await data.write(encodeHeader({ ...header, magic: FileMagic.Data }));
  await data.truncate(slotOffsetBytes(store.slots, BLOCK_BYTES));
  data.close();
  using map = await Deno.open(`${dir}/map-current.blk`, { create: true, write: true });
  const page = encodeHeader({ ...header, magic: FileMagic.Map });
  page.set(encodeHighWaterMark({ sequence: 1, slots: store.used }), HWM_RECORD_OFFSETS[1]!);
  await map.write(page);
  const crc = crc32(new Uint8Array(BLOCK_BYTES));
  const chunk = new Uint8Array(ENTRIES_PER_WRITE * ENTRY_BYTES);
  for (let first = 0; first < store.used; first += ENTRIES_PER_WRITE) {
    const count = Math.min(ENTRIES_PER_WRITE, store.used - first);
    for (let i = 0; i < count; i++) {
      const slot = first + i;
      const ref = new BlockRef({ volume: 2, inode: 7n, index: BigInt(slot) });
      encodeEntry({ ref, generation: slot + 1, slot, crc32: crc }, chunk, i * ENTRY_BYTES);
    }
    await map.seek(entryOffsetBytes(first), Deno.SeekMode.Start);
    await writeAll(map, chunk.subarray(0, count * ENTRY_BYTES));
  }
  await map.truncate(entryOffsetBytes(store.slots));
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
}

/** What one measuring process reports. */
interface Measured {
  openMs: number;
  /** Longest time the event loop could not run a timer while the store opened. */
  openStallMs: number;
  rssMiB: number;
  heapMiB: number;
  refs: number;
  walkMs: number;
  /** Longest time the event loop could not run a timer while every ref was walked. */
  walkStallMs: number;
}

/** Measures the longest gap between ticks of a 1 ms timer while `work` runs. */
async function withStallMeter<T>(work: () => Promise<T>): Promise<[T, number]> {
  let last = performance.now();
  let longestMs = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    longestMs = Math.max(longestMs, now - last);
    last = now;
  }, 1);
  try {
    const result = await work();
    longestMs = Math.max(longestMs, performance.now() - last);
    return [result, longestMs];
  } finally {
    clearInterval(ticker);
  }
}

/** Opens the store in `dir` and measures it (runs in its own process). */
async function measure(dir: string, slots: number): Promise<Measured> {
  const started = performance.now();
  const [store, openStallMs] = await withStallMeter(() =>
    FileBlockStore.open({ dir, blockSizeBytes: BLOCK_BYTES, sizeBytes: slots * BLOCK_BYTES })
  );
  const openMs = performance.now() - started;
  const memory = Deno.memoryUsage();
  const walkStarted = performance.now();
  const [refs, walkStallMs] = await withStallMeter(async () => {
    let count = 0;
    for await (const _ of store.blockRefs()) count++;
    return count;
  });
  const walkMs = performance.now() - walkStarted;
  await store.close();
  return {
    openMs: Math.round(openMs),
    openStallMs: Math.round(openStallMs),
    rssMiB: Math.round(memory.rss / 2 ** 20),
    heapMiB: Math.round(memory.heapUsed / 2 ** 20),
    refs,
    walkMs: Math.round(walkMs),
    walkStallMs: Math.round(walkStallMs),
  };
}

async function measureInChild(dir: string, slots: number): Promise<Measured> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, "--measure", dir, String(slots)],
    stderr: "inherit",
  }).output();
  if (!output.success) throw new Error(`measuring ${dir} failed`);
  return JSON.parse(new TextDecoder().decode(output.stdout)) as Measured;
}

if (import.meta.main && Deno.args[0] === "--measure") {
  console.log(JSON.stringify(await measure(Deno.args[1]!, Number(Deno.args[2]))));
} else if (import.meta.main && Deno.args[0] === "--write") {
  // Writes a store for profiling by hand: --write DIR SLOTS USED.
  const [dir, slots, used] = Deno.args.slice(1);
  await writeStore(dir!, { name: "by hand", slots: Number(slots), used: Number(used) });
} else {
  const root = await Deno.makeTempDir({ prefix: "torus-open-bench-" });
  globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
  for (const [i, store] of cases.entries()) {
    const dir = `${root}/${i}`;
    await writeStore(dir, store);
    const m = await measureInChild(dir, store.slots);
    console.error(`open ${store.name}: ${JSON.stringify(m)}`);
    Deno.bench({
      name: `open ${store.name} (RSS ${m.rssMiB} MiB, heap ${m.heapMiB} MiB, ` +
        `stall ${m.openStallMs} ms; blockRefs ${m.walkMs} ms, stall ${m.walkStallMs} ms)`,
      group: "open a file store",
      n: 3,
      warmup: 0,
      fn: async () => {
        const opened = await FileBlockStore.open({
          dir,
          blockSizeBytes: BLOCK_BYTES,
          sizeBytes: store.slots * BLOCK_BYTES,
        });
        await opened.close();
      },
    });
  }
}
