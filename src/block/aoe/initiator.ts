/**
 * A test initiator for AoE targets over a FramePort: the tests' client of the target, later a
 * benchmark's, and a probe to compare our target's answers with Debian's vblade.
 *
 * Public API: `new AoeInitiator(port, options)` (it owns the port: `close()` closes it);
 * `discover()` (a broadcast config query, every reply collected within a timeout);
 * `config(target, command, string)` for read/test/test-prefix/set/force-set; `identify(target)`;
 * `readSectors` / `writeSectors` at any LBA, in LBA28 or LBA48 form, split into frames of the
 * target's advertised sectors per frame with many in flight; `flush`; `checkPowerMode`; and
 * `ata(target, fields)` for any ATA command (its reply, even an ATA error, is returned as is).
 *
 * Strictness, because a lenient client hides a target's bugs: every reply must be at least 60
 * bytes and exactly as long as its content (or 60 when shorter), padded with zeros, version 1 with
 * the R flag, from the MAC and shelf/slot the request went to, for the command sent, with a tag
 * we are waiting for. A reply that breaks a rule fails its call with `invalid`; a unicast reply
 * whose tag we never used fails every call in flight and is kept in `violations` (a tag that was
 * ours is a late duplicate of a retransmitted request, counted, not an error); a malformed
 * advertisement (a config reply to the broadcast MAC) is kept in `violations` only, as no call
 * waits for it.
 *
 * Retransmission: a request unanswered after `timeoutMs` is sent again with the same tag, up to
 * `attempts` sends; then the call fails with `unavailable`. An AoE error reply fails the call with
 * an {@link AoeCommandError} carrying the code; so does an ATA error status on read, write, flush
 * and identify.
 * @module
 */

import {
  AssertionError,
  type Clock,
  closed,
  CryptoRandom,
  ErrorCode,
  errorMessage,
  firstDifference,
  invalid,
  isTorusError,
  systemClock,
  TorusError,
  unavailable,
} from "../../core/mod.ts";
import { IDENTIFY_PAGE_BYTES, type IdentifyInfo, parseIdentifyPage } from "./identify.ts";
import { BROADCAST_MAC, ETHERNET_MIN_FRAME_BYTES, type FramePort } from "./port.ts";
import {
  AOE_ATA_DATA_OFFSET,
  AOE_BROADCAST_MAJOR,
  AOE_BROADCAST_MINOR,
  AOE_CONFIG_STRING_OFFSET,
  AOE_ERROR_NAMES,
  AOE_SECTOR_BYTES,
  AoeCommand,
  AoeError,
  type AoeHeader,
  type AoeHeaderInit,
  type AoeMessage,
  ATA_LBA28_SECTORS_MAX,
  ATA_LBA48_SECTORS_MAX,
  ATA_STATUS_FAILURE_MASK,
  AtaCommand,
  AtaErrorBit,
  AtaFlag,
  ConfigCommand,
  encodeAtaFrame,
  encodeConfigFrame,
  formatMac,
  isBroadcastMac,
  parseAoeHeader,
  parseAoeResponse,
  sameMac,
} from "./protocol.ts";

/** Wait for a reply this long before retransmitting, unless told otherwise. */
export const AOE_INITIATOR_TIMEOUT_MS_DEFAULT = 500;
/** Sends of one request before giving up, unless told otherwise. */
export const AOE_INITIATOR_ATTEMPTS_DEFAULT = 5;
/** Frames one call keeps in flight at most (further capped by the target's buffer count). */
export const AOE_INITIATOR_FRAMES_IN_FLIGHT_DEFAULT = 16;
/** Tags remembered after their call ended, to recognise late duplicate replies. */
const RECENT_TAGS_MAX = 8192;

/** Options of {@link AoeInitiator}. */
export interface AoeInitiatorOptions {
  clock?: Clock;
  timeoutMs?: number;
  attempts?: number;
  framesInFlightMax?: number;
  /** First tag used (default random, so a restarted initiator does not reuse recent tags). */
  firstTag?: number;
}

/** Per-call overrides. */
export interface AoeCallOptions {
  timeoutMs?: number;
  attempts?: number;
}

/** Where a target is. */
export interface AoeAddress {
  readonly mac: Uint8Array;
  readonly major: number;
  readonly minor: number;
}

