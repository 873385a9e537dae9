/**
 * NBD server throughput, measured by fio's nbd engine (a real client, over loopback TCP) against
 * three servers in the same run: ours serving a MemoryDevice in this process, nbdkit's memory
 * plugin, and qemu-nbd on a raw file (the reference the issue sets: "faster than qemu-nbd serving
 * a file"). Workloads: 4 KiB random reads and writes at QD1 and QD32, 1 MiB sequential reads and
 * writes at QD8, each a fixed amount of I/O per iteration.
 *
 * `deno task bench` prints time per iteration, GB/s and the ratio to qemu-nbd (the baseline);
 * this file also prints fio's own IOPS and MiB/s per server (medians) to stderr at the end.
 * Needs fio, nbdkit and qemu-nbd (tests/support/packages.ts lists their packages); benches whose
 * server is missing are skipped.
 * @module
 */

import { DeviceHandle, SharedExports } from "./exports.ts";
import { NbdServer } from "./server.ts";
import { MemoryDevice } from "../memory_device.ts";

const MiB = 1024 * 1024;
const EXPORT_BYTES = 512 * MiB;

interface Workload {
  name: string;
  rw: string;
  blockBytes: number;
  queueDepth: number;
  /** I/O per iteration (about half a second on an idle machine). */
  ioBytes: number;
  sizeTag: string;
}

const workloads: Workload[] = [
  { name: "4k randread QD1", rw: "randread", blockBytes: 4096, queueDepth: 1, ioBytes: 16 * MiB },
  {
    name: "4k randread QD32",
    rw: "randread",
    blockBytes: 4096,
    queueDepth: 32,
    ioBytes: 64 * MiB,
  },
  { name: "4k randwrite QD1", rw: "randwrite", blockBytes: 4096, queueDepth: 1, ioBytes: 16 * MiB },
  {
    name: "4k randwrite QD32",
    rw: "randwrite",
    blockBytes: 4096,
    queueDepth: 32,
    ioBytes: 64 * MiB,
  },
  { name: "1M seq read QD8", rw: "read", blockBytes: MiB, queueDepth: 8, ioBytes: 1024 * MiB },
  { name: "1M seq write QD8", rw: "write", blockBytes: MiB, queueDepth: 8, ioBytes: 1024 * MiB },
].map((w) => ({ ...w, sizeTag: `${w.ioBytes / MiB}MiB` }));

interface BenchServer {
  name: string;
  uri: string;
  stop(): void;
}

