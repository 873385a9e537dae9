/**
 * `torus blk` with a fake machine: argument parsing, where a bare volume's server is found
 * (serve.json), the subcommand names, signals turned into detaches, and the messages.
 */

import assert from "node:assert/strict";
import { type Io, runCommand } from "../cli/mod.ts";
import { ErrorCode, TorusError } from "../core/mod.ts";
import {
  type AttachEnd,
  type AttachOptions,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
} from "../block/mod.ts";
import { type Attachment, blkCommand, type BlkDeps } from "./blk.ts";
import type { ServeInfo } from "./node.ts";

const MiB = 1024 * 1024;

interface Captured extends Io {
  out: string;
  err: string;
}

function capture(): Captured {
  const io = {
    out: "",
    err: "",
    stdout: (text: string) => void (io.out += text),
    stderr: (text: string) => void (io.err += text),
  };
  return io;
}

/** A fake attachment that ends when detached (or when `end` is called). */
function fakeAttachment(options: AttachOptions, readOnly: boolean) {
  let finish!: (end: AttachEnd) => void;
  const ended = new Promise<AttachEnd>((resolve) => finish = resolve);
  const detaches: ({ force?: boolean } | undefined)[] = [];
  const attachment: Attachment = {
    devicePath: options.devicePath ?? "/dev/nbd0",
    info: {
      name: options.target.exportName,
      sizeBytes: 64 * MiB,
      transmissionFlags: NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
        NBD_FLAG_SEND_TRIM | (readOnly ? NBD_FLAG_READ_ONLY : 0),
      readOnly,
      blockSize: null,
      description: null,
    },
    blockSizeBytes: 4096,
    sizeBytes: 64 * MiB,
    ended,
    mountPoints: () => Promise.resolve(["/mnt/x"]),
    detach(detachOptions) {
      detaches.push(detachOptions);
      finish({ reason: "detached", result: 0 });
      return Promise.resolve();
    },
  };
  return { attachment, detaches, end: (end: AttachEnd) => finish(end) };
}

interface FakeMachine {
  deps: BlkDeps;
  attached: AttachOptions[];
  detached: string[];
  /** The flags each in-process cluster client was started with, and whether it was closed. */
  clusterClients: { values: Record<string, unknown>; closed: boolean; attachedBefore: number }[];
  /** Fires a stop signal at the running attach. */
  signal(name: Deno.Signal): void;
  last(): ReturnType<typeof fakeAttachment>;
}

function fakeMachine(
  options: {
    serveJson?: Record<string, ServeInfo | null>;
    env?: Record<string, string>;
    attachError?: Error;
    /** Ends each attachment by itself (the connection closed) instead of waiting for a signal. */
    endBy?: AttachEnd;
  } = {},
): FakeMachine {
  const attached: AttachOptions[] = [];
  const detached: string[] = [];
  const attachments: ReturnType<typeof fakeAttachment>[] = [];
  const clusterClients: FakeMachine["clusterClients"] = [];
  let handler: ((signal: Deno.Signal) => void) | null = null;
  const deps: BlkDeps = {
    env: { get: (name) => options.env?.[name] },
    readServeInfo: (dataDir) => Promise.resolve(options.serveJson?.[dataDir] ?? null),
    attach(attachOptions) {
      attached.push(attachOptions);
      if (options.attachError) return Promise.reject(options.attachError);
      const fake = fakeAttachment(attachOptions, attachOptions.target.exportName.includes("@"));
      attachments.push(fake);
      // Signals arrive once the command listens; a self-ending fake ends on the next turn.
      if (options.endBy) setTimeout(() => fake.end(options.endBy!), 0);
      return Promise.resolve(fake.attachment);
    },
    detach(devicePath) {
      detached.push(devicePath);
      return Promise.resolve();
    },
    onStopSignal(h) {
      handler = h;
      return () => handler = null;
    },
    startClusterNbd(values) {
      const client = { values, closed: false, attachedBefore: attached.length };
      clusterClients.push(client);
      return Promise.resolve({
        address: { hostname: "127.0.0.1", port: 45678 },
        close: () => {
          // Closed only once the device is detached (the kernel's flush reached it first).
          client.closed = attachments.every((a) => a.detaches.length > 0);
          return Promise.resolve();
        },
      });
    },
  };
  return {
    deps,
    attached,
    detached,
    clusterClients,
    signal: (name) => handler?.(name),
    last: () => attachments.at(-1)!,
  };
}

