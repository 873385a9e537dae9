/**
 * The Linux kernel's NBD client driven by ioctls on `/dev/nbdN` (linux/nbd.h): the request
 * numbers, the choice of block size and flags for an export (pure), and {@link KernelNbdDevice},
 * an open device node.
 *
 * The kernel's rules this follows (drivers/block/nbd.c): every request needs CAP_SYS_ADMIN;
 * NBD_SET_SOCK claims the device for the calling thread (EBUSY for anyone else while it is set
 * up or running); sizes and flags only take effect when NBD_DO_IT starts the device; the block
 * size must be a power of two from 512 to the page size; NBD_DO_IT blocks until the connection
 * ends, so it runs on a worker thread; NBD_DISCONNECT sends NBD_CMD_DISC and NBD_CLEAR_SOCK
 * shuts the socket down, and both may wait on the socket, so they run there too.
 * @module
 */

import { ErrorCode, TorusError } from "../../core/mod.ts";
import {
  close,
  Errno,
  fsync,
  ioctl,
  ioctlWaiting,
  open,
  OpenFlags,
  SysError,
} from "../../sys/mod.ts";
import {
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
} from "./protocol.ts";

/** ioctl request numbers: `_IO(0xab, n)`; each takes an unsigned long argument (or none). */
export const NbdIoctl = {
  NBD_SET_SOCK: 0xab00,
  NBD_SET_BLKSIZE: 0xab01,
  NBD_SET_SIZE: 0xab02,
  NBD_DO_IT: 0xab03,
  NBD_CLEAR_SOCK: 0xab04,
  NBD_CLEAR_QUE: 0xab05,
  NBD_SET_SIZE_BLOCKS: 0xab07,
  NBD_DISCONNECT: 0xab08,
  NBD_SET_TIMEOUT: 0xab09,
  NBD_SET_FLAGS: 0xab0a,
} as const;

/** The block size used when the export's size allows it (the page size on x86-64 and arm64). */
export const KERNEL_BLOCK_SIZE_BYTES = 4096;
const KERNEL_BLOCK_SIZE_MIN_BYTES = 512;

/** The transmission flags the kernel driver acts on; anything else is not passed on. */
const KERNEL_FLAGS = NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
  NBD_FLAG_SEND_TRIM;

/**
 * The flags for NBD_SET_FLAGS: HAS_FLAGS, and of READ_ONLY, SEND_FLUSH, SEND_FUA and SEND_TRIM
 * only those the server advertised, so the kernel never sends a command the server did not
 * offer and marks a read-only export's disk read-only.
 */
export function kernelFlags(transmissionFlags: number): number {
  return NBD_FLAG_HAS_FLAGS | (transmissionFlags & KERNEL_FLAGS);
}

/**
 * The device block size for an export of `sizeBytes`: 4096 when the size is a multiple of it,
 * otherwise the largest power of two that divides it (at least 512), so the whole export is
 * visible (the kernel's capacity is counted in whole blocks). `minimumBytes` is the server's
 * minimum request size; `invalid` when the kernel cannot meet it.
 */
export function kernelBlockSize(sizeBytes: number, minimumBytes = 1): number {
  let blockSize = KERNEL_BLOCK_SIZE_BYTES;
  while (blockSize > KERNEL_BLOCK_SIZE_MIN_BYTES && sizeBytes % blockSize !== 0) blockSize /= 2;
  if (minimumBytes > blockSize) {
    throw new TorusError(
      ErrorCode.Invalid,
      `the export needs requests of at least ${minimumBytes} bytes; the kernel device ` +
        `would send ${blockSize}-byte ones`,
    );
  }
  return blockSize;
}

/** What {@link KernelNbdDevice.configure} sets. */
export interface KernelDeviceConfig {
  readonly sizeBytes: number;
  readonly blockSizeBytes: number;
  /** NBD_SET_FLAGS value ({@link kernelFlags}). */
  readonly flags: number;
  /** Request timeout in seconds (NBD_SET_TIMEOUT); 0 leaves requests waiting forever. */
  readonly timeoutSeconds: number;
}

/** `needs root` for permission errors, the call's own message otherwise. */
function deviceError(path: string, action: string, error: unknown): unknown {
  if (!(error instanceof SysError)) return error;
  if (error.errno === Errno.EPERM || error.errno === Errno.EACCES) {
    return new TorusError(
      ErrorCode.Invalid,
      `${action} ${path} needs root (CAP_SYS_ADMIN): ${error.message}`,
      { cause: error },
    );
  }
  if (error.errno === Errno.ENXIO || error.errno === Errno.ENODEV) {
    return new TorusError(
      ErrorCode.NotSupported,
      `${path} has no NBD driver behind it: ${error.message}`,
      {
        cause: error,
      },
    );
  }
  return error;
}

