/**
 * The Device contract suite (device.ts states the rules): every implementation's test file calls
 * {@link deviceContract} with a factory, and the same tests run against it — the memory device,
 * the NBD client talking to the NBD server, block volumes and their snapshots.
 *
 * The factory makes a fresh writable device of a given size that reads as zeros, and a read-only
 * device with given contents (a snapshot). `reopen`, for persistent devices, opens the same
 * device again after the test closed it. Sizes used are small (at most 1 MiB).
 * @module
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, SeededRandom, testSeed } from "../core/mod.ts";
import type { Device } from "./device.ts";

/** What a contract factory returns. */
export interface DeviceFixture {
  device: Device;
  /** Opens the same device again; only called after `device.close()` resolved. */
  reopen?: () => Promise<Device>;
  /** Releases what the factory made (the device may already be closed). */
  cleanup(): Promise<void>;
}

/** Makes the devices the suite tests. */
export interface DeviceContractFactory {
  /** A fresh writable device of `sizeBytes` (a multiple of 4096) that reads as zeros. */
  writable(sizeBytes: number): Promise<DeviceFixture>;
  /** A read-only device whose bytes are `contents` (length a multiple of 4096). */
  readOnly(contents: Uint8Array): Promise<DeviceFixture>;
  /**
   * The device knows what reads as zeros (a sparse device, or an NBD client with block status):
   * `extents` must then report never-written and trimmed ranges as zero, not just may.
   */
  knowsZeros?: boolean;
}

const SIZE_BYTES = 1024 * 1024;
const SECTOR = 4096;

/** Asserts that `promise` rejects with a TorusError of `code`. */
export async function rejectsWithCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(isTorusError(error, code), `expected ${code}, got ${String(error)}`);
    return true;
  });
}

/**
 * Asserts two byte arrays are equal, naming the first difference. (node:assert's deepEqual on
 * a megabyte that differs spends minutes building its diff.)
 */