/** Runs `torus blk ARGS`; `whileRunning` is called once the attach listens for signals. */
async function blk(
  machine: FakeMachine,
  args: string[],
  whileRunning: () => void = () => machine.signal("SIGINT"),
): Promise<{ code: number; out: string; err: string }> {
  const io = capture();
  const running = runCommand(blkCommand(machine.deps), args, io);
  // Let the command reach its wait; a command that failed early has already settled.
  for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 0));
  whileRunning();
  const code = await running;
  return { code, out: io.out, err: io.err };
}

Deno.test("blk attach: a bare volume goes to the NBD server named in the data dir's serve.json", async () => {
  const machine = fakeMachine({
    serveJson: { "/d": { pid: 77, nbd: "0.0.0.0:4444" } },
    env: { TORUS_DATA_DIR: "/d" },
  });
  const result = await blk(machine, ["attach", "vol"]);
  assert.equal(result.code, 0, result.err);
  assert.deepEqual(machine.attached, [{
    // Listening on every address means: reach it on this machine.
    target: { hostname: "127.0.0.1", port: 4444, exportName: "vol" },
    devicePath: null,
    timeoutSeconds: 0,
  }]);
  assert.match(
    result.out,
    /^Attached nbd:\/\/127\.0\.0\.1:4444\/vol to \/dev\/nbd0 \(64 MiB, read-write, 4096-byte blocks, flush\+fua\+trim\)\.\n/,
  );
  assert.match(
    result.out,
    /Received SIGINT: flushing and detaching \/dev\/nbd0\nDetached \/dev\/nbd0\.\n$/,
  );
  assert.match(result.err, /warning: \/dev\/nbd0 is still mounted on \/mnt\/x/);
});

Deno.test("blk attach: --data-dir, --nbd and nbd:// choose the server", async () => {
  const machine = fakeMachine({ serveJson: { "/other": { pid: 5, nbd: "[::]:10900" } } });
  assert.equal(
    (await blk(machine, ["attach", "--data-dir", "/other", "v@s", "/dev/nbd3"])).code,
    0,
  );
  assert.equal((await blk(machine, ["attach", "--nbd", "10.1.2.3:999", "v"])).code, 0);
  assert.equal(
    (await blk(machine, ["attach", "nbd://h.example:1234/v%20x", "--timeout", "2m"])).code,
    0,
  );
  assert.deepEqual(machine.attached.map((a) => [a.target, a.devicePath, a.timeoutSeconds]), [
    [{ hostname: "::1", port: 10900, exportName: "v@s" }, "/dev/nbd3", 0],
    [{ hostname: "10.1.2.3", port: 999, exportName: "v" }, null, 0],
    [{ hostname: "h.example", port: 1234, exportName: "v x" }, null, 120],
  ]);
});

