/**
 * A separate torus process for the embedded store's multi-process tests. It prints one line per
 * step on stdout, so the parent can wait for a state and then kill it.
 *
 * Usage: deno run -A embedded_child.ts <mode> <db path> [arguments]
 * - increment KEY COUNT: COUNT compare-and-swap increments of KEY, then `done`.
 * - leases COUNT: grants COUNT leases and prints their ids on one line.
 * - hold KEY TTL_MS: puts KEY under a lease it keeps alive, prints `ready`, runs until killed.
 * - watch PREFIX: prints `watching`, then each event as JSON, until killed.
 * - write PREFIX: puts PREFIX000001, PREFIX000002, ... and prints `ack N` after each put.
 * - lock MS: holds SQLite's write lock for MS ms (raw node:sqlite, no torus code), prints
 *   `locked` once it holds it and `released` after.
 *
 * With TORUS_TEST_WALL_STEP_MS=N the process's wall clock (Date.now) runs N ms off the machine's,
 * as if someone had stepped the clock before it started.
 * @module
 */

import { DatabaseSync } from "node:sqlite";
import { atomicModify, openEmbeddedKv } from "../../src/metadata/mod.ts";

const wallStepMs = Number(Deno.env.get("TORUS_TEST_WALL_STEP_MS") ?? "0");
if (wallStepMs !== 0) {
  const machineNow = Date.now;
  Date.now = () => machineNow() + wallStepMs;
}

const [mode, path, ...args] = Deno.args;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function say(line: string): void {
  Deno.stdout.writeSync(encoder.encode(line + "\n"));
}

if (mode === "lock") {
  const db = new DatabaseSync(path!);
  db.exec("PRAGMA busy_timeout = 5000; BEGIN IMMEDIATE");
  db.exec("UPDATE meta SET value = value WHERE name = 'revision'");
  say("locked");
  await new Promise((r) => setTimeout(r, Number(args[0])));
  db.exec("COMMIT");
  db.close();
  say("released");
  Deno.exit(0);
}

const kv = await openEmbeddedKv({ path: path! });

async function increment(key: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await atomicModify(kv, key, (current) => {
      const value = current ? Number(decoder.decode(current.value)) : 0;
      return encoder.encode(String(value + 1));
    });
  }
  say("done");
}

async function leases(count: number): Promise<void> {
  const ids: string[] = [];
  for (let i = 0; i < count; i++) ids.push(String(await kv.grantLease(60_000)));
  say(ids.join(" "));
}

async function hold(key: string, ttlMs: number): Promise<never> {
  const lease = await kv.grantLease(ttlMs);
  await kv.put(key, encoder.encode(`held by ${Deno.pid}`), { lease });
  say("ready");
  for (;;) {
    await new Promise((r) => setTimeout(r, ttlMs / 4));
    await kv.keepAliveLease(lease);
  }
}

async function watch(prefix: string): Promise<never> {
  await kv.watchPrefix(prefix, (events) => {
    for (const e of events) {
      say(JSON.stringify({ type: e.type, key: e.key, modRevision: e.modRevision }));
    }
  });
  say("watching");
  // The store's timers keep the process alive; this only waits to be killed.
  await new Promise<never>(() => setInterval(() => {}, 60_000));
  throw new Error("unreachable");
}

async function write(prefix: string): Promise<never> {
  for (let i = 1;; i++) {
    await kv.put(`${prefix}${String(i).padStart(6, "0")}`, encoder.encode(`value ${i}`));
    say(`ack ${i}`);
  }
}

if (mode === "increment") await increment(args[0]!, Number(args[1]));
else if (mode === "leases") await leases(Number(args[0]));
else if (mode === "hold") await hold(args[0]!, Number(args[1]));
else if (mode === "watch") await watch(args[0]!);
else if (mode === "write") await write(args[0]!);
else throw new Error(`unknown mode ${mode}`);
await kv.close();
