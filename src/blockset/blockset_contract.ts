/**
 * The Blockset contract suite (see blockset.ts), registered once per layer stack by
 * blockset_test.ts. Every stack must pass all of it; tests about crc or rep behaviour are
 * registered only for stacks that have that layer. The stores are real MemoryBlockStores, wrapped
 * by {@link ProbeStore} where a test needs to see or break what reaches the store.
 * @module
 */

import assert from "node:assert/strict";
import {
  BLOCK_REF_BYTES,
  BlockRef,
  crc32,
  ErrorCode,
  INodeRef,
  isTorusError,
  SeededRandom,
  testSeed,
  TorusError,
} from "../core/mod.ts";
import { type BlockLayer, INodeCodec } from "../models/mod.ts";
import {
  type BlockCallOptions,
  type BlockStore,
  MemoryBlockStore,
  type RangeWriteOptions,
} from "../storage/mod.ts";
import { type Blockset, LayerKind, type LayerSpec } from "./blockset.ts";
import type { BlocksetOptions } from "./layer.ts";
import { formatBlockLayerSpec, parseBlockLayerSpec } from "./spec.ts";
import { createBlockset, unmarshalBlockset } from "./stack.ts";

/** Block size of the contract's stores: small, so tests are fast, and not a power of two. */
export const CONTRACT_BLOCK_BYTES = 48;

/**
 * A real MemoryBlockStore behind a wrapper that records reads and can misbehave on purpose:
 * ignore `expectedCrc32` (as a store without checksums would), refuse writes, or replace bytes.
 */
export class ProbeStore implements BlockStore {
  readonly kind = "probe";
  readonly name = "probe";
  readonly blockSizeBytes: number;
  readonly inner: MemoryBlockStore;
  /** Every getBlock call, in order. */
  readonly reads: { ref: BlockRef; options: BlockCallOptions | undefined }[] = [];
  /** When set, `expectedCrc32` is not passed on, so bad bytes come back. */
  ignoreExpectedCrc = false;
  /** Puts still allowed before every put fails with `out_of_space` (Infinity: no limit). */
  putsLeft = Infinity;

  constructor(blockSizeBytes = CONTRACT_BLOCK_BYTES, totalBlocks = 100_000) {
    this.blockSizeBytes = blockSizeBytes;
    this.inner = new MemoryBlockStore({ blockSizeBytes, totalBlocks });
  }

