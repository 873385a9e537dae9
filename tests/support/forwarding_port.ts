/**
 * A FramePort that passes everything to another one: the base of the ports tests and benchmarks
 * put between an initiator and its link (to repair a peer's short replies, to bound frames in
 * flight), which override only what they change.
 * @module
 */

import type { FramePort } from "../../src/block/aoe/port.ts";

/** Forwards every call to `inner`. */
export class ForwardingFramePort implements FramePort {
  constructor(readonly inner: FramePort) {}

  get name(): string {
    return this.inner.name;
  }

  get mac(): Uint8Array {
    return this.inner.mac;
  }

  get mtu(): number {
    return this.inner.mtu;
  }

  send(frame: Uint8Array): Promise<void> {
    return this.inner.send(frame);
  }

  receive(): Promise<Uint8Array | null> {
    return this.inner.receive();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
