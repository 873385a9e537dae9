/**
 * The etcd driver when etcd is not there or goes away: opening fails fast with `unavailable`
 * (closed port, or a server that accepts and never answers), calls fail within their deadline
 * when etcd is killed, acknowledged writes survive an etcd crash, a watch resumes across an etcd
 * restart without losing or repeating events, gives up with onError after its retry window, and
 * reports compacted history as `not_exist`; behind a silent partition calls still end at their
 * deadline and a watch notices the silence.
 * @module
 */

import { silentListener } from "../support/deadlines.ts";
import assert from "node:assert/strict";
import { Etcd3 } from "etcd3";
import { isTorusError } from "../../src/core/mod.ts";
import {
  createMetadataService,
  type KvStore,
  openEtcdKv,
  type TxnRequest,
  type WatchEvent,
} from "../../src/metadata/mod.ts";
import { EtcdProcess, freePort } from "../support/etcd.ts";
import { hasCommand } from "../support/packages.ts";
import { FreezableProxy } from "./tcp_proxy.ts";
import { testEtcd } from "../support/test_etcd.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const haveEtcd = hasCommand("etcd");
const needsEtcd = haveEtcd ? "" : " (skipped: etcd is not installed)";
const base = { sanitizeOps: true, sanitizeResources: true };

function isUnavailable(error: unknown): boolean {
  assert.ok(isTorusError(error, "unavailable"), `expected unavailable, got ${String(error)}`);
  assert.ok(!error.message.includes("\n"), "one-line message");
  return true;
}

