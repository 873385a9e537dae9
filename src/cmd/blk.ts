/**
 * `torus blk`: block-device clients. `attach` puts an NBD export (a volume of `torus serve --nbd`,
 * or any NBD server's export) on a kernel `/dev/nbdX` and stays in the foreground until it is
 * detached; `detach` detaches a device from another shell; `nbd attach|detach` are the same
 * under the original's command name, which also keeps the original's forms (`nbd VOLUME [DEV]`,
 * `nbd -d DEV`), and `nbdserve` (blk_nbdserve.ts), the NBD server of a cluster client.
 *
 * A bare VOLUME is looked for on the local serve: the data dir's `serve.json` names its NBD
 * address (node.ts), else torus's default address is tried.
 *
 * The kernel work is in block/nbd/attach.ts; this file parses arguments, prints, and turns
 * SIGINT/SIGTERM into a detach (a second signal cuts without waiting for the flush).
 * @module
 */

import {
  type Command,
  commandGroup,
  defaultDataDir,
  type Env,
  ExitCode,
  type HostPort,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  parseHostPort,
  processEnv,
  runCommand,
  UsageError,
  wantsHelp,
} from "../cli/mod.ts";
import {
  ErrorCode,
  errorMessage,
  escapeText,
  formatSize,
  invalid,
  isTorusError,
  parseDuration,
  TorusError,
} from "../core/mod.ts";
import {
  type AttachEnd,
  attachKernelNbd,
  type AttachOptions,
  detachKernelNbd,
  formatNbdTarget,
  isUri,
  type KernelAttachment,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  type NbdTarget,
  parseNbdDevicePath,
  parseNbdTarget,
} from "../block/mod.ts";
import { readServeInfo, type ServeInfo } from "./node.ts";
import { NBD_DEFAULT_ADDRESS } from "./serve.ts";
import { clusterNbdSettingsOf, nbdserveCommand, startClusterNbd } from "./blk_nbdserve.ts";

/** What a running attachment offers the command (KernelAttachment, or a test's fake). */
export type Attachment = Pick<
  KernelAttachment,
  "devicePath" | "info" | "blockSizeBytes" | "sizeBytes" | "ended" | "detach" | "mountPoints"
>;

/** The machine as `torus blk` uses it; tests inject fakes. */
export interface BlkDeps {
  readonly env: Env;
  /** The `serve.json` of a data dir, null when none (node.ts). */
  readServeInfo(dataDir: string): Promise<ServeInfo | null>;
  attach(options: AttachOptions): Promise<Attachment>;
  detach(devicePath: string): Promise<void>;
  /** Calls `handler` on every SIGINT or SIGTERM until the returned function is called. */
  onStopSignal(handler: (signal: Deno.Signal) => void): () => void;
  /** A cluster client serving the cluster's volumes on a loopback port (`attach -C`). */
  startClusterNbd(values: Record<string, unknown>): Promise<ClusterNbdServer>;
}

/** What `attach -C` needs of the in-process cluster client (ClusterNbd, or a test's fake). */
export interface ClusterNbdServer {
  readonly address: HostPort;
  close(): Promise<void>;
}

/** The real machine. */
export const realBlkDeps: BlkDeps = {
  env: processEnv,
  readServeInfo,
  attach: (options) => attachKernelNbd(options),
  detach: (devicePath) => detachKernelNbd(devicePath),
  startClusterNbd: (values) =>
    startClusterNbd(values, clusterNbdSettingsOf(values), { hostname: "127.0.0.1", port: 0 }),
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
  /** The export, and the server when the command line named one (URI or `--nbd`). */
  readonly exportName: string;
  readonly server: HostPort | null;
  /** Where to look for a local serve's `serve.json` when no server was named. */
  readonly dataDir: string;
  readonly devicePath: string | null;
  readonly timeoutSeconds: number;
}

