/**
 * `torus ctl` command functions with captured output over the in-memory store: every command's
 * output and every bad input's one-line error and exit code. (tests/cli/ctl_e2e_test.ts runs the
 * real program on the real backends.)
 */

import assert from "node:assert/strict";
import {
  type Command,
  type Env,
  type Io,
  type KvDrivers,
  openMetadata,
  runCommand,
} from "../../cli/mod.ts";
import { ManualClock } from "../../core/mod.ts";
import { createMetadataService, MemoryKvStore, type MetadataService } from "../../metadata/mod.ts";
import { emptyPeerInfo, type PeerInfo } from "../../models/mod.ts";
import { strerror } from "../../sys/mod.ts";
import { commands } from "../mod.ts";
import type { CtlDeps } from "./common.ts";
import { ctlCommand } from "./mod.ts";

// `ctl init` takes the data-dir lock through libc, whose handle stays open for the life of the
// process: open it before the tests so the resource sanitizer does not blame the first one.
strerror(0);

/** Every test closes what it opens: no timer, file or store may outlive it. */
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: true, sanitizeResources: true, fn });
}

interface Output {
  code: number;
  out: string;
  err: string;
}

interface Harness extends AsyncDisposable {
  /** Runs `torus ctl ARGS --data-dir DIR`. */
  ctl(...args: string[]): Promise<Output>;
  /** Runs without the data-dir flag. */
  raw(...args: string[]): Promise<Output>;
  /** The service on the same store (default prefix), as a node would use it. */
  mds: MetadataService;
  store: MemoryKvStore;
  home: string;
  dataDir: string;
  terminal: { interactive: boolean; answers: string[] };
  clock: ManualClock;
  /** Paths the embedded driver was asked to open, and etcd endpoints. */
  opened: string[];
}

async function harness(): Promise<Harness> {
  const store = new MemoryKvStore();
  const home = await Deno.makeTempDir({ prefix: "torus-ctl-" });
  const dataDir = `${home}/data`;
  const clock = new ManualClock(1_700_000_000_000);
  const opened: string[] = [];
  const drivers: KvDrivers = {
    openEtcd: (options) => {
      opened.push(`etcd ${options.endpoints.join(",")}`);
      return Promise.resolve(store.connection());
    },
    async openEmbedded(options) {
      opened.push(options.path);
      await Deno.writeFile(options.path, new Uint8Array(0), { append: true });
      return store.connection();
    },
  };
  const env: Env = { get: (name) => (name === "HOME" ? home : undefined) };
  const terminal = { interactive: false, answers: [] as string[] };
  const deps: CtlDeps = {
    openMetadata: (flags, options) => openMetadata(flags, { ...options, env, clock, drivers }),
    env,
    clock,
    terminal: {
      isInteractive: () => terminal.interactive,
      readLine: () => Promise.resolve(terminal.answers.shift() ?? null),
    },
    rootCommands: () => commands,
  };
  const ctl: Command = ctlCommand(deps);
  const raw = async (...args: string[]) => {
    const output = { code: 0, out: "", err: "" };
    const io: Io = {
      stdout: (text) => void (output.out += text),
      stderr: (text) => void (output.err += text),
    };
    output.code = await runCommand(ctl, args, io);
    return output;
  };
  const mds = createMetadataService(store.connection(), { clock });
  return {
    ctl: (...args) => raw(...args, "--data-dir", dataDir),
    raw,
    mds,
    store,
    home,
    dataDir,
    terminal,
    clock,
    opened,
    async [Symbol.asyncDispose]() {
      await mds.close();
      await store.close();
      await Deno.remove(home, { recursive: true });
    },
  };
}

function ok(output: Output): string {
  assert.equal(output.code, 0, `expected success: ${output.err}`);
  return output.out;
}

function fails(output: Output, code: 1 | 2, pattern: RegExp): void {
  assert.equal(output.code, code, `expected exit ${code}: ${output.out}${output.err}`);
  const lines = output.err.trimEnd().split("\n");
  assert.equal(lines.length, code === 2 ? 2 : 1, output.err);
  assert.match(lines[0]!, pattern);
}

function node(uuid: string, port: number, totalBlocks: number, usedBlocks: number): PeerInfo {
  return {
    ...emptyPeerInfo(uuid),
    address: `tdp://10.0.0.${port % 10}:${port}`,
    totalBlocks: BigInt(totalBlocks),
    usedBlocks: BigInt(usedBlocks),
  };
}

