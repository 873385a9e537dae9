import assert from "node:assert/strict";
import { ErrorCode, isTorusError, REP_LAYER_COPIES_MAX } from "../core/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { LayerKind, type LayerSpec } from "./blockset.ts";
import { createBlockset, formatBlockLayerSpec, parseBlockLayerSpec } from "./mod.ts";

const base: LayerSpec = { kind: LayerKind.Base, options: "" };
const crc: LayerSpec = { kind: LayerKind.Crc, options: "" };
const rep = (copies: number): LayerSpec => ({ kind: LayerKind.Rep, options: String(copies) });

const valid: [string, LayerSpec[], string][] = [
  ["base", [base], "base"],
  ["crc", [crc, base], "crc,base"],
  ["crc,base", [crc, base], "crc,base"],
  ["CRC,Base", [crc, base], "crc,base"],
  [" crc , base ", [crc, base], "crc,base"],
  ["rep", [rep(2), base], "rep=2,base"],
  ["rep,crc", [rep(2), crc, base], "rep=2,crc,base"],
  ["rep=3,crc,base", [rep(3), crc, base], "rep=3,crc,base"],
  ["R=4", [rep(4), base], "rep=4,base"],
  ["crc,rep=2,base", [crc, rep(2), base], "crc,rep=2,base"],
  ["rep=1", [rep(1), base], "rep=1,base"],
  ["rep = 16", [rep(16), base], "rep=16,base"],
  ["rep=016", [rep(16), base], "rep=16,base"],
];

for (const [spec, layers, canonical] of valid) {
  Deno.test(`parseBlockLayerSpec("${spec}") gives ${canonical}`, () => {
    assert.deepEqual(parseBlockLayerSpec(spec), layers);
    assert.equal(formatBlockLayerSpec(parseBlockLayerSpec(spec)), canonical);
    assert.deepEqual(parseBlockLayerSpec(canonical), layers);
  });
}

/** Spec, and the part the one-line error must name. */
const invalidSpecs: [string, string][] = [
  ["", "empty layer"],
  [",", "empty layer"],
  ["crc,", "empty layer"],
  [",crc", "empty layer"],
  ["crc,,base", "empty layer"],
  ["foo", `"foo"`],
  ["crc,foo,base", `"foo"`],
  ["bas", `"bas"`],
  ["crc32,base", `"crc32"`],
  ["=2", `"=2"`],
  ["base=1", `"base=1"`],
  ["crc=2,base", `"crc=2"`],
  ["crc=", `"crc="`],
  ["rep=0", `"rep=0"`],
  [`rep=${REP_LAYER_COPIES_MAX + 1}`, `"rep=${REP_LAYER_COPIES_MAX + 1}"`],
  ["rep=-1", `"rep=-1"`],
  ["rep=1.5", `"rep=1.5"`],
  ["rep=abc", `"rep=abc"`],
  ["rep=", `"rep="`],
  ["rep=+2", `"rep=+2"`],
  ["rep=0x2", `"rep=0x2"`],
  ["rep=2e1", `"rep=2e1"`],
  ["rep=99999999999999999999", `"rep=99999999999999999999"`],
  ["rep=2=3", `"rep=2=3"`],
  ["base,crc", "base must be the bottom"],
  ["base,base", "base must be the bottom"],
  ["crc,base,base", "base must be the bottom"],
  ["crc,crc,base", `"crc" appears twice`],
  ["rep,rep", `"rep" appears twice`],
  ["rep=2,r=3,base", `"rep" appears twice`],
  ["x".repeat(10_000), `unknown layer "${"x".repeat(40)}..."`],
  [`${"y".repeat(10_000)},base`, `unknown layer "${"y".repeat(40)}..."`],
];

for (const [spec, part] of invalidSpecs) {
  Deno.test(`parseBlockLayerSpec rejects "${spec.slice(0, 30)}" naming ${part}`, () => {
    assert.throws(() => parseBlockLayerSpec(spec), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      assert.ok(error.message.includes(part), error.message);
      assert.ok(!error.message.includes("\n"), "one line");
      assert.ok(error.message.length < 200, "short");
      return true;
    });
  });
}

Deno.test("formatBlockLayerSpec writes the default copy count and rejects bad stacks", () => {
  assert.equal(formatBlockLayerSpec([{ kind: LayerKind.Rep, options: "" }, base]), "rep=2,base");
  const bad: LayerSpec[][] = [
    [],
    [crc],
    [base, crc],
    [crc, crc, base],
    [{ kind: LayerKind.Rep, options: "0" }, base],
    [{ kind: LayerKind.Crc, options: "1" }, base],
    [{ kind: 7 as LayerKind, options: "" }, base],
  ];
  for (const layers of bad) {
    assert.throws(() => formatBlockLayerSpec(layers), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      return true;
    });
  }
});

Deno.test("createBlockset rejects stacks the spec rules forbid", () => {
  const store = new MemoryBlockStore({ blockSizeBytes: 64, totalBlocks: 4 });
  for (const layers of [[], [crc], [base, base], [{ kind: LayerKind.Rep, options: "x" }, base]]) {
    assert.throws(() => createBlockset(layers, store), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      return true;
    });
  }
  assert.equal(createBlockset([{ kind: LayerKind.Rep, options: "" }, base], store).kind, 2);
});
