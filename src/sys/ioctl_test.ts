/** ioctl through FFI (on a file that refuses it) and reading capabilities. */

import assert from "node:assert/strict";
import { Capability, hasCapability, ioctl, ioctlWaiting } from "./ioctl.ts";
import { Errno, SysError } from "./errno.ts";
import { close, open, OpenFlags } from "./libc.ts";

Deno.test("ioctl: a request the file does not know fails with ENOTTY naming it", async () => {
  const path = await Deno.makeTempFile();
  const fd = open(path, OpenFlags.O_RDWR);
  try {
    // NBD_SET_SIZE with a size past 32 bits: the argument is passed as a full unsigned long.
    assert.throws(
      () => ioctl(fd, 0xab02, 1n << 40n, "NBD_SET_SIZE"),
      (error) =>
        error instanceof SysError && error.errno === Errno.ENOTTY &&
        /^ioctl\(fd \d+, NBD_SET_SIZE\) failed: ENOTTY/.test(error.message),
    );
    assert.equal(await ioctlWaiting(fd, 0xab03, 0), -1);
  } finally {
    close(fd);
    await Deno.remove(path);
  }
});

Deno.test("ioctl: CAP_SYS_ADMIN is read from CapEff", async () => {
  const status = (capEff: string) => () =>
    Promise.resolve(`Name:\tdeno\nCapInh:\t0000000000000000\nCapEff:\t${capEff}\nCapBnd:\t0\n`);
  assert.equal(await hasCapability(Capability.CAP_SYS_ADMIN, status("000001ffffffffff")), true);
  assert.equal(await hasCapability(Capability.CAP_SYS_ADMIN, status("0000000000200000")), true);
  assert.equal(await hasCapability(Capability.CAP_SYS_ADMIN, status("00000000001fffff")), false);
  assert.equal(await hasCapability(Capability.CAP_SYS_ADMIN, () => Promise.resolve("")), false);
  assert.equal(
    await hasCapability(Capability.CAP_SYS_ADMIN, () => Promise.reject(new Error("no /proc"))),
    false,
  );
});