function hasCommand(command: string): boolean {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/bin").split(":")) {
    try {
      if (Deno.statSync(`${dir}/${command}`).isFile) return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

async function waitForPort(port: number): Promise<void> {
  for (let attempt = 0; attempt < 500; attempt++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  throw new Error(`nothing listens on port ${port}`);
}

function startTorus(): BenchServer {
  const device = new MemoryDevice({ sizeBytes: EXPORT_BYTES });
  const exports = new SharedExports({
    list: () => Promise.resolve(["vol"]),
    open: () => Promise.resolve(new DeviceHandle(device, () => Promise.resolve())),
  });
  const server = new NbdServer({ exports });
  const { port } = server.listen({ hostname: "127.0.0.1", port: 0 });
  return {
    name: "torus MemoryDevice",
    uri: `nbd://127.0.0.1:${port}/vol`,
    stop: () => void server.close(),
  };
}

async function startProcess(name: string, command: string, args: string[], port: number) {
  // stderr is dropped: qemu-nbd complains about the probe connection of waitForPort.
  const child = new Deno.Command(command, { args, stdout: "null", stderr: "null" }).spawn();
  await waitForPort(port);
  return { name, stop: () => child.kill("SIGTERM"), status: child.status };
}

async function startNbdkit(): Promise<BenchServer> {
  const port = freePort();
  const args = [
    "-f",
    "--exit-with-parent",
    "-i",
    "127.0.0.1",
    "-p",
    `${port}`,
    "memory",
    `${EXPORT_BYTES}`,
  ];
  const process = await startProcess("nbdkit memory", "nbdkit", args, port);
  return { ...process, uri: `nbd://127.0.0.1:${port}/` };
}

async function startQemuNbd(dir: string): Promise<BenchServer> {
  const port = freePort();
  const file = `${dir}/qemu-nbd.raw`;
  await Deno.truncate(file, 0).catch(() => Deno.writeFile(file, new Uint8Array(0)));
  await Deno.truncate(file, EXPORT_BYTES);
  const args = ["-f", "raw", "-t", "-b", "127.0.0.1", "-p", `${port}`, "-x", "vol", file];
  const process = await startProcess("qemu-nbd file", "qemu-nbd", args, port);
  return { ...process, uri: `nbd://127.0.0.1:${port}/vol` };
}

interface FioResult {
  iops: number;
  mibPerSecond: number;
}

async function fio(
  uri: string,
  workload: Workload,
  ioBytes = workload.ioBytes,
): Promise<FioResult> {
  const output = await new Deno.Command("fio", {
    args: [
      "--name=bench",
      "--ioengine=nbd",
      `--uri=${uri}`,
      `--rw=${workload.rw}`,
      `--bs=${workload.blockBytes}`,
      `--iodepth=${workload.queueDepth}`,
      `--size=${EXPORT_BYTES}`,
      `--io_size=${ioBytes}`,
      "--randrepeat=0",
      "--output-format=json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout);
  if (!output.success) {
    throw new Error(`fio failed: ${text}${new TextDecoder().decode(output.stderr)}`);
  }
  const job = JSON.parse(text.slice(text.indexOf("{"))).jobs[0];
  const side = job.read.io_bytes > 0 ? job.read : job.write;
  return { iops: side.iops, mibPerSecond: side.bw / 1024 };
}

const tools = ["fio", "nbdkit", "qemu-nbd"].filter((tool) => !hasCommand(tool));
const servers: BenchServer[] = [];
const results = new Map<string, FioResult[]>();

if (!hasCommand("fio")) {
  console.error(`nbd bench: skipped, fio is not installed`);
} else {
  const dir = await Deno.makeTempDir({ prefix: "torus-nbd-bench-" });
  servers.push(startTorus());
  if (hasCommand("nbdkit")) servers.push(await startNbdkit());
  if (hasCommand("qemu-nbd")) servers.push(await startQemuNbd(dir));
  if (tools.length > 0) console.error(`nbd bench: without ${tools.join(", ")} (not installed)`);
  // Fill every export, so reads read data rather than holes.
  const fill = workloads.find((w) => w.name === "1M seq write QD8")!;
  for (const server of servers) await fio(server.uri, fill, EXPORT_BYTES);
  globalThis.addEventListener("unload", () => {
    printSummary();
    for (const server of servers) server.stop();
    Deno.removeSync(dir, { recursive: true });
  });
  for (const workload of workloads) {
    for (const server of servers) {
      Deno.bench({
        name: `${server.name} [${workload.sizeTag}/iter]`,
        group: `nbd ${workload.name}`,
        baseline: server.name === "qemu-nbd file",
        n: 3,
        warmup: 0,
        async fn(b) {
          b.start();
          const result = await fio(server.uri, workload);
          b.end();
          const key = `${workload.name}\t${server.name}`;
          results.set(key, [...(results.get(key) ?? []), result]);
        },
      });
    }
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

function printSummary(): void {
  const lines = ["", "nbd: fio medians (IOPS, MiB/s, ratio to qemu-nbd file)"];
  for (const workload of workloads) {
    const reference = median(
      (results.get(`${workload.name}\tqemu-nbd file`) ?? []).map((r) => r.iops),
    );
    for (const server of servers) {
      const runs = results.get(`${workload.name}\t${server.name}`) ?? [];
      if (runs.length === 0) continue;
      const iops = median(runs.map((r) => r.iops));
      const mib = median(runs.map((r) => r.mibPerSecond));
      const ratio = reference > 0 ? `${(iops / reference).toFixed(2)}x` : "";
      lines.push(
        `  ${workload.name.padEnd(18)} ${server.name.padEnd(20)} ${
          iops.toFixed(0).padStart(8)
        } IOPS ` +
          `${mib.toFixed(0).padStart(6)} MiB/s ${ratio.padStart(6)}  (${runs.length} runs)`,
      );
    }
  }
  console.error(lines.join("\n"));
}
