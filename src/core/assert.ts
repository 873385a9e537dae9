/**
 * Assertions for programmer errors. An AssertionError means the program is wrong, not the input:
 * it is never caught, and a node that hits one exits so its supervisor restarts it.
 * @module
 */

/** Thrown by {@link assert}; never caught by torus code. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

/** Throws an AssertionError with `message` unless `condition` holds. Narrows types. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Marks a branch the type system proves unreachable. */
export function unreachable(value: never, message = "unreachable"): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}

/**
 * Whether expensive self-checks run (walking whole maps, re-reading written data). On in tests
 * (TORUS_VERIFY=1), off in production, as bbolt's BBOLT_VERIFY.
 */
export function verifyEnabled(): boolean {
  return verifyFlag;
}

const verifyFlag = readVerifyFlag();

function readVerifyFlag(): boolean {
  const permission = Deno.permissions.querySync({ name: "env", variable: "TORUS_VERIFY" });
  // Without --allow-env we never prompt: treat it as production.
  if (permission.state !== "granted") return false;
  try {
    return Deno.env.get("TORUS_VERIFY") === "1";
  } catch {
    // A value that is not valid UTF-8 is not "1"; this runs while modules load, where a throw
    // would print Deno's backtrace instead of a one-line error.
    return false;
  }
}
