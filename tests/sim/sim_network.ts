/**
 * An in-memory StreamNetwork for the simulation: byte pipes between named hosts, with faults the
 * simulation injects from its seed: a host cut off from every other (its connections end, new
 * ones either way are refused) and brought back, two hosts partitioned from each other while both
 * still reach the rest, and delays of delivery (by the simulation's clock). Each host dials
 * through its own view ({@link SimNetwork.as}), so a connection knows both its ends. Nothing here
 * reads the real clock or the OS, so a seed replays the same run.
 * @module
 */

import { type ByteStream, type Clock, unavailable } from "../../src/core/mod.ts";
import type { StreamListener, StreamNetwork } from "../../src/distributor/mod.ts";

/** One direction of a pipe. */
class Channel {
  readonly #chunks: Uint8Array[] = [];
  #waiter: (() => void) | null = null;
  #closed = false;

  push(data: Uint8Array): void {
    if (this.#closed) return;
    this.#chunks.push(data);
    this.#wake();
  }

  close(): void {
    this.#closed = true;
    this.#wake();
  }

  async read(into: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#closed) return null;
      await new Promise<void>((resolve) => this.#waiter = resolve);
    }
    const head = this.#chunks[0]!;
    const n = Math.min(head.length, into.length);
    into.set(head.subarray(0, n));
    if (n === head.length) this.#chunks.shift();
    else this.#chunks[0] = head.subarray(n);
    return n;
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }
}

/** One end of a connection between two hosts. */
class PipeEnd implements ByteStream {
  readonly #in: Channel;
  readonly #out: Channel;
  readonly #network: SimNetwork;
  readonly #hosts: readonly string[];
  #closed = false;
  /** When the last write is delivered: later ones never overtake it (a stream keeps order). */
  #deliverAtMs = 0;

  constructor(input: Channel, output: Channel, network: SimNetwork, hosts: readonly string[]) {
    this.#in = input;
    this.#out = output;
    this.#network = network;
    this.#hosts = hosts;
  }

  get hosts(): readonly string[] {
    return this.#hosts;
  }

  read(into: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.resolve(null);
    return this.#in.read(into);
  }

  async write(data: Uint8Array): Promise<number> {
    if (this.#closed) throw unavailable("the connection is closed");
    const copy = data.slice();
    const clock = this.#network.clock;
    this.#deliverAtMs = Math.max(this.#deliverAtMs, clock.nowMs() + this.#network.delayMs());
    const waitMs = this.#deliverAtMs - clock.nowMs();
    if (waitMs > 0) await clock.sleep(waitMs);
    if (this.#closed) throw unavailable("the connection is closed");
    this.#out.push(copy);
    return data.length;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#in.close();
    this.#out.close();
    this.#network.forget(this);
  }
}

/** Connections accepted on one host's port. */
class SimListener implements StreamListener {
  readonly hostname: string;
  readonly port: number;
  readonly #pending: PipeEnd[] = [];
  #waiter: (() => void) | null = null;
  #closed = false;
  readonly #onClose: () => void;

  constructor(hostname: string, port: number, onClose: () => void) {
    this.hostname = hostname;
    this.port = port;
    this.#onClose = onClose;
  }

  accept(end: PipeEnd): void {
    this.#pending.push(end);
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  close(): void {
    this.#closed = true;
    this.#onClose();
    const waiter = this.#waiter;
    this.#waiter = null;
    waiter?.();
  }

  get closed(): boolean {
    return this.#closed;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ByteStream> {
    for (;;) {
      while (this.#pending.length === 0) {
        if (this.#closed) return;
        await new Promise<void>((resolve) => this.#waiter = resolve);
      }
      yield this.#pending.shift()!;
    }
  }
}

/** See the module doc. */
export class SimNetwork implements StreamNetwork {
  readonly clock: Clock;
  readonly #listeners = new Map<string, SimListener>();
  readonly #open = new Set<PipeEnd>();
  readonly #cut = new Set<string>();
  /** Pairs of hosts that cannot reach each other ("a|b", sorted). */
  readonly #partitions = new Set<string>();
  /** Delivery delay of each write (ms), drawn by the simulation. */
  delayMs: () => number = () => 0;

  constructor(clock: Clock) {
    this.clock = clock;
  }

  /** The host connections made through the network itself (not a host's view) come from. */
  static readonly CLIENT = "client";

  connect(hostname: string, port: number, timeoutMs: number): Promise<ByteStream> {
    return this.#connect(SimNetwork.CLIENT, hostname, port, timeoutMs);
  }

  /** The network as host `host` dials: its connections are cut and partitioned with it. */
  as(host: string): StreamNetwork {
    return {
      connect: (hostname, port, timeoutMs) => this.#connect(host, hostname, port, timeoutMs),
      listen: (hostname, port) => this.listen(hostname, port),
    };
  }

  #connect(from: string, hostname: string, port: number, _timeoutMs: number): Promise<ByteStream> {
    const listener = this.#listeners.get(`${hostname}:${port}`);
    const blocked = this.#cut.has(hostname) || this.#cut.has(from) ||
      this.#partitions.has(pairKey(from, hostname));
    if (listener === undefined || listener.closed || blocked) {
      return Promise.reject(unavailable(`cannot connect to ${hostname}:${port}`));
    }
    const toServer = new Channel();
    const toClient = new Channel();
    const hosts = [from, hostname];
    const client = new PipeEnd(toClient, toServer, this, hosts);
    const server = new PipeEnd(toServer, toClient, this, hosts);
    this.#open.add(client);
    this.#open.add(server);
    listener.accept(server);
    return Promise.resolve(client);
  }

  listen(hostname: string, port: number): StreamListener {
    const key = `${hostname}:${port}`;
    const listener = new SimListener(hostname, port, () => {
      if (this.#listeners.get(key) === listener) this.#listeners.delete(key);
    });
    this.#listeners.set(key, listener);
    return listener;
  }

  /** Ends every connection of `host` and refuses new ones until {@link heal}. */
  cut(host: string): void {
    this.#cut.add(host);
    for (const end of [...this.#open]) if (end.hosts.includes(host)) end.close();
  }

  heal(host: string): void {
    this.#cut.delete(host);
  }

  /** Ends the connections between `a` and `b` and refuses new ones until {@link join}. */
  partition(a: string, b: string): void {
    this.#partitions.add(pairKey(a, b));
    for (const end of [...this.#open]) {
      if (end.hosts.includes(a) && end.hosts.includes(b)) end.close();
    }
  }

  /** Ends every partition. */
  join(): void {
    this.#partitions.clear();
  }

  /** Called by a pipe end that closed. */
  forget(end: PipeEnd): void {
    this.#open.delete(end);
  }
}

function pairKey(a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}
