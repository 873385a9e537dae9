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
import {
  hasInvisibleOrControl,
  ManualClock,
  randomUuid,
  SeededRandom,
  setLogSink,
} from "../../core/mod.ts";
import {
  createMetadataService,
  encodeU64,
  MemoryKvStore,
  type MetadataService,
} from "../../metadata/mod.ts";
import {
  emptyPeerInfo,
  type PeerInfo,
  PeerInfoCodec,
  RingCodec,
  VolumeCodec,
} from "../../models/mod.ts";
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

/** Node UUIDs of the tests (sorted as numbered). */
const U1 = "1a1a1a1a-0000-4000-8000-000000000001";
const U2 = "2b2b2b2b-0000-4000-8000-000000000002";
const CLIENT = "c1c1c1c1-0000-4000-8000-000000000009";
const DEAD = "deadbeef-0000-4000-8000-00000000dead";
const GONE = "eeeeeeee-0000-4000-8000-0000000000ee";

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
  fails(await h.ctl("volume", "create-block", "x", "-5"), 1, /invalid size "-5": .*negative/);
  fails(await h.ctl("volume", "create-block", "x", "12XB"), 1, /invalid size "12XB"/);
  fails(await h.ctl("volume", "create-block", "x", "0"), 1, /must be more than 0 bytes/);
  fails(
    await h.ctl("volume", "create-block", "a/b", "1GiB"),
    1,
    /invalid volume name "a\/b": a name is 1 to 255 characters from A-Z a-z 0-9 \. _ -, /,
  );
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
    parent: null,
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
  await h.mds.peers.registerPeer(node(U1, 40001, 2048, 512), lease);
  await h.mds.peers.registerPeer(node(U2, 40002, 2048, 0), lease);
  await h.mds.peers.registerPeer({ ...emptyPeerInfo(CLIENT) }, lease);
  return lease;
}