  getBlock(ref: BlockRef, options?: BlockCallOptions): Promise<Uint8Array> {
    this.reads.push({ ref, options: options === undefined ? undefined : { ...options } });
    const passed = { ...options };
    if (this.ignoreExpectedCrc) delete passed.expectedCrc32;
    return this.inner.getBlock(ref, passed);
  }
  putBlock(ref: BlockRef, data: Uint8Array, options?: BlockCallOptions): Promise<void> {
    if (this.putsLeft <= 0) {
      return Promise.reject(new TorusError(ErrorCode.OutOfSpace, `probe store refuses ${ref}`));
    }
    this.putsLeft--;
    return this.inner.putBlock(ref, data, options);
  }
  /** Replaces the stored bytes of `ref` behind the blockset's back. */
  corrupt(ref: BlockRef, fill = 0x5a): Promise<void> {
    return this.inner.putBlock(ref, new Uint8Array(this.blockSizeBytes).fill(fill));
  }
  readAt(
    ref: BlockRef,
    offsetBytes: number,
    into: Uint8Array,
    options?: BlockCallOptions,
  ): Promise<void> {
    return this.inner.readAt(ref, offsetBytes, into, options);
  }
  writeAt(
    ref: BlockRef,
    offsetBytes: number,
    data: Uint8Array,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.writeAt(ref, offsetBytes, data, options);
  }
  zeroAt(
    ref: BlockRef,
    offsetBytes: number,
    lengthBytes: number,
    options?: RangeWriteOptions,
  ): Promise<void> {
    return this.inner.zeroAt(ref, offsetBytes, lengthBytes, options);
  }
  hasBlock(ref: BlockRef, options?: BlockCallOptions): Promise<boolean> {
    return this.inner.hasBlock(ref, options);
  }
  deleteBlock(ref: BlockRef, options?: BlockCallOptions): Promise<void> {
    return this.inner.deleteBlock(ref, options);
  }
  blockRefs(): AsyncIterable<BlockRef> {
    return this.inner.blockRefs();
  }
  usedBlocks(): number {
    return this.inner.usedBlocks();
  }
  totalBlocks(): number {
    return this.inner.totalBlocks();
  }
  flush(): Promise<void> {
    return this.inner.flush();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A recognisable block: `seed` in every byte, `length` bytes long. */
export function blockOf(seed: number, length = CONTRACT_BLOCK_BYTES): Uint8Array {
  return new Uint8Array(length).fill(seed & 0xff);
}

/** `data` zero-padded to the contract block size. */
export function padded(data: Uint8Array, blockSizeBytes = CONTRACT_BLOCK_BYTES): Uint8Array {
  const block = new Uint8Array(blockSizeBytes);
  block.set(data);
  return block;
}

/** A validator for assert.throws/rejects: a TorusError with `code`. */
export function torusCode(code: ErrorCode): (error: unknown) => boolean {
  return (error) => {
    assert.ok(isTorusError(error, code), `expected TorusError ${code}, got ${String(error)}`);
    return true;
  };
}

/** Reads every index. */
export async function readAll(blockset: Blockset): Promise<Uint8Array[]> {
  const blocks: Uint8Array[] = [];
  for (let i = 0; i < blockset.length(); i++) blocks.push(await blockset.getBlock(i));
  return blocks;
}

/** Asserts two blocksets are equal: same length, same marshalled bytes, same reads. */
export async function assertSameBlockset(actual: Blockset, expected: Blockset): Promise<void> {
  assert.equal(actual.length(), expected.length());
  assert.equal(actual.kind, expected.kind);
  assert.deepEqual(actual.marshal(), expected.marshal());
  assert.deepEqual(await readAll(actual), await readAll(expected));
}

/**
 * The refs of index `index`, primary first then the extra copies in order, read from the
 * marshalled layers (so tests can break one copy on purpose).
 */
export function refsAt(blockset: Blockset, index: number): BlockRef[] {
  const layers = blockset.marshalRange(index, index + 1);
  const refs = [BlockRef.fromBytes(layers[layers.length - 1]!.content)];
  const rep = layers.find((layer) => layer.type === LayerKind.Rep);
  if (rep !== undefined) {
    const listBytes = 4 + BLOCK_REF_BYTES;
    for (let offset = 4; offset < rep.content.length; offset += listBytes) {
      refs.push(BlockRef.fromBytes(rep.content, offset + 4));
    }
  }
  return refs.filter((ref) => !ref.isZero());
}

/** Whether a parsed stack has a layer of `kind`. */
function has(specs: readonly LayerSpec[], kind: LayerKind): boolean {
  return specs.some((layer) => layer.kind === kind);
}

/** Total copies per block of a parsed stack. */
export function copiesOf(specs: readonly LayerSpec[]): number {
  const rep = specs.find((layer) => layer.kind === LayerKind.Rep);
  return rep === undefined ? 1 : Number(rep.options);
}

interface Fixture {
  specs: LayerSpec[];
  store: ProbeStore;
  blockset: Blockset;
  crcFailures: BlockRef[];
  epoch: INodeRef;
}

function fixture(spec: string, options: BlocksetOptions = {}): Fixture {
  const specs = parseBlockLayerSpec(spec);
  const store = new ProbeStore();
  const crcFailures: BlockRef[] = [];
  const blockset = createBlockset(specs, store, {
    onCrcFailure: (ref) => crcFailures.push(ref),
    ...options,
  });
  return { specs, store, blockset, crcFailures, epoch: new INodeRef(3, 7n) };
}

/** Fills indexes [0, count) with blockOf(i + 1). */
async function fill(f: Fixture, count: number): Promise<void> {
  for (let i = f.blockset.length(); i < count; i++) {
    await f.blockset.putBlock(f.epoch, i, blockOf(i + 1));
  }
}

/** Registers the contract tests for the stack `spec` (e.g. `rep=3,crc,base`). */
export function testBlocksetContract(spec: string): void {
  const name = `blockset ${formatBlockLayerSpec(parseBlockLayerSpec(spec))}`;
  registerReadWrite(name, spec);
  registerBounds(name, spec);
  registerErrors(name, spec);
  registerTruncateTrim(name, spec);
  registerMarshal(name, spec);
  registerRefs(name, spec);
  registerIntegrity(name, spec);
  registerModel(name, spec);
}

function registerErrors(name: string, spec: string): void {
  Deno.test(`${name}: an aborted read or a closed store fails without fallback`, async () => {
    const f = fixture(spec);
    await fill(f, 1);
    const aborted = AbortSignal.abort(new Error("stop"));
    await assert.rejects(f.blockset.getBlock(0, { signal: aborted }), /stop/);
    assert.equal(f.store.reads.length, 0, "an aborted read never reaches the store");
    await f.store.close();
    await assert.rejects(f.blockset.getBlock(0), torusCode(ErrorCode.Closed));
    await assert.rejects(f.blockset.putBlock(f.epoch, 0, blockOf(1)), torusCode(ErrorCode.Closed));
  });
}

function registerReadWrite(name: string, spec: string): void {
  Deno.test(`${name}: a written block reads back, short blocks zero-padded`, async () => {
    const f = fixture(spec);
    await f.blockset.putBlock(f.epoch, 0, blockOf(9));
    await f.blockset.putBlock(f.epoch, 1, new Uint8Array([1, 2, 3]));
    assert.equal(f.blockset.length(), 2);
    assert.deepEqual(await f.blockset.getBlock(0), blockOf(9));
    assert.deepEqual(await f.blockset.getBlock(1), padded(new Uint8Array([1, 2, 3])));
    assert.equal(f.blockset.kind, f.specs[0]!.kind);
  });

  Deno.test(`${name}: overwrite replaces a block and append grows by one`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    await f.blockset.putBlock(new INodeRef(3, 8n), 1, blockOf(0xee));
    await f.blockset.putBlock(f.epoch, 3, blockOf(0xdd));
    assert.deepEqual(await readAll(f.blockset), [
      blockOf(1),
      blockOf(0xee),
      blockOf(3),
      blockOf(0xdd),
    ]);
  });

  Deno.test(`${name}: unset indexes read as zero blocks without touching the store`, async () => {
    const f = fixture(spec);
    f.blockset.truncate(3);
    await f.blockset.putBlock(f.epoch, 1, blockOf(5));
    f.store.reads.length = 0;
    assert.deepEqual(await f.blockset.getBlock(0), new Uint8Array(CONTRACT_BLOCK_BYTES));
    assert.deepEqual(await f.blockset.getBlock(2), new Uint8Array(CONTRACT_BLOCK_BYTES));
    assert.equal(f.store.reads.length, 0);
  });

  Deno.test(`${name}: buffers handed in or out are never aliased`, async () => {
    const f = fixture(spec);
    const data = blockOf(1);
    const putting = f.blockset.putBlock(f.epoch, 0, data);
    data.fill(2); // the caller reuses its buffer before the put has finished
    await putting;
    const first = await f.blockset.getBlock(0);
    first.fill(3);
    assert.deepEqual(await f.blockset.getBlock(0), blockOf(1));
    f.blockset.truncate(2);
    (await f.blockset.getBlock(1)).fill(4);
    assert.deepEqual(await f.blockset.getBlock(1), new Uint8Array(CONTRACT_BLOCK_BYTES));
  });

  Deno.test(`${name}: concurrent puts leave every layer agreeing on each index`, async () => {
    const f = fixture(spec);
    await fill(f, 4);
    await Promise.all([
      f.blockset.putBlock(f.epoch, 0, blockOf(40)),
      f.blockset.putBlock(f.epoch, 0, blockOf(41)),
      f.blockset.putBlock(f.epoch, 2, blockOf(42)),
      f.blockset.putBlock(f.epoch, 4, blockOf(43)),
    ]);
    assert.equal(f.blockset.length(), 5);
    assert.ok([40, 41].includes((await f.blockset.getBlock(0))[0]!));
    assert.deepEqual(await f.blockset.getBlock(2), blockOf(42));
    assert.deepEqual(await f.blockset.getBlock(4), blockOf(43));
  });
}

function registerBounds(name: string, spec: string): void {
  Deno.test(`${name}: reads at or beyond the length throw not_exist`, async () => {
    const f = fixture(spec);
    await assert.rejects(f.blockset.getBlock(0), torusCode(ErrorCode.NotExist));
    await fill(f, 2);
    await assert.rejects(f.blockset.getBlock(2), torusCode(ErrorCode.NotExist));
    await assert.rejects(f.blockset.getBlock(-1), torusCode(ErrorCode.Invalid));
    await assert.rejects(f.blockset.getBlock(0.5), torusCode(ErrorCode.Invalid));
  });

  Deno.test(`${name}: puts beyond the length, oversized or at bad indexes are invalid`, async () => {
    const f = fixture(spec);
    await fill(f, 2);
    const before = f.blockset.marshal();
    const bad: [number, Uint8Array][] = [
      [3, blockOf(1)],
      [-1, blockOf(1)],
      [Number.NaN, blockOf(1)],
      [1.5, blockOf(1)],
      [0, new Uint8Array(CONTRACT_BLOCK_BYTES + 1)],
    ];
    for (const [index, data] of bad) {
      await assert.rejects(f.blockset.putBlock(f.epoch, index, data), torusCode(ErrorCode.Invalid));
    }
    assert.deepEqual(f.blockset.marshal(), before);
  });

  Deno.test(`${name}: a put the store refuses leaves the blockset unchanged`, async () => {
    const f = fixture(spec);
    await fill(f, 2);
    const before = f.blockset.marshal();
    f.store.putsLeft = copiesOf(f.specs) - 1;
    await assert.rejects(f.blockset.putBlock(f.epoch, 0, blockOf(77)));
    await assert.rejects(f.blockset.putBlock(f.epoch, 2, blockOf(78)));
    assert.deepEqual(f.blockset.marshal(), before);
    assert.deepEqual(await readAll(f.blockset), [blockOf(1), blockOf(2)]);
  });
}

function registerTruncateTrim(name: string, spec: string): void {
  Deno.test(`${name}: a truncate while a put is in flight makes the put invalid`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    const put = f.blockset.putBlock(f.epoch, 2, blockOf(0x44));
    f.blockset.truncate(1);
    await assert.rejects(put, torusCode(ErrorCode.Invalid));
    assert.equal(f.blockset.length(), 1);
    assert.deepEqual(await readAll(f.blockset), [blockOf(1)]);
  });

