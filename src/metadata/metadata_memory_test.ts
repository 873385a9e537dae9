/** The metadata-service contract on the in-memory KvStore (fast unit runs of the same suite). */

import type { KvStore } from "./kv.ts";
import { MemoryKvStore } from "./kv_memory.ts";
import { metadataServiceContract } from "./metadata_contract.ts";

/** A connection to a shared store whose close() leaves the store open for the others. */
function connection(store: MemoryKvStore): KvStore {
  return {
    kind: store.kind,
    get: (key) => store.get(key),
    range: (prefix) => store.range(prefix),
    put: (key, value, options) => store.put(key, value, options),
    delete: (key) => store.delete(key),
    deletePrefix: (prefix) => store.deletePrefix(prefix),
    txn: (request) => store.txn(request),
    watchPrefix: (prefix, onEvents, options) => store.watchPrefix(prefix, onEvents, options),
    grantLease: (ttlMs) => store.grantLease(ttlMs),
    keepAliveLease: (lease) => store.keepAliveLease(lease),
    revokeLease: (lease) => store.revokeLease(lease),
    close: () => Promise.resolve(),
  };
}

metadataServiceContract("memory", () => {
  const store = new MemoryKvStore();
  return Promise.resolve({
    open: () => Promise.resolve(connection(store)),
    close: () => store.close(),
  });
}, { leaseTtlMs: 200, expiryTimeoutMs: 2_000 });
