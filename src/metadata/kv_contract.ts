/**
 * The KvStore contract suite: `kvStoreContract(name, open)` registers one Deno test per rule of
 * kv.ts, run against a real driver. Each test works under its own random key prefix, so drivers
 * sharing one server (the test run's etcd) never see each other's keys, and tests never depend on
 * absolute revisions. Tests run with the op and resource sanitizers on: a driver must leave no
 * timer, socket or worker behind after `close`.
 * @module
 */

import assert from "node:assert/strict";
import { isTorusError } from "../core/mod.ts";
import type { KvEntry, KvStore, LeaseId, Watch, WatchEvent } from "./kv.ts";
import { atomicModify, getWithRevision } from "./kv_ops.ts";

/** A store under test and how to dispose of it. */
export interface KvFixture {
  readonly kv: KvStore;
  cleanup(): Promise<void>;
  /**
   * Discards the history before the current revision: etcd's compaction, the embedded store's
   * change-log trim. Needed by the history tests (see {@link KvContractOptions.openIsolated}).
   */
  compact?(): Promise<void>;
  /** Restarts the server behind `kv` (etcd: SIGKILL, then start again); absent when none. */
  restart?(): Promise<void>;
}

/** Knobs for drivers whose timing differs. */
export interface KvContractOptions {
  /** TTL used by lease tests (etcd raises short TTLs to about 2 s). Default 1000. */
  readonly leaseTtlMs?: number;
  /** How long past the TTL an expired lease's keys may linger. Default 2000. */
  readonly expirySlackMs?: number;
  /** When set, every test is registered as ignored and the reason is put in its name. */
  readonly ignoreReason?: string;
  /**
   * A store on a server of its own, with `compact` (and `restart` when there is a server), for
   * the tests that compact history or restart: they would disturb other tests sharing a server.
   * Default: `open`.
   */
  readonly openIsolated?: () => Promise<KvFixture>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Bytes of a string, for short test values. */
function b(text: string): Uint8Array {
  return encoder.encode(text);
}

function text(entry: KvEntry | null | undefined): string | null {
  return entry ? decoder.decode(entry.value) : null;
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTorusError(error), `expected TorusError ${code}, got ${String(error)}`);
    assert.equal(error.code, code, `expected ${code}, got ${error.code}: ${error.message}`);
    return true;
  });
}

async function waitFor(what: string, condition: () => Promise<boolean> | boolean, ms: number) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Collects watch events and errors for assertions. */
class Recorder {
  events: WatchEvent[] = [];
  errors: Error[] = [];
  onEvents = (events: readonly WatchEvent[]) => this.events.push(...events);
  onError = (error: Error) => this.errors.push(error);
  summary(): string[] {
    return this.events.map((e) => `${e.type} ${e.key} ${decoder.decode(e.value)}`);
  }
  async waitCount(count: number, ms = 5_000): Promise<void> {
    await waitFor(`${count} watch events (have ${this.events.length})`, () => {
      // A watch that ended will never deliver: say why at once.
      if (this.errors.length > 0) throw this.errors[0];
      return this.events.length >= count;
    }, ms);
  }
}

type Settings = Required<Omit<KvContractOptions, "openIsolated">>;
type Body = (kv: KvStore, prefix: string, options: Settings) => Promise<void>;
/** A test that needs the fixture's `compact` and `restart` too. */
type FixtureBody = (fixture: KvFixture, prefix: string, options: Settings) => Promise<void>;

