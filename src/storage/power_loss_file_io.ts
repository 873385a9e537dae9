/**
 * PowerLossFileIo: a FileIo that wraps another (normally the real SysFileIo) and can cut the
 * power. It is how tests prove that the file engine's syncs are where they must be: a process
 * kill (SIGKILL) leaves the page cache intact, so only a simulated power loss shows a missing
 * fdatasync.
 *
 * What it does:
 * - Runs one operation at a time, picking the next among those waiting with its seeded Random,
 *   after every microtask reacting to the previous result has run. Completions therefore arrive
 *   in a random but replayable order (a seed replays a run exactly), and calls that are in flight
 *   together really finish in any order.
 * - Records, per file, every write and size change since the file's last completed
 *   datasync/sync, and per directory every creation, rename and removal since its last
 *   syncDirectory. What the last sync covered is the file's durable image (the bytes a file had
 *   when this layer first saw it count as durable).
 * - `cut()` (or the operation count given as `cutBeforeOperation`) stops everything: every
 *   waiting and later call fails with `unavailable`, open files are closed (their locks released)
 *   and each file on disk is replaced by its durable image plus a random subset of the recorded
 *   changes, applied in order. A kept write may be torn: a prefix of its sectors, a random subset
 *   of its sectors, or sectors of garbage (within the bytes it wrote). A directory keeps a random
 *   subset of its unsynced name changes (a rename stays atomic).
 * - Flags a hazard when a write is issued while another write to overlapping bytes of the same
 *   file is still waiting or running: callers must never do that (their order is undefined).
 * - A test driver paces itself with `ran(n)` (resume after n more operations) instead of timers,
 *   so the whole run, not only the cut, replays from the seed.
 *
 * Scope: for tests of stores of a few MiB. It reads every file it sees whole into memory, paths
 * it tracks are files (directories pass through, treated as durable), and it assumes nothing else
 * touches those files meanwhile.
 * @module
 */

import { setImmediate } from "node:timers";
import {
  afterBySleep,
  assert,
  type Clock,
  ErrorCode,
  type Random,
  TorusError,
} from "../core/mod.ts";
import { type FileIo, type IoFile, type OpenFileOptions, parentDir } from "./file_io.ts";

/** Options of {@link PowerLossFileIo}. */
export interface PowerLossOptions {
  /** Every choice: which waiting operation runs next, what a power cut keeps, tears or drops. */
  random: Random;
  /** Cut the power on its own right before this operation (1-based) would run. */
  cutBeforeOperation?: number;
  /** The unit of a torn write. Default 512. */
  sectorBytes?: number;
}

/** What a power cut did. */
export interface PowerCutReport {
  /** Operations that ran before the cut. */
  operations: number;
  /** Unsynced writes kept whole, dropped, and torn. */
  writesKept: number;
  writesDropped: number;
  writesTorn: number;
  /** Unsynced size changes and name changes kept and dropped. */
  otherKept: number;
  otherDropped: number;
}

/** The most operations one millisecond of the simulated clock lasts (see `clock`). */
const OPERATIONS_PER_MS_MAX = 8;

/** Largest file this layer holds in memory. */
const FILE_BYTES_MAX = 256 * 1024 * 1024;

type Change =
  | { kind: "write"; offsetBytes: number; bytes: Uint8Array }
  | { kind: "length"; lengthBytes: number }
  | { kind: "extend"; lengthBytes: number };

/** One file's contents: durable image and the changes since its last sync. */
class Inode {
  durable: Uint8Array;
  changes: Change[] = [];

  constructor(durable: Uint8Array) {
    this.durable = durable;
  }

  /** A sync completed: every recorded change is durable now. */
  synced(): void {
    const image = new GrowingBytes(this.durable);
    for (const change of this.changes) image.apply(change);
    this.durable = image.bytes();
    this.changes = [];
  }
}

/** A byte image that grows as writes and size changes are applied. */
class GrowingBytes {
  #buffer: Uint8Array;
  #length: number;

  constructor(initial: Uint8Array) {
    this.#buffer = initial.slice();
    this.#length = initial.length;
  }

  get length(): number {
    return this.#length;
  }