  Deno.test(`${name}: truncate grows with unset indexes and cuts`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    f.blockset.truncate(5);
    assert.deepEqual(await readAll(f.blockset), [
      blockOf(1),
      blockOf(2),
      blockOf(3),
      new Uint8Array(CONTRACT_BLOCK_BYTES),
      new Uint8Array(CONTRACT_BLOCK_BYTES),
    ]);
    f.blockset.truncate(1);
    assert.equal(f.blockset.length(), 1);
    assert.equal(f.blockset.getAllBlockRefs().length, copiesOf(f.specs));
    f.blockset.truncate(3);
    assert.deepEqual(await f.blockset.getBlock(2), new Uint8Array(CONTRACT_BLOCK_BYTES));
    assert.deepEqual(await f.blockset.getBlock(0), blockOf(1));
    for (const bad of [-1, 1.5, Number.POSITIVE_INFINITY, 2 ** 31]) {
      assert.throws(() => f.blockset.truncate(bad), torusCode(ErrorCode.Invalid));
    }
  });

  Deno.test(`${name}: trim unsets a range and checks its bounds`, async () => {
    const f = fixture(spec);
    await fill(f, 5);
    f.blockset.trim(1, 3);
    f.blockset.trim(4, 4);
    const zero = new Uint8Array(CONTRACT_BLOCK_BYTES);
    assert.deepEqual(await readAll(f.blockset), [blockOf(1), zero, zero, blockOf(4), blockOf(5)]);
    assert.equal(f.blockset.getAllBlockRefs().length, 3 * copiesOf(f.specs));
    for (const [from, to] of [[3, 2], [0, 6], [-1, 2], [0.5, 2]] as const) {
      assert.throws(() => f.blockset.trim(from, to), torusCode(ErrorCode.Invalid));
    }
    await f.blockset.putBlock(f.epoch, 2, blockOf(0x22));
    assert.deepEqual(await f.blockset.getBlock(2), blockOf(0x22));
  });
}