test("list-peers shows members, available nodes, dead members and the footer", async () => {
  await using h = await harness();
  ok(await h.ctl("init", "--block-size", "1MiB"));
  await registerNodes(h);
  ok(await h.ctl("peer", "add", U1));
  ok(await h.ctl("peer", "add", "--force", DEAD));
  await h.clock.advance(5_000);
  const rebalancing = {
    ...node(U2, 40002, 2048, 0),
    rebalanceInfo: {
      rebalancing: true,
      lastRebalanceBlocks: 100n,
      lastRebalanceFinish: 0n,
      ringVersion: 1n,
    },
  };
  const lease = await h.mds.leases.grant(60_000);
  await h.mds.peers.registerPeer(rebalancing, lease);
  await h.clock.advance(2_000);
  assert.equal(
    ok(await h.ctl("list-peers")),
    [
      "ADDRESS               UUID                                  SIZE   USED     MEMBER  UPDATED        REB/REP DATA",
      `tdp://10.0.0.1:40001  ${U1}  2 GiB  512 MiB  OK      7 seconds ago  0 B/sec`,
      `tdp://10.0.0.2:40002  ${U2}  2 GiB  0 B      Avail   2 seconds ago  0 B/sec`,
      `                      ${DEAD}  ???    ???      DOWN    Missing`,
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
  fails(await h.ctl("peer", "add", U1, "--all-peers"), 2, /not both/);
  fails(
    await h.ctl("peer", "add", CLIENT),
    1,
    new RegExp(`peer ${CLIENT} is not currently registered; to add it anyway use --force`),
  );
  assert.equal(
    ok(await h.ctl("peer", "add", "10.0.0.1:40001")),
    "Ring version 2: ketama, replication 2, 1 member(s)\n",
  );
  fails(await h.ctl("peer", "add", U1), 1, /\(exists\)$/);
  fails(await h.ctl("peer", "add", U1.toUpperCase()), 1, /\(exists\)$/);
  assert.match(
    ok(await h.ctl("peer", "add", "--all-peers")),
    /version 3: ketama, replication 2, 2 member/,
  );
  fails(await h.ctl("peer", "remove", GONE), 1, /to remove it anyway use --force/);
  fails(await h.ctl("peer", "remove", "--force", GONE), 1, /\(not_exist\)$/);
  assert.match(
    ok(await h.ctl("peer", "remove", "tdp://10.0.0.2:40002")),
    /version 4: ketama, replication 2, 1 member/,
  );
  const ring = await h.mds.cluster.getRing();
  assert.deepEqual(ring.peers.map((p) => p.uuid), [U1]);
  assert.equal(ring.peers[0]!.totalBlocks, 2048n);
});

test("ring get, set-replication and manual-change check replication and ring types", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  ok(await h.ctl("peer", "add", "--all-peers"));
  const text = ok(await h.ctl("ring", "get"));
  assert.match(text, /^Ring: ketama\nVersion: 2\n/);
  assert.match(text, new RegExp(U1));
  const json = JSON.parse(ok(await h.ctl("ring", "get", "--json")));
  assert.deepEqual(json.members.map((m: { uuid: string }) => m.uuid), [U1, U2]);
  fails(await h.ctl("ring", "set-replication", "0"), 1, /at least 1/);
  fails(await h.ctl("ring", "set-replication", "-1"), 1, /"-1" must be a whole number/);
  fails(await h.ctl("ring", "set-replication", "1.5"), 1, /whole number/);
  fails(
    await h.ctl("ring", "set-replication", "3"),
    1,
    /replication 3 exceeds the 2 member\(s\) of the ketama ring$/,
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
    await h.ctl("ring", "manual-change", "--type", "empty", "--uuids", U1),
    1,
    /an empty ring has no peers/,
  );
  fails(await h.ctl("ring", "manual-change", "--uuids", U1, "--all-peers"), 2, /not both/);
  fails(
    await h.ctl("ring", "manual-change", "--all-peers", "-r", "3"),
    1,
    /replication 3 exceeds the 2 member\(s\) of the ketama ring$/,
  );
  fails(
    await h.ctl("ring", "manual-change", "--uuids", CLIENT),
    1,
    new RegExp(`peer ${CLIENT} is not registered`),
  );
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--type", "single", "--uuids", U2, "-r", "1")),
    /version 4: single/,
  );
  fails(
    await h.ctl("ring", "set-replication", "1"),
    1,
    /ring type single has no replication to change/,
  );
  fails(await h.ctl("peer", "add", U1), 1, /ring type single cannot add peers/);
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--type", "empty", "--yes-i-am-sure")),
    /version 5: empty, replication 0, 0 member/,
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
  // The cluster: global metadata, volume minter, ring, cluster id.
  assert.match(
    ok(await h.ctl("wipe", "--yes-i-am-sure")),
    /^Wiped 4 keys under \/github\.com\/coreos\/torus\/\n$/,
  );
  assert.equal(await h.mds.cluster.isInitialised(), false);
  assert.ok(await h.store.get("/github.com/coreos/torus-other/k"));
  h.terminal.interactive = false;
  ok(await h.ctl("init"));
  assert.match(ok(await h.ctl("wipe", "--yes-i-am-sure")), /^Wiped 4 keys/);
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

test("ctl help lists every noun; snapshots and clones are there", async () => {
  await using h = await harness();
  const help = ok(await h.raw("--help"));
  for (const noun of ["init", "config", "list-peers", "peer", "ring", "volume", "block", "wipe"]) {
    assert.match(help, new RegExp(`\\n  ${noun} `));
  }
  const block = ok(await h.raw("block", "--help"));
  assert.match(block, /snapshot +Create, list, delete and restore snapshots\n/);
  assert.match(block, /clone +Make a new volume from a snapshot/);
  assert.match(ok(await h.raw("volume", "--help")), /resize +Grow a block volume/);
  assert.match(ok(await h.raw("version")), /^torus\nVersion: /);
  const noNoun = await h.raw();
  assert.equal(noNoun.code, 2);
  assert.match(noNoun.err, /^Usage: torus ctl <command>/);
});

/** The ring's member UUIDs and version, as stored. */
async function ringState(h: Harness): Promise<{ version: number; members: string[] }> {
  const ring = await h.mds.cluster.getRing();
  return { version: ring.version, members: ring.peers.map((p) => p.uuid) };
}

function uuids(count: number, seed: number): string[] {
  const random = new SeededRandom(seed);
  return Array.from({ length: count }, () => randomUuid(random));
}

test("dropping every ring member asks like wipe; the confirmed path applies it", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  const twenty = uuids(20, 12);
  ok(await h.ctl("peer", "add", "--force", ...twenty));
  const before = await ringState(h);
  assert.equal(before.members.length, 20);
  const refusal = /refusing to remove every member of the ring without --yes-i-am-sure$/;
  fails(await h.ctl("ring", "manual-change"), 1, refusal);
  fails(await h.ctl("ring", "manual-change", "--type", "empty"), 1, refusal);
  fails(await h.ctl("ring", "manual-change", "--type", "mod", "--all-peers"), 1, refusal);
  // An empty flag value either is refused as such or counts as no UUID: never an empty ring.
  assert.notEqual((await h.ctl("ring", "manual-change", "--uuids", "")).code, 0);
  fails(await h.ctl("peer", "remove", "--force", ...twenty), 1, refusal);
  fails(
    await h.ctl("peer", "remove", "--force", ...twenty.map((u) => u.toUpperCase())),
    1,
    refusal,
  );
  assert.deepEqual(await ringState(h), before, "nothing changed");

  h.terminal.interactive = true;
  h.terminal.answers.push("yes");
  const aborted = await h.ctl("ring", "manual-change", "--yes-i-am-sure");
  assert.equal(aborted.code, 1);
  assert.match(
    aborted.err,
    /^The ring has 20 member\(s\); version 3 leaves the ring without members: no block can be read or written\.\nType YES to continue: torus ctl ring manual-change: ring change aborted: the answer was not YES\n$/,
  );
  assert.deepEqual(await ringState(h), before);
  h.terminal.answers.push("YES");
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--yes-i-am-sure")),
    /^Ring version 3: ketama, replication 2, 0 member\(s\)\n$/,
  );
  h.terminal.interactive = false;
  ok(await h.ctl("peer", "add", "--force", ...twenty.slice(0, 3)));
  // Keeping one member is an ordinary change; replacing them all is not.
  ok(await h.ctl("peer", "remove", "--force", twenty[0]!, twenty[1]!));
  fails(await h.ctl("peer", "remove", "--force", twenty[2]!), 1, refusal);
  assert.match(
    ok(await h.ctl("peer", "remove", "--force", twenty[2]!, "--yes-i-am-sure")),
    /version 6: ketama, replication 2, 0 member/,
  );
});

