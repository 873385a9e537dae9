/**
 * The in-memory KvStore on its own: etcd's semantics that the metadata service relies on. (The
 * shared kv_contract.ts runs against it too, beside the real drivers.)
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, ManualClock } from "../core/mod.ts";
import type { WatchEvent } from "./kv.ts";
import { compareKeys, MemoryKvStore } from "./kv_memory.ts";

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (value: Uint8Array) => new TextDecoder().decode(value);
const tick = () => new Promise((r) => setTimeout(r, 0));

Deno.test("memory kv: versions count puts, revisions grow per write, delete resets", async () => {
  const kv = new MemoryKvStore();
  await kv.put("a", bytes("1"));
  await kv.put("a", bytes("2"));
  const a = (await kv.get("a"))!;
  assert.deepEqual([a.version, a.createRevision, a.modRevision], [2, 2, 3]);
  assert.equal(await kv.delete("a"), true);
  assert.equal(await kv.delete("a"), false);
  assert.equal(kv.revision, 4);
  await kv.put("a", bytes("3"));
  const again = (await kv.get("a"))!;
  assert.deepEqual([again.version, again.createRevision], [1, 5]);
  await kv.close();
});

Deno.test("memory kv: ranges are prefix-exact and sorted by UTF-8 bytes", async () => {
  const kv = new MemoryKvStore();
  for (const key of ["p/b", "p/a", "p/\u{1F600}", "p/\uFFFD", "q/a", "p"]) {
    await kv.put(key, bytes(key));
  }
  const keys = (await kv.range("p/")).map((e) => e.key);
  assert.deepEqual(keys, ["p/a", "p/b", "p/\uFFFD", "p/\u{1F600}"]);
  assert.equal(compareKeys("\uFFFD", "\u{1F600}"), -1);
  assert.equal(await kv.deletePrefix("p/"), 4);
  assert.ok(await kv.get("p"));
  await kv.close();
});

Deno.test("memory kv: txn compares atomically; value compare on an absent key fails", async () => {
  const kv = new MemoryKvStore();
  await kv.put("k", bytes("v"));
  const ok = await kv.txn({
    compare: [{ key: "k", target: "value", op: "==", value: bytes("v") }],
    success: [{ type: "put", key: "k", value: bytes("w") }, { type: "get", key: "k" }],
  });
  assert.equal(ok.succeeded, true);
  const got = ok.results[1];
  assert.ok(got?.type === "get" && text(got.entries[0]!.value) === "w");
  const absentNe = await kv.txn({
    compare: [{ key: "nope", target: "value", op: "!=", value: bytes("x") }],
    success: [{ type: "put", key: "x", value: bytes("1") }],
    failure: [{ type: "get", key: "nope" }],
  });
  assert.equal(absentNe.succeeded, false);
  assert.equal(await kv.get("x"), null);
  await kv.close();
});

Deno.test("memory kv: a put with an unknown lease applies nothing", async () => {
  const kv = new MemoryKvStore();
  await assert.rejects(
    kv.txn({
      compare: [],
      success: [
        { type: "put", key: "a", value: bytes("1") },
        { type: "put", key: "b", value: bytes("2"), lease: 99n },
      ],
    }),
    (e: unknown) => isTorusError(e, ErrorCode.NotExist),
  );
  assert.equal(await kv.get("a"), null);
  assert.equal(kv.revision, 1);
  await kv.close();
});

Deno.test("memory kv: values are copied in and out", async () => {
  const kv = new MemoryKvStore();
  const value = bytes("abc");
  await kv.put("k", value);
  value[0] = 0;
  const read = (await kv.get("k"))!;
  read.value[1] = 0;
  assert.equal(text((await kv.get("k"))!.value), "abc");
  await kv.close();
});

Deno.test("memory kv: leases expire by the clock, delete their keys and tell watchers", async () => {
  const clock = new ManualClock(1_000);
  const kv = new MemoryKvStore({ clock });
  const events: WatchEvent[] = [];
  const watch = await kv.watchPrefix("l/", (batch) => events.push(...batch));
  const lease = await kv.grantLease(500);
  await kv.put("l/a", bytes("1"), { lease });
  await clock.advance(400);
  await kv.keepAliveLease(lease);
  await clock.advance(400);
  assert.ok(await kv.get("l/a"), "kept alive");
  await clock.advance(200);
  await tick();
  assert.deepEqual(events.map((e) => [e.type, e.key]), [["put", "l/a"], ["delete", "l/a"]]);
  assert.equal(await kv.get("l/a"), null);
  await assert.rejects(kv.keepAliveLease(lease), (e: unknown) => isTorusError(e, "not_exist"));
  await kv.revokeLease(lease); // unknown lease: not an error
  await watch.close();
  await kv.close();
});

Deno.test("memory kv: a put without a lease detaches the key from its lease", async () => {
  const kv = new MemoryKvStore();
  const lease = await kv.grantLease(60_000);
  await kv.put("k", bytes("1"), { lease });
  assert.equal((await kv.get("k"))!.lease, lease);
  await kv.put("k", bytes("2"));
  await kv.revokeLease(lease);
  assert.equal(text((await kv.get("k"))!.value), "2");
  await kv.close();
});

Deno.test("memory kv: watches replay from a revision in order, one batch per revision", async () => {
  const kv = new MemoryKvStore();
  await kv.put("w/a", bytes("1"));
  await kv.txn({
    compare: [],
    success: [
      { type: "put", key: "w/b", value: bytes("2") },
      { type: "put", key: "x/c", value: bytes("3") },
    ],
  });
  await kv.delete("w/a");
  const batches: string[][] = [];
  const watch = await kv.watchPrefix("w/", (batch) => {
    batches.push(batch.map((e) => `${e.type}:${e.key}@${e.modRevision}`));
  }, { fromRevision: 3 });
  await kv.put("w/d", bytes("4"));
  await tick();
  assert.deepEqual(batches, [["put:w/b@3"], ["delete:w/a@4"], ["put:w/d@5"]]);
  await watch.close();
  await kv.put("w/e", bytes("5"));
  await tick();
  assert.equal(batches.length, 3);
  await kv.close();
});

Deno.test("memory kv: a branch may not put a key twice or put and delete it", async () => {
  const kv = new MemoryKvStore();
  const put = { type: "put", key: "p/k", value: bytes("1") } as const;
  for (
    const other of [put, { type: "delete", key: "p/k" }, { type: "deletePrefix", prefix: "p/" }]
  ) {
    await assert.rejects(
      kv.txn({ compare: [], success: [put, other as typeof put] }),
      (e: unknown) => isTorusError(e, ErrorCode.Invalid),
    );
  }
  assert.equal(kv.revision, 1);
  await kv.close();
});

Deno.test("memory kv: closing ends watches with closed; later calls fail with closed", async () => {
  const kv = new MemoryKvStore();
  const errors: Error[] = [];
  await kv.watchPrefix("", () => {}, { onError: (e) => errors.push(e) });
  await kv.close();
  assert.equal(errors.length, 1);
  assert.ok(isTorusError(errors[0], ErrorCode.Closed));
  await kv.close();
  await assert.rejects(kv.get("k"), (e: unknown) => isTorusError(e, ErrorCode.Closed));
  await assert.rejects(kv.grantLease(1000), (e: unknown) => isTorusError(e, ErrorCode.Closed));
});
