/**
 * The kernel's NBD devices as the system shows them: `/sys/block/nbdN` (size, and `pid` while a
 * connection is running), `/dev/nbdN`, `/proc/self/mountinfo`. Reads only; the roots are
 * injectable ({@link NbdSystemPaths}) so tests run against a fake tree.
 *
 * A device is free when its node exists, no connection runs on it (no `pid` file) and its size is
 * 0 (a size without a pid means someone is setting it up). Being free here is advisory: the claim
 * is NBD_SET_SOCK, which the kernel refuses with EBUSY to a second process (kernel.ts).
 * @module
 */

import { ErrorCode, invalid, quoteForMessage, TorusError } from "../../core/mod.ts";

/** Where sysfs, device nodes and procfs are mounted. */
export interface NbdSystemPaths {
  readonly sys: string;
  readonly dev: string;
  readonly proc: string;
}

/** The real system. */
export const SYSTEM_PATHS: NbdSystemPaths = { sys: "/sys", dev: "/dev", proc: "/proc" };

/** One `/dev/nbdN` and its state. */
export interface NbdDeviceStatus {
  readonly index: number;
  /** `/dev/nbdN`. */
  readonly path: string;
  /** Whether the device node exists (sysfs may list devices a container has no node for). */
  readonly nodeExists: boolean;
  /** The kernel task running the connection (the `pid` file), null when none runs. */
  readonly taskId: number | null;
  /** The device's size in 512-byte sectors (0 when not set up). */
  readonly sizeSectors: number;
}

/** The one-line answer on a kernel without NBD (no `/sys/block/nbdN`). */
export function noNbdSupport(paths: NbdSystemPaths = SYSTEM_PATHS): TorusError {
  return new TorusError(
    ErrorCode.NotSupported,
    `this kernel has no NBD devices (${paths.dev}/nbd0 missing): load it with modprobe nbd`,
  );
}

async function readOptional(path: string): Promise<string | null> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** The state of `/dev/nbd<index>`, or null when the kernel has no such device. */
export async function nbdDeviceStatus(
  index: number,
  paths: NbdSystemPaths,
): Promise<NbdDeviceStatus | null> {
  const dir = `${paths.sys}/block/nbd${index}`;
  const size = await readOptional(`${dir}/size`);
  if (size === null) return null;
  const pid = await readOptional(`${dir}/pid`);
  const taskId = pid === null ? null : Number.parseInt(pid.trim(), 10);
  const path = `${paths.dev}/nbd${index}`;
  return {
    index,
    path,
    nodeExists: await exists(path),
    taskId: taskId === null || Number.isNaN(taskId) ? null : taskId,
    sizeSectors: Number.parseInt(size.trim(), 10) || 0,
  };
}

/** Every NBD device the kernel has, by index. */
export async function listNbdDevices(paths: NbdSystemPaths): Promise<NbdDeviceStatus[]> {
  const indexes: number[] = [];
  try {
    for await (const entry of Deno.readDir(`${paths.sys}/block`)) {
      const match = /^nbd(\d+)$/.exec(entry.name);
      if (match) indexes.push(Number(match[1]));
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  indexes.sort((a, b) => a - b);
  const devices: NbdDeviceStatus[] = [];
  for (const index of indexes) {
    const status = await nbdDeviceStatus(index, paths);
    if (status !== null) devices.push(status);
  }
  return devices;
}

/** Whether a device may be claimed (see the module doc). */
export function isFree(status: NbdDeviceStatus): boolean {
  return status.nodeExists && status.taskId === null && status.sizeSectors === 0;
}

/**
 * The first free device whose index is not in `skip`. `not_supported` on a kernel without NBD,
 * `again` when every device is in use.
 */
export async function pickFreeDevice(
  paths: NbdSystemPaths,
  skip: ReadonlySet<number> = new Set(),
): Promise<NbdDeviceStatus> {
  const devices = await listNbdDevices(paths);
  if (devices.length === 0) throw noNbdSupport(paths);
  const free = devices.find((d) => isFree(d) && !skip.has(d.index));
  if (free !== undefined) return free;
  if (!devices.some((d) => d.nodeExists)) {
    throw new TorusError(
      ErrorCode.NotSupported,
      `the kernel has NBD devices but ${paths.dev} has no nbd nodes (a container without them?)`,
    );
  }
  throw new TorusError(
    ErrorCode.Again,
    `all ${devices.length} NBD devices are in use (modprobe nbd nbds_max=N allows more)`,
  );
}

/** The index of a device path `/dev/nbdN` (or `nbdN`); `invalid` for anything else. */
export function parseNbdDevicePath(text: string, paths: NbdSystemPaths = SYSTEM_PATHS): number {
  const match = /^nbd(\d{1,6})$/.exec(
    text.startsWith(`${paths.dev}/`) ? text.slice(paths.dev.length + 1) : text,
  );
  if (match === null) {
    throw invalid(`${quoteForMessage(text)} is not an NBD device (expected ${paths.dev}/nbdN)`);
  }
  return Number(match[1]);
}

/**
 * The state of the device at `path`: `not_supported` on a kernel without NBD, `not_exist` when
 * this device is missing.
 */
export async function requireNbdDevice(
  path: string,
  paths: NbdSystemPaths,
): Promise<NbdDeviceStatus> {
  const index = parseNbdDevicePath(path, paths);
  const status = await nbdDeviceStatus(index, paths);
  if (status === null || !status.nodeExists) {
    if ((await listNbdDevices(paths)).length === 0) throw noNbdSupport(paths);
    throw new TorusError(ErrorCode.NotExist, `no NBD device ${paths.dev}/nbd${index}`);
  }
  return status;
}

/** The process a kernel task belongs to (its thread group), for messages; the task when unknown. */
export async function processOfTask(taskId: number, paths: NbdSystemPaths): Promise<number> {
  const status = await readOptional(`${paths.proc}/${taskId}/status`).catch(() => null);
  const match = status === null ? null : /^Tgid:\s*(\d+)/m.exec(status);
  return match === null ? taskId : Number(match[1]);
}

/** Where the device or one of its partitions is mounted (mount points; empty when nowhere). */
export async function mountPointsOf(
  status: NbdDeviceStatus,
  paths: NbdSystemPaths,
): Promise<string[]> {
  const numbers = await deviceNumbers(status.index, paths);
  const mountinfo = await readOptional(`${paths.proc}/self/mountinfo`) ?? "";
  const points: string[] = [];
  for (const line of mountinfo.split("\n")) {
    const fields = line.split(" ");
    if (fields.length > 4 && numbers.has(fields[2]!)) points.push(unescapeMountPath(fields[4]!));
  }
  return points;
}

/** `MAJOR:MINOR` of the device and of each of its partitions. */
async function deviceNumbers(index: number, paths: NbdSystemPaths): Promise<Set<string>> {
  const dir = `${paths.sys}/block/nbd${index}`;
  const numbers = new Set<string>();
  const own = await readOptional(`${dir}/dev`);
  if (own !== null) numbers.add(own.trim());
  try {
    for await (const entry of Deno.readDir(dir)) {
      if (!entry.name.startsWith(`nbd${index}p`)) continue;
      const partition = await readOptional(`${dir}/${entry.name}/dev`);
      if (partition !== null) numbers.add(partition.trim());
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return numbers;
}

/** mountinfo escapes space, tab, newline and backslash as `\ooo`. */
function unescapeMountPath(text: string): string {
  return text.replace(
    /\\([0-7]{3})/g,
    (_, octal: string) => String.fromCharCode(parseInt(octal, 8)),
  );
}
