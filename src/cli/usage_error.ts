/** The error of a wrong invocation (re-exported by command.ts, which maps it to exit 2). @module */

/** A wrong invocation: printed with a hint to `--help`, exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}
