/**
 * A volume served as an ATA-over-Ethernet target on one interface: what `torus aoe` and
 * `torus serve --aoe` run. The volume is opened through the process's VolumeService, so its lock
 * keeps every other writer (another target, an NBD writer on another machine) off it, and a
 * snapshot (`VOLUME@SNAP`) is served read-only.
 *
 * Invariants:
 * - Shelf 0..0xfffe and slot 0..0xfe (0xffff and 0xff are the broadcast addresses).
 * - `close` stops the target first (requests in flight answered, the device flushed, the socket
 *   closed), then releases the volume; a failed final flush is reported after the release.
 * @module
 */

import { UsageError } from "../cli/mod.ts";
import { type Clock, ErrorCode, errorMessage, logger, TorusError } from "../core/mod.ts";
import {
  AOE_BROADCAST_MAJOR,
  AOE_BROADCAST_MINOR,
  AoeTarget,
  type AoeTargetStats,
  type Device,
  PacketFramePort,
  type VolumeService,
} from "../block/mod.ts";

const log = logger("aoe");

/** One volume on one interface at one shelf.slot. */
export interface AoeExportSpec {
  /** `VOLUME` (served writable) or `VOLUME@SNAPSHOT` (read-only). */
  readonly volume: string;
  readonly interfaceName: string;
  /** Shelf. */
  readonly major: number;
  /** Slot. */
  readonly minor: number;
}

/** A running export. */
export interface AoeExport {
  readonly spec: AoeExportSpec;
  /** The interface's MAC, as aa:bb:cc:dd:ee:ff. */
  readonly mac: string;
  readonly sectorsPerFrame: number;
  readonly readOnly: boolean;
  /** Writes are durable when answered (no write cache). */
  readonly writeThrough: boolean;
  stats(): AoeTargetStats;
  /** Resolves with why the target stopped serving on its own (its link failed). */
  readonly failed: Promise<Error>;
  /** Stops the target and releases the volume. Idempotent. */
  close(): Promise<void>;
}

/** Linux interface names: 1..15 bytes, no '/', ':' or white space. */
const INTERFACE_NAME = /^[^/:\s]{1,15}$/;

/** A shelf number from text; UsageError naming `what` when it is not one. */
export function parseShelf(text: string, what = "MAJOR"): number {
  return parseAddressPart(text, what, AOE_BROADCAST_MAJOR - 1);
}

/** A slot number from text; UsageError naming `what` when it is not one. */
export function parseSlot(text: string, what = "MINOR"): number {
  return parseAddressPart(text, what, AOE_BROADCAST_MINOR - 1);
}

function parseAddressPart(text: string, what: string, max: number): number {
  if (!/^\d{1,6}$/.test(text) || Number(text) > max) {
    throw new UsageError(
      `${what} "${text}" is not a number from 0 to ${max} (${max + 1} is the broadcast address)`,
    );
  }
  return Number(text);
}

/** Checks an interface name; UsageError when it cannot be one. */
export function checkInterfaceName(name: string): string {
  if (!INTERFACE_NAME.test(name)) {
    throw new UsageError(`interface "${name}" is not an interface name (1 to 15 characters)`);
  }
  return name;
}

/** `VOLUME:INTERFACE:MAJOR.MINOR` (the value of `torus serve --aoe`). */
export function parseAoeExportSpec(text: string): AoeExportSpec {
  const match = /^(.+):([^:]+):([^:.]+)\.([^:.]+)$/.exec(text);
  if (match === null) {
    throw new UsageError(
      `--aoe "${text}": give VOLUME:INTERFACE:MAJOR.MINOR, for example vol1:eth0:1.2`,
    );
  }
  return {
    volume: match[1]!,
    interfaceName: checkInterfaceName(match[2]!),
    major: parseShelf(match[3]!),
    minor: parseSlot(match[4]!),
  };
}

/**
 * Refuses specs that would collide: one volume twice (a second writer of it) or one shelf.slot
 * twice on an interface (initiators could not tell the targets apart).
 */
export function checkAoeExportSpecs(specs: readonly AoeExportSpec[]): void {
  const volumes = new Set<string>();
  const addresses = new Set<string>();
  for (const spec of specs) {
    const address = `${spec.interfaceName} e${spec.major}.${spec.minor}`;
    if (volumes.has(spec.volume)) {
      throw new UsageError(`--aoe: volume "${spec.volume}" is given twice`);
    }
    if (addresses.has(address)) throw new UsageError(`--aoe: ${address} is given twice`);
    volumes.add(spec.volume);
    addresses.add(address);
  }
}

