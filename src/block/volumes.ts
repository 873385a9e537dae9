/**
 * VolumeService: block volumes of one process (`torus serve`, or `ctl` when no node runs),
 * opened, shared and closed over a block store and the metadata service.
 *
 * - Opening a volume for write takes its lock under the process's lease, makes sure the head's
 *   generation has a root in the store (from its base, or empty), and answers the requests other
 *   processes send to the writer (snapshot, grow). Every caller that opens the same volume shares
 *   one {@link BlockVolume} through its own handle; the last handle to close flushes and unlocks.
 * - A snapshot of a volume open here is taken by its BlockVolume at a flush point; of a volume
 *   open elsewhere, by a request to that writer; of a volume open nowhere, by the metadata
 *   service alone. So a snapshot always holds exactly what was written before it, and nothing
 *   after (docs/adr/0004-block-volume-write-path.md).
 * - Snapshots and clone parents are read through {@link VolumeReader}s.
 * - A lost lease (see LeaseKeeper) ends every volume opened under it: writes fail with `locked`.
 * @module
 */

import { FenceStampedStore } from "./fence_stamp.ts";
import {
  assert,
  type Clock,
  CryptoRandom,
  ErrorCode,
  errorMessage,
  invalid,
  isTorusError,
  logger,
  type Random,
  randomUuid,
  TorusError,
} from "../core/mod.ts";
import type {
  MetadataService,
  Snapshot,
  Subscription,
  VolumeInfo,
  VolumeLock,
  VolumeParent,
  VolumeReply,
  VolumeRequest,
} from "../metadata/mod.ts";
import type { BlockStore } from "../storage/mod.ts";
import type { LeaseKeeper } from "../server/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "./device.ts";
import { BlockVolume } from "./volume.ts";
import {
  checkMappableSize,
  decodeRoot,
  encodeRoot,
  type MapGeometry,
  mapGeometry,
  type Root,
  RootField,
  rootRef,
  writeEntry,
} from "./volume_format.ts";
import { VolumeMap } from "./volume_map.ts";
import { type ReadSource, VolumeReader } from "./volume_reader.ts";

const log = logger("volumes");

/** Separates a volume from a snapshot in export names: `VOLUME@SNAPSHOT`. */
export const SNAPSHOT_SEPARATOR = "@";

/** How long an open waits for another node to release a volume's lock. */
const LOCK_HANDOVER_WAIT_MS = 3_000;
const LOCK_RETRY_MS = 100;

/** Options of {@link VolumeService}. */

export interface VolumeServiceOptions {
  readonly metadata: MetadataService;
  readonly store: BlockStore;
  /** The lease locks are taken under. */
  readonly leases: LeaseKeeper;
  /** Identity written into the locks this process takes. */
  readonly holder: string;
  readonly clock: Clock;
  /** Names temporary snapshots. Default: crypto randomness. */
  readonly random?: Random;
  /** How long to wait for another writer's answer to a request. */
  readonly requestTimeoutMs?: number;
  /**
   * No other live process uses `holder` (the caller holds the data-dir lock of the node the
   * holder names). A lock held by `holder` under another lease is then one an earlier run of this
   * node left when it died (SIGKILL, power loss): it is released by revoking that lease instead
   * of waiting up to a lease TTL for it to expire. Fencing keeps the dead run from publishing.
   */
  readonly exclusiveHolder?: boolean;
  /**
   * Called once this process holds a volume's lock, before it reads or writes the volume: a
   * cluster's distributor fences the volume at every node with the lock's token and takes over
   * what an earlier writer left to finish (its stale marks).
   */
  readonly onLocked?: (volumeId: number, fencingToken: bigint) => Promise<void>;
}

/** A volume open for write here, shared by its handles. */
interface OpenVolume {
  readonly info: VolumeInfo;
  readonly volume: BlockVolume;
  readonly lock: VolumeLock;
  handles: number;
  /** Who holds the one handle allowed while it is open exclusively (an AoE target), or null. */
  exclusiveFor: string | null;
  requests: Subscription | null;
  closing: Promise<void> | null;
}