test("a ring change to a disjoint member list asks too", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  ok(await h.ctl("peer", "add", U1));
  fails(
    await h.ctl("ring", "manual-change", "--uuids", U2),
    1,
    /refusing to remove every member of the ring without --yes-i-am-sure$/,
  );
  h.terminal.interactive = true;
  h.terminal.answers.push("YES");
  const replaced = await h.ctl("ring", "manual-change", "--uuids", U2, "--yes-i-am-sure");
  assert.equal(replaced.code, 0, replaced.err);
  assert.match(replaced.err, /version 3 replaces all of them: no node that holds a block now/);
  assert.deepEqual((await ringState(h)).members, [U2]);
  h.terminal.interactive = false;
  ok(await h.ctl("ring", "manual-change", "--uuids", `${U2},${U1}`));
});

test("wipe refuses a prefix under which no torus cluster exists, and touches nothing", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  const other = new TextEncoder().encode("another application's key");
  await h.store.put("/app/config", other);
  for (const prefix of ["/", "/app/", "/github.com/coreos/"]) {
    fails(
      await h.ctl("wipe", "--yes-i-am-sure", "--metadata-prefix", prefix),
      1,
      new RegExp(
        `no torus cluster under ${prefix} in embedded store .*: nothing to wipe \\(not_exist\\)$`,
      ),
    );
  }
  assert.deepEqual((await h.store.get("/app/config"))?.value, other);
  assert.equal(await h.mds.cluster.isInitialised(), true);
  fails(await h.ctl("wipe", "--metadata-prefix", "/"), 1, /without --yes-i-am-sure/);
  assert.equal(h.terminal.answers.length, 0);
});

