/**
 * `torus ctl block dump VOLUME[@SNAPSHOT] FILE|-` and `torus ctl block load FILE|- VOLUME [SIZE]`:
 * a whole volume to and from a file or a pipe, sparse both ways (zero ranges are neither read
 * nor written; a dump into a regular file leaves holes).
 *
 * Where the bytes come from: with `--nbd HOST:PORT`, that torus serve's NBD server; otherwise the
 * data dir's store. When a torus serve holds the data dir, its `serve.json` names its NBD server
 * and the transfer goes through it; when nothing holds it, this command takes the data-dir lock
 * and opens the store itself. A dump of a volume (not a snapshot) reads a temporary snapshot
 * `temp-dump-…`, so it is exact as of its start even while the volume is being written; it is
 * deleted at the end (a dump killed with SIGKILL leaves it, listed by `block snapshot list`).
 * A load creates the volume, fills it and flushes; a load that fails or is interrupted deletes
 * the volume it created.
 * @module
 */

import {
  type Command,
  ExitCode,
  formatHostPort,
  type HostPort,
  type Io,
  metadataFlagOptions,
  metadataFlagsHelp,
  type OpenedMetadata,
  parseFlags,
  parseHostPort,
  type Progress,
  progressReporter,
  UsageError,
} from "../../cli/mod.ts";
import { dataDirOf, lockDataDir } from "../../cli/mod.ts";
import {
  checkName,
  type Clock,
  ErrorCode,
  errorMessage,
  escapeText,
  formatSize,
  invalid,
  isTorusError,
  NAME_RULE_TEXT,
  parseVolumeSize,
  TorusError,
} from "../../core/mod.ts";
import {
  checkMappableSize,
  connStream,
  type Device,
  dumpDevice,
  type DumpSink,
  loadDevice,
  type LoadSource,
  mapGeometry,
  NbdClient,
  parseVolumeSpec,
  snapshotVolume,
  type TransferResult,
  VolumeService,
} from "../../block/mod.ts";
import { FileBlockStore } from "../../storage/mod.ts";
import { LeaseKeeper } from "../../server/mod.ts";
import type { MetadataService } from "../../metadata/mod.ts";
import { CryptoRandom, randomUuid } from "../../core/mod.ts";
import { readServeInfo } from "../node.ts";
import { expandNbdFlag, nodeUuid } from "../serve.ts";
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";

/** Zeros written to a stream for a zero range, a piece at a time. */
const ZERO_PIECE_BYTES = 1024 * 1024;
/** How long a failed load waits for the server to let go of the volume it deletes. */
const RELEASE_WAIT_MS = 15_000;

const transferFlags = {
  ...metadataFlagOptions,
  nbd: { type: "string" },
  progress: { type: "boolean", short: "p" },
} as const;

const transferFlagsHelp =
  `  --nbd HOST:PORT    go through this torus serve's NBD server (default: the data dir's serve,
                     or the data dir's store itself when no serve runs)
  -p, --progress     progress lines on stderr when it is not a terminal (a terminal always
                     gets a progress bar)`;

/** Byte streams of the process; tests replace them. */
export interface BinaryStdio {
  readonly stdin: { read(into: Uint8Array): Promise<number | null> };
  readonly stdout: { write(data: Uint8Array): Promise<number> };
  /** Whether stderr is a terminal (draw a progress bar). */
  stderrIsTerminal(): boolean;
}

/** The process's own. */
export const processStdio: BinaryStdio = {
  stdin: Deno.stdin,
  stdout: Deno.stdout,
  stderrIsTerminal: () => Deno.stderr.isTerminal(),
};

// ---- where the bytes are --------------------------------------------------------------------

/** Opens devices by export name (`VOLUME`, `VOLUME@SNAPSHOT`). */
interface VolumeAccess {
  /** `NBD server 127.0.0.1:10809`, `data dir ./torus-data`. */
  readonly where: string;
  open(spec: string): Promise<Device>;
  close(): Promise<void>;
}