/** Options of {@link VolumeService.openDevice}. */
export interface OpenDeviceOptions {
  /** Open read-only (the head as published; snapshots always are). */
  readOnly?: boolean;
  /**
   * Open for write as the only writer in this process too, named so (`AoE target e1.2 on
   * eth0`): refused (`locked`) while other handles are open for write, and other opens for write
   * are refused while it is. An AoE initiator's filesystem and an NBD client's must not share a
   * disk; NBD connections to one volume do share it (multi-conn).
   */
  exclusiveFor?: string;
}

/** A volume open for write in this process, as {@link VolumeService.openVolumes} reports it. */
export interface OpenVolumeState {
  readonly name: string;
  readonly id: number;
  readonly sizeBytes: number;
  /** The generation being written. */
  readonly generation: number;
  /** Handles on it (each NBD connection to it holds one). */
  readonly handles: number;
  /** `open`; `closing` (its last handle went: flushing, unlocking); `failed` (its lock was lost). */
  readonly state: "open" | "closing" | "failed";
  /** Why it failed, or null. */
  readonly failure: string | null;
  /** Bytes written to it since it was opened. */
  readonly writtenBytes: number;
  /** The fencing token of its lock acquisition. */
  readonly fencingToken: bigint;
}

/** `locked` when `exclusiveFor` (or the volume's exclusive holder) rules out another handle. */
function checkExclusive(name: string, open: OpenVolume, exclusiveFor: string | undefined): void {
  if (open.exclusiveFor !== null) {
    throw new TorusError(
      ErrorCode.Locked,
      `volume ${name} is served here by the ${open.exclusiveFor}: no other writer may open it`,
    );
  }
  if (exclusiveFor !== undefined && open.handles > 0) {
    throw new TorusError(
      ErrorCode.Locked,
      `volume ${name} is open for write here (${open.handles} handle${
        open.handles === 1 ? "" : "s"
      }, such as NBD connections): the ${exclusiveFor} must be its only writer`,
    );
  }
}

/** Splits `VOLUME@SNAPSHOT` (the first `@`); the snapshot is null for a plain volume name. */
export function parseVolumeSpec(spec: string): { volume: string; snapshot: string | null } {
  const at = spec.indexOf(SNAPSHOT_SEPARATOR);
  if (at < 0) return { volume: spec, snapshot: null };
  const volume = spec.slice(0, at);
  const snapshot = spec.slice(at + 1);
  if (volume.length === 0 || snapshot.length === 0) {
    throw invalid(`"${spec}" is not VOLUME or VOLUME@SNAPSHOT`);
  }
  return { volume, snapshot };
}

/**
 * Takes snapshot `snapshot` of volume `name` through the metadata service alone: sealed there
 * when nobody has the volume open, else taken by its writer at a flush point (a request). For
 * callers that hold no store (`torus ctl` beside a running node).
 */
export async function snapshotVolume(
  metadata: MetadataService,
  name: string,
  snapshot: string,
  options: { timeoutMs?: number } = {},
): Promise<Snapshot> {
  for (;;) {
    const info = await metadata.volumes.getVolume(name);
    try {
      return await metadata.snapshots.saveSnapshot(info.id, snapshot);
    } catch (error) {
      if (!isTorusError(error, ErrorCode.Locked)) throw error;
    }
    if (await askWriter(metadata, info.id, { op: "snapshot", name: snapshot }, options)) {
      return await metadata.snapshots.getSnapshot(info.id, snapshot);
    }
  }
}

/**
 * Grows volume `name` to `sizeBytes` through the metadata service alone (see
 * {@link snapshotVolume}); the caller checks that the size can be mapped.
 */
export async function growVolume(
  metadata: MetadataService,
  name: string,
  sizeBytes: number,
  options: { timeoutMs?: number } = {},
): Promise<VolumeInfo> {
  for (;;) {
    const info = await metadata.volumes.getVolume(name);
    try {
      return await metadata.blockVolumes.growVolume(info.id, sizeBytes);
    } catch (error) {
      if (!isTorusError(error, ErrorCode.Locked)) throw error;
    }
    if (await askWriter(metadata, info.id, { op: "grow", sizeBytes }, options)) {
      return await metadata.volumes.getVolumeById(info.id);
    }
  }
}

