/**
 * Who may create things in a node's data dir. Whatever creates files there (the node identity,
 * the block store, the embedded metadata store) first takes the data-dir lock, `<data-dir>/lock`:
 * `torus serve` for its whole life, `torus ctl init` while it creates and initialises the
 * embedded store. A second process gets one clear line naming the holder ("data dir ./d is in
 * use by torus serve, pid 4242") before it has created or changed anything.
 *
 * Invariants: the lock is taken before anything but the data dir itself is created; it is
 * released by `release()` or when the process exits, however it exits (a SIGKILLed serve leaves
 * no stale lock). Commands that only read and write metadata (every other ctl command) do not
 * take it, so they work while serve runs.
 * @module
 */

import { ErrorCode, escapeText, TorusError } from "../core/mod.ts";
import { type LockHolder, makeDirectoryDurable, tryLockFile } from "../sys/mod.ts";

/** The data-dir lock held by this process. */
export interface DataDirLock extends Disposable {
  readonly dataDir: string;
  release(): void;
}

/** The lock file inside a data dir. */
export function dataDirLockPath(dataDir: string): string {
  return `${dataDir.replace(/\/+$/, "")}/lock`;
}

function inUse(dataDir: string, holder: LockHolder): TorusError {
  // The description comes from a file anyone with access may have written: it is escaped.
  const who = holder.pid === null
    ? "another process"
    : `${escapeText(holder.description ?? "another process")}, pid ${holder.pid}`;
  return new TorusError(ErrorCode.Locked, `data dir ${escapeText(dataDir)} is in use by ${who}`);
}

/**
 * Creates the data dir (mode 0700) when absent and takes its lock for `holder` (a description
 * such as `torus serve`), without waiting. Throws `locked` naming the holder when another process
 * has it.
 */
export async function lockDataDir(dataDir: string, holder: string): Promise<DataDirLock> {
  await makeDirectoryDurable(dataDir, 0o700);
  const attempt = await tryLockFile(dataDirLockPath(dataDir), holder);
  if (attempt.holder !== undefined) throw inUse(dataDir, attempt.holder);
  const { held } = attempt;
  return { dataDir, release: () => held.release(), [Symbol.dispose]: () => held.release() };
}