test("ctl init writes the settings once; --view shows them; bad values fail", async () => {
  await using h = await harness();
  fails(await h.ctl("init", "--view"), 1, /cluster not initialised: run `torus ctl init`/);
  fails(await h.ctl("init", "--block-size", "1.5.5"), 1, /invalid size "1\.5\.5"/);
  fails(await h.ctl("init", "--block-size", "100"), 1, /block size 100 must be a multiple of 512/);
  fails(await h.ctl("init", "--block-spec", "zip"), 1, /zip/);
  assert.deepEqual(h.opened, [], "bad input opens no store");
  assert.match(
    ok(await h.ctl("init", "--block-size", "1MiB", "--block-spec", "rep=2,crc")),
    /^Initialised torus in embedded store .*kv\.sqlite: block size 1 MiB, block spec rep=2,crc,base, ring ketama \(replication 2\)\n$/,
  );
  assert.equal((await Deno.stat(`${h.dataDir}/metadata`)).mode! & 0o777, 0o700);
  fails(
    await h.ctl("init"),
    1,
    /cluster already initialised under \/github\.com\/coreos\/torus\/ \(exists\)$/,
  );
  assert.equal(
    ok(await h.ctl("init", "--view")),
    "Block size: 1048576 bytes (1 MiB)\nBlock spec: rep=2,crc,base\n",
  );
  const ring = await h.mds.cluster.getRing();
  assert.deepEqual([ring.type, ring.version, ring.replicationFactor, ring.peers], [4, 1, 2, []]);
  fails(await h.ctl("init", "extra"), 2, /expected no arguments/);
});

test("ctl init --no-ring starts with an empty ring", async () => {
  await using h = await harness();
  assert.match(ok(await h.ctl("init", "--no-ring")), /ring empty\n$/);
  const ring = await h.mds.cluster.getRing();
  assert.deepEqual([ring.type, ring.version, ring.replicationFactor, ring.peers], [0, 1, 0, []]);
});

test("every metadata command on an uninitialised data dir says so", async () => {
  await using h = await harness();
  for (
    const args of [
      ["volume", "list"],
      ["volume", "create-block", "v", "1GiB"],
      ["volume", "delete", "v"],
      ["list-peers"],
      ["peer", "add", "x"],
      ["ring", "get"],
      ["ring", "set-replication", "1"],
      ["wipe", "--yes-i-am-sure"],
    ]
  ) {
    fails(
      await h.ctl(...args),
      1,
      /^torus ctl .*: cluster not initialised: run `torus ctl init` \(not_exist\)$/,
    );
  }
});

test("ctl volume create-block, list and delete, with every bad input", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  assert.equal(
    ok(await h.ctl("volume", "create-block", "db", "20GB")),
    'Created block volume "db" (id 2, 19 GiB)\n',
  );
  assert.equal(
    ok(await h.ctl("block", "create", "a", "512KiB")),
    'Created block volume "a" (id 3, 512 KiB)\n',
  );
  fails(
    await h.ctl("volume", "create-block", "db", "1GiB"),
    1,
    /volume "db" already exists \(exists\)$/,
  );
  fails(await h.ctl("volume", "create-block", "x", "-5"), 2, /Unknown option '-5'/);
  fails(await h.ctl("volume", "create-block", "x", "12XB"), 1, /invalid size "12XB"/);
  fails(await h.ctl("volume", "create-block", "x", "0"), 1, /positive number of bytes/);
  fails(await h.ctl("volume", "create-block", "a/b", "1GiB"), 1, /may not contain/);
  fails(await h.ctl("volume", "create-block", "x"), 2, /expected NAME SIZE, got 1/);
  fails(await h.ctl("volume", "delete"), 2, /expected NAME/);
  fails(await h.ctl("volume", "delete", "zzz"), 1, /volume "zzz" not found \(not_exist\)$/);
  fails(await h.ctl("volume", "frob"), 2, /unknown command "frob"/);
  fails(await h.ctl("volume", "list", "--bogus"), 2, /Unknown option '--bogus'/);
  assert.equal(
    ok(await h.ctl("volume", "list")),
    "VOLUME NAME  SIZE     TYPE   STATUS\na            512 KiB  block  free\ndb           19 GiB   block  free\n",
  );
  assert.equal(
    ok(await h.ctl("volume", "list", "--si")).split("\n")[2],
    "db           20 GB   block  free",
  );
  const lease = await h.mds.leases.grant(60_000);
  await h.mds.blockVolumes.lock(2, { uuid: "client-1", lease });
  assert.equal(
    ok(await h.ctl("volume", "list", "--csv")),
    "VOLUME NAME,SIZE,TYPE,STATUS\na,512 KiB,block,free\ndb,19 GiB,block,in-use\n",
  );
  const json = JSON.parse(ok(await h.ctl("volume", "list", "--json")));
  assert.deepEqual(json[1], {
    id: 2,
    name: "db",
    type: "block",
    sizeBytes: 20e9,
    status: "in-use",
    holder: "client-1",
  });
  fails(
    await h.ctl("volume", "delete", "db"),
    1,
    /volume "db" is in use \(locked by client-1\); close it first \(locked\)$/,
  );
  await h.mds.leases.revoke(lease);
  assert.equal(ok(await h.ctl("volume", "delete", "db")), 'Deleted volume "db"\n');
  assert.doesNotMatch(ok(await h.ctl("volume", "list")), /db/);
});

