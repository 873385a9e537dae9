/**
 * Network namespaces and veth pairs for tests that need several hosts on one machine (AoE over a
 * raw Ethernet link between a target and an initiator), through iproute2's `ip`.
 *
 * Invariants:
 * - Everything made here is named after this process and module instance: namespaces
 *   `trs-PID-TN`, interfaces `trsP-TNa` / `trsP-TNb` (P: the pid in base 36, as interface
 *   names have 15 bytes at most; T: a random tag of this module instance, because test modules
 *   run with `--parallel` share one process; N: a counter). Parallel test runs never collide,
 *   and what a killed run left behind is recognised by its dead pid and removed by
 *   {@link netnsAvailable} (only names of this pattern whose process is gone).
 * - A {@link NetnsLab} removes everything it made when disposed (`await using`), also when the
 *   test failed: first the processes it started (killed and reaped), then its veth pairs, then
 *   its namespaces. Nothing made outside it is touched.
 * - No IP address is ever assigned: interfaces are brought up with `addrgenmode none`, so even
 *   a veth in the test's own namespace gets no IPv6 link-local address (AoE needs none).
 * @module
 */

import { withinMs } from "./deadlines.ts";

/** Whether tests can make namespaces and veth pairs here, and if not, why. */
export type NetnsCheck = { available: true } | { available: false; reason: string };

/** One end of a veth pair: its name and the namespace it is in (null: the test's own). */
export interface VethEnd {
  readonly name: string;
  readonly namespace: string | null;
}

/** A veth pair: a frame sent on one end arrives on the other. */
export interface VethPair {
  readonly a: VethEnd;
  readonly b: VethEnd;
}

/** Where the ends of a new veth pair go, and their MTU (default: the kernel's 1500). */
export interface VethOptions {
  readonly namespaceA?: string;
  readonly namespaceB?: string;
  readonly mtu?: number;
}

const decoder = new TextDecoder();
/** The pid in base 36: at most 5 characters for any pid Linux hands out (up to 2^22). */
const pidText = Deno.pid.toString(36);
/**
 * Tags the names of this module instance: modules run with `--parallel` share the process, so
 * the pid alone would not tell their names apart (one could delete a pair another made under a
 * name it had used before). Should two instances draw the same tag, {@link withFreshId} still
 * keeps the names they make distinct.
 */
const instanceTag = (crypto.getRandomValues(new Uint16Array(1))[0]! % 1296).toString(36)
  .padStart(2, "0");
/** Numbers the namespaces and pairs of every lab of this module instance. */
let nextId = 0;
const ID_ATTEMPTS_MAX = 100;
/** How long a new veth end may take to be up for traffic. */
const CARRIER_WAIT_MS = 5000;
let availability: Promise<NetnsCheck> | null = null;

/**
 * Whether this process may make namespaces and veth pairs (root, iproute2 installed, a kernel
 * that allows both), found by making and removing one of each; computed once per module. Also
 * removes what killed test runs left behind.
 */
export function netnsAvailable(): Promise<NetnsCheck> {
  availability ??= probe();
  return availability;
}

async function probe(): Promise<NetnsCheck> {
  if (Deno.build.os !== "linux") return { available: false, reason: "needs Linux" };
  if (Deno.uid() !== 0) {
    return { available: false, reason: "needs root (network namespaces, AF_PACKET)" };
  }
  try {
    await removeLeftovers();
    await using lab = new NetnsLab();
    const namespace = await lab.addNamespace();
    await lab.addVethPair({ namespaceA: namespace, namespaceB: namespace });
  } catch (error) {
    const why = error instanceof Deno.errors.NotFound ? "iproute2 (`ip`) is not installed" : error;
    return { available: false, reason: `cannot make a namespace and a veth pair: ${why}` };
  }
  return { available: true };
}

/** The reason to print and put in a skipped test's name, or null when netns tests can run. */
export async function netnsSkipReason(): Promise<string | null> {
  const check = await netnsAvailable();
  return check.available ? null : check.reason;
}

