/**
 * The AoE target: serves one Device over one FramePort as shelf `major`, slot `minor`.
 *
 * Public API: `new AoeTarget({ device, port, major, minor, ... })`, `start()` (advertises the
 * target with a config reply to the broadcast MAC, then serves), `stop()` (stops taking frames,
 * waits for the requests in flight, flushes the device, closes the port), `stats` (live counters
 * for metrics), `configString`, `sectorsPerFrame`. The target owns the port (stop closes it) but
 * not the device (the caller closes it after stop).
 *
 * Behaviour:
 * - Routing: a frame is served when its destination MAC is ours or broadcast and its shelf/slot
 *   are ours or the broadcast ones (0xffff / 0xff). ATA commands must name our shelf and slot
 *   exactly: a broadcast write would land on every target of the segment. Responses, frames for
 *   other targets and other EtherTypes are ignored; frames that do not parse are dropped as
 *   malformed, with a bad-argument error reply when they were addressed to us alone (an AoE
 *   version other than 1 gets the unsupported-version error instead).
 * - Query Config: read, test (reply only on an exact match), test prefix (reply only when the
 *   argument is a prefix), set (only while the string is empty, else error 4, "config string
 *   present", even for the same string), force set. The string lives in memory; one longer than
 *   a reply can carry at our MTU is a bad argument. Other sub-commands: bad argument.
 * - ATA: IDENTIFY DEVICE (identify.ts; the sector count is ignored, as a disk does), READ/WRITE
 *   SECTORS (EXT), FLUSH CACHE (EXT) (replies once `device.flush()` resolved), CHECK POWER MODE
 *   (active). Other commands: ATA abort. Writes are answered once the device resolved them, so
 *   the A (asynchronous) flag changes nothing; the D flag is ignored. Other AoE commands (MAC
 *   mask list, reserve/release, vendor ones): error 1, "unrecognized command".
 * - Error vocabulary. AoE error 2 (bad argument) for requests that are malformed as AoE: more
 *   sectors than fit a frame at our MTU (the count we advertise), write data that disagrees with
 *   the sector count, a READ/WRITE whose E flag disagrees with the EXT command or whose W flag
 *   disagrees with the direction. ATA errors (status DRDY|ERR) for what a disk would refuse: an
 *   unknown command (ABRT), a range past the end (IDNF|ABRT; vblade sets IDNF alone), a write
 *   to a read-only device and device failures (ABRT). The split matters to the Linux driver: it fails the I/O at
 *   once on an ATA error, but only logs an AoE error and retransmits until the device is declared
 *   dead. A closed device is AoE error 3 (device unavailable).
 * - Many requests in flight: each frame is handled as it arrives, up to `bufferCount` (which the
 *   config reply advertises) at once; frames beyond that are dropped and counted, and the
 *   initiator retransmits them.
 * - Retransmissions: requests that change state (writes, config set) are remembered by (source
 *   MAC, tag) with a CRC-32C of the request, in a cache bounded by entries and age. A request that
 *   matches one in flight or answered is not applied again: it gets the first one's reply, once
 *   that exists. The age bound keeps a later, unrelated request that reuses a tag with the same
 *   bytes (an initiator restarted) from being swallowed.
 * - Durability: writes are acknowledged when the device resolved them, which is not durable; ATA
 *   FLUSH, a periodic flush every `syncIntervalMs` while writes happened since the last flush, and
 *   `stop()` make them so. The IDENTIFY page advertises a write cache so initiators send flushes
 *   (the Linux aoe driver never does: `writeThrough` answers each write once it is durable, a FUA
 *   write, and IDENTIFY then says the write cache is off).
 *   A failed periodic flush is logged and counted; the next period tries again.
 * @module
 */

