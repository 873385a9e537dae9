/**
 * The one rule for volume and snapshot names, defined here and used by every command and by the
 * metadata service.
 *
 * A new name is 1 to NAME_LENGTH_MAX (255) characters of ASCII letters, digits, `.`, `_` and `-`,
 * and starts with a letter or digit. ASCII only, because names are typed, compared and shown by
 * people: no two different names can look alike (no zero-width, bidi or control characters, no
 * homoglyphs from other scripts, no Unicode normalisation forms), and the length is the same in
 * characters and in bytes. The set also keeps names usable everywhere they appear: as a metadata
 * key segment (no `/`), as `VOLUME@SNAPSHOT` (no `@`), as an NBD export in a URI
 * `nbd://host:port/EXPORT` (only unreserved URI characters, and never `.` or `..`), and as a
 * command-line argument (no leading `-`, no whitespace).
 *
 * Names stored by older builds may break the rule. They are still listed (escaped) and can be
 * looked up and deleted: lookups only need a usable key segment ({@link checkNameLookup}).
 * @module
 */

import { invalid } from "./errors.ts";
import { NAME_LENGTH_MAX, NAME_LOOKUP_MAX_BYTES } from "./limits.ts";
import { quoteForMessage } from "./text.ts";

/** What a name belongs to, for messages. */
export type NameKind = "volume" | "snapshot";

/** The rule in words, for help texts and error messages. */
export const NAME_RULE_TEXT = `1 to ${NAME_LENGTH_MAX} characters from A-Z a-z 0-9 . _ -, ` +
  "starting with a letter or digit";

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

const encoder = new TextEncoder();

/** Whether `name` may be given to a new volume or snapshot. */
export function isValidName(name: string): boolean {
  return name.length <= NAME_LENGTH_MAX && NAME_PATTERN.test(name);
}

/** Checks the name of a new volume or snapshot; `invalid` saying the rule otherwise. */
export function checkName(name: string, kind: NameKind): string {
  if (!isValidName(name)) {
    throw invalid(`invalid ${kind} name ${quoteForMessage(name)}: a name is ${NAME_RULE_TEXT}`);
  }
  return name;
}

/**
 * Checks a name that is looked up rather than created: any non-empty key segment without `/` of
 * at most NAME_LOOKUP_MAX_BYTES, so volumes named by older builds stay reachable.
 */
export function checkNameLookup(name: string, kind: NameKind): string {
  const bytes = encoder.encode(name).length;
  if (bytes === 0 || bytes > NAME_LOOKUP_MAX_BYTES || name.includes("/")) {
    throw invalid(
      `no ${kind} can be named ${quoteForMessage(name)}: names are 1 to ` +
        `${NAME_LOOKUP_MAX_BYTES} bytes without "/"`,
    );
  }
  return name;
}