const attachFlags = {
  ...metadataFlagOptions,
  timeout: { type: "string" },
  nbd: { type: "string" },
  "read-level": { type: "string" },
  "write-level": { type: "string" },
  "read-cache-size": { type: "string" },
} as const;

/**
 * `[nbd://HOST[:PORT]/]VOLUME [/dev/nbdX]`, `--nbd HOST:PORT`, `--data-dir DIR` and
 * `--timeout D`; UsageError when wrong.
 */
export function parseAttachRequest(
  positionals: readonly string[],
  values: { timeout?: string | undefined; nbd?: string | undefined; "data-dir"?: string },
  env: Env,
): AttachRequest {
  if (positionals.length === 0) throw new UsageError("give a volume: [nbd://HOST:PORT/]VOLUME");
  if (positionals.length > 2) throw new UsageError(`unexpected argument "${positionals[2]}"`);
  const spec = positionals[0]!;
  let target: NbdTarget;
  try {
    target = parseNbdTarget(spec);
  } catch (error) {
    throw new UsageError(errorMessage(error));
  }
  let server: HostPort | null = null;
  if (isUri(spec)) {
    if (values.nbd !== undefined) throw new UsageError("give the server once: --nbd or nbd://");
    server = { hostname: target.hostname, port: target.port };
  } else if (values.nbd !== undefined) {
    server = parseHostPort(values.nbd, "--nbd address");
  }
  const devicePath = positionals[1] ?? null;
  if (devicePath !== null) {
    try {
      parseNbdDevicePath(devicePath);
    } catch (error) {
      throw new UsageError(errorMessage(error));
    }
  }
  return {
    exportName: target.exportName,
    server,
    dataDir: values["data-dir"] ?? defaultDataDir(env),
    devicePath,
    timeoutSeconds: parseTimeoutSeconds(values.timeout),
  };
}

/** Where a local serve is reached: `0.0.0.0` and `::` (listen on all) mean this machine. */
function localAddress(address: HostPort): HostPort {
  if (address.hostname === "0.0.0.0") return { ...address, hostname: "127.0.0.1" };
  if (address.hostname === "::") return { ...address, hostname: "::1" };
  return address;
}

/** The server to connect to and how it was found (for a failed connection's message). */
export interface ResolvedTarget {
  readonly target: NbdTarget;
  /** Why this server: null when the command line named it. */
  readonly foundBy: string | null;
}

/**
 * The server of a request: the one named, else the NBD server in the data dir's `serve.json`,
 * else torus's default address (a serve whose data dir is elsewhere). `invalid` when the data
 * dir's serve runs without NBD.
 */
