/**
 * `torus blk`: block-device clients. `attach` puts an NBD export (a volume of `torus serve --nbd`,
 * or any NBD server's export) on a kernel `/dev/nbdX` and stays in the foreground until it is
 * detached; `detach` detaches a device from another shell; `nbd` is the original's name for both
 * (`nbd VOLUME [DEV]`, `nbd -d DEV`). `nbdserve` says honestly that it is not built.
 *
 * The kernel work is in block/nbd/attach.ts; this file parses arguments, prints, and turns
 * SIGINT/SIGTERM into a detach (a second signal cuts without waiting for the flush).
 * @module
 */

import {
  type Command,
  commandGroup,
  ExitCode,
  type Io,
  parseFlags,
  UsageError,
} from "../cli/mod.ts";
import { errorMessage, escapeText, formatSize, parseDuration } from "../core/mod.ts";
import {
  type AttachEnd,
  attachKernelNbd,
  type AttachOptions,
  detachKernelNbd,
  formatNbdTarget,
  type KernelAttachment,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  type NbdTarget,
  parseNbdDevicePath,
  parseNbdTarget,
} from "../block/mod.ts";

/** What a running attachment offers the command (KernelAttachment, or a test's fake). */
export type Attachment = Pick<
  KernelAttachment,
  "devicePath" | "info" | "blockSizeBytes" | "sizeBytes" | "ended" | "detach" | "mountPoints"
>;

/** The machine as `torus blk` uses it; tests inject fakes. */
export interface BlkDeps {
  attach(options: AttachOptions): Promise<Attachment>;
  detach(devicePath: string): Promise<void>;
  /** Calls `handler` on every SIGINT or SIGTERM until the returned function is called. */
  onStopSignal(handler: (signal: Deno.Signal) => void): () => void;
}

/** The real machine. */
export const realBlkDeps: BlkDeps = {
  attach: (options) => attachKernelNbd(options),
  detach: (devicePath) => detachKernelNbd(devicePath),
  onStopSignal(handler) {
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    const listeners = signals.map((signal) => {
      const listener = () => handler(signal);
      Deno.addSignalListener(signal, listener);
      return listener;
    });
    return () => signals.forEach((s, i) => Deno.removeSignalListener(s, listeners[i]!));
  },
};

/** What `attach` was asked to do. */
export interface AttachRequest {
  readonly target: NbdTarget;
  readonly devicePath: string | null;
  readonly timeoutSeconds: number;
}

const attachFlags = { timeout: { type: "string" } } as const;

/** `[nbd://HOST[:PORT]/]VOLUME [/dev/nbdX]` and `--timeout D`; UsageError when wrong. */
export function parseAttachRequest(
  positionals: readonly string[],
  values: { timeout?: string | undefined },
): AttachRequest {
  if (positionals.length === 0) throw new UsageError("give a volume: [nbd://HOST:PORT/]VOLUME");
  if (positionals.length > 2) throw new UsageError(`unexpected argument "${positionals[2]}"`);
  let target: NbdTarget;
  try {
    target = parseNbdTarget(positionals[0]!);
  } catch (error) {
    throw new UsageError(errorMessage(error));
  }
  const devicePath = positionals[1] ?? null;
  if (devicePath !== null) {
    try {
      parseNbdDevicePath(devicePath);
    } catch (error) {
      throw new UsageError(errorMessage(error));
    }
  }
  return { target, devicePath, timeoutSeconds: parseTimeoutSeconds(values.timeout) };
}

/** `--timeout D` as whole seconds (NBD_SET_TIMEOUT's unit); 0 when not given. */
export function parseTimeoutSeconds(text: string | undefined): number {
  if (text === undefined) return 0;
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (error) {
    throw new UsageError(`--timeout: ${errorMessage(error)}`);
  }
  if (ms % 1000 !== 0) throw new UsageError(`--timeout "${text}": the kernel counts whole seconds`);
  return ms / 1000;
}