/** Runs `ip ARGS`; its stdout, or an Error quoting its stderr. */
export async function ip(args: readonly string[]): Promise<string> {
  const output = await new Deno.Command("ip", { args: [...args], stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(`ip ${args.join(" ")} failed: ${decoder.decode(output.stderr).trim()}`);
  }
  return decoder.decode(output.stdout);
}

/** `-n NAMESPACE` for `ip` when the end is in another namespace. */
function inNamespace(namespace: string | null): string[] {
  return namespace === null ? [] : ["-n", namespace];
}

/** What `ip link show` says about an interface. */
export interface LinkInfo {
  readonly mac: string;
  readonly mtu: number;
}

/** The MAC address (`aa:bb:...`) and MTU of `end`, from `ip -j link show`. */
export async function linkInfo(end: VethEnd): Promise<LinkInfo> {
  const json = await ip([...inNamespace(end.namespace), "-j", "link", "show", "dev", end.name]);
  const [link] = JSON.parse(json) as [{ address: string; mtu: number }];
  return { mac: link.address, mtu: link.mtu };
}

/** Namespaces, veth pairs and processes made for one test; see the module doc. */
export class NetnsLab implements AsyncDisposable {
  readonly #namespaces: string[] = [];
  /** One end of each pair: deleting it deletes both. */
  readonly #pairEnds: VethEnd[] = [];
  readonly #children: Deno.ChildProcess[] = [];

  /** Makes a new namespace with its loopback up; returns its name. */
  async addNamespace(): Promise<string> {
    const name = await withFreshId(async (id) => {
      const name = `trs-${Deno.pid}-${id}`;
      await ip(["netns", "add", name]);
      return name;
    });
    this.#namespaces.push(name);
    await ip(["-n", name, "link", "set", "dev", "lo", "up"]);
    return name;
  }

  /** Makes a veth pair with its ends in the given namespaces (default: this one), both up. */
  async addVethPair(options: VethOptions = {}): Promise<VethPair> {
    const { a, b } = await withFreshId(async (id) => {
      const a = { name: `trs${pidText}-${id}a`, namespace: options.namespaceA ?? null };
      const b = { name: `trs${pidText}-${id}b`, namespace: options.namespaceB ?? null };
      const peer = ["peer", "name", b.name, ...moveTo(b)];
      await ip(["link", "add", a.name, ...moveTo(a), "type", "veth", ...peer]);
      return { a, b };
    });
    this.#pairEnds.push(a);
    for (const end of [a, b]) await bringUp(end, options.mtu);
    for (const end of [a, b]) await waitForCarrier(end);
    return { a, b };
  }

  /** Runs `command` inside `namespace` (`ip netns exec`) and waits for it. */
  run(namespace: string, command: readonly string[]): Promise<Deno.CommandOutput> {
    return new Deno.Command("ip", {
      args: ["netns", "exec", namespace, ...command],
      stdout: "piped",
      stderr: "piped",
    }).output();
  }

  /**
   * Starts `command` inside `namespace` (null: this namespace) with piped stdin and stdout
   * (stderr goes to the test's); it is killed at cleanup if still running.
   */
  spawn(namespace: string | null, command: readonly string[]): Deno.ChildProcess {
    const [program, ...args] = namespace === null
      ? command
      : ["ip", "netns", "exec", namespace, ...command];
    const child = new Deno.Command(program!, {
      args,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#children.push(child);
    return child;
  }

  /** Removes everything this lab made (see the module doc); throws if something stays. */
  async cleanup(): Promise<void> {
    const failures: unknown[] = [];
    for (const child of this.#children.splice(0)) await stop(child);
    for (const end of this.#pairEnds.splice(0)) {
      await deleteLink(end).catch((error) => failures.push(error));
    }
    for (const namespace of this.#namespaces.splice(0)) {
      await ip(["netns", "delete", namespace]).catch((error) => failures.push(error));
    }
    if (failures.length > 0) throw new AggregateError(failures, "netns cleanup left things");
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.cleanup();
  }
}

/** Makes something named after the next free id (base 36, to fit 15-byte interface names). */
async function withFreshId<T>(make: (id: string) => Promise<T>): Promise<T> {
  for (let attempt = 1;; attempt++) {
    try {
      return await make(`${instanceTag}${(nextId++).toString(36)}`);
    } catch (error) {
      if (attempt >= ID_ATTEMPTS_MAX || !/File exists/.test(String(error))) throw error;
    }
  }
}

function moveTo(end: VethEnd): string[] {
  return end.namespace === null ? [] : ["netns", end.namespace];
}

async function bringUp(end: VethEnd, mtu: number | undefined): Promise<void> {
  const link = [...inNamespace(end.namespace), "link", "set", "dev", end.name];
  // Before up: no IPv6 link-local address, so the test assigns no IP address anywhere.
  await ip([...link, "addrgenmode", "none"]);
  if (mtu !== undefined) await ip([...link, "mtu", String(mtu)]);
  await ip([...link, "up"]);
}

/**
 * Waits until the kernel has seen `end`'s carrier come on. The end brought up first gets its
 * carrier when its peer comes up, but its transmit queue is only switched on afterwards, by the
 * kernel's link watcher: until then it silently drops what it is given to send (seen as the
 * first frames of a test lost on a busy machine, with the end's TX dropped counter at 1). The
 * link watcher sets the operational state to UP just before it switches the queue on, in the same
 * step under the same lock.
 */
async function waitForCarrier(end: VethEnd): Promise<void> {
  const deadlineMs = performance.now() + CARRIER_WAIT_MS;
  for (;;) {
    const json = await ip([...inNamespace(end.namespace), "-j", "link", "show", "dev", end.name]);
    const [link] = JSON.parse(json) as [{ operstate: string }];
    if (link.operstate === "UP") return;
    if (performance.now() > deadlineMs) {
      throw new Error(`${end.name} is still ${link.operstate} after ${CARRIER_WAIT_MS} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Deletes a veth pair by one end; a pair already gone (the test deleted it) is fine. */
async function deleteLink(end: VethEnd): Promise<void> {
  try {
    await ip([...inNamespace(end.namespace), "link", "delete", "dev", end.name]);
  } catch (error) {
    const gone = /Cannot find device|does not exist|No such file/.test(String(error));
    if (!gone) throw error;
  }
}

/** Kills a child that is still running and reaps it. */
async function stop(child: Deno.ChildProcess): Promise<void> {
  try {
    child.kill("SIGKILL");
  } catch {
    // It had exited already.
  }
  await child.status;
}

/** Whether a process with this pid exists (pids of a dead test run are stale). */
function processExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Removes namespaces and interfaces named by this module's pattern whose process is gone. */
async function removeLeftovers(): Promise<void> {
  for (const line of (await ip(["netns", "list"])).split("\n")) {
    const match = /^(trs-(\d+)-[0-9a-z]+)\b/.exec(line);
    if (match && !processExists(Number(match[2]))) {
      // Another test process may be removing the same leftover at this moment.
      await ip(["netns", "delete", match[1]!]).catch(() => {});
    }
  }
  for (const line of (await ip(["-o", "link", "show"])).split("\n")) {
    const match = /^\d+: (trs([0-9a-z]+)-[0-9a-z]+[ab])[@:]/.exec(line);
    if (match && !processExists(parseInt(match[2]!, 36))) {
      await deleteLink({ name: match[1]!, namespace: null }).catch(() => {});
    }
  }
}

/**
 * Registers a test that gets a fresh {@link NetnsLab}, cleaned up however the test ends; when
 * namespaces are not available here the test is ignored with the reason in its name, and the
 * reason is printed once.
 */
export async function netnsTest(
  name: string,
  fn: (lab: NetnsLab) => Promise<void>,
  options: { timeoutMs?: number } = {},
): Promise<void> {
  const reason = await netnsSkipReason();
  if (reason !== null && !skipPrinted) {
    skipPrinted = true;
    console.log(`netns tests skipped: ${reason}`);
  }
  Deno.test({
    name: reason === null ? name : `${name} (skipped: ${reason})`,
    ignore: reason !== null,
    fn: async () => {
      await using lab = new NetnsLab();
      // A frame that never comes must fail the test, not hang the run; removing the links
      // (dispose) then ends the receives still waiting.
      const timeoutMs = options.timeoutMs ?? NETNS_TEST_TIMEOUT_MS;
      await withinMs(fn(lab), timeoutMs, () => `test "${name}" did not finish`);
    },
  });
}

let skipPrinted = false;
/** How long a {@link netnsTest} may run. */
const NETNS_TEST_TIMEOUT_MS = 30_000;
