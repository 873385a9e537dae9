/** Terminal escaping: what is escaped, in which form, and that JSON keeps its value. */

import assert from "node:assert/strict";
import {
  escapedErrorMessage,
  escapeJsonText,
  escapeText,
  hasInvisibleOrControl,
  quoteForMessage,
} from "./mod.ts";

Deno.test("escapeText: C0, DEL, C1, format and separator characters become bash $'' escapes", () => {
  const cases: [string, string][] = [
    ["plain tdp://10.0.0.1:40000", "plain tdp://10.0.0.1:40000"],
    ["\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"],
    ["a\nb\rc\td\0", "a\\x0ab\\x0dc\\x09d\\x00"],
    ["\x7f\x80\x9b\x9f", "\\x7f\\u0080\\u009b\\u009f"],
    ["db\u200b", "db\\u200b"],
    ["\u202eevil\u202c\u2066\u2069", "\\u202eevil\\u202c\\u2066\\u2069"],
    ["\ufeff\u00ad\u2060", "\\ufeff\\u00ad\\u2060"],
    ["\u2028\u2029", "\\u2028\\u2029"],
    ["\u{e0001}tag", "\\U000e0001tag"],
    ["lone \ud800 surrogate", "lone \\ud800 surrogate"],
    ["back\\slash", "back\\\\slash"],
    ["caf\u00e9 \u{1f600} \u4e2d", "caf\u00e9 \u{1f600} \u4e2d"],
  ];
  for (const [input, expected] of cases) assert.equal(escapeText(input), expected, input);
});

Deno.test("escapeText output has no character a terminal would act on", () => {
  let all = "";
  for (let code = 0; code < 0x3000; code++) all += String.fromCodePoint(code);
  assert.equal(hasInvisibleOrControl(escapeText(all)), false);
  assert.equal(hasInvisibleOrControl("db\u200b"), true);
  assert.equal(hasInvisibleOrControl("db"), false);
});

Deno.test("quoteForMessage shortens; escapedErrorMessage escapes once, on one line", () => {
  assert.equal(quoteForMessage("x".repeat(255)), `"${"x".repeat(64)}…"`);
  assert.equal(quoteForMessage("a\x1bb"), '"a\x1bb"');
  const error = new Error(`bad name ${quoteForMessage("a\x1b[2J\nb")}\n`);
  assert.equal(escapedErrorMessage(error), 'bad name "a\\x1b[2J\\x0ab"');
  assert.equal(escapedErrorMessage("plain \u202e"), "plain \\u202e");
});

Deno.test("escapeJsonText keeps the JSON value and removes raw C1, DEL and format characters", () => {
  const value = { name: "db\u200b\x7f\x9b\u202e\u2028\u{e0001}", plain: "caf\u00e9" };
  const text = escapeJsonText(JSON.stringify(value));
  assert.equal(hasInvisibleOrControl(text), false);
  assert.deepEqual(JSON.parse(text), value);
  assert.match(text, /db\\u200b\\u007f\\u009b\\u202e\\u2028\\udb40\\udc01/);
});