/** Options of {@link startAoeExport}. */
export interface AoeExportOptions {
  /** Period of the target's background flush (0: none). */
  readonly syncIntervalMs: number;
  /**
   * Writes answered before they are durable, made so by FLUSH CACHE and the periodic flush
   * (AoeTargetOptions.writeThrough, negated). Off by default: the Linux driver never flushes.
   */
  readonly writeCache?: boolean;
  readonly clock: Clock;
}

/**
 * Opens the raw socket of `interfaceName`; a failure says which interface and why, in one line
 * (`not_exist` for no such interface).
 */
export function openAoePort(interfaceName: string): PacketFramePort {
  try {
    return PacketFramePort.open(interfaceName);
  } catch (error) {
    const message = errorMessage(error);
    throw new TorusError(
      error instanceof TorusError ? error.code : ErrorCode.Unavailable,
      message.includes(interfaceName) ? message : `interface ${interfaceName}: ${message}`,
      { cause: error },
    );
  }
}

/** Opens the volume and starts its target; nothing stays open when it fails. */
export async function startAoeExport(
  volumes: VolumeService,
  spec: AoeExportSpec,
  options: AoeExportOptions,
): Promise<AoeExport> {
  // The link first: a missing interface (or no permission for raw sockets) takes no lock.
  const port = openAoePort(spec.interfaceName);
  let device: Device;
  try {
    // The target is the volume's only writer here: an NBD client of the same node is refused.
    device = await volumes.openDevice(spec.volume, {
      exclusiveFor: `AoE target e${spec.major}.${spec.minor} on ${spec.interfaceName}`,
    });
  } catch (error) {
    await port.close().catch(() => {});
    throw error;
  }
  const target = new AoeTarget({
    device,
    port,
    major: spec.major,
    minor: spec.minor,
    serial: serialOf(spec),
    syncIntervalMs: options.syncIntervalMs,
    writeThrough: !(options.writeCache ?? false),
    clock: options.clock,
  });
  try {
    await target.start();
  } catch (error) {
    await target.stop().catch(() => {});
    await device.close().catch(() => {});
    throw error;
  }
  return exportOf(spec, target, device, port);
}

function exportOf(
  spec: AoeExportSpec,
  target: AoeTarget,
  device: Device,
  port: PacketFramePort,
): AoeExport {
  let closing: Promise<void> | null = null;
  const close = async () => {
    let stopError: unknown = null;
    await target.stop().catch((error) => stopError = error);
    await device.close();
    // The counters' last word (a cluster client has no /metrics to read them from).
    log.info(`e${spec.major}.${spec.minor} stopped: ${formatStats(target.stats)}`);
    if (stopError !== null) throw stopError;
  };
  return {
    spec,
    mac: [...port.mac].map((byte) => byte.toString(16).padStart(2, "0")).join(":"),
    sectorsPerFrame: target.sectorsPerFrame,
    readOnly: device.readOnly,
    writeThrough: target.writeThrough,
    stats: () => target.stats,
    failed: target.failed.then((why) =>
      new Error(`AoE e${spec.major}.${spec.minor} on ${spec.interfaceName}: ${why.message}`)
    ),
    close: () => closing ??= close(),
  };
}

function formatStats(stats: AoeTargetStats): string {
  return Object.entries(stats).map(([name, value]) => `${name} ${value}`).join(", ");
}

/** IDENTIFY's serial (20 characters at most): the volume's name, else its address. */
function serialOf(spec: AoeExportSpec): string {
  const printable = /^[\x20-\x7e]{1,20}$/;
  return printable.test(spec.volume) ? spec.volume : `torus-${spec.major}.${spec.minor}`;
}

/** How an export is named in banners and logs: `VOLUME on IFACE as eMAJOR.MINOR`. */
export function describeAoeExport(exported: AoeExport): string {
  const { spec } = exported;
  return `${spec.volume} on ${spec.interfaceName} (${exported.mac}) as e${spec.major}.${spec.minor}` +
    `${exported.readOnly ? " read-only" : ""}, ${exported.sectorsPerFrame} sectors per frame, ` +
    (exported.writeThrough
      ? "write-through"
      : "write cache (durable at FLUSH CACHE and each sync interval)");
}