async function waitFor(what: string, condition: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test({
  name: "etcd: opening against a closed port fails with unavailable within ~3 s",
  ...base,
  fn: async () => {
    const endpoint = `127.0.0.1:${freePort()}`;
    const started = Date.now();
    await assert.rejects(openEtcdKv({ endpoints: [endpoint] }), (error) => {
      isUnavailable(error);
      assert.match((error as Error).message, new RegExp(endpoint));
      return true;
    });
    assert.ok(Date.now() - started < 3_500, `took ${Date.now() - started} ms`);
  },
});

Deno.test({
  name: "etcd: a server that accepts connections but never answers fails the open in time",
  ...base,
  fn: async () => {
    await using silent = silentListener();
    const started = Date.now();
    await assert.rejects(
      openEtcdKv({ endpoints: [`127.0.0.1:${silent.port}`], connectTimeoutMs: 1_000 }),
      isUnavailable,
    );
    const tookMs = Date.now() - started;
    // The point is a bounded failure near the 1 s connect timeout rather than a hang (or the
    // library's own minutes-long default); the margin absorbs a loaded machine's scheduling.
    assert.ok(tookMs >= 900 && tookMs < 8_000, `took ${tookMs} ms`);
  },
});

Deno.test({
  name:
    `etcd: killed mid-stream, calls fail in time (a change in flight: outcome unknown); acknowledged writes ` +
    `survive the restart${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const kv = await openEtcdKv({ endpoints: [etcd.endpoint], callTimeoutMs: 1_500 });
    try {
      let acked = 0;
      let failure: unknown = null;
      const writer = (async () => {
        for (let i = 1;; i++) {
          try {
            await kv.txn({
              compare: [],
              success: [
                { type: "put", key: `crash/a/${i}`, value: encoder.encode(String(i)) },
                { type: "put", key: `crash/b/${i}`, value: encoder.encode(String(i)) },
              ],
            });
            acked = i;
          } catch (error) {
            failure = error;
            return;
          }
        }
      })();
      await waitFor("some acknowledged writes", () => acked >= 20, 10_000);
      const killedAt = Date.now();
      await etcd.kill();
      await writer;
      assert.ok(Date.now() - killedAt < 2_500, "the write in flight failed within its deadline");
      // It was sent and never answered, so it may have been applied: outcome unknown (or plain
      // unavailable if it had not left yet).
      assert.ok(
        isTorusError(failure, "outcome_unknown") || isTorusError(failure, "unavailable"),
        `expected outcome_unknown or unavailable, got ${failure}`,
      );
      assert.ok(!(failure as Error).message.includes("\n"), "one-line message");
      await assert.rejects(kv.get("crash/a/1"), isUnavailable);
      await etcd.restart();
      await waitFor("etcd back", () => true, 0);
      const a = await retryUntilUp(() => kv.range("crash/a/"));
      const b = await kv.range("crash/b/");
      assert.ok(a.length >= acked, `${a.length} of ${acked} acknowledged writes survived`);
      assert.equal(a.length, b.length, "a transaction applied whole or not at all");
    } finally {
      await kv.close();
    }
  },
});

/** Retries a call while etcd is still starting up. */
async function retryUntilUp<T>(call: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if (!isTorusError(error, "unavailable") || Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function watchAll(kv: KvStore, prefix: string) {
  const events: WatchEvent[] = [];
  const errors: Error[] = [];
  const watch = await kv.watchPrefix(prefix, (e) => events.push(...e), {
    onError: (e) => errors.push(e),
  });
  return { events, errors, watch };
}

Deno.test({
  name: `etcd: a watch resumes across an etcd restart without losing or repeating events` +
    needsEtcd,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const watcherKv = await openEtcdKv({ endpoints: [etcd.endpoint], watchRetryMaxMs: 20_000 });
    try {
      const { events, errors, watch } = await watchAll(watcherKv, "w/");
      for (let i = 1; i <= 5; i++) await watcherKv.put(`w/${i}`, encoder.encode(String(i)));
      await waitFor("the first five events", () => events.length === 5, 5_000);
      await etcd.kill();
      await etcd.restart();
      // Another client writes at once, while the watch is still backing off its reconnect.
      const writer = await retryUntilUp(() => openEtcdKv({ endpoints: [etcd.endpoint] }));
      try {
        for (let i = 6; i <= 10; i++) await writer.put(`w/${i}`, encoder.encode(String(i)));
        await writer.delete("w/1");
      } finally {
        await writer.close();
      }
      await waitFor("all eleven events", () => events.length >= 11, 10_000);
      await new Promise((r) => setTimeout(r, 200));
      assert.deepEqual(
        events.map((e) => `${e.type} ${e.key} ${decoder.decode(e.value)}`),
        [
          ...Array.from({ length: 10 }, (_, i) => `put w/${i + 1} ${i + 1}`),
          "delete w/1 ",
        ],
      );
      assert.deepEqual(errors, []);
      await watch.close();
    } finally {
      await watcherKv.close();
    }
  },
});

Deno.test({
  name: `etcd: a watch gives up with onError(unavailable) when etcd stays down${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const kv = await openEtcdKv({ endpoints: [etcd.endpoint], watchRetryMaxMs: 1_500 });
    try {
      const { errors } = await watchAll(kv, "gone/");
      const killedAt = Date.now();
      await etcd.kill();
      await waitFor("the watch to give up", () => errors.length > 0, 6_000);
      const afterMs = Date.now() - killedAt;
      assert.ok(afterMs >= 1_400 && afterMs < 5_000, `gave up after ${afterMs} ms`);
      assert.equal(errors.length, 1);
      isUnavailable(errors[0]);
    } finally {
      await kv.close();
    }
  },
});

Deno.test({
  name: `etcd: watching from a compacted revision is not_exist${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const kv = await openEtcdKv({ endpoints: [etcd.endpoint] });
    const raw = new Etcd3({ hosts: [etcd.endpoint] });
    try {
      await kv.put("c/1", encoder.encode("1"));
      const old = (await kv.get("c/1"))!.modRevision;
      await kv.put("c/1", encoder.encode("2"));
      await kv.put("c/1", encoder.encode("3"));
      const head = (await kv.get("c/1"))!.modRevision;
      await raw.kv.compact({ revision: head, physical: true });
      await assert.rejects(
        kv.watchPrefix("c/", () => {}, { fromRevision: old }),
        (e) => isTorusError(e, "not_exist") && /compacted/.test((e as Error).message),
      );
      const events: WatchEvent[] = [];
      const ok = await kv.watchPrefix("c/", (e) => events.push(...e), { fromRevision: head });
      await waitFor("the kept revision", () => events.length === 1, 5_000);
      await ok.close();
    } finally {
      raw.close();
      await kv.close();
    }
  },
});

Deno.test({
  name: `etcd: behind a silent partition, calls time out as unavailable and a watch notices ` +
    `the silence and gives up${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    await using proxy = new FreezableProxy(etcd.endpoint);
    const kv = await openEtcdKv({
      endpoints: [proxy.endpoint],
      callTimeoutMs: 1_000,
      watchIdleProbeMs: 500,
      watchRetryMaxMs: 1_500,
    });
    try {
      const { events, errors } = await watchAll(kv, "p/");
      await kv.put("p/1", encoder.encode("1"));
      await waitFor("the first event", () => events.length === 1, 5_000);
      proxy.freeze();
      const frozenAt = Date.now();
      await assert.rejects(kv.get("p/1"), isUnavailable);
      assert.ok(Date.now() - frozenAt < 1_800, "a call ends at its deadline");
      await waitFor("the watch to give up", () => errors.length > 0, 8_000);
      isUnavailable(errors[0]);
      assert.equal(events.length, 1);
    } finally {
      await kv.close();
    }
  },
});

Deno.test({
  name: `etcd: with one of two endpoints down, every call reaches the live one${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await testEtcd();
    const dead = `127.0.0.1:${freePort()}`;
    for (const endpoints of [[dead, etcd.endpoint], [etcd.endpoint, dead]]) {
      const kv = await openEtcdKv({ endpoints });
      try {
        const key = `failover/${crypto.randomUUID()}`;
        for (let i = 0; i < 20; i++) await kv.put(key, encoder.encode(String(i)));
        assert.equal(decoder.decode((await kv.get(key))!.value), "19");
        await kv.delete(key);
      } finally {
        await kv.close();
      }
    }
  },
});

Deno.test({
  name: `etcd: the ring watch keeps up while only other keys change, so compaction and an etcd ` +
    `restart do not end it${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const kv = await openEtcdKv({ endpoints: [etcd.endpoint], watchIdleProbeMs: 300 });
    const mds = createMetadataService(kv, { prefix: "/ring-watch/" });
    const raw = new Etcd3({ hosts: [etcd.endpoint] });
    try {
      const ring = { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} };
      await mds.cluster.init({
        blockSizeBytes: 4096,
        defaultBlockSpec: [{ kind: 0, options: "" }],
        ring,
      });
      const versions: number[] = [];
      const errors: Error[] = [];
      let progress = 0;
      const sub = await mds.cluster.watchRing((r) => versions.push(r.version), {
        onError: (e) => errors.push(e),
        onProgress: (revision) => (progress = revision),
      });
      for (let i = 0; i < 10; i++) await mds.volumes.createBlockVolume(`v${i}`, 4096);
      const head = (await kv.txn({ compare: [], success: [] })).revision;
      await waitFor(`ring watch progress to ${head}`, () => progress >= head, 15_000);
      await raw.kv.compact({ revision: head, physical: true });
      await etcd.kill();
      await etcd.restart();
      await retryUntilUp(() => mds.cluster.setRing({ ...ring, version: 2 }));
      await waitFor("ring version 2", () => versions.includes(2) || errors.length > 0, 15_000);
      assert.deepEqual(errors, []);
      assert.deepEqual(versions, [1, 2]);
      await sub.unsubscribe();
    } finally {
      raw.close();
      await mds.close();
    }
  },
});