/** A target as its config reply describes it. */
export interface AoeTargetInfo extends AoeAddress {
  readonly bufferCount: number;
  readonly firmwareVersion: number;
  /** Sectors per READ/WRITE frame (a reply's 0 means 2, for old targets, per the spec). */
  readonly sectorsPerFrame: number;
  readonly aoeVersion: number;
  readonly configCommand: number;
  readonly configString: Uint8Array;
}

/** An ATA command to send with {@link AoeInitiator.ata}. */
export interface AtaCommandFields {
  command: number;
  flags?: number;
  feature?: number;
  sectorCount?: number;
  /** All 48 bits, as sent. */
  lba?: number;
  /** Data to send (writes). */
  data?: Uint8Array;
  /** Data bytes a successful reply must carry (reads: sectors × 512; IDENTIFY: 512). */
  replyDataBytes?: number;
}

/** An ATA reply's registers and data. */
export interface AtaReply {
  readonly flags: number;
  readonly status: number;
  readonly error: number;
  readonly sectorCount: number;
  readonly lba: number;
  readonly data: Uint8Array;
}

/** Counters of an initiator. */
export interface AoeInitiatorStats {
  requestsSent: number;
  retransmits: number;
  repliesAccepted: number;
  duplicateReplies: number;
  /** Frames that were not replies to us (requests, other destinations, other EtherTypes). */
  framesIgnored: number;
}

/** A target refused a command: an AoE error code, or an ATA error status. */
export class AoeCommandError extends TorusError {
  override name = "AoeCommandError";

  constructor(
    code: ErrorCode,
    message: string,
    /** The AoE error code, or 0 for an ATA error. */
    readonly aoeError: number,
    /** The ATA status and error registers, or 0 for an AoE error. */
    readonly ataStatus: number,
    readonly ataError: number,
  ) {
    super(code, message);
  }
}

const codeOfAoeError: Readonly<Record<number, ErrorCode>> = {
  [AoeError.UnrecognizedCommand]: ErrorCode.NotSupported,
  [AoeError.BadArgument]: ErrorCode.Invalid,
  [AoeError.DeviceUnavailable]: ErrorCode.Unavailable,
  [AoeError.ConfigStringPresent]: ErrorCode.Exists,
  [AoeError.UnsupportedVersion]: ErrorCode.NotSupported,
  [AoeError.TargetReserved]: ErrorCode.Locked,
};

/** What a call waits for. */
interface Pending {
  readonly tag: number;
  /** Where the request went; null for a broadcast discovery (any target may answer). */
  readonly target: AoeAddress | null;
  readonly command: number;
  /** Data bytes a successful ATA reply carries. */
  readonly replyDataBytes: number;
  /** Discovery: every reply is collected until the call ends (others take the first). */
  readonly collects: boolean;
  accept(message: AoeMessage): void;
  fail(error: unknown): void;
}

type AtaReplyMessage = Extract<AoeMessage, { kind: "ata" }>;
type ConfigReplyMessage = Extract<AoeMessage, { kind: "config" }>;

