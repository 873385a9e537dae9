/**
 * Debian packages the tests need, installed by `npm test` when missing (apt-get, as root), so a
 * fresh machine needs no manual step. Tests that need a tool still check for it and are skipped
 * with the reason when it is absent (not root, no network).
 * @module
 */

/** A command the tests run and the Debian package that provides it. */
export interface Requirement {
  command: string;
  debianPackage: string;
}

/** Everything the test suite uses. */
export const requiredPackages: readonly Requirement[] = [
  { command: "etcd", debianPackage: "etcd-server" },
  { command: "ip", debianPackage: "iproute2" },
  { command: "openssl", debianPackage: "openssl" },
  { command: "strace", debianPackage: "strace" },
  { command: "script", debianPackage: "bsdutils" },
  // Third-party NBD clients and servers for the interop tests of src/block/nbd.
  { command: "nbdinfo", debianPackage: "libnbd-bin" },
  { command: "nbdcopy", debianPackage: "libnbd-bin" },
  { command: "qemu-img", debianPackage: "qemu-utils" },
  { command: "qemu-io", debianPackage: "qemu-utils" },
  { command: "qemu-nbd", debianPackage: "qemu-utils" },
  { command: "nbdkit", debianPackage: "nbdkit" },
  { command: "fio", debianPackage: "fio" },
  // A third-party AoE target and tools, and a dissector, for the interop tests of src/block/aoe.
  { command: "vblade", debianPackage: "vblade" },
  { command: "aoeping", debianPackage: "aoetools" },
  { command: "aoecfg", debianPackage: "aoetools" },
  { command: "tshark", debianPackage: "tshark" },
];

/**
 * Answers to the questions packages ask while installing (debconf), so apt-get never waits for
 * a terminal: tshark asks whether non-root users may capture (no).
 */
const debconfAnswers: Readonly<Record<string, string>> = {
  tshark: "wireshark-common wireshark-common/install-setuid boolean false\n",
};

/** Whether `command` is on PATH. */
export function hasCommand(command: string): boolean {
  const path = Deno.env.get("PATH") ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
  for (const dir of path.split(":")) {
    try {
      const info = Deno.statSync(`${dir}/${command}`);
      if (info.isFile && ((info.mode ?? 0) & 0o111) !== 0) return true;
    } catch {
      // not in this directory
    }
  }
  return false;
}

/** Runs `args` without a terminal's debconf front end, `stdin` (if given) as its input. */
async function run(args: string[], stdin?: string): Promise<boolean> {
  const child = new Deno.Command(args[0]!, {
    args: args.slice(1),
    env: { DEBIAN_FRONTEND: "noninteractive" },
    stdin: stdin === undefined ? "inherit" : "piped",
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin));
    await writer.close();
  }
  return (await child.status).success;
}

/** Preseeds the debconf answers of the packages about to be installed (see debconfAnswers). */
async function preseed(packages: readonly string[]): Promise<void> {
  const answers = packages.flatMap((name) => debconfAnswers[name] ?? []);
  if (answers.length === 0 || !hasCommand("debconf-set-selections")) return;
  if (!await run(["debconf-set-selections"], answers.join(""))) {
    console.error("tests: debconf-set-selections failed; apt-get may ask questions");
  }
}

/** How long apt-get waits for a dpkg lock another process holds. */
const APT_LOCK_WAIT_SECONDS = 600;

/** Installs the packages of missing commands with apt-get when running as root. */
export async function ensurePackages(requirements: readonly Requirement[]): Promise<void> {
  const missing = requirements.filter((r) => !hasCommand(r.command));
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((r) => r.debianPackage))];
  if (Deno.uid() !== 0 || !hasCommand("apt-get")) {
    console.error(
      `tests: missing ${packages.join(" ")}; install with: sudo apt-get install -y ${
        packages.join(" ")
      } (tests that need them are skipped)`,
    );
    return;
  }
  console.error(`tests: installing ${packages.join(" ")} with apt-get`);
  await preseed(packages);
  // A dpkg lock another process holds (another installer, the system's apt timers) is waited
  // for, not failed on.
  const waitForLock = ["-o", `DPkg::Lock::Timeout=${APT_LOCK_WAIT_SECONDS}`];
  const install = ["apt-get", ...waitForLock, "install", "-y", "--no-install-recommends"];
  install.push(...packages);
  if (await run(install)) return;
  // A fresh machine may have no package lists yet.
  if (await run(["apt-get", ...waitForLock, "update"]) && await run(install)) return;
  console.error(`tests: apt-get could not install ${packages.join(" ")}`);
}

/** A test that needs `tools`; skipped (and named so) when one is missing. */
export function toolTest(name: string, tools: string[], fn: () => Promise<void>): void {
  const missing = tools.filter((tool) => !hasCommand(tool));
  Deno.test({
    name: missing.length ? `${name} [skipped: ${missing.join(", ")} not installed]` : name,
    ignore: missing.length > 0,
    fn,
  });
}
