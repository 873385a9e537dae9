/**
 * `torus blk` on a real kernel: runs tests/vm/attach_guest.sh inside a Debian kernel that has
 * nbd.ko (this host's kernel has none), through the shared tool vm-run.sh (qemu TCG). The guest
 * script is the test; this file prepares its data disk (an ext4 image holding mke2fs and e2fsck
 * with their libraries, which the guest's busybox lacks) and reads its verdict (vm_support.ts).
 *
 * One Deno test for the whole scenario: every boot and every Deno start costs seconds under
 * emulation. Skipped, saying why in its name, when the VM tool, qemu or the guest kernel cannot
 * be had (the tool's setup installs qemu and downloads the kernel when it can).
 */

import { assertGuestOk, makeDataDisk, runGuest, vmSkipReason } from "./vm_support.ts";

Deno.test({
  name: vmSkipReason === null
    ? "vm: torus blk attach/detach on a real kernel: ext4, reattach, read-only snapshot, SIGTERM"
    : `vm: torus blk attach on a real kernel (skipped: ${vmSkipReason})`,
  ignore: vmSkipReason !== null,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "torus-vm-attach-" });
    try {
      const image = await makeDataDisk(work);
      const guest = await runGuest("sh tests/vm/attach_guest.sh /vmdata", {
        disk: { image, mountPoint: "/vmdata" },
        timeoutSeconds: 1200,
      });
      assertGuestOk(guest);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
