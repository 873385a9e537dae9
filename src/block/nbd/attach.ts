/**
 * Kernel attach: an NBD export becomes `/dev/nbdN`. The handshake runs in user space over a TCP
 * socket made through libc ({@link FdSocket}); the socket is then handed to the kernel
 * (NBD_SET_SOCK), the device is sized and flagged from what the server said, and NBD_DO_IT runs on
 * a worker thread until the connection ends. Detach (from this process or another one) flushes,
 * sends NBD_DISCONNECT and shuts the socket with NBD_CLEAR_SOCK.
 *
 * Order, so that failures cost nothing: kernel support, the device and privileges are checked
 * before connecting; the device is claimed (NBD_SET_SOCK, the kernel's own exclusion) before it
 * is sized; an automatically picked device that another process claimed meanwhile is skipped
 * for the next free one. Every step that fails undoes the earlier ones (socket closed, device
 * released).
 * @module
 */

import { type Clock, ErrorCode, isTorusError, systemClock, TorusError } from "../../core/mod.ts";
import { Capability, close, connectTcp, type FdSocket, hasCapability } from "../../sys/mod.ts";
import { type NbdExportInfo, nbdHandshake } from "./client_handshake.ts";
import {
  type IoctlCalls,
  kernelBlockSize,
  kernelFlags,
  KernelNbdDevice,
  REAL_IOCTL,
} from "./kernel.ts";
import {
  mountPointsOf,
  type NbdDeviceStatus,
  nbdDeviceStatus,
  type NbdSystemPaths,
  pickFreeDevice,
  processOfTask,
  requireNbdDevice,
  SYSTEM_PATHS,
} from "./kernel_devices.ts";
import type { NbdTarget } from "./uri.ts";

/** How long the connect and the handshake may take by default. */
export const ATTACH_HANDSHAKE_TIMEOUT_MS = 30_000;
/** How long a started device may take to show its `pid` file (a hang guard, not a timing). */
const DEVICE_START_TIMEOUT_MS = 30_000;
/** How long a detach waits for the server to close after NBD_CMD_DISC before cutting. */
const DISCONNECT_GRACE_MS = 5_000;
const POLL_INTERVAL_MS = 20;

/** What the machine provides; tests replace parts of it. */
export interface AttachSystem {
  readonly paths: NbdSystemPaths;
  readonly clock: Clock;
  /** Whether this process may configure block devices (CAP_SYS_ADMIN). */
  isAdmin(): Promise<boolean>;
  /** Connects to the server; the stream must expose its descriptor ({@link FdSocket}). */
  connect(target: NbdTarget, ioTimeoutMs: number): Promise<FdSocket>;
  /** The device ioctls (tests record them instead). */
  readonly ioctl: IoctlCalls;
}

/** The real machine. */
export const REAL_ATTACH_SYSTEM: AttachSystem = {
  paths: SYSTEM_PATHS,
  clock: systemClock,
  isAdmin: () => hasCapability(Capability.CAP_SYS_ADMIN),
  connect: (target, ioTimeoutMs) => connectTcp(target.hostname, target.port, { ioTimeoutMs }),
  ioctl: REAL_IOCTL,
};

/** Options of {@link attachKernelNbd}. */
export interface AttachOptions {
  readonly target: NbdTarget;
  /** `/dev/nbdN` to use; null picks the first free one. */
  readonly devicePath: string | null;
  /** NBD_SET_TIMEOUT in seconds; 0 for none. */
  readonly timeoutSeconds: number;
  readonly handshakeTimeoutMs?: number;
  readonly system?: AttachSystem;
}

/** How an attachment ended. */
export interface AttachEnd {
  /** `detached`: this process asked; `disconnected`: the connection ended without our asking. */
  readonly reason: "detached" | "disconnected";
  /** NBD_DO_IT's result: 0 after a disconnect request or a server close, -1 on error/timeout. */
  readonly result: number;
}

/** Checks what can be checked before connecting: NBD support, the device, privileges. */
async function preflight(
  options: AttachOptions,
  system: AttachSystem,
): Promise<NbdDeviceStatus | null> {
  let chosen: NbdDeviceStatus | null = null;
  if (options.devicePath !== null) {
    chosen = await requireNbdDevice(options.devicePath, system.paths);
    await requireUnused(chosen, system.paths);
  } else {
    await pickFreeDevice(system.paths);
  }
  if (!(await system.isAdmin())) {
    throw new TorusError(
      ErrorCode.Invalid,
      "attaching an NBD device needs root (CAP_SYS_ADMIN)",
    );
  }
  return chosen;
}

/** `again` naming who uses the device, when it is not free. */
async function requireUnused(status: NbdDeviceStatus, paths: NbdSystemPaths): Promise<void> {
  if (status.taskId !== null) {
    const pid = await processOfTask(status.taskId, paths);
    throw new TorusError(ErrorCode.Again, `${status.path} is in use (attached by process ${pid})`);
  }
  if (status.sizeSectors !== 0) {
    throw new TorusError(ErrorCode.Again, `${status.path} is in use (being set up)`);
  }
}

