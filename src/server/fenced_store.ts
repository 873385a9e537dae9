/**
 * Fencing at a data node (ADR 0005, section 7): the node's store, as its peers and its own
 * distributor see it, refuses a change whose fencing token is lower than one it has accepted for
 * the same volume. A writer whose lock was taken over (its lease expired while it was stopped)
 * therefore cannot change data, even before it notices. A higher token is recorded durably before
 * the first change that carries it goes to the store, so a restarted node still refuses the older
 * writer. Changes without a token (copies by the rebalancer and repair) pass.
 *
 * It also refuses, with `compare_failed`, a change placed by a ring older than the node's: after a
 * ring change the rebalancer hands blocks to their new holders and deletes the old copies, so a
 * writer still on the old ring could change a copy that is about to go (or already went) and the
 * new holders would miss it. The writer (the distributor) reads the ring again and sends the
 * change to the new holders. Changes without a ring version (local calls, copies by the rebalancer
 * and repair) pass, as do versions equal to or newer than the node's; reads are never refused.
 * @module
 */

import { type BlockRef, ErrorCode, invalid, TorusError } from "../core/mod.ts";
import {
  type BlockCallOptions,
  type BlockStore,
  ForwardingStore,
  type RangeWriteOptions,
} from "../storage/mod.ts";
import { readFileBounded, writeFileAtomic } from "../sys/mod.ts";

/** Where the highest accepted token of each volume is kept. */
export interface FenceRecords {
  /** Volume id to highest accepted token; empty when nothing was recorded yet. */
  load(): Promise<Map<number, number>>;
  /** Replaces the record durably. */
  save(tokens: ReadonlyMap<number, number>): Promise<void>;
}

/** Records in memory (tests). */
export class MemoryFenceRecords implements FenceRecords {
  saved = new Map<number, number>();
  saves = 0;

  load(): Promise<Map<number, number>> {
    return Promise.resolve(new Map(this.saved));
  }

  save(tokens: ReadonlyMap<number, number>): Promise<void> {
    this.saved = new Map(tokens);
    this.saves++;
    return Promise.resolve();
  }
}

/** A small JSON file beside the store: `{"volumes":{"2":1234}}`. */
export class FileFenceRecords implements FenceRecords {
  static readonly MAX_BYTES = 1024 * 1024;
  readonly #path: string;

  constructor(path: string) {
    this.#path = path;
  }

