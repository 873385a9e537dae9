/**
 * A real filesystem on a torus volume, through a kernel block device on this host (which has no
 * nbd module): `nbdfuse DIR URI` exposes the export as the file DIR/nbd, `losetup` makes it
 * /dev/loopN, then mkfs.ext4, mount and a tree of files. Two ways to stop serve:
 * - unmount, SIGTERM, restart: fsck clean, files identical;
 * - `sync -f` with the filesystem still mounted, then SIGKILL, restart: the mount replays the
 *   journal, every file synced before the kill is identical, fsck is clean.
 * Needs root, /dev/fuse and /dev/loop-control; skipped with the reason otherwise.
 */

import assert from "node:assert/strict";
import { SeededRandom, testSeed } from "../../src/core/mod.ts";
import { runCommand, runOk, sameBytes } from "../support/nbd_fixture.ts";
import { E2eNode, e2eTest, MiB } from "./e2e_support.ts";

const seed = testSeed();
const COMMAND_TIMEOUT_MS = 120_000;

/** nbdfuse + a loop device (+ a mount) over one export; {@link detach} undoes it all. */
class LoopDevice {
  readonly device: string;
  readonly #fuseDir: string;
  readonly #nbdfuse: Deno.ChildProcess;
  #mountDir: string | null = null;

  private constructor(device: string, fuseDir: string, nbdfuse: Deno.ChildProcess) {
    this.device = device;
    this.#fuseDir = fuseDir;
    this.#nbdfuse = nbdfuse;
  }

  /** Runs nbdfuse on `uri` in a new dir under `dir` and attaches a loop device to its file. */
  static async attach(dir: string, uri: string): Promise<LoopDevice> {
    const fuseDir = await Deno.makeTempDir({ dir, prefix: "fuse-" });
    const pidFile = `${fuseDir}.pid`;
    // -P writes the pid file once the FUSE file is ready to use.
    const nbdfuse = new Deno.Command("nbdfuse", {
      args: ["-P", pidFile, fuseDir, uri],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    try {
      const deadline = Date.now() + COMMAND_TIMEOUT_MS;
      while (!(await exists(pidFile))) {
        if (Date.now() > deadline) throw new Error("nbdfuse did not become ready");
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const device = (await runOk("losetup", ["-f", "--show", `${fuseDir}/nbd`])).trim();
      return new LoopDevice(device, fuseDir, nbdfuse);
    } catch (error) {
      await stopNbdfuse(nbdfuse, fuseDir);
      throw error;
    }
  }

  async mount(mountDir: string): Promise<void> {
    await Deno.mkdir(mountDir, { recursive: true });
    await run("mount", [this.device, mountDir]);
    this.#mountDir = mountDir;
  }

  async unmount(): Promise<void> {
    if (this.#mountDir === null) return;
    await run("umount", [this.#mountDir]);
    this.#mountDir = null;
  }

  /**
   * Takes everything down. After serve died, the mount cannot write back any more: it is detached
   * lazily (`umount -l`), so nothing waits on the dead server.
   */
  async detach(options: { serverGone?: boolean } = {}): Promise<void> {
    if (this.#mountDir !== null) {
      const args = options.serverGone ? ["-l", this.#mountDir] : [this.#mountDir];
      await runCommand("umount", args, { timeoutMs: COMMAND_TIMEOUT_MS });
      this.#mountDir = null;
    }
    await runCommand("losetup", ["-d", this.device], { timeoutMs: COMMAND_TIMEOUT_MS });
    await stopNbdfuse(this.#nbdfuse, this.#fuseDir);
  }
}

async function stopNbdfuse(nbdfuse: Deno.ChildProcess, fuseDir: string): Promise<void> {
  // Unmounting the FUSE dir ends nbdfuse; SIGKILL is the fallback for one that hangs.
  await runCommand("umount", ["-l", fuseDir], { timeoutMs: COMMAND_TIMEOUT_MS });
  const timer = setTimeout(() => {
    try {
      nbdfuse.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, 10_000);
  await nbdfuse.status;
  clearTimeout(timer);
  await nbdfuse.stderr.cancel().catch(() => {});
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function run(command: string, args: string[]): Promise<string> {
  return await runOk(command, args, { timeoutMs: COMMAND_TIMEOUT_MS });
}

/** Writes a tree of files of random sizes under `root`; returns relative path to contents. */
async function writeTree(
  root: string,
  random: SeededRandom,
  prefix: string,
): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  for (let d = 0; d < 4; d++) {
    const dir = `${prefix}-dir${d}/sub${d % 2}`;
    await Deno.mkdir(`${root}/${dir}`, { recursive: true });
    for (let f = 0; f < 6; f++) {
      const size = random.chance(0.2) ? random.int(2 * MiB) : random.int(20_000);
      const bytes = random.bytes(size);
      const path = `${dir}/file${f}.bin`;
      await Deno.writeFile(`${root}/${path}`, bytes);
      files.set(path, bytes);
    }
  }
  return files;
}

async function assertTree(root: string, files: Map<string, Uint8Array>): Promise<void> {
  for (const [path, bytes] of files) {
    const back = await Deno.readFile(`${root}/${path}`);
    assert.ok(sameBytes(back, bytes), `${path} differs (${back.length} vs ${bytes.length} bytes)`);
  }
}

/** e2fsck -f -n: a forced, read-only check that must find nothing (exit 0). */
async function assertFsckClean(device: string): Promise<void> {
  const fsck = await runCommand("e2fsck", ["-f", "-n", device], { timeoutMs: COMMAND_TIMEOUT_MS });
  assert.equal(fsck.code, 0, `e2fsck -fn ${device}:\n${fsck.stdout}\n${fsck.stderr}`);
}

e2eTest(
  `ext4 on nbdfuse + losetup: unmount and SIGTERM, then sync and SIGKILL; fsck clean and ` +
    `files identical after each restart (seed ${seed})`,
  {
    tools: ["nbdfuse", "losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "sync"],
    root: true,
    paths: ["/dev/fuse", "/dev/loop-control"],
  },
  async () => {
    const random = new SeededRandom(seed);
    await using node = await E2eNode.start();
    await node.createVolume("fs", "128MiB");
    const mnt = `${node.dir}/mnt`;
    let loop: LoopDevice | null = null;
    try {
      loop = await LoopDevice.attach(node.dir, node.uri("fs"));
      await run("mkfs.ext4", ["-q", "-F", loop.device]);
      await loop.mount(mnt);
      const first = await writeTree(mnt, random, "first");
      await loop.unmount();
      await assertFsckClean(loop.device);
      await loop.detach();
      loop = null;
      await node.restart("SIGTERM");

      loop = await LoopDevice.attach(node.dir, node.uri("fs"));
      await assertFsckClean(loop.device);
      await loop.mount(mnt);
      await assertTree(mnt, first);
      const second = await writeTree(mnt, random, "second");
      await run("sync", ["-f", mnt]);
      await node.stop("SIGKILL");
      await loop.detach({ serverGone: true });
      loop = null;
      await node.startAgain();

      loop = await LoopDevice.attach(node.dir, node.uri("fs"));
      // Mounting replays the journal the kill left behind; then the check must be clean.
      await loop.mount(mnt);
      await assertTree(mnt, first);
      await assertTree(mnt, second);
      await loop.unmount();
      await assertFsckClean(loop.device);
    } finally {
      await loop?.detach({ serverGone: true }).catch(() => {});
    }
  },
);