/** Registers the contract's tests for the store `open` creates. */
export function kvStoreContract(
  name: string,
  open: () => Promise<KvFixture>,
  options: KvContractOptions = {},
): void {
  const settings: Settings = {
    leaseTtlMs: options.leaseTtlMs ?? 1_000,
    expirySlackMs: options.expirySlackMs ?? 2_000,
    ignoreReason: options.ignoreReason ?? "",
  };
  const register = (title: string, body: FixtureBody, opener = open) => {
    const ignored = settings.ignoreReason !== "";
    Deno.test({
      name: `${name}: ${title}${ignored ? ` (skipped: ${settings.ignoreReason})` : ""}`,
      ignore: ignored,
      sanitizeOps: true,
      sanitizeResources: true,
      fn: async () => {
        const fixture = await opener();
        const prefix = `contract/${crypto.randomUUID()}/`;
        try {
          await body(fixture, prefix, settings);
        } finally {
          await fixture.kv.deletePrefix(prefix).catch(() => {});
          await fixture.kv.close();
          await fixture.cleanup();
        }
      },
    });
  };
  const simple = (body: Body): FixtureBody => (fixture, prefix, o) => body(fixture.kv, prefix, o);
  for (const tests of [basicTests, txnTests, leaseTests, watchTests, lifecycleTests]) {
    for (const [title, body] of Object.entries(tests)) register(title, simple(body));
  }
  for (const [title, body] of Object.entries(historyTests)) {
    register(title, body, options.openIsolated ?? open);
  }
}

