/**
 * Third-party NBD clients against a real `torus serve --nbd` (its FileBlockStore and volumes, not
 * the in-process MemoryDevices of tests/block/nbd_interop_test.ts): nbdinfo, nbdcopy, qemu-img,
 * qemu-io (odd ranges, write-zeroes, discard) and fio's nbd engine with several connections. What
 * they wrote is checked again after serve restarts, so the store, not a cache, is what is read.
 */

import assert from "node:assert/strict";
import { runCommand, runOk, sameBytes } from "../support/nbd_fixture.ts";
import { closeQuietly, E2eNode, e2eTest, fio, MiB, randomFile, readAll } from "./e2e_support.ts";

interface NbdInfoExport {
  "export-name": string;
  "export-size": number;
  is_read_only: boolean;
  can_multi_conn: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
}

e2eTest(
  "nbdinfo reports sizes and lists every volume and snapshot (snapshots read-only)",
  { tools: ["nbdinfo", "qemu-io"] },
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("a", "24MiB");
    await node.createVolume("b", "5MiB");
    await node.ctl("block", "snapshot", "create", "a@s1");
    const info = JSON.parse(await runOk("nbdinfo", ["--json", node.uri("a")]));
    const a = info.exports[0] as NbdInfoExport;
    assert.equal(a["export-size"], 24 * MiB);
    assert.equal(a.is_read_only, false);
    assert.equal(a.can_multi_conn, true);
    assert.equal(a.can_flush && a.can_fua && a.can_trim && a.can_zero, true);
    assert.equal(a.block_size_minimum, 1);
    assert.equal(a.block_size_preferred, 4096);

    const listed = JSON.parse(await runOk("nbdinfo", ["--list", "--json", node.uri("")]));
    const byName = new Map<string, NbdInfoExport>(
      (listed.exports as NbdInfoExport[]).map((e) => [e["export-name"], e]),
    );
    assert.deepEqual([...byName.keys()].sort(), ["a", "a@s1", "b"]);
    assert.equal(byName.get("b")!["export-size"], 5 * MiB);
    assert.equal(byName.get("a@s1")!["export-size"], 24 * MiB);
    assert.equal(byName.get("a@s1")!.is_read_only, true);
    assert.equal(byName.get("a")!.is_read_only, false);

    // A write to the snapshot is refused by the server, not only by the client's flags.
    const write = await runCommand("qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 1 0 4096",
      node.uri("a@s1"),
    ]);
    assert.notEqual(write.code, 0);
    assert.match(write.stderr, /Permission denied/);
    const unknown = await runCommand("nbdinfo", [node.uri("nope")]);
    assert.notEqual(unknown.code, 0);
  },
);

e2eTest(
  "nbdcopy 256 MiB of random data in and out, byte-exact, also after a restart",
  { tools: ["nbdcopy"] },
  async () => {
    const size = 256 * MiB;
    await using node = await E2eNode.start({ size: "1GiB" });
    await node.createVolume("big", "256MiB");
    const input = `${node.dir}/in.bin`;
    await randomFile(input, size);
    await runOk("nbdcopy", ["--flush", input, node.uri("big")]);
    await runOk("nbdcopy", [node.uri("big"), `${node.dir}/out.bin`]);
    assert.ok(
      await sameFiles(input, `${node.dir}/out.bin`),
      "what nbdcopy read back is what it wrote",
    );
    // nbdcopy --flush made it durable: SIGKILL and read it again from the store.
    await node.restart("SIGKILL");
    await runOk("nbdcopy", [node.uri("big"), `${node.dir}/again.bin`]);
    assert.ok(await sameFiles(input, `${node.dir}/again.bin`), "the same after SIGKILL");
  },
);

e2eTest("qemu-img convert into a volume, compare, and a compare that fails", {
  tools: ["qemu-img"],
}, async () => {
  await using node = await E2eNode.start();
  await node.createVolume("img", "32MiB");
  const image = `${node.dir}/image.raw`;
  await randomFile(image, 32 * MiB);
  const compare = () =>
    runCommand("qemu-img", ["compare", "-f", "raw", "-F", "raw", image, node.uri("img")]);
  await runOk("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", image, node.uri("img")]);
  const same = await compare();
  assert.equal(same.code, 0, same.stdout + same.stderr);
  await node.restart("SIGTERM");
  const afterRestart = await compare();
  assert.equal(afterRestart.code, 0, afterRestart.stdout + afterRestart.stderr);
  // compare can fail: one byte changed through another client.
  const client = await node.connect("img");
  try {
    const byte = new Uint8Array(1);
    await client.readAt(17 * MiB + 3, byte);
    byte[0] = byte[0]! ^ 0xff;
    await client.writeAt(17 * MiB + 3, byte);
    await client.flush();
  } finally {
    await closeQuietly(client);
  }
  const differs = await compare();
  assert.equal(differs.code, 1, differs.stdout + differs.stderr);
  assert.match(differs.stdout, /Content mismatch at offset 17825792/);
});

/** A qemu-io operation and how the model applies it. */
type IoOp =
  | { kind: "write"; offset: number; length: number; pattern: number }
  | { kind: "zero" | "discard"; offset: number; length: number };

