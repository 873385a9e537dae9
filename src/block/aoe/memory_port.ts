/**
 * In-memory FramePorts for tests: `MemoryFramePort.pair()` gives two connected ports,
 * `MemoryFramePort.segment(n)` n ports on one shared segment (a hub: every frame reaches every
 * other port, as on a bridge that floods, so receivers must filter by address themselves).
 *
 * They keep the FramePort contract (port.ts): `send` copies the frame before returning and refuses
 * frames longer than `mtu + 14` with `invalid`; frames arrive whole and in order; `receive` gives
 * each frame in a buffer of its own and only frames of EtherType 0x88A2; a port queues at most
 * `queueFramesMax` frames and drops the rest (counted), as a kernel receive buffer does; `close`
 * ends a pending `receive` with null. Sending after close fails with `closed`; frames sent to a
 * closed port vanish, as on a wire.
 *
 * Hooks for tests: `sendFilter` sees every frame a port sends (after the copy) and returns the
 * frames to put on the wire in its place: none drops it, two duplicates it, and a filter that
 * keeps a frame and returns it later with another reorders them. `inject` hands a port a frame
 * as if it had arrived, bypassing the EtherType filter (for frames the contract keeps out).
 * @module
 */

import { closed, invalid } from "../../core/mod.ts";
import { AOE_ETHERTYPE, ETHERNET_HEADER_BYTES, type FramePort } from "./port.ts";

/** Options of {@link MemoryFramePort.pair} and {@link MemoryFramePort.segment}. */
export interface MemoryFramePortOptions {
  /** MTU of every port (default 1500). */
  mtu?: number;
  /** Frames a port queues before dropping (default 8192). */
  queueFramesMax?: number;
}

/** Decides what goes on the wire for one frame sent: the frames returned, in order. */
export type SendFilter = (frame: Uint8Array) => readonly Uint8Array[];

/** The MTU of the memory ports unless told otherwise. */
export const MEMORY_PORT_MTU_DEFAULT = 1500;
const QUEUE_FRAMES_MAX_DEFAULT = 8192;

/** Every port gets a distinct locally administered unicast MAC (02:74:6f:xx:xx:xx). */
let nextMacNumber = 1;

/** The ports that hear each other. */
class Segment {
  readonly ports: MemoryFramePort[] = [];

  carry(from: MemoryFramePort, frame: Uint8Array): void {
    for (const port of this.ports) {
      if (port !== from) port.arrive(frame.slice());
    }
  }
}

/** One end of an in-memory link. */
export class MemoryFramePort implements FramePort {
  readonly name: string;
  readonly mac: Uint8Array;
  readonly mtu: number;
  /** Replaces each frame sent with the frames it returns (see the module doc). */
  sendFilter: SendFilter | null = null;
  /** Frames sent (before the filter). */
  framesSent = 0;
  /** Frames dropped because the receive queue was full. */
  framesDropped = 0;
  #segment: Segment;
  #queueFramesMax: number;
  #queue: Uint8Array[] = [];
  /** Pending receives, oldest first. */
  #waiters: ((frame: Uint8Array | null) => void)[] = [];
  #closed = false;

  private constructor(segment: Segment, name: string, options: MemoryFramePortOptions) {
    const mtu = options.mtu ?? MEMORY_PORT_MTU_DEFAULT;
    if (!Number.isSafeInteger(mtu) || mtu < 1) {
      throw invalid(`MTU ${mtu} is not a positive integer`);
    }
    const number = nextMacNumber++;
    this.name = name;
    this.mac = new Uint8Array([
      0x02,
      0x74,
      0x6f,
      number >> 16,
      (number >> 8) & 0xff,
      number & 0xff,
    ]);
    this.mtu = mtu;
    this.#segment = segment;
    this.#queueFramesMax = options.queueFramesMax ?? QUEUE_FRAMES_MAX_DEFAULT;
    segment.ports.push(this);
  }

  /** Two ports connected to each other. */
  static pair(options: MemoryFramePortOptions = {}): [MemoryFramePort, MemoryFramePort] {
    const [a, b] = MemoryFramePort.segment(2, options);
    return [a!, b!];
  }

  /** `count` ports on one segment: what one sends, every other one receives. */
  static segment(count: number, options: MemoryFramePortOptions = {}): MemoryFramePort[] {
    const segment = new Segment();
    return Array.from(
      { length: count },
      (_, i) => new MemoryFramePort(segment, `mem${i}`, options),
    );
  }

  send(frame: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(closed(`memory port ${this.name} is closed`));
    if (frame.length > this.mtu + ETHERNET_HEADER_BYTES) {
      return Promise.reject(
        invalid(`frame of ${frame.length} bytes exceeds MTU ${this.mtu} + 14 on ${this.name}`),
      );
    }
    this.framesSent++;
    const copy = frame.slice();
    const onWire = this.sendFilter === null ? [copy] : this.sendFilter(copy);
    for (const each of onWire) this.#segment.carry(this, each);
    return Promise.resolve();
  }

  receive(): Promise<Uint8Array | null> {
    if (this.#closed) return Promise.resolve(null);
    const next = this.#queue.shift();
    if (next !== undefined) return Promise.resolve(next);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Delivers `frame` to this port as if it had arrived, whatever its EtherType. */
  inject(frame: Uint8Array): void {
    this.#enqueue(frame.slice());
  }

  /** Called by the segment for every frame another port put on the wire (not for tests). */
  arrive(frame: Uint8Array): void {
    if (frame.length < ETHERNET_HEADER_BYTES) return;
    const etherType = (frame[12]! << 8) | frame[13]!;
    if (etherType !== AOE_ETHERTYPE) return;
    this.#enqueue(frame);
  }

  close(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#queue = [];
    for (const waiter of this.#waiters.splice(0)) waiter(null);
    return Promise.resolve();
  }

  /** Frames waiting to be received. */
  get queuedFrames(): number {
    return this.#queue.length;
  }

  #enqueue(frame: Uint8Array): void {
    if (this.#closed) return;
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) {
      waiter(frame);
      return;
    }
    if (this.#queue.length >= this.#queueFramesMax) {
      this.framesDropped++;
      return;
    }
    this.#queue.push(frame);
  }
}
