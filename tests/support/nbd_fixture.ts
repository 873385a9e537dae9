/**
 * An NBD server for tests, in this process, serving devices made by a device factory
 * (MemoryDevices unless told otherwise: a later change points the factory at real volumes).
 * Listens on 127.0.0.1 on a free port and optionally on a Unix socket in a temp dir; disposing
 * the fixture closes the server (answering what is in flight), the devices and the temp dir.
 * Also: running third-party tools with a hang guard, and raw NBD connections for malformed-input
 * tests.
 * @module
 */

import {
  type Device,
  DeviceHandle,
  MemoryDevice,
  NbdClient,
  NbdNegotiation,
  NbdServer,
  type NbdServerOptions,
  SharedExports,
} from "../../src/block/mod.ts";
import { connStream, StreamReader } from "../../src/block/nbd/stream.ts";
import { notExist } from "../../src/core/mod.ts";
import {
  decodeSimpleReply,
  encodeRequestHeader,
  NBD_REQUEST_HEADER_BYTES,
  NBD_SIMPLE_REPLY_BYTES,
} from "../../src/block/nbd/protocol.ts";

/** Makes the device behind an export. */
export type DeviceFactory = (name: string, sizeBytes: number) => Promise<Device>;

/** The default factory: sparse in-memory devices. */
export function memoryDevices(_name: string, sizeBytes: number): Promise<Device> {
  return Promise.resolve(new MemoryDevice({ sizeBytes }));
}

/** Options of {@link NbdFixture.start}. */
export interface NbdFixtureOptions {
  /** Exports to create: name to size in bytes. */
  exports?: Record<string, number>;
  deviceFactory?: DeviceFactory;
  /** Also listen on a Unix socket. */
  unixSocket?: boolean;
  server?: Omit<NbdServerOptions, "exports">;
}

/** A running in-process NBD server over held devices. */
export class NbdFixture implements AsyncDisposable {
  readonly server: NbdServer;
  readonly exports: SharedExports;
  readonly port: number;
  readonly unixPath: string | null;
  readonly #devices: Map<string, Device>;
  readonly #tempDir: string;

  private constructor(
    server: NbdServer,
    exports: SharedExports,
    devices: Map<string, Device>,
    where: { port: number; unixPath: string | null; tempDir: string },
  ) {
    this.server = server;
    this.exports = exports;
    this.#devices = devices;
    this.port = where.port;
    this.unixPath = where.unixPath;
    this.#tempDir = where.tempDir;
  }

  static async start(options: NbdFixtureOptions = {}): Promise<NbdFixture> {
    const factory = options.deviceFactory ?? memoryDevices;
    const devices = new Map<string, Device>();
    for (const [name, sizeBytes] of Object.entries(options.exports ?? {})) {
      devices.set(name, await factory(name, sizeBytes));
    }
    // The fixture holds the devices; connections get handles whose close only flushes, so data
    // outlives connections as a volume's does.
    const exports = new SharedExports({
      list: () => Promise.resolve([...devices.keys()].filter((name) => !name.includes("@"))),
      open: (name) => {
        const device = devices.get(name);
        if (device === undefined) return Promise.reject(notExist(`no export named ${name}`));
        return Promise.resolve(new DeviceHandle(device, () => Promise.resolve()));
      },
    });
    const server = new NbdServer({ ...options.server, exports });
    const tempDir = await Deno.makeTempDir({ prefix: "torus-nbd-test-" });
    const { port } = server.listen({ hostname: "127.0.0.1", port: 0 });
    const unixPath = options.unixSocket ? `${tempDir}/nbd.sock` : null;
    if (unixPath !== null) server.listenUnix(unixPath);
    return new NbdFixture(server, exports, devices, { port, unixPath, tempDir });
  }

  /** The held device of an export. */
  device(name: string): Device {
    const device = this.#devices.get(name);
    if (device === undefined) throw new Error(`no test export ${name}`);
    return device;
  }

  /** Adds an export (e.g. `vol@snap` with a read-only device). */
  addExport(name: string, device: Device): void {
    this.#devices.set(name, device);
  }

  /** The NBD URI of an export over TCP. */
  uri(name: string): string {
    return `nbd://127.0.0.1:${this.port}/${encodeURIComponent(name)}`;
  }

  /** A temp directory removed with the fixture. */
  get tempDir(): string {
    return this.#tempDir;
  }

