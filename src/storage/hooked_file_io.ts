/**
 * HookedFileIo: a FileIo that passes every call to another one, except the file calls a test
 * hooks (to delay, fail or watch them). For tests: the power-loss layer covers crashes; this is
 * for the one call a test needs to control.
 * @module
 */

import type { FileIo, IoFile, OpenFileOptions } from "./file_io.ts";
import { SysFileIo } from "./sys_file_io.ts";

/** Replacements for some calls of one open file; each gets the real file to call through. */
export interface FileHooks {
  read?(file: IoFile, into: Uint8Array, offsetBytes: number): Promise<number>;
  write?(file: IoFile, bytes: Uint8Array, offsetBytes: number): Promise<void>;
  datasync?(file: IoFile): Promise<void>;
}

export class HookedFileIo implements FileIo {
  readonly #inner: FileIo;
  readonly #hooksFor: (path: string) => FileHooks;

  /** `hooksFor` is asked once per opened path. */
  constructor(inner: FileIo, hooksFor: (path: string) => FileHooks) {
    this.#inner = inner;
    this.#hooksFor = hooksFor;
  }

  async open(path: string, options?: OpenFileOptions): Promise<IoFile> {
    const file = await this.#inner.open(path, options);
    const hooks = this.#hooksFor(path);
    return {
      path: file.path,
      read: (into, at) => hooks.read ? hooks.read(file, into, at) : file.read(into, at),
      // A hooked read is one the test wants to see: it never completes behind the hook's back.
      readCached: (into, at) => hooks.read ? false : file.readCached(into, at),
      write: (bytes, at) => hooks.write ? hooks.write(file, bytes, at) : file.write(bytes, at),
      datasync: () => hooks.datasync ? hooks.datasync(file) : file.datasync(),
      sync: () => file.sync(),
      truncate: (length) => file.truncate(length),
      allocate: (at, length) => file.allocate(at, length),
      sizeBytes: () => file.sizeBytes(),
      tryLock: () => file.tryLock(),
      unlock: () => file.unlock(),
      close: () => file.close(),
    };
  }

  exists(path: string): Promise<boolean> {
    return this.#inner.exists(path);
  }

  mkdir(path: string): Promise<void> {
    return this.#inner.mkdir(path);
  }

  rename(from: string, to: string): Promise<void> {
    return this.#inner.rename(from, to);
  }

  remove(path: string): Promise<void> {
    return this.#inner.remove(path);
  }

  syncDirectory(path: string): Promise<void> {
    return this.#inner.syncDirectory(path);
  }
}

/**
 * The real file system with the writes to a store's data file (the applier's in-place writes)
 * held while `held` is set: what only the journal and the overlay hold meanwhile can be tested.
 */
export class DataGate extends HookedFileIo {
  held = false;
  readonly #waiting: (() => void)[] = [];
  constructor() {
    super(new SysFileIo(), (path) => {
      if (!path.includes("/data-")) return {};
      return {
        write: async (file, bytes, at) => {
          if (this.held) await new Promise<void>((go) => this.#waiting.push(go));
          return file.write(bytes, at);
        },
      };
    });
  }
  release(): void {
    this.held = false;
    for (const go of this.#waiting.splice(0)) go();
  }
}
