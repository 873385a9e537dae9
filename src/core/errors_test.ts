import assert from "node:assert/strict";
import {
  AssertionError,
  blockUnavailable,
  closed,
  ErrorCode,
  errorMessage,
  exists,
  invalid,
  isErrorCode,
  isTorusError,
  notExist,
  TorusError,
} from "./mod.ts";

Deno.test("error codes keep their wire values", () => {
  // These strings travel in RPC replies, JSON output and logs: changing one breaks peers.
  assert.deepEqual({ ...ErrorCode }, {
    NotExist: "not_exist",
    Exists: "exists",
    Locked: "locked",
    BlockUnavailable: "block_unavailable",
    CompareFailed: "compare_failed",
    OutOfSpace: "out_of_space",
    Invalid: "invalid",
    Again: "again",
    Closed: "closed",
    Unavailable: "unavailable",
    OutcomeUnknown: "outcome_unknown",
    NotSupported: "not_supported",
  });
});

Deno.test("isErrorCode accepts exactly the stable codes", () => {
  for (const code of Object.values(ErrorCode)) assert.ok(isErrorCode(code));
  for (const value of ["", "NotExist", "INVALID", "invalid ", 1, null, undefined, {}]) {
    assert.equal(isErrorCode(value), false, String(value));
  }
});

Deno.test("the shorthand constructors set code, name, message and cause", () => {
  const cause = new Error("root");
  const cases: [TorusError, ErrorCode][] = [
    [notExist("a", { cause }), ErrorCode.NotExist],
    [exists("a", { cause }), ErrorCode.Exists],
    [invalid("a", { cause }), ErrorCode.Invalid],
    [blockUnavailable("a", { cause }), ErrorCode.BlockUnavailable],
    [closed("a", { cause }), ErrorCode.Closed],
  ];
  for (const [error, code] of cases) {
    assert.ok(error instanceof TorusError && error instanceof Error);
    assert.equal(error.code, code);
    assert.equal(error.name, "TorusError");
    assert.equal(error.message, "a");
    assert.equal(error.cause, cause);
  }
});

Deno.test("isTorusError checks the class and, when given, the code", () => {
  const error = invalid("bad");
  assert.ok(isTorusError(error));
  assert.ok(isTorusError(error, ErrorCode.Invalid));
  assert.ok(!isTorusError(error, ErrorCode.NotExist));
  const impostor = Object.assign(new Error("bad"), { code: "invalid" });
  for (const value of [impostor, new AssertionError("x"), "invalid", null, undefined]) {
    assert.ok(!isTorusError(value), String(value));
  }
});

Deno.test("errorMessage gives one line for any thrown value", () => {
  assert.equal(errorMessage(invalid("one\ntwo\r\nthree\rfour")), "one two three four");
  assert.equal(errorMessage(new Error("  padded \n\n  lines  ")), "padded lines");
  assert.equal(errorMessage("plain string"), "plain string");
  assert.equal(errorMessage(42), "42");
  assert.equal(errorMessage(undefined), "undefined");
  assert.equal(errorMessage(null), "null");
  assert.equal(errorMessage({ toString: () => "obj\nect" }), "obj ect");
});
