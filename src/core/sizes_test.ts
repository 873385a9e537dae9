import assert from "node:assert/strict";
import { ErrorCode, formatSize, isTorusError, parseSize, parseSizeOrPercent } from "./mod.ts";

const sizes: [string, number][] = [
  ["0", 0],
  ["1", 1],
  ["4096", 4096],
  ["512B", 512],
  ["512KiB", 512 * 1024],
  ["512kib", 512 * 1024],
  ["512 KiB", 512 * 1024],
  ["  512KiB  ", 512 * 1024],
  ["512Ki", 512 * 1024],
  ["1GiB", 2 ** 30],
  ["1gib", 2 ** 30],
  ["1 GIB", 2 ** 30],
  ["20GB", 20e9],
  ["20gb", 20e9],
  ["20G", 20e9],
  ["1kB", 1000],
  ["1k", 1000],
  ["1MB", 1e6],
  ["1MiB", 2 ** 20],
  ["1TiB", 2 ** 40],
  ["1TB", 1e12],
  ["2PiB", 2 ** 51],
  ["1.5KiB", 1536],
  ["1.5 MiB", 1.5 * 2 ** 20],
  [".5KiB", 512],
  ["1.0001", 1],
  ["0.9", 0],
  ["8PB", 8e15],
];

for (const [text, bytes] of sizes) {
  Deno.test(`parseSize("${text}") is ${bytes}`, () => {
    assert.equal(parseSize(text), bytes);
  });
}

const badSizes = [
  "",
  "   ",
  "-1",
  "-1KiB",
  "KiB",
  "B",
  "abc",
  "12abc",
  "1 2",
  "1.2.3",
  "1.",
  "1e3",
  "0x10",
  "1,5KiB",
  "+5",
  "5 K iB",
  "1EiB",
  "Infinity",
  "NaN",
  "9007199254740993",
  "99999999999999999999",
  "9".repeat(400),
  "10000PiB",
];

for (const text of badSizes) {
  Deno.test(`parseSize rejects "${text.slice(0, 24)}" with a one-line invalid`, () => {
    assert.throws(() => parseSize(text), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      assert.ok(!error.message.includes("\n"));
      return true;
    });
  });
}

Deno.test("parseSizeOrPercent takes 1%..100% of the filesystem, or a plain size", () => {
  const filesystemBytes = () => 1_000_000_007;
  assert.equal(parseSizeOrPercent("1%", filesystemBytes), 10_000_000);
  assert.equal(parseSizeOrPercent("50%", filesystemBytes), 500_000_003);
  assert.equal(parseSizeOrPercent(" 100 % ", filesystemBytes), 1_000_000_007);
  assert.equal(parseSizeOrPercent("12.5%", () => 800), 100);
  assert.equal(parseSizeOrPercent("1GiB", filesystemBytes), 2 ** 30);
  let asked = false;
  parseSizeOrPercent("2KiB", () => (asked = true, 0));
  assert.equal(asked, false, "a plain size does not stat the filesystem");
});

for (const text of ["0%", "0.5%", "101%", "100.5%", "-5%", "%", "abc%", "5%%", "1e1%", "5 %x"]) {
  Deno.test(`parseSizeOrPercent rejects "${text}"`, () => {
    assert.throws(
      () => parseSizeOrPercent(text, () => 1000),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  });
}

Deno.test("formatSize prints IEC units with one decimal below 10", () => {
  const cases: [number, string][] = [
    [0, "0 B"],
    [1, "1 B"],
    [1023, "1023 B"],
    [1024, "1 KiB"],
    [1536, "1.5 KiB"],
    [10 * 1024, "10 KiB"],
    [512 * 1024, "512 KiB"],
    [2 ** 30, "1 GiB"],
    [1.25 * 2 ** 30, "1.3 GiB"],
    [9.99 * 2 ** 40, "10 TiB"],
    [2 ** 60, "1 EiB"],
    [2 ** 70, "1024 EiB"],
  ];
  for (const [bytes, text] of cases) assert.equal(formatSize(bytes), text, String(bytes));
});

Deno.test("formatSize prints SI units with si", () => {
  const cases: [number, string][] = [
    [999, "999 B"],
    [1000, "1 kB"],
    [524_288, "524 kB"],
    [1_500_000, "1.5 MB"],
    [20e9, "20 GB"],
    [1e15, "1 PB"],
  ];
  for (const [bytes, text] of cases) assert.equal(formatSize(bytes, { si: true }), text);
});

Deno.test("formatSize output parses back to about the same size", () => {
  for (const bytes of [1, 1536, 512 * 1024, 3 * 2 ** 30, 7.5 * 2 ** 40]) {
    const back = parseSize(formatSize(bytes).replace(" ", ""));
    assert.ok(Math.abs(back - bytes) <= bytes * 0.05, `${bytes} → ${formatSize(bytes)}`);
  }
});
