/**
 * SharedRun: runs an operation (a flush) so that at most one run is in progress and one waits.
 * A call gets a run that starts after the call: the running one if none runs, else the waiting
 * one, which every call made before it starts shares. That is what a flush needs: a run started
 * after an operation completed covers it, and a burst of callers costs two runs, not one each.
 * @module
 */

export class SharedRun {
  readonly #operation: () => Promise<void>;
  #running: Promise<void> | null = null;
  #waiting: Promise<void> | null = null;

  constructor(operation: () => Promise<void>) {
    this.#operation = operation;
  }

  /** The run in progress, if any. */
  get running(): Promise<void> | null {
    return this.#running;
  }

  /** A run that starts after this call (its result is the run's). */
  next(): Promise<void> {
    if (this.#waiting !== null) return this.#waiting;
    if (this.#running === null) return this.#start();
    const waiting = this.#running.catch(() => {}).then(() => {
      this.#waiting = null;
      return this.#start();
    });
    this.#waiting = waiting;
    return waiting;
  }

  #start(): Promise<void> {
    const run = this.#operation().finally(() => {
      if (this.#running === run) this.#running = null;
    });
    this.#running = run;
    return run;
  }
}