/** gRPC's and Node's words, which must not reach a one-line error. */
const internals =
  /[A-Z]{2,}_[A-Z]+|LB pick|name resolution|remote_addr|RST_STREAM|Resolution note|Last error|EPIPE|grpc/i;

function isOutcomeUnknown(error: unknown): boolean {
  assert.ok(isTorusError(error, "outcome_unknown"), `expected outcome_unknown, got ${error}`);
  assert.ok(!error.message.includes("\n"), "one-line message");
  assert.match(error.message, /outcome unknown.*may or may not have been applied/);
  assert.doesNotMatch(error.message, internals);
  return true;
}

/** `kv` with replies frozen by `proxy` just before the first transaction that changes something. */
function freezingAtFirstChange(kv: KvStore, proxy: FreezableProxy): KvStore {
  return {
    kind: kv.kind,
    get: (key) => kv.get(key),
    range: (prefix) => kv.range(prefix),
    put: (key, value, options) => kv.put(key, value, options),
    delete: (key) => kv.delete(key),
    deletePrefix: (prefix) => kv.deletePrefix(prefix),
    txn: (request: TxnRequest) => {
      if (request.success.some((op) => op.type === "put")) proxy.freezeReplies();
      return kv.txn(request);
    },
    watchPrefix: (prefix, onEvents, options) => kv.watchPrefix(prefix, onEvents, options),
    grantLease: (ttlMs) => kv.grantLease(ttlMs),
    keepAliveLease: (lease) => kv.keepAliveLease(lease),
    revokeLease: (lease) => kv.revokeLease(lease),
    close: () => kv.close(),
  };
}