async function registerNodes(h: Harness) {
  const lease = await h.mds.leases.grant(60_000);
  await h.mds.peers.registerPeer(node("uuid-1", 40001, 2048, 512), lease);
  await h.mds.peers.registerPeer(node("uuid-2", 40002, 2048, 0), lease);
  await h.mds.peers.registerPeer({ ...emptyPeerInfo("client-9") }, lease);
  return lease;
}

test("list-peers shows members, available nodes, dead members and the footer", async () => {
  await using h = await harness();
  ok(await h.ctl("init", "--block-size", "1MiB"));
  await registerNodes(h);
  ok(await h.ctl("peer", "add", "uuid-1"));
  ok(await h.ctl("peer", "add", "--force", "uuid-dead"));
  await h.clock.advance(5_000);
  const rebalancing = {
    ...node("uuid-2", 40002, 2048, 0),
    rebalanceInfo: { rebalancing: true, lastRebalanceBlocks: 100n, lastRebalanceFinish: 0n },
  };
  const lease = await h.mds.leases.grant(60_000);
  await h.mds.peers.registerPeer(rebalancing, lease);
  await h.clock.advance(2_000);
  assert.equal(
    ok(await h.ctl("list-peers")),
    [
      "ADDRESS               UUID       SIZE   USED     MEMBER  UPDATED        REB/REP DATA",
      "tdp://10.0.0.1:40001  uuid-1     2 GiB  512 MiB  OK      7 seconds ago  0 B/sec",
      "tdp://10.0.0.2:40002  uuid-2     2 GiB  0 B      Avail   2 seconds ago  0 B/sec",
      "                      uuid-dead  ???    ???      DOWN    Missing",
      "Balanced: false Usage: 12.50%",
      "",
    ].join("\n"),
  );
  const csv = ok(await h.ctl("peer", "list", "--csv")).split("\n");
  assert.equal(csv[0], "ADDRESS,UUID,SIZE,USED,MEMBER,UPDATED,REB/REP DATA");
  assert.equal(csv.length, 5);
  const json = JSON.parse(ok(await h.ctl("list-peers", "--json", "--si")));
  assert.equal(json.balanced, false);
  assert.equal(json.usagePercent, 12.5);
  assert.deepEqual(json.peers.map((p: { member: string }) => p.member), ["OK", "Avail", "DOWN"]);
  fails(await h.ctl("list-peers", "x"), 2, /takes no arguments/);
});

