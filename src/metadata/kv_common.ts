/**
 * Checks and byte helpers shared by the KvStore drivers, so that both refuse the same input with
 * the same message before anything reaches etcd or SQLite. Everything here is pure.
 *
 * Invariants: a key that passes `encodeKey` is 1..KV_KEY_MAX_BYTES bytes of well-formed UTF-8;
 * `prefixEnd` returns the smallest byte string greater than every key starting with the prefix
 * (or null when there is none), which is how both drivers turn a prefix into a key range.
 * @module
 */

import {
  invalid,
  KV_KEY_MAX_BYTES,
  KV_LEASE_TTL_MAX_MS,
  KV_REQUEST_MAX_BYTES,
  KV_TXN_OPS_MAX,
  KV_VALUE_MAX_BYTES,
} from "../core/mod.ts";
import type { Compare, KvEntry, LeaseId, TxnOp, TxnRequest } from "./kv.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** UTF-8 bytes of a key; `invalid` when empty, ill-formed or too long. */
export function encodeKey(key: string): Uint8Array {
  if (typeof key !== "string" || key.length === 0) throw invalid("metadata key is empty");
  return encodeBounded(key, "key");
}

/** UTF-8 bytes of a prefix (which may be empty: every key). */
export function encodePrefix(prefix: string): Uint8Array {
  if (typeof prefix !== "string") throw invalid("metadata prefix is not a string");
  return encodeBounded(prefix, "prefix");
}

function encodeBounded(text: string, what: string): Uint8Array {
  if (!text.isWellFormed()) throw invalid(`metadata ${what} is not well-formed UTF-16/UTF-8`);
  const bytes = encoder.encode(text);
  if (bytes.length > KV_KEY_MAX_BYTES) {
    throw invalid(`metadata ${what} is ${bytes.length} bytes; at most ${KV_KEY_MAX_BYTES}`);
  }
  return bytes;
}

/**
 * Checks a prefix to delete under: it must end with `/`. A bare prefix is how the original
 * deleted volume 2's metadata together with volume 20's (inventory §12.3 item 7), and an empty
 * one would wipe keys that are not torus's; neither can be asked for.
 */
export function checkDeletePrefix(prefix: string): Uint8Array {
  const bytes = encodePrefix(prefix);
  if (!prefix.endsWith("/")) {
    throw invalid(`refusing to delete under prefix "${prefix}": a prefix must end with "/"`);
  }
  return bytes;
}

/** A key read back from a store, as a string. */
export function decodeKey(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** A copy of `value` after checking its size; `invalid` when it is not bytes or too large. */
export function copyValue(value: Uint8Array): Uint8Array {
  if (!(value instanceof Uint8Array)) throw invalid("metadata value is not a Uint8Array");
  if (value.length > KV_VALUE_MAX_BYTES) {
    throw invalid(`metadata value is ${value.length} bytes; at most ${KV_VALUE_MAX_BYTES}`);
  }
  return value.slice();
}

/**
 * The end of the key range of `prefix`: the prefix with its last byte below 0xff incremented and
 * the rest dropped (etcd's rule). Null when the prefix is empty or all 0xff: no upper bound.
 */
export function prefixEnd(prefix: Uint8Array): Uint8Array | null {
  for (let i = prefix.length - 1; i >= 0; i--) {
    const byte = prefix[i]!;
    if (byte < 0xff) {
      const end = prefix.slice(0, i + 1);
      end[i] = byte + 1;
      return end;
    }
  }
  return null;
}

/** Bytewise comparison, as etcd and SQLite order BLOB keys. */
export function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    if (a[i] !== b[i]) return a[i]! - b[i]!;
  }
  return a.length - b.length;
}

/** Whether `key` starts with `prefix`, bytewise. */
export function hasPrefix(key: Uint8Array, prefix: Uint8Array): boolean {
  if (key.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) {
    if (key[i] !== prefix[i]) return false;
  }
  return true;
}

/** Bytewise equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && compareBytes(a, b) === 0;
}

/** Whether `compare` holds for `entry` (null: the key is absent), by etcd's rules. */
export function compareHolds(compare: Compare, entry: KvEntry | null): boolean {
  switch (compare.target) {
    case "version":
      return compareNumbers(entry?.version ?? 0, compare.op, compare.version);
    case "modRevision":
      return compareNumbers(entry?.modRevision ?? 0, compare.op, compare.revision);
    case "createRevision":
      return compareNumbers(entry?.createRevision ?? 0, compare.op, compare.revision);
    case "value":
      // etcd: a value compare on a missing key always fails, whatever the operator.
      if (entry === null) return false;
      return compareNumbers(compareBytes(entry.value, compare.value), compare.op, 0);
  }
}

function compareNumbers(actual: number, op: Compare["op"], expected: number): boolean {
  switch (op) {
    case "==":
      return actual === expected;
    case "!=":
      return actual !== expected;
    case "<":
      return actual < expected;
    case ">":
      return actual > expected;
  }
}

/** A lease TTL in whole milliseconds; `invalid` outside 1 ms..KV_LEASE_TTL_MAX_MS. */
export function checkTtlMs(ttlMs: number): number {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0 || ttlMs > KV_LEASE_TTL_MAX_MS) {
    throw invalid(`lease TTL ${ttlMs} ms is outside 1..${KV_LEASE_TTL_MAX_MS} ms`);
  }
  return Math.ceil(ttlMs);
}

