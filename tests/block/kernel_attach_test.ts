/**
 * Kernel attach on this host, which has no nbd module: the real handshake over a libc socket to a
 * real NBD server (in this process), against a fake kernel — a fake /sys, /dev and /proc tree and
 * ioctls recorded instead of sent, whose NBD_DO_IT runs until NBD_DISCONNECT or NBD_CLEAR_SOCK.
 * What the real kernel does with the ioctls is tested in tests/vm/attach_test.ts.
 */

import assert from "node:assert/strict";
import {
  attachKernelNbd,
  type AttachSystem,
  detachKernelNbd,
  type IoctlCalls,
  MemoryDevice,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NbdIoctl,
  type NbdSystemPaths,
  REAL_ATTACH_SYSTEM,
} from "../../src/block/mod.ts";
import { ErrorCode, isTorusError, ManualClock } from "../../src/core/mod.ts";
import { eventually, NbdFixture } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;

interface Call {
  device: string;
  request: number;
  arg: number | bigint;
}

/**
 * The kernel's side: records ioctls by device name (`nbd0`), checks that NBD_SET_SOCK gets a
 * connected socket, and runs NBD_DO_IT as the kernel shows it (a `pid` file and a size in sysfs)
 * until NBD_DISCONNECT, NBD_CLEAR_SOCK or {@link FakeKernel.serverClosed}.
 */
class FakeKernel implements IoctlCalls {
  readonly calls: Call[] = [];
  /** What NBD_SET_SOCK's descriptor was (`socket:[…]`). */
  readonly socketLinks: string[] = [];
  readonly #running = new Map<string, (result: number) => void>();
  readonly #paths: NbdSystemPaths;
  readonly #sizes = new Map<string, bigint>();
  /** Sectors the kernel shows regardless of NBD_SET_SIZE (a kernel that got it wrong). */
  shownSectors: bigint | null = null;
  /** NBD_DISCONNECT is sent but the server never closes (only NBD_CLEAR_SOCK ends it). */
  serverIgnoresDisconnect = false;

  constructor(paths: NbdSystemPaths) {
    this.#paths = paths;
  }