test("peer add and remove resolve addresses and UUIDs; unknown peers need --force", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  fails(await h.ctl("peer", "add"), 2, /name at least one peer/);
  fails(await h.ctl("peer", "add", "uuid-1", "--all-peers"), 2, /not both/);
  fails(
    await h.ctl("peer", "add", "client-9"),
    1,
    /peer client-9 is not currently registered; to add it anyway use --force/,
  );
  assert.equal(
    ok(await h.ctl("peer", "add", "10.0.0.1:40001")),
    "Ring version 2: ketama, replication 2, 1 member(s)\n",
  );
  fails(await h.ctl("peer", "add", "uuid-1"), 1, /\(exists\)$/);
  assert.match(
    ok(await h.ctl("peer", "add", "--all-peers")),
    /version 3: ketama, replication 2, 2 member/,
  );
  fails(await h.ctl("peer", "remove", "uuid-x"), 1, /to remove it anyway use --force/);
  fails(await h.ctl("peer", "remove", "--force", "uuid-x"), 1, /\(not_exist\)$/);
  assert.match(
    ok(await h.ctl("peer", "remove", "tdp://10.0.0.2:40002")),
    /version 4: ketama, replication 2, 1 member/,
  );
  const ring = await h.mds.cluster.getRing();
  assert.deepEqual(ring.peers.map((p) => p.uuid), ["uuid-1"]);
  assert.equal(ring.peers[0]!.totalBlocks, 2048n);
});

test("ring get, set-replication and manual-change check replication and ring types", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  ok(await h.ctl("peer", "add", "--all-peers"));
  const text = ok(await h.ctl("ring", "get"));
  assert.match(text, /^Ring: ketama\nVersion: 2\n/);
  assert.match(text, /uuid-1/);
  const json = JSON.parse(ok(await h.ctl("ring", "get", "--json")));
  assert.deepEqual(json.members.map((m: { uuid: string }) => m.uuid), ["uuid-1", "uuid-2"]);
  fails(await h.ctl("ring", "set-replication", "0"), 1, /at least 1/);
  fails(await h.ctl("ring", "set-replication", "-1"), 2, /Unknown option '-1'/);
  fails(await h.ctl("ring", "set-replication", "1.5"), 1, /whole number/);
  fails(
    await h.ctl("ring", "set-replication", "3"),
    1,
    /replication 3 exceeds the ring's 2 member\(s\)/,
  );
  fails(await h.ctl("ring", "set-replication"), 2, /expected N/);
  assert.equal(
    ok(await h.ctl("ring", "set-replication", "1")),
    "Ring version 3: ketama, replication 1, 2 member(s)\n",
  );
  fails(
    await h.ctl("ring", "manual-change", "--type", "single", "--all-peers"),
    1,
    /exactly 1 peer, got 2/,
  );
  fails(
    await h.ctl("ring", "manual-change", "--type", "union"),
    1,
    /union rings are made during rebalancing/,
  );
  fails(
    await h.ctl("ring", "manual-change", "--type", "empty", "--uuids", "uuid-1"),
    1,
    /an empty ring has no peers/,
  );
  fails(await h.ctl("ring", "manual-change", "--uuids", "uuid-1", "--all-peers"), 2, /not both/);
  fails(
    await h.ctl("ring", "manual-change", "--all-peers", "-r", "3"),
    1,
    /replication 3 exceeds the 2 peer/,
  );
  fails(
    await h.ctl("ring", "manual-change", "--uuids", "client-9"),
    1,
    /peer client-9 is not registered/,
  );
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--type", "single", "--uuids", "uuid-2", "-r", "1")),
    /version 4: single/,
  );
  fails(
    await h.ctl("ring", "set-replication", "1"),
    1,
    /ring type single has no replication to change/,
  );
  fails(await h.ctl("peer", "add", "uuid-1"), 1, /ring type single cannot add peers/);
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--type", "empty", "-r", "1")),
    /version 5: empty, replication 1, 0 member/,
  );
  assert.match(
    ok(await h.ctl("ring", "manual-change")),
    /version 6: ketama, replication 2, 0 member/,
  );
  assert.equal((await h.mds.cluster.getRing()).version, 6);
});

test("wipe refuses without the flag, asks a terminal for YES, keeps outside keys", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await h.store.put("/github.com/coreos/torus-other/k", new TextEncoder().encode("keep"));
  fails(await h.ctl("wipe"), 1, /refusing to wipe all metadata without --yes-i-am-sure/);
  h.terminal.interactive = true;
  h.terminal.answers.push("yes");
  const refused = await h.ctl("wipe", "--yes-i-am-sure");
  assert.equal(refused.code, 1);
  assert.match(
    refused.err,
    /Type YES to continue: torus ctl wipe: wipe aborted: the answer was not YES\n$/,
  );
  assert.equal(await h.mds.cluster.isInitialised(), true);
  h.terminal.answers.push("YES");
  assert.match(
    ok(await h.ctl("wipe", "--yes-i-am-sure")),
    /^Wiped 3 keys under \/github\.com\/coreos\/torus\/\n$/,
  );
  assert.equal(await h.mds.cluster.isInitialised(), false);
  assert.ok(await h.store.get("/github.com/coreos/torus-other/k"));
  h.terminal.interactive = false;
  ok(await h.ctl("init"));
  assert.match(ok(await h.ctl("wipe", "--yes-i-am-sure")), /^Wiped 3 keys/);
});