/** `lease` after checking it is a usable id (a positive int64). */
export function checkLeaseId(lease: LeaseId): LeaseId {
  if (typeof lease !== "bigint" || lease <= 0n || lease >= 1n << 63n) {
    throw invalid(`lease id ${String(lease)} is not a positive 64-bit integer`);
  }
  return lease;
}

/** A checked, copied put: the single-key form of a transaction's put. */
export interface CheckedPut {
  readonly key: Uint8Array;
  readonly value: Uint8Array;
  readonly lease: LeaseId;
}

/** Checks a plain put and copies its value. */
export function checkPut(key: string, value: Uint8Array, lease: LeaseId | undefined): CheckedPut {
  const keyBytes = encodeKey(key);
  const copy = copyValue(value);
  if (keyBytes.length + copy.length > KV_REQUEST_MAX_BYTES) {
    throw invalid(`metadata put of ${keyBytes.length + copy.length} bytes is too large`);
  }
  return { key: keyBytes, value: copy, lease: lease === undefined ? 0n : checkLeaseId(lease) };
}

/**
 * Checks a whole transaction the way etcd does, so both drivers refuse the same requests: sizes,
 * counts, lease ids, and no branch that puts a key twice or puts a key it also deletes.
 * Returns a deep copy whose values cannot change under the caller's feet.
 */
export function checkTxn(request: TxnRequest): TxnRequest {
  const compare = request.compare ?? [];
  const success = request.success ?? [];
  const failure = request.failure ?? [];
  for (
    const [what, list] of [["compares", compare], ["success ops", success], [
      "failure ops",
      failure,
    ]] as const
  ) {
    if (list.length > KV_TXN_OPS_MAX) {
      throw invalid(`transaction has ${list.length} ${what}; at most ${KV_TXN_OPS_MAX}`);
    }
  }
  let bytes = 0;
  const copiedCompare = compare.map((c) => {
    bytes += encodeKey(c.key).length;
    if (c.target === "value") {
      const value = copyValue(c.value);
      bytes += value.length;
      return { ...c, value };
    }
    if (c.target === "version") checkCount(c.version, "compared version");
    else if (c.target === "modRevision" || c.target === "createRevision") {
      checkCount(c.revision, "compared revision");
    } else throw invalid(`unknown compare target ${String((c as { target: unknown }).target)}`);
    return { ...c };
  });
  const copiedSuccess = checkBranch(success);
  const copiedFailure = checkBranch(failure);
  bytes += opBytes(copiedSuccess) + opBytes(copiedFailure);
  if (bytes > KV_REQUEST_MAX_BYTES) {
    throw invalid(`transaction carries ${bytes} bytes; at most ${KV_REQUEST_MAX_BYTES}`);
  }
  return { compare: copiedCompare, success: copiedSuccess, failure: copiedFailure };
}

function checkCount(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw invalid(`${what} ${value} is not >= 0`);
}

function opBytes(ops: readonly TxnOp[]): number {
  let bytes = 0;
  for (const op of ops) {
    bytes += encoder.encode(op.type === "deletePrefix" || op.type === "range" ? op.prefix : op.key)
      .length;
    if (op.type === "put") bytes += op.value.length;
  }
  return bytes;
}

function checkBranch(ops: readonly TxnOp[]): TxnOp[] {
  const copied = ops.map(checkOp);
  const putKeys: Uint8Array[] = [];
  const deleted: { key: Uint8Array; end: Uint8Array | null; prefix: boolean }[] = [];
  for (const op of copied) {
    if (op.type === "put") putKeys.push(encodeKey(op.key));
    if (op.type === "delete") deleted.push({ key: encodeKey(op.key), end: null, prefix: false });
    if (op.type === "deletePrefix") {
      const prefix = checkDeletePrefix(op.prefix);
      deleted.push({ key: prefix, end: prefixEnd(prefix), prefix: true });
    }
  }
  const sorted = [...putKeys].sort(compareBytes);
  for (let i = 1; i < sorted.length; i++) {
    if (bytesEqual(sorted[i - 1]!, sorted[i]!)) {
      throw invalid(`transaction puts key ${decodeKey(sorted[i]!)} twice`);
    }
  }
  for (const key of putKeys) {
    const hit = deleted.some((d) => d.prefix ? hasPrefix(key, d.key) : bytesEqual(key, d.key));
    if (hit) throw invalid(`transaction both puts and deletes key ${decodeKey(key)}`);
  }
  return copied;
}

function checkOp(op: TxnOp): TxnOp {
  switch (op.type) {
    case "put": {
      const checked = checkPut(op.key, op.value, op.lease);
      return op.lease === undefined
        ? { type: "put", key: op.key, value: checked.value }
        : { type: "put", key: op.key, value: checked.value, lease: checked.lease };
    }
    case "delete":
    case "get":
      encodeKey(op.key);
      return { ...op };
    case "deletePrefix":
      checkDeletePrefix(op.prefix);
      return { ...op };
    case "range":
      encodePrefix(op.prefix);
      return { ...op };
    default:
      throw invalid(`unknown transaction op ${String((op as { type: unknown }).type)}`);
  }
}