/** Sends `request` to the writer of `volumeId`; false when that writer left (try again). */
async function askWriter(
  metadata: MetadataService,
  volumeId: number,
  request: VolumeRequest,
  options: { timeoutMs?: number },
): Promise<boolean> {
  let reply: VolumeReply;
  try {
    reply = await metadata.requests.send(volumeId, request, options);
  } catch (error) {
    if (isTorusError(error, ErrorCode.Again)) return false;
    throw error;
  }
  if (!reply.ok) throw new TorusError(reply.code, reply.message);
  return true;
}

/** See the module doc. */
export class VolumeService {
  readonly #metadata: MetadataService;
  readonly #store: BlockStore;
  readonly #leases: LeaseKeeper;
  readonly #holder: string;
  readonly #onLocked: ((volumeId: number, fencingToken: bigint) => Promise<void>) | undefined;
  readonly #clock: Clock;
  readonly #random: Random;
  readonly #geometry: MapGeometry;
  readonly #requestTimeoutMs: number | undefined;
  readonly #exclusiveHolder: boolean;
  /** Volumes open for write, by id (a pending open is there as its promise). */
  readonly #open = new Map<number, Promise<OpenVolume>>();
  /** The same once opened, for reports (a synchronous view). */
  readonly #opened = new Map<number, OpenVolume>();
  readonly #stopLeaseWatch: () => void;
  #closed = false;

  constructor(options: VolumeServiceOptions) {
    this.#metadata = options.metadata;
    this.#store = options.store;
    this.#leases = options.leases;
    this.#holder = options.holder;
    this.#onLocked = options.onLocked;
    this.#clock = options.clock;
    this.#random = options.random ?? new CryptoRandom();
    this.#geometry = mapGeometry(options.store.blockSizeBytes);
    this.#requestTimeoutMs = options.requestTimeoutMs;
    this.#exclusiveHolder = options.exclusiveHolder ?? false;
    this.#stopLeaseWatch = options.leases.onLost((lost) => this.#leaseLost(lost));
  }

  /** The map geometry of this store's block size. */
  get geometry(): MapGeometry {
    return this.#geometry;
  }

  #checkOpen(): void {
    if (this.#closed) throw new TorusError(ErrorCode.Closed, "the volume service is closed");
  }

  // ---- opening ------------------------------------------------------------------------------

  /**
   * Opens `VOLUME` for write or `VOLUME@SNAPSHOT` read-only. Each call returns its own handle;
   * close it when done.
   */
  async openDevice(spec: string, options: OpenDeviceOptions = {}): Promise<Device> {
    const { volume, snapshot } = parseVolumeSpec(spec);
    if (snapshot !== null) return await this.openSnapshot(volume, snapshot);
    if (options.readOnly) return await this.openHeadReadOnly(volume);
    return await this.openWritable(volume, options.exclusiveFor);
  }