function describeFlags(transmissionFlags: number): string {
  const names: [number, string][] = [
    [NBD_FLAG_SEND_FLUSH, "flush"],
    [NBD_FLAG_SEND_FUA, "fua"],
    [NBD_FLAG_SEND_TRIM, "trim"],
  ];
  const offered = names.filter(([bit]) => (transmissionFlags & bit) !== 0).map(([, n]) => n);
  return offered.length === 0 ? "no flush" : offered.join("+");
}

function attachedLine(request: AttachRequest, attachment: Attachment): string {
  const mode = (attachment.info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0
    ? "read-only"
    : "read-write";
  return `Attached ${escapeText(formatNbdTarget(request.target))} to ${attachment.devicePath} ` +
    `(${formatSize(attachment.sizeBytes)}, ${mode}, ${attachment.blockSizeBytes}-byte blocks, ` +
    `${describeFlags(attachment.info.transmissionFlags)}).\n` +
    `Detach with Ctrl-C (SIGINT), SIGTERM or: torus blk detach ${attachment.devicePath}\n`;
}

/** Attaches, then serves until detached; see the module doc. */
async function runAttach(request: AttachRequest, deps: BlkDeps, io: Io): Promise<number> {
  const attachment = await deps.attach(request);
  io.stdout(attachedLine(request, attachment));
  let signals = 0;
  const stopListening = deps.onStopSignal((signal) => {
    signals++;
    if (signals === 1) {
      io.stdout(`Received ${signal}: flushing and detaching ${attachment.devicePath}\n`);
      void warnIfMounted(attachment, io);
      void attachment.detach();
    } else {
      io.stdout(`Received ${signal} again: detaching without waiting for the flush\n`);
      void attachment.detach({ force: true });
    }
  });
  let end: AttachEnd;
  try {
    end = await attachment.ended;
  } finally {
    stopListening();
  }
  return reportEnd(attachment.devicePath, end, io);
}

async function warnIfMounted(attachment: Attachment, io: Io): Promise<void> {
  const mounts = await attachment.mountPoints().catch(() => []);
  if (mounts.length > 0) {
    io.stderr(
      `torus blk attach: warning: ${attachment.devicePath} is still mounted on ` +
        `${mounts.map(escapeText).join(", ")}; that filesystem will see I/O errors\n`,
    );
  }
}

function reportEnd(devicePath: string, end: AttachEnd, io: Io): number {
  if (end.reason === "detached") {
    io.stdout(`Detached ${devicePath}.\n`);
    return ExitCode.Ok;
  }
  if (end.result === 0) {
    // The kernel reports a disconnect asked by another process and a server close alike.
    io.stdout(
      `Detached ${devicePath}: the connection ended (torus blk detach, or the server closed it).\n`,
    );
    return ExitCode.Ok;
  }
  io.stderr(
    `torus blk attach: the connection of ${devicePath} failed or timed out; ` +
      "the device is detached\n",
  );
  return ExitCode.Failure;
}

const attachHelp = `Usage: torus blk attach [--timeout D] [nbd://HOST[:PORT]/]VOLUME [/dev/nbdX]

Attaches a volume to a kernel NBD device and keeps it attached until detached. The volume is
an NBD export: of torus serve started with its nbd flag, or of any NBD server. A bare VOLUME
means nbd://127.0.0.1:10809/VOLUME; VOLUME@SNAPSHOT attaches a snapshot read-only.

The handshake runs here; the connection is then handed to the kernel, which serves
/dev/nbdX (the first free one when none is given) with 4096-byte blocks and the flush, FUA and
trim commands the server offers. It runs in the foreground until SIGINT or SIGTERM, or until
'torus blk detach /dev/nbdX' from another shell: the device is flushed, disconnected, and it
exits 0. A second signal detaches without waiting for the flush. Needs root and the kernel's
nbd module (modprobe nbd).

  --timeout D   fail requests the server has not answered within D, in whole seconds (30s,
                2m; default: wait forever). A timeout ends the connection: from then on the
                device's reads and writes fail.
`;

function attachCommand(deps: BlkDeps, name = "attach"): Command {
  return {
    name,
    summary: "Attach a volume (an NBD export) to a kernel /dev/nbdX",
    help: attachHelp,
    run(args, io) {
      const { values, positionals } = parseFlags(args, attachFlags);
      return runAttach(parseAttachRequest(positionals, values), deps, io);
    },
  };
}

const detachHelp = `Usage: torus blk detach /dev/nbdX

Detaches a kernel NBD device, from any shell: flushes it, asks the kernel to disconnect
(NBD_DISCONNECT, NBD_CLEAR_SOCK) and waits until the device has stopped; the torus blk attach
serving it then exits 0. Refuses a device that is mounted or not attached. Works on devices
attached by other NBD clients (nbd-client) too. Needs root.
`;

async function runDetach(devicePath: string, deps: BlkDeps, io: Io): Promise<number> {
  try {
    parseNbdDevicePath(devicePath);
  } catch (error) {
    throw new UsageError(errorMessage(error));
  }
  await deps.detach(devicePath);
  io.stdout(`Detached ${devicePath}.\n`);
  return ExitCode.Ok;
}

function detachCommand(deps: BlkDeps): Command {
  return {
    name: "detach",
    summary: "Detach a kernel NBD device",
    help: detachHelp,
    run(args, io) {
      const { positionals } = parseFlags(args, {});
      if (positionals.length !== 1) {
        throw new UsageError(
          positionals.length === 0
            ? "give a device: /dev/nbdX"
            : `unexpected argument "${positionals[1]}"`,
        );
      }
      return runDetach(positionals[0]!, deps, io);
    },
  };
}

const nbdFlags = { ...attachFlags, detach: { type: "string", short: "d" } } as const;

const nbdHelp = `Usage: torus blk nbd [--timeout D] [nbd://HOST[:PORT]/]VOLUME [/dev/nbdX]
       torus blk nbd -d|--detach /dev/nbdX

The original torusblk's name for attach and detach: the same as 'torus blk attach' and, with
-d, 'torus blk detach' (see their help).

  --timeout D        as for attach
  -d, --detach DEV   detach DEV instead of attaching
`;

function nbdCommand(deps: BlkDeps): Command {
  return {
    name: "nbd",
    summary: "Attach or detach (-d) a kernel NBD device (the original's name)",
    help: nbdHelp,
    run(args, io) {
      const { values, positionals } = parseFlags(args, nbdFlags);
      if (values.detach === undefined) {
        return runAttach(parseAttachRequest(positionals, values), deps, io);
      }
      if (positionals.length > 0 || values.timeout !== undefined) {
        throw new UsageError("--detach takes only the device");
      }
      return runDetach(values.detach, deps, io);
    },
  };
}

const nbdserveCommand: Command = {
  name: "nbdserve",
  summary: "Serve volumes over NBD from a client (not implemented: use torus serve's NBD server)",
  help: `Usage: torus blk nbdserve

Not implemented. A node's volumes are served over NBD by \`torus serve --nbd\`. A
client-side NBD server, which reaches the volumes through the cluster without a store of its
own, comes with the cluster data path.
`,
  run(args, io) {
    parseFlags(args, {});
    io.stderr(
      "torus blk nbdserve: not implemented; volumes are served over NBD by `torus serve --nbd` " +
        "(a client-side server comes with the cluster data path)\n",
    );
    return Promise.resolve(ExitCode.Failure);
  },
};

/** The `torus blk` group over `deps`. */
export function blkCommand(deps: BlkDeps = realBlkDeps): Command {
  return commandGroup("blk", "Attach volumes to kernel NBD devices", [
    attachCommand(deps),
    detachCommand(deps),
    nbdCommand(deps),
    nbdserveCommand,
  ]);
}
