/** A smoke run of the cluster benchmark: three nodes, a client, qemu-nbd, one workload. */

import assert from "node:assert/strict";
import { hasCommand } from "../tests/support/packages.ts";

const root = new URL("../", import.meta.url).pathname;
const tools = ["fio", "qemu-nbd", "etcd"].filter((tool) => !hasCommand(tool));

Deno.test({
  name: `bench_cluster: --quick runs fio through nbdserve on 3 nodes and through qemu-nbd${
    tools.length > 0 ? ` (skipped: no ${tools.join(", ")})` : ""
  }`,
  ignore: tools.length > 0,
  async fn() {
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${root}scripts/bench_cluster.ts`, "--quick", "--filter", "QD32 fsync"],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, `${text}\n${new TextDecoder().decode(output.stderr)}`);
    const row = /^\| 4k randwrite QD32 fsync=32 +\| +(\d+)[^|]*\| +(\d+)[^|]*\| +([\d.]+)x/m.exec(
      text,
    );
    assert.ok(row, `no row for the cluster and qemu-nbd:\n${text}`);
    assert.ok(Number(row[1]) > 0 && Number(row[2]) > 0, row[0]);
    const where = text.slice(text.indexOf("Where the time goes"));
    const cost = /^\| 4k randwrite QD32 fsync=32 +\| +(\d+)[^|]*\| +(\d+)[^|]*\| +(\d+)/m.exec(
      where,
    );
    assert.ok(cost, `no CPU row for the client, the nodes and qemu-nbd:\n${text}`);
    assert.ok(cost.slice(1).every((us) => Number(us) > 0), `each spent CPU: ${cost[0]}`);
  },
});
