/**
 * The kernel NBD device's ioctls, recorded instead of sent: request numbers, argument encoding
 * (sizes beyond 32 bits), flags passed on, block size choice, and errors turned into one line.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../core/mod.ts";
import { Errno, SysError } from "../../sys/mod.ts";
import {
  type IoctlCalls,
  kernelBlockSize,
  kernelFlags,
  KernelNbdDevice,
  NbdIoctl,
} from "./kernel.ts";
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from "./protocol.ts";

interface Call {
  request: number;
  arg: number | bigint;
}

/** Records ioctls; `fail` makes a request fail with an errno. */
function recorder(fail: Map<number, number> = new Map()): { calls: Call[]; ioctl: IoctlCalls } {
  const calls: Call[] = [];
  return {
    calls,
    ioctl: {
      ioctl(_fd, request, arg, what) {
        calls.push({ request, arg });
        const errno = fail.get(request);
        if (errno !== undefined) throw new SysError("ioctl", errno, `ioctl(${what}) failed`);
        return 0;
      },
      ioctlWaiting(_fd, request, arg) {
        calls.push({ request, arg });
        return Promise.resolve(fail.has(request) ? -1 : 0);
      },
    },
  };
}

/** A regular file stands in for /dev/nbdN: it can be opened and fsynced. */
async function fakeNode(): Promise<string> {
  return await Deno.makeTempFile({ prefix: "torus-fake-nbd-" });
}

Deno.test("kernel: request numbers are _IO(0xab, n) of linux/nbd.h", () => {
  const io = (n: number) => (0xab << 8) | n;
  assert.deepEqual(NbdIoctl, {
    NBD_SET_SOCK: io(0),
    NBD_SET_BLKSIZE: io(1),
    NBD_SET_SIZE: io(2),
    NBD_DO_IT: io(3),
    NBD_CLEAR_SOCK: io(4),
    NBD_CLEAR_QUE: io(5),
    NBD_SET_SIZE_BLOCKS: io(7),
    NBD_DISCONNECT: io(8),
    NBD_SET_TIMEOUT: io(9),
    NBD_SET_FLAGS: io(10),
  });
});

Deno.test("kernel: flags pass read-only, flush, FUA and trim, nothing the kernel ignores", () => {
  const all = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
    NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN;
  assert.equal(
    kernelFlags(all),
    NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
      NBD_FLAG_SEND_TRIM,
  );
  assert.equal(kernelFlags(NBD_FLAG_SEND_FLUSH), NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
  assert.equal(kernelFlags(0), NBD_FLAG_HAS_FLAGS);
});

Deno.test("kernel: block size 4096 unless the size needs a smaller power of two", () => {
  assert.equal(kernelBlockSize(1 << 30), 4096);
  assert.equal(kernelBlockSize(1024 * 1024 + 2048), 2048);
  assert.equal(kernelBlockSize(1024 * 1024 + 512), 512);
  // Not a multiple of 512: the last partial sector is cut, the block size stays 512.
  assert.equal(kernelBlockSize(1000), 512);
  assert.throws(
    () => kernelBlockSize(1 << 30, 8192),
    (error) => isTorusError(error, ErrorCode.Invalid) && /at least 8192 bytes/.test(error.message),
  );
});

Deno.test("kernel: configure sends block size, the byte size (past 4 GiB), flags, timeout", async () => {
  const node = await fakeNode();
  const { calls, ioctl } = recorder();
  const device = KernelNbdDevice.open(node, ioctl);
  try {
    const sizeBytes = 16 * 1024 ** 4;
    device.configure({ sizeBytes, blockSizeBytes: 4096, flags: 0x2d, timeoutSeconds: 30 });
    assert.deepEqual(calls, [
      { request: NbdIoctl.NBD_SET_BLKSIZE, arg: 4096 },
      { request: NbdIoctl.NBD_SET_SIZE, arg: 17592186044416n },
      { request: NbdIoctl.NBD_SET_FLAGS, arg: 0x2d },
      { request: NbdIoctl.NBD_SET_TIMEOUT, arg: 30 },
    ]);
    calls.length = 0;
    device.configure({ sizeBytes: 4096, blockSizeBytes: 4096, flags: 1, timeoutSeconds: 0 });
    assert.ok(!calls.some((c) => c.request === NbdIoctl.NBD_SET_TIMEOUT), "no timeout when 0");
  } finally {
    device.close();
    await Deno.remove(node);
  }
});

Deno.test("kernel: claim, run, disconnect and clear send their requests", async () => {
  const node = await fakeNode();
  const { calls, ioctl } = recorder();
  const device = KernelNbdDevice.open(node, ioctl);
  try {
    device.claim(7);
    assert.equal(await device.run(), 0);
    assert.equal(await device.flush(), true);
    assert.equal(await device.disconnect(), true);
    assert.equal(await device.clearSocket(), true);
    assert.deepEqual(calls.map((c) => [c.request, c.arg]), [
      [NbdIoctl.NBD_SET_SOCK, 7],
      [NbdIoctl.NBD_DO_IT, 0],
      [NbdIoctl.NBD_DISCONNECT, 0],
      [NbdIoctl.NBD_CLEAR_SOCK, 0],
    ]);
  } finally {
    device.close();
    await Deno.remove(node);
  }
});

Deno.test("kernel: EBUSY is a busy device, EPERM needs root, in one line", async () => {
  const node = await fakeNode();
  try {
    const busy = KernelNbdDevice.open(
      node,
      recorder(new Map([[NbdIoctl.NBD_SET_SOCK, Errno.EBUSY]])).ioctl,
    );
    assert.throws(
      () => busy.claim(7),
      (error) =>
        isTorusError(error, ErrorCode.Again) &&
        error.message === `${node} is in use by another process`,
    );
    busy.close();
    const denied = KernelNbdDevice.open(
      node,
      recorder(new Map([[NbdIoctl.NBD_SET_SIZE, Errno.EPERM]])).ioctl,
    );
    assert.throws(
      () =>
        denied.configure({ sizeBytes: 4096, blockSizeBytes: 4096, flags: 1, timeoutSeconds: 0 }),
      (error) =>
        isTorusError(error) && /^configuring .* needs root \(CAP_SYS_ADMIN\)/.test(error.message),
    );
    denied.close();
  } finally {
    await Deno.remove(node);
  }
});

Deno.test("kernel: opening a missing device node says so", () => {
  assert.throws(
    () => KernelNbdDevice.open("/nonexistent/nbd0"),
    (error) => isTorusError(error) && /ENOENT/.test(error.message),
  );
});