/** A strict AoE client (see the module doc). */
export class AoeInitiator {
  readonly port: FramePort;
  /** Everything wrong a target did that no call could be failed with. */
  readonly violations: string[] = [];
  /** Targets that advertised themselves (config replies to the broadcast MAC), in order. */
  readonly advertisements: AoeTargetInfo[] = [];
  #stats: AoeInitiatorStats = {
    requestsSent: 0,
    retransmits: 0,
    repliesAccepted: 0,
    duplicateReplies: 0,
    framesIgnored: 0,
  };
  #clock: Clock;
  #timeoutMs: number;
  #attempts: number;
  #framesInFlightMax: number;
  #nextTag: number;
  #pending = new Map<number, Pending>();
  #recentTags = new Set<number>();
  #closed = false;
  #receiving: Promise<void>;

  constructor(port: FramePort, options: AoeInitiatorOptions = {}) {
    this.port = port;
    this.#clock = options.clock ?? systemClock;
    this.#timeoutMs = options.timeoutMs ?? AOE_INITIATOR_TIMEOUT_MS_DEFAULT;
    this.#attempts = options.attempts ?? AOE_INITIATOR_ATTEMPTS_DEFAULT;
    this.#framesInFlightMax = options.framesInFlightMax ?? AOE_INITIATOR_FRAMES_IN_FLIGHT_DEFAULT;
    this.#nextTag = options.firstTag ?? new CryptoRandom().nextU32();
    this.#receiving = this.#receiveLoop();
  }

  /** A snapshot of the counters. */
  get stats(): Readonly<AoeInitiatorStats> {
    return { ...this.#stats };
  }

  /**
   * Sends one config query to `major`/`minor` (default the broadcast ones) and collects every
   * reply that arrives within `timeoutMs`, sorted by shelf, slot and MAC.
   */
  async discover(
    options: {
      timeoutMs?: number;
      major?: number;
      minor?: number;
      command?: number;
      configString?: Uint8Array;
    } = {},
  ): Promise<AoeTargetInfo[]> {
    const found: AoeTargetInfo[] = [];
    const tag = this.#allocateTag();
    let failure: unknown = null;
    const address = {
      mac: BROADCAST_MAC,
      major: options.major ?? AOE_BROADCAST_MAJOR,
      minor: options.minor ?? AOE_BROADCAST_MINOR,
    };
    this.#pending.set(tag, {
      tag,
      target: null,
      command: AoeCommand.QueryConfig,
      replyDataBytes: 0,
      collects: true,
      accept: (message) => {
        const info = this.#targetInfoOf(message);
        if (!answersQuery(address, info)) {
          failure ??= invalid(`e${info.major}.${info.minor} answered a query for another target`);
        }
        found.push(info);
      },
      fail: (error) => failure ??= error,
    });
    try {
      const frame = this.#configFrame(address, tag, options.command ?? ConfigCommand.Read, options);
      await this.#send(frame);
      await this.#clock.sleep(options.timeoutMs ?? this.#timeoutMs);
    } finally {
      this.#finish(tag);
    }
    if (failure !== null) throw failure;
    return found.sort((a, b) =>
      a.major - b.major || a.minor - b.minor || formatMac(a.mac).localeCompare(formatMac(b.mac))
    );
  }

  /**
   * A Query Config command to one target. Test and test-prefix are answered only on a match:
   * without a reply within the attempts they resolve to null. Set on a target whose string is not
   * empty fails with an {@link AoeCommandError} (AoE error 4, code `exists`).
   */
  async config(
    target: AoeAddress,
    command: number,
    configString: Uint8Array = new Uint8Array(),
    options: AoeCallOptions = {},
  ): Promise<AoeTargetInfo | null> {
    const silentOnMismatch = command === ConfigCommand.Test || command === ConfigCommand.TestPrefix;
    try {
      const message = await this.#exchange(
        target,
        AoeCommand.QueryConfig,
        0,
        (tag) => this.#configFrame(target, tag, command, { configString }),
        options,
      );
      const info = this.#targetInfoOf(message);
      checkConfigReply(command, configString, info);
      return info;
    } catch (error) {
      const noReply = isTorusError(error, ErrorCode.Unavailable) &&
        !(error instanceof AoeCommandError);
      if (silentOnMismatch && noReply) return null;
      throw error;
    }
  }

  /** Sends one ATA command and returns its reply, even one with an ATA error status. */
  async ata(
    target: AoeAddress,
    fields: AtaCommandFields,
    options: AoeCallOptions = {},
  ): Promise<AtaReply> {
    const message = await this.#exchange(
      target,
      AoeCommand.Ata,
      fields.replyDataBytes ?? 0,
      (tag) => this.#ataFrame(target, tag, fields),
      options,
    ) as AtaReplyMessage;
    const status = message.ata.commandStatus;
    const failed = (status & ATA_STATUS_FAILURE_MASK) !== 0;
    return {
      flags: message.ata.flags,
      status,
      error: message.ata.errorFeature,
      sectorCount: message.ata.sectorCount,
      lba: message.ata.lba,
      data: message.data.subarray(0, failed ? 0 : fields.replyDataBytes ?? 0),
    };
  }

  /** IDENTIFY DEVICE, parsed (the page's integrity checksum is verified when present). */
  async identify(target: AoeAddress, options: AoeCallOptions = {}): Promise<IdentifyInfo> {
    const reply = await this.ata(target, {
      command: AtaCommand.IdentifyDevice,
      sectorCount: 1,
      replyDataBytes: IDENTIFY_PAGE_BYTES,
    }, options);
    throwOnAtaError(reply, "IDENTIFY DEVICE");
    return parseIdentifyPage(reply.data.slice());
  }

  /** Reads `sectors` sectors at `lba` (LBA48 form unless `lba48: false`). */
  async readSectors(
    target: AoeTargetInfo,
    lba: number,
    sectors: number,
    options: AoeCallOptions & { lba48?: boolean } = {},
  ): Promise<Uint8Array> {
    const lba48 = options.lba48 ?? true;
    checkTransfer(lba, sectors, lba48);
    const into = new Uint8Array(sectors * AOE_SECTOR_BYTES);
    await this.#eachFrame(target, lba, sectors, async (frameLba, count, offsetBytes) => {
      const reply = await this.ata(target, {
        command: lba48 ? AtaCommand.ReadSectorsExt : AtaCommand.ReadSectors,
        flags: lba48 ? AtaFlag.Lba48 : 0,
        sectorCount: count,
        lba: lba48 ? frameLba : lba28Register(frameLba),
        replyDataBytes: count * AOE_SECTOR_BYTES,
      }, options);
      throwOnAtaError(reply, `READ SECTORS at ${frameLba}`);
      into.set(reply.data, offsetBytes);
    });
    return into;
  }

  /** Writes `data` (whole sectors) at `lba` (LBA48 form unless `lba48: false`). */
  async writeSectors(
    target: AoeTargetInfo,
    lba: number,
    data: Uint8Array,
    options: AoeCallOptions & { lba48?: boolean } = {},
  ): Promise<void> {
    const lba48 = options.lba48 ?? true;
    if (data.length % AOE_SECTOR_BYTES !== 0) {
      throw invalid(`write of ${data.length} bytes is not whole 512-byte sectors`);
    }
    const sectors = data.length / AOE_SECTOR_BYTES;
    checkTransfer(lba, sectors, lba48);
    await this.#eachFrame(target, lba, sectors, async (frameLba, count, offsetBytes) => {
      const reply = await this.ata(target, {
        command: lba48 ? AtaCommand.WriteSectorsExt : AtaCommand.WriteSectors,
        flags: (lba48 ? AtaFlag.Lba48 : 0) | AtaFlag.Write,
        sectorCount: count,
        lba: lba48 ? frameLba : lba28Register(frameLba),
        data: data.subarray(offsetBytes, offsetBytes + count * AOE_SECTOR_BYTES),
      }, options);
      throwOnAtaError(reply, `WRITE SECTORS at ${frameLba}`);
    });
  }

  /** FLUSH CACHE EXT (or FLUSH CACHE with `ext: false`). */
  async flush(target: AoeAddress, options: AoeCallOptions & { ext?: boolean } = {}): Promise<void> {
    const ext = options.ext ?? true;
    const reply = await this.ata(target, {
      command: ext ? AtaCommand.FlushCacheExt : AtaCommand.FlushCache,
      flags: ext ? AtaFlag.Lba48 : 0,
    }, options);
    throwOnAtaError(reply, "FLUSH CACHE");
  }

  /** CHECK POWER MODE: the sector count register of the reply (0xFF: active or idle). */
  async checkPowerMode(target: AoeAddress, options: AoeCallOptions = {}): Promise<number> {
    const reply = await this.ata(target, { command: AtaCommand.CheckPowerMode }, options);
    throwOnAtaError(reply, "CHECK POWER MODE");
    return reply.sectorCount;
  }

  /** Fails every call in flight with `closed` and closes the port. Idempotent. */
  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.#failAll(closed("AoE initiator closed"));
      await this.port.close();
    }
    await this.#receiving;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Runs `each` for every frame-sized piece of a transfer, keeping several in flight. */
  async #eachFrame(
    target: AoeTargetInfo,
    lba: number,
    sectors: number,
    each: (lba: number, sectors: number, offsetBytes: number) => Promise<void>,
  ): Promise<void> {
    const perFrame = target.sectorsPerFrame;
    const pieces: [number, number][] = [];
    for (let done = 0; done < sectors; done += perFrame) {
      pieces.push([done, Math.min(perFrame, sectors - done)]);
    }
    const workers = Math.max(1, Math.min(this.#framesInFlightMax, target.bufferCount));
    let next = 0;
    const work = async () => {
      while (next < pieces.length) {
        const [done, count] = pieces[next++]!;
        await each(lba + done, count, done * AOE_SECTOR_BYTES);
      }
    };
    await Promise.all(Array.from({ length: Math.min(workers, pieces.length) }, work));
  }

  /** Sends a request and resends it with the same tag until a valid reply or the last attempt. */
  async #exchange(
    target: AoeAddress,
    command: number,
    replyDataBytes: number,
    frameOf: (tag: number) => Uint8Array,
    options: AoeCallOptions,
  ): Promise<AoeMessage> {
    if (this.#closed) throw closed("AoE initiator closed");
    const attempts = options.attempts ?? this.#attempts;
    const timeoutMs = options.timeoutMs ?? this.#timeoutMs;
    const tag = this.#allocateTag();
    const settled = new AbortController();
    const outcome = new Promise<AoeMessage>((resolve, reject) => {
      this.#pending.set(tag, {
        tag,
        target,
        command,
        replyDataBytes,
        collects: false,
        accept: (message) => {
          settled.abort();
          resolve(message);
        },
        fail: (error) => {
          settled.abort();
          reject(error);
        },
      });
    });
    // A failure that comes while we are not awaiting `outcome` must not count as unhandled.
    outcome.catch(() => {});
    try {
      const frame = frameOf(tag);
      for (let attempt = 1; !settled.signal.aborted; attempt++) {
        if (attempt > attempts) {
          throw unavailable(
            `no reply from e${target.major}.${target.minor} (${formatMac(target.mac)}) to tag ` +
              `${tag} after ${attempts} sends ${timeoutMs} ms apart`,
          );
        }
        if (attempt > 1) this.#stats.retransmits++;
        await this.#send(frame);
        await this.#clock.sleep(timeoutMs, settled.signal).catch(() => {});
      }
      return await outcome;
    } finally {
      this.#finish(tag);
    }
  }

  async #send(frame: Uint8Array): Promise<void> {
    this.#stats.requestsSent++;
    await this.port.send(frame);
  }

  #allocateTag(): number {
    for (;;) {
      const tag = this.#nextTag;
      this.#nextTag = (this.#nextTag + 1) >>> 0;
      // Tag 0 is what targets advertise with; a pending tag is taken.
      if (tag !== 0 && !this.#pending.has(tag)) return tag;
    }
  }

  /** Forgets a call's tag, remembering it was ours so late duplicates are recognised. */
  #finish(tag: number): void {
    this.#pending.delete(tag);
    this.#recentTags.add(tag);
    if (this.#recentTags.size > RECENT_TAGS_MAX) {
      this.#recentTags.delete(this.#recentTags.values().next().value!);
    }
  }

  async #receiveLoop(): Promise<void> {
    for (;;) {
      let frame: Uint8Array | null;
      try {
        frame = await this.port.receive();
      } catch (error) {
        if (error instanceof AssertionError) throw error;
        this.#failAll(error);
        return;
      }
      if (frame === null) {
        this.#failAll(closed("AoE initiator's port closed"));
        return;
      }
      this.#onFrame(frame);
    }
  }

  #onFrame(frame: Uint8Array): void {
    let header: AoeHeader;
    try {
      header = parseAoeHeader(frame);
    } catch {
      this.#stats.framesIgnored++;
      return;
    }
    if (!header.response) {
      this.#onRequestFrame(header);
      return;
    }
    if (!sameMac(header.destination, this.port.mac)) {
      if (isBroadcastMac(header.destination)) this.#onBroadcastReply(frame, header);
      else this.#stats.framesIgnored++;
      return;
    }
    const pending = this.#pending.get(header.tag);
    if (pending === undefined) {
      if (this.#recentTags.has(header.tag)) {
        this.#stats.duplicateReplies++;
        return;
      }
      const violation = `unsolicited reply with tag ${header.tag} from ${formatMac(header.source)}`;
      this.violations.push(violation);
      this.#failAll(invalid(violation));
      return;
    }
    // The first reply settles the call: a second one for the tag is a duplicate from here on.
    if (!pending.collects) this.#finish(header.tag);
    try {
      const message = validateReply(frame, header, pending);
      this.#stats.repliesAccepted++;
      pending.accept(message);
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      pending.fail(error);
    }
  }

  /**
   * A frame without the R flag is a request (another initiator's, on a shared segment), unless
   * it comes from the target a call waits on, to us, with that call's tag: a reply that forgot
   * its R flag, which fails the call.
   */
  #onRequestFrame(header: AoeHeader): void {
    const pending = this.#pending.get(header.tag);
    const target = pending?.target;
    if (
      pending === undefined || target === undefined || target === null ||
      !sameMac(header.source, target.mac) || !sameMac(header.destination, this.port.mac)
    ) {
      this.#stats.framesIgnored++;
      return;
    }
    this.#finish(header.tag);
    pending.fail(
      invalid(`reply from ${formatMac(header.source)} to tag ${header.tag} lacks the R flag`),
    );
  }

  /** Records an advertisement; anything else sent to everyone is a violation. */
  #onBroadcastReply(frame: Uint8Array, header: AoeHeader): void {
    try {
      if (header.command !== AoeCommand.QueryConfig) {
        throw invalid(`command ${header.command} reply sent to the broadcast MAC`);
      }
      const message = validateReply(frame, header, {
        tag: header.tag,
        target: null,
        command: AoeCommand.QueryConfig,
        replyDataBytes: 0,
        collects: true,
        accept: () => {},
        fail: () => {},
      });
      this.advertisements.push(this.#targetInfoOf(message));
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      this.violations.push(
        `advertisement from ${formatMac(header.source)}: ${errorMessage(error)}`,
      );
    }
  }

  #failAll(error: unknown): void {
    for (const pending of [...this.#pending.values()]) pending.fail(error);
  }

  #targetInfoOf(message: AoeMessage): AoeTargetInfo {
    const { header, config } = message as ConfigReplyMessage;
    return {
      mac: header.source,
      major: header.major,
      minor: header.minor,
      bufferCount: config.bufferCount,
      firmwareVersion: config.firmwareVersion,
      sectorsPerFrame: config.sectorCount === 0 ? 2 : config.sectorCount,
      aoeVersion: config.aoeVersion,
      configCommand: config.configCommand,
      configString: config.configString,
    };
  }

  #requestInit(target: AoeAddress, tag: number): AoeHeaderInit {
    return {
      destination: target.mac,
      source: this.port.mac,
      response: false,
      major: target.major,
      minor: target.minor,
      tag,
    };
  }

  #configFrame(
    target: AoeAddress,
    tag: number,
    command: number,
    options: { configString?: Uint8Array },
  ): Uint8Array {
    return encodeConfigFrame(this.#requestInit(target, tag), {
      bufferCount: 0,
      firmwareVersion: 0,
      sectorCount: 0,
      aoeVersion: 1,
      configCommand: command,
      configString: options.configString ?? new Uint8Array(),
    });
  }

  #ataFrame(target: AoeAddress, tag: number, fields: AtaCommandFields): Uint8Array {
    const data = fields.data;
    return encodeAtaFrame(
      this.#requestInit(target, tag),
      {
        flags: fields.flags ?? 0,
        errorFeature: fields.feature ?? 0,
        sectorCount: fields.sectorCount ?? 0,
        commandStatus: fields.command,
        lba: fields.lba ?? 0,
      },
      data?.length ?? 0,
      data,
    );
  }
}

