/**
 * Measurements behind docs/adr/0003-embedded-metadata-store.md. Not a test: run it by hand.
 *
 *   deno run -A tests/metadata/kv_bench.ts [--ops N] [--etcd host:port]
 *
 * Prints, for a file on the data disk: (1) node:sqlite on the main thread (WAL,
 * synchronous=FULL): throughput and how long each write blocks the event loop, and the stall
 * when another process holds the write lock; (2) the embedded KvStore (SQLite in a worker):
 * throughput of put, get, CAS txn and concurrent puts, and the event loop's worst lateness
 * meanwhile; (3) the etcd driver for comparison when an etcd is given or installed.
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { parseArgs } from "node:util";
import { atomicModify, type KvStore, openEmbeddedKv, openEtcdKv } from "../../src/metadata/mod.ts";
import { startEtcd } from "../support/etcd.ts";
import { Child } from "./child_process.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: { ops: { type: "string", default: "2000" }, etcd: { type: "string" } },
});
const ops = Number(values.ops);
const encoder = new TextEncoder();

function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0;
}

/** Samples the event loop's lateness against a 1 ms timer; returns p99 and max when stopped. */
function lateness(): () => { p99: number; max: number } {
  const samples: number[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    samples.push(Math.max(0, now - last - 1));
    last = now;
  }, 1);
  return () => {
    clearInterval(timer);
    return { p99: percentile(samples, 0.99), max: Math.max(0, ...samples) };
  };
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n.toFixed(2);
}

async function mainThreadSqlite(dir: string): Promise<void> {
  const path = `${dir}/main.sqlite`;
  const db = new DatabaseSync(path);
  db.exec("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000");
  db.exec("CREATE TABLE kv (key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID");
  const put = db.prepare("INSERT OR REPLACE INTO kv VALUES (?, ?)");
  const blocked: number[] = [];
  const started = performance.now();
  for (let i = 0; i < ops; i++) {
    const t = performance.now();
    db.exec("BEGIN IMMEDIATE");
    put.run(encoder.encode(`k/${i % 100}`), new Uint8Array(100));
    db.exec("COMMIT");
    blocked.push(performance.now() - t);
  }
  const seconds = (performance.now() - started) / 1000;
  console.log(
    `main-thread sqlite: ${fmt(ops / seconds)} puts/s; each put blocks the event loop ` +
      `p50 ${fmt(percentile(blocked, 0.5))} ms, p99 ${fmt(percentile(blocked, 0.99))} ms, ` +
      `max ${fmt(Math.max(...blocked))} ms`,
  );
  db.close();
  // Another process holds the write lock for 300 ms (the store's child script, raw SQLite).
  const kvPath = `${dir}/locked.sqlite`;
  await (await openEmbeddedKv({ path: kvPath })).close();
  await using locker = new Child(["lock", kvPath, "300"]);
  await locker.waitLine((l) => l === "locked");
  const raw = new DatabaseSync(kvPath);
  raw.exec("PRAGMA busy_timeout = 5000");
  const t = performance.now();
  raw.exec("BEGIN IMMEDIATE; COMMIT");
  console.log(
    `main-thread sqlite: a write behind another process's 300 ms lock blocked the event loop ` +
      `${fmt(performance.now() - t)} ms`,
  );
  raw.close();
}

async function measure(kv: KvStore, name: string): Promise<void> {
  const stopLate = lateness();
  const run = async (what: string, count: number, fn: (i: number) => Promise<unknown>) => {
    const started = performance.now();
    for (let i = 0; i < count; i++) await fn(i);
    const perSecond = count / ((performance.now() - started) / 1000);
    console.log(`${name}: ${what} ${fmt(perSecond)}/s`);
  };
  const value = new Uint8Array(100);
  await run("serial put", ops, (i) => kv.put(`bench/k/${i % 100}`, value));
  await run("serial get", ops, (i) => kv.get(`bench/k/${i % 100}`));
  await run(
    "serial CAS increment",
    Math.floor(ops / 2),
    () => atomicModify(kv, "bench/counter", (c) => encoder.encode(String(Number(c?.version ?? 0)))),
  );
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 16 }, async (_, task) => {
      for (let i = 0; i < ops / 16; i++) await kv.put(`bench/c/${task}/${i % 10}`, value);
    }),
  );
  console.log(
    `${name}: 16 concurrent writers ${fmt(ops / ((performance.now() - started) / 1000))} puts/s`,
  );
  const late = stopLate();
  console.log(
    `${name}: event-loop lateness during all of the above p99 ${fmt(late.p99)} ms, ` +
      `max ${fmt(late.max)} ms`,
  );
  await kv.deletePrefix("bench/");
}

async function main(): Promise<void> {
  const dir = await Deno.makeTempDir({ dir: Deno.cwd(), prefix: ".kv-bench-" });
  try {
    const idle = lateness();
    await new Promise((r) => setTimeout(r, 2_000));
    const base = idle();
    console.log(`idle event-loop lateness p99 ${fmt(base.p99)} ms, max ${fmt(base.max)} ms`);
    await mainThreadSqlite(dir);
    const embedded = await openEmbeddedKv({ path: `${dir}/embedded.sqlite` });
    await measure(embedded, "embedded store (worker)");
    await embedded.close();
    await using etcd = values.etcd ? null : await startEtcd({ workDir: dir });
    const endpoint = values.etcd ?? etcd?.endpoint;
    if (endpoint) {
      const kv = await openEtcdKv({ endpoints: [endpoint] });
      await measure(kv, "etcd driver");
      await kv.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

await main();
