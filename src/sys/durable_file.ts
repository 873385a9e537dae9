/**
 * Creating small files and directories so that they survive a crash whole or not at all, even
 * when several processes create the same ones at once.
 *
 * Invariants:
 * - `writeFileAtomic` never shows a reader a half-written file: it writes a temporary file under
 *   a name no other writer uses (pid and counter, created with O_EXCL), fsyncs it, renames it over
 *   the target and fsyncs the directory, so after it returns the new content survives a crash.
 *   With several writers the last rename wins whole; callers that must not lose an update
 *   serialise their read-modify-write with a lock (lock_file.ts).
 * - `makeDirectoryDurable` fsyncs the parent of every directory it may have created, so a file
 *   made durable inside it is not lost with its directory entry.
 * @module
 */

import { Errno, SysError } from "./errno.ts";
import { close, fsync, open, OpenFlags, pwriteFull } from "./libc.ts";

/** Temporary files created by this process so far, to make every temporary name unique. */
let temporaries = 0;

function parentOf(path: string): string {
  const trimmed = path.replace(/\/+$/, "") || "/";
  const slash = trimmed.lastIndexOf("/");
  return slash < 0 ? "." : trimmed.slice(0, slash) || "/";
}

/** fsync(2) of a directory: entries created, renamed or removed in it reach stable storage. */
export async function syncDirectory(dir: string): Promise<void> {
  const fd = open(dir, OpenFlags.O_RDONLY);
  try {
    await fsync(fd);
  } finally {
    close(fd);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/**
 * Creates `path` and its missing parents with `mode` (when absent) and makes their entries
 * durable. Safe when other processes create the same directories at the same time.
 */
export async function makeDirectoryDurable(path: string, mode = 0o700): Promise<void> {
  const missing: string[] = [];
  for (let dir = path; !(await exists(dir)); dir = parentOf(dir)) {
    missing.push(dir);
    if (dir === parentOf(dir)) break;
  }
  if (missing.length === 0) return;
  await Deno.mkdir(path, { recursive: true, mode });
  // Each created directory's entry lives in its parent: sync from the top down.
  for (const dir of missing.reverse()) await syncDirectory(parentOf(dir));
}

function openTemporary(path: string, mode: number): { tempPath: string; fd: number } {
  for (;;) {
    const slash = path.lastIndexOf("/");
    const tempPath = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}.tmp-${Deno.pid}-` +
      `${temporaries++}`;
    try {
      const flags = OpenFlags.O_WRONLY | OpenFlags.O_CREAT | OpenFlags.O_EXCL;
      return { tempPath, fd: open(tempPath, flags, mode) };
    } catch (error) {
      // A leftover of a crashed process that had our pid: take the next name.
      if (!(error instanceof SysError && error.errno === Errno.EEXIST)) throw error;
    }
  }
}

/**
 * Replaces the file at `path` with `content` atomically and durably (see the module invariants).
 * The file gets exactly `mode`, whatever the umask.
 */
export async function writeFileAtomic(
  path: string,
  content: string | Uint8Array,
  options: { mode: number },
): Promise<void> {
  const bytes = typeof content === "string" ? new TextEncoder().encode(content) : content.slice();
  const { tempPath, fd } = openTemporary(path, options.mode);
  try {
    try {
      if (bytes.length > 0) await pwriteFull(fd, bytes, 0);
      await fsync(fd);
    } finally {
      close(fd);
    }
    await Deno.chmod(tempPath, options.mode);
    await Deno.rename(tempPath, path);
  } catch (error) {
    await Deno.remove(tempPath).catch(() => {});
    throw error;
  }
  await syncDirectory(parentOf(path));
}