import {
  AOE_SYNC_INTERVAL_MS,
  AssertionError,
  type Clock,
  crc32c,
  ErrorCode,
  errorMessage,
  firstDifference,
  InFlight,
  invalid,
  isTorusError,
  type Logger,
  logger,
  systemClock,
  VERSION,
} from "../../core/mod.ts";
import type { Device } from "../device.ts";
import { buildIdentifyPage, type IdentifyOptions } from "./identify.ts";
import {
  AOE_ETHERTYPE,
  BROADCAST_MAC,
  ETHERNET_HEADER_BYTES,
  ETHERNET_MIN_FRAME_BYTES,
  type FramePort,
} from "./port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AOE_BROADCAST_MAJOR,
  AOE_BROADCAST_MINOR,
  AOE_CONFIG_STRING_MAX_BYTES,
  AOE_CONFIG_STRING_OFFSET,
  AOE_MAJOR_MAX,
  AOE_MINOR_MAX,
  AOE_SECTOR_BYTES,
  AOE_VERSION,
  AoeError,
  type AoeHeader,
  type AoeHeaderInit,
  type AoeMessage,
  ATA_LBA48_SECTORS_MAX,
  ATA_POWER_MODE_ACTIVE,
  AtaCommand,
  AtaErrorBit,
  AtaFlag,
  type AtaHeader,
  ataLba,
  ataSectorCount,
  AtaStatus,
  ConfigCommand,
  encodeAoeFrame,
  encodeAtaFrame,
  encodeConfigFrame,
  formatMac,
  isBroadcastMac,
  offeredSectorsPerFrame,
  parseAoeHeader,
  parseAoeRequest,
  sameMac,
} from "./protocol.ts";

/** Requests a target handles at once unless told otherwise (advertised as its buffer count). */
export const AOE_TARGET_BUFFER_COUNT_DEFAULT = 64;
/** Replies of state-changing requests remembered for retransmissions. */
export const AOE_REPLY_CACHE_ENTRIES_DEFAULT = 1024;
/** How long a remembered reply answers a retransmission. */
export const AOE_DUPLICATE_WINDOW_MS_DEFAULT = 30_000;
/** The firmware version a target advertises in config replies unless told otherwise. */
export const AOE_FIRMWARE_VERSION_DEFAULT = 1;

/** Options of {@link AoeTarget}. */
export interface AoeTargetOptions {
  device: Device;
  /** The link; the target closes it in `stop()`. */
  port: FramePort;
  /** Shelf, 0..0xfffe. */
  major: number;
  /** Slot, 0..0xfe. */
  minor: number;
  /** Initial config string (at most 1024 bytes; default empty). */
  configString?: Uint8Array;
  /** Requests handled at once and advertised (default 64, 1..0xffff). */
  bufferCount?: number;
  /** Advertised in config replies (0..0xffff, default 1). */
  firmwareVersion?: number;
  /** IDENTIFY serial number (default "torus-MAJOR.MINOR"); derive it from the volume. */
  serial?: string;
  /** IDENTIFY firmware revision (default the program version, without its suffix). */
  firmwareRevision?: string;
  /** IDENTIFY model (default "torus AoE"). */
  model?: string;
  /** Period of the background flush; 0 turns it off (default AOE_SYNC_INTERVAL_MS). */
  syncIntervalMs?: number;
  /**
   * Answer a write only once it is durable (a FUA write), and say in IDENTIFY that the write
   * cache is off (default false). The Linux aoe driver never sends FLUSH CACHE: without this, a
   * guest's fsync is durable only at the next periodic flush.
   */
  writeThrough?: boolean;
  /** Remembered replies for retransmitted writes (default 1024). */
  replyCacheEntries?: number;
  /** How long a remembered reply stays valid (default 30 s). */
  duplicateWindowMs?: number;
  clock?: Clock;
  log?: Logger;
}

/** Live counters of a target (a snapshot is returned by {@link AoeTarget.stats}). */
export interface AoeTargetStats {
  /** Every frame the port handed us. */
  framesReceived: number;
  /** Frames sent, the start-up advertisement included. */
  repliesSent: number;
  /** Frames for other targets, responses, other EtherTypes, config tests that did not match. */
  ignored: number;
  /** Frames that did not parse. */
  malformed: number;
  /** Requests dropped because `bufferCount` were in flight. */
  busyDropped: number;
  /** Retransmitted requests answered from the reply cache instead of applied again. */
  duplicates: number;
  /** Replies with an ATA error status. */
  ataErrors: number;
  /** Replies with an AoE error code. */
  aoeErrors: number;
  bytesRead: number;
  bytesWritten: number;
  /** Device flushes that succeeded (ATA FLUSH, periodic, stop). */
  flushes: number;
  /** Periodic flushes that failed. */
  syncFailures: number;
  /** Replies the port refused to send. */
  sendFailures: number;
}

type AtaRequest = Extract<AoeMessage, { kind: "ata" }>;
type ConfigRequest = Extract<AoeMessage, { kind: "config" }>;

