/**
 * Text that reaches a terminal: one escaping rule for every value torus prints (table cells,
 * CSV cells, messages, log lines), so a stored value, a name or an error message can neither
 * drive the terminal (clear the screen, move the cursor, forge rows) nor hide or reorder
 * characters (zero-width, bidi).
 *
 * What is escaped: control characters (C0 U+0000-U+001F, DEL U+007F, C1 U+0080-U+009F), format
 * characters (Unicode category Cf: zero-width space/joiners, bidi embeddings, overrides and
 * isolates, the BOM, soft hyphen...), the line and paragraph separators U+2028/U+2029, lone
 * surrogates, and the backslash itself, so that an escape in the output always means an escaped
 * character and never literal text. The form is bash's `$'...'` quoting: `\x1b` below U+0080,
 * `\u200b` in the BMP, `\U000e0001` above it, `\\` for a backslash. A value printed escaped can
 * therefore be typed back as `$'...'` (`torus ctl volume delete $'db\u200b'`).
 * @module
 */

/** Characters that are never printed raw. `u` makes `\p{...}` and surrogates code points. */
const UNSAFE_CHARACTERS = /[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029\\]/gu;

/** The same set without the backslash: what a valid stored identifier must not contain. */
const INVISIBLE_OR_CONTROL = /[\p{Cc}\p{Cf}\p{Cs}\u2028\u2029]/u;

function hex(value: number, digits: number): string {
  return value.toString(16).padStart(digits, "0");
}

function escapeCharacter(character: string): string {
  if (character === "\\") return "\\\\";
  const code = character.codePointAt(0)!;
  if (code < 0x80) return `\\x${hex(code, 2)}`;
  if (code <= 0xffff) return `\\u${hex(code, 4)}`;
  return `\\U${hex(code, 8)}`;
}

/**
 * `text` with every control, format and separator character (and `\`) replaced by a visible
 * escape; safe to write to a terminal.
 * @example
 * ```ts
 * import { escapeText } from "./text.ts";
 * escapeText("db\u200b"); // "db\\u200b"
 * escapeText("\x1b[2J"); // "\\x1b[2J"
 * ```
 */
export function escapeText(text: string): string {
  return text.replace(UNSAFE_CHARACTERS, escapeCharacter);
}

/** Whether `text` holds a control, format, separator character or a lone surrogate. */
export function hasInvisibleOrControl(text: string): boolean {
  return INVISIBLE_OR_CONTROL.test(text);
}

/**
 * `text` quoted and cut to `maxChars` characters (with `…`), for naming untrusted input in an
 * error message. It is not escaped here: the edge that prints the message escapes it once
 * ({@link escapedErrorMessage}), so nothing is escaped twice.
 */
export function quoteForMessage(text: string, maxChars = 64): string {
  const characters = [...text];
  const cut = characters.length > maxChars ? characters.slice(0, maxChars).join("") + "…" : text;
  return `"${cut}"`;
}

/**
 * The message of any thrown value as one line that is safe on a terminal: escaped (a newline in
 * a quoted value shows as `\x0a`, it does not end the line).
 */
export function escapedErrorMessage(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return escapeText(text.trim());
}

/** Characters a JSON string may carry raw but a terminal must not see (JSON.stringify keeps them). */
const JSON_UNSAFE = /[\u007f-\u009f\p{Cf}\u2028\u2029]/gu;

/**
 * `json` (the output of JSON.stringify) with DEL, C1, format and separator characters written as
 * `\uXXXX` escapes. The parsed value is unchanged; the text is safe on a terminal.
 */
export function escapeJsonText(json: string): string {
  return json.replace(JSON_UNSAFE, (character) => {
    let out = "";
    for (let i = 0; i < character.length; i++) out += `\\u${hex(character.charCodeAt(i), 4)}`;
    return out;
  });
}
