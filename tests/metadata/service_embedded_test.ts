/**
 * The metadata-service contract on the embedded store: every connection opens the same SQLite
 * file, as separate processes on one machine do.
 */

import { openEmbeddedKv } from "../../src/metadata/mod.ts";
import { metadataServiceContract } from "../../src/metadata/metadata_contract.ts";

metadataServiceContract("embedded", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-mds-embedded-" });
  const path = `${dir}/metadata/kv.sqlite`;
  await Deno.mkdir(`${dir}/metadata`, { mode: 0o700 });
  return {
    open: () => openEmbeddedKv({ path }),
    close: () => Deno.remove(dir, { recursive: true }),
  };
}, { leaseTtlMs: 500, expiryTimeoutMs: 3_000 });
