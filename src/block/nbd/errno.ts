/**
 * The NBD edge's error tables: TorusError codes to the reply's error field (server) and back
 * (client). One table each way; the `satisfies Record<ErrorCode, …>` makes a new error code a
 * compile error here until it is mapped.
 * @module
 */

import { AssertionError, ErrorCode, isTorusError, TorusError } from "../../core/mod.ts";
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from "./protocol.ts";

/** Device error code to NBD error value. */
const errnoOfCode = {
  [ErrorCode.Invalid]: NBD_EINVAL,
  [ErrorCode.ReadOnly]: NBD_EPERM,
  [ErrorCode.OutOfSpace]: NBD_ENOSPC,
  [ErrorCode.BlockUnavailable]: NBD_EIO,
  [ErrorCode.Unavailable]: NBD_EIO,
  // The writer lost its volume lock: the data cannot be written, and will not be.
  [ErrorCode.Locked]: NBD_EIO,
  [ErrorCode.Closed]: NBD_ESHUTDOWN,
  [ErrorCode.NotSupported]: NBD_EINVAL,
  [ErrorCode.Again]: NBD_EIO,
  [ErrorCode.NotExist]: NBD_EIO,
  [ErrorCode.Exists]: NBD_EIO,
  [ErrorCode.CompareFailed]: NBD_EIO,
  // A metadata change whose answer was lost: the client must not assume the write happened.
  [ErrorCode.OutcomeUnknown]: NBD_EIO,
} as const satisfies Record<ErrorCode, number>;

/**
 * The NBD error value for an error a device call threw. A bug (AssertionError) is rethrown, as
 * bugs are never caught; anything else that is not a TorusError is an I/O error.
 */
export function nbdErrnoOf(error: unknown): number {
  if (error instanceof AssertionError) throw error;
  return isTorusError(error) ? errnoOfCode[error.code] : NBD_EIO;
}

/** NBD error value to the TorusError code a client reports (unknown values read as EINVAL). */
const codeOfErrno: ReadonlyMap<number, ErrorCode> = new Map<number, ErrorCode>([
  [NBD_EPERM, ErrorCode.ReadOnly],
  [NBD_EIO, ErrorCode.Unavailable],
  [NBD_ENOMEM, ErrorCode.Again],
  [NBD_EINVAL, ErrorCode.Invalid],
  [NBD_ENOSPC, ErrorCode.OutOfSpace],
  [NBD_EOVERFLOW, ErrorCode.Invalid],
  [NBD_ENOTSUP, ErrorCode.NotSupported],
  [NBD_ESHUTDOWN, ErrorCode.Closed],
]);

const errnoNames: ReadonlyMap<number, string> = new Map([
  [NBD_EPERM, "EPERM"],
  [NBD_EIO, "EIO"],
  [NBD_ENOMEM, "ENOMEM"],
  [NBD_EINVAL, "EINVAL"],
  [NBD_ENOSPC, "ENOSPC"],
  [NBD_EOVERFLOW, "EOVERFLOW"],
  [NBD_ENOTSUP, "ENOTSUP"],
  [NBD_ESHUTDOWN, "ESHUTDOWN"],
]);

/** The spec's name of an NBD error value (`EIO`), or `error N`. */
export function nbdErrnoName(errno: number): string {
  return errnoNames.get(errno) ?? `error ${errno}`;
}

/** The TorusError a client raises for an error reply to `what` (e.g. "read at 4096"). */
export function torusErrorOfErrno(errno: number, what: string): TorusError {
  // The spec: a client SHOULD treat an unexpected error value as EINVAL.
  const code = codeOfErrno.get(errno) ?? ErrorCode.Invalid;
  return new TorusError(code, `NBD ${what} failed: ${nbdErrnoName(errno)}`);
}
