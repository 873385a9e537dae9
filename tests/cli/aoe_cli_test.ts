/**
 * `torus aoe` as a process, where it refuses to start: usage errors (exit 2: the error on one
 * line, then where to find the usage) and a volume or interface that is not there (exit 1, one
 * line naming it). No root needed, except for a missing volume: the interface is checked first
 * (a veth pair of the test's own, through netns.ts).
 */

import assert from "node:assert/strict";
import { runTorus } from "../support/torus_process.ts";
import { netnsTest } from "../support/netns.ts";

const usageHint = "Run 'torus aoe --help' for usage.";

/** A temp data dir (not created: the commands must fail before they make anything). */
async function withDataDir(fn: (dataDir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-aoe-cli-" });
  try {
    await fn(`${dir}/data`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Fails unless `torus ARGS` exits 2 with exactly `error` and the usage hint on stderr. */
async function assertUsageError(args: string[], error: string): Promise<void> {
  const output = await runTorus(args);
  const what = `torus ${args.join(" ")}`;
  assert.equal(output.code, 2, `${what}: exit code (stderr: ${output.stderr})`);
  assert.equal(output.stderr, `torus aoe: ${error}\n${usageHint}\n`, `${what}: stderr`);
  assert.equal(output.stdout, "", `${what}: nothing on stdout`);
}

Deno.test("aoe process: missing or extra arguments are usage errors, exit 2", async () => {
  const give = "give VOLUME INTERFACE MAJOR MINOR (for example: torus aoe vol1 eth0 1 2)";
  await Promise.all([
    assertUsageError(["aoe"], give),
    assertUsageError(["aoe", "vol", "eth0", "1"], give),
    assertUsageError(["aoe", "vol", "eth0", "1", "2", "3"], 'unexpected argument "3"'),
  ]);
});

Deno.test("aoe process: a shelf or slot out of range is a usage error naming it, exit 2", async () => {
  await Promise.all([
    assertUsageError(
      ["aoe", "vol", "eth0", "65535", "2"],
      'MAJOR "65535" is not a number from 0 to 65534 (65535 is the broadcast address)',
    ),
    assertUsageError(
      ["aoe", "vol", "eth0", "1", "255"],
      'MINOR "255" is not a number from 0 to 254 (255 is the broadcast address)',
    ),
    assertUsageError(
      ["aoe", "vol", "eth0", "x", "2"],
      'MAJOR "x" is not a number from 0 to 65534 (65535 is the broadcast address)',
    ),
  ]);
});

Deno.test("aoe process: a name that cannot be an interface is a usage error, exit 2", async () => {
  await Promise.all(["bad/name", "a:b", "sixteen-chars-xx"].map((name) =>
    assertUsageError(
      ["aoe", "vol", name, "1", "2"],
      `interface "${name}" is not an interface name (1 to 15 characters)`,
    )
  ));
});

Deno.test("aoe process: --flush with a bad device is a usage error, exit 2", async () => {
  await assertUsageError(
    ["aoe", "--flush", "bad"],
    '--flush "bad": give a device as eMAJOR.MINOR (e1.2), or all',
  );
  await assertUsageError(
    ["aoe", "--flush", "e1.2", "vol"],
    '--flush takes no other argument ("vol")',
  );
});

Deno.test("aoe process: a cluster client's flag without -C is a usage error, exit 2", async () => {
  await withDataDir(async (dataDir) => {
    const flags = [["--read-level", "all"], ["--min-copies", "2"]] as const;
    await Promise.all(flags.map(([flag, value]) =>
      assertUsageError(
        ["aoe", "vol", "eth0", "1", "2", "--data-dir", dataDir, flag, value],
        `${flag} is a cluster client's flag: it needs -C`,
      )
    ));
    await assert.rejects(Deno.stat(dataDir), Deno.errors.NotFound, "the data dir was not made");
  });
});

Deno.test("aoe process: a single node's flag with -C is a usage error, exit 2", async () => {
  // Refused before etcd is contacted: nothing listens on port 1.
  await assertUsageError(
    ["aoe", "vol", "eth0", "1", "2", "-C", "127.0.0.1:1", "--size", "9GiB"],
    "--size is a single node's flag: not with -C",
  );
});

await netnsTest(
  "aoe process: a volume that does not exist fails with not found, exit 1",
  async (lab) => {
    const pair = await lab.addVethPair();
    await withDataDir(async (dataDir) => {
      const init = await runTorus(["ctl", "init", "--data-dir", dataDir]);
      assert.equal(init.code, 0, init.stderr);
      const output = await runTorus([
        "aoe",
        "nosuch",
        pair.a.name,
        "1",
        "2",
        "--data-dir",
        dataDir,
      ]);
      assert.equal(output.code, 1, output.stderr);
      assert.equal(output.stderr, 'torus aoe: volume "nosuch" not found (not_exist)\n');
    });
  },
);

Deno.test("aoe process: an interface that is not Ethernet is refused before anything starts, exit 1", async () => {
  await withDataDir(async (dataDir) => {
    const output = await runTorus(["aoe", "vol", "lo", "1", "2", "--data-dir", dataDir]);
    assert.equal(output.code, 1, output.stderr);
    assert.equal(
      output.stderr,
      "torus aoe: interface lo is not Ethernet (hardware type 772) (not_supported)\n",
    );
    await assert.rejects(Deno.stat(dataDir), Deno.errors.NotFound, "nothing was created");
  });
});

Deno.test("aoe process: an interface that does not exist fails naming it, exit 1", async () => {
  await withDataDir(async (dataDir) => {
    for (const args of [["init"], ["volume", "create-block", "vol", "4MiB"]]) {
      const ctl = await runTorus(["ctl", ...args, "--data-dir", dataDir]);
      assert.equal(ctl.code, 0, ctl.stderr);
    }
    const output = await runTorus(["aoe", "vol", "nosuchif0", "1", "2", "--data-dir", dataDir]);
    assert.equal(output.code, 1, output.stderr);
    // One line, before the volume is opened (nothing is logged) or the node starts.
    assert.equal(
      output.stderr,
      "torus aoe: no such interface nosuchif0: if_nametoindex(nosuchif0) failed: ENODEV No such " +
        "device (not_exist)\n",
    );
  });
});