  /**
   * Opens volume `name` for write (a handle on the one BlockVolume of this process); with
   * `exclusiveFor`, as its only writer here (OpenDeviceOptions.exclusiveFor).
   */
  async openWritable(name: string, exclusiveFor?: string): Promise<Device> {
    this.#checkOpen();
    const info = await this.#metadata.volumes.getVolume(name);
    let opening = this.#open.get(info.id);
    if (opening === undefined) {
      opening = this.#openVolume(info);
      this.#open.set(info.id, opening);
      opening.catch(() => this.#open.delete(info.id));
    }
    const open = await opening;
    this.#opened.set(info.id, open);
    if (open.closing !== null) {
      // The last handle is closing it: wait, then open afresh.
      await open.closing.catch(() => {});
      return await this.openWritable(name, exclusiveFor);
    }
    checkExclusive(name, open, exclusiveFor);
    open.handles++;
    if (exclusiveFor === undefined) return new VolumeHandle(open.volume, () => this.#release(open));
    open.exclusiveFor = exclusiveFor;
    return new VolumeHandle(open.volume, () => {
      open.exclusiveFor = null;
      return this.#release(open);
    });
  }

  async #openVolume(info: VolumeInfo): Promise<OpenVolume> {
    checkMappableSize(info.sizeBytes, this.#geometry);
    const lock = await this.#lock(info.id).catch((error: unknown) => {
      // The metadata service names the volume by id; the user knows its name.
      if (!isTorusError(error, ErrorCode.Locked)) throw error;
      throw new TorusError(
        ErrorCode.Locked,
        `volume ${info.name} is open for write elsewhere: ${errorMessage(error)}`,
        { cause: error },
      );
    });
    try {
      await this.#onLocked?.(info.id, lock.fencingToken);
      const state = await this.#metadata.blockVolumes.headState(info.id);
      const generation = Number(state.head.inode);
      // Every change of this writer carries its lock's fencing token (ADR 0005, section 7).
      const store = new FenceStampedStore(this.#store, lock.fencingToken);
      const root = await this.#writableRoot(store, state.volume, generation, state.base);
      if (state.base !== null) await this.#metadata.blockVolumes.clearBase(lock);
      const parent = await this.#parentSource(state.volume.parent);
      const map = new VolumeMap(store, root, this.#geometry);
      const open: OpenVolume = {
        info: state.volume,
        lock,
        handles: 0,
        exclusiveFor: null,
        requests: null,
        closing: null,
        volume: new BlockVolume({
          store,
          geometry: this.#geometry,
          map,
          sizeBytes: state.volume.sizeBytes,
          parent,
        }),
      };
      open.requests = await this.#metadata.requests.serve(
        info.id,
        (request) => this.#answer(open, request),
      );
      log.info(`opened volume ${info.name} (id ${info.id}) generation ${generation} for write`);
      return open;
    } catch (error) {
      await this.#metadata.blockVolumes.unlock(lock).catch(() => {});
      throw error;
    }
  }

  /**
   * Takes the lock of `volumeId`, taking it over from an earlier run (`exclusiveHolder`). A lock
   * held by another node is asked for again for LOCK_HANDOVER_WAIT_MS: a client that moves from
   * one node to another finds the first one still flushing and unlocking for a moment.
   */
  async #lock(volumeId: number): Promise<VolumeLock> {
    const holder = { uuid: this.#holder, lease: this.#leases.lease };
    const deadlineMs = this.#clock.nowMs() + LOCK_HANDOVER_WAIT_MS;
    for (;;) {
      try {
        return await this.#metadata.blockVolumes.lock(volumeId, holder);
      } catch (error) {
        if (!isTorusError(error, ErrorCode.Locked)) throw error;
        if (await this.#releaseEarlierRun(volumeId)) {
          return await this.#metadata.blockVolumes.lock(volumeId, holder);
        }
        if (this.#clock.nowMs() >= deadlineMs) throw error;
      }
      await this.#clock.sleep(LOCK_RETRY_MS);
    }
  }

  /**
   * Revokes the lease an earlier run of this node (see `exclusiveHolder`) holds the lock of
   * `volumeId` under, which frees every lock of that run. False when someone else holds it.
   */
  async #releaseEarlierRun(volumeId: number): Promise<boolean> {
    if (!this.#exclusiveHolder) return false;
    const status = await this.#metadata.blockVolumes.lockStatus(volumeId);
    if (status.state === "free") return true;
    if (status.holder !== this.#holder || status.lease === this.#leases.lease) return false;
    log.warn(
      `volume id ${volumeId} is locked by an earlier run of this node (lease ${status.lease}): ` +
        `revoking that lease`,
    );
    await this.#metadata.leases.revoke(status.lease);
    return true;
  }

  /**
   * Releases the locks every earlier run of this node left (see `exclusiveHolder`), so that ctl
   * snapshot, resize and delete work at once after a crash, before anything opens the volumes.
   */
  async releaseLocksOfEarlierRuns(): Promise<void> {
    this.#checkOpen();
    if (!this.#exclusiveHolder) return;
    const listed = await this.#metadata.volumes.listVolumes();
    for (const info of listed.volumes) {
      if (!this.#open.has(info.id)) await this.#releaseEarlierRun(info.id);
    }
  }

  /**
   * The root of the head's generation, durable in the store before any write: the stored one,
   * else a copy of its base's (a snapshot or restore left the head without one), else empty. Its
   * size follows the volume record (a grow while nobody had the volume open).
   */
  async #writableRoot(
    store: BlockStore,
    info: VolumeInfo,
    generation: number,
    base: bigint | null,
  ): Promise<Root> {
    const stored = await this.#readRoot(info.id, generation);
    if (stored !== null && stored.sizeBytes === info.sizeBytes) return stored;
    let bytes: Uint8Array;
    if (stored !== null) {
      bytes = stored.bytes;
    } else {
      const from = base === null ? null : await this.#readRoot(info.id, Number(base));
      bytes = from?.bytes.slice() ?? encodeRoot({
        volume: info.id,
        generation,
        sizeBytes: info.sizeBytes,
        parent: info.parent === null
          ? null
          : { volume: info.parent.volumeId, generation: Number(info.parent.generation) },
      }, this.#geometry);
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    writeEntry(view, RootField.Generation, generation);
    writeEntry(view, RootField.Size, info.sizeBytes);
    await store.putBlock(rootRef(info.id, generation), bytes);
    await store.flush();
    return decodeRoot(bytes, { volume: info.id, generation }, this.#geometry);
  }

  /** The root of `(volume, generation)` from the store, or null when it has none. */
  async #readRoot(volume: number, generation: number): Promise<Root | null> {
    try {
      const bytes = await this.#store.getBlock(rootRef(volume, generation));
      return decodeRoot(bytes, { volume, generation }, this.#geometry);
    } catch (error) {
      if (isTorusError(error, ErrorCode.NotExist)) return null;
      throw error;
    }
  }

  /** A read-only view of `(volume, generation)` of `sizeBytes` (a snapshot or a parent). */
  async #reader(
    volume: number,
    generation: number,
    sizeBytes: number,
    onClose?: () => Promise<void>,
  ): Promise<VolumeReader> {
    let root = await this.#readRoot(volume, generation);
    if (root === null) {
      // Nothing was ever written in this generation: its contents are empty (or its parent's).
      const info = await this.#metadata.volumes.getVolumeById(volume);
      const parent = info.parent === null
        ? null
        : { volume: info.parent.volumeId, generation: Number(info.parent.generation) };
      const bytes = encodeRoot({ volume, generation, sizeBytes, parent }, this.#geometry);
      root = decodeRoot(bytes, { volume, generation }, this.#geometry);
    }
    const parentInfo = root.parent === null
      ? null
      : (await this.#metadata.volumes.getVolumeById(volume)).parent;
    return new VolumeReader({
      store: this.#store,
      map: new VolumeMap(this.#store, root, this.#geometry),
      sizeBytes,
      parent: await this.#parentSource(parentInfo),
      ...(onClose ? { onClose } : {}),
    });
  }

  /** Where a clone's never-written blocks read from. */
  async #parentSource(parent: VolumeParent | null): Promise<ReadSource | null> {
    if (parent === null) return null;
    const snapshot = await this.#metadata.snapshots.getSnapshot(parent.volumeId, parent.snapshot);
    const parentInfo = await this.#metadata.volumes.getVolumeById(parent.volumeId);
    return await this.#reader(
      parent.volumeId,
      Number(parent.generation),
      snapshot.sizeBytes ?? parentInfo.sizeBytes,
    );
  }

  /** Opens snapshot `snapshot` of volume `name`, read-only. */
  async openSnapshot(name: string, snapshot: string): Promise<Device> {
    this.#checkOpen();
    const info = await this.#metadata.volumes.getVolume(name);
    const found = await this.#metadata.snapshots.getSnapshot(info.id, snapshot);
    return await this.#reader(
      info.id,
      Number(found.inodeRef.inode),
      found.sizeBytes ?? info.sizeBytes,
    );
  }

  /**
   * A read-only view of volume `name` as of now: a temporary snapshot, deleted when the view is
   * closed (what `ctl block dump VOLUME` reads).
   */
  async openHeadReadOnly(name: string): Promise<Device> {
    const temporary = `temp-read-${randomUuid(this.#random)}`;
    const info = await this.#metadata.volumes.getVolume(name);
    const snapshot = await this.createSnapshot(name, temporary);
    return await this.#reader(
      info.id,
      Number(snapshot.inodeRef.inode),
      snapshot.sizeBytes ?? info.sizeBytes,
      async () => {
        await this.#metadata.snapshots.deleteSnapshot(info.id, temporary).catch((error) => {
          log.warn(`deleting temporary snapshot ${temporary}: ${errorMessage(error)}`);
        });
      },
    );
  }

  // ---- requests and snapshots ---------------------------------------------------------------

  /** Answers a request another process sent to the writer of `open`. */
  async #answer(open: OpenVolume, request: VolumeRequest): Promise<VolumeReply> {
    try {
      if (request.op === "snapshot") await this.#snapshotOpen(open, request.name);
      else await this.#growOpen(open, request.sizeBytes);
      return { ok: true };
    } catch (error) {
      if (isTorusError(error)) return { ok: false, code: error.code, message: error.message };
      return { ok: false, code: ErrorCode.Unavailable, message: errorMessage(error) };
    }
  }

  /** The writer's side of a snapshot: end the generation at a flush point, seal it. */
  async #snapshotOpen(open: OpenVolume, name: string): Promise<Snapshot> {
    let sealed: Snapshot | null = null;
    await open.volume.changeGeneration(async (ending) => {
      const next = await this.#metadata.blockVolumes.commitINodeIndex(open.info.id);
      return {
        generation: Number(next),
        commit: async () => {
          sealed = await this.#metadata.blockVolumes.sealGeneration(open.lock, {
            ending: BigInt(ending),
            next,
            snapshotName: name,
            sizeBytes: open.volume.sizeBytes,
          });
        },
      };
    });
    assert(sealed !== null, "a generation change commits or throws");
    return sealed;
  }

