/**
 * `torus blk` on a real kernel: runs tests/vm/attach_guest.sh inside a Debian kernel that has
 * nbd.ko (this host's kernel has none), through the shared tool vm-run.sh (qemu TCG). The guest
 * script is the test; this file prepares its data disk (an ext4 image holding mke2fs and e2fsck
 * with their libraries, which the guest's busybox lacks) and reads its verdict.
 *
 * One Deno test for the whole scenario: every boot and every Deno start costs seconds under
 * emulation. Skipped, saying why in its name, when the VM tool, qemu or the guest kernel cannot
 * be had (the tool's setup installs qemu and downloads the kernel when it can).
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

/**
 * The shared VM tools: the folder of $TORUS_VM_BLOCKDEV (as guest_kernel_nbd_test.ts), else
 * `shared/tools` beside the checkout (or beside the folder of worktrees).
 */
function findVmTools(): string | null {
  const blockdev = Deno.env.get("TORUS_VM_BLOCKDEV");
  const candidates = [
    blockdev === undefined ? undefined : blockdev.slice(0, blockdev.lastIndexOf("/")),
    `${root}../shared/tools`,
    `${root}../../shared/tools`,
  ];
  for (const dir of candidates) {
    if (dir === undefined || dir === "") continue;
    try {
      Deno.statSync(`${dir}/vm-run.sh`);
      return dir;
    } catch {
      // not there
    }
  }
  return null;
}

async function run(
  command: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; output: string }> {
  const result = await new Deno.Command(command, {
    args,
    cwd: root,
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: result.code,
    output: decoder.decode(result.stdout) + decoder.decode(result.stderr),
  };
}

/** Why the VM cannot run here, or null when it can (runs the tool's cached setup). */
async function whyNoVm(tools: string | null): Promise<string | null> {
  if (tools === null) return "no shared/tools/vm-run.sh beside the checkout ($TORUS_VM_BLOCKDEV)";
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return "not x86-64 Linux";
  const setup = await run(`${tools}/vm-blockdev.sh`, ["setup"]);
  if (setup.code !== 0) {
    const last = setup.output.trim().split("\n").at(-1) ?? "";
    return `qemu or the guest kernel cannot be installed (vm-blockdev.sh setup: ${last})`;
  }
  return null;
}

const tools = findVmTools();
const skipReason = await whyNoVm(tools);

/** Which files the guest needs from this host: the e2fsprogs tools and their libraries. */
async function stageTools(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/tools/bin`, { recursive: true });
  await Deno.mkdir(`${dir}/tools/lib`, { recursive: true });
  for (const tool of ["mke2fs", "e2fsck"]) {
    const which = await run("sh", ["-c", `command -v ${tool}`]);
    assert.equal(which.code, 0, `${tool} is not installed on the host`);
    const path = which.output.trim();
    await Deno.copyFile(path, `${dir}/tools/bin/${tool}`);
    await Deno.chmod(`${dir}/tools/bin/${tool}`, 0o755);
    const ldd = await run("ldd", [path]);
    for (const match of ldd.output.matchAll(/=> (\/\S+)/g)) {
      const lib = match[1]!;
      const name = lib.slice(lib.lastIndexOf("/") + 1);
      // libc and the loader are in the guest already (Deno needs them); the rest is copied.
      if (!/^(libc\.so|ld-linux)/.test(name)) await Deno.copyFile(lib, `${dir}/tools/lib/${name}`);
    }
  }
  await Deno.copyFile("/etc/mke2fs.conf", `${dir}/tools/mke2fs.conf`).catch(() => {});
}

Deno.test({
  name: skipReason === null
    ? "vm: torus blk attach/detach on a real kernel: ext4, reattach, read-only snapshot, SIGTERM"
    : `vm: torus blk attach on a real kernel (skipped: ${skipReason})`,
  ignore: skipReason !== null,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "torus-vm-attach-" });
    try {
      await stageTools(`${work}/stage`);
      const image = `${work}/disk.img`;
      await Deno.writeFile(image, new Uint8Array());
      await Deno.truncate(image, 1024 ** 3);
      const mkfs = await run("mkfs.ext4", ["-q", "-F", "-d", `${work}/stage`, image]);
      assert.equal(mkfs.code, 0, `mkfs.ext4 of the data disk: ${mkfs.output}`);
      // Emulation is a CPU hog: at low priority it slows the tests running beside it less.
      const vm = await run("nice", [
        "-n",
        "10",
        `${tools}/vm-run.sh`,
        "--disk",
        `${image}:/vmdata`,
        "--",
        "sh tests/vm/attach_guest.sh /vmdata",
      ], { TIMEOUT: "1200" });
      // The guest's console ends lines with CR LF.
      const lines = vm.output.split("\n").map((line) => line.trimEnd());
      const steps = lines.filter((line) => line.startsWith("VMTEST-"));
      const context = `exit ${vm.code}; steps:\n${steps.join("\n")}\n--- output tail:\n` +
        lines.slice(-60).join("\n");
      assert.equal(vm.code, 0, context);
      assert.ok(steps.includes("VMTEST-OK"), context);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  },
});
