/**
 * Work in flight, counted, so that a close can wait for every call that started before it:
 * `run` counts a call while it runs, `idle` resolves once none runs.
 * @module
 */

/** A counter of calls in flight with waiters for the moment it reaches zero. */
export class InFlight {
  #count = 0;
  #waiters: (() => void)[] = [];

  /** Calls running now. */
  get count(): number {
    return this.#count;
  }

  /** Runs `work`, counted while it runs. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    this.#count++;
    try {
      return await work();
    } finally {
      this.#count--;
      if (this.#count === 0) {
        const waiters = this.#waiters;
        this.#waiters = [];
        for (const resolve of waiters) resolve();
      }
    }
  }

  /** Resolves once no call runs (at once when none does). */
  idle(): Promise<void> {
    if (this.#count === 0) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}
