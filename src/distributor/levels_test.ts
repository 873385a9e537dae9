import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { parseMinCopies, parseReadLevel, parseWriteLevel } from "./levels.ts";

Deno.test("levels: read, write levels and min copies parse; anything else is invalid", () => {
  assert.equal(parseReadLevel("spread"), "spread");
  assert.equal(parseWriteLevel("one"), "one");
  assert.equal(parseMinCopies(undefined), 0, "default: a majority");
  assert.equal(parseMinCopies("majority"), 0);
  assert.equal(parseMinCopies("2"), 2);
  for (const bad of ["0", "-1", "1.5", "", "two", "100", " 2", "0x2"]) {
    assert.throws(
      () => parseMinCopies(bad),
      (e: unknown) => isTorusError(e, ErrorCode.Invalid),
      bad,
    );
  }
  for (const bad of ["", "all ", "ALL?", "fast"]) {
    assert.throws(() => parseReadLevel(bad));
    assert.throws(() => parseWriteLevel(bad));
  }
});
