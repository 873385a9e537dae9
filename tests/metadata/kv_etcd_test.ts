/**
 * The KvStore contract against a real etcd (the run's shared server, or a private one). Skipped,
 * with the reason in each test name, only when etcd is not installed.
 * @module
 */

import { openEtcdKv } from "../../src/metadata/mod.ts";
import { kvStoreContract } from "../../src/metadata/kv_contract.ts";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";

kvStoreContract(
  "etcd",
  async () => {
    const etcd = await testEtcd();
    const kv = await openEtcdKv({ endpoints: [etcd.endpoint] });
    return { kv, cleanup: async () => await etcd[Symbol.asyncDispose]() };
  },
  {
    // etcd raises TTLs below its minimum (1.5 s with default election settings) to 2 s, and
    // finds expired leases on a 500 ms tick.
    leaseTtlMs: 2_000,
    expirySlackMs: 2_500,
    ...(etcdAvailable() ? {} : { ignoreReason: "etcd is not installed" }),
  },
);