test("config saves a profile that later commands use; --view prints it", async () => {
  await using h = await harness();
  fails(await h.raw("config", "--view"), 1, /config file .*config\.json does not exist/);
  fails(await h.raw("config"), 1, /nothing to save/);
  fails(await h.raw("config", "--metadata-prefix", "bad"), 1, /must start and end with "\/"/);
  const saved = ok(await h.raw("config", "-C", "etcd-a:2379,etcd-b:2379", "--profile", "prod"));
  assert.equal(saved, `Saved profile "prod" in ${h.home}/.torus/config.json\n`);
  ok(await h.raw("config", "--etcd-ca-file", "/ca.pem", "--profile", "prod"));
  assert.equal(
    ok(await h.raw("config", "--view")),
    '{\n\t"etcd_config": {\n\t\t"prod": {\n\t\t\t"etcd": "etcd-a:2379,etcd-b:2379",\n' +
      '\t\t\t"etcd-ca-file": "/ca.pem"\n\t\t}\n\t}\n}\n',
  );
  ok(await h.raw("init", "--profile", "prod"));
  assert.deepEqual(h.opened, ["etcd etcd-a:2379,etcd-b:2379"]);
  fails(await h.raw("ring", "get", "--profile", "nope"), 1, /profile "nope" is not in config file/);
});

test("metadata flags may come before the noun, as the original's persistent flags", async () => {
  await using h = await harness();
  ok(await h.raw("--data-dir", h.dataDir, "init"));
  ok(await h.raw(`--data-dir=${h.dataDir}`, "volume", "create-block", "v", "1MiB"));
  assert.match(
    ok(await h.raw("--debug", "--data-dir", h.dataDir, "volume", "list")),
    /^VOLUME NAME/,
  );
  fails(await h.raw("--bogus", "volume", "list"), 2, /unknown command "--bogus"/);
});

test("completion bash completes subcommands and flags of every level", async () => {
  await using h = await harness();
  const script = ok(await h.raw("completion", "bash"));
  fails(await h.raw("completion", "zsh"), 2, /only bash/);
  fails(await h.raw("completion"), 2, /expected SHELL/);
  const complete = async (...words: string[]) => {
    const probe = `${script}\nCOMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")})\n` +
      `COMP_CWORD=${words.length - 1}\n_torus\necho "\${COMPREPLY[*]}"\n`;
    const output = await new Deno.Command("bash", { args: ["-c", probe] }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    return new TextDecoder().decode(output.stdout).trim().split(" ").filter((w) => w !== "");
  };
  assert.deepEqual(await complete("torus", "c"), ["ctl"]);
  assert.deepEqual(await complete("torus", "ctl", "vo"), ["volume"]);
  assert.deepEqual(await complete("torus", "ctl", "volume", "c"), ["create-block"]);
  assert.ok((await complete("torus", "ctl", "-C", "h:1", "ring", "")).includes("set-replication"));
  assert.ok((await complete("torus", "ctl", "volume", "list", "--")).includes("--json"));
  assert.ok((await complete("torus", "ctl", "init", "--b")).includes("--block-size"));
});

test("ctl help lists every noun and marks step-4 commands as not implemented", async () => {
  await using h = await harness();
  const help = ok(await h.raw("--help"));
  for (const noun of ["init", "config", "list-peers", "peer", "ring", "volume", "block", "wipe"]) {
    assert.match(help, new RegExp(`\\n  ${noun} `));
  }
  const block = ok(await h.raw("block", "--help"));
  assert.match(block, /snapshot +Create, list, delete, restore snapshots \(not implemented yet\)/);
  fails(
    await h.raw("block", "snapshot", "list", "v"),
    1,
    /not implemented yet \(arrives with step 4/,
  );
  assert.match(ok(await h.raw("version")), /^torus\nVersion: /);
  const noNoun = await h.raw();
  assert.equal(noNoun.code, 2);
  assert.match(noNoun.err, /^Usage: torus ctl <command>/);
});