const basicTests: Record<string, Body> = {
  "get of an absent key is null; put then get returns the value at version 1": async (kv, p) => {
    assert.equal(await kv.get(`${p}a`), null);
    await kv.put(`${p}a`, b("one"));
    const entry = await kv.get(`${p}a`);
    assert.ok(entry);
    assert.equal(entry.key, `${p}a`);
    assert.equal(text(entry), "one");
    assert.equal(entry.version, 1);
    assert.equal(entry.createRevision, entry.modRevision);
    assert.ok(entry.modRevision > 1);
    assert.equal(entry.lease, 0n);
  },

  "values are copied in and out: mutating a buffer never changes the store": async (kv, p) => {
    const value = b("abc");
    await kv.put(`${p}k`, value);
    value[0] = 0x7a;
    const first = await kv.get(`${p}k`);
    assert.equal(text(first), "abc");
    first!.value[1] = 0x7a;
    assert.equal(text(await kv.get(`${p}k`)), "abc");
    const [listed] = await kv.range(p);
    listed!.value[2] = 0x7a;
    assert.equal(text(await kv.get(`${p}k`)), "abc");
  },

  "empty values and binary values round-trip": async (kv, p) => {
    await kv.put(`${p}empty`, new Uint8Array());
    const bytes = new Uint8Array(256).map((_, i) => i);
    await kv.put(`${p}binary`, bytes);
    assert.deepEqual((await kv.get(`${p}empty`))?.value, new Uint8Array());
    assert.deepEqual((await kv.get(`${p}binary`))?.value, bytes);
  },

  "range returns only keys under the prefix, sorted bytewise (v/2/ never matches v/20/)": async (
    kv,
    p,
  ) => {
    const keys = ["v/2/b", "v/2/a", "v/20/x", "v/2", "v/2/é", "v/2/z/deep", "v/3/a", "v/1/a"];
    for (const key of keys) await kv.put(`${p}${key}`, b(key));
    const under2 = await kv.range(`${p}v/2/`);
    assert.deepEqual(under2.map((e) => e.key.slice(p.length)), [
      "v/2/a",
      "v/2/b",
      "v/2/z/deep",
      "v/2/é",
    ]);
    assert.deepEqual(under2.map(text), ["v/2/a", "v/2/b", "v/2/z/deep", "v/2/é"]);
    assert.deepEqual((await kv.range(`${p}v/20/`)).map((e) => e.key.slice(p.length)), ["v/20/x"]);
    assert.deepEqual(await kv.range(`${p}nothing/`), []);
    assert.equal((await kv.range(p)).length, keys.length);
  },

  "range lists many keys completely and in order": async (kv, p) => {
    const count = 300;
    await Promise.all(
      Array.from({ length: count }, (_, i) => kv.put(`${p}n/${String(i).padStart(4, "0")}`, b(""))),
    );
    const listed = await kv.range(`${p}n/`);
    assert.equal(listed.length, count);
    listed.forEach((e, i) => assert.equal(e.key, `${p}n/${String(i).padStart(4, "0")}`));
  },

  "delete reports whether the key existed and removes only that key": async (kv, p) => {
    await kv.put(`${p}a`, b("1"));
    await kv.put(`${p}ab`, b("2"));
    assert.equal(await kv.delete(`${p}a`), true);
    assert.equal(await kv.delete(`${p}a`), false);
    assert.equal(await kv.get(`${p}a`), null);
    assert.equal(text(await kv.get(`${p}ab`)), "2");
  },

  [
    "deletePrefix removes every key under the prefix and no other (v/2/ keeps v/20/); a prefix " +
    'without a trailing "/" is refused'
  ]: async (kv, p) => {
    for (const key of ["v/2/a", "v/2/b/c", "v/20/a", "v/2", "w/2/a"]) {
      await kv.put(`${p}${key}`, b(key));
    }
    await rejectsWith(kv.deletePrefix(`${p}v/2`), "invalid");
    await rejectsWith(kv.deletePrefix(""), "invalid");
    await rejectsWith(
      kv.txn({ compare: [], success: [{ type: "deletePrefix", prefix: `${p}v` }] }),
      "invalid",
    );
    assert.equal((await kv.range(p)).length, 5, "a refused delete deletes nothing");
    assert.equal(await kv.deletePrefix(`${p}v/2/`), 2);
    assert.equal(await kv.deletePrefix(`${p}v/2/`), 0);
    assert.deepEqual((await kv.range(p)).map((e) => e.key.slice(p.length)), [
      "v/2",
      "v/20/a",
      "w/2/a",
    ]);
  },

  "versions count puts since creation; delete and recreate starts over": async (kv, p) => {
    await kv.put(`${p}k`, b("1"));
    const first = (await kv.get(`${p}k`))!;
    await kv.put(`${p}k`, b("2"));
    const second = (await kv.get(`${p}k`))!;
    assert.equal(second.version, 2);
    assert.equal(second.createRevision, first.createRevision);
    assert.ok(second.modRevision > first.modRevision);
    await kv.delete(`${p}k`);
    await kv.put(`${p}k`, b("3"));
    const third = (await kv.get(`${p}k`))!;
    assert.equal(third.version, 1);
    assert.ok(third.createRevision > second.modRevision);
    assert.equal(third.createRevision, third.modRevision);
  },

  "revisions only grow, and a read-only txn reports the current one": async (kv, p) => {
    const before = await getWithRevision(kv, `${p}k`);
    assert.equal(before.entry, null);
    await kv.put(`${p}k`, b("x"));
    const after = await getWithRevision(kv, `${p}k`);
    assert.ok(after.revision > before.revision);
    assert.ok(after.revision >= after.entry!.modRevision);
    assert.ok(after.entry!.modRevision > before.revision);
  },

  "bad keys, values and leases are refused with invalid before anything is written": async (
    kv,
    p,
  ) => {
    await rejectsWith(kv.put("", b("x")), "invalid");
    await rejectsWith(kv.get(""), "invalid");
    await rejectsWith(kv.put(`${p}\ud800`, b("x")), "invalid");
    await rejectsWith(kv.put(`${p}${"k".repeat(5000)}`, b("x")), "invalid");
    await rejectsWith(kv.put(`${p}big`, new Uint8Array(2 * 1024 * 1024)), "invalid");
    await rejectsWith(kv.put(`${p}l`, b("x"), { lease: -1n }), "invalid");
    await rejectsWith(kv.grantLease(0), "invalid");
    assert.deepEqual(await kv.range(p), []);
  },

  "a value of the largest allowed size round-trips": async (kv, p) => {
    const value = new Uint8Array(1024 * 1024).fill(7);
    await kv.put(`${p}large`, value);
    assert.deepEqual((await kv.get(`${p}large`))?.value, value);
  },
};