/** Whether a target at `info` is one a query sent to `address` may be answered by. */
function answersQuery(address: AoeAddress, info: AoeTargetInfo): boolean {
  return (address.major === AOE_BROADCAST_MAJOR || address.major === info.major) &&
    (address.minor === AOE_BROADCAST_MINOR || address.minor === info.minor);
}

/** A config reply must echo its sub-command and carry the string the sub-command implies. */
function checkConfigReply(command: number, argument: Uint8Array, info: AoeTargetInfo): void {
  const where = `config reply from e${info.major}.${info.minor}`;
  if (info.configCommand !== command) {
    throw invalid(`${where} is for sub-command ${info.configCommand}, not ${command}`);
  }
  const at = firstDifference(argument, info.configString);
  const matches = command === ConfigCommand.TestPrefix ? at < 0 || at === argument.length : at < 0;
  if (command !== ConfigCommand.Read && !matches) {
    throw invalid(`${where} carries a string that sub-command ${command} cannot have produced`);
  }
}

/** Checks a reply against the request it answers; returns it parsed or throws `invalid`. */
function validateReply(frame: Uint8Array, header: AoeHeader, pending: Pending): AoeMessage {
  const from = `reply from ${formatMac(header.source)} to tag ${header.tag}`;
  if (frame.length < ETHERNET_MIN_FRAME_BYTES) {
    throw invalid(`${from} is ${frame.length} bytes, shorter than the 60-byte minimum`);
  }
  const message = parseAoeResponse(frame);
  if (header.command !== pending.command) {
    throw invalid(`${from} is for command ${header.command}, not ${pending.command}`);
  }
  checkSender(header, pending.target, from);
  if (message.kind === "error") throw aoeErrorOf(header);
  if (message.kind === "ata") {
    const failed = (message.ata.commandStatus & ATA_STATUS_FAILURE_MASK) !== 0;
    checkPadding(frame, AOE_ATA_DATA_OFFSET + (failed ? 0 : pending.replyDataBytes), from);
  } else if (message.kind === "config") {
    checkPadding(frame, AOE_CONFIG_STRING_OFFSET + message.config.configString.length, from);
    if (message.config.aoeVersion !== 1) {
      throw invalid(`${from} advertises AoE version ${message.config.aoeVersion}`);
    }
  }
  return message;
}

