/** The shared KvStore contract against the in-memory store, so it agrees with etcd and embedded. */

import { kvStoreContract } from "./kv_contract.ts";
import { MemoryKvStore } from "./kv_memory.ts";

kvStoreContract("memory", () => {
  const kv = new MemoryKvStore();
  return Promise.resolve({
    kv,
    cleanup: () => Promise.resolve(),
    compact: () => Promise.resolve(kv.compact()),
  });
}, { leaseTtlMs: 300, expirySlackMs: 1_000 });