function registerMarshal(name: string, spec: string): void {
  Deno.test(`${name}: marshal then unmarshal gives an equal blockset`, async () => {
    const f = fixture(spec);
    await fill(f, 4);
    f.blockset.truncate(6);
    f.blockset.trim(1, 2);
    const layers = f.blockset.marshal();
    assert.deepEqual(layers.map((layer) => layer.type), f.specs.map((layer) => layer.kind));
    await assertSameBlockset(unmarshalBlockset(layers, f.store), f.blockset);
  });

  Deno.test(`${name}: an empty blockset round-trips`, async () => {
    const f = fixture(spec);
    const copy = unmarshalBlockset(f.blockset.marshal(), f.store);
    assert.equal(copy.length(), 0);
    await assertSameBlockset(copy, f.blockset);
  });

  Deno.test(`${name}: the layers survive INodeCodec encode and decode`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    const inode = {
      volume: 3n,
      inode: 7n,
      filesize: BigInt(3 * CONTRACT_BLOCK_BYTES),
      attrs: {},
      blocks: f.blockset.marshal(),
    };
    const decoded = INodeCodec.decode(INodeCodec.encode(inode));
    assert.deepEqual(decoded, inode);
    await assertSameBlockset(unmarshalBlockset(decoded.blocks, f.store), f.blockset);
  });

  Deno.test(`${name}: marshalRange chunks load back in any order`, async () => {
    const f = fixture(spec);
    await fill(f, 7);
    f.blockset.trim(2, 3);
    const chunks: [number, BlockLayer[]][] = [0, 3, 6].map((from) => [
      from,
      f.blockset.marshalRange(from, Math.min(from + 3, 7)),
    ]);
    const copy = createBlockset(f.specs, f.store);
    for (const [from, layers] of chunks.reverse()) copy.loadRange(from, layers);
    await assertSameBlockset(copy, f.blockset);
    // A chunk loaded over existing indexes replaces just those.
    copy.loadRange(0, f.blockset.marshalRange(4, 6));
    assert.deepEqual(await copy.getBlock(0), blockOf(5));
    assert.deepEqual(await copy.getBlock(1), blockOf(6));
    assert.deepEqual(await copy.getBlock(3), blockOf(4));
    assert.equal(copy.length(), 7);
  });

  Deno.test(`${name}: loadRange past the end grows with unset indexes`, async () => {
    const f = fixture(spec);
    await fill(f, 2);
    const copy = createBlockset(f.specs, f.store);
    copy.loadRange(3, f.blockset.marshalRange(0, 2));
    assert.equal(copy.length(), 5);
    const zero = new Uint8Array(CONTRACT_BLOCK_BYTES);
    assert.deepEqual(await readAll(copy), [zero, zero, zero, blockOf(1), blockOf(2)]);
    assert.deepEqual(copy.marshalRange(0, 0).length, f.specs.length);
  });

  Deno.test(`${name}: marshalRange and loadRange reject bad ranges and other stacks`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    for (const [from, to] of [[2, 1], [0, 4], [-1, 1], [0, 1.5]] as const) {
      assert.throws(() => f.blockset.marshalRange(from, to), torusCode(ErrorCode.Invalid));
    }
    const layers = f.blockset.marshalRange(0, 3);
    const before = f.blockset.marshal();
    assert.throws(() => f.blockset.loadRange(-1, layers), torusCode(ErrorCode.Invalid));
    assert.throws(() => f.blockset.loadRange(0, layers.slice(1)), torusCode(ErrorCode.Invalid));
    const other = f.specs.length === 1 ? "crc,base" : "base";
    const foreign = createBlockset(parseBlockLayerSpec(other), f.store).marshal();
    assert.throws(() => f.blockset.loadRange(0, foreign), torusCode(ErrorCode.Invalid));
    assert.deepEqual(f.blockset.marshal(), before);
  });
}

