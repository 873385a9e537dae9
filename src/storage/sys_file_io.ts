/**
 * SysFileIo: the real FileIo, over libc through src/sys. Reads, writes and syncs are nonblocking
 * FFI calls (a pool thread waits on the disk, never the event loop); a failed read or write learns
 * its errno on a worker thread (src/sys/io_repeat.ts). Two shortcuts save most of the thread hops
 * of small I/O: a read first copies what the page cache holds without waiting (`preadv2` with
 * RWF_NOWAIT), the reads that miss go to the kernel together through io_uring (src/sys/uring.ts),
 * and small writes of one turn go together in one AIO `io_submit` (src/sys/aio.ts). open, close, ftruncate, fallocate, lseek
 * and flock are synchronous: they change or read metadata only and return without data I/O.
 * Names (exists, mkdir, rename, remove) go through Deno's own async file system calls.
 * @module
 */

import { closed, ErrorCode, errorMessage, TorusError } from "../core/mod.ts";
import {
  batchedPreadFull,
  batchedPwrite,
  close,
  fallocate,
  fdatasync,
  fileSizeBytes,
  FlockOps,
  fsync,
  ftruncate,
  open,
  OpenFlags,
  preadNowait,
  tryFlock,
  unlockFlock,
} from "../sys/mod.ts";
import type { FileIo, IoFile, OpenFileOptions } from "./file_io.ts";

/** Maps an error of Deno's file system API to a TorusError with a code. */
function fromDenoError(what: string, error: unknown): TorusError {
  const code = error instanceof Deno.errors.NotFound
    ? ErrorCode.NotExist
    : error instanceof Deno.errors.AlreadyExists
    ? ErrorCode.Exists
    : error instanceof Deno.errors.PermissionDenied
    ? ErrorCode.Invalid
    : ErrorCode.Unavailable;
  return new TorusError(code, `${what}: ${errorMessage(error)}`, { cause: error });
}

/**
 * Whether a read of a file is worth trying from the page cache first. A miss is not free: the
 * kernel starts the disk read (readahead) inside the failing `preadv2` call, on the event loop's
 * thread, before the pool thread waits for it. A file whose reads mostly miss (a volume larger
 * than the memory, read at random) skips the attempt, except every SAMPLE_EVERY-th read, which
 * tells when its pages come back into memory.
 */
export class CacheHitRate {
  /** Recent share of attempts that hit (decaying average). */
  #rate = 1;
  #skipped = 0;
  static readonly TRY_ABOVE = 0.25;
  static readonly SAMPLE_EVERY = 16;

  worthTrying(): boolean {
    if (this.#rate >= CacheHitRate.TRY_ABOVE) return true;
    this.#skipped = (this.#skipped + 1) % CacheHitRate.SAMPLE_EVERY;
    return this.#skipped === 0;
  }

  /** An attempt hit or missed (not called for reads that did not try). */
  saw(hit: boolean): void {
    this.#rate = 0.9 * this.#rate + (hit ? 0.1 : 0);
  }
}

/** One file opened through libc. */
class SysFile implements IoFile {
  readonly path: string;
  #fd: number | null;
  readonly #cacheHits = new CacheHitRate();
  /**
   * Where {@link readCached} last missed, or -1: the read that follows it there (the caller's
   * fallback) skips a second no-wait attempt, which would only miss again and count twice.
   */
  #missedAt = -1;

  constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  #open(): number {
    if (this.#fd === null) throw closed(`${this.path} is closed`);
    return this.#fd;
  }

  async read(into: Uint8Array, offsetBytes: number): Promise<number> {
    const fd = this.#open();
    // What the page cache holds is copied at once; only the rest waits for a pool thread.
    const justMissed = this.#missedAt === offsetBytes;
    this.#missedAt = -1;
    const tried = !justMissed && this.#cacheHits.worthTrying();
    const cached = tried ? preadNowait(fd, into, offsetBytes) : -1;
    if (tried) this.#cacheHits.saw(cached >= 0);
    if (cached === into.length || cached === 0) return cached;
    const done = Math.max(cached, 0);
    return done + await batchedPreadFull(fd, into.subarray(done), offsetBytes + done);
  }

  readCached(into: Uint8Array, offsetBytes: number): boolean {
    if (this.#fd === null || !this.#cacheHits.worthTrying()) return false;
    const cached = preadNowait(this.#fd, into, offsetBytes);
    this.#cacheHits.saw(cached >= 0);
    if (cached === into.length) return true;
    this.#missedAt = offsetBytes;
    return false;
  }

  async write(bytes: Uint8Array, offsetBytes: number): Promise<void> {
    await batchedPwrite(this.#open(), bytes, offsetBytes);
  }

  async datasync(): Promise<void> {
    await fdatasync(this.#open());
  }

  async sync(): Promise<void> {
    await fsync(this.#open());
  }

  truncate(lengthBytes: number): Promise<void> {
    return settle(() => ftruncate(this.#open(), lengthBytes));
  }

  allocate(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    return settle(() => fallocate(this.#open(), offsetBytes, lengthBytes));
  }

  sizeBytes(): Promise<number> {
    return settle(() => fileSizeBytes(this.#open()));
  }

  tryLock(): Promise<boolean> {
    return settle(() => tryFlock(this.#open(), FlockOps.LOCK_EX));
  }

  unlock(): Promise<void> {
    return settle(() => unlockFlock(this.#open()));
  }

  close(): Promise<void> {
    return settle(() => {
      const fd = this.#fd;
      if (fd === null) return;
      this.#fd = null;
      // Release the lock explicitly: a child process forked meanwhile may hold a copy of the fd.
      try {
        unlockFlock(fd);
      } finally {
        close(fd);
      }
    });
  }
}

/** Runs `body` now and reports its result or exception as a promise. */
function settle<T>(body: () => T): Promise<T> {
  try {
    return Promise.resolve(body());
  } catch (error) {
    return Promise.reject(error);
  }
}

/** The real file system. Stateless: one instance may serve any number of stores. */
export class SysFileIo implements FileIo {
  open(path: string, options: OpenFileOptions = {}): Promise<IoFile> {
    return settle(() => {
      const flags = OpenFlags.O_RDWR | (options.create ? OpenFlags.O_CREAT : 0) |
        (options.truncate ? OpenFlags.O_TRUNC : 0);
      return new SysFile(path, open(path, flags));
    });
  }

  async exists(path: string): Promise<boolean> {
    try {
      await Deno.lstat(path);
      return true;
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return false;
      throw fromDenoError(`stat ${path}`, error);
    }
  }

  async mkdir(path: string): Promise<void> {
    try {
      await Deno.mkdir(path, { recursive: true });
    } catch (error) {
      throw fromDenoError(`mkdir ${path}`, error);
    }
  }

  async rename(from: string, to: string): Promise<void> {
    try {
      await Deno.rename(from, to);
    } catch (error) {
      throw fromDenoError(`rename ${from} to ${to}`, error);
    }
  }

  async remove(path: string): Promise<void> {
    try {
      await Deno.remove(path);
    } catch (error) {
      throw fromDenoError(`remove ${path}`, error);
    }
  }

  async syncDirectory(path: string): Promise<void> {
    const fd = open(path, OpenFlags.O_RDONLY);
    try {
      await fsync(fd);
    } finally {
      close(fd);
    }
  }
}
