/**
 * The one table that turns what npm:etcd3 and grpc-js throw into TorusError codes. Every etcd call
 * in this folder goes through `etcdError` (or `outcomeUnknown` for a change whose answer was
 * lost), so callers only ever see stable codes with one-line messages in our own words: the
 * call, the endpoint, and what went wrong, never gRPC's status names or internals.
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

/**
 * What went wrong, in a few words of our own. gRPC's texts carry its internals ("4
 * DEADLINE_EXCEEDED: Deadline exceeded after 0.999s,name resolution: 0.005s,Waiting for LB pick",
 * "13 INTERNAL: Received RST_STREAM with code 2 triggered by internal client error: write EPIPE",
 * "No connection established. Last error: ... Resolution note:"), which mean nothing to a user
 * and leak the library into one-line errors; they are recognised here and named plainly.
 */
export function describeFailure(error: unknown): string {
  if (isTorusError(error)) return error.message;
  if (error instanceof GRPCNotImplementedError) return "not an etcd v3 server";
  const message = errorMessage(error);
  if (error instanceof GRPCDeadlineExceededError || /Deadline exceeded/i.test(message)) {
    return "no answer before the deadline";
  }
  for (const [pattern, phrase] of transportPhrases) {
    if (pattern.test(message)) return phrase;
  }
  const lastError = /Last error: (?:\w*Error(?: \[\w+\])?: )?(.*?)(?:\.? ?Resolution note:.*)?$/
    .exec(message)?.[1];
  if (lastError && /certificate|TLS|SSL|handshake/i.test(lastError)) {
    return `TLS: ${shorten(lastError)}`;
  }
  // etcd's own errors ("etcdserver: mvcc: required revision has been compacted").
  const server = /etcdserver: (?:mvcc: )?(.*)$/.exec(message)?.[1];
  if (server) return shorten(server);
  return shorten(
    (lastError ?? message)
      .replace(/^\d+ [A-Z_]+: /, "")
      .replace(/,(?:LB pick|name resolution|remote_addr|Waiting for)[^,]*/g, ""),
  );
}

/** Transport failures, by the words Node and gRPC use for them, and our name for each. */
const transportPhrases: readonly (readonly [RegExp, string])[] = [
  [/ECONNREFUSED/, "connection refused"],
  [/ENOTFOUND|EAI_AGAIN|getaddrinfo/, "host name not found"],
  [/EHOSTUNREACH|ENETUNREACH/, "host unreachable"],
  [/ETIMEDOUT/, "connection timed out"],
  [
    /ECONNRESET|EPIPE|ECONNABORTED|RST_STREAM|Connection dropped|socket hang up|stream ended/i,
    "connection lost",
  ],
  [/Call cancelled|^1 CANCELLED/, "call cancelled"],
  [/Received message larger than max/, "answer larger than the limit"],
];

/** At most one line of 160 characters. */
function shorten(text: string): string {
  const line = text.trim().replace(/\.$/, "");
  return line.length <= 160 ? line : `${line.slice(0, 157)}...`;
}

/** `error` as a TorusError; `what` says which call and endpoint, for the message. */
export function etcdError(error: unknown, what: string): TorusError {
  if (isTorusError(error)) return error;
  return new TorusError(codeOf(error), `${what}: ${describeFailure(error)}`, { cause: error });
}

/**
 * The error of a change whose answer never came: the request may have reached etcd and been
 * applied. Said plainly, so nobody retries a non-idempotent change blindly.
 */
export function outcomeUnknown(error: unknown, what: string): TorusError {
  return new TorusError(
    ErrorCode.OutcomeUnknown,
    `${what}: outcome unknown (${describeFailure(error)}): the change may or may not have ` +
      "been applied",
    { cause: error },
  );
}
