/**
 * The KvStore contract against a real etcd (the run's shared server, or a private one). The tests
 * that compact history and restart etcd get a private server each. Skipped, with the reason in
 * each test name, only when etcd is not installed.
 * @module
 */

import { Etcd3 } from "etcd3";
import { openEtcdKv } from "../../src/metadata/mod.ts";
import { kvStoreContract } from "../../src/metadata/kv_contract.ts";
import { EtcdProcess } from "../support/etcd.ts";
import { hasCommand } from "../support/packages.ts";
import { testEtcd } from "../support/test_etcd.ts";

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
    ...(hasCommand("etcd") ? {} : { ignoreReason: "etcd is not installed" }),
    async openIsolated() {
      const etcd = await EtcdProcess.start();
      // Probing a quiet watch after 300 ms (10 s by default) asks etcd for progress reports
      // quickly, so the test need not wait for the default interval.
      const kv = await openEtcdKv({ endpoints: [etcd.endpoint], watchIdleProbeMs: 300 });
      return {
        kv,
        cleanup: () => etcd[Symbol.asyncDispose](),
        async compact() {
          const raw = new Etcd3({ hosts: [etcd.endpoint] });
          try {
            const head = await raw.get("torus-compaction-probe").exec();
            await raw.kv.compact({ revision: head.header.revision, physical: true });
          } finally {
            raw.close();
          }
        },
        async restart() {
          await etcd.kill();
          await etcd.restart();
        },
      };
    },
  },
);
