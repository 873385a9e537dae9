/**
 * The Device contract: what every front end (the NBD server, kernel attach through it, the AoE
 * target, `ctl block dump/load`) serves or uses. A block volume opened for write, a read-only
 * snapshot of one, and test devices implement it; a device contract suite runs over every one.
 *
 * Contract:
 * - Addresses are bytes. `sizeBytes` is a whole number of 512-byte sectors. Every call checks
 *   `offsetBytes >= 0`, `offsetBytes + length <= sizeBytes` (`invalid` otherwise) and any byte
 *   offset and length inside that is valid (no alignment is required; 4 KiB-aligned I/O is the
 *   fast path).
 * - `readAt` fills the caller's buffer; `writeAt` copies the caller's bytes before its promise
 *   settles and never keeps a reference to them. Nothing handed out aliases internal memory.
 * - Calls may be in flight concurrently, from many connections. Overlapping writes in flight at
 *   the same time land in some order, each 4 KiB sector holding one of them whole (a caller that
 *   needs an order waits for the first write's promise).
 * - A write resolves once a read issued after it returns its bytes; it is durable only after a
 *   `flush` that started after it resolved has resolved (or when written with `fua`). `flush`
 *   covers every write any caller saw resolve, whichever connection sent it: that is what lets
 *   the NBD server advertise multi-conn.
 * - After a crash, a write that was not covered by a flush reads back, per 4 KiB sector, as either
 *   its old or its new bytes: never a mix inside a sector of one write, never garbage, never an
 *   error.
 * - `trim` discards a range: afterwards it reads as zeros and whole blocks inside it stop taking
 *   space. `writeZeroes` also reads as zeros afterwards; with `noHole` the space stays allocated.
 * - A read-only device (a snapshot) rejects writeAt, trim and writeZeroes with `read_only`;
 *   `flush` succeeds on it.
 * - Errors are TorusErrors: `invalid` (bad range), `read_only`, `out_of_space`,
 *   `block_unavailable` or `unavailable` (data could not be read or written), `locked` (the
 *   writer lost its lock: nothing more is accepted), `closed`. Front ends map them to their own
 *   vocabulary (NBD: EINVAL, EPERM, ENOSPC, EIO, ESHUTDOWN).
 * - `close` waits for calls in flight, flushes a writable device and releases it. Idempotent.
 * @module
 */

/** Options of every device call. */
export interface DeviceCallOptions {
  /** Abandons a call that waits (a disconnected client); what already happened stays. */
  signal?: AbortSignal;
}

/** Options of writes. */
export interface DeviceWriteOptions extends DeviceCallOptions {
  /** Force unit access: the write is durable when its promise resolves. */
  fua?: boolean;
}

/** Options of {@link Device.writeZeroes}. */
export interface WriteZeroesOptions extends DeviceWriteOptions {
  /** Keep the range allocated (NBD_CMD_FLAG_NO_HOLE); otherwise whole blocks may be freed. */
  noHole?: boolean;
}

/** A range of a device and what is known about its contents without reading it. */
export interface DeviceExtent {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** The range reads as zeros (never written, trimmed or zeroed). */
  readonly zero: boolean;
}

/** A block device served by the front ends. */
export interface Device {
  /** Size in bytes: a whole number of 512-byte sectors. */
  readonly sizeBytes: number;
  /** Whether writes are refused (`read_only`). */
  readonly readOnly: boolean;
  /** The I/O size that avoids read-modify-write inside the device (4096). */
  readonly preferredBlockSizeBytes: number;

  /** Fills `into` with the bytes at `offsetBytes`. */
  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void>;
  /** Writes `data` at `offsetBytes`. */
  writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions): Promise<void>;
  /** Makes every write that resolved before this call durable. */
  flush(options?: DeviceCallOptions): Promise<void>;
  /** Discards a range (reads as zeros afterwards). */
  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void>;
  /** Zeroes a range. */
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void>;
  /**
   * Which parts of a range are known to read as zeros, in order and covering the whole range
   * (adjacent extents differ in `zero`). A device that knows nothing reports one non-zero extent.
   * Used for sparse dumps; never reads data.
   */
  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]>;
  /** Waits for calls in flight, flushes (if writable) and releases the device. Idempotent. */
  close(): Promise<void>;
}