/** What a device error becomes on the wire. */
export type AoeDeviceErrorReply = { readonly aoeError: number } | { readonly ataError: number };

const ataAbort: AoeDeviceErrorReply = { ataError: AtaErrorBit.Abort };
const replyOfErrorCode = {
  [ErrorCode.Invalid]: { ataError: AtaErrorBit.IdNotFound | AtaErrorBit.Abort },
  [ErrorCode.ReadOnly]: ataAbort,
  [ErrorCode.OutOfSpace]: ataAbort,
  [ErrorCode.BlockUnavailable]: ataAbort,
  [ErrorCode.Unavailable]: ataAbort,
  // The writer lost its lock: fail each I/O at once, as a disk that refuses writes.
  [ErrorCode.Locked]: ataAbort,
  // The device is gone: the target cannot serve anything any more.
  [ErrorCode.Closed]: { aoeError: AoeError.DeviceUnavailable },
  [ErrorCode.NotSupported]: ataAbort,
  [ErrorCode.Again]: ataAbort,
  [ErrorCode.NotExist]: ataAbort,
  [ErrorCode.Exists]: ataAbort,
  [ErrorCode.CompareFailed]: ataAbort,
  [ErrorCode.OutcomeUnknown]: ataAbort,
} as const satisfies Record<ErrorCode, AoeDeviceErrorReply>;

/** The reply for an error a device call threw (a bug, AssertionError, is rethrown). */
export function aoeReplyOfDeviceError(error: unknown): AoeDeviceErrorReply {
  if (error instanceof AssertionError) throw error;
  return isTorusError(error) ? replyOfErrorCode[error.code] : ataAbort;
}

/** A remembered state-changing request and its reply (once it exists). */
interface RememberedReply {
  readonly fingerprint: number;
  readonly atMs: number;
  readonly reply: Promise<Uint8Array | null>;
}

/** Replies by (source MAC, tag), oldest first out, each valid for `windowMs`. */
class ReplyCache {
  #entries = new Map<string, RememberedReply>();

  constructor(readonly maxEntries: number, readonly windowMs: number, readonly clock: Clock) {}

  find(key: string, fingerprint: number): RememberedReply | undefined {
    const entry = this.#entries.get(key);
    if (entry === undefined || entry.fingerprint !== fingerprint) return undefined;
    return this.clock.nowMs() - entry.atMs <= this.windowMs ? entry : undefined;
  }

  remember(key: string, fingerprint: number, reply: Promise<Uint8Array | null>): void {
    this.#entries.delete(key);
    this.#entries.set(key, { fingerprint, atMs: this.clock.nowMs(), reply });
    while (this.#entries.size > this.maxEntries) {
      this.#entries.delete(this.#entries.keys().next().value!);
    }
  }
}

