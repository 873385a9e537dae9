/**
 * Unit tests of the checks both KvStore drivers share: key encoding, prefix ranges, value
 * limits and etcd's transaction rules.
 * @module
 */

import assert from "node:assert/strict";
import {
  isTorusError,
  KV_KEY_MAX_BYTES,
  KV_REQUEST_MAX_BYTES,
  KV_TXN_OPS_MAX,
  KV_VALUE_MAX_BYTES,
} from "../core/mod.ts";
import {
  checkDeletePrefix,
  checkLeaseId,
  checkTtlMs,
  checkTxn,
  compareBytes,
  copyValue,
  encodeKey,
  encodePrefix,
  hasPrefix,
  prefixEnd,
} from "./kv_common.ts";

const invalid = (e: unknown) => isTorusError(e, "invalid");
const bytes = (...values: number[]) => new Uint8Array(values);

Deno.test("prefixEnd increments the last byte below 0xff and drops the 0xff tail", () => {
  assert.deepEqual(prefixEnd(bytes(0x76, 0x2f)), bytes(0x76, 0x30));
  assert.deepEqual(prefixEnd(bytes(0x61, 0xff, 0xff)), bytes(0x62));
  assert.equal(prefixEnd(bytes(0xff, 0xff)), null);
  assert.equal(prefixEnd(bytes()), null);
});

Deno.test("a prefix range holds exactly the keys starting with the prefix (v/2/ vs v/20/)", () => {
  const prefix = encodePrefix("v/2/");
  const end = prefixEnd(prefix)!;
  for (const key of ["v/2/", "v/2/a", "v/2/\u{10ffff}"]) {
    const k = encodeKey(key);
    assert.ok(compareBytes(k, prefix) >= 0 && compareBytes(k, end) < 0, key);
    assert.ok(hasPrefix(k, prefix));
  }
  for (const key of ["v/20/a", "v/2", "v/3/", "v/1/z"]) {
    const k = encodeKey(key);
    assert.ok(compareBytes(k, prefix) < 0 || compareBytes(k, end) >= 0, key);
    assert.ok(!hasPrefix(k, prefix));
  }
});

Deno.test("keys must be non-empty, well-formed and at most KV_KEY_MAX_BYTES of UTF-8", () => {
  assert.throws(() => encodeKey(""), invalid);
  assert.throws(() => encodeKey("a\udc00b"), invalid);
  assert.throws(() => encodeKey(undefined as unknown as string), invalid);
  assert.equal(encodeKey("é".repeat(KV_KEY_MAX_BYTES / 2)).length, KV_KEY_MAX_BYTES);
  assert.throws(() => encodeKey("é".repeat(KV_KEY_MAX_BYTES / 2) + "x"), invalid);
  assert.deepEqual(encodePrefix(""), bytes());
});

Deno.test("values are copied and limited to KV_VALUE_MAX_BYTES", () => {
  const value = bytes(1, 2, 3);
  const copy = copyValue(value);
  value[0] = 9;
  assert.deepEqual(copy, bytes(1, 2, 3));
  assert.equal(copyValue(new Uint8Array(KV_VALUE_MAX_BYTES)).length, KV_VALUE_MAX_BYTES);
  assert.throws(() => copyValue(new Uint8Array(KV_VALUE_MAX_BYTES + 1)), invalid);
  assert.throws(() => copyValue("text" as unknown as Uint8Array), invalid);
});

Deno.test("lease TTLs and ids are range-checked", () => {
  assert.equal(checkTtlMs(1.2), 2);
  for (const ttl of [0, -1, NaN, Infinity, 1e12]) assert.throws(() => checkTtlMs(ttl), invalid);
  assert.equal(checkLeaseId(5n), 5n);
  for (const id of [0n, -1n, 1n << 63n, 5 as unknown as bigint]) {
    assert.throws(() => checkLeaseId(id), invalid);
  }
});

Deno.test("checkTxn copies values so a caller mutating them later changes nothing", () => {
  const value = bytes(1);
  const checked = checkTxn({
    compare: [{ key: "k", target: "value", op: "==", value }],
    success: [{ type: "put", key: "k", value }],
  });
  value[0] = 2;
  const put = checked.success[0];
  assert.deepEqual(put?.type === "put" ? put.value : null, bytes(1));
  const compare = checked.compare[0];
  assert.deepEqual(compare?.target === "value" ? compare.value : null, bytes(1));
});

Deno.test("checkTxn enforces etcd's rules on duplicate keys, counts and sizes", () => {
  const put = (key: string, size = 1) => ({
    type: "put" as const,
    key,
    value: new Uint8Array(size),
  });
  assert.throws(() => checkTxn({ compare: [], success: [put("a"), put("a")] }), invalid);
  assert.throws(
    () => checkTxn({ compare: [], success: [], failure: [{ type: "delete", key: "a" }, put("a")] }),
    invalid,
  );
  assert.throws(
    () => checkTxn({ compare: [], success: [{ type: "deletePrefix", prefix: "d/" }, put("d/x")] }),
    invalid,
  );
  // Deleting twice, or putting next to an unrelated delete, is fine.
  checkTxn({
    compare: [],
    success: [{ type: "delete", key: "a" }, { type: "delete", key: "a" }, put("b")],
  });
  const many = Array.from({ length: KV_TXN_OPS_MAX + 1 }, (_, i) => put(`k${i}`));
  assert.throws(() => checkTxn({ compare: [], success: many }), invalid);
  checkTxn({ compare: [], success: many.slice(1) });
  const big = Math.floor(KV_REQUEST_MAX_BYTES / 2);
  assert.throws(() => checkTxn({ compare: [], success: [put("a", big), put("b", big)] }), invalid);
  assert.throws(
    () =>
      checkTxn({ compare: [{ key: "a", target: "version", op: "==", version: -1 }], success: [] }),
    invalid,
  );
  assert.throws(
    () =>
      checkTxn({
        compare: [],
        success: [{ type: "explode" } as unknown as ReturnType<typeof put>],
      }),
    invalid,
  );
});

Deno.test('deletePrefix prefixes must end with "/" so volume 2 never takes volume 20 along', () => {
  assert.deepEqual(checkDeletePrefix("volumemeta/2/"), encodePrefix("volumemeta/2/"));
  for (const bad of ["volumemeta/2", "", "torus"]) {
    assert.throws(() => checkDeletePrefix(bad), invalid, bad);
  }
});
