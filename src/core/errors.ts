/**
 * Operating errors: one class with stable codes. Each edge (CLI, NBD, AoE, RPC, HTTP) has one
 * table that maps a code to its own vocabulary (exit status, errno, status byte, HTTP status).
 * Programmer errors are `AssertionError` (src/core/assert.ts) and are never caught.
 * @module
 */

/** Stable error codes. Their string values appear in logs, JSON output and RPC replies. */
export const ErrorCode = {
  /** A named thing (volume, peer, snapshot, key) does not exist. */
  NotExist: "not_exist",
  /** A named thing already exists. */
  Exists: "exists",
  /** A volume lock is held by someone else, or was lost. */
  Locked: "locked",
  /** A block cannot be returned from this source (missing, corrupt, peer down): try another. */
  BlockUnavailable: "block_unavailable",
  /** A compare-and-swap lost the race; re-read and decide again. */
  CompareFailed: "compare_failed",
  /** A store or cluster has no room for the write. */
  OutOfSpace: "out_of_space",
  /** Bad input: a size, a spec, a frame, an argument. */
  Invalid: "invalid",
  /** A transient condition; the same call may succeed if tried again. */
  Again: "again",
  /** The object was closed; nothing more can be done with it. */
  Closed: "closed",
  /** A service (etcd, a peer) could not be reached in time. */
  Unavailable: "unavailable",
  /**
   * A change was sent but its answer never came (deadline passed, connection lost): it may or
   * may not have been applied. Read the state before deciding to retry.
   */
  OutcomeUnknown: "outcome_unknown",
  /** The operation is not supported by this implementation or this kernel. */
  NotSupported: "not_supported",
  /** A write to something that only reads (a snapshot, a read-only export). */
  ReadOnly: "read_only",
} as const;

/** One of the values of {@link ErrorCode}. */
export type ErrorCode = typeof ErrorCode[keyof typeof ErrorCode];

const errorCodeValues: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** Whether `value` is one of the stable codes (for decoding codes received over the wire). */
export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === "string" && errorCodeValues.has(value);
}

/** The operating error of torus. `message` is one line, for humans; `code` is for programs. */
export class TorusError extends Error {
  override name = "TorusError";
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.code = code;
  }
}

/** Whether `error` is a TorusError, optionally with the given code. */
export function isTorusError(error: unknown, code?: ErrorCode): error is TorusError {
  return error instanceof TorusError && (code === undefined || error.code === code);
}

/** Shorthand constructors, so call sites read as sentences. */
export function notExist(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.NotExist, message, options);
}
export function exists(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.Exists, message, options);
}
export function invalid(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.Invalid, message, options);
}
export function blockUnavailable(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.BlockUnavailable, message, options);
}
export function closed(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.Closed, message, options);
}
export function unavailable(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.Unavailable, message, options);
}
export function outcomeUnknown(message: string, options?: ErrorOptions): TorusError {
  return new TorusError(ErrorCode.OutcomeUnknown, message, options);
}

/** The message of any thrown value, as one line (for CLI output and logs). */
export function errorMessage(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replaceAll(/\s*[\r\n]+\s*/g, " ").trim();
}
