/**
 * What every role implementation shares: the store, the key layout, the injected clock and
 * randomness, and the compare-and-swap retry loop.
 *
 * Retry policy (as the original): compare-and-swap conflicts (another writer changed the key
 * between our read and our transaction) are retried from a fresh read, up to
 * {@link CAS_ATTEMPTS_MAX} times, then fail with `again`. Store failures (`unavailable`,
 * `outcome_unknown`, `closed`) are never retried here: they reach the caller at once, with
 * nothing half-applied, because every change is a single transaction (which, for
 * `outcome_unknown`, may or may not have been applied as a whole).
 * @module
 */

import {
  type Clock,
  ErrorCode,
  type Logger,
  notExist,
  type Random,
  TorusError,
} from "../core/mod.ts";
import type { Compare, KvStore, TxnOp } from "./kv.ts";
import type { MetadataKeys } from "./keys.ts";

/** Attempts of one compare-and-swap loop before it gives up with `again`. */
export const CAS_ATTEMPTS_MAX = 100;
/** Attempts that retry at once; later ones back off a little to let the winner finish. */
const CAS_ATTEMPTS_EAGER = 5;
/** Upper bound of one backoff pause. */
const CAS_BACKOFF_MAX_MS = 50;

/** Shared dependencies of the role implementations. */
export interface MetadataContext {
  readonly kv: KvStore;
  readonly keys: MetadataKeys;
  readonly clock: Clock;
  readonly random: Random;
  readonly log: Logger;
}

/** Marker a loop body returns to ask for another attempt. */
export const RETRY: unique symbol = Symbol("retry");

/**
 * Runs `body` until it returns a value other than {@link RETRY}; `again` after
 * {@link CAS_ATTEMPTS_MAX} attempts.
 */
export async function casLoop<T>(
  context: MetadataContext,
  what: string,
  body: (attempt: number) => Promise<T | typeof RETRY>,
): Promise<T> {
  for (let attempt = 0; attempt < CAS_ATTEMPTS_MAX; attempt++) {
    const result = await body(attempt);
    if (result !== RETRY) return result;
    context.log.debug(`${what}: compare-and-swap lost a race (attempt ${attempt + 1})`);
    if (attempt >= CAS_ATTEMPTS_EAGER) {
      const pauseMs = context.random.int(Math.min(CAS_BACKOFF_MAX_MS, 2 ** (attempt - 4)) + 1);
      await context.clock.sleep(pauseMs);
    }
  }
  throw new TorusError(ErrorCode.Again, `${what}: too many concurrent changes, try again`);
}

/** The error for a store without global metadata. */
export function notInitialised(): TorusError {
  return notExist("cluster not initialised: run `torus ctl init`");
}

/** Guard: the key is absent. */
export function absent(key: string): Compare {
  return { key, target: "version", op: "==", version: 0 };
}

/** Guard: the key exists. */
export function present(key: string): Compare {
  return { key, target: "version", op: ">", version: 0 };
}

/** Guard: the key still has the modification revision we read (0 = still absent). */
export function unchanged(key: string, modRevision: number): Compare {
  return { key, target: "modRevision", op: "==", revision: modRevision };
}

/** Guard: the key holds exactly `value` (false when absent). */
export function holds(key: string, value: Uint8Array): Compare {
  return { key, target: "value", op: "==", value };
}

/** Transaction op: put. */
export function put(key: string, value: Uint8Array): TxnOp {
  return { type: "put", key, value };
}

/** Transaction op: get. */
export function get(key: string): TxnOp {
  return { type: "get", key };
}
