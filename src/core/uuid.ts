/**
 * Node and client identities. One parser decides what a UUID is and gives its one spelling, and
 * every place where a UUID enters torus uses it: command-line flags and arguments, peer records
 * and ring members read from the metadata store, and the node identity file. Without it the same
 * node spelt in upper and lower case became two ring members, and addresses or arbitrary strings
 * were stored as member UUIDs.
 *
 * The accepted form is the textual UUID of RFC 9562: 32 hex digits in groups 8-4-4-4-12 separated
 * by `-`, in either case; the canonical form is lowercase. Any version and variant is accepted
 * (the original's nodes used time-based v1 UUIDs, ours are random v4); the nil UUID is not an
 * identity and is rejected.
 * @module
 */

import { invalid } from "./errors.ts";
import { quoteForMessage } from "./text.ts";

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const NIL_UUID = "00000000-0000-0000-0000-000000000000";

/** Length of a UUID in its textual form. */
export const UUID_TEXT_LENGTH = 36;

/** The canonical (lowercase) form of `text` if it is a UUID; null otherwise. */
export function normalizeUuid(text: string): string | null {
  if (!UUID_PATTERN.test(text)) return null;
  const canonical = text.toLowerCase();
  return canonical === NIL_UUID ? null : canonical;
}

/**
 * The canonical form of UUID `text`; `invalid` naming `what` (`peer UUID`, `ring member`)
 * otherwise. The message quotes the input escaped and shortened.
 */
export function parseUuid(text: string, what = "UUID"): string {
  const canonical = normalizeUuid(text);
  if (canonical === null) {
    throw invalid(
      `invalid ${what} ${quoteForMessage(text)}: expected a UUID ` +
        "(32 hex digits as 8-4-4-4-12, not all zero)",
    );
  }
  return canonical;
}
