/**
 * `torus ctl config` run by several real processes at once on one config file: every profile
 * lands (no writer loses another's update), the file stays 0600 and whole, and no temporary
 * file is left behind.
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;

Deno.test("eight ctl config at once on one file: every profile is saved", async () => {
  const home = await Deno.makeTempDir({ prefix: "torus-config-" });
  const path = `${home}/conf/config.json`;
  try {
    const outputs = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        new Deno.Command(Deno.execPath(), {
          args: [
            "run",
            "-A",
            `${root}main.ts`,
            "ctl",
            "config",
            "--config",
            path,
            "--profile",
            `p${i}`,
            "-C",
            `etcd-${i}:2379`,
          ],
          env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
        }).output()),
    );
    for (const output of outputs) {
      assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    }
    const config = JSON.parse(await Deno.readTextFile(path));
    assert.deepEqual(
      Object.keys(config.etcd_config).sort(),
      ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"],
    );
    for (let i = 0; i < 8; i++) assert.equal(config.etcd_config[`p${i}`].etcd, `etcd-${i}:2379`);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal((await Deno.stat(`${home}/conf`)).mode! & 0o777, 0o700);
    const names = [...Deno.readDirSync(`${home}/conf`)].map((entry) => entry.name).sort();
    assert.deepEqual(names, ["config.json", "config.json.lock"]);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
