/**
 * The one table that turns what npm:etcd3 and grpc-js throw into TorusError codes. Every etcd call
 * in this folder goes through `etcdError`, so callers only ever see stable codes with one-line
 * messages that name the endpoint.
 * @module
 */

import {
  ClientClosedError,
  EtcdLeaseInvalidError,
  GRPCCancelledError,
  GRPCDeadlineExceededError,
  GRPCInvalidArgumentError,
  GRPCNotImplementedError,
  GRPCResourceExhastedError,
  GRPCUnavailableError,
} from "etcd3";
import { ErrorCode, errorMessage, isTorusError, TorusError } from "../core/mod.ts";

/** Messages etcd returns and the code each one means (checked as substrings). */
const messageCodes: readonly (readonly [string, ErrorCode])[] = [
  ["requested lease not found", ErrorCode.NotExist],
  ["required revision has been compacted", ErrorCode.NotExist],
  ["duplicate key given in txn request", ErrorCode.Invalid],
  ["too many operations in txn request", ErrorCode.Invalid],
  ["request is too large", ErrorCode.Invalid],
  ["key is not provided", ErrorCode.Invalid],
  ["Received message larger than max", ErrorCode.Invalid],
  ["permission denied", ErrorCode.Invalid],
  ["request timed out", ErrorCode.Unavailable],
  ["leader changed", ErrorCode.Unavailable],
  ["no leader", ErrorCode.Unavailable],
  ["too many requests", ErrorCode.Again],
];

function codeOf(error: unknown): ErrorCode {
  if (isTorusError(error)) return error.code;
  if (error instanceof ClientClosedError) return ErrorCode.Closed;
  if (error instanceof EtcdLeaseInvalidError) return ErrorCode.NotExist;
  const message = errorMessage(error);
  for (const [text, code] of messageCodes) {
    if (message.includes(text)) return code;
  }
  if (error instanceof GRPCInvalidArgumentError) return ErrorCode.Invalid;
  if (error instanceof GRPCResourceExhastedError) return ErrorCode.Again;
  if (
    error instanceof GRPCUnavailableError || error instanceof GRPCDeadlineExceededError ||
    error instanceof GRPCCancelledError || error instanceof GRPCNotImplementedError
  ) {
    return ErrorCode.Unavailable;
  }
  // Anything else (a protocol error, an internal error of the server) means the service did not
  // do what was asked; callers treat it like an outage.
  return ErrorCode.Unavailable;
}

/** `error` as a TorusError; `what` says which call and endpoint, for the message. */
export function etcdError(error: unknown, what: string): TorusError {
  if (isTorusError(error)) return error;
  const code = codeOf(error);
  // gRPC wraps the cause in boilerplate ("14 UNAVAILABLE: No connection established. Last
  // error: Error: connect ECONNREFUSED ... Resolution note: "); keep the cause.
  let detail = errorMessage(error)
    .replace(/^\d+ [A-Z_]+: /, "")
    .replace(/^No connection established\. Last error: (?:\w*Error(?: \[\w+\])?: )?/, "")
    .replace(/\.? ?Resolution note:.*$/, "")
    .trim();
  if (error instanceof GRPCNotImplementedError) {
    detail = `not an etcd v3 server (${detail})`;
  }
  return new TorusError(code, `${what}: ${detail}`, { cause: error });
}
