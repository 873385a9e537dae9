/**
 * The Linux kernel's aoe driver as the initiator of `torus aoe`. This host's kernel has no aoe
 * module, so ../shared/tools/vm-blockdev.sh boots Debian's cloud kernel under qemu with its NIC on
 * a tap; here a namespace holds that tap and a bridge joining it to one end of a veth pair whose
 * other end, in the test's own namespace, is the interface `torus aoe` serves the volume on.
 *
 * The guest (tests/vm/aoe_guest.sh) writes random regions with O_DIRECT at several offsets and
 * reads them back, makes an ext2 (the guest has busybox's mke2fs, no mkfs.ext4), writes files,
 * syncs, remounts and compares their checksums. While it writes its first region the target is
 * stopped (SIGSTOP) for a while, so the driver retransmits; a capture on the tap (tshark) counts
 * the retransmissions and whether they kept their tags, and the target's /metrics its duplicates.
 * Afterwards `torus aoe` is stopped with SIGTERM and `torus serve` reads the volume through NBD:
 * every region has the guest's checksum, the filesystem is clean (e2fsck) and its files are the
 * guest's (debugfs).
 *
 * Skipped, saying why in its name, when the VM, network namespaces or e2fsprogs cannot be had.
 * @module
 */

import assert from "node:assert/strict";
import { hasCommand } from "../support/packages.ts";
import { ip, NetnsLab, netnsSkipReason } from "../support/netns.ts";
import { parseExposition, sampleValue } from "../support/prometheus_text.ts";
import { ctlOk, startServe, startTorusProcess } from "../support/torus_process.ts";
import { run, vmSkipReason, vmTools } from "./vm_support.ts";

const MiB = 1024 * 1024;
const SECTOR = 512;
const SHELF = 7;
const SLOT = 3;
/** The size of the filesystem the guest makes at the start of the volume (see the script). */
const FS_BYTES = 64 * MiB;
/** How long the target is stopped while the guest writes its first region. */
const STALL_MS = 2000;
/** The target is stopped once it has stored this much (the stall region is 8 MiB). */
const STALL_AFTER_BYTES = MiB;
/** vm-blockdev.sh's TIMEOUT for qemu, in seconds. */
const VM_TIMEOUT_S = 150;
const GUEST_SCRIPT = new URL("./aoe_guest.sh", import.meta.url).pathname;
/** Inside the lab's namespace, so fixed names cannot collide with another test's. */
const BRIDGE = "aoebr0";
const TAP = "aoetap0";
const decoder = new TextDecoder();

async function skipReason(): Promise<string | null> {
  if (vmSkipReason !== null) return vmSkipReason;
  const netns = await netnsSkipReason();
  if (netns !== null) return netns;
  for (const tool of ["e2fsck", "debugfs"]) {
    if (!hasCommand(tool)) return `${tool} (e2fsprogs) not installed`;
  }
  return null;
}

/** The lowercase hex SHA-256 of `bytes`. */
async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

/** `torus_aoe_NAME_total` of the target, from its /metrics. */
async function aoeCounters(metricsUrl: string): Promise<Record<string, number>> {
  const response = await fetch(metricsUrl);
  const families = parseExposition(await response.text());
  const counters: Record<string, number> = {};
  for (const [name, family] of families) {
    if (!name.startsWith("torus_aoe_")) continue;
    for (const series of family.samples.keys()) {
      counters[name.slice("torus_aoe_".length, -"_total".length)] = sampleValue(families, series);
    }
  }
  return counters;
}

/** The pids of `pid`'s descendants, from /proc. */
function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    let stat: string;
    try {
      stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    children.set(ppid, [...(children.get(ppid) ?? []), Number(entry.name)]);
  }
  const found: number[] = [];
  const visit = (parent: number) => {
    for (const child of children.get(parent) ?? []) {
      found.push(child);
      visit(child);
    }
  };
  visit(pid);
  return found;
}

/** vm-blockdev.sh (and its qemu) running. */
interface VmRun {
  readonly pid: number;
  /** Its exit status and console output (stdout and stderr). */
  readonly done: Promise<{ code: number; output: string }>;
}

