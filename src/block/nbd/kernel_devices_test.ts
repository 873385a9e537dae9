/** The kernel's NBD devices read from a fake /sys, /dev and /proc tree. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../core/mod.ts";
import {
  listNbdDevices,
  mountPointsOf,
  type NbdSystemPaths,
  parseNbdDevicePath,
  pickFreeDevice,
  processOfTask,
  requireNbdDevice,
} from "./kernel_devices.ts";

/** A fake tree; `devices` describes nbd0, nbd1, … in order. */
interface FakeDevice {
  /** Whether /dev/nbdN exists (default true). */
  node?: boolean;
  /** Sectors in /sys/block/nbdN/size (default 0). */
  size?: number;
  /** The `pid` file's content, when running. */
  pid?: number;
}

async function fakeTree(devices: FakeDevice[]): Promise<NbdSystemPaths & { root: string }> {
  const root = await Deno.makeTempDir({ prefix: "torus-fake-sys-" });
  const paths = { root, sys: `${root}/sys`, dev: `${root}/dev`, proc: `${root}/proc` };
  await Deno.mkdir(`${paths.sys}/block/vda`, { recursive: true });
  await Deno.mkdir(paths.dev, { recursive: true });
  await Deno.mkdir(`${paths.proc}/self`, { recursive: true });
  for (const [index, device] of devices.entries()) {
    const dir = `${paths.sys}/block/nbd${index}`;
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(`${dir}/size`, `${device.size ?? 0}\n`);
    await Deno.writeTextFile(`${dir}/dev`, `43:${index * 32}\n`);
    if (device.pid !== undefined) await Deno.writeTextFile(`${dir}/pid`, `${device.pid}\n`);
    if (device.node ?? true) await Deno.writeTextFile(`${paths.dev}/nbd${index}`, "");
  }
  return paths;
}

async function withTree(
  devices: FakeDevice[],
  body: (paths: NbdSystemPaths) => Promise<void>,
): Promise<void> {
  const tree = await fakeTree(devices);
  try {
    await body(tree);
  } finally {
    await Deno.remove(tree.root, { recursive: true });
  }
}

const rejects = (code: string, pattern: RegExp) => (error: unknown) =>
  isTorusError(error) && error.code === code && pattern.test(error.message);

Deno.test("kernel devices: the first device with no connection and no size is picked", async () => {
  await withTree([{ pid: 100, size: 2048 }, { size: 8 }, {}, {}], async (paths) => {
    const devices = await listNbdDevices(paths);
    assert.deepEqual(devices.map((d) => [d.index, d.taskId, d.sizeSectors]), [
      [0, 100, 2048],
      [1, null, 8],
      [2, null, 0],
      [3, null, 0],
    ]);
    const free = await pickFreeDevice(paths);
    assert.equal(free.path, `${paths.dev}/nbd2`);
    // A device another process claimed between our look and our claim is skipped.
    assert.equal((await pickFreeDevice(paths, new Set([2]))).index, 3);
  });
});

Deno.test("kernel devices: sorted by number, not by name", async () => {
  const devices: FakeDevice[] = Array.from({ length: 11 }, () => ({ pid: 1 }));
  devices[10] = {};
  devices[2] = {};
  await withTree(devices, async (paths) => {
    assert.equal((await pickFreeDevice(paths)).index, 2);
    assert.equal((await pickFreeDevice(paths, new Set([2]))).index, 10);
  });
});

Deno.test("kernel devices: no nbd module, no free device, no device nodes", async () => {
  await withTree([], async (paths) => {
    await assert.rejects(
      pickFreeDevice(paths),
      rejects(
        ErrorCode.NotSupported,
        /no NBD devices \(.*\/dev\/nbd0 missing\): load it with modprobe nbd$/,
      ),
    );
    await assert.rejects(
      requireNbdDevice(`${paths.dev}/nbd0`, paths),
      rejects(ErrorCode.NotSupported, /modprobe nbd/),
    );
  });
  await withTree([{ pid: 1 }, { pid: 2 }], async (paths) => {
    await assert.rejects(
      pickFreeDevice(paths),
      rejects(ErrorCode.Again, /all 2 NBD devices are in use \(modprobe nbd nbds_max=N/),
    );
    await assert.rejects(
      requireNbdDevice(`${paths.dev}/nbd5`, paths),
      rejects(ErrorCode.NotExist, /no NBD device .*\/dev\/nbd5/),
    );
  });
  await withTree([{ node: false }], async (paths) => {
    await assert.rejects(
      pickFreeDevice(paths),
      rejects(ErrorCode.NotSupported, /has no nbd nodes/),
    );
  });
});

Deno.test("kernel devices: device paths", () => {
  assert.equal(parseNbdDevicePath("/dev/nbd0"), 0);
  assert.equal(parseNbdDevicePath("nbd15"), 15);
  for (const bad of ["/dev/sda", "/dev/nbd", "/dev/nbd1p1", "/tmp/nbd0", "nbd-1", ""]) {
    assert.throws(() => parseNbdDevicePath(bad), /is not an NBD device \(expected \/dev\/nbdN\)/);
  }
});

Deno.test("kernel devices: mount points of a device and its partitions, task to process", async () => {
  await withTree([{ pid: 4243 }, {}], async (paths) => {
    await Deno.mkdir(`${paths.sys}/block/nbd0/nbd0p1`);
    await Deno.writeTextFile(`${paths.sys}/block/nbd0/nbd0p1/dev`, "43:1\n");
    await Deno.writeTextFile(
      `${paths.proc}/self/mountinfo`,
      [
        "22 1 254:1 / / rw,relatime - ext4 /dev/vda1 rw",
        "40 22 43:0 / /mnt/a rw,relatime - ext4 /dev/nbd0 rw",
        "41 22 43:1 / /mnt/with\\040space rw,relatime - ext4 /dev/nbd0p1 rw",
        "42 22 43:32 / /mnt/other rw,relatime - ext4 /dev/nbd1 rw",
        "",
      ].join("\n"),
    );
    const [nbd0, nbd1] = await listNbdDevices(paths);
    assert.deepEqual(await mountPointsOf(nbd0!, paths), ["/mnt/a", "/mnt/with space"]);
    assert.deepEqual(await mountPointsOf(nbd1!, paths), ["/mnt/other"]);
    await Deno.mkdir(`${paths.proc}/4243`);
    await Deno.writeTextFile(`${paths.proc}/4243/status`, "Name:\tdeno\nTgid:\t4200\nPid:\t4243\n");
    assert.equal(await processOfTask(4243, paths), 4200);
    assert.equal(await processOfTask(999, paths), 999);
  });
});