  #name(fd: number): string {
    const target = Deno.readLinkSync(`/proc/self/fd/${fd}`);
    return target.slice(target.lastIndexOf("/") + 1);
  }

  requests(device: string): number[] {
    return this.calls.filter((c) => c.device === device).map((c) => c.request);
  }

  ioctl(fd: number, request: number, arg: number | bigint): number {
    const device = this.#name(fd);
    this.calls.push({ device, request, arg });
    if (request === NbdIoctl.NBD_SET_SOCK) {
      this.socketLinks.push(Deno.readLinkSync(`/proc/self/fd/${Number(arg)}`));
    }
    if (request === NbdIoctl.NBD_SET_SIZE) this.#sizes.set(device, BigInt(arg));
    return 0;
  }

  ioctlWaiting(fd: number, request: number, arg: number | bigint): Promise<number> {
    const device = this.#name(fd);
    this.calls.push({ device, request, arg });
    const dir = `${this.#paths.sys}/block/${device}`;
    if (request === NbdIoctl.NBD_DO_IT) {
      Deno.writeTextFileSync(`${dir}/pid`, `${Deno.pid}\n`);
      const sectors = this.shownSectors ?? (this.#sizes.get(device) ?? 0n) / 512n;
      Deno.writeTextFileSync(`${dir}/size`, `${sectors}\n`);
      return new Promise((resolve) => this.#running.set(device, resolve));
    }
    const ends = request === NbdIoctl.NBD_CLEAR_SOCK ||
      (request === NbdIoctl.NBD_DISCONNECT && !this.serverIgnoresDisconnect);
    if (ends) this.#stop(device, 0);
    return Promise.resolve(0);
  }

  /** The server went away: NBD_DO_IT returns `result` without anyone asking. */
  serverClosed(device: string, result: number): void {
    this.#stop(device, result);
  }

  /** Stops the connection of `device`, also one another process started (a busy device). */
  #stop(device: string, result: number): void {
    const dir = `${this.#paths.sys}/block/${device}`;
    try {
      Deno.removeSync(`${dir}/pid`);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    Deno.writeTextFileSync(`${dir}/size`, "0\n");
    const resolve = this.#running.get(device);
    this.#running.delete(device);
    resolve?.(result);
  }
}

/** A fake machine with `devices` NBD devices; `busy` of them run a connection of task 4242. */
async function fakeMachine(
  devices: number,
  options: { busy?: number[]; admin?: boolean } = {},
): Promise<{ system: AttachSystem; kernel: FakeKernel; paths: NbdSystemPaths } & AsyncDisposable> {
  const root = await Deno.makeTempDir({ prefix: "torus-fake-kernel-" });
  const paths = { sys: `${root}/sys`, dev: `${root}/dev`, proc: `${root}/proc` };
  await Deno.mkdir(`${paths.proc}/self`, { recursive: true });
  await Deno.writeTextFile(`${paths.proc}/self/mountinfo`, "");
  await Deno.mkdir(paths.dev, { recursive: true });
  for (let i = 0; i < devices; i++) {
    const dir = `${paths.sys}/block/nbd${i}`;
    await Deno.mkdir(dir, { recursive: true });
    const busy = options.busy?.includes(i) ?? false;
    await Deno.writeTextFile(`${dir}/size`, busy ? "2048\n" : "0\n");
    await Deno.writeTextFile(`${dir}/dev`, `43:${i * 32}\n`);
    if (busy) await Deno.writeTextFile(`${dir}/pid`, "4242\n");
    await Deno.writeTextFile(`${paths.dev}/nbd${i}`, "");
  }
  const kernel = new FakeKernel(paths);
  const system: AttachSystem = {
    ...REAL_ATTACH_SYSTEM,
    paths,
    isAdmin: () => Promise.resolve(options.admin ?? true),
    ioctl: kernel,
  };
  return {
    system,
    kernel,
    paths,
    [Symbol.asyncDispose]: () => Deno.remove(root, { recursive: true }),
  };
}

const target = (fixture: NbdFixture, exportName: string) => ({
  hostname: "127.0.0.1",
  port: fixture.port,
  exportName,
});

Deno.test("attach: hands a negotiated socket to the first free device, sized and flagged", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: 64 * MiB } });
  await using machine = await fakeMachine(3, { busy: [0] });
  const attachment = await attachKernelNbd({
    target: target(fixture, "vol"),
    devicePath: null,
    timeoutSeconds: 30,
    system: machine.system,
  });
  assert.equal(attachment.devicePath, `${machine.paths.dev}/nbd1`);
  assert.equal(attachment.sizeBytes, 64 * MiB);
  assert.equal(attachment.blockSizeBytes, 4096);
  const calls = machine.kernel.calls.filter((c) => c.request !== NbdIoctl.NBD_SET_SOCK);
  assert.deepEqual(calls, [
    { device: "nbd1", request: NbdIoctl.NBD_SET_BLKSIZE, arg: 4096 },
    { device: "nbd1", request: NbdIoctl.NBD_SET_SIZE, arg: BigInt(64 * MiB) },
    {
      device: "nbd1",
      request: NbdIoctl.NBD_SET_FLAGS,
      arg: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM,
    },
    { device: "nbd1", request: NbdIoctl.NBD_SET_TIMEOUT, arg: 30 },
    { device: "nbd1", request: NbdIoctl.NBD_DO_IT, arg: 0 },
  ]);
  assert.equal(machine.kernel.requests("nbd1")[0], NbdIoctl.NBD_SET_SOCK);
  assert.match(machine.kernel.socketLinks[0]!, /^socket:\[\d+\]$/);

  await attachment.detach();
  assert.deepEqual(await attachment.ended, { reason: "detached", result: 0 });
  assert.deepEqual(machine.kernel.requests("nbd1").slice(-3), [
    NbdIoctl.NBD_DO_IT,
    NbdIoctl.NBD_DISCONNECT,
    // The end of NBD_DO_IT always clears the socket, so the device can be reused.
    NbdIoctl.NBD_CLEAR_SOCK,
  ]);
});