function startVm(namespace: string): VmRun {
  assert.ok(vmTools !== null);
  // Emulation is a CPU hog: at low priority it slows the tests running beside it less.
  const child = new Deno.Command("nice", {
    args: [
      "-n",
      "10",
      "bash",
      `${vmTools}/vm-blockdev.sh`,
      "aoe",
      namespace,
      TAP,
      `${SHELF}.${SLOT}`,
    ],
    env: { GUEST_SCRIPT, TIMEOUT: String(VM_TIMEOUT_S) },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const done = child.output().then((output) => ({
    code: output.code,
    output: decoder.decode(output.stdout) + decoder.decode(output.stderr),
  }));
  return { pid: child.pid, done };
}

/** Kills a VM run's process tree (qemu, timeout, the script), by pid, and waits for it. */
async function killVm(vm: VmRun): Promise<void> {
  for (const pid of [...descendants(vm.pid).reverse(), vm.pid]) {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch {
      // exited meanwhile
    }
  }
  await vm.done;
}

/**
 * Stops the target (SIGSTOP) for {@link STALL_MS} once it has stored {@link STALL_AFTER_BYTES},
 * polling its counters until then or until `over` says the guest is done. Whether it did.
 */
async function stallTarget(pid: number, metricsUrl: string, over: () => boolean) {
  while (!over()) {
    const counters = await aoeCounters(metricsUrl);
    if ((counters.written_bytes ?? 0) >= STALL_AFTER_BYTES) {
      Deno.kill(pid, "SIGSTOP");
      try {
        await new Promise((resolve) => setTimeout(resolve, STALL_MS));
      } finally {
        Deno.kill(pid, "SIGCONT");
      }
      return { stalled: true, writtenBeforeStall: counters.written_bytes ?? 0 };
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { stalled: false, writtenBeforeStall: 0 };
}

/** One AoE frame of the capture. */
interface CapturedFrame {
  readonly time: number;
  readonly response: boolean;
  readonly tag: number;
  /** Whether it is an ATA frame (not a config one). */
  readonly ata: boolean;
  /** A request's ATA command (responses: as tshark links them to a request, else -1). */
  readonly ataCommand: number;
  readonly lba: number;
  readonly sectors: number;
}

/** What the capture says about retransmissions. */
interface RetransmitReport {
  frames: number;
  ataRequests: number;
  ataResponses: number;
  /** ATA requests by command (hex). */
  commands: Record<string, number>;
  /** Requests sent again while an earlier request for the same command and sectors was unanswered. */
  retransmits: number;
  /** ... of which kept the tag of the request they repeat. */
  retransmitsSameTag: number;
  /** ... of which had a new tag. */
  retransmitsNewTag: number;
  /** Requests with a tag an earlier request had (retransmitted or not). */
  tagsReused: number;
  /** Writes (one request and its retransmissions) the target answered more than once: applied again. */
  writesAnsweredMoreThanOnce: number;
  /** FLUSH CACHE (EXT) requests. */
  flushes: number;
}

const ATA_WRITES = new Set([0x30, 0x34]);
const ATA_FLUSHES = new Set([0xe7, 0xea]);

/** Reads the capture's AoE frames with tshark. */
async function readCapture(pcap: string): Promise<CapturedFrame[]> {
  const fields = ["frame.time_relative", "aoe.response", "aoe.cmd", "aoe.tag", "aoe.ata.cmd"];
  const result = await run("tshark", [
    "-r",
    pcap,
    "-Y",
    "aoe",
    "-T",
    "fields",
    "-E",
    "separator=,",
    ...[...fields, "aoe.lba", "aoe.sector_count"].flatMap((field) => ["-e", field]),
  ]);
  assert.equal(result.code, 0, `tshark -r: ${result.output}`);
  const frames: CapturedFrame[] = [];
  for (const line of result.output.split("\n")) {
    const [time, response, command, tag, ata, lba, sectors] = line.trim().split(",");
    if (time === undefined || tag === undefined || !/^\d/.test(time)) continue;
    frames.push({
      time: Number(time),
      response: response === "1" || response === "True",
      tag: Number(tag),
      ata: command === "0",
      ataCommand: ata === undefined || ata === "" ? -1 : Number(ata),
      lba: lba === undefined || lba === "" ? 0 : Number(lba),
      sectors: sectors === undefined || sectors === "" ? 0 : Number(sectors),
    });
  }
  return frames;
}

/**
 * A request repeats an earlier one when it asks for the same command on the same sectors while
 * that one (or a repeat of it) is still unanswered; a response answers the chain its tag belongs
 * to, and a later response of the same chain means the target did the request twice.
 */
function analyseRetransmits(frames: readonly CapturedFrame[]): RetransmitReport {
  const report: RetransmitReport = {
    frames: frames.length,
    ataRequests: 0,
    ataResponses: 0,
    commands: {},
    retransmits: 0,
    retransmitsSameTag: 0,
    retransmitsNewTag: 0,
    tagsReused: 0,
    writesAnsweredMoreThanOnce: 0,
    flushes: 0,
  };
  interface Chain {
    readonly key: string;
    readonly write: boolean;
    readonly tags: Set<number>;
    answers: number;
  }
  const unanswered = new Map<string, Chain>();
  const chainOfTag = new Map<number, Chain>();
  const chains: Chain[] = [];
  for (const frame of frames) {
    if (!frame.ata) continue;
    const key = `${frame.ataCommand}:${frame.lba}:${frame.sectors}`;
    if (!frame.response) {
      report.ataRequests++;
      const name = `0x${frame.ataCommand.toString(16)}`;
      report.commands[name] = (report.commands[name] ?? 0) + 1;
      if (ATA_FLUSHES.has(frame.ataCommand)) report.flushes++;
      if (chainOfTag.has(frame.tag)) report.tagsReused++;
      let chain = unanswered.get(key);
      if (chain === undefined) {
        chain = { key, write: ATA_WRITES.has(frame.ataCommand), tags: new Set(), answers: 0 };
        unanswered.set(key, chain);
        chains.push(chain);
      } else {
        report.retransmits++;
        if (chain.tags.has(frame.tag)) report.retransmitsSameTag++;
        else report.retransmitsNewTag++;
      }
      chain.tags.add(frame.tag);
      chainOfTag.set(frame.tag, chain);
    } else {
      report.ataResponses++;
      const chain = chainOfTag.get(frame.tag);
      if (chain === undefined) continue;
      chain.answers++;
      if (unanswered.get(chain.key) === chain) unanswered.delete(chain.key);
    }
  }
  report.writesAnsweredMoreThanOnce = chains.filter((chain) => chain.write && chain.answers > 1)
    .length;
  return report;
}

/** A long-running capture of AoE frames on the tap, by tshark inside the lab's namespace. */
async function startCapture(namespace: string, pcap: string) {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", namespace, "tshark", "-i", TAP, "-f", "ether proto 0x88a2"]
      .concat(["-s", "64", "-B", "64", "-w", pcap, "-q"]),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let log = "";
  const pumped = (async () => {
    for await (const chunk of child.stderr) log += decoder.decode(chunk, { stream: true });
  })();
  const deadline = Date.now() + 30_000;
  while (!/Capturing on/.test(log)) {
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      await Promise.all([child.status, pumped]);
      throw new Error(`tshark did not start capturing: ${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  let stopped: Promise<string> | null = null;
  return {
    /** SIGINT (tshark finishes the file) and wait: what it printed. */
    stop(): Promise<string> {
      stopped ??= (async () => {
        try {
          child.kill("SIGINT");
        } catch {
          // exited already
        }
        await Promise.all([child.status, pumped]);
        return log;
      })();
      return stopped;
    },
  };
}

/** `GUEST: REGION NAME SECTOR COUNT SHA256 ...` lines. */
function regionsOf(text: string) {
  return [...text.matchAll(/GUEST: REGION (\S+) (\d+) (\d+) ([0-9a-f]{64})/g)].map((m) => ({
    name: m[1]!,
    offset: Number(m[2]) * SECTOR,
    length: Number(m[3]) * SECTOR,
    sha256: m[4]!,
  }));
}

/** `GUEST: SUM SHA256  ./data/PATH` lines: path (under the filesystem's root) to checksum. */
function sumsOf(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const m of text.matchAll(/GUEST: SUM ([0-9a-f]{64}) +\.\/(\S+)/g)) sums.set(m[2]!, m[1]!);
  return sums;
}

/** Makes the bridge and the tap vm-blockdev.sh wants in `namespace`, and joins `port` to them. */
async function makeBridge(namespace: string, port: string): Promise<void> {
  const n = ["-n", namespace];
  await ip([...n, "link", "add", BRIDGE, "type", "bridge"]);
  await ip([...n, "tuntap", "add", "dev", TAP, "mode", "tap"]);
  for (const link of [TAP, port]) await ip([...n, "link", "set", "dev", link, "master", BRIDGE]);
  for (const link of [BRIDGE, TAP]) {
    // No IPv6 link-local address: the segment carries AoE only.
    await ip([...n, "link", "set", "dev", link, "addrgenmode", "none"]);
    await ip([...n, "link", "set", "dev", link, "up"]);
  }
}

/** Deletes the tap and the bridge (the namespace's deletion would too, but say so if not). */
async function removeBridge(namespace: string): Promise<void> {
  for (const link of [TAP, BRIDGE]) {
    await ip(["-n", namespace, "link", "delete", "dev", link]).catch((error) => {
      if (!/Cannot find device|does not exist/.test(String(error))) throw error;
    });
  }
}

const skip = await skipReason();
Deno.test({
  name: skip === null
    ? "vm: the kernel's aoe driver on torus aoe: O_DIRECT regions and an ext2 survive a " +
      "stalled target's retransmissions; the volume read back through NBD has them all"
    : `vm: the kernel's aoe driver on torus aoe (skipped: ${skip})`,
  ignore: skip !== null,
  async fn() {
    const work = await Deno.makeTempDir({ prefix: "torus-vm-aoe-" });
    const data = `${work}/data`;
    const lab = new NetnsLab();
    let namespace: string | null = null;
    let vm: VmRun | null = null;
    try {
      await ctlOk(data, ["init"]);
      await ctlOk(data, ["volume", "create-block", "vol", "256MiB"]);
      namespace = await lab.addNamespace();
      const pair = await lab.addVethPair({ namespaceB: namespace });
      await makeBridge(namespace, pair.b.name);

      await using target = await startTorusProcess(
        ["aoe", "vol", pair.a.name, String(SHELF), String(SLOT), "--data-dir", data]
          .concat(["--host", "127.0.0.1", "--port", "0"]),
        /Ready\. Stop with Ctrl-C \(SIGINT\) or SIGTERM\./,
      );
      const http = /HTTP: +(http:\/\/[0-9.]+:\d+)/.exec(target.output());
      assert.ok(http !== null, target.output());
      const metricsUrl = `${http[1]}/metrics`;

      const pcap = `${work}/aoe.pcapng`;
      const capture = hasCommand("tshark") ? await startCapture(namespace, pcap) : null;
      let frames: CapturedFrame[] = [];
      let captureLog = "";
      try {
        const started = performance.now();
        const running = startVm(namespace);
        vm = running;
        let vmOver = false;
        const result = running.done.finally(() => vmOver = true);
        const [guest, stall] = await Promise.all([
          result,
          stallTarget(target.child.pid, metricsUrl, () => vmOver),
        ]);
        vm = null;
        const guestLines = guest.output.split("\n").filter((line) => line.includes("GUEST"));
        const context = `vm-blockdev.sh exit ${guest.code}; guest:\n${guestLines.join("\n")}\n` +
          `--- output tail:\n${guest.output.split("\n").slice(-40).join("\n")}`;
        console.log(
          `guest ran ${((performance.now() - started) / 1000).toFixed(1)} s; target stopped ` +
            `for ${STALL_MS} ms: ${stall.stalled} (after ${stall.writtenBeforeStall} bytes)\n` +
            guestLines.filter((line) => !/GUEST: SUM /.test(line)).join("\n"),
        );
        assert.equal(guest.code, 0, context);
        assert.match(guest.output, /GUEST: OK/, context);
        assert.ok(stall.stalled, `the target was never stopped: ${context}`);

        const counters = await aoeCounters(metricsUrl);
        console.log(`target counters: ${JSON.stringify(counters)}`);
        assert.equal(counters.frames_malformed, 0);
        assert.equal(counters.ata_errors, 0);
        if (capture !== null) {
          captureLog = await capture.stop();
          frames = await readCapture(pcap);
        }
        assert.equal(await target.stop(), 0, target.output());

        const regions = regionsOf(guest.output);
        assert.equal(regions.length, 6, context);
        const sums = sumsOf(guest.output);
        assert.equal(sums.size, 28, context);

        // The volume as torus serve sees it, through NBD.
        await using serve = await startServe(data, { size: "1GiB" });
        const client = await serve.connect("vol");
        try {
          for (const region of regions) {
            const bytes = new Uint8Array(region.length);
            await client.readAt(region.offset, bytes);
            assert.equal(await sha256(bytes), region.sha256, `region ${region.name}`);
          }
          const filesystem = new Uint8Array(FS_BYTES);
          await client.readAt(0, filesystem);
          await Deno.writeFile(`${work}/fs.img`, filesystem);
        } finally {
          await client.close();
        }
        assert.equal(await serve.stop(), 0, serve.output());
        const fsck = await run("e2fsck", ["-f", "-n", `${work}/fs.img`]);
        assert.equal(fsck.code, 0, `e2fsck: ${fsck.output}`);
        await Deno.mkdir(`${work}/fs`);
        const rdump = await run("debugfs", ["-R", `rdump /data ${work}/fs`, `${work}/fs.img`]);
        assert.equal(rdump.code, 0, `debugfs: ${rdump.output}`);
        for (const [path, sum] of sums) {
          assert.equal(await sha256(await Deno.readFile(`${work}/fs/${path}`)), sum, path);
        }
      } finally {
        captureLog = (await capture?.stop()) ?? captureLog;
      }

      if (capture !== null) {
        const report = analyseRetransmits(frames);
        console.log(
          `capture (${captureLog.trim().split("\n").at(-1)}): ${JSON.stringify(report)}`,
        );
        // The stall made the driver retransmit: the capture must have seen it to mean anything.
        assert.ok(report.retransmits > 0, JSON.stringify(report));
      }
    } finally {
      if (vm !== null) await killVm(vm);
      try {
        if (namespace !== null) await removeBridge(namespace);
      } finally {
        await lab.cleanup();
        await Deno.remove(work, { recursive: true });
      }
    }
  },
});
