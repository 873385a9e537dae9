/** The metadata-service contract on the in-memory KvStore (fast unit runs of the same suite). */

import { MemoryKvStore } from "./kv_memory.ts";
import { metadataServiceContract } from "./metadata_contract.ts";

metadataServiceContract("memory", () => {
  const store = new MemoryKvStore();
  return Promise.resolve({
    open: () => Promise.resolve(store.connection()),
    close: () => store.close(),
  });
}, { leaseTtlMs: 200, expiryTimeoutMs: 2_000 });
