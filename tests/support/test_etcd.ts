/**
 * The etcd endpoint a test should use: the run's shared server (TORUS_TEST_ETCD, started by
 * `npm test`) or, when a test file runs on its own, a private server started for it. Tests use
 * unique key prefixes, so sharing one server is safe.
 * @module
 */

import { EtcdProcess } from "./etcd.ts";
import { hasCommand } from "./packages.ts";

/** An endpoint to test against and how to release it. */
export interface TestEtcd extends AsyncDisposable {
  /** `127.0.0.1:PORT`. */
  readonly endpoint: string;
}

/** Whether a test can get an etcd at all (shared endpoint set, or the binary installed). */
export function etcdAvailable(): boolean {
  return Boolean(Deno.env.get("TORUS_TEST_ETCD")) || hasCommand("etcd");
}

/**
 * The shared etcd when TORUS_TEST_ETCD is set (disposing it does nothing), else a private one in
 * a temp dir that disposing stops and removes. Throws when neither is possible; check
 * {@link etcdAvailable} first to skip instead.
 */
export async function testEtcd(): Promise<TestEtcd> {
  const shared = Deno.env.get("TORUS_TEST_ETCD");
  if (shared) return { endpoint: shared, [Symbol.asyncDispose]: () => Promise.resolve() };
  if (!hasCommand("etcd")) throw new Error("etcd is not installed (apt-get install etcd-server)");
  return await EtcdProcess.start();
}
