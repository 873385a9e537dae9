/**
 * ioctl(2) with an integer argument, and the caller's Linux capabilities (the kernel checks
 * CAP_SYS_ADMIN before every block-device configuration ioctl, so a command can say "needs root"
 * before it does anything).
 * @module
 */

import { callFailure, libcIo } from "./libc_io.ts";

/**
 * ioctl(2) on the main thread, for requests that return at once (configuration of a device);
 * `what` names the request in the error. Returns the call's non-negative result.
 */
export function ioctl(fd: number, request: number, arg: number | bigint, what: string): number {
  const result = libcIo().ioctl(fd, BigInt(request), BigInt(arg));
  if (result < 0) throw callFailure("ioctl", `fd ${fd}, ${what}`);
  return result;
}

/**
 * ioctl(2) on a worker thread, for requests that can wait for long (NBD_DO_IT runs until the
 * device disconnects; NBD_DISCONNECT sends over the network). Resolves to the call's result, -1
 * on failure: errno stays on the worker thread and cannot be read.
 */
export function ioctlWaiting(fd: number, request: number, arg: number | bigint): Promise<number> {
  return libcIo().ioctl_wait(fd, BigInt(request), BigInt(arg));
}

/** Linux capability numbers (linux/capability.h). */
export const Capability = { CAP_SYS_ADMIN: 21 } as const;

/**
 * Whether this process has `capability` in its effective set, from the `CapEff:` line of
 * /proc/self/status (`status` injects that file's text for tests). False when it cannot tell.
 */
export async function hasCapability(
  capability: number,
  status: () => Promise<string> = () => Deno.readTextFile("/proc/self/status"),
): Promise<boolean> {
  let text: string;
  try {
    text = await status();
  } catch {
    return false;
  }
  const match = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(text);
  if (match === null) return false;
  return ((BigInt(`0x${match[1]}`) >> BigInt(capability)) & 1n) === 1n;
}