test("peer UUIDs are validated and normalised wherever they are typed", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  const before = await ringState(h);
  for (const bad of ["10.0.0.9:40000", "tdp://10.0.0.9:40000", "not-a-uuid", "x".repeat(255)]) {
    const out = await h.ctl("peer", "add", "--force", bad);
    fails(out, 1, /is not registered, and --force can add only a UUID \(32 hex digits/);
    assert.ok(out.err.length < 250, "a long argument is shortened in the message");
  }
  fails(
    await h.ctl("ring", "manual-change", "--uuids", `${U1},not-a-uuid`),
    1,
    /invalid peer UUID "not-a-uuid": expected a UUID/,
  );
  assert.deepEqual(await ringState(h), before);
  ok(await h.ctl("peer", "add", "--force", DEAD.toUpperCase()));
  fails(await h.ctl("peer", "add", "--force", DEAD), 1, /already a member of the ring \(exists\)$/);
  ok(await h.ctl("peer", "add", U1.toUpperCase()));
  assert.deepEqual((await ringState(h)).members, [DEAD, U1]);
  ok(await h.ctl("peer", "remove", "--force", DEAD.replace("dead", "DEAD")));
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--uuids", `${U1},${U1.toUpperCase()}, ${U2}`)),
    /2 member\(s\)/,
  );
  assert.deepEqual((await ringState(h)).members, [U1, U2]);
});

const PREFIX = "/github.com/coreos/torus/";

test("forged peer records are skipped; --all-peers keeps working", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  const logged: string[] = [];
  setLogSink((line) => logged.push(line));
  const nowNs = BigInt(h.clock.nowMs()) * 1_000_000n;
  const forge = (key: string, peer: PeerInfo) =>
    h.store.put(`${PREFIX}nodes/${key}`, PeerInfoCodec.encode({ ...peer, lastSeen: nowNs }));
  // Key and value disagree: it listed U1 twice and broke manual-change --all-peers.
  await forge(DEAD, node(U1, 40001, 2048, 512));
  // Escape sequences in the address: they cleared the screen and forged rows.
  await forge(GONE, { ...node(GONE, 40003, 1, 1), address: "\x1b[2J\x1b[H\nforged row\r" });
  await forge(U2.toUpperCase(), node(U2, 40002, 2048, 0));
  const list = await h.ctl("list-peers");
  assert.equal(list.code, 0, list.err);
  assert.equal(hasInvisibleOrControl(list.out.replaceAll("\n", "")), false);
  assert.deepEqual(list.out.split("\n").slice(1, -2).map((l) => l.split(/ +/)[1]), [U1, U2]);
  assert.equal(logged.length, 3, logged.join("\n"));
  for (const line of logged) {
    assert.match(line, / W \| metadata: skipping invalid peer record \/github\.com/);
    assert.equal(hasInvisibleOrControl(line), false);
  }
  assert.match(logged.join("\n"), /has an invalid address "\\x1b\[2J\\x1b\[H\\x0aforged row\\x0d"/);
  assert.match(
    ok(await h.ctl("ring", "manual-change", "--all-peers")),
    /version 2: ketama, replication 2, 2 member\(s\)/,
  );
});

test("an unreadable stored ring is reported; manual-change repairs it", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  await registerNodes(h);
  const forged = {
    type: 4,
    version: 7,
    replicationFactor: 2,
    peers: [{ ...node(U1, 1, 1, 1), address: "h:1\x1b]0;owned\x07" }, emptyPeerInfo("not-a-uuid")],
    attrs: {},
  };
  await h.store.put(`${PREFIX}meta/the-one-ring`, RingCodec.encode(forged));
  const message =
    /the stored ring \(version 7\) is invalid: ring member [0-9a-f-]+ has an invalid address "h:1\\x1b\]0;owned\\x07"; replace it with torus ctl ring manual-change$/;
  fails(await h.ctl("ring", "get"), 1, message);
  fails(await h.ctl("peer", "add", U2), 1, message);
  const list = await h.ctl("list-peers");
  assert.equal(list.code, 0);
  assert.match(list.err, /^torus list-peers: warning: the stored ring \(version 7\) is invalid: /);
  assert.equal(hasInvisibleOrControl(list.err.replaceAll("\n", "")), false);
  assert.match(list.out, new RegExp(`${U1} .* OK `));
  assert.match(list.out, /\n +not-a-uuid +\?\?\? +\?\?\? +DOWN +Missing\n/);
  assert.match(ok(await h.ctl("ring", "manual-change", "--all-peers")), /version 8: ketama/);
  assert.match(ok(await h.ctl("ring", "get")), /^Ring: ketama\nVersion: 8\n/);
});