function checkSender(header: AoeHeader, target: AoeAddress | null, from: string): void {
  if (header.major === AOE_BROADCAST_MAJOR || header.minor === AOE_BROADCAST_MINOR) {
    throw invalid(`${from} claims the broadcast shelf or slot e${header.major}.${header.minor}`);
  }
  if (target === null) return;
  if (!isBroadcastMac(target.mac) && !sameMac(header.source, target.mac)) {
    throw invalid(`${from} comes from a MAC other than ${formatMac(target.mac)}`);
  }
  if (header.major !== target.major || header.minor !== target.minor) {
    throw invalid(
      `${from} is from e${header.major}.${header.minor}, not e${target.major}.${target.minor}`,
    );
  }
}

/** A reply must be exactly its content (or 60 bytes when shorter), padded with zeros. */
function checkPadding(frame: Uint8Array, contentBytes: number, from: string): void {
  const expected = Math.max(ETHERNET_MIN_FRAME_BYTES, contentBytes);
  if (frame.length !== expected) {
    throw invalid(`${from} is ${frame.length} bytes, expected ${expected}`);
  }
  for (let i = contentBytes; i < frame.length; i++) {
    if (frame[i] !== 0) throw invalid(`${from} has non-zero padding at byte ${i}`);
  }
}

function aoeErrorOf(header: AoeHeader): AoeCommandError {
  const name = AOE_ERROR_NAMES[header.errorCode] ?? "unknown error";
  return new AoeCommandError(
    codeOfAoeError[header.errorCode] ?? ErrorCode.Invalid,
    `e${header.major}.${header.minor} answered AoE error ${header.errorCode} (${name})`,
    header.errorCode,
    0,
    0,
  );
}

function throwOnAtaError(reply: AtaReply, what: string): void {
  if ((reply.status & ATA_STATUS_FAILURE_MASK) === 0) return;
  const outOfRange = (reply.error & AtaErrorBit.IdNotFound) !== 0;
  throw new AoeCommandError(
    outOfRange ? ErrorCode.Invalid : ErrorCode.Unavailable,
    `${what} failed: ATA status 0x${reply.status.toString(16)}, error 0x${
      reply.error.toString(16)
    }`,
    0,
    reply.status,
    reply.error,
  );
}

function checkTransfer(lba: number, sectors: number, lba48: boolean): void {
  const limit = lba48 ? ATA_LBA48_SECTORS_MAX : ATA_LBA28_SECTORS_MAX;
  if (
    !Number.isSafeInteger(lba) || !Number.isSafeInteger(sectors) || lba < 0 || sectors < 0 ||
    lba + sectors > limit
  ) {
    throw invalid(`sectors ${lba}+${sectors} are outside the ${lba48 ? 48 : 28}-bit LBA range`);
  }
}

/** An LBA28 address as the Linux driver sends it: the device register (0xE0) in lba3's top. */
function lba28Register(lba: number): number {
  return lba + 0xe0 * 2 ** 24;
}