  async #growOpen(open: OpenVolume, sizeBytes: number): Promise<void> {
    checkMappableSize(sizeBytes, this.#geometry);
    if (sizeBytes === open.volume.sizeBytes) return;
    await this.#metadata.blockVolumes.growVolume(open.info.id, sizeBytes, open.lock);
    await open.volume.grow(sizeBytes);
  }

  /**
   * Takes snapshot `snapshot` of volume `name`, wherever it is open: exact as of the moment the
   * writer stopped at a flush point.
   */
  async createSnapshot(name: string, snapshot: string): Promise<Snapshot> {
    this.#checkOpen();
    for (;;) {
      const info = await this.#metadata.volumes.getVolume(name);
      const here = this.#open.get(info.id);
      if (here === undefined) {
        return await snapshotVolume(this.#metadata, name, snapshot, this.#requestOptions());
      }
      const open = await here;
      if (open.closing === null) return await this.#snapshotOpen(open, snapshot);
      await open.closing.catch(() => {});
    }
  }

  /** Grows volume `name` to `sizeBytes`, wherever it is open. */
  async growVolume(name: string, sizeBytes: number): Promise<VolumeInfo> {
    this.#checkOpen();
    checkMappableSize(sizeBytes, this.#geometry);
    for (;;) {
      const info = await this.#metadata.volumes.getVolume(name);
      const here = this.#open.get(info.id);
      if (here === undefined) {
        return await growVolume(this.#metadata, name, sizeBytes, this.#requestOptions());
      }
      const open = await here;
      if (open.closing === null) {
        await this.#growOpen(open, sizeBytes);
        return await this.#metadata.volumes.getVolumeById(info.id);
      }
      await open.closing.catch(() => {});
    }
  }

  #requestOptions(): { timeoutMs?: number } {
    return this.#requestTimeoutMs === undefined ? {} : { timeoutMs: this.#requestTimeoutMs };
  }

  // ---- closing ------------------------------------------------------------------------------

  async #release(open: OpenVolume): Promise<void> {
    open.handles--;
    if (open.handles > 0) return;
    open.closing ??= this.#closeVolume(open);
    await open.closing;
  }

  async #closeVolume(open: OpenVolume): Promise<void> {
    try {
      await open.requests?.unsubscribe();
      await open.volume.close();
    } finally {
      this.#open.delete(open.info.id);
      this.#opened.delete(open.info.id);
      await this.#metadata.blockVolumes.unlock(open.lock).catch((error) => {
        log.warn(`unlocking volume ${open.info.name}: ${errorMessage(error)}`);
      });
      log.info(`closed volume ${open.info.name} (id ${open.info.id})`);
    }
  }

  #leaseLost(lost: bigint): void {
    for (const opening of this.#open.values()) {
      void opening.then((open) => {
        if (open.lock.lease !== lost) return;
        open.volume.fail(
          new TorusError(
            ErrorCode.Locked,
            `volume ${open.info.name}: the lease its lock was bound to is lost; ` +
              `no more writes are accepted`,
          ),
        );
      }, () => {});
    }
  }

  /** The volumes open for write here now, by name. */
  openVolumes(): OpenVolumeState[] {
    const states: OpenVolumeState[] = [];
    for (const open of this.#opened.values()) {
      const failure = open.volume.failure;
      states.push({
        name: open.info.name,
        id: open.info.id,
        sizeBytes: open.volume.sizeBytes,
        generation: open.volume.generation,
        handles: open.handles,
        state: failure !== null ? "failed" : open.closing !== null ? "closing" : "open",
        failure: failure?.message ?? null,
        writtenBytes: open.volume.writtenBytes,
        fencingToken: open.lock.fencingToken,
      });
    }
    return states.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  }

  /** Names of every volume and snapshot, as export names (`VOLUME`, `VOLUME@SNAPSHOT`). */
  async exportNames(): Promise<string[]> {
    const { volumes } = await this.#metadata.volumes.listVolumes();
    const names: string[] = [];
    for (const volume of volumes) {
      names.push(volume.name);
      const snapshots = await this.#metadata.snapshots.listSnapshots(volume.id).catch(() => []);
      for (const snapshot of snapshots) {
        names.push(`${volume.name}${SNAPSHOT_SEPARATOR}${snapshot.name}`);
      }
    }
    return names;
  }

  /** Closes every volume open here (flush, unlock). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopLeaseWatch();
    const opens = await Promise.allSettled(this.#open.values());
    await Promise.all(opens.map(async (settled) => {
      if (settled.status !== "fulfilled") return;
      const open = settled.value;
      open.closing ??= this.#closeVolume(open);
      await open.closing.catch((error) => {
        log.error(`closing volume ${open.info.name}: ${errorMessage(error)}`);
      });
    }));
  }
}

/** One opener's handle on a shared BlockVolume: closing it releases only this handle. */
class VolumeHandle implements Device {
  readonly #volume: BlockVolume;
  readonly #release: () => Promise<void>;
  #closed: Promise<void> | null = null;