test("one name rule; older names stay listable (escaped) and deletable", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  ok(await h.ctl("volume", "create-block", "db", "1MiB"));
  const rule =
    /invalid volume name ".*": a name is 1 to 255 characters from A-Z a-z 0-9 \. _ -, starting with a letter or digit$/;
  for (
    const bad of ["db\u200b", "db\u0085", "\u202edb", "d\u0430", "_x", ".", "a@b", "x".repeat(256)]
  ) {
    const out = await h.ctl("volume", "create-block", bad, "1MiB");
    fails(out, 1, rule);
    assert.equal(hasInvisibleOrControl(out.err.replaceAll("\n", "")), false, out.err);
  }
  assert.deepEqual(h.opened.length, 2, "bad names open no store");
  ok(await h.ctl("volume", "create-block", "x".repeat(255), "1MiB"));
  // As an older build stored it: "db" followed by a zero-width space, and a record for id 9
  // under the key of id 8.
  const old = { name: "db\u200b", id: 4n, type: "block", maxBytes: 2n ** 20n };
  await h.store.put(`${PREFIX}volumes/${old.name}`, encodeU64(4n));
  await h.store.put(`${PREFIX}volumeid/4`, VolumeCodec.encode(old));
  await h.store.put(`${PREFIX}volumeid/8`, VolumeCodec.encode({ ...old, name: "ok", id: 9n }));
  const list = await h.ctl("volume", "list");
  assert.equal(list.code, 0);
  assert.deepEqual(list.out.split("\n").slice(1, 3).map((l) => l.split(/ +/)[0]), [
    "db",
    "db\\u200b",
  ]);
  assert.equal(
    list.err,
    `torus ctl volume list: skipping invalid volume record ${PREFIX}volumeid/8: ` +
      "the record of volume id 9 is stored under another key\n",
  );
  const json = JSON.parse(ok(await h.ctl("volume", "list", "--json")));
  assert.deepEqual(json.map((v: { name: string }) => v.name), ["db", "db\u200b", "x".repeat(255)]);
  assert.equal(ok(await h.ctl("volume", "delete", "db\u200b")), 'Deleted volume "db\\u200b"\n');
  assert.deepEqual(
    JSON.parse(ok(await h.ctl("volume", "list", "--json"))).map((v: { name: string }) => v.name),
    ["db", "x".repeat(255)],
  );
  const missing = await h.ctl("volume", "delete", "\x1b[2Jgone");
  fails(missing, 1, /^torus ctl volume delete: volume "\\x1b\[2Jgone" not found \(not_exist\)$/);
});

test("one replication rule: init, set-replication, manual-change, peer changes", async () => {
  await using h = await harness();
  ok(await h.ctl("init"));
  // The first ring has replication 2 and no members: 1 and 2 are allowed, more is not.
  fails(
    await h.ctl("ring", "manual-change", "-r", "1000"),
    1,
    /replication 1000 exceeds the 0 member\(s\) of the ketama ring \(up to 2 is allowed before the nodes join\)$/,
  );
  fails(await h.ctl("ring", "set-replication", "3"), 1, /replication 3 exceeds the 0 member/);
  assert.match(ok(await h.ctl("ring", "set-replication", "1")), /version 2: ketama, replication 1/);
  assert.match(ok(await h.ctl("ring", "set-replication", "2")), /version 3: ketama, replication 2/);
  await registerNodes(h);
  fails(
    await h.ctl("ring", "manual-change", "--type", "single", "--uuids", U1, "-r", "3"),
    1,
    /a single ring keeps each block on its one member: its replication is 1, got 3$/,
  );
  fails(
    await h.ctl("ring", "manual-change", "--type", "empty", "-r", "2", "--yes-i-am-sure"),
    1,
    /an empty ring places nothing: its replication is 0, got 2$/,
  );
  ok(await h.ctl("peer", "add", "--all-peers"));
  ok(await h.ctl("peer", "add", "--force", DEAD));
  assert.match(ok(await h.ctl("ring", "set-replication", "3")), /replication 3, 3 member/);
  fails(
    await h.ctl("peer", "remove", "--force", DEAD),
    1,
    /removing 1 peer\(s\) leaves 2 member\(s\), too few for replication 3; lower it first \(torus ctl ring set-replication 2\)$/,
  );
  ok(await h.ctl("ring", "set-replication", "2"));
  assert.match(ok(await h.ctl("peer", "remove", "--force", DEAD)), /replication 2, 2 member/);
  assert.match(ok(await h.ctl("peer", "remove", U2)), /replication 2, 1 member/);
});
