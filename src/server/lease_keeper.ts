/**
 * LeaseKeeper: the lease a process holds its volume locks (and, in the cluster, its peer
 * registration) under, renewed in the background.
 *
 * A lock bound to a lease that lapsed is free for another writer, so a process must stop writing
 * under it *before* the metadata service could expire it: when no renewal succeeded for most of
 * a TTL (the etcd or embedded store unreachable, the process stalled), the keeper declares the
 * lease lost, tells its listeners (open volumes then refuse every write with `locked`) and starts
 * over with a new lease for whatever opens next.
 * @module
 */

import {
  type Clock,
  ErrorCode,
  errorMessage,
  isTorusError,
  LEASE_TTL_MS,
  logger,
} from "../core/mod.ts";
import type { LeaseId, LeaseMetadata } from "../metadata/mod.ts";

const log = logger("lease");

/** Options of {@link LeaseKeeper.start}. */
export interface LeaseKeeperOptions {
  readonly leases: LeaseMetadata;
  readonly clock: Clock;
  /** TTL of the lease. Default LEASE_TTL_MS. */
  readonly ttlMs?: number;
}

/** See the module doc. */
export class LeaseKeeper {
  readonly ttlMs: number;
  readonly #leases: LeaseMetadata;
  readonly #clock: Clock;
  readonly #listeners = new Set<(lost: LeaseId) => void>();
  readonly #stop = new AbortController();
  #lease: LeaseId;
  #renewedAtMs: number;
  #loop: Promise<void> = Promise.resolve();

  private constructor(options: LeaseKeeperOptions, lease: LeaseId, ttlMs: number) {
    this.#leases = options.leases;
    this.#clock = options.clock;
    this.ttlMs = ttlMs;
    this.#lease = lease;
    this.#renewedAtMs = options.clock.nowMs();
  }

  /** Grants a lease and keeps it alive until {@link close}. */
  static async start(options: LeaseKeeperOptions): Promise<LeaseKeeper> {
    const ttlMs = options.ttlMs ?? LEASE_TTL_MS;
    const lease = await options.leases.grant(ttlMs);
    const keeper = new LeaseKeeper(options, lease, ttlMs);
    keeper.#loop = keeper.#run();
    return keeper;
  }

  /** The lease in force now. */
  get lease(): LeaseId {
    return this.#lease;
  }

  /** Calls `listener` with a lease when it is declared lost. Returns the unsubscriber. */
  onLost(listener: (lost: LeaseId) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Renewals are due this often: three fit in a TTL. */
  get #intervalMs(): number {
    return Math.max(10, Math.floor(this.ttlMs / 3));
  }

  async #run(): Promise<void> {
    const signal = this.#stop.signal;
    while (!signal.aborted) {
      await this.#clock.sleep(this.#intervalMs, signal).catch(() => {});
      if (signal.aborted) return;
      try {
        await this.#leases.keepAlive(this.#lease);
        this.#renewedAtMs = this.#clock.nowMs();
        continue;
      } catch (error) {
        if (signal.aborted) return;
        const expired = isTorusError(error, ErrorCode.NotExist);
        // Give up before the store could have expired it: a renewal sent after that is too late.
        const stale = this.#clock.nowMs() - this.#renewedAtMs >= this.ttlMs - this.#intervalMs;
        log.warn(`renewing lease ${this.#lease.toString(16)} failed: ${errorMessage(error)}`);
        if (expired || stale) await this.#replace();
      }
    }
  }

  /** Declares the current lease lost and tries to start a new one. */
  async #replace(): Promise<void> {
    const lost = this.#lease;
    log.error(`lease ${lost.toString(16)} is lost: locks held under it are given up`);
    for (const listener of this.#listeners) listener(lost);
    try {
      this.#lease = await this.#leases.grant(this.ttlMs);
      this.#renewedAtMs = this.#clock.nowMs();
    } catch (error) {
      log.warn(`granting a new lease failed: ${errorMessage(error)}; trying again`);
    }
  }

  /** Stops renewing and revokes the lease (its locks are released at once). */
  async close(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    this.#stop.abort();
    await this.#loop;
    await this.#leases.revoke(this.#lease).catch((error) => {
      log.warn(`revoking lease ${this.#lease.toString(16)} failed: ${errorMessage(error)}`);
    });
  }
}