/**
 * The ioctl calls a device makes (sys/ioctl.ts); tests record them to check the requests and
 * their arguments without a kernel.
 */
export interface IoctlCalls {
  /** A request that returns at once; throws SysError on failure. */
  ioctl(fd: number, request: number, arg: number | bigint, what: string): number;
  /** A request that may wait, on a worker thread; -1 on failure. */
  ioctlWaiting(fd: number, request: number, arg: number | bigint): Promise<number>;
}

/** The real system calls. */
export const REAL_IOCTL: IoctlCalls = { ioctl, ioctlWaiting };

/** An open `/dev/nbdN`. Close it with {@link close} once done. */
export class KernelNbdDevice {
  readonly path: string;
  readonly #fd: number;
  readonly #calls: IoctlCalls;
  #closed = false;

  private constructor(path: string, fd: number, calls: IoctlCalls) {
    this.path = path;
    this.#fd = fd;
    this.#calls = calls;
  }

  /**
   * Opens the device node read-write (the ioctls need an open file, not write access). `calls`
   * replaces the ioctls (tests).
   */
  static open(path: string, calls: IoctlCalls = REAL_IOCTL): KernelNbdDevice {
    try {
      return new KernelNbdDevice(path, open(path, OpenFlags.O_RDWR), calls);
    } catch (error) {
      throw deviceError(path, "opening", error);
    }
  }

  /**
   * NBD_SET_SOCK: gives the connected socket `socketFd` to the kernel (which keeps its own
   * reference). `again` when another process is setting the device up or running it.
   */
  claim(socketFd: number): void {
    try {
      this.#calls.ioctl(this.#fd, NbdIoctl.NBD_SET_SOCK, socketFd, "NBD_SET_SOCK");
    } catch (error) {
      if (error instanceof SysError && error.errno === Errno.EBUSY) {
        throw new TorusError(ErrorCode.Again, `${this.path} is in use by another process`, {
          cause: error,
        });
      }
      throw deviceError(this.path, "configuring", error);
    }
  }

  /** Block size, size, flags and timeout; they take effect when {@link run} starts. */
  configure(config: KernelDeviceConfig): void {
    try {
      const set = (request: number, arg: number | bigint, what: string) =>
        this.#calls.ioctl(this.#fd, request, arg, what);
      set(NbdIoctl.NBD_SET_BLKSIZE, config.blockSizeBytes, "NBD_SET_BLKSIZE");
      set(NbdIoctl.NBD_SET_SIZE, BigInt(config.sizeBytes), "NBD_SET_SIZE");
      set(NbdIoctl.NBD_SET_FLAGS, config.flags, "NBD_SET_FLAGS");
      if (config.timeoutSeconds > 0) {
        set(NbdIoctl.NBD_SET_TIMEOUT, config.timeoutSeconds, "NBD_SET_TIMEOUT");
      }
    } catch (error) {
      throw deviceError(this.path, "configuring", error);
    }
  }

  /**
   * NBD_DO_IT on a worker thread: the device serves until the connection ends. Resolves to 0
   * when it ended by a disconnect request or the server closing, -1 on an error or timeout.
   */
  run(): Promise<number> {
    return this.#calls.ioctlWaiting(this.#fd, NbdIoctl.NBD_DO_IT, 0);
  }

  /**
   * Writes back what the page cache holds for the device and has the server flush (fsync of a
   * block device sends NBD_CMD_FLUSH). False when it failed (the connection is gone).
   */
  async flush(): Promise<boolean> {
    try {
      await fsync(this.#fd);
      return true;
    } catch {
      return false;
    }
  }

  /** NBD_DISCONNECT: the kernel sends NBD_CMD_DISC; true when the request was accepted. */
  async disconnect(): Promise<boolean> {
    return await this.#calls.ioctlWaiting(this.#fd, NbdIoctl.NBD_DISCONNECT, 0) === 0;
  }

  /** NBD_CLEAR_SOCK: shuts the socket down and fails what is queued; true when accepted. */
  async clearSocket(): Promise<boolean> {
    return await this.#calls.ioctlWaiting(this.#fd, NbdIoctl.NBD_CLEAR_SOCK, 0) === 0;
  }

  /** Closes the device node (the last close frees the kernel's connection state). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#fd);
  }
}