  setLength(lengthBytes: number): void {
    assert(lengthBytes <= FILE_BYTES_MAX, `power-loss layer: file of ${lengthBytes} bytes`);
    if (lengthBytes > this.#buffer.length) {
      const grown = new Uint8Array(Math.max(lengthBytes, this.#buffer.length * 2));
      grown.set(this.#buffer.subarray(0, this.#length));
      this.#buffer = grown;
    } else if (lengthBytes < this.#length) {
      this.#buffer.fill(0, lengthBytes, this.#length);
    }
    this.#length = lengthBytes;
  }

  write(bytes: Uint8Array, offsetBytes: number): void {
    if (offsetBytes + bytes.length > this.#length) this.setLength(offsetBytes + bytes.length);
    this.#buffer.set(bytes, offsetBytes);
  }

  apply(change: Change): void {
    if (change.kind === "write") this.write(change.bytes, change.offsetBytes);
    else if (change.kind === "length") this.setLength(change.lengthBytes);
    else if (change.lengthBytes > this.#length) this.setLength(change.lengthBytes);
  }

  bytes(): Uint8Array {
    return this.#buffer.slice(0, this.#length);
  }
}

/** One operation waiting for its turn. */
interface Waiting {
  run(): Promise<unknown>;
  /** Set when its turn came (a cancelled wait is then left to finish). */
  started?: boolean;
  /** For a clock's wait: the operation count before which it does not end. */
  notBefore?: number;
  resolve(value: unknown): void;
  reject(error: unknown): void;
  /** For writes: the file and range, to flag overlapping writes. */
  write?: { inode: Inode; start: number; end: number };
}

/** What a file needs from its PowerLossFileIo. */
interface FileHost {
  schedule<T>(run: () => Promise<T>, write?: Waiting["write"]): Promise<T>;
  forget(file: PowerLossFile): void;
}

/** Name changes of one directory applied together (a rename is two). */
type NameChange = [path: string, inode: Inode | null][];

function powerCutError(): TorusError {
  return new TorusError(ErrorCode.Unavailable, "power cut: the simulated machine lost power");
}

/** A FileIo whose power can be cut; see the module doc. */
export class PowerLossFileIo implements FileIo {
  readonly #inner: FileIo;
  readonly #random: Random;
  readonly #sectorBytes: number;
  readonly #cutBeforeOperation: number;
  /** Files under their current names. */
  readonly #live = new Map<string, Inode>();
  /** Names as of each directory's last sync: the file, or null for a known absence. */
  readonly #durableNames = new Map<string, Inode | null>();
  readonly #nameChanges = new Map<string, NameChange[]>();
  readonly #open = new Set<PowerLossFile>();
  readonly #waiting: Waiting[] = [];
  readonly #hazards: string[] = [];
  readonly #host: FileHost = {
    schedule: (run, write) => this.#schedule(run, write),
    forget: (file) => void this.#open.delete(file),
  };
  #running = false;
  /** The operation running now, settled or not. */
  #current: Promise<void> | null = null;
  #operations = 0;
  /** Drivers waiting for operations to run (see {@link ran}). */
  #progress: { operations: number; resolve: () => void }[] = [];
  #cut: Promise<PowerCutReport> | null = null;
  readonly #cutDone = Promise.withResolvers<PowerCutReport>();

  /**
   * The simulated machine's clock, for the code under test. Its time is counted in operations,
   * and how long one takes varies as on a loaded machine: a wait of `ms` may end once a seeded
   * number between 0 and 8·`ms` more have run, as one of the operations the seeded Random picks
   * then, or at once when nothing else waits (time passes while the machine idles). When a timer
   * fires among the file operations thus replays from the seed too. A cut rejects the waits.
   */
  readonly clock: Clock = {
    nowMs: () => this.#operations,
    sleep: (ms, signal) => this.#sleep(ms, signal),
    after: (ms, fire) => afterBySleep(this.clock, ms, fire),
  };

  constructor(inner: FileIo, options: PowerLossOptions) {
    this.#inner = inner;
    this.#random = options.random;
    this.#sectorBytes = options.sectorBytes ?? 512;
    this.#cutBeforeOperation = options.cutBeforeOperation ?? Number.POSITIVE_INFINITY;
  }

  /** Operations run so far. */
  get operations(): number {
    return this.#operations;
  }

  /** Whether the power is off (cut requested or done). */
  get isCut(): boolean {
    return this.#cut !== null;
  }

  /** Overlapping writes in flight together, described (should stay empty). */
  get hazards(): readonly string[] {
    return this.#hazards;
  }

  /** Cuts the power now (after the operation running, if any) and writes what survives. */
  cut(): Promise<PowerCutReport> {
    if (this.#cut === null) {
      this.#cut = this.#powerCut();
      this.#cut.then(this.#cutDone.resolve, this.#cutDone.reject);
    }
    return this.#cut;
  }

  /** Resolves once a cut, requested or automatic, has written what survives. */
  whenCut(): Promise<PowerCutReport> {
    return this.#cutDone.promise;
  }

  /**
   * Resolves once `count` more operations ran, or as soon as none is waiting (or the power is
   * off). A test driver that paces itself with this instead of timers replays exactly.
   */
  ran(count: number): Promise<void> {
    if (!this.#running || this.#cut !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.#progress.push({ operations: this.#operations + count, resolve });
    });
  }

  open(path: string, options: OpenFileOptions = {}): Promise<IoFile> {
    return this.#schedule(async () => {
      await this.#track(path);
      let inode = this.#live.get(path);
      const file = await this.#inner.open(path, options);
      if (inode === undefined) {
        inode = new Inode(new Uint8Array(0));
        this.#live.set(path, inode);
        this.#changeNames(parentDir(path), [[path, inode]]);
      } else if (options.truncate) {
        inode.changes.push({ kind: "length", lengthBytes: 0 });
      }
      const wrapped = new PowerLossFile(this.#host, file, inode);
      this.#open.add(wrapped);
      return wrapped;
    });
  }

  exists(path: string): Promise<boolean> {
    return this.#schedule(() => this.#inner.exists(path));
  }

  mkdir(path: string): Promise<void> {
    return this.#schedule(() => this.#inner.mkdir(path));
  }

  rename(from: string, to: string): Promise<void> {
    assert(parentDir(from) === parentDir(to), "power-loss layer: rename across directories");
    return this.#schedule(async () => {
      await this.#track(from);
      await this.#track(to);
      await this.#inner.rename(from, to);
      const inode = this.#live.get(from) ?? null;
      this.#live.delete(from);
      if (inode === null) this.#live.delete(to);
      else this.#live.set(to, inode);
      this.#changeNames(parentDir(from), [[from, null], [to, inode]]);
    });
  }

