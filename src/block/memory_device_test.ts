/** Runs the Device contract against MemoryDevice, and checks what is particular to it. */

import assert from "node:assert/strict";
import { ErrorCode } from "../core/mod.ts";
import { assertBytes, deviceContract, patternBytes, rejectsWithCode } from "./device_contract.ts";
import { MemoryDevice } from "./memory_device.ts";

deviceContract("MemoryDevice", {
  writable: (sizeBytes) =>
    Promise.resolve({ device: new MemoryDevice({ sizeBytes }), cleanup: () => Promise.resolve() }),
  readOnly: async (contents) => {
    const source = new MemoryDevice({ sizeBytes: contents.length });
    await source.writeAt(0, contents);
    return { device: source.snapshot(), cleanup: () => source.close() };
  },
  knowsZeros: true,
});

Deno.test("MemoryDevice: rejects sizes that are not whole sectors", () => {
  for (const sizeBytes of [-512, 100, 513, 0.5, Number.MAX_SAFE_INTEGER + 1]) {
    assert.throws(() => new MemoryDevice({ sizeBytes }), /512-byte sectors/);
  }
  assert.equal(new MemoryDevice({ sizeBytes: 0 }).sizeBytes, 0);
});

Deno.test("MemoryDevice: pages are allocated on write and freed by trim", async () => {
  const device = new MemoryDevice({ sizeBytes: 2 ** 40 });
  assert.equal(device.allocatedBytes, 0);
  await device.writeAt(2 ** 39 + 100, patternBytes(5000, 1));
  assert.equal(device.allocatedBytes, 2 * 4096);
  await device.writeZeroes(0, 65536, { noHole: true });
  assert.equal(device.allocatedBytes, 18 * 4096, "noHole keeps the range allocated");
  await device.writeZeroes(0, 65536);
  await device.trim(2 ** 39, 4096);
  assert.equal(device.allocatedBytes, 4096, "whole pages inside the range are freed");
  await device.trim(2 ** 39 + 4096, 100);
  assert.equal(device.allocatedBytes, 4096, "a partial page stays, zeroed in part");
  const back = new Uint8Array(5000);
  await device.readAt(2 ** 39 + 100, back);
  assert.ok(back.subarray(0, 4096 - 100).every((b) => b === 0));
  assert.ok(back.subarray(4096 - 100 + 100).some((b) => b !== 0));
});

Deno.test("MemoryDevice: extents of a huge sparse range walk only allocated pages", async () => {
  const device = new MemoryDevice({ sizeBytes: 2 ** 50 });
  await device.writeAt(2 ** 45, patternBytes(8192, 2));
  const extents = await device.extents(0, 2 ** 50);
  assert.deepEqual(extents, [
    { offsetBytes: 0, lengthBytes: 2 ** 45, zero: true },
    { offsetBytes: 2 ** 45, lengthBytes: 8192, zero: false },
    { offsetBytes: 2 ** 45 + 8192, lengthBytes: 2 ** 50 - 2 ** 45 - 8192, zero: true },
  ]);
});

Deno.test("MemoryDevice: a snapshot is read-only and independent of later writes", async () => {
  const device = new MemoryDevice({ sizeBytes: 65536 });
  await device.writeAt(0, patternBytes(4096, 3));
  const snapshot = device.snapshot();
  await device.writeAt(0, new Uint8Array(4096).fill(9));
  const back = new Uint8Array(4096);
  await snapshot.readAt(0, back);
  assertBytes(back, patternBytes(4096, 3));
  await rejectsWithCode(snapshot.writeAt(0, back), ErrorCode.ReadOnly);
});