const txnTests: Record<string, Body> = {
  "txn create-if-absent: version == 0 succeeds once, then the failure branch runs": async (
    kv,
    p,
  ) => {
    const create = () =>
      kv.txn({
        compare: [{ key: `${p}lock`, target: "version", op: "==", version: 0 }],
        success: [{ type: "put", key: `${p}lock`, value: b("me") }],
        failure: [{ type: "get", key: `${p}lock` }],
      });
    const first = await create();
    assert.equal(first.succeeded, true);
    assert.deepEqual(first.results, [{ type: "put" }]);
    const entry = (await kv.get(`${p}lock`))!;
    assert.equal(entry.modRevision, first.revision);
    const second = await create();
    assert.equal(second.succeeded, false);
    const read = second.results[0];
    assert.equal(read?.type, "get");
    assert.equal(read.type === "get" ? text(read.entries[0]) : null, "me");
  },

  "txn compares on version with ==, !=, < and >": async (kv, p) => {
    await kv.put(`${p}k`, b("1"));
    await kv.put(`${p}k`, b("2"));
    const check = async (op: "==" | "!=" | "<" | ">", version: number) =>
      (await kv.txn({ compare: [{ key: `${p}k`, target: "version", op, version }], success: [] }))
        .succeeded;
    assert.equal(await check("==", 2), true);
    assert.equal(await check("==", 1), false);
    assert.equal(await check("!=", 1), true);
    assert.equal(await check("<", 3), true);
    assert.equal(await check("<", 2), false);
    assert.equal(await check(">", 1), true);
    assert.equal(await check(">", 2), false);
    const absent = await kv.txn({
      compare: [{ key: `${p}absent`, target: "version", op: "<", version: 1 }],
      success: [],
    });
    assert.equal(absent.succeeded, true);
  },

  "txn compares on value; a value compare on an absent key is false for == and !=": async (
    kv,
    p,
  ) => {
    await kv.put(`${p}owner`, b("node-a"));
    const check = async (key: string, op: "==" | "!=", value: string) =>
      (await kv.txn({ compare: [{ key, target: "value", op, value: b(value) }], success: [] }))
        .succeeded;
    assert.equal(await check(`${p}owner`, "==", "node-a"), true);
    assert.equal(await check(`${p}owner`, "==", "node-b"), false);
    assert.equal(await check(`${p}owner`, "!=", "node-b"), true);
    assert.equal(await check(`${p}owner`, "!=", "node-a"), false);
    assert.equal(await check(`${p}absent`, "==", ""), false);
    assert.equal(await check(`${p}absent`, "!=", "x"), false);
  },

  "txn compares on modRevision; an absent key has modRevision 0": async (kv, p) => {
    await kv.put(`${p}k`, b("1"));
    const entry = (await kv.get(`${p}k`))!;
    const check = async (key: string, op: "==" | "!=" | "<" | ">", revision: number) =>
      (await kv.txn({ compare: [{ key, target: "modRevision", op, revision }], success: [] }))
        .succeeded;
    assert.equal(await check(`${p}k`, "==", entry.modRevision), true);
    assert.equal(await check(`${p}k`, "<", entry.modRevision + 1), true);
    assert.equal(await check(`${p}k`, ">", entry.modRevision), false);
    await kv.put(`${p}k`, b("2"));
    assert.equal(await check(`${p}k`, "==", entry.modRevision), false);
    assert.equal(await check(`${p}k`, "!=", entry.modRevision), true);
    assert.equal(await check(`${p}absent`, "==", 0), true);
  },

  "txn compares on createRevision: it stays across puts, changes on re-create, 0 when absent":
    async (kv, p) => {
      await kv.put(`${p}k`, b("1"));
      const created = (await kv.get(`${p}k`))!.createRevision;
      await kv.put(`${p}k`, b("2"));
      const check = async (key: string, op: "==" | "!=" | "<" | ">", revision: number) =>
        (await kv.txn({ compare: [{ key, target: "createRevision", op, revision }], success: [] }))
          .succeeded;
      assert.equal(await check(`${p}k`, "==", created), true);
      assert.equal(await check(`${p}k`, ">", created - 1), true);
      assert.equal(await check(`${p}k`, "<", created), false);
      await kv.delete(`${p}k`);
      assert.equal(await check(`${p}k`, "==", created), false);
      assert.equal(await check(`${p}k`, "==", 0), true);
      await kv.put(`${p}k`, b("3"));
      assert.equal(await check(`${p}k`, "==", created), false);
      assert.equal(await check(`${p}k`, ">", created), true);
      assert.equal(await check(`${p}absent`, "==", 0), true);
    },

  "txn is atomic: one failing compare applies nothing; success applies all at one revision": async (
    kv,
    p,
  ) => {
    await kv.put(`${p}a`, b("1"));
    const failed = await kv.txn({
      compare: [
        { key: `${p}a`, target: "version", op: "==", version: 1 },
        { key: `${p}b`, target: "version", op: "==", version: 1 },
      ],
      success: [
        { type: "put", key: `${p}x`, value: b("x") },
        { type: "delete", key: `${p}a` },
      ],
    });
    assert.equal(failed.succeeded, false);
    assert.deepEqual(failed.results, []);
    assert.deepEqual((await kv.range(p)).map((e) => e.key), [`${p}a`]);
    const applied = await kv.txn({
      compare: [{ key: `${p}a`, target: "version", op: "==", version: 1 }],
      success: [
        { type: "put", key: `${p}x`, value: b("x") },
        { type: "put", key: `${p}y`, value: b("y") },
        { type: "delete", key: `${p}a` },
      ],
    });
    assert.equal(applied.succeeded, true);
    const entries = await kv.range(p);
    assert.deepEqual(entries.map((e) => e.key), [`${p}x`, `${p}y`]);
    for (const e of entries) assert.equal(e.modRevision, applied.revision);
  },

  "txn results: get, range, delete and deletePrefix report per op, and reads see earlier writes":
    async (kv, p) => {
      await kv.put(`${p}d/1`, b("1"));
      await kv.put(`${p}d/2`, b("2"));
      await kv.put(`${p}one`, b("one"));
      const response = await kv.txn({
        compare: [],
        success: [
          { type: "get", key: `${p}one` },
          { type: "range", prefix: `${p}d/` },
          { type: "put", key: `${p}new`, value: b("fresh") },
          { type: "get", key: `${p}new` },
          { type: "delete", key: `${p}one` },
          { type: "delete", key: `${p}missing` },
          { type: "deletePrefix", prefix: `${p}d/` },
          { type: "range", prefix: `${p}d/` },
        ],
      });
      assert.equal(response.succeeded, true);
      const r = response.results;
      assert.equal(r.length, 8);
      assert.equal(r[0]?.type === "get" ? text(r[0].entries[0]) : "", "one");
      assert.deepEqual(r[1]?.type === "range" ? r[1].entries.map(text) : [], ["1", "2"]);
      assert.deepEqual(r[2], { type: "put" });
      assert.equal(r[3]?.type === "get" ? text(r[3].entries[0]) : "", "fresh");
      assert.equal(r[3]?.type === "get" ? r[3].entries[0]?.modRevision : 0, response.revision);
      assert.deepEqual(r[4], { type: "delete", deleted: 1 });
      assert.deepEqual(r[5], { type: "delete", deleted: 0 });
      assert.deepEqual(r[6], { type: "deletePrefix", deleted: 2 });
      assert.deepEqual(r[7], { type: "range", entries: [] });
    },

  "txn refuses a branch that puts one key twice or puts a key it deletes": async (kv, p) => {
    await rejectsWith(
      kv.txn({
        compare: [],
        success: [
          { type: "put", key: `${p}k`, value: b("1") },
          { type: "put", key: `${p}k`, value: b("2") },
        ],
      }),
      "invalid",
    );
    await rejectsWith(
      kv.txn({
        compare: [],
        success: [],
        failure: [
          { type: "deletePrefix", prefix: `${p}d/` },
          { type: "put", key: `${p}d/k`, value: b("1") },
        ],
      }),
      "invalid",
    );
    const ops = Array.from({ length: 129 }, (_, i) => ({
      type: "get" as const,
      key: `${p}${i}`,
    }));
    await rejectsWith(kv.txn({ compare: [], success: ops }), "invalid");
    assert.deepEqual(await kv.range(p), []);
  },

  "concurrent compare-and-swap increments from many tasks never lose an update": async (
    kv,
    p,
  ) => {
    const tasks = 8;
    const each = 12;
    const increment = () =>
      atomicModify(kv, `${p}counter`, (current) => b(String(Number(text(current) ?? "0") + 1)));
    await Promise.all(
      Array.from({ length: tasks }, async () => {
        for (let i = 0; i < each; i++) await increment();
      }),
    );
    const entry = (await kv.get(`${p}counter`))!;
    assert.equal(text(entry), String(tasks * each));
    assert.equal(entry.version, tasks * each);
  },
};

