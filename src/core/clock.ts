/**
 * Time as a dependency. Code in src/ never reads Date.now() or calls setTimeout directly for
 * protocol decisions; it takes a Clock, so tests can drive time and replay a seed.
 * @module
 */

import { assert } from "./assert.ts";
import { closed } from "./errors.ts";

/** Wall-clock and timer source. */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  nowMs(): number;
  /** Resolves after `ms`; rejects with the signal's reason when aborted. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /**
   * Calls `fire` after `ms` unless the returned cancel ran first. The cheap form of a
   * cancellable wait, for timers set and cancelled on every write.
   */
  after(ms: number, fire: () => void): () => void;
}

/** `after` from a clock's `sleep` (for clocks whose timers are not on a hot path). */
export function afterBySleep(
  clock: Pick<Clock, "sleep">,
  ms: number,
  fire: () => void,
): () => void {
  const cancel = new AbortController();
  clock.sleep(ms, cancel.signal).then(fire, () => {});
  return () => cancel.abort();
}

/** The real clock. */
export const systemClock: Clock = {
  nowMs: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const timer = setTimeout(() => {
        signal?.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal?.reason);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
    }),
  after: (ms, fire) => {
    const timer = setTimeout(fire, ms);
    return () => clearTimeout(timer);
  },
};

interface Sleeper {
  wakeAtMs: number;
  resolve: () => void;
  reject: (reason: unknown) => void;
}

/**
 * A clock that moves only when told to. Sleepers wake in order of their deadlines when
 * `advance` passes them. Production-quality code, used by tests and simulations.
 */
export class ManualClock implements Clock {
  #nowMs: number;
  #sleepers: Sleeper[] = [];
  #closed = false;

  constructor(startMs = 0) {
    this.#nowMs = startMs;
  }

  nowMs(): number {
    return this.#nowMs;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.#closed) return Promise.reject(closed("clock closed"));
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        this.#sleepers = this.#sleepers.filter((s) => s !== sleeper);
        reject(signal?.reason);
      };
      // The listener goes when the sleeper settles, so a long-lived signal shared by many
      // sleeps does not collect one listener per sleep.
      const sleeper: Sleeper = {
        wakeAtMs: this.#nowMs + Math.max(0, ms),
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (reason) => {
          signal?.removeEventListener("abort", onAbort);
          reject(reason);
        },
      };
      this.#sleepers.push(sleeper);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  after(ms: number, fire: () => void): () => void {
    return afterBySleep(this, ms, fire);
  }

  /** Moves time forward by `ms`, waking every sleeper whose deadline has passed, in order. */
  async advance(ms: number): Promise<void> {
    assert(Number.isFinite(ms) && ms >= 0, "ManualClock.advance: time only moves forward");
    const targetMs = this.#nowMs + ms;
    for (;;) {
      const due = this.#sleepers
        .filter((s) => s.wakeAtMs <= targetMs)
        .sort((a, b) => a.wakeAtMs - b.wakeAtMs)[0];
      if (!due) break;
      this.#sleepers = this.#sleepers.filter((s) => s !== due);
      this.#nowMs = Math.max(this.#nowMs, due.wakeAtMs);
      due.resolve();
      // Let the woken task run before the next deadline is considered.
      await Promise.resolve();
      await new Promise((r) => setTimeout(r, 0));
    }
    this.#nowMs = targetMs;
  }

  /** Number of pending sleepers (for tests that wait for a task to go to sleep). */
  get pendingSleepers(): number {
    return this.#sleepers.length;
  }

  /** Rejects every pending sleeper; later sleeps fail. */
  close(): void {
    this.#closed = true;
    for (const sleeper of this.#sleepers) sleeper.reject(closed("clock closed"));
    this.#sleepers = [];
  }
}
