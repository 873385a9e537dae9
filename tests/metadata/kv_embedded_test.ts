/**
 * The KvStore contract against the embedded SQLite store, each test on its own file in a temp
 * dir that the fixture removes. Compaction is the change log's trim; there is no server to
 * restart (the store is a file that every process opens itself).
 * @module
 */

import { openEmbeddedKv } from "../../src/metadata/mod.ts";
import { kvStoreContract } from "../../src/metadata/kv_contract.ts";

kvStoreContract("embedded", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-kv-" });
  const kv = await openEmbeddedKv({ path: `${dir}/metadata/kv.sqlite` });
  return {
    kv,
    cleanup: () => Deno.remove(dir, { recursive: true }),
    compact: async () => void (await kv.compact()),
  };
}, { leaseTtlMs: 1_000, expirySlackMs: 1_000 });