Deno.test({
  name: `etcd: a change whose answer is lost is reported as outcome unknown, in one line and our ` +
    `own words, and it was applied; what was never sent is plain unavailable${needsEtcd}`,
  ignore: !haveEtcd,
  ...base,
  fn: async () => {
    await using etcd = await EtcdProcess.start();
    const direct = await openEtcdKv({ endpoints: [etcd.endpoint] });
    try {
      await direct.put("/unknown/meta/volumeminter", new Uint8Array(8));
      await direct.put("/unknown/meta/globalmetadata", encoder.encode("{}"));
      {
        // The service reads the catalogue, then its creating transaction gets no answer.
        await using proxy = new FreezableProxy(etcd.endpoint);
        const stalled = await openEtcdKv({ endpoints: [proxy.endpoint], callTimeoutMs: 1_000 });
        const mds = createMetadataService(freezingAtFirstChange(stalled, proxy), {
          prefix: "/unknown/",
        });
        try {
          await assert.rejects(mds.volumes.createBlockVolume("lost", 4096), isOutcomeUnknown);
          assert.ok(await direct.get("/unknown/volumes/lost"), "the volume was created");
          // gRPC now waits for a connection it cannot get: what it never sends is not in doubt.
          const reads = [() => stalled.get("u/x"), () => stalled.txn({ compare: [], success: [] })];
          for (const read of [...reads, () => stalled.put("u/never", encoder.encode("1"))]) {
            await assert.rejects(read(), (error) => {
              isUnavailable(error);
              assert.match((error as Error).message, /no answer before the deadline$/);
              assert.doesNotMatch((error as Error).message, internals);
              return true;
            });
          }
          assert.equal(await direct.get("u/never"), null, "unavailable, so not applied");
        } finally {
          await mds.close();
        }
      }
      const value = async (key: string) => {
        const entry = await direct.get(key);
        return entry ? decoder.decode(entry.value) : null;
      };
      const changes: [(kv: KvStore) => Promise<unknown>, () => Promise<boolean>][] = [
        [(kv) => kv.put("u/put", encoder.encode("1")), async () => (await value("u/put")) === "1"],
        [
          (kv) =>
            kv.txn({
              compare: [],
              success: [{ type: "put", key: "u/txn", value: encoder.encode("2") }],
            }),
          async () => (await value("u/txn")) === "2",
        ],
        [(kv) => kv.delete("u/put"), async () => (await value("u/put")) === null],
        [(kv) => kv.deletePrefix("u/"), async () => (await direct.range("u/")).length === 0],
      ];
      for (const [change, applied] of changes) {
        // Each on a connection of its own that works until the replies stop.
        await using proxy = new FreezableProxy(etcd.endpoint);
        const stalled = await openEtcdKv({ endpoints: [proxy.endpoint], callTimeoutMs: 1_000 });
        try {
          await stalled.get("u/warm");
          proxy.freezeReplies();
          await assert.rejects(change(stalled), isOutcomeUnknown);
        } finally {
          await stalled.close();
        }
        assert.ok(await applied(), `${change}: etcd applied it, although it was never answered`);
      }
    } finally {
      await direct.close();
    }
  },
});
