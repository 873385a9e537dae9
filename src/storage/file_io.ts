/**
 * The FileIo boundary: the one interface through which the file engine touches the file system.
 * Every file it opens, every byte it reads or writes, every sync, resize, rename, lock and close
 * goes through a FileIo handed to it, so a test can put a layer underneath that records, delays,
 * fails or loses operations (power_loss_file_io.ts) and cover every file the engine will ever use.
 *
 * Implementations: sys_file_io.ts (the real one, nonblocking FFI through src/sys),
 * power_loss_file_io.ts (wraps another FileIo and simulates a power cut). Contract:
 * file_io_contract.ts, run against each.
 *
 * Contract:
 * - Positional I/O only: there is no file offset, so any number of calls may be in flight at once
 *   on one file. Calls that overlap in bytes and are in flight together have no defined order;
 *   callers never issue overlapping writes concurrently.
 * - `read` fills the buffer unless the file ends first and returns the bytes read; `write` writes
 *   every byte or throws. Buffers are the caller's: an implementation keeps no reference to them
 *   once the call settled, and the caller does not touch them while it runs.
 * - Durability: written bytes and size changes survive a power loss only after a `datasync` or
 *   `sync` of that file completed after them; a new name (create, rename) only after a
 *   `syncDirectory` of its directory completed after it. Until then any subset of them may be
 *   lost, and a write may be torn (some sectors new, some old).
 * - Failures are TorusErrors with a code (`not_exist`, `out_of_space`, `unavailable`, …), never
 *   raw errno numbers. After `close`, a file throws `closed`.
 * @module
 */

/** How {@link FileIo.open} opens a file (always for reading and writing). */
export interface OpenFileOptions {
  /** Create the file when it does not exist. */
  create?: boolean;
  /** Empty the file when it is opened. */
  truncate?: boolean;
}

/** One open file. */
export interface IoFile {
  /** The path it was opened with (a later rename does not change it). */
  readonly path: string;
  /** Reads into `into` from `offsetBytes`; returns the bytes read (fewer only at end of file). */
  read(into: Uint8Array, offsetBytes: number): Promise<number>;
  /**
   * Fills all of `into` from `offsetBytes` now, from memory, without waiting (the page cache):
   * true when it did; false when it could not (not in memory, past the end, closed, any error),
   * with `into` in any state and nothing else changed: the caller then calls `read`, which
   * reports real errors. An implementation that cannot read without waiting returns false.
   */
  readCached(into: Uint8Array, offsetBytes: number): boolean;
  /** Writes all of `bytes` at `offsetBytes`. */
  write(bytes: Uint8Array, offsetBytes: number): Promise<void>;
  /** Makes the file's written bytes and size durable (fdatasync). */
  datasync(): Promise<void>;
  /** Makes the file's bytes and all its metadata durable (fsync). */
  sync(): Promise<void>;
  /** Sets the file's length; new bytes read as zero. */
  truncate(lengthBytes: number): Promise<void>;
  /**
   * Reserves disk space for a range so later writes into it cannot fail for lack of space (and
   * extends the file when the range ends past it). False when the file system cannot.
   */
  allocate(offsetBytes: number, lengthBytes: number): Promise<boolean>;
  /** The file's current length. */
  sizeBytes(): Promise<number>;
  /**
   * Takes this open file's exclusive advisory lock without waiting: false when another open file
   * (in any process) holds it. Released by `unlock` or `close`.
   */
  tryLock(): Promise<boolean>;
  /** Releases the lock (harmless when not held). */
  unlock(): Promise<void>;
  /** Closes the file. */
  close(): Promise<void>;
}

/** A file system, as the file engine sees it. */
export interface FileIo {
  /** Opens `path` for reading and writing. */
  open(path: string, options?: OpenFileOptions): Promise<IoFile>;
  /** Whether `path` exists (a dangling symlink counts). */
  exists(path: string): Promise<boolean>;
  /** Creates a directory and its missing parents; nothing when it exists. */
  mkdir(path: string): Promise<void>;
  /** Renames `from` to `to` (same directory), replacing `to` atomically. */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file. */
  remove(path: string): Promise<void>;
  /** Makes the names in directory `path` (creations, renames, removals) durable. */
  syncDirectory(path: string): Promise<void>;
}

/** The directory part of `path` (`.` for a bare name). */
export function parentDir(path: string): string {
  const slash = path.lastIndexOf("/");
  if (slash < 0) return ".";
  return slash === 0 ? "/" : path.slice(0, slash);
}