  /** A raw TCP connection to the server. */
  async connect(): Promise<Deno.TcpConn> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    conn.setNoDelay(true);
    return conn;
  }

  /** Our NBD client on a new connection. */
  async client(exportName: string): Promise<NbdClient> {
    return await NbdClient.connect(connStream(await this.connect()), { exportName });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.server.close();
    for (const device of this.#devices.values()) await device.close().catch(() => {});
    await Deno.remove(this.#tempDir, { recursive: true }).catch(() => {});
  }
}

/**
 * Waits until `condition` holds, checking every few milliseconds. For states the test cannot
 * await directly (the server noticing a disconnect); the bound only turns a hang into a failure.
 */
export async function eventually(
  condition: () => boolean,
  what: string,
  timeoutMs = 60_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Whether two buffers hold the same bytes (fast for large buffers). */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  const words = Math.floor(a.length / 8);
  const aligned = a.byteOffset % 8 === 0 && b.byteOffset % 8 === 0;
  let i = 0;
  if (aligned) {
    const x = new BigUint64Array(a.buffer, a.byteOffset, words);
    const y = new BigUint64Array(b.buffer, b.byteOffset, words);
    for (; i < words; i++) if (x[i] !== y[i]) return false;
    i = words * 8;
  }
  for (; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** What a finished command printed. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to completion without blocking the event loop (the in-process server keeps
 * serving). A hang guard kills it after `timeoutMs`: a generous bound, not a timing assertion.
 */
export async function runCommand(
  command: string,
  args: string[],
  options: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<CommandResult> {
  const output = await new Deno.Command(command, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: options.env ?? {},
    signal: AbortSignal.timeout(options.timeoutMs ?? 300_000),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs a command and throws with its output unless it exits 0. */
export async function runOk(
  command: string,
  args: string[],
  options: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<string> {
  const result = await runCommand(command, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${command} ${args.join(" ")} exited ${result.code}\n${result.stdout}\n${result.stderr}`,
    );
  }
  return result.stdout;
}

/** A request for {@link RawNbd.send}. */
export interface RawRequest {
  type: number;
  flags?: number;
  handle?: number;
  offsetBytes?: number;
  lengthBytes?: number;
  payload?: Uint8Array;
}

/** A connection that speaks NBD byte by byte, for malformed-input tests. */
export class RawNbd implements Disposable {
  readonly conn: Deno.TcpConn;
  readonly reader: StreamReader;

  constructor(conn: Deno.TcpConn, reader?: StreamReader) {
    this.conn = conn;
    this.reader = reader ?? new StreamReader(conn, new Uint8Array(1024 * 1024));
  }

  /** A connection that has done NBD_OPT_GO on `exportName`. */
  static async open(fixture: NbdFixture, exportName: string): Promise<RawNbd> {
    const conn = await fixture.connect();
    const negotiation = await NbdNegotiation.start(conn);
    await negotiation.go(exportName);
    return new RawNbd(conn, negotiation.reader);
  }

  /** Sends raw bytes. */
  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.conn.write(bytes.subarray(done));
  }

  /** Sends a request header (with any magic the test patches in) and its payload. */
  async send(request: RawRequest): Promise<void> {
    await this.write(requestBytes(request));
  }

  /** Reads one simple reply header. */
  async reply(): Promise<{ error: number; handle: number }> {
    const bytes = await bounded(this.reader.readExact(NBD_SIMPLE_REPLY_BYTES), "a reply");
    const reply = { error: 0, handleHigh: 0, handleLow: 0 };
    if (!decodeSimpleReply(new DataView(bytes.buffer, bytes.byteOffset, 16), 0, reply)) {
      throw new Error("reply with a bad magic");
    }
    return { error: reply.error, handle: reply.handleLow };
  }

  /** Reads `lengthBytes` of reply data. */
  async data(lengthBytes: number): Promise<Uint8Array> {
    const into = new Uint8Array(lengthBytes);
    await bounded(this.reader.readInto(into), "reply data");
    return into;
  }

  /** True when the server has closed the connection (end of stream or reset), all read. */
  async closedByServer(): Promise<boolean> {
    try {
      if (this.reader.end > this.reader.start) return false;
      const n = await bounded(this.conn.read(new Uint8Array(64)), "the server to close");
      return n === null;
    } catch (error) {
      if (error instanceof Error && error.message.startsWith("no answer")) return false;
      return true;
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }

  /** Closes the connection (declared after the fixture, it closes first). */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * `promise`, or a failure after a minute: turns a server that never answers into a failed test
 * instead of a hung one (the bound is far above any real answer time, loaded or not).
 */
async function bounded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer: waited a minute for ${what}`)), 60_000);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The bytes of a request: its header, then its payload. */
export function requestBytes(request: RawRequest): Uint8Array {
  const payload = request.payload ?? new Uint8Array(0);
  const bytes = new Uint8Array(NBD_REQUEST_HEADER_BYTES + payload.length);
  encodeRequestHeader(new DataView(bytes.buffer), 0, {
    type: request.type,
    flags: request.flags ?? 0,
    handleHigh: 0,
    handleLow: request.handle ?? 1,
    offsetBytes: request.offsetBytes ?? 0,
    lengthBytes: request.lengthBytes ?? payload.length,
  });
  bytes.set(payload, NBD_REQUEST_HEADER_BYTES);
  return bytes;
}

/** Writes `sizeBytes` of random data to `path` (crypto randomness: incompressible). */
export async function randomFile(path: string, sizeBytes: number): Promise<void> {
  const chunkBytes = 1024 * 1024;
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    const chunk = new Uint8Array(chunkBytes);
    for (let done = 0; done < sizeBytes; done += chunk.length) {
      // getRandomValues fills at most 64 KiB per call.
      for (let at = 0; at < chunk.length; at += 65536) {
        crypto.getRandomValues(chunk.subarray(at, at + 65536));
      }
      let written = 0;
      while (written < chunk.length) written += await file.write(chunk.subarray(written));
    }
  } finally {
    file.close();
  }
}
