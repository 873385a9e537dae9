/**
 * Third-party NBD clients against our server (in this process, over MemoryDevices): nbdinfo,
 * nbdcopy, qemu-img, qemu-io and fio's nbd engine. `npm test` installs them
 * (tests/support/packages.ts); without them these tests are skipped and say so in their names.
 */

import assert from "node:assert/strict";
import { type MemoryDevice } from "../../src/block/mod.ts";
import { patternBytes } from "../../src/block/device_contract.ts";
import { toolTest } from "../support/packages.ts";
import { NbdFixture, randomFile, runCommand, runOk, sameBytes } from "../support/nbd_fixture.ts";

const MiB = 1024 * 1024;

/** Asserts the file holds exactly what the device holds. */
async function assertFileEqualsDevice(path: string, device: MemoryDevice): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    assert.equal((await file.stat()).size, device.sizeBytes);
    const fromFile = new Uint8Array(4 * MiB);
    const fromDevice = new Uint8Array(4 * MiB);
    for (let at = 0; at < device.sizeBytes; at += fromFile.length) {
      let filled = 0;
      while (filled < fromFile.length) {
        const n = await file.read(fromFile.subarray(filled));
        if (n === null) break;
        filled += n;
      }
      await device.readAt(at, fromDevice);
      if (!sameBytes(fromFile, fromDevice)) assert.fail(`file and device differ at ${at}`);
    }
  } finally {
    file.close();
  }
}

toolTest(
  "nbd interop: nbdinfo --json reports size, block sizes and flags",
  ["nbdinfo"],
  async () => {
    await using nbd = await NbdFixture.start({ exports: { vol: 64 * MiB } });
    nbd.addExport("vol@snap", (nbd.device("vol") as MemoryDevice).snapshot());
    const info = JSON.parse(await runOk("nbdinfo", ["--json", nbd.uri("vol")]));
    const vol = info.exports[0];
    assert.equal(info.protocol, "newstyle-fixed");
    assert.equal(vol["export-size"], 64 * MiB);
    assert.equal(vol.block_size_minimum, 1);
    assert.equal(vol.block_size_preferred, 4096);
    assert.equal(vol.block_size_maximum, 32 * MiB);
    assert.equal(vol.can_multi_conn, true);
    assert.equal(vol.can_flush, true);
    assert.equal(vol.can_fua, true);
    assert.equal(vol.can_trim, true);
    assert.equal(vol.can_zero, true);
    assert.equal(vol.is_read_only, false);
    const snap = JSON.parse(await runOk("nbdinfo", ["--json", nbd.uri("vol@snap")])).exports[0];
    assert.equal(snap.is_read_only, true);
  },
);

toolTest("nbd interop: nbdinfo --list names every export", ["nbdinfo"], async () => {
  await using nbd = await NbdFixture.start({ exports: { a: MiB, b: 2 * MiB }, unixSocket: true });
  const listed = JSON.parse(await runOk("nbdinfo", ["--list", "--json", nbd.uri("")]));
  const names = listed.exports.map((e: { "export-name": string }) => e["export-name"]).sort();
  assert.deepEqual(names, ["a", "b"]);
  const sizes = listed.exports.map((e: { "export-size": number }) => e["export-size"]).sort();
  assert.deepEqual(sizes, [MiB, 2 * MiB]);
  // The same over the Unix socket.
  const unix = `nbd+unix:///b?socket=${nbd.unixPath}`;
  assert.equal(
    JSON.parse(await runOk("nbdinfo", ["--json", unix])).exports[0]["export-size"],
    2 * MiB,
  );
});

toolTest(
  "nbd interop: nbdinfo on an unknown export gets the server's message",
  ["nbdinfo"],
  async () => {
    await using nbd = await NbdFixture.start({ exports: { vol: MiB } });
    // libnbd prints the server's message only in its debug trace.
    const result = await runCommand("nbdinfo", [nbd.uri("missing")], {
      env: { LIBNBD_DEBUG: "1" },
    });
    assert.notEqual(result.code, 0);
    assert.match(result.stderr, /server replied with error to opt_go/);
    assert.match(result.stderr, /server error message: no export named "missing"/);
  },
);

toolTest(
  "nbd interop: nbdcopy 256 MiB of random data in and out, byte-exact",
  ["nbdcopy"],
  async () => {
    const size = 256 * MiB;
    await using nbd = await NbdFixture.start({ exports: { vol: size } });
    const input = `${nbd.tempDir}/in.bin`;
    const output = `${nbd.tempDir}/out.bin`;
    await randomFile(input, size);
    await runOk("nbdcopy", ["--flush", input, nbd.uri("vol")]);
    await assertFileEqualsDevice(input, nbd.device("vol") as MemoryDevice);
    await runOk("nbdcopy", [nbd.uri("vol"), output]);
    await assertFileEqualsDevice(output, nbd.device("vol") as MemoryDevice);
    assert.ok(nbd.server.stats.connectionsAccepted >= 2);
  },
);

