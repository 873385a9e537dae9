import assert from "node:assert/strict";
import { crc32, crc32c } from "./mod.ts";

const check = new TextEncoder().encode("123456789");

Deno.test("crc32 and crc32c give the standard check values", () => {
  assert.equal(crc32(check), 0xcbf43926);
  assert.equal(crc32c(check), 0xe3069283);
  assert.equal(crc32(new Uint8Array()), 0);
  assert.equal(crc32c(new Uint8Array()), 0);
  assert.equal(crc32(new Uint8Array(32)), 0x190a55ad);
});

Deno.test("checksums are unsigned and chain through the initial value", () => {
  const data = new Uint8Array(1 << 16).map((_, i) => (i * 31) & 0xff);
  for (const f of [crc32, crc32c]) {
    const whole = f(data);
    assert.ok(whole >= 0 && whole <= 0xffffffff);
    assert.equal(f(data.subarray(1000), f(data.subarray(0, 1000))), whole);
  }
  // A view checksums only its own bytes.
  assert.equal(crc32(data.subarray(7, 16)), crc32(data.slice(7, 16)));
});
