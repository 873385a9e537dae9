import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { SeededRandom } from "../core/mod.ts";
import { md5, md5FirstWord, md5Words } from "./md5.ts";

const hex = (bytes: Uint8Array) =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
const text = (s: string) => new TextEncoder().encode(s);

Deno.test("md5: matches the RFC 1321 test suite", () => {
  const suite: [string, string][] = [
    ["", "d41d8cd98f00b204e9800998ecf8427e"],
    ["a", "0cc175b9c0f1b6a831c399e269772661"],
    ["abc", "900150983cd24fb0d6963f7d28e17f72"],
    ["message digest", "f96b697d7cb7938d525a2f31aaf161d0"],
    ["abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"],
    [
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
      "d174ab98d277d9f5a5611c2c9f419d9f",
    ],
    [
      "1234567890".repeat(8),
      "57edf4a22be3c955ac49da2e2107b67a",
    ],
  ];
  for (const [input, digest] of suite) assert.equal(hex(md5(text(input))), digest, input);
});

Deno.test("md5: matches node:crypto for every length across the padding boundaries", () => {
  const random = new SeededRandom(9);
  for (let length = 0; length <= 300; length++) {
    const input = random.bytes(length);
    const expected = createHash("md5").update(input).digest();
    assert.equal(hex(md5(input)), expected.toString("hex"), `length ${length}`);
    assert.equal(md5FirstWord(input), expected.readUInt32LE(0));
    const words = new Uint32Array(4);
    md5Words(input, words);
    assert.deepEqual([...words], [0, 4, 8, 12].map((at) => expected.readUInt32LE(at)));
  }
});

Deno.test("md5: results never alias internal buffers", () => {
  const first = md5(text("a"));
  md5(text("b"));
  assert.equal(hex(first), "0cc175b9c0f1b6a831c399e269772661");
});
