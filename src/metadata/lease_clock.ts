/**
 * Time for lease deadlines. A lease must not expire because someone set the wall clock (an NTP
 * step, `date -s`, a VM resumed with a stale clock): the wall clock can jump by any amount in
 * either direction, and with wall-clock deadlines a step of one TTL forward dropped every lock on
 * the machine at once, while a step backward kept a dead holder's locks for the length of the step.
 *
 * So the embedded store keeps deadlines in the machine's boot-time clock (Linux CLOCK_BOOTTIME,
 * read from /proc/uptime): it only moves forward, at the rate of real time (suspend included),
 * is immune to wall-clock steps, and is one clock for every process on the machine, so a deadline
 * written by one process means the same instant to every other process sharing the store file.
 * Each reading carries the boot it counts from (/proc/sys/kernel/random/boot_id): after a reboot
 * the old boot's deadlines mean nothing, and the store expires those leases (their holders died
 * with the machine).
 *
 * Guarantees (for processes of one machine, which the embedded store requires anyway: SQLite's
 * WAL needs a local filesystem):
 * - no wall-clock step, of any size or direction, expires a lease early or keeps it late;
 * - a lease expires no earlier than its TTL after its last grant or keepalive, and is removed
 *   within about one sweep interval after that, whichever process on the machine sweeps;
 * - readings have /proc/uptime's 10 ms resolution, so deadlines are exact to about 10 ms;
 * - a suspended machine counts the suspension as elapsed time: leases longer overdue than their TTL
 *   expire on resume, as a network partition of that length would end an etcd lease;
 * - a reboot expires every lease of the previous boot.
 * Where /proc cannot be read (not Linux), the wall clock is used instead, with its weaknesses, and
 * a warning is logged once.
 * @module
 */

import { type Clock, logger, systemClock } from "../core/mod.ts";

/** One reading of a {@link LeaseClock}. */
export interface LeaseTime {
  /** The boot the reading counts from; readings of different boots cannot be compared. */
  readonly bootId: string;
  /** Milliseconds since that boot. */
  readonly ms: number;
}

/** The time source of lease deadlines, shared by every process of one machine. */
export interface LeaseClock {
  now(): Promise<LeaseTime>;
}

/** The boot id the wall-clock fallback uses: wall-clock deadlines count from the Unix epoch. */
export const WALL_CLOCK_BOOT_ID = "wall-clock";

const log = logger("metadata");

/** Milliseconds since boot from the text of /proc/uptime ("350735.47 234388.90"). */
export function parseUptimeMs(text: string): number {
  const match = /^(\d+)(?:\.(\d{1,9}))?\s/.exec(text);
  if (!match) throw new Error(`unexpected /proc/uptime contents: ${text.slice(0, 40)}`);
  const fraction = (match[2] ?? "").padEnd(3, "0").slice(0, 3);
  return Number(match[1]) * 1000 + Number(fraction);
}

/** The machine's boot-time clock (see the module doc). */
class BootClock implements LeaseClock {
  #bootId: Promise<string> | null = null;
  #lastMs = 0;
  #fallback = false;

  async now(): Promise<LeaseTime> {
    if (!this.#fallback) {
      try {
        const [bootId, uptime] = await Promise.all([
          this.#readBootId(),
          Deno.readTextFile("/proc/uptime"),
        ]);
        // The kernel's clock never goes back; this guards only against parsing surprises.
        this.#lastMs = Math.max(this.#lastMs, parseUptimeMs(uptime));
        return { bootId, ms: this.#lastMs };
      } catch (error) {
        this.#fallback = true;
        log.warn(
          `cannot read the boot-time clock (${(error as Error).message}); lease deadlines ` +
            "follow the wall clock, so a clock step can expire or prolong leases",
        );
      }
    }
    return { bootId: WALL_CLOCK_BOOT_ID, ms: systemClock.nowMs() };
  }

  #readBootId(): Promise<string> {
    this.#bootId ??= Deno.readTextFile("/proc/sys/kernel/random/boot_id").then((t) => t.trim());
    return this.#bootId;
  }
}

/** The machine's boot-time clock: the default time source of embedded leases. */
export const bootClock: LeaseClock = new BootClock();

/** A lease clock driven by `clock` (a ManualClock in tests), all in one boot. */
export function leaseClockOf(clock: Clock, bootId = "boot-of-test-clock"): LeaseClock {
  return { now: () => Promise.resolve({ bootId, ms: clock.nowMs() }) };
}

/**
 * A process-local clock that never steps: the wall time when the process started plus the
 * monotonic time since. For deadlines that live inside one process (the in-memory store's leases,
 * retry windows), where a shared clock is not needed.
 */
export const monotonicClock: Clock = {
  nowMs: () => performance.timeOrigin + performance.now(),
  sleep: (ms, signal) => systemClock.sleep(ms, signal),
  after: (ms, fire) => systemClock.after(ms, fire),
};
