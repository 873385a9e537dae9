/**
 * Devices for tests, made by wrapping a real device (faults by wrapping, not mocks):
 * - {@link GatedDevice} holds chosen calls until the test opens the gate (in-flight, DISC and
 *   out-of-order tests, without timing);
 * - {@link RecordingDevice} records which writes resolved and which a flush or FUA made durable
 *   (the multi-conn claim);
 * - {@link FaultDevice} fails chosen calls with a chosen error (errno mapping).
 * @module
 */

import type {
  Device,
  DeviceCallOptions,
  DeviceExtent,
  DeviceWriteOptions,
  WriteZeroesOptions,
} from "../../src/block/mod.ts";

/** What a call is, for predicates. */
export interface DeviceCall {
  kind: "read" | "write" | "flush" | "trim" | "writeZeroes";
  offsetBytes: number;
  lengthBytes: number;
  options: DeviceWriteOptions & WriteZeroesOptions;
}

/** Forwards everything to `inner`; subclasses intercept {@link call}. */
abstract class WrappedDevice implements Device {
  readonly inner: Device;

  constructor(inner: Device) {
    this.inner = inner;
  }

  get sizeBytes(): number {
    return this.inner.sizeBytes;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get preferredBlockSizeBytes(): number {
    return this.inner.preferredBlockSizeBytes;
  }

  /** Runs one call; `run` performs it on the inner device. */
  protected abstract call(call: DeviceCall, run: () => Promise<void>): Promise<void>;

  readAt(offsetBytes: number, into: Uint8Array, options: DeviceCallOptions = {}): Promise<void> {
    const call = { kind: "read", offsetBytes, lengthBytes: into.length, options } as const;
    return this.call(call, () => this.inner.readAt(offsetBytes, into, options));
  }
  writeAt(offsetBytes: number, data: Uint8Array, options: DeviceWriteOptions = {}): Promise<void> {
    const call = { kind: "write", offsetBytes, lengthBytes: data.length, options } as const;
    return this.call(call, () => this.inner.writeAt(offsetBytes, data, options));
  }
  flush(options: DeviceCallOptions = {}): Promise<void> {
    const call = { kind: "flush", offsetBytes: 0, lengthBytes: 0, options } as const;
    return this.call(call, () => this.inner.flush(options));
  }
  trim(offsetBytes: number, lengthBytes: number, options: DeviceWriteOptions = {}): Promise<void> {
    const call = { kind: "trim", offsetBytes, lengthBytes, options } as const;
    return this.call(call, () => this.inner.trim(offsetBytes, lengthBytes, options));
  }
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options: WriteZeroesOptions = {},
  ): Promise<void> {
    const call = { kind: "writeZeroes", offsetBytes, lengthBytes, options } as const;
    return this.call(call, () => this.inner.writeZeroes(offsetBytes, lengthBytes, options));
  }
  extents(offsetBytes: number, lengthBytes: number): Promise<DeviceExtent[]> {
    return this.inner.extents(offsetBytes, lengthBytes);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Holds the calls `hold` picks until {@link open}; counts calls in flight. */
export class GatedDevice extends WrappedDevice {
  /** Calls started, and the most in flight at once. */
  started = 0;
  inFlight = 0;
  inFlightPeak = 0;
  /** Calls that were held and aborted by their signal. */
  aborted = 0;
  #hold: (call: DeviceCall) => boolean;
  #held: (() => void)[] = [];
  #heldWaiters: { count: number; resolve: () => void }[] = [];

  constructor(inner: Device, hold: (call: DeviceCall) => boolean = () => true) {
    super(inner);
    this.#hold = hold;
  }

  /** Calls waiting at the gate. */
  get held(): number {
    return this.#held.length;
  }

  /** Resolves once at least `count` calls wait at the gate. */
  whenHeld(count: number): Promise<void> {
    if (this.#held.length >= count) return Promise.resolve();
    return new Promise((resolve) => this.#heldWaiters.push({ count, resolve }));
  }

  /** Lets every held call through and holds nothing more. */
  open(): void {
    this.#hold = () => false;
    for (const release of this.#held.splice(0)) release();
  }

  protected async call(call: DeviceCall, run: () => Promise<void>): Promise<void> {
    this.started++;
    this.inFlight++;
    this.inFlightPeak = Math.max(this.inFlightPeak, this.inFlight);
    try {
      if (this.#hold(call)) await this.#wait(call.options.signal);
      await run();
    } finally {
      this.inFlight--;
    }
  }

  #wait(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const release = () => resolve();
      this.#held.push(release);
      signal?.addEventListener("abort", () => {
        this.aborted++;
        this.#held = this.#held.filter((r) => r !== release);
        reject(signal.reason);
      }, { once: true });
      for (const waiter of this.#heldWaiters.filter((w) => this.#held.length >= w.count)) {
        this.#heldWaiters = this.#heldWaiters.filter((w) => w !== waiter);
        waiter.resolve();
      }
    });
  }
}

/**
 * Opens `gate` when disposed: declared after the fixture (`using _gate = opensAtExit(gated)`), it
 * runs first, so a failed assertion never leaves held calls that the fixture's close would wait
 * for forever.
 */
export function opensAtExit(gate: GatedDevice): Disposable {
  return { [Symbol.dispose]: () => gate.open() };
}

/** One write as the device saw it. */
export interface RecordedWrite {
  offsetBytes: number;
  lengthBytes: number;
  /** Its promise resolved (the server may have acknowledged it). */
  resolved: boolean;
  /** A flush that started after it resolved has finished, or it was written with FUA. */
  durable: boolean;
}

/** Records which writes a flush covered, as a durable device must. */
export class RecordingDevice extends WrappedDevice {
  readonly writes: RecordedWrite[] = [];
  flushes = 0;

  /** The recorded writes that overlap a byte. */
  writesAt(offsetBytes: number): RecordedWrite[] {
    return this.writes.filter((w) =>
      w.offsetBytes <= offsetBytes && offsetBytes < w.offsetBytes + w.lengthBytes
    );
  }

  protected async call(call: DeviceCall, run: () => Promise<void>): Promise<void> {
    if (call.kind === "read") return await run();
    if (call.kind === "flush") {
      // What this flush covers: exactly the writes that had resolved when it started.
      const covered = this.writes.filter((w) => w.resolved && !w.durable);
      await run();
      // A turn of the event loop, so a flush is not instantaneous.
      await new Promise((resolve) => setTimeout(resolve, 0));
      for (const write of covered) write.durable = true;
      this.flushes++;
      return;
    }
    const write = {
      offsetBytes: call.offsetBytes,
      lengthBytes: call.lengthBytes,
      resolved: false,
      durable: false,
    };
    this.writes.push(write);
    await run();
    if (call.options.fua) write.durable = true;
    write.resolved = true;
  }
}

/** Fails the calls `fail` picks with the error it returns. */
export class FaultDevice extends WrappedDevice {
  #fail: (call: DeviceCall) => unknown | null;

  constructor(inner: Device, fail: (call: DeviceCall) => unknown | null) {
    super(inner);
    this.#fail = fail;
  }

  protected call(call: DeviceCall, run: () => Promise<void>): Promise<void> {
    const error = this.#fail(call);
    return error === null ? run() : Promise.reject(error);
  }
}