toolTest("nbd interop: qemu-img convert and compare", ["qemu-img"], async () => {
  const size = 32 * MiB;
  await using nbd = await NbdFixture.start({ exports: { vol: size } });
  const image = `${nbd.tempDir}/image.raw`;
  await randomFile(image, size);
  await runOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, nbd.uri("vol")]);
  await runOk("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, nbd.uri("vol")]);
  await assertFileEqualsDevice(image, nbd.device("vol") as MemoryDevice);
  // compare can fail: change one byte behind qemu's back.
  await nbd.device("vol").writeAt(size - 7, new Uint8Array([0]).fill(1));
  await nbd.device("vol").writeAt(size - 6, new Uint8Array([2]));
  const differs = await runCommand("qemu-img", [
    "compare",
    "-f",
    "raw",
    "-F",
    "raw",
    image,
    nbd.uri("vol"),
  ]);
  assert.equal(differs.code, 1, differs.stdout + differs.stderr);
});

toolTest(
  "nbd interop: qemu-io reads and writes at odd offsets and lengths",
  ["qemu-io"],
  async () => {
    await using nbd = await NbdFixture.start({ exports: { vol: 8 * MiB } });
    const ops: [number, number, number][] = [
      [1, 4095, 0xab],
      [4097, 1, 0x11],
      [MiB - 3, 7, 0xcd],
      [3 * MiB + 511, 70_001, 0x5e],
      [8 * MiB - 1, 1, 0x77],
    ];
    const commands = ops.flatMap(([offset, length, pattern]) => [
      "-c",
      `write -P ${pattern} ${offset} ${length}`,
      "-c",
      `read -P ${pattern} ${offset} ${length}`,
    ]);
    const out = await runOk("qemu-io", ["-f", "raw", ...commands, "-c", "flush", nbd.uri("vol")]);
    assert.doesNotMatch(out, /fail|error/i, out);
    const device = nbd.device("vol");
    for (const [offset, length, pattern] of ops) {
      const back = new Uint8Array(length + 2);
      const start = Math.max(0, offset - 1);
      await device.readAt(start, back.subarray(0, Math.min(length + 2, device.sizeBytes - start)));
      const inner = back.subarray(offset - start, offset - start + length);
      assert.ok(inner.every((b) => b === pattern), `pattern at ${offset}+${length}`);
    }
    const untouched = new Uint8Array(1);
    await device.readAt(0, untouched);
    assert.equal(untouched[0], 0, "byte 0 was not written");
    // qemu-io reads what something else wrote, at an odd offset.
    await device.writeAt(5 * MiB + 3, patternBytes(1000, 1).fill(0x42));
    await runOk("qemu-io", [
      "-f",
      "raw",
      "-r",
      "-c",
      `read -P 0x42 ${5 * MiB + 3} 1000`,
      nbd.uri("vol"),
    ]);
  },
);

toolTest("nbd interop: fio's nbd engine with verify=crc32c", ["fio"], async () => {
  await using nbd = await NbdFixture.start({ exports: { vol: 64 * MiB } });
  const common = [
    "--ioengine=nbd",
    `--uri=${nbd.uri("vol")}`,
    "--size=64M",
    "--verify=crc32c",
    "--do_verify=1",
    "--verify_fatal=1",
    "--verify_state_save=0",
    "--output-format=json",
  ];
  const jobs = [
    ["--name=rand4k", "--rw=randwrite", "--bs=4k", "--iodepth=32"],
    ["--name=mixed", "--rw=randwrite", "--bssplit=512/20:4k/40:64k/30:1m/10", "--iodepth=8"],
    ["--name=seq1m", "--rw=write", "--bs=1m", "--iodepth=8"],
  ];
  for (const job of jobs) {
    const name = job[0]!;
    const result = await runCommand("fio", [...common, ...job]);
    assert.equal(result.code, 0, `${name}: ${result.stdout}\n${result.stderr}`);
    const report = JSON.parse(result.stdout.slice(result.stdout.indexOf("{")));
    assert.equal(report.jobs[0].error, 0, name);
    assert.ok(report.jobs[0].read.io_bytes > 0, `${name} verified by reading back`);
  }
  assert.equal(nbd.server.stats.errorReplies, 0);
});
