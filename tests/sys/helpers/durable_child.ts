/**
 * Test helper process, run under strace: creates DIR/a/b durably and writes DIR/a/b/f atomically,
 * so the test can check the order of mkdir, fsync and rename system calls.
 *
 * Usage: deno run -A tests/sys/helpers/durable_child.ts DIR
 */

import { makeDirectoryDurable, writeFileAtomic } from "../../../src/sys/mod.ts";

const [dir] = Deno.args;
if (dir === undefined) throw new Error("usage: DIR");
await makeDirectoryDurable(`${dir}/a/b`);
await writeFileAtomic(`${dir}/a/b/f`, "identity\n", { mode: 0o600 });
