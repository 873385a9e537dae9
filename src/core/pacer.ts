/**
 * Pacing of background work to a byte rate (the rebalancer's copies, the scrubber's reads), so
 * that client I/O keeps the disk and the links it needs.
 * @module
 */

import type { Clock } from "./clock.ts";

/** Spaces units of work so that their bytes keep to `rateBytesPerSecond` (0: no bound). */
export class Pacer {
  readonly #rateBytesPerSecond: number;
  readonly #clock: Clock;
  /** When the next unit may start (ms since the epoch). */
  #nextMs = 0;

  constructor(rateBytesPerSecond: number, clock: Clock) {
    this.#rateBytesPerSecond = rateBytesPerSecond;
    this.#clock = clock;
  }

  /** Waits until `bytes` more fit the rate (returns early, without throwing, when aborted). */
  async wait(bytes: number, signal?: AbortSignal): Promise<void> {
    const rate = this.#rateBytesPerSecond;
    if (rate <= 0) return;
    const now = this.#clock.nowMs();
    const start = Math.max(now, this.#nextMs);
    this.#nextMs = start + bytes / rate * 1_000;
    if (start > now) await this.#clock.sleep(start - now, signal).catch(() => {});
  }
}