  remove(path: string): Promise<void> {
    return this.#schedule(async () => {
      await this.#track(path);
      await this.#inner.remove(path);
      this.#live.delete(path);
      this.#changeNames(parentDir(path), [[path, null]]);
    });
  }

  syncDirectory(path: string): Promise<void> {
    return this.#schedule(async () => {
      await this.#inner.syncDirectory(path);
      for (const change of this.#nameChanges.get(path) ?? []) {
        for (const [name, inode] of change) this.#durableNames.set(name, inode);
      }
      this.#nameChanges.delete(path);
    });
  }

  #sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (this.#cut !== null) return Promise.reject(powerCutError());
    if (signal?.aborted) return Promise.reject(signal.reason);
    ms = Math.max(0, ms);
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        if (wait.started) return;
        const at = this.#waiting.indexOf(wait);
        if (at >= 0) this.#waiting.splice(at, 1);
        reject(signal?.reason);
      };
      const wait: Waiting = {
        run: () => Promise.resolve(),
        notBefore: this.#operations + this.#random.int(OPERATIONS_PER_MS_MAX * Math.ceil(ms) + 1),
        resolve: () => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        },
        reject: (error) => {
          signal?.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiting.push(wait);
      this.#startPump();
    });
  }

  #startPump(): void {
    if (this.#running) return;
    this.#running = true;
    void this.#pump();
  }

  /** Runs `run` in its turn (see the module doc); `write` marks a write for hazard checks. */
  #schedule<T>(run: () => Promise<T>, write?: Waiting["write"]): Promise<T> {
    if (this.#cut !== null) return Promise.reject(powerCutError());
    if (write !== undefined) this.#checkOverlap(write);
    const result = new Promise<T>((resolve, reject) => {
      this.#waiting.push({
        run,
        resolve: resolve as (value: unknown) => void,
        reject,
        ...(write === undefined ? {} : { write }),
      });
    });
    this.#startPump();
    return result;
  }

  #checkOverlap(write: NonNullable<Waiting["write"]>): void {
    for (const other of this.#waiting) {
      const range = other.write;
      if (range?.inode !== write.inode) continue;
      if (range.start < write.end && write.start < range.end) {
        this.#hazards.push(
          `write of [${write.start}, ${write.end}) issued while [${range.start}, ${range.end}) ` +
            `of the same file was in flight`,
        );
      }
    }
  }

  async #pump(): Promise<void> {
    for (;;) {
      // Every microtask reacting to the last result runs first, so the choice below is replayable.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.#wakeDrivers()) await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.#cut !== null || this.#waiting.length === 0) break;
      if (this.#operations + 1 >= this.#cutBeforeOperation) {
        void this.cut();
        break;
      }
      const next = this.#pickNext();
      this.#operations++;
      this.#current = this.#runOne(next);
      await this.#current;
      this.#current = null;
    }
    this.#running = false;
    this.#wakeDrivers();
  }

  /** A random operation among those that may run now (see {@link clock}). */
  #pickNext(): Waiting {
    const due = this.#waiting.filter((w) => (w.notBefore ?? 0) <= this.#operations);
    if (due.length > 0) return due[this.#random.int(due.length)]!;
    // Only waits that end later: time jumps to the first of them.
    return this.#waiting.reduce((a, b) => a.notBefore! <= b.notBefore! ? a : b);
  }

  /** Resumes the drivers whose operations ran (all when nothing waits); whether any was. */
  #wakeDrivers(): boolean {
    const idle = !this.#running || this.#waiting.length === 0 || this.#cut !== null;
    const ready = this.#progress.filter((w) => idle || w.operations <= this.#operations);
    if (ready.length === 0) return false;
    this.#progress = this.#progress.filter((w) => !ready.includes(w));
    for (const waiter of ready) waiter.resolve();
    return true;
  }

  async #runOne(next: Waiting): Promise<void> {
    next.started = true;
    try {
      next.resolve(await next.run());
    } catch (error) {
      next.reject(error);
    } finally {
      // Removed only now: a write stays "in flight" for overlap checks until it completed.
      this.#waiting.splice(this.#waiting.indexOf(next), 1);
    }
  }

  /** Starts tracking `path`: what it holds now counts as durable. */
  async #track(path: string): Promise<void> {
    if (this.#durableNames.has(path)) return;
    if (!(await this.#inner.exists(path))) {
      this.#durableNames.set(path, null);
      return;
    }
    const file = await this.#inner.open(path);
    try {
      const sizeBytes = await file.sizeBytes();
      assert(sizeBytes <= FILE_BYTES_MAX, `power-loss layer: ${path} is too large`);
      const bytes = new Uint8Array(sizeBytes);
      const got = await file.read(bytes, 0);
      assert(got === sizeBytes, `power-loss layer: short read of ${path}`);
      const inode = new Inode(bytes);
      this.#durableNames.set(path, inode);
      this.#live.set(path, inode);
    } finally {
      await file.close();
    }
  }

  #changeNames(dir: string, change: NameChange): void {
    const changes = this.#nameChanges.get(dir) ?? [];
    changes.push(change);
    this.#nameChanges.set(dir, changes);
  }

  async #powerCut(): Promise<PowerCutReport> {
    // The operation running now finishes: its effect is then recorded like any other.
    await this.#current;
    for (const waiting of this.#waiting.splice(0)) waiting.reject(powerCutError());
    const report: PowerCutReport = {
      operations: this.#operations,
      writesKept: 0,
      writesDropped: 0,
      writesTorn: 0,
      otherKept: 0,
      otherDropped: 0,
    };
    const names = this.#survivingNames(report);
    const images = new Map<Inode, Uint8Array>();
    for (const inode of names.values()) {
      if (inode !== null && !images.has(inode)) {
        images.set(inode, this.#survivingBytes(inode, report));
      }
    }
    for (const file of [...this.#open]) await file.closeInner();
    for (const [path, inode] of names) {
      await this.#writeOut(path, inode === null ? null : images.get(inode)!);
    }
    return report;
  }

  /** Durable names plus a random subset of the unsynced name changes, in order. */
  #survivingNames(report: PowerCutReport): Map<string, Inode | null> {
    const names = new Map(this.#durableNames);
    for (const path of this.#live.keys()) if (!names.has(path)) names.set(path, null);
    for (const changes of this.#nameChanges.values()) {
      for (const change of changes) {
        if (!this.#random.chance(0.5)) {
          report.otherDropped++;
          continue;
        }
        report.otherKept++;
        for (const [path, inode] of change) names.set(path, inode);
      }
    }
    return names;
  }

  /** The durable image plus a random subset of the unsynced changes, writes possibly torn. */
  #survivingBytes(inode: Inode, report: PowerCutReport): Uint8Array {
    const image = new GrowingBytes(inode.durable);
    for (const change of inode.changes) {
      if (change.kind !== "write") {
        if (this.#random.chance(0.5)) {
          report.otherKept++;
          image.apply(change);
        } else report.otherDropped++;
        continue;
      }
      const roll = this.#random.float();
      if (roll < 0.45) {
        report.writesKept++;
        image.apply(change);
      } else if (roll < 0.8) {
        report.writesDropped++;
      } else {
        report.writesTorn++;
        this.#tear(image, change.bytes, change.offsetBytes);
      }
    }
    return image.bytes();
  }

  /**
   * Applies part of a write: its pieces are the parts of its range in each sector. Either a
   * prefix of them, a random subset, or a mix of new, old and garbage pieces.
   */
  #tear(image: GrowingBytes, bytes: Uint8Array, offsetBytes: number): void {
    const pieces: [start: number, end: number][] = [];
    for (let start = 0; start < bytes.length;) {
      const sectorEnd = (Math.floor((offsetBytes + start) / this.#sectorBytes) + 1) *
        this.#sectorBytes;
      const end = Math.min(bytes.length, sectorEnd - offsetBytes);
      pieces.push([start, end]);
      start = end;
    }
    const mode = this.#random.int(3);
    const prefix = this.#random.int(pieces.length);
    pieces.forEach(([start, end], i) => {
      const piece = bytes.subarray(start, end);
      if (mode === 0) {
        if (i < prefix) image.write(piece, offsetBytes + start);
      } else if (mode === 1) {
        if (this.#random.chance(0.5)) image.write(piece, offsetBytes + start);
      } else {
        const roll = this.#random.float();
        if (roll < 0.4) image.write(piece, offsetBytes + start);
        else if (roll < 0.7) image.write(this.#random.bytes(piece.length), offsetBytes + start);
      }
    });
  }

  async #writeOut(path: string, bytes: Uint8Array | null): Promise<void> {
    if (bytes === null) {
      if (await this.#inner.exists(path)) await this.#inner.remove(path);
      return;
    }
    const file = await this.#inner.open(path, { create: true, truncate: true });
    try {
      if (bytes.length > 0) await file.write(bytes, 0);
      await file.datasync();
    } finally {
      await file.close();
    }
  }
}

/** A file opened through a {@link PowerLossFileIo}. */
class PowerLossFile implements IoFile {
  readonly path: string;
  readonly #io: FileHost;
  readonly #inner: IoFile;
  readonly #inode: Inode;
  #closed = false;

  constructor(io: FileHost, inner: IoFile, inode: Inode) {
    this.path = inner.path;
    this.#io = io;
    this.#inner = inner;
    this.#inode = inode;
  }

  read(into: Uint8Array, offsetBytes: number): Promise<number> {
    return this.#io.schedule(() => this.#inner.read(into, offsetBytes));
  }

  /** Never: every read takes its turn in the seeded schedule, so a seed replays exactly. */
  readCached(): boolean {
    return false;
  }

  write(bytes: Uint8Array, offsetBytes: number): Promise<void> {
    const range = { inode: this.#inode, start: offsetBytes, end: offsetBytes + bytes.length };
    return this.#io.schedule(async () => {
      await this.#inner.write(bytes, offsetBytes);
      // Recorded once it happened: a write that failed changed nothing we could rely on.
      this.#inode.changes.push({ kind: "write", offsetBytes, bytes: bytes.slice() });
    }, range);
  }

  datasync(): Promise<void> {
    return this.#io.schedule(async () => {
      await this.#inner.datasync();
      this.#inode.synced();
    });
  }

  sync(): Promise<void> {
    return this.#io.schedule(async () => {
      await this.#inner.sync();
      this.#inode.synced();
    });
  }

  truncate(lengthBytes: number): Promise<void> {
    return this.#io.schedule(async () => {
      await this.#inner.truncate(lengthBytes);
      this.#inode.changes.push({ kind: "length", lengthBytes });
    });
  }

  allocate(offsetBytes: number, lengthBytes: number): Promise<boolean> {
    return this.#io.schedule(async () => {
      const done = await this.#inner.allocate(offsetBytes, lengthBytes);
      if (done) {
        this.#inode.changes.push({ kind: "extend", lengthBytes: offsetBytes + lengthBytes });
      }
      return done;
    });
  }

  sizeBytes(): Promise<number> {
    return this.#io.schedule(() => this.#inner.sizeBytes());
  }

  tryLock(): Promise<boolean> {
    return this.#io.schedule(() => this.#inner.tryLock());
  }

  unlock(): Promise<void> {
    return this.#io.schedule(() => this.#inner.unlock());
  }

  close(): Promise<void> {
    return this.#io.schedule(() => this.closeInner());
  }

  /** Closes the wrapped file now (also used by the power cut). */
  async closeInner(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#io.forget(this);
    await this.#inner.close();
  }
}