async function putWithLease(kv: KvStore, key: string, ttlMs: number): Promise<LeaseId> {
  const lease = await kv.grantLease(ttlMs);
  await kv.put(key, b("leased"), { lease });
  return lease;
}

const leaseTests: Record<string, Body> = {
  "a key put with a lease records it; revoke deletes the key; keepalive then fails": async (
    kv,
    p,
  ) => {
    const lease = await putWithLease(kv, `${p}k`, 30_000);
    await kv.put(`${p}other`, b("kept"));
    assert.equal((await kv.get(`${p}k`))?.lease, lease);
    await kv.keepAliveLease(lease);
    await kv.revokeLease(lease);
    assert.equal(await kv.get(`${p}k`), null);
    assert.equal(text(await kv.get(`${p}other`)), "kept");
    await rejectsWith(kv.keepAliveLease(lease), "not_exist");
    await kv.revokeLease(lease);
  },

  "put with an unknown lease is not_exist and writes nothing": async (kv, p) => {
    const lease = await kv.grantLease(30_000);
    await kv.revokeLease(lease);
    await rejectsWith(kv.put(`${p}k`, b("x"), { lease }), "not_exist");
    await rejectsWith(
      kv.txn({
        compare: [],
        success: [
          { type: "put", key: `${p}a`, value: b("a") },
          { type: "put", key: `${p}k`, value: b("x"), lease },
        ],
      }),
      "not_exist",
    );
    assert.deepEqual(await kv.range(p), []);
  },

  "a put without a lease detaches the key from its lease": async (kv, p) => {
    const lease = await putWithLease(kv, `${p}k`, 30_000);
    await kv.put(`${p}k`, b("free"));
    assert.equal((await kv.get(`${p}k`))?.lease, 0n);
    await kv.revokeLease(lease);
    assert.equal(text(await kv.get(`${p}k`)), "free");
  },

  "keys vanish after the TTL without keepalive; keepalive of the expired lease is not_exist":
    async (kv, p, o) => {
      const lease = await putWithLease(kv, `${p}k`, o.leaseTtlMs);
      const started = Date.now();
      await waitFor(
        "the leased key to expire",
        async () => (await kv.get(`${p}k`)) === null,
        o.leaseTtlMs + o.expirySlackMs,
      );
      // A lease is never cut short: the key lived at least (almost) its TTL.
      assert.ok(Date.now() - started >= o.leaseTtlMs - 100, "expired before its TTL");
      await rejectsWith(kv.keepAliveLease(lease), "not_exist");
    },

  "keepalive extends a lease past its TTL": async (kv, p, o) => {
    const lease = await putWithLease(kv, `${p}k`, o.leaseTtlMs);
    const until = Date.now() + o.leaseTtlMs * 2.5;
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, o.leaseTtlMs / 4));
      await kv.keepAliveLease(lease);
      assert.equal(text(await kv.get(`${p}k`)), "leased");
    }
    await kv.revokeLease(lease);
  },
};