function registerRefs(name: string, spec: string): void {
  Deno.test(`${name}: getAllBlockRefs lists every stored copy, getLiveINodes each epoch`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    await f.blockset.putBlock(new INodeRef(3, 9n), 1, blockOf(0x99));
    f.blockset.truncate(4);
    const refs = f.blockset.getAllBlockRefs();
    assert.equal(refs.length, 3 * copiesOf(f.specs));
    assert.equal(new Set(refs.map((ref) => ref.key)).size, refs.length);
    for (const ref of refs) assert.ok(await f.store.hasBlock(ref), `${ref} is stored`);
    assert.deepEqual(f.blockset.getLiveINodes(), new Set([7n, 9n]));
    f.blockset.trim(1, 2);
    assert.deepEqual(f.blockset.getLiveINodes(), new Set([7n]));
  });

  Deno.test(`${name}: refs stay unique within an epoch across trim, truncate and reloads`, async () => {
    const f = fixture(spec);
    await fill(f, 3);
    f.blockset.trim(0, 3);
    f.blockset.truncate(0);
    await fill(f, 2);
    const reloaded = unmarshalBlockset(f.blockset.marshal(), f.store);
    await reloaded.putBlock(f.epoch, 2, blockOf(30));
    const chunked = createBlockset(f.specs, f.store);
    chunked.loadRange(0, reloaded.marshalRange(0, 3));
    await chunked.putBlock(new INodeRef(3, 6n), 3, blockOf(40));
    await chunked.putBlock(f.epoch, 4, blockOf(50));
    const refs = chunked.getAllBlockRefs();
    assert.equal(new Set(refs.map((ref) => ref.key)).size, refs.length);
    assert.deepEqual(await readAll(chunked), [
      blockOf(1),
      blockOf(2),
      blockOf(30),
      blockOf(40),
      blockOf(50),
    ]);
  });
}

