import assert from "node:assert/strict";
import {
  ErrorCode,
  formatSize,
  isTorusError,
  parseCapacity,
  parseSize,
  parseSizeOrPercent,
  parseVolumeSize,
  SIZE_MAX_BYTES,
} from "./mod.ts";

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
  // Exact decimal arithmetic: in floats 4.1 * 1e6 is 4099999.999... and 2.01 * 1000 2009.999...
  ["4.1MB", 4_100_000],
  ["2.01kB", 2010],
  ["4.35MB", 4_350_000],
  ["0.000001EB", 1e12],
  ["7.99PiB", Number((799n << 50n) / 100n)],
  [String(SIZE_MAX_BYTES), SIZE_MAX_BYTES],
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

/** Each bad size gets the message of its class, on one line. */
const sizeMessages: [string, RegExp][] = [
  ["-1", /^invalid size "-1": a size cannot be negative$/],
  ["-1KiB", /negative/],
  ["- 5", /negative/],
  ["-0.5GiB", /negative/],
  ["9007199254740992", /^size "9007199254740992" is too large: at most 9007199254740991 bytes/],
  ["8EiB", /too large/],
  ["10000PiB", /too large/],
  ["9".repeat(400), /^size "9{40}\.\.\." is too large/],
  ["12XB", /^invalid size "12XB": expected a number with an optional unit/],
  ["--5", /expected a number/],
];

for (const [text, pattern] of sizeMessages) {
  Deno.test(`parseSize("${text.slice(0, 12)}") says ${pattern.source.slice(0, 40)}`, () => {
    assert.throws(() => parseSize(text), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      assert.match(error.message, pattern);
      return true;
    });
  });
}

Deno.test("parseVolumeSize takes whole 512-byte sectors above 0 bytes", () => {
  assert.equal(parseVolumeSize("512"), 512);
  assert.equal(parseVolumeSize("1.5KiB"), 1536);
  assert.equal(parseVolumeSize("10GiB"), 10 * 2 ** 30);
  assert.equal(parseVolumeSize("1GB"), 1e9);
  const bad: [string, RegExp][] = [
    ["513", /^invalid volume size "513": must be a whole number of 512-byte sectors/],
    ["1000", /512-byte sectors/],
    ["1.1KiB", /512-byte sectors/],
    ["1kB", /512-byte sectors/],
    ["0", /must be more than 0 bytes/],
    ["0.5", /must be more than 0 bytes/],
    ["-512", /negative/],
    ["16EiB", /too large/],
  ];
  for (const [text, pattern] of bad) {
    assert.throws(
      () => parseVolumeSize(text),
      (e: unknown) => isTorusError(e, ErrorCode.Invalid) && pattern.test(e.message),
      text,
    );
  }
});

Deno.test("parseCapacity tells bytes from a percentage, and a negative one from a bad one", () => {
  assert.deepEqual(parseCapacity("2GiB"), { kind: "bytes", bytes: 2 ** 31 });
  assert.deepEqual(parseCapacity(" 12.5% "), { kind: "percent", percent: 12.5 });
  assert.throws(() => parseCapacity("-5%"), /cannot be negative/);
  assert.throws(() => parseCapacity("-5"), /cannot be negative/);
  assert.throws(() => parseCapacity("0%"), /between 1% and 100%/);
});

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
