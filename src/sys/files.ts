/**
 * Reading a whole small file through Deno with a cap ({@link readAllBounded}): for files whose
 * size is not ours to trust (config files, PEM files, identity files), so a path naming
 * `/dev/zero`, a huge file or an endless pipe fails with one line instead of filling the memory.
 * @module
 */

import { readAllBounded } from "../core/mod.ts";

/**
 * The bytes of the file at `path`, at most `maxBytes` (`invalid` naming `what` beyond that).
 * Opening errors are Deno's (`Deno.errors.NotFound`, ...), for the caller to word.
 */
export async function readFileBounded(
  path: string,
  maxBytes: number,
  what: string,
): Promise<Uint8Array> {
  using file = await Deno.open(path, { read: true });
  return await readAllBounded(file, maxBytes, what);
}