const ioOps: IoOp[] = [
  { kind: "write", offset: 1, length: 4095, pattern: 0xab },
  { kind: "write", offset: 4097, length: 1, pattern: 0x11 },
  { kind: "write", offset: MiB - 3, length: 7, pattern: 0xcd },
  { kind: "write", offset: 3 * MiB + 511, length: 70_001, pattern: 0x5e },
  { kind: "write", offset: 5 * MiB, length: 2 * MiB + 5, pattern: 0x3c },
  { kind: "write", offset: 16 * MiB - 1, length: 1, pattern: 0x77 },
  // write_zeroes and discard of partial and whole 512 KiB blocks over written data.
  { kind: "zero", offset: 3 * MiB + 600, length: 1000 },
  { kind: "zero", offset: 5 * MiB + 4096, length: MiB },
  { kind: "discard", offset: 4096 + 100, length: 3 },
  { kind: "discard", offset: 6 * MiB + 4096, length: MiB - 8192 + 1 },
  { kind: "write", offset: 5 * MiB + 8192, length: 12_345, pattern: 0x99 },
];

function qemuIoCommand(op: IoOp): string {
  switch (op.kind) {
    case "write":
      return `write -P ${op.pattern} ${op.offset} ${op.length}`;
    case "zero":
      return `write -z ${op.offset} ${op.length}`;
    case "discard":
      return `discard ${op.offset} ${op.length}`;
  }
}

e2eTest(
  "qemu-io writes at odd offsets and lengths, write_zeroes and discard, read back after a restart",
  { tools: ["qemu-io"] },
  async () => {
    const size = 16 * MiB;
    await using node = await E2eNode.start();
    await node.createVolume("odd", "16MiB");
    const model = new Uint8Array(size);
    for (const op of ioOps) {
      model.fill(op.kind === "write" ? op.pattern : 0, op.offset, op.offset + op.length);
    }
    const commands = ioOps.flatMap((op) => ["-c", qemuIoCommand(op)]);
    const out = await runOk("qemu-io", ["-f", "raw", ...commands, "-c", "flush", node.uri("odd")]);
    assert.doesNotMatch(out, /fail|error/i, out);
    // qemu-io reads the zeroed and discarded ranges back as zeros, and a written byte next to them.
    const checks = ["-c", `read -P 0 ${3 * MiB + 600} 1000`, "-c", `read -P 0 ${4096 + 100} 3`];
    checks.push("-c", `read -P 0x5e ${3 * MiB + 599} 1`, "-c", `read -P 0x3c ${7 * MiB} 5`);
    const read = await runOk("qemu-io", ["-f", "raw", "-r", ...checks, node.uri("odd")]);
    assert.doesNotMatch(read, /fail|error|pattern verification/i, read);

    await node.restart("SIGKILL");
    const client = await node.connect("odd");
    try {
      const back = await readAll(client);
      assert.ok(sameBytes(back, model), "the volume after SIGKILL equals the model of every op");
    } finally {
      await closeQuietly(client);
    }
  },
);

e2eTest(
  "fio's nbd engine: crc32c-verified random writes on several connections, verified again " +
    "after SIGKILL",
  { tools: ["fio"] },
  async () => {
    await using node = await E2eNode.start();
    await node.createVolume("fio", "48MiB");
    // Three jobs = three connections, each on its own 16 MiB region, mixing sizes.
    const job = () => [
      "--ioengine=nbd",
      `--uri=${node.uri("fio")}`,
      "--name=e2e",
      "--rw=randwrite",
      "--bssplit=4k/60:512/10:64k/20:1m/10",
      "--iodepth=16",
      "--numjobs=3",
      "--size=16M",
      "--offset_increment=16M",
      "--verify=crc32c",
      "--verify_fatal=1",
      "--verify_state_save=0",
      "--end_fsync=1",
      "--randrepeat=1",
      "--group_reporting",
      "--output-format=json",
    ];
    await node.keepOnFailure(async () => {
      const written = await fio([...job(), "--do_verify=1"]);
      assert.ok(written.read.io_bytes > 0, "fio verified by reading back");
      assert.ok(written.write.io_bytes >= 48 * MiB, "fio wrote every region");
      // end_fsync made every job's writes durable: the same job verifies them after a SIGKILL.
      await node.restart("SIGKILL");
      const verified = await fio([...job(), "--verify_only"]);
      assert.ok(verified.read.io_bytes >= 48 * MiB, `fio re-read ${verified.read.io_bytes} bytes`);
      assert.doesNotMatch(node.output(), / E \| /, "serve logged no error");
    });
  },
);

/** Whether two files hold the same bytes (compared a few MiB at a time). */
async function sameFiles(a: string, b: string): Promise<boolean> {
  using fa = await Deno.open(a);
  using fb = await Deno.open(b);
  if ((await fa.stat()).size !== (await fb.stat()).size) return false;
  const x = new Uint8Array(4 * MiB);
  const y = new Uint8Array(4 * MiB);
  for (;;) {
    const n = await readFull(fa, x);
    const m = await readFull(fb, y);
    if (n !== m) return false;
    if (n === 0) return true;
    if (!sameBytes(x.subarray(0, n), y.subarray(0, m))) return false;
  }
}

async function readFull(file: Deno.FsFile, into: Uint8Array): Promise<number> {
  let filled = 0;
  while (filled < into.length) {
    const n = await file.read(into.subarray(filled));
    if (n === null) break;
    filled += n;
  }
  return filled;
}
