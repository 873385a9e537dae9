/**
 * Where an NBD server's exports come from: the {@link NbdExports} provider interface, and
 * {@link SharedExports}, a provider that opens each device once and shares it between the
 * connections using it (reference counted).
 *
 * Contract of a provider:
 * - `list()` names the exports NBD_OPT_LIST offers (snapshots need not be listed).
 * - `open(name)` returns a Device for one connection; the server calls its `close()` exactly
 *   once, when that connection ends. Several connections to one export must see one device
 *   (a flush on one covers writes acknowledged on all: the server advertises multi-conn).
 * - `VOLUME@SNAP` names a snapshot, opened read-only (its Device has `readOnly` set).
 * - Errors are TorusErrors: `not_exist` (no such export), `locked` (in use elsewhere),
 *   `invalid` (a malformed name); the server turns them into option error replies.
 * @module
 */

import { closed } from "../../core/mod.ts";
import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "../device.ts";

/** Options of {@link NbdExports.open}. */
export interface NbdExportOpenOptions {
  /** Serve the export read-only even if it could be written (`--read-only` servers). */
  readOnly?: boolean;
}

/** The exports an NBD server serves. */
export interface NbdExports {
  /** Export names, for NBD_OPT_LIST. */
  list(): Promise<string[]>;
  /** A device for one connection to `name`; the server closes it when the connection ends. */
  open(name: string, options?: NbdExportOpenOptions): Promise<Device>;
}

/** What {@link SharedExports} opens devices from. */
export interface DeviceSource {
  list(): Promise<string[]>;
  /** Opens the device behind `name`; closed when the last connection using it ends. */
  open(name: string, options: { readOnly: boolean }): Promise<Device>;
}

interface SharedEntry {
  opening: Promise<Device>;
  handles: number;
}

/**
 * Opens each export once and hands every connection its own handle onto the shared device.
 * Closing a handle waits for its calls, flushes, and closes the device when it was the last one;
 * an open that arrives while the last close is still running waits for it (a volume's lock must
 * be released before it can be taken again).
 */
export class SharedExports implements NbdExports {
  readonly #source: DeviceSource;
  readonly #entries = new Map<string, SharedEntry>();
  readonly #closing = new Map<string, Promise<void>>();

  constructor(source: DeviceSource) {
    this.#source = source;
  }

  list(): Promise<string[]> {
    return this.#source.list();
  }

  async open(name: string, options: NbdExportOpenOptions = {}): Promise<Device> {
    const readOnly = options.readOnly ?? false;
    const key = `${readOnly ? "ro" : "rw"}:${name}`;
    await this.#closing.get(key);
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      entry = { opening: this.#source.open(name, { readOnly }), handles: 0 };
      this.#entries.set(key, entry);
    }
    entry.handles++;
    let device: Device;
    try {
      device = await entry.opening;
    } catch (error) {
      this.#drop(key, entry);
      throw error;
    }
    const shared = entry;
    return new DeviceHandle(device, () => this.#release(key, shared, device));
  }

  /** Number of devices open now (for tests and status). */
  get openDevices(): number {
    return this.#entries.size;
  }

  #drop(key: string, entry: SharedEntry): boolean {
    entry.handles--;
    if (entry.handles > 0) return false;
    if (this.#entries.get(key) === entry) this.#entries.delete(key);
    return true;
  }

  async #release(key: string, entry: SharedEntry, device: Device): Promise<void> {
    if (!this.#drop(key, entry)) return;
    const closing = device.close();
    this.#closing.set(key, closing.catch(() => {}));
    try {
      await closing;
    } finally {
      this.#closing.delete(key);
    }
  }
}

/**
 * One user's view of a shared device: forwards every call, counts the calls in flight so
 * `close()` can wait for them, flushes a writable device on close, then releases its share.
 */
export class DeviceHandle implements Device {
  readonly #device: Device;
  readonly #release: () => Promise<void>;
  #inFlight = 0;
  #idle: (() => void) | null = null;
  #closing: Promise<void> | null = null;
  // Made once, so counting a call allocates no closure per call.
  readonly #settled = () => {
    if (--this.#inFlight === 0 && this.#idle !== null) this.#idle();
  };
  readonly #passValue = (value: unknown): unknown => {
    this.#settled();
    return value;
  };
  readonly #settledWithError = (error: unknown): never => {
    this.#settled();
    throw error;
  };

  constructor(device: Device, release: () => Promise<void>) {
    this.#device = device;
    this.#release = release;
  }

  get sizeBytes(): number {
    return this.#device.sizeBytes;
  }
  get readOnly(): boolean {
    return this.#device.readOnly;
  }
  get preferredBlockSizeBytes(): number {
    return this.#device.preferredBlockSizeBytes;
  }

  readAt(offsetBytes: number, into: Uint8Array, options?: DeviceCallOptions): Promise<void> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.readAt(offsetBytes, into, options));
  }
  writeAt(offsetBytes: number, data: Uint8Array, options?: DeviceWriteOptions): Promise<void> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.writeAt(offsetBytes, data, options));
  }
  flush(options?: DeviceCallOptions): Promise<void> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.flush(options));
  }
  trim(offsetBytes: number, lengthBytes: number, options?: DeviceWriteOptions): Promise<void> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.trim(offsetBytes, lengthBytes, options));
  }
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.writeZeroes(offsetBytes, lengthBytes, options));
  }
  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    if (this.#closing) return this.#closedError();
    return this.#track(this.#device.extents(offsetBytes, lengthBytes));
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    try {
      if (this.#inFlight > 0) {
        await new Promise<void>((resolve) => this.#idle = resolve);
      }
      if (!this.#device.readOnly) await this.#device.flush();
    } finally {
      await this.#release();
    }
  }

  #track<T>(call: Promise<T>): Promise<T> {
    this.#inFlight++;
    return call.then(this.#passValue, this.#settledWithError) as Promise<T>;
  }

  #closedError(): Promise<never> {
    return Promise.reject(closed("device handle is closed"));
  }
}