/** Serves one Device as one AoE shelf/slot (see the module doc). */
export class AoeTarget {
  readonly major: number;
  readonly minor: number;
  /** Sectors one frame carries at the port's MTU: the most a READ/WRITE may ask for. */
  readonly sectorsPerFrame: number;
  readonly bufferCount: number;
  readonly firmwareVersion: number;
  /** Writes are durable when answered (AoeTargetOptions.writeThrough). */
  readonly writeThrough: boolean;
  #device: Device;
  #port: FramePort;
  #clock: Clock;
  #log: Logger;
  #deviceSectors: number;
  #identifyPage: Uint8Array;
  readonly #identifyOptions: Omit<IdentifyOptions, "sectors">;
  #configString: Uint8Array;
  /** The longest config string a reply carries at the port's MTU (at most 1024). */
  #configStringMaxBytes: number;
  #syncIntervalMs: number;
  #replies: ReplyCache;
  #stats: AoeTargetStats = newStats();
  /** Every task (request, duplicate, reply) running, for stop() to wait on. */
  #work = new InFlight();
  /** Requests being handled, bounded by bufferCount. */
  #handling = 0;
  #writesResolved = 0;
  #writesFlushed = 0;
  #started = false;
  #stopping = false;
  #stopped: Promise<void> | null = null;
  #receiving: Promise<void> = Promise.resolve();
  #fail!: (why: Error) => void;
  /**
   * Resolves with why the target stopped serving on its own: its link failed or was closed under
   * it. Never resolves while it serves, nor after `stop()`. The owner decides what to do (the
   * `torus aoe` process exits non-zero, so a supervisor restarts it).
   */
  readonly failed: Promise<Error> = new Promise((resolve) => this.#fail = resolve);
  #syncing: Promise<void> = Promise.resolve();
  #syncAbort = new AbortController();

  constructor(options: AoeTargetOptions) {
    const { device, port, major, minor } = options;
    checkRange(major, 0, AOE_MAJOR_MAX, "AoE major (shelf)");
    checkRange(minor, 0, AOE_MINOR_MAX, "AoE minor (slot)");
    this.bufferCount = options.bufferCount ?? AOE_TARGET_BUFFER_COUNT_DEFAULT;
    checkRange(this.bufferCount, 1, 0xffff, "AoE buffer count");
    this.firmwareVersion = options.firmwareVersion ?? AOE_FIRMWARE_VERSION_DEFAULT;
    checkRange(this.firmwareVersion, 0, 0xffff, "AoE firmware version");
    this.#syncIntervalMs = options.syncIntervalMs ?? AOE_SYNC_INTERVAL_MS;
    checkRange(this.#syncIntervalMs, 0, Number.MAX_SAFE_INTEGER, "AoE sync interval (ms)");
    const configString = options.configString ?? new Uint8Array();
    this.#configStringMaxBytes = Math.min(
      AOE_CONFIG_STRING_MAX_BYTES,
      port.mtu + ETHERNET_HEADER_BYTES - AOE_CONFIG_STRING_OFFSET,
    );
    checkRange(configString.length, 0, this.#configStringMaxBytes, "AoE config string length");
    this.sectorsPerFrame = offeredSectorsPerFrame(port.mtu);
    if (this.sectorsPerFrame < 1) {
      throw invalid(`MTU ${port.mtu} of ${port.name} cannot carry one 512-byte sector per frame`);
    }
    this.#deviceSectors = device.sizeBytes / AOE_SECTOR_BYTES;
    checkRange(this.#deviceSectors, 0, ATA_LBA48_SECTORS_MAX, "device size in sectors");
    this.major = major;
    this.minor = minor;
    this.writeThrough = options.writeThrough ?? false;
    this.#device = device;
    this.#port = port;
    this.#clock = options.clock ?? systemClock;
    this.#log = options.log ?? logger("aoe");
    this.#configString = configString.slice();
    this.#identifyOptions = {
      serial: options.serial ?? `torus-${major}.${minor}`,
      firmwareRevision: options.firmwareRevision ?? VERSION.split("-")[0]!,
      ...(options.model === undefined ? {} : { model: options.model }),
      writeCacheEnabled: !this.writeThrough,
    };
    this.#identifyPage = buildIdentifyPage({
      ...this.#identifyOptions,
      sectors: this.#deviceSectors,
    });
    this.#replies = new ReplyCache(
      options.replyCacheEntries ?? AOE_REPLY_CACHE_ENTRIES_DEFAULT,
      options.duplicateWindowMs ?? AOE_DUPLICATE_WINDOW_MS_DEFAULT,
      this.#clock,
    );
  }

  /** A snapshot of the counters. */
  get stats(): Readonly<AoeTargetStats> {
    return { ...this.#stats };
  }

  /** The current config string (a copy). */
  get configString(): Uint8Array {
    return this.#configString.slice();
  }

  /** Advertises the target once (a config reply to the broadcast MAC), then serves. */
  async start(): Promise<void> {
    if (this.#started || this.#stopping) throw invalid("AoE target was already started");
    this.#started = true;
    this.#receiving = this.#receiveLoop();
    if (this.#syncIntervalMs > 0) this.#syncing = this.#syncLoop(this.#syncIntervalMs);
    const advertisement = encodeConfigFrame(
      this.#replyAddress(BROADCAST_MAC, 0),
      this.#configReply(ConfigCommand.Read),
    );
    await this.#work.run(() => this.#send(advertisement));
    this.#log.info(
      `e${this.major}.${this.minor} on ${this.#port.name} (${formatMac(this.#port.mac)}): ` +
        `${this.#deviceSectors} sectors, ${this.sectorsPerFrame} per frame`,
    );
  }

  /**
   * Stops taking frames, waits for the requests in flight and their replies, flushes the device
   * once more and closes the port. Rejects with the flush's error if that flush failed (after
   * closing the port). Idempotent.
   */
  stop(): Promise<void> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  async #stop(): Promise<void> {
    this.#stopping = true;
    this.#syncAbort.abort();
    await this.#syncing;
    await this.#work.idle();
    let flushError: unknown = null;
    try {
      await this.#flushDevice();
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      flushError = error;
      this.#log.error(`e${this.major}.${this.minor}: final flush failed: ${errorMessage(error)}`);
    }
    await this.#port.close();
    await this.#receiving;
    if (flushError !== null) throw flushError;
  }

  async #receiveLoop(): Promise<void> {
    for (;;) {
      let frame: Uint8Array | null;
      try {
        frame = await this.#port.receive();
      } catch (error) {
        if (error instanceof AssertionError) throw error;
        this.#log.error(
          `${this.#port.name}: receiving failed, target stops: ${errorMessage(error)}`,
        );
        if (!this.#stopping) {
          this.#fail(new Error(`receiving on ${this.#port.name} failed: ${errorMessage(error)}`));
        }
        return;
      }
      if (frame === null) {
        if (!this.#stopping) this.#fail(new Error(`${this.#port.name} was closed`));
        return;
      }
      this.#stats.framesReceived++;
      if (this.#stopping) this.#stats.ignored++;
      else this.#accept(frame);
    }
  }

  /** Routes one frame: ignores it, drops it, or starts handling it (without waiting). */
  #accept(frame: Uint8Array): void {
    const header = this.#routableHeader(frame);
    if (header === null) return;
    let message: AoeMessage;
    try {
      message = parseAoeRequest(frame);
    } catch (error) {
      if (!isTorusError(error, ErrorCode.Invalid)) throw error;
      this.#dropMalformed(header, errorMessage(error));
      return;
    }
    if (message.kind === "ata" && this.#isBroadcastAddress(header)) {
      this.#stats.ignored++;
      return;
    }
    this.#dispatch(frame, message);
  }

  /** The headers of a frame meant for us, or null (counted) when it is not one. */
  #routableHeader(frame: Uint8Array): AoeHeader | null {
    if (frame.length >= 14 && ((frame[12]! << 8) | frame[13]!) !== AOE_ETHERTYPE) {
      this.#stats.ignored++;
      return null;
    }
    let header: AoeHeader;
    try {
      header = parseAoeHeader(frame);
    } catch (error) {
      if (!isTorusError(error, ErrorCode.Invalid)) throw error;
      this.#stats.malformed++;
      return null;
    }
    if (header.response || !this.#addressedToUs(header)) {
      this.#stats.ignored++;
      return null;
    }
    // A multicast source cannot have sent a request: a reply would go to a group.
    if ((header.source[0]! & 0x01) !== 0) {
      this.#stats.malformed++;
      return null;
    }
    return header;
  }

  #addressedToUs(header: AoeHeader): boolean {
    return (sameMac(header.destination, this.#port.mac) || isBroadcastMac(header.destination)) &&
      (header.major === this.major || header.major === AOE_BROADCAST_MAJOR) &&
      (header.minor === this.minor || header.minor === AOE_BROADCAST_MINOR);
  }

  #isBroadcastAddress(header: AoeHeader): boolean {
    return header.major === AOE_BROADCAST_MAJOR || header.minor === AOE_BROADCAST_MINOR;
  }

  /**
   * Counts a malformed request and answers it when it was meant for us alone: a version we do not
   * speak with error 5, anything else with error 2. Broadcast garbage gets no answer, so a segment
   * full of targets does not answer one bad frame many times.
   */
  #dropMalformed(header: AoeHeader, reason: string): void {
    this.#stats.malformed++;
    this.#log.debug(`malformed frame from ${formatMac(header.source)}: ${reason}`);
    if (this.#isBroadcastAddress(header) || header.errorFlag) return;
    const code = header.version === AOE_VERSION
      ? AoeError.BadArgument
      : AoeError.UnsupportedVersion;
    this.#stats.aoeErrors++;
    const reply = encodeAoeFrame(
      { ...this.#replyAddress(header.source, header.tag), errorCode: code },
      header.command,
      new Uint8Array(),
    );
    void this.#work.run(() => this.#send(reply));
  }

  /** Starts handling a request, or answers it as a retransmission, or drops it when busy. */
  #dispatch(frame: Uint8Array, message: AoeMessage): void {
    const { header } = message;
    const changesState = isStateChanging(message);
    const key = `${formatMac(header.source)}/${header.tag}`;
    const fingerprint = changesState ? crc32c(frame.subarray(ETHERNET_HEADER_BYTES)) : 0;
    const remembered = changesState ? this.#replies.find(key, fingerprint) : undefined;
    if (remembered !== undefined) {
      this.#stats.duplicates++;
      void this.#work.run(async () => {
        const reply = await remembered.reply.catch(() => null);
        if (reply !== null) await this.#send(reply);
      });
      return;
    }
    if (this.#handling >= this.bufferCount) {
      this.#stats.busyDropped++;
      return;
    }
    this.#handling++;
    const reply = this.#handle(message).finally(() => this.#handling--);
    if (changesState) this.#replies.remember(key, fingerprint, reply);
    void this.#work.run(async () => {
      const frameOut = await reply;
      if (frameOut !== null) await this.#send(frameOut);
      else this.#stats.ignored++;
    });
  }

  /** The reply to a request, or null when the protocol says to stay silent. */
  #handle(message: AoeMessage): Promise<Uint8Array | null> {
    switch (message.kind) {
      case "ata":
        return this.#handleAta(message);
      case "config":
        return Promise.resolve(this.#handleConfig(message));
      default:
        return Promise.resolve(this.#aoeError(message, AoeError.UnrecognizedCommand));
    }
  }

  /**
   * The device's size in sectors now: a volume grown while served (torus ctl volume resize) is
   * seen by the next IDENTIFY, which the Linux driver sends on `aoe-revalidate`.
   */
  #currentSectors(): number {
    const sectors = Math.min(
      Math.floor(this.#device.sizeBytes / AOE_SECTOR_BYTES),
      ATA_LBA48_SECTORS_MAX,
    );
    if (sectors !== this.#deviceSectors) {
      this.#deviceSectors = sectors;
      this.#identifyPage = buildIdentifyPage({ ...this.#identifyOptions, sectors });
    }
    return sectors;
  }

  #currentIdentifyPage(): Uint8Array {
    this.#currentSectors();
    return this.#identifyPage;
  }

  #handleAta(request: AtaRequest): Promise<Uint8Array> {
    switch (request.ata.commandStatus) {
      case AtaCommand.IdentifyDevice:
        return Promise.resolve(this.#ataReply(request, {}, this.#currentIdentifyPage()));
      case AtaCommand.ReadSectors:
      case AtaCommand.ReadSectorsExt:
        return this.#read(request);
      case AtaCommand.WriteSectors:
      case AtaCommand.WriteSectorsExt:
        return this.#write(request);
      case AtaCommand.FlushCache:
      case AtaCommand.FlushCacheExt:
        return this.#flushCommand(request);
      case AtaCommand.CheckPowerMode:
        return Promise.resolve(this.#ataReply(request, { sectorCount: ATA_POWER_MODE_ACTIVE }));
      default:
        return Promise.resolve(this.#ataError(request, AtaErrorBit.Abort));
    }
  }

  async #read(request: AtaRequest): Promise<Uint8Array> {
    const transfer = this.#checkTransfer(request, false);
    if (transfer instanceof Uint8Array) return transfer;
    const lengthBytes = transfer.sectors * AOE_SECTOR_BYTES;
    const reply = this.#ataReply(request, {}, undefined, lengthBytes);
    const into = reply.subarray(AOE_ATA_DATA_OFFSET, AOE_ATA_DATA_OFFSET + lengthBytes);
    try {
      await this.#device.readAt(transfer.lba * AOE_SECTOR_BYTES, into);
    } catch (error) {
      return this.#deviceError(request, error, "read");
    }
    this.#stats.bytesRead += lengthBytes;
    return reply;
  }

  async #write(request: AtaRequest): Promise<Uint8Array> {
    const transfer = this.#checkTransfer(request, true);
    if (transfer instanceof Uint8Array) return transfer;
    const lengthBytes = transfer.sectors * AOE_SECTOR_BYTES;
    try {
      await this.#device.writeAt(
        transfer.lba * AOE_SECTOR_BYTES,
        request.data.subarray(0, lengthBytes),
        this.writeThrough ? { fua: true } : {},
      );
    } catch (error) {
      return this.#deviceError(request, error, "write");
    }
    this.#writesResolved++;
    this.#stats.bytesWritten += lengthBytes;
    return this.#ataReply(request, {});
  }

  async #flushCommand(request: AtaRequest): Promise<Uint8Array> {
    try {
      await this.#flushDevice();
    } catch (error) {
      return this.#deviceError(request, error, "flush");
    }
    return this.#ataReply(request, {});
  }

  /** Where a READ/WRITE goes, or the error reply when it cannot be served. */
  #checkTransfer(
    request: AtaRequest,
    write: boolean,
  ): { lba: number; sectors: number } | Uint8Array {
    const { ata, data } = request;
    const lba48 = (ata.flags & AtaFlag.Lba48) !== 0;
    const extCommand = ata.commandStatus === AtaCommand.ReadSectorsExt ||
      ata.commandStatus === AtaCommand.WriteSectorsExt;
    if (lba48 !== extCommand || ((ata.flags & AtaFlag.Write) !== 0) !== write) {
      return this.#aoeError(request, AoeError.BadArgument);
    }
    const sectors = ataSectorCount(ata, lba48);
    if (sectors > this.sectorsPerFrame) return this.#aoeError(request, AoeError.BadArgument);
    const dataBytes = write ? sectors * AOE_SECTOR_BYTES : 0;
    // Bytes beyond the data are accepted only as the padding of a minimum-size frame.
    const paddingOnly = AOE_ATA_DATA_OFFSET + data.length <= ETHERNET_MIN_FRAME_BYTES;
    if (data.length < dataBytes || (data.length > dataBytes && !paddingOnly)) {
      return this.#aoeError(request, AoeError.BadArgument);
    }
    const lba = ataLba(ata, lba48);
    if (lba + sectors > this.#currentSectors()) {
      return this.#ataError(request, AtaErrorBit.IdNotFound | AtaErrorBit.Abort);
    }
    if (write && this.#device.readOnly) return this.#ataError(request, AtaErrorBit.Abort);
    return { lba, sectors };
  }

  #deviceError(request: AtaRequest, error: unknown, what: string): Uint8Array {
    const reply = aoeReplyOfDeviceError(error);
    const message = `e${this.major}.${this.minor}: ${what} failed: ${errorMessage(error)}`;
    if (isTorusError(error, ErrorCode.Invalid) || isTorusError(error, ErrorCode.ReadOnly)) {
      this.#log.debug(message);
    } else {
      this.#log.warn(message);
    }
    return "aoeError" in reply
      ? this.#aoeError(request, reply.aoeError)
      : this.#ataError(request, reply.ataError);
  }

  #handleConfig(request: ConfigRequest): Uint8Array | null {
    const { configString: argument, configCommand: command } = request.config;
    switch (command) {
      case ConfigCommand.Read:
        return this.#configFrame(request, command, 0);
      case ConfigCommand.Test:
        return firstDifference(argument, this.#configString) < 0
          ? this.#configFrame(request, command, 0)
          : null;
      case ConfigCommand.TestPrefix:
        return isPrefix(argument, this.#configString)
          ? this.#configFrame(request, command, 0)
          : null;
      case ConfigCommand.Set:
      case ConfigCommand.ForceSet:
        return this.#setConfigString(request, command);
      default:
        return this.#aoeError(request, AoeError.BadArgument);
    }
  }

  /** Set (only while the string is empty) or force set. */
  #setConfigString(request: ConfigRequest, command: number): Uint8Array {
    const argument = request.config.configString;
    // A string our own replies could not carry at our MTU would make every config reply fail.
    if (argument.length > this.#configStringMaxBytes) {
      return this.#aoeError(request, AoeError.BadArgument);
    }
    if (command === ConfigCommand.Set && this.#configString.length !== 0) {
      this.#stats.aoeErrors++;
      return this.#configFrame(request, command, AoeError.ConfigStringPresent);
    }
    this.#configString = argument.slice();
    return this.#configFrame(request, command, 0);
  }

  #configFrame(request: ConfigRequest, command: number, errorCode: number): Uint8Array {
    const { header } = request;
    return encodeConfigFrame(
      { ...this.#replyAddress(header.source, header.tag), errorCode },
      this.#configReply(command),
    );
  }

  #configReply(command: number) {
    return {
      bufferCount: this.bufferCount,
      firmwareVersion: this.firmwareVersion,
      sectorCount: this.sectorsPerFrame,
      aoeVersion: AOE_VERSION,
      configCommand: command,
      configString: this.#configString,
    };
  }

  /** A successful ATA reply: the request's registers with status DRDY and `changes`. */
  #ataReply(
    request: AtaRequest,
    changes: Partial<AtaHeader>,
    data?: Uint8Array,
    dataBytes = data?.length ?? 0,
  ): Uint8Array {
    const { header, ata } = request;
    return encodeAtaFrame(
      this.#replyAddress(header.source, header.tag),
      { ...ata, errorFeature: 0, commandStatus: AtaStatus.DeviceReady, ...changes },
      dataBytes,
      data,
    );
  }

  /** An ATA error reply: status DRDY|ERR and `errorBits` in the error register. */
  #ataError(request: AtaRequest, errorBits: number): Uint8Array {
    this.#stats.ataErrors++;
    return this.#ataReply(request, {
      errorFeature: errorBits,
      commandStatus: AtaStatus.DeviceReady | AtaStatus.Error,
    });
  }

  /** An AoE error reply echoing the request's command header (without data or string). */
  #aoeError(request: AoeMessage, code: number): Uint8Array {
    this.#stats.aoeErrors++;
    const { header } = request;
    const init: AoeHeaderInit = {
      ...this.#replyAddress(header.source, header.tag),
      errorCode: code,
    };
    if (request.kind === "ata") return encodeAtaFrame(init, request.ata);
    if (request.kind === "config") {
      return encodeConfigFrame(init, { ...request.config, configString: new Uint8Array() });
    }
    return encodeAoeFrame(init, header.command, new Uint8Array());
  }

  #replyAddress(destination: Uint8Array, tag: number): AoeHeaderInit {
    return {
      destination,
      source: this.#port.mac,
      response: true,
      major: this.major,
      minor: this.minor,
      tag,
    };
  }

  async #send(frame: Uint8Array): Promise<void> {
    try {
      await this.#port.send(frame);
      this.#stats.repliesSent++;
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      this.#stats.sendFailures++;
      this.#log.warn(`${this.#port.name}: sending a reply failed: ${errorMessage(error)}`);
    }
  }

  /** Flushes the device; on success every write resolved before the call is durable. */
  async #flushDevice(): Promise<void> {
    const covered = this.#writesResolved;
    await this.#device.flush();
    this.#writesFlushed = Math.max(this.#writesFlushed, covered);
    this.#stats.flushes++;
  }

  async #syncLoop(intervalMs: number): Promise<void> {
    const signal = this.#syncAbort.signal;
    while (!signal.aborted) {
      try {
        await this.#clock.sleep(intervalMs, signal);
      } catch {
        return; // stopped (or the clock was closed)
      }
      if (this.#writesResolved === this.#writesFlushed) continue;
      try {
        await this.#flushDevice();
      } catch (error) {
        if (error instanceof AssertionError) throw error;
        this.#stats.syncFailures++;
        this.#log.warn(
          `e${this.major}.${this.minor}: periodic flush failed: ${errorMessage(error)}`,
        );
      }
    }
  }
}

/** Whether applying a request twice would differ from applying it once. */
function isStateChanging(message: AoeMessage): boolean {
  if (message.kind === "ata") {
    const command = message.ata.commandStatus;
    return command === AtaCommand.WriteSectors || command === AtaCommand.WriteSectorsExt;
  }
  if (message.kind === "config") {
    const command = message.config.configCommand;
    return command === ConfigCommand.Set || command === ConfigCommand.ForceSet;
  }
  return false;
}

/** Whether `prefix` is a prefix of `bytes`. */
function isPrefix(prefix: Uint8Array, bytes: Uint8Array): boolean {
  const at = firstDifference(prefix, bytes);
  return at < 0 || at === prefix.length;
}

function newStats(): AoeTargetStats {
  return {
    framesReceived: 0,
    repliesSent: 0,
    ignored: 0,
    malformed: 0,
    busyDropped: 0,
    duplicates: 0,
    ataErrors: 0,
    aoeErrors: 0,
    bytesRead: 0,
    bytesWritten: 0,
    flushes: 0,
    syncFailures: 0,
    sendFailures: 0,
  };
}

function checkRange(value: number, min: number, max: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw invalid(`${what} ${value} is outside ${min}..${max}`);
  }
}
