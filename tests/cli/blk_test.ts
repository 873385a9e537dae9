/** `torus blk` as a process on this host: what a machine without the nbd module is told. */

import assert from "node:assert/strict";
import { runTorus } from "../support/torus_process.ts";

function hostHasNbd(): boolean {
  try {
    Deno.statSync("/sys/block/nbd0");
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name: hostHasNbd()
    ? "blk process: no nbd module (skipped: this host's kernel has NBD devices)"
    : "blk process: attach on a kernel without nbd says to modprobe it, exit 1",
  ignore: hostHasNbd(),
  async fn() {
    const output = await runTorus(["blk", "attach", "--nbd", "127.0.0.1:1", "vol"]);
    assert.equal(output.code, 1, output.stderr);
    assert.equal(
      output.stderr,
      "torus blk attach: this kernel has no NBD devices (/dev/nbd0 missing): load it with " +
        "modprobe nbd (not_supported)\n",
    );
  },
});

Deno.test("blk process: nbdserve without -C is a usage error naming it, exit 2", async () => {
  const output = await runTorus(["blk", "nbdserve"]);
  assert.equal(output.code, 2);
  assert.match(output.stderr, /give -C \(the cluster's etcd\)/);
});