Deno.test("blk attach: a snapshot is reported read-only", async () => {
  const machine = fakeMachine();
  const result = await blk(machine, ["attach", "--nbd", "127.0.0.1:1", "vol@snap"]);
  assert.match(result.out, /\(64 MiB, read-only, /);
});

Deno.test("blk attach: without serve.json the default address is tried, and a failure says why", async () => {
  const refused = new TorusError(ErrorCode.Unavailable, "cannot connect to 127.0.0.1 port 10809");
  const machine = fakeMachine({ attachError: refused });
  const result = await blk(machine, ["attach", "--data-dir", "/nowhere", "vol"]);
  assert.equal(result.code, 1);
  assert.deepEqual(machine.attached[0]!.target, {
    hostname: "127.0.0.1",
    port: 10809,
    exportName: "vol",
  });
  assert.equal(
    result.err,
    "torus blk attach: cannot connect to 127.0.0.1 port 10809 (data dir /nowhere has no " +
      "serve.json (no torus serve runs there), so the default 127.0.0.1:10809 was tried) " +
      "(unavailable)\n",
  );
});

Deno.test("blk attach: a serve without NBD, and other failures, are one line and exit 1", async () => {
  const noNbd = fakeMachine({ serveJson: { "/d": { pid: 9, nbd: null } } });
  const result = await blk(noNbd, ["attach", "--data-dir", "/d", "vol"]);
  assert.equal(result.code, 1);
  assert.equal(
    result.err,
    "torus blk attach: torus serve (pid 9) on data dir /d runs without an NBD server: restart " +
      "it with --nbd, or give --nbd HOST:PORT\n",
  );
  const unknown = fakeMachine({
    attachError: new TorusError(ErrorCode.NotExist, `no export named "nope"`),
  });
  const missing = await blk(unknown, ["attach", "--nbd", "127.0.0.1:1", "nope"]);
  assert.equal(missing.code, 1);
  assert.equal(missing.err, `torus blk attach: no export named "nope" (not_exist)\n`);
});

Deno.test("blk attach: usage errors exit 2", async () => {
  const cases: [string[], RegExp][] = [
    [["attach"], /give a volume/],
    [["attach", "v", "/dev/nbd0", "x"], /unexpected argument "x"/],
    [["attach", "v", "/dev/sda"], /is not an NBD device/],
    [["attach", "host:1/v"], /write nbd:\/\/HOST:PORT\/VOLUME/],
    [["attach", "--nbd", "127.0.0.1:1", "nbd://h/v"], /give the server once/],
    [["attach", "--nbd", "nope", "v"], /invalid --nbd address/],
    [["attach", "--timeout", "1500ms", "v"], /whole seconds/],
    [["attach", "--bogus", "v"], /Unknown option '--bogus'/],
    [["detach"], /give a device/],
    [["detach", "/dev/sda"], /is not an NBD device/],
    [["nbd", "-d", "/dev/nbd0", "v"], /--detach takes only the device/],
    [["nbd", "detach", "/dev/nbd0", "/dev/nbd1"], /unexpected argument/],
  ];
  for (const [args, message] of cases) {
    const machine = fakeMachine();
    const result = await blk(machine, args, () => {});
    assert.equal(result.code, 2, args.join(" "));
    assert.match(result.err, message, args.join(" "));
    assert.deepEqual(machine.attached, [], args.join(" "));
  }
});

Deno.test("blk: nbd attach|detach, the original's forms and the short names do the same", async () => {
  const machine = fakeMachine();
  const server = ["--nbd", "127.0.0.1:1"];
  for (
    const args of [
      ["attach", ...server, "a", "/dev/nbd1"],
      ["nbd", "attach", ...server, "b", "/dev/nbd1"],
      ["nbd", ...server, "c", "/dev/nbd1"],
    ]
  ) {
    assert.equal((await blk(machine, args)).code, 0, args.join(" "));
  }
  assert.deepEqual(machine.attached.map((a) => [a.target.exportName, a.devicePath]), [
    ["a", "/dev/nbd1"],
    ["b", "/dev/nbd1"],
    ["c", "/dev/nbd1"],
  ]);
  for (
    const args of [["detach", "/dev/nbd2"], ["nbd", "detach", "nbd3"], ["nbd", "-d", "/dev/nbd4"]]
  ) {
    const result = await blk(machine, args, () => {});
    assert.equal(result.code, 0, args.join(" "));
    assert.match(result.out, /^Detached .*nbd\d\.\n$/);
  }
  assert.deepEqual(machine.detached, ["/dev/nbd2", "nbd3", "/dev/nbd4"]);
});

Deno.test("blk attach: a second signal detaches without waiting for the flush", async () => {
  const machine = fakeMachine();
  const io = capture();
  // This attachment's first detach never finishes (a flush that hangs).
  const deps: BlkDeps = {
    ...machine.deps,
    async attach(options) {
      const fake = fakeAttachment(options, false);
      const stuck: Attachment = {
        ...fake.attachment,
        detach(detachOptions) {
          fake.detaches.push(detachOptions);
          if (!detachOptions?.force) return new Promise(() => {});
          fake.end({ reason: "detached", result: 0 });
          return Promise.resolve();
        },
      };
      await Promise.resolve();
      forceDetaches = fake.detaches;
      return stuck;
    },
  };
  let forceDetaches: ({ force?: boolean } | undefined)[] = [];
  const running = runCommand(blkCommand(deps), ["attach", "--nbd", "127.0.0.1:1", "v"], io);
  for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 0));
  machine.signal("SIGTERM");
  machine.signal("SIGINT");
  assert.equal(await running, 0);
  assert.deepEqual(forceDetaches, [undefined, { force: true }]);
  assert.match(io.out, /Received SIGINT again: detaching without waiting for the flush/);
});

