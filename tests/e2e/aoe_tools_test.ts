/**
 * `torus aoe` against third-party AoE tools: Debian's aoetools (`aoeping`, `aoecfg`, userspace
 * initiators over raw sockets) and Wireshark's dissector (`tshark`).
 *
 * Each test makes a namespace holding end a of a veth pair and serves a fresh 64 MiB volume there
 * with a real `torus aoe` process (its own data dir, as `torus ctl` made it) as e9.4; the tools
 * run in the test's namespace on end b.
 * - aoeping: the config query reply (dumped whole by `-v`: exactly the 60-byte minimum frame,
 *   byte for byte), and IDENTIFY DEVICE (`-I` pretty-printed, `-i` dumped: model, serial,
 *   firmware, LBA28 and LBA48 sector counts, the integrity word).
 * - aoecfg: read, set, test and test-prefix (answered only on a match), set refused while a
 *   string is present (AoE error 4, which aoecfg prints as `*badcfg*`), force set.
 * - tshark: a capture of a whole session (the start-up advertisement, the strict initiator's
 *   discovery, config, IDENTIFY, LBA28 and LBA48 writes and reads, both flushes, CHECK POWER MODE,
 *   an unknown ATA command, then aoeping and aoecfg) has no malformed frame and no expert error,
 *   every request has exactly one response with its tag (tshark's own pairing agrees for ATA),
 *   and every response is at least 60 bytes.
 * aoeping and aoecfg drop frames shorter than 60 bytes, so a target that does not pad its replies
 * fails the first two tests (aoeping times out, aoecfg prints nothing), and the third through the
 * strict initiator; a short advertisement, which no tool waits for, fails only the third.
 *
 * Root only (namespaces, raw sockets); skipped when a tool is missing (tests/support/packages.ts
 * installs them).
 */

import assert from "node:assert/strict";
import { VERSION } from "../../src/core/mod.ts";
import { AoeInitiator } from "../../src/block/aoe/initiator.ts";
import { PacketFramePort } from "../../src/block/aoe/packet_port.ts";
import {
  AOE_SECTOR_BYTES,
  AtaCommand,
  AtaErrorBit,
  AtaStatus,
  ConfigCommand,
} from "../../src/block/aoe/protocol.ts";
import { linkInfo, type NetnsLab, netnsTest, type VethPair } from "../support/netns.ts";
import { hasCommand } from "../support/packages.ts";
import { ctlOk } from "../support/torus_process.ts";

const root = new URL("../../", import.meta.url).pathname;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const SHELF = 9;
const SLOT = 4;
const VOLUME = "tools-vol";
const VOLUME_BYTES = 64 * 1024 * 1024;
const VOLUME_SECTORS = VOLUME_BYTES / AOE_SECTOR_BYTES;
const ETHERNET_MIN_FRAME_BYTES = 60;
const BROADCAST = "ff:ff:ff:ff:ff:ff";
/** A command our target does not implement: it must answer with an ATA abort. */
const UNKNOWN_ATA_COMMAND = 0x8b;
/** How long aoeping waits for a reply (`-s`) before it fails. */
const AOEPING_TIMEOUT_S = 5;
/** How long a tool may run before the test kills it. */
const TOOL_KILL_MS = 15_000;
/** How long `torus aoe` may take to print its banner. */
const TORUS_READY_MS = 30_000;
/** How long the tests may run (each starts torus twice through `torus ctl` and once serving). */
const TEST_TIMEOUT_MS = 50_000;