/** Connects and negotiates; the socket is closed when the server refuses. */
async function negotiate(
  options: AttachOptions,
  system: AttachSystem,
): Promise<{ socket: FdSocket; info: NbdExportInfo }> {
  const timeoutMs = options.handshakeTimeoutMs ?? ATTACH_HANDSHAKE_TIMEOUT_MS;
  const socket = await system.connect(options.target, timeoutMs);
  try {
    const info = await nbdHandshake(socket, options.target.exportName);
    return { socket, info };
  } catch (error) {
    socket.close();
    throw error;
  }
}

/**
 * Opens and claims a device for the socket: the given one, or the first free one (skipping any
 * another process claims between our look and our claim).
 */
async function claimDevice(
  chosen: NbdDeviceStatus | null,
  socketFd: number,
  system: AttachSystem,
): Promise<KernelNbdDevice> {
  const skipped = new Set<number>();
  for (;;) {
    const status = chosen ?? await pickFreeDevice(system.paths, skipped);
    const device = KernelNbdDevice.open(status.path, system.ioctl);
    try {
      device.claim(socketFd);
      return device;
    } catch (error) {
      device.close();
      if (chosen !== null || !isTorusError(error, ErrorCode.Again)) throw error;
      skipped.add(status.index);
    }
  }
}

/** Attaches `options.target` to a kernel NBD device; see the module doc. */
export async function attachKernelNbd(options: AttachOptions): Promise<KernelAttachment> {
  const system = options.system ?? REAL_ATTACH_SYSTEM;
  const chosen = await preflight(options, system);
  const { socket, info } = await negotiate(options, system);
  if (info.sizeBytes < 512) {
    socket.close();
    throw new TorusError(ErrorCode.Invalid, `export "${info.name}" is smaller than one sector`);
  }
  let socketFd: number;
  let blockSizeBytes: number;
  try {
    blockSizeBytes = kernelBlockSize(info.sizeBytes, info.blockSize?.minimumBytes);
    socketFd = socket.release();
  } catch (error) {
    socket.close();
    throw error;
  }
  let device: KernelNbdDevice;
  try {
    device = await claimDevice(chosen, socketFd, system);
  } finally {
    // The kernel holds its own reference once claimed; ours is not needed either way.
    close(socketFd);
  }
  try {
    device.configure({
      sizeBytes: info.sizeBytes - info.sizeBytes % blockSizeBytes,
      blockSizeBytes,
      flags: kernelFlags(info.transmissionFlags),
      timeoutSeconds: options.timeoutSeconds,
    });
  } catch (error) {
    await device.clearSocket();
    device.close();
    throw error;
  }
  return await KernelAttachment.start(device, { info, blockSizeBytes, system });
}

/** A running kernel NBD device. {@link ended} settles when it stops, however that happens. */
export class KernelAttachment {
  readonly devicePath: string;
  readonly info: NbdExportInfo;
  readonly blockSizeBytes: number;
  /** The size the kernel shows (a whole number of blocks). */
  readonly sizeBytes: number;
  readonly ended: Promise<AttachEnd>;
  readonly #device: KernelNbdDevice;
  readonly #running: Promise<number>;
  readonly #clock: Clock;
  readonly #paths: NbdSystemPaths;
  #detaching: Promise<void> | null = null;

  private constructor(
    device: KernelNbdDevice,
    running: Promise<number>,
    details: { info: NbdExportInfo; blockSizeBytes: number; system: AttachSystem },
  ) {
    this.#device = device;
    this.#running = running;
    this.#clock = details.system.clock;
    this.#paths = details.system.paths;
    this.devicePath = device.path;
    this.info = details.info;
    this.blockSizeBytes = details.blockSizeBytes;
    this.sizeBytes = details.info.sizeBytes - details.info.sizeBytes % details.blockSizeBytes;
    this.ended = this.#finish();
  }