Deno.test("blk attach: a connection that ends by itself", async () => {
  const asked = fakeMachine({ endBy: { reason: "disconnected", result: 0 } });
  const byOther = await blk(asked, ["attach", "--nbd", "127.0.0.1:1", "v"], () => {});
  assert.equal(byOther.code, 0);
  assert.match(byOther.out, /Detached \/dev\/nbd0: the connection ended \(torus blk detach/);
  const failed = fakeMachine({ endBy: { reason: "disconnected", result: -1 } });
  const broken = await blk(failed, ["attach", "--nbd", "127.0.0.1:1", "v"], () => {});
  assert.equal(broken.code, 1);
  assert.match(
    broken.err,
    /the connection of \/dev\/nbd0 failed or timed out; the device is detached/,
  );
});

Deno.test("blk nbdserve: without -C, or with a bad level or address, a usage error", async () => {
  const cases: [string[], RegExp][] = [
    [["nbdserve"], /give -C \(the cluster's etcd\)/],
    [
      ["nbdserve", "-C", "127.0.0.1:2379", "--read-level", "fast"],
      /--read-level: read level "fast"/,
    ],
    [["nbdserve", "-C", "127.0.0.1:2379", "--write-level", "x"], /--write-level: write level "x"/],
    [["nbdserve", "-C", "127.0.0.1:2379", "-l", "nowhere:99999"], /--listen/],
    [["nbdserve", "extra"], /unexpected argument "extra"/],
  ];
  for (const [args, pattern] of cases) {
    const result = await blk(fakeMachine(), args, () => {});
    assert.equal(result.code, 2, result.err);
    assert.match(result.err.split("\n")[0]!, pattern);
  }
});

Deno.test("blk: help texts name the forms the parser takes", async () => {
  const help = async (args: string[]) => (await blk(fakeMachine(), args, () => {})).out;
  assert.match(await help(["--help"]), /attach +Attach a volume/);
  assert.match(
    await help(["attach", "--help"]),
    /^Usage: torus blk attach \[--nbd HOST:PORT \| -C ENDPOINTS\]/,
  );
  assert.match(await help(["nbd", "attach", "--help"]), /^Usage: torus blk nbd attach /);
  assert.match(await help(["nbd", "detach", "--help"]), /^Usage: torus blk nbd detach \/dev\/nbdX/);
  const nbd = await help(["nbd", "--help"]);
  assert.match(nbd, /torus blk nbd -d\|--detach \/dev\/nbdX/);
  assert.match(nbd, /torus blk nbd \[flags\] VOLUME \[\/dev\/nbdX\]/);
});

Deno.test("blk attach -C: a cluster client in this process serves the volume; closed after the detach", async () => {
  const machine = fakeMachine();
  const result = await blk(machine, [
    "attach",
    "db",
    "-C",
    "10.0.0.1:2379",
    "--write-level",
    "one",
  ]);
  assert.equal(result.code, 0, result.err);
  assert.equal(machine.clusterClients.length, 1);
  const [client] = machine.clusterClients;
  assert.equal(client!.values.etcd, "10.0.0.1:2379");
  assert.equal(client!.values["write-level"], "one");
  assert.equal(client!.attachedBefore, 0, "the client runs before the kernel attaches");
  assert.deepEqual(machine.attached[0]!.target, {
    hostname: "127.0.0.1",
    port: 45678,
    exportName: "db",
  });
  assert.ok(client!.closed, "the client closes after the device is detached");
  assert.match(result.out, /Detached \/dev\/nbd\d/);
});

Deno.test("blk attach -C: another server named too is a usage error, and nothing starts", async () => {
  const machine = fakeMachine();
  for (const args of [["nbd://h:1/db", "-C", "e:2379"], ["db", "--nbd", "h:1", "-C", "e:2379"]]) {
    const result = await blk(machine, ["attach", ...args]);
    assert.equal(result.code, 2, result.out);
    assert.match(result.err, /-C serves the volume from this process/);
  }
  assert.equal(machine.clusterClients.length, 0);
  assert.equal(machine.attached.length, 0);
});