function nbdAccess(address: HostPort): VolumeAccess {
  const where = `NBD server ${formatHostPort(address)}`;
  return {
    where,
    async open(spec) {
      let conn: Deno.TcpConn;
      try {
        conn = await Deno.connect({ hostname: address.hostname, port: address.port });
      } catch (error) {
        throw new TorusError(
          ErrorCode.Unavailable,
          `cannot reach ${where}: ${errorMessage(error)}`,
        );
      }
      return await NbdClient.connect(connStream(conn), { exportName: spec });
    },
    async close() {},
  };
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** This process opens the data dir's store under the data-dir lock, held until close. */
async function localAccess(
  dataDir: string,
  metadata: MetadataService,
  clock: Clock,
  holder: string,
): Promise<VolumeAccess> {
  const lock = await lockDataDir(dataDir, holder);
  const closers: (() => Promise<void>)[] = [() => Promise.resolve(lock.release())];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close();
  };
  try {
    const global = await metadata.cluster.globalMetadata();
    const store = await FileBlockStore.open({
      dir: `${dataDir}/block`,
      blockSizeBytes: global.blockSizeBytes,
      sizeBytes: "existing",
    });
    closers.push(() => store.close());
    const leases = await LeaseKeeper.start({ leases: metadata.leases, clock });
    closers.push(() => leases.close());
    const volumes = new VolumeService({
      metadata,
      store,
      leases,
      holder: await nodeUuid(dataDir),
      // Under the data-dir lock: a lock of this node's UUID is an earlier run's.
      exclusiveHolder: true,
      clock,
    });
    closers.push(() => volumes.close());
    return {
      where: `data dir ${escapeText(dataDir)}`,
      open: (spec) => volumes.openDevice(spec),
      close: closeAll,
    };
  } catch (error) {
    await closeAll().catch(() => {});
    throw error;
  }
}

/** Decides where the bytes are: see the module doc. */
async function openAccess(
  values: { nbd?: string | undefined; "data-dir"?: string | undefined },
  deps: CtlDeps,
  metadata: OpenedMetadata,
  holder: string,
): Promise<VolumeAccess> {
  if (values.nbd !== undefined) {
    return nbdAccess(parseHostPort(values.nbd, "--nbd address"));
  }
  const dataDir = metadata.backend.kind === "embedded"
    ? metadata.backend.dataDir
    : dataDirOf(values, deps.env);
  if (!(await isDirectory(`${dataDir}/block`))) {
    throw invalid(
      `data dir ${escapeText(dataDir)} has no block store: run torus serve there first, ` +
        `or pass --nbd HOST:PORT of a running one`,
    );
  }
  try {
    return await localAccess(dataDir, metadata.service, deps.clock, holder);
  } catch (error) {
    if (!isTorusError(error, ErrorCode.Locked) || !error.message.startsWith("data dir")) {
      throw error;
    }
    const info = await readServeInfo(dataDir);
    if (info === null) throw error;
    if (info.nbd === null) {
      throw invalid(
        `torus serve (pid ${info.pid}) holds data dir ${escapeText(dataDir)} without an NBD ` +
          `server: restart it with --nbd, or stop it`,
      );
    }
    return nbdAccess(parseHostPort(info.nbd, "the NBD address in serve.json"));
  }
}

// ---- sinks and sources ------------------------------------------------------------------------