/** `sh -c` prefix that runs the rest of the command with stderr merged into stdout. */
const MERGE_STDERR = ["sh", "-c", 'exec "$@" 2>&1', "sh"];

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A long-running child started through the lab (killed at its cleanup in any case). */
class RunningChild implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #stopSignal: Deno.Signal;
  #text = "";
  #exit: Deno.CommandStatus | null = null;
  readonly #status: Promise<Deno.CommandStatus>;
  readonly #pumped: Promise<void>;

  /**
   * Starts `command` (stderr merged into stdout) in `namespace` (null: the test's); `stopSignal`
   * is what disposal sends first (SIGKILL follows if it does not exit within 3 s).
   */
  constructor(
    readonly name: string,
    lab: NetnsLab,
    namespace: string | null,
    command: readonly string[],
    stopSignal: Deno.Signal,
  ) {
    const child = lab.spawn(namespace, [...MERGE_STDERR, ...command]);
    this.#child = child;
    this.#stopSignal = stopSignal;
    child.stdin.close().catch(() => {});
    this.#pumped = (async () => {
      for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
        this.#text += chunk;
      }
    })();
    this.#status = child.status.then((status) => this.#exit = status);
  }

  /** Everything it printed so far. */
  get output(): string {
    return this.#text;
  }

  /** Waits until its output matches `pattern`; fails if it exits first or takes too long. */
  async waitFor(pattern: RegExp, timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!pattern.test(this.#text)) {
      if (this.#exit !== null) {
        await this.#pumped;
        throw new Error(
          `${this.name} exited (code ${this.#exit.code}, signal ${this.#exit.signal}) before ` +
            `printing ${pattern}:\n${this.#text}`,
        );
      }
      if (performance.now() > deadline) {
        throw new Error(
          `${this.name} did not print ${pattern} within ${timeoutMs} ms:\n${this.#text}`,
        );
      }
      await delay(25);
    }
  }

  /** Sends `signal` unless it has exited; waits for its exit and the end of its output. */
  async stop(signal: Deno.Signal): Promise<Deno.CommandStatus> {
    if (this.#exit === null) {
      try {
        this.#child.kill(signal);
      } catch {
        // It exited meanwhile.
      }
    }
    const status = await this.#status;
    await this.#pumped;
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#exit === null) {
      try {
        this.#child.kill(this.#stopSignal);
      } catch {
        // It exited meanwhile.
      }
      const exited = await Promise.race([this.#status.then(() => true), delay(3000)]);
      if (!exited) await this.stop("SIGKILL");
    }
    await this.#status;
    // A grandchild (tshark's dumpcap) may hold the pipe a little longer.
    await Promise.race([this.#pumped, delay(2000)]);
  }
}

/** What a tool printed. */
interface ToolOutput {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a tool in the test's namespace to its end (killed after {@link TOOL_KILL_MS}). */
async function runTool(command: readonly string[]): Promise<ToolOutput> {
  const output = await new Deno.Command(command[0]!, {
    args: command.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(TOOL_KILL_MS),
  }).output();
  const result = {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
  if (output.signal !== null) {
    // aoeping's -s timeout is an alarm: SIGALRM means no reply came in time.
    const why = output.signal === "SIGALRM" ? "its own timeout (no reply)" : output.signal;
    throw new Error(`${command.join(" ")} ended by ${why}: ${JSON.stringify(result)}`);
  }
  return result;
}

/** Runs a tool that must succeed; its stdout. */
async function toolOk(command: readonly string[]): Promise<string> {
  const output = await runTool(command);
  assert.equal(output.code, 0, `${command.join(" ")}: ${JSON.stringify(output)}`);
  return output.stdout;
}

/** A data dir with VOLUME in it, removed when disposed. */
async function dataDirWithVolume(): Promise<AsyncDisposable & { path: string }> {
  const dir = await Deno.makeTempDir({ prefix: "torus-aoe-tools-" });
  const dispose = () => Deno.remove(dir, { recursive: true });
  try {
    await ctlOk(`${dir}/data`, ["init"]);
    await ctlOk(`${dir}/data`, ["volume", "create-block", VOLUME, "64MiB"]);
  } catch (error) {
    await dispose();
    throw error;
  }
  return { path: dir, [Symbol.asyncDispose]: dispose };
}

/** Where the target lives: end a in its own namespace, end b (the tools') in the test's. */
interface Link {
  readonly pair: VethPair;
  readonly namespace: string;
  readonly targetMac: string;
  readonly initiatorMac: string;
}

async function makeLink(lab: NetnsLab): Promise<Link> {
  const namespace = await lab.addNamespace();
  const pair = await lab.addVethPair({ namespaceA: namespace });
  return {
    pair,
    namespace,
    targetMac: (await linkInfo(pair.a)).mac,
    initiatorMac: (await linkInfo(pair.b)).mac,
  };
}

/** `torus aoe VOLUME A SHELF SLOT` in the link's namespace, once it printed its banner. */
async function startTorusAoe(lab: NetnsLab, link: Link, dir: string): Promise<RunningChild> {
  const torus = new RunningChild("torus aoe", lab, link.namespace, [
    "env",
    "NO_COLOR=1",
    Deno.execPath(),
    "run",
    "-A",
    `${root}main.ts`,
    "aoe",
    VOLUME,
    link.pair.a.name,
    String(SHELF),
    String(SLOT),
    "--data-dir",
    `${dir}/data`,
  ], "SIGKILL");
  try {
    await torus.waitFor(/^Ready\. Stop with Ctrl-C \(SIGINT\) or SIGTERM\.$/m, TORUS_READY_MS);
    const aoeLine = `${VOLUME} on ${link.pair.a.name} (${link.targetMac}) as e${SHELF}.${SLOT}`;
    assert.match(torus.output, new RegExp(`AoE: +${escapeRegExp(aoeLine)}, 2 sectors per frame`));
  } catch (error) {
    await torus[Symbol.asyncDispose]();
    throw error;
  }
  return torus;
}

/** Stops torus with SIGTERM: it must exit 0 (requests answered, volume flushed and unlocked). */
async function stopTorus(torus: RunningChild): Promise<void> {
  const status = await torus.stop("SIGTERM");
  assert.equal(status.code, 0, `torus aoe exit on SIGTERM:\n${torus.output}`);
  assert.match(torus.output, /Received SIGTERM/);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** The bytes of the hex dump that follows the line `heading` in aoeping's output. */
function hexDumpAfter(output: string, heading: string): Uint8Array {
  const lines = output.split("\n");
  const start = lines.indexOf(heading);
  assert.ok(start >= 0, `no "${heading}" in aoeping's output:\n${output}`);
  const bytes: number[] = [];
  for (const line of lines.slice(start + 1)) {
    if (!/^[0-9a-f]{2}( [0-9a-f]{2})* ?$/.test(line)) break;
    for (const byte of line.trim().split(" ")) bytes.push(parseInt(byte, 16));
  }
  return Uint8Array.from(bytes);
}

/** The bytes of a MAC address ("aa:bb:...") or of hex digits ("80000000"). */
function hexBytes(text: string): number[] {
  return (text.replaceAll(":", "").match(/../g) ?? []).map((byte) => parseInt(byte, 16));
}

/** An IDENTIFY page as aoeping dumps it (the device's bytes: 256 little-endian words). */
class IdentifyDump {
  constructor(readonly bytes: Uint8Array) {
    assert.equal(bytes.length, 512, "the IDENTIFY page is one sector");
  }

  word(index: number): number {
    return this.bytes[2 * index]! | this.bytes[2 * index + 1]! << 8;
  }

  /** Words `from`..`to` (inclusive) as a little-endian number. */
  number(from: number, to: number): number {
    let value = 0;
    for (let index = to; index >= from; index--) value = value * 65536 + this.word(index);
    return value;
  }

  /** An ATA string (each word's high byte first), without its trailing spaces. */
  text(from: number, to: number): string {
    let text = "";
    for (let index = from; index <= to; index++) {
      text += String.fromCharCode(this.word(index) >> 8, this.word(index) & 0xff);
    }
    return text.trimEnd();
  }
}

/** What tshark decoded of one captured frame. */
interface Decoded {
  readonly frame: number;
  readonly length: number;
  readonly source: string;
  readonly destination: string;
  readonly version: string;
  readonly response: boolean;
  readonly errorFlag: boolean;
  readonly command: number;
  readonly tag: number;
  readonly ataCommand: number | null;
  readonly ataStatus: number | null;
  readonly ataError: number | null;
  readonly lba48Flag: boolean;
  readonly responseIn: number | null;
  readonly responseTo: number | null;
  readonly malformed: boolean;
  readonly expertSeverities: readonly number[];
  readonly expertMessages: string;
  readonly info: string;
}

const TSHARK_FIELDS = [
  "frame.number",
  "frame.len",
  "eth.src",
  "eth.dst",
  "aoe.version",
  "aoe.response",
  "aoe.flags_error",
  "aoe.cmd",
  "aoe.tag",
  "aoe.ata.cmd",
  "aoe.ata.status",
  "aoe.err_feature",
  "aoe.aflags.e",
  "aoe.response_in",
  "aoe.response_to",
  "_ws.malformed",
  "_ws.expert.severity",
  "_ws.expert.message",
  "_ws.col.Info",
];
/** `_ws.expert.severity` of an error (PI_ERROR). */
const EXPERT_ERROR = 0x00800000;

/** Reads a capture with tshark, one {@link Decoded} per frame. */
async function decodeCapture(file: string): Promise<Decoded[]> {
  const fields = TSHARK_FIELDS.flatMap((field) => ["-e", field]);
  // Two passes (-2): a request's "response in" points forward, to a frame not yet read.
  const format = ["-T", "fields", "-E", "separator=/t", ...fields];
  const text = await toolOk(["tshark", "-2", "-r", file, ...format]);
  const number = (value: string) => value === "" ? null : Number(value);
  const flag = (value: string) => value === "1" || value === "True";
  return text.split("\n").filter((line) => line !== "").map((line) => {
    const v = line.split("\t");
    assert.equal(v.length, TSHARK_FIELDS.length, `tshark fields line: ${line}`);
    const at = (field: string) => v[TSHARK_FIELDS.indexOf(field)]!;
    return {
      frame: Number(at("frame.number")),
      length: Number(at("frame.len")),
      source: at("eth.src"),
      destination: at("eth.dst"),
      version: at("aoe.version"),
      response: flag(at("aoe.response")),
      errorFlag: flag(at("aoe.flags_error")),
      command: Number(at("aoe.cmd")),
      tag: Number(at("aoe.tag")),
      ataCommand: number(at("aoe.ata.cmd")),
      ataStatus: number(at("aoe.ata.status")),
      ataError: number(at("aoe.err_feature")),
      lba48Flag: flag(at("aoe.aflags.e")),
      responseIn: number(at("aoe.response_in")),
      responseTo: number(at("aoe.response_to")),
      malformed: at("_ws.malformed") !== "",
      expertSeverities: at("_ws.expert.severity").split(",").filter((s) => s !== "").map(Number),
      expertMessages: at("_ws.expert.message"),
      info: at("_ws.col.Info"),
    };
  });
}

/**
 * Everything wrong with a capture: malformed frames, expert errors, short responses, requests
 * without exactly one response of the same tag (and tshark's ATA pairing disagreeing), responses
 * no request asked for (but the one start-up advertisement, to the broadcast MAC with tag 0).
 */
function captureProblems(frames: readonly Decoded[]): string[] {
  const problems: string[] = [];
  const describe = (f: Decoded) => `frame ${f.frame} (${f.info}, tag 0x${f.tag.toString(16)})`;
  const requests = frames.filter((f) => !f.response);
  const responses = frames.filter((f) => f.response);
  for (const f of frames) {
    if (f.malformed) problems.push(`${describe(f)} is malformed`);
    if (f.expertSeverities.some((severity) => severity >= EXPERT_ERROR)) {
      problems.push(`${describe(f)} has an expert error: ${f.expertMessages}`);
    }
    if (f.version !== "1") problems.push(`${describe(f)} is AoE version ${f.version}`);
  }
  for (const f of responses) {
    if (f.length < ETHERNET_MIN_FRAME_BYTES) {
      problems.push(`${describe(f)} is ${f.length} bytes, shorter than 60`);
    }
  }
  const answered = new Set<number>();
  for (const request of requests) {
    const answers = responses.filter((f) =>
      f.tag === request.tag && f.command === request.command &&
      f.destination === request.source &&
      (request.destination === BROADCAST || f.source === request.destination)
    );
    if (answers.length !== 1) {
      problems.push(`${describe(request)} has ${answers.length} responses with its tag`);
      continue;
    }
    const answer = answers[0]!;
    answered.add(answer.frame);
    const isAta = request.ataCommand !== null;
    if (isAta && (request.responseIn !== answer.frame || answer.responseTo !== request.frame)) {
      problems.push(
        `tshark pairs ${describe(request)} with frame ${request.responseIn}, and frame ` +
          `${answer.frame} with ${answer.responseTo}`,
      );
    }
  }
  const unasked = responses.filter((f) => !answered.has(f.frame));
  const advertisements = unasked.filter((f) =>
    f.destination === BROADCAST && f.tag === 0 && f.command === 1
  );
  if (advertisements.length !== 1) {
    problems.push(`${advertisements.length} advertisements (want 1)`);
  }
  for (const f of unasked) {
    if (!advertisements.includes(f)) problems.push(`${describe(f)} answers no request`);
  }
  return problems;
}

/** "N× info" per distinct Info column, in order of first appearance. */
function summarize(frames: readonly Decoded[]): string {
  const counts = new Map<string, number>();
  for (const f of frames) counts.set(f.info, (counts.get(f.info) ?? 0) + 1);
  return [...counts].map(([info, count]) => `  ${String(count).padStart(3)}× ${info}`).join("\n");
}

function randomSectors(sectors: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(sectors * AOE_SECTOR_BYTES));
}

/** Registers a test that needs `tools` and root; skipped with the reason otherwise. */
async function toolsTest(
  name: string,
  tools: readonly string[],
  fn: (lab: NetnsLab) => Promise<void>,
): Promise<void> {
  const missing = tools.filter((tool) => !hasCommand(tool));
  if (missing.length > 0) {
    Deno.test({
      name: `${name} (skipped: ${missing.join(", ")} not installed)`,
      ignore: true,
      fn() {},
    });
    return;
  }
  await netnsTest(name, fn, { timeoutMs: TEST_TIMEOUT_MS });
}

await toolsTest(
  "aoe tools: aoeping finds torus aoe's target and reads its IDENTIFY page",
  ["aoeping"],
  async (lab) => {
    const link = await makeLink(lab);
    await using dir = await dataDirWithVolume();
    await using torus = await startTorusAoe(lab, link, dir.path);
    const address = [String(SHELF), String(SLOT), link.pair.b.name];
    const timeout = ["-s", String(AOEPING_TIMEOUT_S)];

    const verbose = await toolOk(["aoeping", "-v", ...timeout, ...address]);
    const tag = /^tag: ([0-9a-f]{8})$/m.exec(verbose)?.[1];
    assert.ok(tag !== undefined, `aoeping -v printed no tag:\n${verbose}`);
    assert.match(
      verbose,
      new RegExp(
        `^found e${SHELF}\\.${SLOT} with mac ` +
          `${link.targetMac.replaceAll(":", "")}$`,
        "m",
      ),
    );
    // The whole reply, padded with zeros to exactly the Ethernet minimum.
    const expected = new Uint8Array(ETHERNET_MIN_FRAME_BYTES);
    expected.set([
      ...hexBytes(link.initiatorMac),
      ...hexBytes(link.targetMac),
      ...hexBytes("88a2"), // AoE
      ...hexBytes("1800"), // version 1, response; no error
      ...hexBytes(SHELF.toString(16).padStart(4, "0")),
      SLOT,
      ...hexBytes("01"), // Query Config
      ...hexBytes(tag), // the request's
      ...hexBytes("0040"), // buffer count 64
      ...hexBytes("0001"), // firmware version 1
      ...hexBytes("02"), // sectors per frame at MTU 1500
      ...hexBytes("10"), // AoE version 1, config command read
      ...hexBytes("0000"), // an empty config string
    ]);
    assert.deepEqual(hexDumpAfter(verbose, "config query response:"), expected);

    const pretty = await toolOk(["aoeping", "-I", ...timeout, ...address]);
    const fields = Object.fromEntries(
      pretty.split("\n").flatMap((line) => {
        const match = /^(\w+): (.*)$/.exec(line);
        return match ? [[match[1]!, match[2]!.trimEnd()]] : [];
      }),
    );
    assert.deepEqual(
      [fields.model, fields.serial_number, fields.firmware_rev],
      ["torus AoE", VOLUME, VERSION.split("-")[0]],
      pretty,
    );

    const dump = await toolOk(["aoeping", "-i", ...timeout, ...address]);
    const page = new IdentifyDump(hexDumpAfter(dump, "device identify response:"));
    const checksum = page.bytes.reduce((sum, byte) => (sum + byte) & 0xff, 0);
    assert.deepEqual({
      ataDevice: (page.word(0) & 0x8000) === 0,
      model: page.text(27, 46),
      serial: page.text(10, 19),
      lbaSupported: (page.word(49) & 0x0200) !== 0,
      lba28Sectors: page.number(60, 61),
      lba48Supported: (page.word(83) & 0x0400) !== 0,
      lba48Sectors: page.number(100, 103),
      integritySignature: page.word(255) & 0xff,
      integrityChecksum: checksum,
    }, {
      ataDevice: true,
      model: "torus AoE",
      serial: VOLUME,
      lbaSupported: true,
      lba28Sectors: VOLUME_SECTORS,
      lba48Supported: true,
      lba48Sectors: VOLUME_SECTORS,
      integritySignature: 0xa5,
      integrityChecksum: 0,
    });
    console.log(
      `aoeping: found e${SHELF}.${SLOT} (60-byte config reply, tag ${tag}); IDENTIFY: ` +
        `model "${fields.model}", serial "${fields.serial_number}", firmware ` +
        `"${fields.firmware_rev}", ${page.number(100, 103)} sectors (LBA28 and LBA48)`,
    );
    await stopTorus(torus);
  },
);

await toolsTest(
  "aoe tools: aoecfg reads, sets, tests and force-sets torus aoe's config string",
  ["aoecfg"],
  async (lab) => {
    const link = await makeLink(lab);
    await using dir = await dataDirWithVolume();
    await using torus = await startTorusAoe(lab, link, dir.path);
    const interfaceName = link.pair.b.name;
    const transcript: string[] = [];
    /**
     * `aoecfg -c COMMAND [-s STRING] SHELF SLOT B`: aoecfg exits at the first reply to a query
     * for one target, or, when none comes, after `-t` seconds with nothing printed (status 0 in
     * both cases). A broadcast query prints "shelf.slot<TAB>string" per reply until `-t`.
     */
    const aoecfg = async (command: string, string?: string, broadcast = false) => {
      const answered = command !== "test" && command !== "prefix";
      const args = [
        "-c",
        command,
        ...(string === undefined ? [] : ["-s", string]),
        // Queries answered only on a match wait 1 s for nothing; a broadcast always waits.
        "-t",
        answered && !broadcast ? "2" : "1",
        ...(broadcast ? [] : [String(SHELF), String(SLOT)]),
        interfaceName,
      ];
      const output = await runTool(["aoecfg", ...args]);
      assert.equal(output.code, 0, `aoecfg ${args.join(" ")}: ${JSON.stringify(output)}`);
      assert.equal(output.stderr, "", `aoecfg ${args.join(" ")}`);
      const shown = string === undefined ? command : `${command} "${string}"`;
      transcript.push(
        `${shown}${broadcast ? " (broadcast)" : ""} -> ${JSON.stringify(output.stdout)}`,
      );
    };
    await aoecfg("read");
    await aoecfg("set", "torus-e2e");
    await aoecfg("read");
    await aoecfg("read", undefined, true);
    await aoecfg("test", "torus-e2e");
    await aoecfg("test", "torus");
    await aoecfg("prefix", "torus");
    await aoecfg("prefix", "e2e");
    await aoecfg("set", "other");
    await aoecfg("read");
    await aoecfg("fset", "other");
    await aoecfg("read");
    assert.deepEqual(transcript, [
      'read -> "\\n"',
      'set "torus-e2e" -> "torus-e2e\\n"',
      'read -> "torus-e2e\\n"',
      `read (broadcast) -> "${SHELF}.${SLOT}\\ttorus-e2e\\n"`,
      'test "torus-e2e" -> "torus-e2e\\n"',
      // No reply: the strings differ.
      'test "torus" -> ""',
      'prefix "torus" -> "torus-e2e\\n"',
      'prefix "e2e" -> ""',
      // AoE error 4 (config string present), which aoecfg prints as *badcfg*; nothing changes.
      'set "other" -> "*badcfg*\\n"',
      'read -> "torus-e2e\\n"',
      'fset "other" -> "other\\n"',
      'read -> "other\\n"',
    ]);
    console.log(`aoecfg transcript:\n  ${transcript.join("\n  ")}`);
    await stopTorus(torus);
  },
);

await toolsTest(
  "aoe tools: tshark decodes a whole session with torus aoe: well formed, every request " +
    "answered with its tag, no reply under 60 bytes",
  ["tshark", "aoeping", "aoecfg"],
  async (lab) => {
    const link = await makeLink(lab);
    await using dir = await dataDirWithVolume();
    const capture = `${dir.path}/session.pcapng`;
    const interfaceName = link.pair.b.name;
    // Started first, so the capture has the target's start-up advertisement too.
    await using tshark = new RunningChild("tshark", lab, null, [
      "tshark",
      "-i",
      interfaceName,
      "-f",
      "ether proto 0x88a2",
      "-w",
      capture,
    ], "SIGINT");
    await tshark.waitFor(/Capturing on/, 15_000);
    await using torus = await startTorusAoe(lab, link, dir.path);

    // A generous timeout: a retransmitted request would be a second request with the same tag.
    const initiator = new AoeInitiator(PacketFramePort.open(interfaceName), { timeoutMs: 3000 });
    let requestsSent: number;
    try {
      const found = await initiator.discover({ timeoutMs: 300 });
      assert.equal(found.length, 1, "one target on the link");
      const info = found[0]!;
      assert.equal((await initiator.config(info, ConfigCommand.Read))?.configString.length, 0);
      await initiator.config(info, ConfigCommand.Set, encoder.encode("tshark"));
      const read = await initiator.config(info, ConfigCommand.Read);
      assert.equal(decoder.decode(read?.configString), "tshark");
      assert.equal((await initiator.identify(info)).lba48Sectors, VOLUME_SECTORS);
      for (const [lba, sectors, lba48] of [[100, 5, false], [70_000, 4, true]] as const) {
        const data = randomSectors(sectors);
        await initiator.writeSectors(info, lba, data, { lba48 });
        for (const readLba48 of [false, true]) {
          const back = await initiator.readSectors(info, lba, sectors, { lba48: readLba48 });
          assert.deepEqual(back, data, `${sectors} sectors at ${lba}`);
        }
      }
      await initiator.flush(info, { ext: false });
      await initiator.flush(info);
      assert.equal(await initiator.checkPowerMode(info), 0xff);
      const unknown = await initiator.ata(info, { command: UNKNOWN_ATA_COMMAND });
      assert.deepEqual(
        [unknown.status, unknown.error],
        [AtaStatus.DeviceReady | AtaStatus.Error, AtaErrorBit.Abort],
        "an unknown ATA command is aborted",
      );
      assert.deepEqual(initiator.violations, []);
      assert.equal(initiator.stats.retransmits, 0, "no request was sent twice");
      requestsSent = initiator.stats.requestsSent;
    } finally {
      await initiator.close();
    }
    const address = [String(SHELF), String(SLOT), interfaceName];
    await toolOk(["aoeping", "-i", "-s", String(AOEPING_TIMEOUT_S), ...address]);
    assert.equal(await toolOk(["aoecfg", "-t", "2", ...address]), "tshark\n");

    // dumpcap hands over what it captured in blocks every quarter second or so: what is still
    // in the kernel's ring when it is told to stop is lost.
    await delay(1000);
    const stopped = await tshark.stop("SIGINT");
    assert.equal(stopped.code, 0, `tshark:\n${tshark.output}`);
    const counted = /(\d+) packets? captured/.exec(tshark.output);
    assert.ok(counted, `tshark printed no packet count:\n${tshark.output}`);
    await stopTorus(torus);

    const [frames, expert] = await Promise.all([
      decodeCapture(capture),
      // Only printed: decodeCapture has every frame's expert severities, checked below.
      toolOk(["tshark", "-r", capture, "-q", "-z", "expert"]),
    ]);
    assert.equal(frames.length, Number(counted[1]), "tshark read every frame it captured");
    assert.deepEqual(captureProblems(frames), []);
    // Every request the initiator, aoeping (config, IDENTIFY) and aoecfg sent was captured.
    const requests = frames.filter((f) => !f.response);
    assert.equal(requests.length, requestsSent + 3, "requests captured");
    assert.ok(requests.every((f) => f.source === link.initiatorMac));
    // The session covers what the test meant it to, in the forms meant.
    const ataRequests = (command: number) => requests.filter((f) => f.ataCommand === command);
    for (
      const command of [
        AtaCommand.IdentifyDevice,
        AtaCommand.ReadSectors,
        AtaCommand.ReadSectorsExt,
        AtaCommand.WriteSectors,
        AtaCommand.WriteSectorsExt,
        AtaCommand.FlushCache,
        AtaCommand.FlushCacheExt,
        AtaCommand.CheckPowerMode,
        UNKNOWN_ATA_COMMAND,
      ]
    ) {
      assert.ok(
        ataRequests(command).length > 0,
        `a request for ATA command 0x${command.toString(16)}`,
      );
    }
    // The E flag (LBA48) is set on the EXT forms only.
    const extCommands: readonly number[] = [AtaCommand.ReadSectorsExt, AtaCommand.WriteSectorsExt];
    const lba28Commands: readonly number[] = [AtaCommand.ReadSectors, AtaCommand.WriteSectors];
    for (const f of requests) {
      if (f.ataCommand === null) continue;
      if (extCommands.includes(f.ataCommand)) assert.ok(f.lba48Flag, `${f.info} has E`);
      if (lba28Commands.includes(f.ataCommand)) assert.ok(!f.lba48Flag, `${f.info} lacks E`);
    }
    const aborted = frames.filter((f) => f.response && f.ataCommand === UNKNOWN_ATA_COMMAND);
    assert.deepEqual(
      aborted.map((f) => [f.ataStatus, f.ataError]),
      [[AtaStatus.DeviceReady | AtaStatus.Error, AtaErrorBit.Abort]],
      "tshark sees the unknown command aborted",
    );
    assert.ok(frames.every((f) => !f.errorFlag), "no AoE error in this session");

    const responses = frames.filter((f) => f.response);
    console.log(
      `tshark: ${frames.length} frames (${requests.length} requests, ${responses.length} ` +
        `responses of ${Math.min(...responses.map((f) => f.length))}..` +
        `${Math.max(...responses.map((f) => f.length))} bytes), no malformed frame, expert ` +
        `info: ${expert.trim() === "" ? "none" : `\n${expert.trim()}`}\n${summarize(frames)}`,
    );
  },
);
