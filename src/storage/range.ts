/**
 * Checks shared by every engine's range operations.
 * @module
 */

import { invalid } from "../core/mod.ts";

/** Throws `invalid` unless `[offsetBytes, offsetBytes + lengthBytes)` lies inside one block. */
export function checkBlockRange(
  blockSizeBytes: number,
  offsetBytes: number,
  lengthBytes: number,
): void {
  if (
    !Number.isSafeInteger(offsetBytes) || !Number.isSafeInteger(lengthBytes) ||
    offsetBytes < 0 || lengthBytes < 0 || offsetBytes + lengthBytes > blockSizeBytes
  ) {
    throw invalid(
      `range of ${lengthBytes} bytes at ${offsetBytes} does not fit a block of ` +
        `${blockSizeBytes} bytes`,
    );
  }
}