function registerIntegrity(name: string, spec: string): void {
  const specs = parseBlockLayerSpec(spec);
  if (has(specs, LayerKind.Crc)) registerCrc(name, spec);
  if (has(specs, LayerKind.Rep)) registerRep(name, spec);
  if (!has(specs, LayerKind.Rep)) {
    Deno.test(`${name}: a block missing from the store is block_unavailable`, async () => {
      const f = fixture(spec);
      await fill(f, 1);
      await f.store.deleteBlock(f.blockset.getAllBlockRefs()[0]!);
      await assert.rejects(f.blockset.getBlock(0), torusCode(ErrorCode.BlockUnavailable));
    });
  }
}

function registerCrc(name: string, spec: string): void {
  Deno.test(`${name}: reads pass the recorded CRC down to the store`, async () => {
    const f = fixture(spec);
    await fill(f, 2);
    f.store.reads.length = 0;
    await f.blockset.getBlock(1);
    assert.ok(f.store.reads.length >= 1);
    assert.equal(f.store.reads[0]!.options?.expectedCrc32, crc32(blockOf(2)));
  });

  Deno.test(`${name}: an unset index whose recorded CRC is wrong fails the read`, async () => {
    const f = fixture(spec);
    await fill(f, 1);
    f.blockset.truncate(2);
    const layers = f.blockset.marshal();
    const crcLayer = layers.find((layer) => layer.type === LayerKind.Crc)!;
    crcLayer.content[4] = crcLayer.content[4]! ^ 0xff;
    const damaged = unmarshalBlockset(layers, f.store, {
      onCrcFailure: (ref) => f.crcFailures.push(ref),
    });
    assert.deepEqual(await damaged.getBlock(0), blockOf(1));
    await assert.rejects(damaged.getBlock(1), torusCode(ErrorCode.BlockUnavailable));
    assert.deepEqual(f.crcFailures, [BlockRef.ZERO]);
  });

  Deno.test(`${name}: every copy corrupt → block_unavailable, never the bad bytes`, async () => {
    for (const ignoreExpectedCrc of [false, true]) {
      const f = fixture(spec);
      await fill(f, 2);
      f.store.ignoreExpectedCrc = ignoreExpectedCrc;
      for (const ref of refsAt(f.blockset, 0)) await f.store.corrupt(ref);
      await assert.rejects(f.blockset.getBlock(0), torusCode(ErrorCode.BlockUnavailable));
      // Only a store that hands back the bad bytes lets the blockset see (and count) them.
      assert.equal(f.crcFailures.length, ignoreExpectedCrc ? copiesOf(f.specs) : 0);
      assert.deepEqual(await f.blockset.getBlock(1), blockOf(2));
    }
  });
}

