/**
 * A smoke run of the rebalance benchmark at its smallest: the references (raw TCP, the storage's
 * writes and reads), a rebuild after a node loss held against them, and the latency runs on
 * 16 MiB volumes, each table printed with its rows.
 */

import assert from "node:assert/strict";
import { hasCommand } from "../tests/support/packages.ts";
import { etcdAvailable } from "../tests/support/test_etcd.ts";

const root = new URL("../", import.meta.url).pathname;
const tools = [
  ...(hasCommand("fio") ? [] : ["fio"]),
  ...(etcdAvailable() ? [] : ["etcd"]),
];

Deno.test({
  name:
    `bench_rebuild: --quick on a 16 MiB volume prints the references, the rebuild and the latencies${
      tools.length > 0 ? ` (skipped: no ${tools.join(", ")})` : ""
    }`,
  ignore: tools.length > 0,
  async fn() {
    const output = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${root}scripts/bench_rebuild.ts`,
        "--quick",
        "--volume-mib",
        "16",
        "--runtime",
        "1",
      ],
      env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout);
    assert.equal(output.code, 0, `${text}\n${new TextDecoder().decode(output.stderr)}`);
    const tcp = /^\| raw TCP, loopback +\| +(\d+) \|/m.exec(text);
    assert.ok(tcp && Number(tcp[1]) > 0, `no raw TCP row:\n${text}`);
    for (
      const label of ["storage write, fdatasync every \\d+ blocks", "storage read, page cache"]
    ) {
      const row = new RegExp(`^\\| ${label} +\\| +(\\d+)`, "m").exec(text);
      assert.ok(row && Number(row[1]) > 0, `no ${label} row:\n${text}`);
    }
    // Measured, or why not (no fincore, or the file stayed cached).
    assert.match(text, /^\| storage read, dropped from the cache +\| +(\d+|not measured: )/m);
    assert.match(text, /^\| the bound: the smallest \(.+\) +\| +\d+ \| +\d+ \| +[\d.]+x \|/m);
    const rebuild = /^\| 16 MiB volume +\| +([\d.]+) \| +([\d.]+) \| +([\d.]+) \|/m.exec(text);
    assert.ok(rebuild, `no rebuild row:\n${text}`);
    assert.ok(Number(rebuild[1]) > 0, `nothing moved: ${rebuild[0]}`);
    for (const rate of ["100MiB", "0"]) {
      for (
        const label of [
          `quiet \\(3 nodes, --rebalance-rate ${rate}\\)`,
          `4th node joins, --rebalance-rate ${rate}`,
        ]
      ) {
        const row = new RegExp(`^\\| ${label} +\\|[^|]*\\|[^|]*\\| +(\\d+) \\|`, "m").exec(text);
        assert.ok(row, `no latency row ${label}:\n${text}`);
      }
    }
  },
});