async function writeAll(
  out: { write(data: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let done = 0;
  while (done < data.length) done += await out.write(data.subarray(done));
}

/** A stream gets every byte, zeros included. */
function streamSink(out: { write(data: Uint8Array): Promise<number> }): DumpSink {
  const zeros = new Uint8Array(ZERO_PIECE_BYTES);
  return {
    write: (data) => writeAll(out, data),
    async zeros(lengthBytes) {
      for (let left = lengthBytes; left > 0; left -= ZERO_PIECE_BYTES) {
        await writeAll(out, zeros.subarray(0, Math.min(left, ZERO_PIECE_BYTES)));
      }
    },
  };
}

/** A regular file gets holes for zero ranges; anything else (a device, a pipe) gets zeros. */
async function fileSink(
  file: Deno.FsFile,
): Promise<{ sink: DumpSink; finish(size: number): Promise<void> }> {
  const regular = (await file.stat()).isFile;
  if (!regular) return { sink: streamSink(file), finish: async () => {} };
  return {
    sink: {
      // dumpDevice hands zero runs inside data to zeros() already.
      write: (data) => writeAll(file, data),
      async zeros(lengthBytes) {
        await file.seek(lengthBytes, Deno.SeekMode.Current);
      },
    },
    async finish(sizeBytes) {
      // Sets the length when the dump ends in a hole, then makes the copy durable.
      await file.truncate(sizeBytes);
      await file.syncData();
    },
  };
}

function streamSource(input: { read(into: Uint8Array): Promise<number | null> }): LoadSource {
  return { read: async (into) => (await input.read(into)) ?? 0 };
}

// ---- interrupting -----------------------------------------------------------------------------

/** An AbortSignal that SIGINT and SIGTERM fire while `body` runs. */
async function interruptible<T>(body: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => controller.abort(new TorusError(ErrorCode.Closed, "interrupted"));
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const name of signals) Deno.addSignalListener(name, onSignal);
  try {
    return await body(controller.signal);
  } finally {
    for (const name of signals) Deno.removeSignalListener(name, onSignal);
  }
}

function summary(verb: string, result: TransferResult): string {
  const skipped = result.totalBytes - result.dataBytes;
  return `${verb} ${result.totalBytes} bytes (${formatSize(result.totalBytes)}): ` +
    `${formatSize(result.dataBytes)} of data, ${formatSize(skipped)} of zeros skipped`;
}

function progressOf(
  label: string,
  values: { progress?: boolean | undefined },
  stdio: BinaryStdio,
  io: Io,
): Progress {
  return progressReporter(label, {
    terminal: stdio.stderrIsTerminal(),
    lines: values.progress === true,
    write: (text) => io.stderr(text),
  });
}

// ---- dump -------------------------------------------------------------------------------------

/** Runs `body` on a snapshot of `volume` taken for it and deleted after. */
async function withTemporarySnapshot<T>(
  metadata: MetadataService,
  volume: string,
  body: (snapshot: string) => Promise<T>,
): Promise<T> {
  const name = `temp-dump-${randomUuid(new CryptoRandom()).slice(0, 8)}`;
  await snapshotVolume(metadata, volume, name);
  try {
    return await body(name);
  } finally {
    const info = await metadata.volumes.getVolume(volume);
    await metadata.snapshots.deleteSnapshot(info.id, name);
  }
}

async function dumpTo(
  device: Device,
  output: string,
  stdio: BinaryStdio,
  progress: Progress,
  signal: AbortSignal,
): Promise<TransferResult> {
  const options = {
    signal,
    onProgress: (done: number, total: number) => progress.update(done, total),
  };
  if (output === "-") return await dumpDevice(device, streamSink(stdio.stdout), options);
  const file = await Deno.open(output, { write: true, create: true, truncate: true });
  try {
    const { sink, finish } = await fileSink(file);
    const result = await dumpDevice(device, sink, options);
    await finish(result.totalBytes);
    return result;
  } finally {
    file.close();
  }
}

function dumpCommand(deps: CtlDeps, stdio: BinaryStdio): Command {
  return {
    name: "dump",
    summary: "Copy a volume or snapshot to a file or stdout: VOLUME[@SNAPSHOT] FILE|-",
    help: `Usage: torus ctl block dump VOLUME[@SNAPSHOT] FILE|- [--nbd HOST:PORT] [-p]

Copies every byte of VOLUME (as of the start of the dump: a temporary snapshot is read, so
writers may go on) or of its snapshot SNAPSHOT into FILE, or to stdout when FILE is -. Ranges
that read as zeros are not copied: a regular FILE gets holes there. Ends with a summary line
(on stderr when the data goes to stdout).
${transferFlagsHelp}

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(expandNbdFlag(args), transferFlags);
      expectPositionals(positionals, ["VOLUME[@SNAPSHOT]", "FILE|-"]);
      const [spec, output] = positionals as [string, string];
      const { volume, snapshot } = parseVolumeSpec(spec);
      const result = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
        await m.service.volumes.getVolume(volume);
        const access = await openAccess(values, deps, m, "torus ctl block dump");
        try {
          const run = async (name: string) => {
            const device = await access.open(`${volume}@${name}`);
            const progress = progressOf("dump", values, stdio, io);
            try {
              return await interruptible((signal) =>
                dumpTo(device, output, stdio, progress, signal)
              );
            } finally {
              progress.stop();
              await device.close();
            }
          };
          return snapshot === null
            ? await withTemporarySnapshot(m.service, volume, run)
            : await run(snapshot);
        } finally {
          await access.close();
        }
      });
      const line = `${summary("Dumped", result)}\n`;
      if (output === "-") io.stderr(line);
      else io.stdout(line);
      return ExitCode.Ok;
    },
  };
}

// ---- load -------------------------------------------------------------------------------------

interface LoadInput {
  readonly source: LoadSource;
  /** Bytes in the input, when known (a regular file). */
  readonly sizeBytes: number | null;
  close(): void;
}

async function openInput(input: string, stdio: BinaryStdio): Promise<LoadInput> {
  if (input === "-") return { source: streamSource(stdio.stdin), sizeBytes: null, close() {} };
  const file = await Deno.open(input, { read: true });
  try {
    const info = await file.stat();
    if (info.isDirectory) throw invalid(`${escapeText(input)} is a directory`);
    return {
      source: streamSource(file),
      sizeBytes: info.isFile ? info.size : null,
      close: () => file.close(),
    };
  } catch (error) {
    file.close();
    throw error;
  }
}

/** The volume size: SIZE when given (at least the input), else the input's size in sectors. */
function volumeSizeOf(sizeText: string | undefined, input: LoadInput, inputName: string): number {
  if (sizeText !== undefined) {
    const sizeBytes = parseVolumeSize(sizeText);
    if (input.sizeBytes !== null && input.sizeBytes > sizeBytes) {
      throw new UsageError(
        `SIZE ${sizeText} is smaller than ${escapeText(inputName)} (${input.sizeBytes} bytes)`,
      );
    }
    return sizeBytes;
  }
  if (input.sizeBytes === null) {
    throw new UsageError(`give SIZE: the size of ${escapeText(inputName)} is not known in advance`);
  }
  if (input.sizeBytes === 0) {
    throw new UsageError(`${escapeText(inputName)} is empty: give SIZE to create an empty volume`);
  }
  return Math.ceil(input.sizeBytes / 512) * 512;
}

/** Deletes the volume a failed load created, waiting while its server still holds it. */
async function deletePartial(
  metadata: MetadataService,
  volume: string,
  clock: Clock,
): Promise<void> {
  const deadline = clock.nowMs() + RELEASE_WAIT_MS;
  for (;;) {
    try {
      await metadata.volumes.deleteVolume(volume);
      return;
    } catch (error) {
      if (!isTorusError(error, ErrorCode.Locked) || clock.nowMs() >= deadline) throw error;
    }
    await clock.sleep(200);
  }
}

function loadCommand(deps: CtlDeps, stdio: BinaryStdio): Command {
  return {
    name: "load",
    summary: "Create a volume from a file or stdin: FILE|- VOLUME [SIZE]",
    help: `Usage: torus ctl block load FILE|- VOLUME [SIZE] [--nbd HOST:PORT] [-p]

Creates block volume VOLUME and copies FILE (stdin when FILE is -) into it from offset 0, then
flushes. SIZE (512KiB, 10GiB, plain bytes; at least the input's size) defaults to the size of
FILE rounded up to whole 512-byte sectors; stdin needs SIZE. Zero ranges of the input are not
written (the volume stays sparse). A load that fails or is interrupted deletes the volume.
VOLUME is ${NAME_RULE_TEXT}.
${transferFlagsHelp}

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(expandNbdFlag(args), transferFlags);
      if (positionals.length !== 2 && positionals.length !== 3) {
        expectPositionals(positionals, ["FILE|-", "VOLUME", "[SIZE]"]);
      }
      const [inputName, volume, sizeText] = positionals as [string, string, string | undefined];
      checkName(volume, "volume");
      const input = await openInput(inputName, stdio);
      try {
        const sizeBytes = volumeSizeOf(sizeText, input, inputName);
        const result = await withMetadata(deps, metadataFlagsOf(values), async (m) => {
          const global = await m.service.cluster.globalMetadata();
          checkMappableSize(sizeBytes, mapGeometry(global.blockSizeBytes));
          const access = await openAccess(values, deps, m, "torus ctl block load");
          try {
            await m.service.volumes.createBlockVolume(volume, sizeBytes);
            try {
              return await loadInto(access, volume, input, values, stdio, io);
            } catch (error) {
              await deletePartial(m.service, volume, deps.clock).catch((deleteError) => {
                io.stderr(
                  `torus ctl block load: could not delete the partial volume "${volume}": ` +
                    `${escapeText(errorMessage(deleteError))}\n`,
                );
              });
              throw error;
            }
          } finally {
            await access.close();
          }
        });
        io.stdout(
          `${summary("Loaded", result)} into volume "${volume}" (${formatSize(sizeBytes)})\n`,
        );
      } finally {
        input.close();
      }
      return ExitCode.Ok;
    },
  };
}

async function loadInto(
  access: VolumeAccess,
  volume: string,
  input: LoadInput,
  values: { progress?: boolean | undefined },
  stdio: BinaryStdio,
  io: Io,
): Promise<TransferResult> {
  const device = await access.open(volume);
  const progress = progressOf("load", values, stdio, io);
  try {
    return await interruptible((signal) =>
      loadDevice(input.source, device, {
        signal,
        ...(input.sizeBytes !== null ? { expectedBytes: input.sizeBytes } : {}),
        onProgress: (done, total) => progress.update(done, total),
      })
    );
  } finally {
    progress.stop();
    await device.close();
  }
}

/** `torus ctl block dump` and `torus ctl block load`. */
export function transferCommands(deps: CtlDeps, stdio: BinaryStdio = processStdio): Command[] {
  return [dumpCommand(deps, stdio), loadCommand(deps, stdio)];
}