async function watch(kv: KvStore, prefix: string, fromRevision?: number) {
  const recorder = new Recorder();
  const handle: Watch = await kv.watchPrefix(prefix, recorder.onEvents, {
    onError: recorder.onError,
    ...(fromRevision === undefined ? {} : { fromRevision }),
  });
  return { recorder, handle };
}

const watchTests: Record<string, Body> = {
  "a watch delivers puts and deletes under its prefix, in revision order": async (kv, p) => {
    const { recorder, handle } = await watch(kv, `${p}v/2/`);
    await kv.put(`${p}v/2/a`, b("1"));
    await kv.put(`${p}v/20/a`, b("other volume"));
    await kv.put(`${p}v/2/b`, b("2"));
    await kv.put(`${p}v/2/a`, b("3"));
    await kv.delete(`${p}v/2/b`);
    await kv.txn({
      compare: [],
      success: [
        { type: "put", key: `${p}v/2/c`, value: b("4") },
        { type: "delete", key: `${p}v/2/a` },
      ],
    });
    await recorder.waitCount(6);
    await new Promise((r) => setTimeout(r, 150));
    const k = (key: string) => `${p}v/2/${key}`;
    assert.deepEqual(recorder.summary(), [
      `put ${k("a")} 1`,
      `put ${k("b")} 2`,
      `put ${k("a")} 3`,
      `delete ${k("b")} `,
      `put ${k("c")} 4`,
      `delete ${k("a")} `,
    ]);
    const revisions = recorder.events.map((e) => e.modRevision);
    for (let i = 1; i < revisions.length; i++) assert.ok(revisions[i]! >= revisions[i - 1]!);
    assert.equal(revisions[4], revisions[5], "one transaction, one revision");
    assert.deepEqual(recorder.errors, []);
    await handle.close();
  },

  "a watch sees the deletes of lease expiry and of revoke": async (kv, p, o) => {
    const { recorder, handle } = await watch(kv, p);
    const revoked = await putWithLease(kv, `${p}revoked`, 30_000);
    await putWithLease(kv, `${p}expiring`, o.leaseTtlMs);
    await kv.revokeLease(revoked);
    await recorder.waitCount(4, o.leaseTtlMs + o.expirySlackMs + 1_000);
    assert.deepEqual(recorder.summary(), [
      `put ${p}revoked leased`,
      `put ${p}expiring leased`,
      `delete ${p}revoked `,
      `delete ${p}expiring `,
    ]);
    await handle.close();
  },

  "a watch from an earlier revision replays history, then follows live changes": async (
    kv,
    p,
  ) => {
    await kv.put(`${p}a`, b("1"));
    await kv.put(`${p}b`, b("2"));
    const from = (await kv.get(`${p}b`))!.modRevision;
    await kv.delete(`${p}a`);
    const { recorder, handle } = await watch(kv, p, from);
    await recorder.waitCount(2);
    await kv.put(`${p}c`, b("3"));
    await recorder.waitCount(3);
    assert.deepEqual(recorder.summary(), [`put ${p}b 2`, `delete ${p}a `, `put ${p}c 3`]);
    assert.equal(recorder.events[0]?.modRevision, from);
    await handle.close();
  },

  "read at a revision, then watch from the next one: nothing is missed in between": async (
    kv,
    p,
  ) => {
    await kv.put(`${p}ring`, b("v1"));
    const read = await getWithRevision(kv, `${p}ring`);
    await kv.put(`${p}ring`, b("v2"));
    const { recorder, handle } = await watch(kv, `${p}ring`, read.revision + 1);
    await recorder.waitCount(1);
    assert.deepEqual(recorder.summary(), [`put ${p}ring v2`]);
    await handle.close();
  },

  "closing a watch stops its events; other watches go on": async (kv, p) => {
    const first = await watch(kv, p);
    const second = await watch(kv, p);
    await kv.put(`${p}a`, b("1"));
    await first.recorder.waitCount(1);
    await first.handle.close();
    await first.handle.close();
    await kv.put(`${p}b`, b("2"));
    await second.recorder.waitCount(2);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(first.recorder.events.length, 1);
    assert.deepEqual(first.recorder.errors, []);
    await second.handle.close();
  },
};