Deno.test("attach: a snapshot (a read-only export) is attached read-only", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: 8 * MiB } });
  fixture.addExport("vol@snap", new MemoryDevice({ sizeBytes: 8 * MiB, readOnly: true }));
  await using machine = await fakeMachine(1);
  const attachment = await attachKernelNbd({
    target: target(fixture, "vol@snap"),
    devicePath: `${machine.paths.dev}/nbd0`,
    timeoutSeconds: 0,
    system: machine.system,
  });
  const flags = machine.kernel.calls.find((c) => c.request === NbdIoctl.NBD_SET_FLAGS)!.arg;
  assert.equal(Number(flags) & NBD_FLAG_READ_ONLY, NBD_FLAG_READ_ONLY);
  assert.ok(!machine.kernel.calls.some((c) => c.request === NbdIoctl.NBD_SET_TIMEOUT));
  await attachment.detach();
  await attachment.ended;
});

Deno.test("attach: an export whose size is not a multiple of 4096 gets smaller blocks", async () => {
  await using fixture = await NbdFixture.start({ exports: { odd: MiB + 1536 } });
  await using machine = await fakeMachine(1);
  const attachment = await attachKernelNbd({
    target: target(fixture, "odd"),
    devicePath: null,
    timeoutSeconds: 0,
    system: machine.system,
  });
  assert.equal(attachment.blockSizeBytes, 512);
  assert.equal(attachment.sizeBytes, MiB + 1536);
  await attachment.detach();
  await attachment.ended;
});

Deno.test("attach: a server that ignores the disconnect is cut after a grace period", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: MiB } });
  await using machine = await fakeMachine(1);
  machine.kernel.serverIgnoresDisconnect = true;
  const clock = new ManualClock(0);
  const attachment = await attachKernelNbd({
    target: target(fixture, "vol"),
    devicePath: null,
    timeoutSeconds: 0,
    system: { ...machine.system, clock },
  });
  let detached = false;
  const detaching = attachment.detach().then(() => detached = true);
  await eventually(
    () => machine.kernel.requests("nbd0").includes(NbdIoctl.NBD_DISCONNECT),
    "the disconnect is sent",
  );
  await clock.advance(4_000);
  assert.equal(detached, false, "still waiting for the server within the grace period");
  await clock.advance(1_000);
  await eventually(() => detached, "the detach cuts the connection after the grace period");
  await detaching;
  assert.deepEqual(machine.kernel.requests("nbd0").slice(-3), [
    NbdIoctl.NBD_DISCONNECT,
    NbdIoctl.NBD_CLEAR_SOCK,
    NbdIoctl.NBD_CLEAR_SOCK,
  ]);
  assert.deepEqual(await attachment.ended, { reason: "detached", result: 0 });
});

Deno.test("attach: a connection ended by the server ends the attachment as disconnected", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: MiB } });
  await using machine = await fakeMachine(1);
  const attachment = await attachKernelNbd({
    target: target(fixture, "vol"),
    devicePath: null,
    timeoutSeconds: 0,
    system: machine.system,
  });
  machine.kernel.serverClosed("nbd0", -1);
  assert.deepEqual(await attachment.ended, { reason: "disconnected", result: -1 });
});

Deno.test("attach: a device the kernel started with another size is detached, not used", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: 64 * MiB } });
  await using machine = await fakeMachine(1);
  machine.kernel.shownSectors = 1024n;
  await assert.rejects(
    attachKernelNbd({
      target: target(fixture, "vol"),
      devicePath: null,
      timeoutSeconds: 0,
      system: machine.system,
    }),
    (error) =>
      isTorusError(error, ErrorCode.Unavailable) &&
      /started .*nbd0 with 524288 bytes, not the export's 67108864; detached it$/.test(
        error.message,
      ),
  );
  // Cut at once (no flush of a device that must not be used), then cleared for reuse.
  const requests = machine.kernel.requests("nbd0");
  const afterStart = requests.slice(requests.indexOf(NbdIoctl.NBD_DO_IT) + 1);
  assert.ok(afterStart.length > 0 && afterStart.every((r) => r === NbdIoctl.NBD_CLEAR_SOCK));
  assert.equal(Deno.readTextFileSync(`${machine.paths.sys}/block/nbd0/size`), "0\n");
});

