/**
 * Shared pieces of the VM tests in tests/vm/ that run a guest script through the shared tool
 * vm-run.sh (qemu TCG, a Debian kernel with nbd.ko): finding the tool and why it cannot run here
 * (the tests are skipped with that reason in their name), the data disk (an ext4 image holding
 * mke2fs and e2fsck with their libraries, which the guest's busybox lacks, and any files a test
 * adds), and running a guest command and reading its VMTEST- lines.
 * @module
 */

import assert from "node:assert/strict";

/** The project's root: where vm-run.sh runs (it copies that folder into the guest). */
export const root: string = new URL("../../", import.meta.url).pathname;
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

/** Runs a command in the project's root to its end: exit code and stdout + stderr. */
export async function run(
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

/** apt's words when another process (an install beside it, a fresh machine's apt-daily) has the lock. */
const DPKG_LOCK = /dpkg frontend lock|could not get lock|dpkg was interrupted/i;
/** How long the setup waits for a held dpkg lock before it gives up (and the VM tests skip). */
const DPKG_LOCK_WAIT_MS = 10 * 60_000;
const DPKG_LOCK_RETRY_MS = 5_000;

/**
 * Runs the tool's cached setup. A dpkg lock held by another process fails apt at once, so the
 * setup is tried again until the lock is free: on a fresh machine, `npm test` installing
 * packages (or the system's own apt timers) must not make the VM tests skip.
 */
export async function vmSetup(
  tools: string,
  wait = { totalMs: DPKG_LOCK_WAIT_MS, retryMs: DPKG_LOCK_RETRY_MS },
): Promise<{ code: number; output: string }> {
  const deadline = Date.now() + wait.totalMs;
  for (let said = false;; said = true) {
    const setup = await run(`${tools}/vm-blockdev.sh`, ["setup"]);
    if (setup.code === 0 || !DPKG_LOCK.test(setup.output) || Date.now() > deadline) return setup;
    if (!said) console.error("tests: vm-blockdev.sh setup waits for the dpkg lock");
    await new Promise((resolve) => setTimeout(resolve, wait.retryMs));
  }
}

/** Why the VM cannot run here, or null when it can (runs the tool's cached setup). */
async function whyNoVm(tools: string | null): Promise<string | null> {
  if (tools === null) return "no shared/tools/vm-run.sh beside the checkout ($TORUS_VM_BLOCKDEV)";
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") return "not x86-64 Linux";
  const setup = await vmSetup(tools);
  if (setup.code !== 0) {
    const last = setup.output.trim().split("\n").at(-1) ?? "";
    return `qemu or the guest kernel cannot be installed (vm-blockdev.sh setup: ${last})`;
  }
  return null;
}

/** The folder of vm-run.sh, or null when there is none. */
export const vmTools: string | null = findVmTools();
/** Why no VM test can run here, or null when they can. */
export const vmSkipReason: string | null = await whyNoVm(vmTools);

/** Copies the e2fsprogs tools the guest needs, with their libraries, into `dir`/tools. */
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

/**
 * Makes the guest's data disk in `work`: a 1 GiB ext4 image holding tools/ (mke2fs, e2fsck) and
 * the files `files` names (path in the image -> bytes). Returns the image's path.
 */
export async function makeDataDisk(
  work: string,
  files: Readonly<Record<string, Uint8Array>> = {},
): Promise<string> {
  const stage = `${work}/stage`;
  await stageTools(stage);
  for (const [path, bytes] of Object.entries(files)) {
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : "";
    if (dir !== "") await Deno.mkdir(`${stage}/${dir}`, { recursive: true });
    await Deno.writeFile(`${stage}/${path}`, bytes);
  }
  const image = `${work}/disk.img`;
  await Deno.writeFile(image, new Uint8Array());
  await Deno.truncate(image, 1024 ** 3);
  const mkfs = await run("mkfs.ext4", ["-q", "-F", "-d", stage, image]);
  assert.equal(mkfs.code, 0, `mkfs.ext4 of the data disk: ${mkfs.output}`);
  return image;
}

/** What a guest run printed. */
export interface GuestRun {
  /** vm-run.sh's exit status: the guest command's (124 qemu timeout, 125 no report). */
  readonly code: number;
  /** The console's lines (CR LF made LF). */
  readonly lines: readonly string[];
  /** The VMTEST- lines. */
  readonly steps: readonly string[];
  /** The exit status, the steps and the output's tail: the message of a failed assertion. */
  readonly context: string;
}

/** Options of {@link runGuest}. */
export interface GuestOptions {
  /** The data disk (see {@link makeDataDisk}) and where the guest mounts it. */
  readonly disk?: { readonly image: string; readonly mountPoint: string };
  /** vm-run.sh's TIMEOUT, in seconds. */
  readonly timeoutSeconds: number;
}

/** vm-run.sh's arguments for `command`, with the options' disk (and forwarded ports, pidfile). */
function vmRunArgs(
  command: string,
  options: GuestOptions & { forward?: StartedGuestOptions["forward"]; pidFile?: string },
): string[] {
  assert.ok(vmTools !== null, "no VM tools");
  const disk = options.disk;
  // Emulation is a CPU hog: at low priority it slows the tests running beside it less.
  return [
    "-n",
    "10",
    `${vmTools}/vm-run.sh`,
    ...(disk === undefined ? [] : ["--disk", `${disk.image}:${disk.mountPoint}`]),
    ...(options.forward ?? []).flatMap((f) => ["--fwd", `${f.hostPort}:${f.guestPort}`]),
    ...(options.pidFile === undefined ? [] : ["--pidfile", options.pidFile]),
    "--",
    command,
  ];
}

/** A run's exit status and console output as a {@link GuestRun}. */
function guestRunOf(code: number, output: string): GuestRun {
  // The guest's console ends lines with CR LF.
  const lines = output.split("\n").map((line) => line.trimEnd());
  const steps = lines.filter((line) => line.startsWith("VMTEST-"));
  const context = `exit ${code}; steps:\n${steps.join("\n")}\n--- output tail:\n` +
    lines.slice(-60).join("\n");
  return { code, lines, steps, context };
}

/** Runs the shell command `command` in the guest (the project's root is its cwd). */
export async function runGuest(command: string, options: GuestOptions): Promise<GuestRun> {
  const vm = await run("nice", vmRunArgs(command, options), {
    TIMEOUT: String(options.timeoutSeconds),
  });
  return guestRunOf(vm.code, vm.output);
}

/** Fails unless the guest exited 0 and printed VMTEST-OK. */
export function assertGuestOk(guest: GuestRun): void {
  assert.equal(guest.code, 0, guest.context);
  assert.ok(guest.steps.includes("VMTEST-OK"), guest.context);
}

/** Options of {@link startGuest}. */
export interface StartedGuestOptions extends GuestOptions {
  /** Host 127.0.0.1 ports forwarded to guest ports (guest servers listen on 0.0.0.0). */
  readonly forward?: readonly { readonly hostPort: number; readonly guestPort: number }[];
}

/** A guest started by {@link startGuest}, running until its command ends or its power is cut. */
export interface StartedGuest {
  /** Ends with the run (the exit status is 125 when the power was cut). */
  readonly done: Promise<GuestRun>;
  /**
   * Cuts the power: SIGKILLs qemu, so the guest's page cache and every write its kernel had not
   * handed to the virtual disk are gone. Resolves with what the guest printed until then.
   */
  powerCut(): Promise<GuestRun>;
}

/**
 * Starts the shell command `command` in the guest and returns at once (see {@link runGuest});
 * for a guest that serves something the test talks to through `forward`.
 */
export async function startGuest(
  command: string,
  options: StartedGuestOptions,
): Promise<StartedGuest> {
  const pidDir = await Deno.makeTempDir({ prefix: "torus-vm-pid-" });
  const pidFile = `${pidDir}/qemu.pid`;
  const child = new Deno.Command("nice", {
    args: vmRunArgs(command, { ...options, pidFile }),
    cwd: root,
    env: { TIMEOUT: String(options.timeoutSeconds) },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const done = child.output().then((result) =>
    guestRunOf(result.code, decoder.decode(result.stdout) + decoder.decode(result.stderr))
  ).finally(() => Deno.remove(pidDir, { recursive: true }).catch(() => {}));
  const powerCut = async () => {
    const deadline = Date.now() + 60_000;
    let pid = NaN;
    while (!(pid > 0) && Date.now() < deadline) {
      pid = Number((await Deno.readTextFile(pidFile).catch(() => "")).trim());
      if (!(pid > 0)) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (pid > 0) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch {
        // qemu ended meanwhile.
      }
    } else {
      child.kill("SIGKILL");
    }
    return await done;
  };
  return { done, powerCut };
}