  /** Where the device or its partitions are mounted now. */
  mountPoints(): Promise<string[]> {
    return mountedOn(this.devicePath, this.#paths);
  }

  /** Starts NBD_DO_IT and waits until the kernel shows the device running. */
  static async start(
    device: KernelNbdDevice,
    details: { info: NbdExportInfo; blockSizeBytes: number; system: AttachSystem },
  ): Promise<KernelAttachment> {
    const running = device.run();
    const attachment = new KernelAttachment(device, running, details);
    const index = Number(/(\d+)$/.exec(device.path)![1]);
    const started = await waitForStart(index, running, details.system);
    if (started === null) {
      // NBD_DO_IT may still be waiting: cut the connection so it returns.
      await attachment.detach({ force: true });
      const end = await attachment.ended;
      throw new TorusError(
        ErrorCode.Unavailable,
        `the kernel did not start ${device.path} (NBD_DO_IT returned ${end.result})`,
      );
    }
    const kernelBytes = started.sizeSectors * 512;
    if (kernelBytes !== attachment.sizeBytes) {
      // A device of the wrong size would cut off or invent data: never leave it attached.
      await attachment.detach({ force: true });
      await attachment.ended;
      throw new TorusError(
        ErrorCode.Unavailable,
        `the kernel started ${device.path} with ${kernelBytes} bytes, not the export's ` +
          `${attachment.sizeBytes}; detached it`,
      );
    }
    return attachment;
  }

  /**
   * Detaches: flushes the device (unless `force`), NBD_DISCONNECT, waits a little for the server
   * to close, NBD_CLEAR_SOCK, then waits for NBD_DO_IT to return. A second call with `force`
   * cuts the connection at once even while the first waits for a flush.
   */
  detach(options: { force?: boolean } = {}): Promise<void> {
    if (options.force) {
      const cut = this.#device.clearSocket().then(() => this.ended).then(() => {});
      this.#detaching ??= cut;
      return cut;
    }
    this.#detaching ??= this.#detachGently();
    return this.#detaching;
  }

  async #detachGently(): Promise<void> {
    await this.#device.flush();
    await this.#device.disconnect();
    const stopWaiting = new AbortController();
    const grace = this.#clock.sleep(DISCONNECT_GRACE_MS, stopWaiting.signal).then(
      () => "grace" as const,
      () => "ended" as const,
    );
    const first = await Promise.race([this.#running.then(() => "ended" as const), grace]);
    // No timer outlives the detach (it would keep a test, or the process, waiting).
    stopWaiting.abort();
    if (first !== "ended") await this.#device.clearSocket();
    await this.ended;
  }

  async #finish(): Promise<AttachEnd> {
    const result = await this.#running;
    const reason = this.#detaching === null ? "disconnected" : "detached";
    // Leaves the device reusable however the connection ended (a no-op after a detach).
    await this.#device.clearSocket();
    this.#device.close();
    return { reason, result };
  }
}

/**
 * Polls sysfs until the device runs (its `pid` file) and has its size (the kernel creates the
 * file before it sets the size): that state, the running state with whatever size it showed when
 * time ran out, or null when NBD_DO_IT returned first or it never ran.
 */
async function waitForStart(
  index: number,
  running: Promise<number>,
  system: AttachSystem,
): Promise<NbdDeviceStatus | null> {
  let returned = false;
  void running.then(() => returned = true);
  let seenRunning: NbdDeviceStatus | null = null;
  const deadlineMs = system.clock.nowMs() + DEVICE_START_TIMEOUT_MS;
  while (!returned && system.clock.nowMs() < deadlineMs) {
    const status = await nbdDeviceStatus(index, system.paths);
    if (status !== null && status.taskId !== null) {
      if (status.sizeSectors !== 0) return status;
      seenRunning = status;
    }
    await system.clock.sleep(POLL_INTERVAL_MS);
  }
  return returned ? null : seenRunning;
}

async function mountedOn(devicePath: string, paths: NbdSystemPaths): Promise<string[]> {
  const status = await requireNbdDevice(devicePath, paths);
  return await mountPointsOf(status, paths);
}

/** Options of {@link detachKernelNbd}. */
export interface DetachOptions {
  readonly paths?: NbdSystemPaths;
  readonly clock?: Clock;
  /** Whether this process may configure block devices (CAP_SYS_ADMIN). */
  readonly isAdmin?: () => Promise<boolean>;
  readonly ioctl?: IoctlCalls;
}

/**
 * Detaches `/dev/nbdN` from any process (as `nbd-client -d`): refuses a device that is not
 * attached or is mounted, flushes it, sends NBD_DISCONNECT and NBD_CLEAR_SOCK, and waits until
 * the kernel shows it stopped.
 */
export async function detachKernelNbd(
  devicePath: string,
  options: DetachOptions = {},
): Promise<void> {
  const paths = options.paths ?? SYSTEM_PATHS;
  const clock = options.clock ?? systemClock;
  const status = await requireNbdDevice(devicePath, paths);
  if (status.taskId === null) {
    throw new TorusError(ErrorCode.NotExist, `${status.path} is not attached`);
  }
  const isAdmin = options.isAdmin ?? (() => hasCapability(Capability.CAP_SYS_ADMIN));
  if (!(await isAdmin())) {
    throw new TorusError(ErrorCode.Invalid, "detaching an NBD device needs root (CAP_SYS_ADMIN)");
  }
  const mounts = await mountPointsOf(status, paths);
  if (mounts.length > 0) {
    throw new TorusError(
      ErrorCode.Again,
      `${status.path} is mounted on ${mounts.join(", ")}: unmount it first`,
    );
  }
  const device = KernelNbdDevice.open(status.path, options.ioctl ?? REAL_IOCTL);
  try {
    await device.flush();
    await device.disconnect();
    await device.clearSocket();
  } finally {
    device.close();
  }
  const deadlineMs = clock.nowMs() + DEVICE_START_TIMEOUT_MS;
  while (clock.nowMs() < deadlineMs) {
    const now = await nbdDeviceStatus(status.index, paths);
    if (now === null || now.taskId === null) return;
    await clock.sleep(POLL_INTERVAL_MS);
  }
  throw new TorusError(
    ErrorCode.Unavailable,
    `${status.path} did not stop within ${DEVICE_START_TIMEOUT_MS / 1000} s`,
  );
}
