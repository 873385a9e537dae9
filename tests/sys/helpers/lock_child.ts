/**
 * Test helper process: tries the lock file at PATH for DESCRIPTION and prints `held` or
 * `busy <pid> <description>`; when it holds the lock it keeps it until its stdin closes (or it is
 * killed).
 *
 * Usage: deno run -A tests/sys/helpers/lock_child.ts PATH DESCRIPTION
 */

import { tryLockFile } from "../../../src/sys/mod.ts";

const [path, description] = Deno.args;
if (path === undefined || description === undefined) throw new Error("usage: PATH DESCRIPTION");
const attempt = await tryLockFile(path, description);
if (attempt.holder !== undefined) {
  console.log(`busy ${attempt.holder.pid} ${attempt.holder.description}`);
} else {
  console.log("held");
  for await (const _ of Deno.stdin.readable) {
    // Hold the lock until the test closes our stdin.
  }
  attempt.held.release();
}
