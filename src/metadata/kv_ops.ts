/**
 * Small recipes over any KvStore that the metadata service repeats: the compare-and-swap loop
 * (the original's AtomicModifyKey) and reading a key together with the store revision.
 * @module
 */

import { TorusError } from "../core/mod.ts";
import type { KvEntry, KvStore } from "./kv.ts";

/** Result of {@link atomicModify}. */
export interface AtomicModifyResult {
  /** The value written. */
  readonly value: Uint8Array;
  /** Store revision of the write (the key's new modRevision). */
  readonly revision: number;
  /** How many times another writer won the race first. */
  readonly retries: number;
}

/** Retries of {@link atomicModify} before it gives up with `again`. */
export const ATOMIC_MODIFY_RETRIES_MAX = 1_000;

/**
 * Replaces `key`'s value with `modify(current)` atomically: the write happens only if nobody
 * changed the key since it was read (guarded by modRevision, which also tells a deleted and
 * recreated key apart), else the new state is read in the same transaction and `modify` runs
 * again. `modify` may throw to abort.
 */
export async function atomicModify(
  kv: KvStore,
  key: string,
  modify: (current: KvEntry | null) => Uint8Array,
  options: { retriesMax?: number } = {},
): Promise<AtomicModifyResult> {
  const retriesMax = options.retriesMax ?? ATOMIC_MODIFY_RETRIES_MAX;
  let current = await kv.get(key);
  for (let retries = 0; retries <= retriesMax; retries++) {
    const value = modify(current);
    const response = await kv.txn({
      compare: [{ key, target: "modRevision", op: "==", revision: current?.modRevision ?? 0 }],
      success: [{ type: "put", key, value }],
      failure: [{ type: "get", key }],
    });
    if (response.succeeded) return { value, revision: response.revision, retries };
    const read = response.results[0];
    current = read?.type === "get" ? read.entries[0] ?? null : await kv.get(key);
  }
  throw new TorusError("again", `atomic update of ${key} lost the race ${retriesMax + 1} times`);
}

/** `key`'s entry (or null) and the store revision it was read at, for a watch to follow. */
export async function getWithRevision(
  kv: KvStore,
  key: string,
): Promise<{ entry: KvEntry | null; revision: number }> {
  const response = await kv.txn({ compare: [], success: [{ type: "get", key }] });
  const read = response.results[0];
  return {
    entry: read?.type === "get" ? read.entries[0] ?? null : null,
    revision: response.revision,
  };
}