  constructor(volume: BlockVolume, release: () => Promise<void>) {
    this.#volume = volume;
    this.#release = release;
  }

  get sizeBytes(): number {
    return this.#volume.sizeBytes;
  }
  get readOnly(): boolean {
    return false;
  }
  get preferredBlockSizeBytes(): number {
    return this.#volume.preferredBlockSizeBytes;
  }

  /** Calls of this handle in flight, which its close waits for. */
  readonly #inFlight = new Set<Promise<unknown>>();

  /** Runs `call` on the volume unless this handle is closed (a rejection, never a throw). */
  #call<T>(call: () => Promise<T>): Promise<T> {
    if (this.#closed !== null) {
      return Promise.reject(new TorusError(ErrorCode.Closed, "volume handle is closed"));
    }
    const running = call();
    this.#inFlight.add(running);
    const forget = () => this.#inFlight.delete(running);
    running.then(forget, forget);
    return running;
  }

  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    return this.#call(() => this.#volume.readAt(offsetBytes, into, options));
  }
  writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions): Promise<void> {
    return this.#call(() => this.#volume.writeAt(offsetBytes, data, options));
  }
  flush(options?: DeviceCallOptions): Promise<void> {
    return this.#call(() => this.#volume.flush(options));
  }
  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    return this.#call(() => this.#volume.trim(offsetBytes, lengthBytes, options));
  }
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    return this.#call(() => this.#volume.writeZeroes(offsetBytes, lengthBytes, options));
  }
  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    return this.#call(() => this.#volume.extents(offsetBytes, lengthBytes));
  }
  close(): Promise<void> {
    this.#closed ??= Promise.allSettled(this.#inFlight).then(() => this.#release());
    return this.#closed;
  }
}