/** Retries `call` while the store is still coming back after a restart. */
async function whileRestarting<T>(call: () => Promise<T>, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if (!isTorusError(error, "unavailable") || Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function compactOf(fixture: KvFixture): () => Promise<void> {
  const compact = fixture.compact;
  assert.ok(compact, "the history tests need a fixture that can compact (openIsolated)");
  return () => compact.call(fixture);
}

const historyTests: Record<string, FixtureBody> = {
  [
    "a watch of a quiet key (the ring) keeps up while other keys change: compacting the history " +
    "it passed and restarting the store neither ends it nor loses a change"
  ]: async (fixture, p) => {
    const { kv } = fixture;
    const compact = compactOf(fixture);
    const recorder = new Recorder();
    const progress: number[] = [];
    const handle = await kv.watchPrefix(`${p}ring`, recorder.onEvents, {
      onError: recorder.onError,
      onProgress: (revision) => progress.push(revision),
    });
    await kv.put(`${p}ring`, b("v1"));
    await recorder.waitCount(1);
    let head = 0;
    for (let i = 0; i < 20; i++) {
      const put = { type: "put" as const, key: `${p}other/${i}`, value: b(String(i)) };
      head = (await kv.txn({ compare: [], success: [put] })).revision;
    }
    await waitFor(
      `the watch to report progress to revision ${head} (at ${progress.at(-1)})`,
      () => (progress.at(-1) ?? 0) >= head,
      15_000,
    );
    for (let i = 1; i < progress.length; i++) assert.ok(progress[i]! > progress[i - 1]!);
    await compact();
    await fixture.restart?.();
    await whileRestarting(() => kv.put(`${p}ring`, b("v2")));
    await recorder.waitCount(2, 15_000);
    await new Promise((r) => setTimeout(r, 150));
    assert.deepEqual(recorder.summary(), [`put ${p}ring v1`, `put ${p}ring v2`]);
    assert.deepEqual(recorder.errors, []);
    await handle.close();
  },

  "after compaction, a watch from before it is not_exist and one from its revision works": async (
    fixture,
    p,
  ) => {
    const { kv } = fixture;
    await kv.put(`${p}k`, b("1"));
    const old = (await kv.get(`${p}k`))!.modRevision;
    await kv.put(`${p}k`, b("2"));
    const kept = (await kv.get(`${p}k`))!.modRevision;
    await compactOf(fixture)();
    await rejectsWith(kv.watchPrefix(p, () => {}, { fromRevision: old }), "not_exist");
    const { recorder, handle } = await watch(kv, p, kept);
    await recorder.waitCount(1);
    assert.deepEqual(recorder.summary(), [`put ${p}k 2`]);
    await handle.close();
  },
};

const lifecycleTests: Record<string, Body> = {
  "close ends open watches with closed, and every later call fails with closed": async (kv, p) => {
    const { recorder } = await watch(kv, p);
    await kv.close();
    await kv.close();
    assert.equal(recorder.errors.length, 1);
    assert.ok(isTorusError(recorder.errors[0], "closed"));
    await rejectsWith(kv.get(`${p}a`), "closed");
    await rejectsWith(kv.put(`${p}a`, b("x")), "closed");
    await rejectsWith(kv.range(p), "closed");
    await rejectsWith(kv.delete(`${p}a`), "closed");
    await rejectsWith(kv.deletePrefix(p), "closed");
    await rejectsWith(kv.txn({ compare: [], success: [] }), "closed");
    await rejectsWith(kv.grantLease(1_000), "closed");
    await rejectsWith(kv.keepAliveLease(1n), "closed");
    await rejectsWith(kv.revokeLease(1n), "closed");
    await rejectsWith(kv.watchPrefix(p, () => {}), "closed");
  },
};