Deno.test("attach: refusals come before any device is touched, in one line", async () => {
  await using fixture = await NbdFixture.start({ exports: { vol: MiB } });
  const cases: [string, Parameters<typeof fakeMachine>, string | null, string, RegExp][] = [
    ["unknown volume", [1], null, "nope", /"nope"/],
    ["not root", [1, { admin: false }], null, "vol", /needs root \(CAP_SYS_ADMIN\)/],
    [
      "busy device",
      [2, { busy: [1] }],
      "nbd1",
      "vol",
      /nbd1 is in use \(attached by process 4242\)/,
    ],
    ["all busy", [1, { busy: [0] }], null, "vol", /all 1 NBD devices are in use/],
    ["no nbd module", [0], null, "vol", /no NBD devices .*: load it with modprobe nbd/],
    ["no such device", [1], "nbd7", "vol", /no NBD device .*nbd7/],
  ];
  for (const [what, machineArgs, device, exportName, message] of cases) {
    await using machine = await fakeMachine(...machineArgs);
    await assert.rejects(
      attachKernelNbd({
        target: target(fixture, exportName),
        devicePath: device === null ? null : `${machine.paths.dev}/${device}`,
        timeoutSeconds: 0,
        system: machine.system,
      }),
      (error) =>
        isTorusError(error) && message.test(error.message) && !error.message.includes("\n"),
      what,
    );
    assert.deepEqual(machine.kernel.calls, [], `${what}: no ioctl`);
  }
});

Deno.test("attach: nothing listening gets `unavailable` naming the address", async () => {
  await using machine = await fakeMachine(1);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await assert.rejects(
    attachKernelNbd({
      target: { hostname: "127.0.0.1", port, exportName: "vol" },
      devicePath: null,
      timeoutSeconds: 0,
      system: machine.system,
    }),
    (error) =>
      isTorusError(error, ErrorCode.Unavailable) &&
      error.message.includes(`cannot connect to 127.0.0.1 port ${port}`),
  );
});

Deno.test("detach: refuses a device that is not attached or is mounted, else disconnects", async () => {
  await using machine = await fakeMachine(2, { busy: [1] });
  const options = {
    paths: machine.paths,
    ioctl: machine.kernel,
    isAdmin: () => Promise.resolve(true),
  };
  await assert.rejects(
    detachKernelNbd(`${machine.paths.dev}/nbd0`, options),
    (error) =>
      isTorusError(error, ErrorCode.NotExist) && /nbd0 is not attached$/.test(error.message),
  );
  await Deno.writeTextFile(
    `${machine.paths.proc}/self/mountinfo`,
    "40 22 43:32 / /mnt/a rw,relatime - ext4 /dev/nbd1 rw\n",
  );
  await assert.rejects(
    detachKernelNbd(`${machine.paths.dev}/nbd1`, options),
    (error) =>
      isTorusError(error, ErrorCode.Again) &&
      /mounted on \/mnt\/a: unmount it first/.test(error.message),
  );
  await assert.rejects(
    detachKernelNbd(`${machine.paths.dev}/nbd1`, {
      ...options,
      isAdmin: () => Promise.resolve(false),
    }),
    /needs root/,
  );
  await Deno.writeTextFile(`${machine.paths.proc}/self/mountinfo`, "");
  // The fake kernel stops the connection on NBD_DISCONNECT, as the real one does.
  await detachKernelNbd(`${machine.paths.dev}/nbd1`, options);
  assert.deepEqual(machine.kernel.requests("nbd1"), [
    NbdIoctl.NBD_DISCONNECT,
    NbdIoctl.NBD_CLEAR_SOCK,
  ]);
});