function registerRep(name: string, spec: string): void {
  Deno.test(`${name}: reads fall back to the extra copies in order`, async () => {
    const f = fixture(spec);
    await fill(f, 2);
    const copies = refsAt(f.blockset, 0);
    assert.equal(copies.length, copiesOf(f.specs));
    for (const [dropped, ref] of copies.entries()) {
      if (dropped === copies.length - 1) break;
      await f.store.deleteBlock(ref);
      f.store.reads.length = 0;
      assert.deepEqual(await f.blockset.getBlock(0), blockOf(1));
      assert.deepEqual(
        f.store.reads.map((read) => read.ref.key),
        copies.slice(0, dropped + 2).map((r) => r.key),
      );
    }
    await f.store.deleteBlock(copies[copies.length - 1]!);
    await assert.rejects(f.blockset.getBlock(0), torusCode(ErrorCode.BlockUnavailable));
    assert.deepEqual(await f.blockset.getBlock(1), blockOf(2));
  });

  if (!has(parseBlockLayerSpec(spec), LayerKind.Crc)) return;
  Deno.test(`${name}: reads fall back past a corrupt primary, counted when seen`, async () => {
    for (const ignoreExpectedCrc of [false, true]) {
      const f = fixture(spec);
      await fill(f, 2);
      f.store.ignoreExpectedCrc = ignoreExpectedCrc;
      const [primary, extra] = refsAt(f.blockset, 0);
      await f.store.corrupt(primary!);
      f.store.reads.length = 0;
      assert.deepEqual(await f.blockset.getBlock(0), blockOf(1));
      assert.deepEqual(f.store.reads.map((read) => read.ref.key), [primary!.key, extra!.key]);
      for (const read of f.store.reads) {
        assert.equal(read.options?.expectedCrc32, crc32(blockOf(1)));
      }
      assert.deepEqual(f.crcFailures.map(String), ignoreExpectedCrc ? [String(primary)] : []);
    }
  });
}

/** Operations of the randomized model test, with their weights. */
const modelOps = [
  ["put", 8],
  ["get", 4],
  ["truncate", 1],
  ["trim", 1],
  ["reload", 1],
  ["chunks", 1],
  ["epoch", 1],
] as const;

function pickOp(random: SeededRandom): typeof modelOps[number][0] {
  const total = modelOps.reduce((sum, [, weight]) => sum + weight, 0);
  let roll = random.int(total);
  for (const [op, weight] of modelOps) {
    if (roll < weight) return op;
    roll -= weight;
  }
  return "get";
}

function registerModel(name: string, spec: string): void {
  const seed = testSeed();
  Deno.test(`${name}: random operations match an array model (seed=${seed})`, async () => {
    const random = new SeededRandom(seed);
    const f = fixture(spec);
    const model: (Uint8Array | null)[] = [];
    let blockset = f.blockset;
    let inode = 10n;
    const zero = new Uint8Array(CONTRACT_BLOCK_BYTES);
    for (let step = 0; step < 400; step++) {
      const op = pickOp(random);
      if (op === "put") {
        const index = random.int(model.length + 1);
        const data = random.bytes(1 + random.int(CONTRACT_BLOCK_BYTES));
        await blockset.putBlock(new INodeRef(3, inode), index, data);
        model[index] = padded(data);
      } else if (op === "get" && model.length > 0) {
        const index = random.int(model.length);
        assert.deepEqual(await blockset.getBlock(index), model[index] ?? zero, `step ${step}`);
      } else if (op === "truncate") {
        const length = random.int(model.length + 4);
        blockset.truncate(length);
        model.length = Math.min(model.length, length);
        while (model.length < length) model.push(null);
      } else if (op === "trim") {
        const from = random.int(model.length + 1);
        const to = from + random.int(model.length - from + 1);
        blockset.trim(from, to);
        model.fill(null, from, to);
      } else if (op === "reload") {
        blockset = unmarshalBlockset(blockset.marshal(), f.store);
      } else if (op === "chunks") {
        const chunk = 1 + random.int(4);
        const copy = createBlockset(f.specs, f.store);
        for (let from = 0; from < model.length; from += chunk) {
          copy.loadRange(from, blockset.marshalRange(from, Math.min(model.length, from + chunk)));
        }
        blockset = copy;
      } else if (op === "epoch") {
        inode++;
      }
      assert.equal(blockset.length(), model.length, `length after ${op} at step ${step}`);
    }
    assert.deepEqual(await readAll(blockset), model.map((block) => block ?? zero));
    const refs = blockset.getAllBlockRefs();
    assert.equal(new Set(refs.map((ref) => ref.key)).size, refs.length);
    assert.equal(refs.length, model.filter((block) => block !== null).length * copiesOf(f.specs));
  });
}
