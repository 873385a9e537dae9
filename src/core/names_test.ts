/** The one rule for volume and snapshot names, and the lenient rule for looking names up. */

import assert from "node:assert/strict";
import {
  checkName,
  checkNameLookup,
  ErrorCode,
  isTorusError,
  isValidName,
  NAME_LENGTH_MAX,
} from "./mod.ts";

function throwsInvalid(fn: () => unknown, pattern: RegExp) {
  assert.throws(fn, (e: unknown) => isTorusError(e, ErrorCode.Invalid) && pattern.test(e.message));
}

Deno.test("names: ASCII letters, digits, . _ -, starting with a letter or digit, 1..255", () => {
  for (const good of ["db", "DB", "db-01_x.y", "0", "a".repeat(NAME_LENGTH_MAX), "v1.2-rc_3"]) {
    assert.equal(checkName(good, "volume"), good);
  }
  const bad = [
    "",
    "a".repeat(NAME_LENGTH_MAX + 1),
    "a/b",
    "a@b",
    "a b",
    "-rf",
    ".",
    "..",
    ".hidden",
    "_x",
    "x\u0000",
    "x\x1b[2J",
    "x\x7f",
    "x\u0085",
    "db\u200b",
    "\u202edb",
    "db\ufeff",
    "d\u0430",
    "caf\u00e9",
    "caf\u0065\u0301",
    "a:b",
    "a%20b",
    "a?b",
    "a#b",
    "a\\b",
  ];
  for (const name of bad) {
    assert.equal(isValidName(name), false, JSON.stringify(name));
    throwsInvalid(() => checkName(name, "snapshot"), /^invalid snapshot name "/);
  }
});

Deno.test("the length limit is in characters and bytes alike (no UTF-16 counting)", () => {
  // 128 astral characters are 256 UTF-16 units: the old rule counted them wrong either way.
  assert.equal(isValidName("\u{1f600}".repeat(100)), false);
  assert.equal(isValidName("a".repeat(255)), true);
});

Deno.test("lookups accept names of older builds but never a / or an oversized key", () => {
  for (const old of ["db\u200b", "caf\u00e9", "a b", "-x", "\u202edb"]) {
    assert.equal(checkNameLookup(old, "volume"), old);
  }
  for (const bad of ["", "a/b", "x".repeat(1025), "\u00e9".repeat(513)]) {
    throwsInvalid(() => checkNameLookup(bad, "volume"), /^no volume can be named "/);
  }
});
