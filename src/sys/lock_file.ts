/**
 * Whole-file locks between processes that name their holder: `tryLockFile` either takes the
 * lock or says which process holds it, so a loser can print "in use by torus serve, pid 4242"
 * instead of a raw error. They are POSIX record locks (fcntl), not flock, because only
 * fcntl(F_GETLK) reports the holder's pid.
 *
 * Invariants:
 * - A POSIX lock belongs to the process and the kernel drops it when the process closes *any*
 *   descriptor of the file. So a process opens each lock file at most once: this module keeps the
 *   set of lock files held here, and a second attempt in the same process is answered "busy,
 *   held by this pid" without opening the file again.
 * - The pid in a busy answer comes from the kernel, never from the file, so it is never stale.
 *   The holder also writes `<pid> <description>` into the file right after taking the lock (for
 *   humans and for the busy answer's description, used only when its pid matches the kernel's;
 *   a loser that comes in between waits briefly for that line).
 * - Lock files are never removed: removing one would let a newcomer lock a fresh file of the same
 *   name while the old holder still holds the old one.
 * @module
 */

import { type Clock, LOCK_HOLDER_DESCRIPTION_WAIT_MS, systemClock } from "../core/mod.ts";
import {
  close,
  ftruncate,
  open,
  OpenFlags,
  pwriteFullSync,
  trySetWriteLock,
  writeLockHolderPid,
} from "./libc.ts";

/** A lock this process holds; `release` (or disposal) gives it up. */
export interface HeldFileLock extends Disposable {
  readonly path: string;
  release(): void;
}

/** Who holds a lock that could not be taken. */
export interface LockHolder {
  /** The holder's pid; null only when holders kept changing while we asked. */
  readonly pid: number | null;
  /** What the holder wrote about itself (`torus serve`), when known. */
  readonly description: string | null;
}

/** The outcome of {@link tryLockFile}. */
export type LockAttempt =
  | { readonly held: HeldFileLock; readonly holder?: never }
  | { readonly held?: never; readonly holder: LockHolder };

/** Lock files this process holds, by canonical path. */
const heldHere = new Map<string, string>();

/** Rounds of "lock failed, but no holder found" before giving up on naming the holder. */
const HOLDER_LOOKUPS_MAX = 100;
const HOLDER_DESCRIPTION_POLL_MS = 5;

const encoder = new TextEncoder();

/** The canonical path of `path` (its directory must exist), so aliases map to one lock. */
function canonical(path: string): string {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : path.slice(0, slash) || "/";
  const real = Deno.realPathSync(dir);
  return `${real === "/" ? "" : real}/${path.slice(slash + 1)}`;
}

function describedBy(path: string, pid: number): string | null {
  try {
    const match = /^(\d+) (.+)\n?$/.exec(Deno.readTextFileSync(path));
    return match !== null && Number(match[1]) === pid ? match[2]! : null;
  } catch {
    return null;
  }
}

function holdLock(path: string, fd: number, description: string): HeldFileLock {
  ftruncate(fd, 0);
  pwriteFullSync(fd, encoder.encode(`${Deno.pid} ${description}\n`), 0);
  heldHere.set(path, description);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    heldHere.delete(path);
    close(fd);
  };
  return { path, release, [Symbol.dispose]: release };
}

/** Options of {@link tryLockFile}. */
export interface TryLockOptions {
  /** Time source for the wait below (default: the system clock). */
  readonly clock?: Clock;
  /**
   * How long a loser waits for the holder to record its description (it writes it right after
   * taking the lock) before naming it by pid alone (default LOCK_HOLDER_DESCRIPTION_WAIT_MS).
   */
  readonly descriptionWaitMs?: number;
}

/**
 * Takes an exclusive lock on the file at `path` (created, mode 0600, when absent) without
 * waiting for it, recording `description` in it; or names the process that holds it. The lock
 * lasts until released or until this process exits, however it exits.
 */
export async function tryLockFile(
  path: string,
  description: string,
  options: TryLockOptions = {},
): Promise<LockAttempt> {
  const key = canonical(path);
  const mine = heldHere.get(key);
  if (mine !== undefined) return { holder: { pid: Deno.pid, description: mine } };
  const fd = open(key, OpenFlags.O_RDWR | OpenFlags.O_CREAT, 0o600);
  let pid: number | null = null;
  try {
    for (let round = 0; round < HOLDER_LOOKUPS_MAX && pid === null; round++) {
      if (trySetWriteLock(fd)) return { held: holdLock(key, fd, description) };
      pid = writeLockHolderPid(fd);
    }
  } catch (error) {
    close(fd);
    throw error;
  }
  close(fd);
  if (pid === null) return { holder: { pid: null, description: null } };
  return { holder: { pid, description: await descriptionOf(key, pid, options) } };
}

/** The description the holder `pid` wrote, waiting a little for it to be written; or null. */
async function descriptionOf(
  path: string,
  pid: number,
  options: TryLockOptions,
): Promise<string | null> {
  const clock = options.clock ?? systemClock;
  const deadlineMs = clock.nowMs() + (options.descriptionWaitMs ?? LOCK_HOLDER_DESCRIPTION_WAIT_MS);
  for (;;) {
    const description = describedBy(path, pid);
    if (description !== null || clock.nowMs() >= deadlineMs) return description;
    await clock.sleep(HOLDER_DESCRIPTION_POLL_MS);
  }
}

/** Options of {@link lockFileWaiting}. */
export interface LockWaitOptions {
  /** Longest wait for the holder to release the lock. */
  readonly waitMs: number;
  /** Time source (default: the system clock). */
  readonly clock?: Clock;
}

/** Pause between two attempts of {@link lockFileWaiting}. */
const LOCK_POLL_MS = 10;

/**
 * Like {@link tryLockFile}, but waits up to `waitMs` for a holder to release the lock, for locks
 * held only for a moment (a config file being rewritten). Returns the holder when the wait ends.
 */
export async function lockFileWaiting(
  path: string,
  description: string,
  options: LockWaitOptions,
): Promise<LockAttempt> {
  const clock = options.clock ?? systemClock;
  const deadlineMs = clock.nowMs() + options.waitMs;
  while (clock.nowMs() < deadlineMs) {
    const attempt = await tryLockFile(path, description, { clock, descriptionWaitMs: 0 });
    if (attempt.held !== undefined) return attempt;
    await clock.sleep(LOCK_POLL_MS);
  }
  return await tryLockFile(path, description, { clock });
}
