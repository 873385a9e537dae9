/**
 * The VM tests' setup waits out a dpkg lock another process holds (a fresh machine's first
 * `npm test` once skipped every VM test that way), and gives up at once on any other failure.
 * A stand-in vm-blockdev.sh plays apt's part.
 */

import assert from "node:assert/strict";
import { vmSetup } from "./vm_support.ts";

/** A stand-in tool folder whose vm-blockdev.sh fails `failures` times with `message`, then passes. */
async function standIn(failures: number, message: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "torus-vm-setup-" });
  const script = `#!/bin/sh
n=$(cat "${dir}/count" 2>/dev/null || echo 0)
echo $((n + 1)) > "${dir}/count"
if [ "$n" -lt ${failures} ]; then echo "${message}" >&2; exit 100; fi
echo ready
`;
  await Deno.writeTextFile(`${dir}/vm-blockdev.sh`, script, { mode: 0o755 });
  return dir;
}

async function attempts(dir: string): Promise<number> {
  return Number((await Deno.readTextFile(`${dir}/count`)).trim());
}

const quick = { totalMs: 5000, retryMs: 10 };
const lock = "E: Unable to acquire the dpkg frontend lock (/var/lib/dpkg/lock-frontend), is " +
  "another process using it?";

Deno.test("vm setup: a held dpkg lock is waited out", async () => {
  const dir = await standIn(3, lock);
  try {
    const setup = await vmSetup(dir, quick);
    assert.equal(setup.code, 0, setup.output);
    assert.equal(await attempts(dir), 4, "three refusals, then the setup ran");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vm setup: any other failure is reported at once", async () => {
  const dir = await standIn(3, "E: Package 'qemu-system-x86' has no installation candidate");
  try {
    const setup = await vmSetup(dir, quick);
    assert.equal(setup.code, 100);
    assert.match(setup.output, /no installation candidate/);
    assert.equal(await attempts(dir), 1, "not tried again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vm setup: a lock that is never freed is given up on after the wait", async () => {
  const dir = await standIn(1_000_000, lock);
  try {
    const setup = await vmSetup(dir, { totalMs: 200, retryMs: 20 });
    assert.equal(setup.code, 100);
    assert.match(setup.output, /dpkg frontend lock/);
    assert.ok(await attempts(dir) >= 2, "it tried more than once");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