export function assertBytes(actual: Uint8Array, expected: Uint8Array, what = "bytes"): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      assert.fail(`${what}: byte ${i} is ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

/** Bytes that differ for every seed and position. */
export function patternBytes(lengthBytes: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(lengthBytes);
  let x = (seed * 2654435761 + 1) >>> 0;
  for (let i = 0; i < lengthBytes; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    bytes[i] = (x >>> 24) | 1;
  }
  return bytes;
}

async function readBack(device: Device, offsetBytes: number, lengthBytes: number) {
  const into = new Uint8Array(lengthBytes);
  await device.readAt(offsetBytes, into);
  return into;
}

async function withFixture(
  make: () => Promise<DeviceFixture>,
  body: (fixture: DeviceFixture) => Promise<void>,
): Promise<void> {
  const fixture = await make();
  try {
    await body(fixture);
  } finally {
    await fixture.device.close().catch(() => {});
    await fixture.cleanup();
  }
}

type Register = (behaviour: string, body: (fixture: DeviceFixture) => Promise<void>) => void;

/** Registers the contract tests for the devices `factory` makes. */
export function deviceContract(name: string, factory: DeviceContractFactory): void {
  const writable: Register = (behaviour, body) =>
    Deno.test(`${name}: ${behaviour}`, () => withFixture(() => factory.writable(SIZE_BYTES), body));
  registerShapeTests(writable);
  registerDataTests(writable);
  registerConcurrencyTests(writable);
  registerRangeTests(writable);
  registerZeroingTests(writable);
  if (factory.knowsZeros) registerKnownZerosTests(writable);
  registerLifecycleTests(writable);
  registerReadOnlyTests(name, factory);
}

function registerShapeTests(test: Register): void {
  test("reports its size, writability and preferred block size", async ({ device }) => {
    assert.equal(device.sizeBytes, SIZE_BYTES);
    assert.equal(device.readOnly, false);
    const preferred = device.preferredBlockSizeBytes;
    assert.ok(preferred >= 512 && (preferred & (preferred - 1)) === 0, `preferred ${preferred}`);
    await device.flush();
  });
  test("a fresh device reads as zeros", async ({ device }) => {
    assert.ok((await readBack(device, 0, SIZE_BYTES)).every((b) => b === 0));
    assert.ok((await readBack(device, 12345, 777)).every((b) => b === 0));
  });
}

function registerDataTests(test: Register): void {
  test("reads back what was written, at aligned and odd offsets and lengths", async ({ device }) => {
    const model = new Uint8Array(SIZE_BYTES);
    const cases: [number, number][] = [
      [0, 4096],
      [8192, 65536],
      [1, 1],
      [4095, 2],
      [5000, 10_000],
      [SIZE_BYTES - 513, 513],
      [300_001, 131_071],
    ];
    for (const [i, [offset, length]] of cases.entries()) {
      const data = patternBytes(length, i + 1);
      await device.writeAt(offset, data);
      model.set(data, offset);
      assertBytes(await readBack(device, offset, length), data, `write ${offset}+${length}`);
    }
    assertBytes(await readBack(device, 0, SIZE_BYTES), model);
    assertBytes(await readBack(device, 4090, 20), model.subarray(4090, 4110));
  });
  test("writeAt copies the caller's bytes and readAt hands out copies", async ({ device }) => {
    const data = patternBytes(8192, 7);
    const original = data.slice();
    await device.writeAt(4096, data);
    data.fill(0xee);
    const first = await readBack(device, 4096, 8192);
    assertBytes(first, original);
    first.fill(0x11);
    assertBytes(await readBack(device, 4096, 8192), original);
  });
  test("flush and FUA writes succeed and keep the data", async ({ device }) => {
    const data = patternBytes(4096, 9);
    await device.writeAt(0, data, { fua: true });
    await device.flush();
    assertBytes(await readBack(device, 0, 4096), data);
  });
}

function registerConcurrencyTests(test: Register): void {
  test(`many calls in flight at once all land (seed ${testSeed()})`, async ({ device }) => {
    const random = new SeededRandom(testSeed());
    const model = new Uint8Array(SIZE_BYTES);
    const calls: Promise<void>[] = [];
    // Disjoint 4 KiB sectors, so the model does not depend on the order calls complete in.
    const sectors = [...Array(SIZE_BYTES / SECTOR).keys()].sort(() => random.float() - 0.5);
    for (const [i, sector] of sectors.slice(0, 128).entries()) {
      const inSector = random.int(SECTOR);
      const length = 1 + random.int(SECTOR - inSector);
      const data = patternBytes(length, 100 + i);
      model.set(data, sector * SECTOR + inSector);
      calls.push(device.writeAt(sector * SECTOR + inSector, data));
    }
    await Promise.all(calls);
    assertBytes(await readBack(device, 0, SIZE_BYTES), model);
  });
  test("overlapping writes in flight land whole per 4 KiB sector", async ({ device }) => {
    const a = new Uint8Array(4 * SECTOR).fill(0xaa);
    const b = new Uint8Array(4 * SECTOR).fill(0xbb);
    await Promise.all([device.writeAt(SECTOR, a), device.writeAt(SECTOR, b)]);
    const back = await readBack(device, SECTOR, 4 * SECTOR);
    for (let s = 0; s < 4; s++) {
      const sector = back.subarray(s * SECTOR, (s + 1) * SECTOR);
      assert.ok(sector.every((x) => x === sector[0]) && (sector[0] === 0xaa || sector[0] === 0xbb));
    }
  });
}

function registerRangeTests(test: Register): void {
  test("rejects ranges outside the device with invalid", async ({ device }) => {
    const size = device.sizeBytes;
    const bad: [number, number][] = [[-1, 1], [size, 1], [size - 1, 2], [0.5, 1], [0, size + 1]];
    for (const [offset, length] of bad) {
      await rejectsWithCode(device.readAt(offset, new Uint8Array(length)), ErrorCode.Invalid);
      await rejectsWithCode(device.writeAt(offset, new Uint8Array(length)), ErrorCode.Invalid);
      await rejectsWithCode(device.trim(offset, length), ErrorCode.Invalid);
      await rejectsWithCode(device.writeZeroes(offset, length), ErrorCode.Invalid);
      await rejectsWithCode(device.extents(offset, length), ErrorCode.Invalid);
    }
    await device.readAt(size, new Uint8Array(0));
    await device.writeAt(size, new Uint8Array(0));
  });
}

function registerZeroingTests(test: Register): void {
  test("trim and write-zeroes read as zeros and keep the neighbours", async ({ device }) => {
    const data = patternBytes(SIZE_BYTES, 3);
    await device.writeAt(0, data);
    const model = data.slice();
    await device.trim(4096 * 4, 4096 * 8);
    model.fill(0, 4096 * 4, 4096 * 12);
    await device.trim(100, 3000);
    model.fill(0, 100, 3100);
    await device.writeZeroes(65536 + 7, 70_000);
    model.fill(0, 65543, 65543 + 70_000);
    await device.writeZeroes(262_144, 131_072, { noHole: true });
    model.fill(0, 262_144, 393_216);
    await device.writeZeroes(500_000, 1, { noHole: true, fua: true });
    model[500_000] = 0;
    assertBytes(await readBack(device, 0, SIZE_BYTES), model);
  });
  test("extents cover the range in order and zero extents read as zeros", async ({ device }) => {
    await device.writeAt(8192, patternBytes(4096, 5));
    await device.writeAt(700_001, patternBytes(9000, 6));
    const ranges: [number, number][] = [[0, SIZE_BYTES], [5000, 10_000], [700_000, 1]];
    for (const [offset, length] of ranges) {
      const extents = await device.extents(offset, length);
      assert.ok(extents.length > 0);
      let position = offset;
      for (const [i, extent] of extents.entries()) {
        assert.equal(extent.offsetBytes, position);
        assert.ok(extent.lengthBytes > 0);
        if (i > 0) assert.notEqual(extent.zero, extents[i - 1]!.zero, "adjacent extents differ");
        if (extent.zero) {
          const bytes = await readBack(device, extent.offsetBytes, extent.lengthBytes);
          assert.ok(bytes.every((b) => b === 0), `extent at ${extent.offsetBytes} claims zeros`);
        }
        position += extent.lengthBytes;
      }
      assert.equal(position, offset + length);
    }
    const written = await device.extents(8192, 4096);
    assert.ok(written.every((e) => !e.zero), "written data is never reported as zeros");
  });
}

function registerKnownZerosTests(test: Register): void {
  test("extents report never-written and trimmed ranges as zero", async ({ device }) => {
    const whole = { offsetBytes: 0, lengthBytes: SIZE_BYTES, zero: true };
    assert.deepEqual(await device.extents(0, SIZE_BYTES), [whole], "a fresh device");
    await device.writeAt(8192, patternBytes(4096, 7));
    const extents = await device.extents(0, SIZE_BYTES);
    assert.ok(extents.some((e) => e.zero), "the rest is still known to be zero");
    const written = extents.find((e) =>
      e.offsetBytes <= 8192 && 8192 < e.offsetBytes + e.lengthBytes
    );
    assert.equal(written?.zero, false);
    await device.trim(0, SIZE_BYTES);
    assert.deepEqual(await device.extents(0, SIZE_BYTES), [whole], "after a trim of everything");
    assert.deepEqual(await device.extents(4097, 3), [{
      offsetBytes: 4097,
      lengthBytes: 3,
      zero: true,
    }]);
  });
}

function registerLifecycleTests(test: Register): void {
  test("close waits for calls in flight, is idempotent, and later calls fail", async (fixture) => {
    const { device } = fixture;
    const data = patternBytes(65536, 11);
    const writes = [0, 1, 2, 3].map((i) => device.writeAt(i * 65536, data));
    const closing = device.close();
    await Promise.all(writes);
    await closing;
    await device.close();
    await rejectsWithCode(device.readAt(0, new Uint8Array(1)), ErrorCode.Closed);
    await rejectsWithCode(device.writeAt(0, new Uint8Array(1)), ErrorCode.Closed);
    if (fixture.reopen) {
      const again = await fixture.reopen();
      try {
        assertBytes(await readBack(again, 3 * 65536, 65536), data);
      } finally {
        await again.close();
      }
    }
  });
}

function registerReadOnlyTests(name: string, factory: DeviceContractFactory): void {
  Deno.test(`${name}: a read-only device reads its contents and refuses writes`, async () => {
    const contents = patternBytes(SIZE_BYTES, 21);
    await withFixture(() => factory.readOnly(contents), async ({ device }) => {
      assert.equal(device.readOnly, true);
      assert.equal(device.sizeBytes, SIZE_BYTES);
      assertBytes(await readBack(device, 0, SIZE_BYTES), contents);
      assertBytes(await readBack(device, 4097, 3), contents.subarray(4097, 4100));
      await rejectsWithCode(device.writeAt(0, new Uint8Array(4096)), ErrorCode.ReadOnly);
      await rejectsWithCode(device.trim(0, 4096), ErrorCode.ReadOnly);
      await rejectsWithCode(device.writeZeroes(0, 4096), ErrorCode.ReadOnly);
      await device.flush();
      assertBytes(await readBack(device, 0, 4096), contents.subarray(0, 4096));
    });
  });
}