  async load(): Promise<Map<number, number>> {
    let bytes: Uint8Array;
    try {
      bytes = await readFileBounded(this.#path, FileFenceRecords.MAX_BYTES, this.#path);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return new Map();
      throw error;
    }
    return parseFenceRecords(bytes, this.#path);
  }

  async save(tokens: ReadonlyMap<number, number>): Promise<void> {
    const volumes = Object.fromEntries(
      [...tokens].map(([volume, token]) => [String(volume), token]),
    );
    await writeFileAtomic(this.#path, JSON.stringify({ volumes }) + "\n", { mode: 0o600 });
  }
}

/** Parses a fence record file; `invalid` naming `path` for anything else. */
export function parseFenceRecords(bytes: Uint8Array, path: string): Map<number, number> {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw invalid(`${path} is not a JSON fence record`);
  }
  const volumes = (value as { volumes?: unknown } | null)?.volumes;
  if (volumes === null || typeof volumes !== "object" || Array.isArray(volumes)) {
    throw invalid(`${path} has no "volumes" object`);
  }
  const tokens = new Map<number, number>();
  for (const [key, token] of Object.entries(volumes as Record<string, unknown>)) {
    const volume = Number(key);
    if (!/^[1-9][0-9]*$/.test(key) || !Number.isSafeInteger(volume)) {
      throw invalid(`${path}: ${JSON.stringify(key)} is not a volume id`);
    }
    if (typeof token !== "number" || !Number.isSafeInteger(token) || token < 0) {
      throw invalid(`${path}: the token of volume ${key} is not a non-negative integer`);
    }
    tokens.set(volume, token);
  }
  return tokens;
}

/** A store that refuses changes from a writer older than the newest it has seen. */
export class FencedStore extends ForwardingStore {
  readonly #records: FenceRecords;
  readonly #tokens: Map<number, number>;
  /** Per volume: the durable recording of a new token, which its changes wait for. */
  readonly #recording = new Map<number, Promise<void>>();
  #saving: Promise<void> = Promise.resolve();
  /** The version of the ring this node knows now (0: none). */
  readonly #ringVersion: () => number;
  /** Changes refused from writers that lost their lock (`locked`). */
  refusedStaleWriters = 0;
  /** Changes refused because they were placed by an older ring (`compare_failed`). */
  refusedStaleRing = 0;

  private constructor(
    inner: BlockStore,
    records: FenceRecords,
    tokens: Map<number, number>,
    ringVersion: () => number,
  ) {
    super(inner);
    this.#records = records;
    this.#tokens = tokens;
    this.#ringVersion = ringVersion;
  }

  /**
   * Wraps `inner` with the tokens `records` hold; `ringVersion` answers the version of the ring
   * this node knows now (changes placed by an older one are refused).
   */
  static async open(
    inner: BlockStore,
    records: FenceRecords,
    ringVersion: () => number = () => 0,
  ): Promise<FencedStore> {
    return new FencedStore(inner, records, await records.load(), ringVersion);
  }

  /** The highest token accepted for `volume` (0: none). */
  tokenOf(volume: number): number {
    return this.#tokens.get(volume) ?? 0;
  }

  /**
   * Learns that `volume` has a writer with `token` (from the metadata service's lock watch):
   * changes with older tokens are refused from now on, and durably once this resolves. An older
   * or known token changes nothing.
   */
  learn(volume: number, token: number): Promise<void> {
    if (!(Number.isSafeInteger(token) && token > 0)) {
      return Promise.reject(invalid(`fencing token ${token} is not a positive integer`));
    }
    if (token <= (this.#tokens.get(volume) ?? 0)) return Promise.resolve();
    return this.#record(volume, token);
  }

  /**
   * `compare_failed` for a change placed by a ring older than this node's; null when it may go
   * on (no version, or one at least as new).
   */
  #staleRing(options: BlockCallOptions | undefined): TorusError | null {
    const version = options?.ringVersion ?? 0;
    if (!(version > 0)) return null;
    const current = this.#ringVersion();
    if (version >= current) return null;
    this.refusedStaleRing++;
    return new TorusError(
      ErrorCode.CompareFailed,
      `ring version ${version} is older than this node's ${current}: read the ring again`,
    );
  }

  /**
   * Whether a change with `options`' token may change `ref`'s volume: null to go on at once,
   * a promise to wait for (the durable recording of its token, which this call may start), or a
   * rejected one (`locked`) for a token older than the newest accepted.
   */
  #gate(ref: BlockRef, options: BlockCallOptions | undefined): Promise<void> | null {
    const token = options?.fenceToken ?? 0;
    if (token === 0) return null;
    const volume = ref.volume;
    const newest = this.#tokens.get(volume) ?? 0;
    if (token < newest) {
      this.refusedStaleWriters++;
      return Promise.reject(
        new TorusError(
          ErrorCode.Locked,
          `volume ${volume} was taken over: a change with fencing token ${token} is older than ` +
            `${newest} (its writer lost the lock)`,
        ),
      );
    }
    if (token > newest) void this.#record(volume, token).catch(() => {});
    return this.#recording.get(volume) ?? null;
  }

  /** Makes `token` the newest of `volume` now, and durable when the returned promise resolves. */
  #record(volume: number, token: number): Promise<void> {
    // Older writers are refused from now on, before the record is even written.
    this.#tokens.set(volume, token);
    const tokens = new Map(this.#tokens);
    // Saves run one after another, so an older set never overwrites a newer one.
    this.#saving = this.#saving.catch(() => {}).then(() => this.#records.save(tokens));
    const recorded: Promise<void> = this.#saving.finally(() => {
      if (this.#recording.get(volume) === recorded) this.#recording.delete(volume);
    });
    this.#recording.set(volume, recorded);
    return recorded;
  }

  /** Runs `change` now or after the gate; `data` is copied when the change has to wait. */
  #fenced(
    ref: BlockRef,
    options: BlockCallOptions | undefined,
    data: Uint8Array | null,
    change: (data: Uint8Array | null) => Promise<void>,
  ): Promise<void> {
    // Before the fence: a refused change records no token and never reaches the store.
    const stale = this.#staleRing(options);
    if (stale !== null) return Promise.reject(stale);
    const gate = this.#gate(ref, options);
    if (gate === null) return change(data);
    // The caller may reuse its buffer as soon as this returns.
    const copy = data?.slice() ?? null;
    return gate.then(() => change(copy));
  }

  /** Reads are not fenced: one done at once passes straight through too. */
  readCachedAt(ref: BlockRef, offsetBytes: number, into: Uint8Array): boolean {
    return this.inner.readCachedAt?.(ref, offsetBytes, into) ?? false;
  }

  override putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    return this.#fenced(ref, options, data, (d) => this.inner.putBlock(ref, d!, options));
  }
  override writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#fenced(
      ref,
      options,
      data,
      (d) => this.inner.writeAt(ref, offsetBytes, d!, options),
    );
  }
  override zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.#fenced(
      ref,
      options,
      null,
      () => this.inner.zeroAt(ref, offsetBytes, lengthBytes, options),
    );
  }
  override deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.#fenced(ref, options, null, () => this.inner.deleteBlock(ref, options));
  }
  /** The node owns the inner store: it stays open. */
  override close(): Promise<void> {
    return this.#saving.catch(() => {});
  }
}