export async function resolveTarget(
  request: AttachRequest,
  readInfo: (dataDir: string) => Promise<ServeInfo | null>,
): Promise<ResolvedTarget> {
  const exportName = request.exportName;
  if (request.server !== null) return { target: { ...request.server, exportName }, foundBy: null };
  const dataDir = escapeText(request.dataDir);
  const info = await readInfo(request.dataDir);
  if (info === null) {
    const fallback = parseHostPort(NBD_DEFAULT_ADDRESS, "default NBD address");
    return {
      target: { ...fallback, exportName },
      foundBy: `data dir ${dataDir} has no serve.json (no torus serve runs there), so the ` +
        `default ${NBD_DEFAULT_ADDRESS} was tried`,
    };
  }
  if (info.nbd === null) {
    throw invalid(
      `torus serve (pid ${info.pid}) on data dir ${dataDir} runs without an NBD server: ` +
        "restart it with --nbd, or give --nbd HOST:PORT",
    );
  }
  const address = localAddress(parseHostPort(info.nbd, "the NBD address in serve.json"));
  return {
    target: { ...address, exportName },
    foundBy: `the NBD server of torus serve pid ${info.pid} (serve.json of data dir ${dataDir})`,
  };
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

function attachedLine(target: NbdTarget, attachment: Attachment): string {
  const mode = (attachment.info.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0
    ? "read-only"
    : "read-write";
  return `Attached ${escapeText(formatNbdTarget(target))} to ${attachment.devicePath} ` +
    `(${formatSize(attachment.sizeBytes)}, ${mode}, ${attachment.blockSizeBytes}-byte blocks, ` +
    `${describeFlags(attachment.info.transmissionFlags)}).\n` +
    `Detach with Ctrl-C (SIGINT), SIGTERM or: torus blk detach ${attachment.devicePath}\n`;
}

/** Attaches, adding to a failed connection how its server was found. */
async function attachTo(
  resolved: ResolvedTarget,
  request: AttachRequest,
  deps: BlkDeps,
): Promise<Attachment> {
  try {
    return await deps.attach({
      target: resolved.target,
      devicePath: request.devicePath,
      timeoutSeconds: request.timeoutSeconds,
    });
  } catch (error) {
    if (resolved.foundBy !== null && isTorusError(error, ErrorCode.Unavailable)) {
      throw new TorusError(ErrorCode.Unavailable, `${errorMessage(error)} (${resolved.foundBy})`, {
        cause: error,
      });
    }
    throw error;
  }
}

/**
 * `attach -C`: a cluster client in this process serves the volume on a loopback port, the kernel
 * is attached to it, and once detached the client flushes, unlocks and leaves.
 */
async function runClusterAttach(
  request: AttachRequest,
  values: Record<string, unknown>,
  deps: BlkDeps,
  io: Io,
): Promise<number> {
  if (request.server !== null) {
    throw new UsageError(
      "-C serves the volume from this process; an nbd:// URI or --nbd names another server: " +
        "give one or the other",
    );
  }
  const client = await deps.startClusterNbd(values);
  try {
    return await runAttach({ ...request, server: client.address }, deps, io);
  } finally {
    await client.close();
  }
}

/** Attaches, then serves until detached; see the module doc. */
async function runAttach(request: AttachRequest, deps: BlkDeps, io: Io): Promise<number> {
  const resolved = await resolveTarget(request, deps.readServeInfo);
  const attachment = await attachTo(resolved, request, deps);
  io.stdout(attachedLine(resolved.target, attachment));
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

/** The usage line of attach under `path` (`blk attach`, `blk nbd attach`), wrapped. */
function attachUsage(path: string): string {
  const first = `torus ${path} [--nbd HOST:PORT | -C ENDPOINTS] [--data-dir DIR] [--timeout D]`;
  return `${first}\n${" ".repeat(`Usage: torus ${path} `.length)}` +
    "[nbd://HOST[:PORT]/]VOLUME[@SNAPSHOT] [/dev/nbdX]";
}

const attachBody =
  `Attaches a volume to a kernel NBD device and keeps it attached until detached. The
volume is an NBD export: of torus serve started with --nbd, or of any NBD server.
VOLUME@SNAPSHOT attaches a snapshot, read-only.

Which server: the one of an nbd:// URI or of --nbd; otherwise the torus serve running on the
data dir (its serve.json names its NBD address); otherwise ${NBD_DEFAULT_ADDRESS}. With -C (a
cluster's etcd) this process is the server: a cluster client with no store of its own, as
torus blk nbdserve, on a loopback port only the kernel uses; reads and writes go straight to the
nodes holding each block, and a flush returns once every holder has the data durably. It holds
the volume's lock while attached.

The handshake runs here; the connection is then handed to the kernel, which serves
/dev/nbdX (the first free one when none is given) with 4096-byte blocks and the flush, FUA
and trim commands the server offers. It runs in the foreground until SIGINT or SIGTERM, or
until 'torus blk detach /dev/nbdX' from another shell: the device is flushed, disconnected,
and it exits 0. A second signal detaches without waiting for the flush. Needs root and the
kernel's nbd module (modprobe nbd).

  --nbd HOST:PORT   the NBD server (default: see above)
  -C ENDPOINTS      serve the volume from this process as a client of that cluster (see
                    above); --read-level, --write-level and --read-cache-size as for
                    torus blk nbdserve, and the metadata flags below
  --data-dir DIR    the data dir whose serve to use (default $TORUS_DATA_DIR or ./torus-data)
  --timeout D       fail requests the server has not answered within D, in whole seconds (30s,
                    2m; default: wait forever). A timeout ends the connection: from then on
                    the device's reads and writes fail.
`;

function attachCommand(deps: BlkDeps, usage = attachUsage("blk attach")): Command {
  return {
    name: "attach",
    summary: "Attach a volume (an NBD export) to a kernel /dev/nbdX",
    help: `Usage: ${usage}\n\n${attachBody}\n${metadataFlagsHelp}`,
    run(args, io) {
      const { values, positionals } = parseFlags(args, attachFlags);
      const request = parseAttachRequest(positionals, values, deps.env);
      if (typeof values.etcd !== "string") return runAttach(request, deps, io);
      return runClusterAttach(request, values, deps, io);
    },
  };
}

const detachBody =
  `Detaches a kernel NBD device, from any shell: flushes it, asks the kernel to disconnect
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

function detachCommand(deps: BlkDeps, usage = "torus blk detach /dev/nbdX"): Command {
  return {
    name: "detach",
    summary: "Detach a kernel NBD device",
    help: `Usage: ${usage}\n\n${detachBody}`,
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

const nbdHelp =
  `Usage: torus blk nbd attach [flags] [nbd://HOST[:PORT]/]VOLUME[@SNAPSHOT] [/dev/nbdX]
       torus blk nbd detach /dev/nbdX
       torus blk nbd [flags] VOLUME [/dev/nbdX]     (the original torusblk's form)
       torus blk nbd -d|--detach /dev/nbdX

Kernel NBD devices: 'nbd attach' is 'torus blk attach', 'nbd detach' is 'torus blk detach'
(see their help for the flags). The original's forms are kept: a volume without a subcommand
attaches it, -d detaches. A volume named attach or detach is attached with
'torus blk attach attach'.
`;

/** `torus blk nbd`: the subcommands attach and detach, or the original torusblk's forms. */
function nbdCommand(deps: BlkDeps): Command {
  const subcommands = [
    attachCommand(deps, attachUsage("blk nbd attach")),
    detachCommand(deps, "torus blk nbd detach /dev/nbdX"),
  ];
  return {
    name: "nbd",
    summary: "Attach or detach a kernel NBD device (nbd attach|detach, or the original's forms)",
    help: nbdHelp,
    // Like a group, only a first `--help` is its own; `nbd attach --help` is attach's.
    group: true,
    subcommands,
    run(args, io) {
      const sub = subcommands.find((c) => c.name === args[0]);
      if (sub !== undefined) {
        return runCommand({ ...sub, name: `blk nbd ${sub.name}` }, args.slice(1), io);
      }
      if (wantsHelp(args)) {
        io.stdout(nbdHelp);
        return Promise.resolve(ExitCode.Ok);
      }
      const { values, positionals } = parseFlags(args, nbdFlags);
      if (values.detach === undefined) {
        return runAttach(parseAttachRequest(positionals, values, deps.env), deps, io);
      }
      const { detach, ...others } = values;
      if (positionals.length > 0 || Object.values(others).some((v) => v !== undefined)) {
        throw new UsageError("--detach takes only the device");
      }
      return runDetach(detach, deps, io);
    },
  };
}

/** The `torus blk` group over `deps`. */
export function blkCommand(deps: BlkDeps = realBlkDeps): Command {
  return commandGroup("blk", "Attach volumes to kernel NBD devices", [
    attachCommand(deps),
    detachCommand(deps),
    nbdCommand(deps),
    nbdserveCommand,
  ]);
}
