/**
 * `torus ctl` end to end: the real program as subprocesses (`deno run -A main.ts ctl ...`) through
 * init → config → volumes → peer registration → peer add/remove → ring changes → list-peers →
 * wipe, on both backends: the embedded store of a temp data dir, and a real etcd with a unique
 * key prefix. Output and exit codes are checked; independent error cases run in parallel to keep
 * the test fast.
 */

import assert from "node:assert/strict";
import { etcdAvailable, testEtcd } from "../support/test_etcd.ts";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

interface Session {
  /** Runs `torus ctl ARGS... BACKEND_FLAGS...`. */
  ctl(...args: string[]): Promise<Result>;
  backendFlags: string[];
  home: string;
}

async function torus(args: string[], home: string): Promise<Result> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: root,
    env: { HOME: home, RUST_BACKTRACE: "0", NO_COLOR: "1", TORUS_DATA_DIR: "" },
    stdin: "null",
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

function ok(result: Result, pattern?: RegExp): string {
  assert.equal(result.code, 0, `expected success, got ${result.code}: ${result.stderr}`);
  if (pattern) assert.match(result.stdout, pattern);
  return result.stdout;
}

/** A failure: the exit code, exactly one line on stderr (two for usage errors), matching. */
function fails(result: Result, code: 1 | 2, pattern: RegExp): void {
  assert.equal(result.code, code, `expected exit ${code}: ${result.stdout}${result.stderr}`);
  const lines = result.stderr.trimEnd().split("\n");
  assert.equal(lines.length, code === 2 ? 2 : 1, `one-line error expected: ${result.stderr}`);
  assert.match(lines[0]!, pattern);
}

/** A running helper process. */
interface Helper extends AsyncDisposable {
  /** SIGKILLs the helper: its lease is not revoked, so it must expire. */
  kill(): Promise<void>;
}

/** The helper process that registers peers under a lease (see helpers/register_peers.ts). */
async function registerPeers(session: Session, args: string[]): Promise<Helper> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "tests/cli/helpers/register_peers.ts", ...args, ...session.backendFlags],
    cwd: root,
    env: { HOME: session.home, RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let seen = "";
  while (!seen.includes("ready\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`helper exited before ready: ${seen}`);
    seen += value;
  }
  let exited = false;
  return {
    async kill() {
      child.kill("SIGKILL");
      await reader.cancel();
      await child.stdin.abort();
      await child.status;
      exited = true;
    },
    async [Symbol.asyncDispose]() {
      if (exited) return;
      await child.stdin.close();
      await reader.cancel();
      await child.status;
    },
  };
}

async function initAndConfig(s: Session) {
  fails(await s.ctl("volume", "list"), 1, /cluster not initialised: run `torus ctl init`/);
  ok(
    await s.ctl("init"),
    /^Initialised torus in .*block size 512 KiB, block spec crc,base, ring ketama \(replication 2\)\n$/,
  );
  const [again, view, viewJson] = await Promise.all([
    s.ctl("init"),
    s.ctl("init", "--view"),
    s.ctl("init", "--view", "--json"),
  ]);
  fails(again, 1, /already initialised/);
  assert.equal(ok(view), "Block size: 524288 bytes (512 KiB)\nBlock spec: crc,base\n");
  assert.deepEqual(JSON.parse(ok(viewJson)), { blockSizeBytes: 524288, blockSpec: "crc,base" });
}

async function volumes(s: Session) {
  ok(
    await s.ctl("volume", "create-block", "db", "1GiB"),
    /^Created block volume "db" \(id 2, 1 GiB\)\n$/,
  );
  ok(await s.ctl("block", "create", "logs", "10MiB"), /"logs" \(id 3, 10 MiB\)/);
  const [dup, badSize, unknown, list, csv, json] = await Promise.all([
    s.ctl("volume", "create-block", "db", "1GiB"),
    s.ctl("volume", "create-block", "x", "lots"),
    s.ctl("volume", "delete", "nope"),
    s.ctl("volume", "list"),
    s.ctl("volume", "list", "--csv"),
    s.ctl("volume", "list", "--json"),
  ]);
  fails(dup, 1, /volume "db" already exists/);
  fails(badSize, 1, /invalid size "lots"/);
  fails(unknown, 1, /volume "nope" not found/);
  assert.equal(
    ok(list),
    "VOLUME NAME  SIZE    TYPE   STATUS\ndb           1 GiB   block  free\nlogs         10 MiB  block  free\n",
  );
  assert.equal(
    ok(csv),
    "VOLUME NAME,SIZE,TYPE,STATUS\ndb,1 GiB,block,free\nlogs,10 MiB,block,free\n",
  );
  const rows = JSON.parse(ok(json));
  assert.deepEqual(rows[0], {
    id: 2,
    name: "db",
    type: "block",
    sizeBytes: 1073741824,
    parent: null,
    status: "free",
  });
  ok(await s.ctl("volume", "delete", "logs"), /^Deleted volume "logs"\n$/);
}

/** A lock held by another process blocks delete, and is released when that process dies. */
async function lockedVolume(s: Session) {
  await using helper = await registerPeers(s, ["--lock", "db", "--ttl-ms", "2000"]);
  const [del, list] = await Promise.all([s.ctl("volume", "delete", "db"), s.ctl("volume", "list")]);
  fails(del, 1, /volume "db" is in use \(locked by e2e-helper\)/);
  assert.match(ok(list), /db +1 GiB +block +in-use/);
  await helper.kill();
  const killedAt = Date.now();
  while (!/db +1 GiB +block +free/.test(ok(await s.ctl("volume", "list")))) {
    assert.ok(Date.now() - killedAt < 10_000, "the dead holder's lease did not expire");
    await new Promise((r) => setTimeout(r, 250));
  }
}

const UA = "aaaaaaaa-0000-4000-8000-00000000000a";
const UB = "bbbbbbbb-0000-4000-8000-00000000000b";
const UC = "cccccccc-0000-4000-8000-00000000000c";
const UNKNOWN = "12345678-0000-4000-8000-000000000000";
const GHOST = "0f0f0f0f-0000-4000-8000-00000000000f";

const peerArgs = [
  "--peer",
  `${UA}=tdp://127.0.0.1:40001:1000:100`,
  "--peer",
  `${UB.toUpperCase()}=tdp://127.0.0.1:40002:1000:300`,
  "--peer",
  `${UC}=tdp://127.0.0.1:40003:2000:0`,
  "--peer",
  "c1c1c1c1-0000-4000-8000-000000000000=:0:0",
];

async function peers(s: Session) {
  const list = ok(await s.ctl("list-peers"));
  const lines = list.trimEnd().split("\n");
  assert.match(lines[0]!, /^ADDRESS +UUID +SIZE +USED +MEMBER +UPDATED +REB\/REP DATA$/);
  assert.equal(lines.length, 5, list); // header, three nodes (the client is hidden), footer
  assert.match(
    lines[1]!,
    /^tdp:\/\/127\.0\.0\.1:40001 +aaaaaaaa-0000-4000-8000-00000000000a +500 MiB +50 MiB +Avail +(just now|\d+ seconds? ago) +0 B\/sec$/,
  );
  assert.match(lines[4]!, /^Balanced: true Usage: 10\.00%$/);
  fails(
    await s.ctl("peer", "add", UNKNOWN),
    1,
    new RegExp(`peer ${UNKNOWN} is not currently registered; to add it anyway use --force`),
  );
  fails(
    await s.ctl("peer", "add", "--force", "127.0.0.1:40009"),
    1,
    /is not registered, and --force can add only a UUID/,
  );
  ok(
    await s.ctl("peer", "add", "127.0.0.1:40001", UB),
    /^Ring version 2: ketama, replication 2, 2 member\(s\)\n$/,
  );
  ok(
    await s.ctl("peer", "add", "--force", GHOST.toUpperCase()),
    /Ring version 3: ketama, replication 2, 3 member/,
  );
  const withGhost = ok(await s.ctl("peer", "list"));
  assert.match(withGhost, new RegExp(`\n +${GHOST} +\\?\\?\\? +\\?\\?\\? +DOWN +Missing\n`));
  assert.match(withGhost, new RegExp(`${UA} .* OK `));
  assert.match(withGhost, new RegExp(`${UB} .* OK `));
  assert.match(withGhost, new RegExp(`${UC} .* Avail `));
  ok(
    await s.ctl("peer", "remove", "--force", GHOST),
    /Ring version 4: ketama, replication 2, 2 member/,
  );
  const [csvResult, jsonResult] = await Promise.all([
    s.ctl("list-peers", "--csv"),
    s.ctl("list-peers", "--json"),
  ]);
  const csv = ok(csvResult);
  assert.match(csv, /^ADDRESS,UUID,SIZE,USED,MEMBER,UPDATED,REB\/REP DATA\n/);
  assert.ok(!csv.includes("Balanced"));
  const json = JSON.parse(ok(jsonResult));
  assert.deepEqual(json.peers.map((p: { member: string }) => p.member), ["OK", "OK", "Avail"]);
  assert.equal(json.ringVersion, 4);
}

async function rings(s: Session) {
  const [getResult, jsonResult, zero, tooMany, badType, single] = await Promise.all([
    s.ctl("ring", "get"),
    s.ctl("ring", "get", "--json"),
    s.ctl("ring", "set-replication", "0"),
    s.ctl("ring", "set-replication", "3"),
    s.ctl("ring", "manual-change", "--type", "triangle"),
    s.ctl("ring", "manual-change", "--type", "single", "--uuids", `${UA},${UB}`),
  ]);
  const get = ok(getResult);
  assert.match(get, /^Ring: ketama\nVersion: 4\n/);
  assert.match(get, new RegExp(UA));
  const json = JSON.parse(ok(jsonResult));
  assert.deepEqual([json.type, json.version, json.replication], ["ketama", 4, 2]);
  fails(zero, 1, /at least 1/);
  fails(tooMany, 1, /replication 3 exceeds the 2 member\(s\) of the ketama ring/);
  fails(badType, 1, /unknown ring type "triangle"/);
  fails(single, 1, /exactly 1 peer/);
  ok(
    await s.ctl("ring", "set-replication", "1"),
    /^Ring version 5: ketama, replication 1, 2 member/,
  );
  ok(
    await s.ctl("ring", "manual-change", "--type", "mod", "--all-peers", "-r", "2"),
    /version 6: mod, replication 2, 3 member/,
  );
  // Original issue #364: a ring without peers can be set by hand; dropping every member of a
  // ring that has some needs the same confirmation as wipe.
  fails(
    await s.ctl("ring", "manual-change", "--type", "empty"),
    1,
    /refusing to remove every member of the ring without --yes-i-am-sure/,
  );
  ok(
    await s.ctl("ring", "manual-change", "--type", "empty", "--yes-i-am-sure"),
    /version 7: empty, replication 0, 0 member/,
  );
  const [setOnEmpty, addOnEmpty] = await Promise.all([
    s.ctl("ring", "set-replication", "1"),
    s.ctl("peer", "add", UA),
  ]);
  fails(setOnEmpty, 1, /ring type empty has no replication to change/);
  fails(addOnEmpty, 1, /ring type empty cannot add peers/);
  ok(
    await s.ctl("ring", "manual-change", "--type", "ketama", "--uuids", UA, "-r", "1"),
    /version 8: ketama, replication 1, 1 member/,
  );
}

async function wipe(s: Session) {
  fails(await s.ctl("wipe"), 1, /refusing to wipe all metadata without --yes-i-am-sure/);
  ok(await s.ctl("wipe", "--yes-i-am-sure"), /^Wiped \d+ keys under \//);
  fails(await s.ctl("ring", "get"), 1, /cluster not initialised/);
  fails(await s.ctl("wipe", "--yes-i-am-sure"), 1, /no torus cluster under \/.*: nothing to wipe/);
}

async function session(backendFlags: string[], body: (s: Session) => Promise<void>) {
  const home = await Deno.makeTempDir({ prefix: "torus-e2e-home-" });
  try {
    await body({
      backendFlags,
      home,
      ctl: (...args) => torus(["ctl", ...args, ...backendFlags], home),
    });
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

async function fullSession(s: Session) {
  await initAndConfig(s);
  await volumes(s);
  await lockedVolume(s);
  await using _peers = await registerPeers(s, peerArgs);
  await peers(s);
  await rings(s);
  await wipe(s);
}

Deno.test("ctl e2e on the embedded store of a data dir", async () => {
  const dataDir = await Deno.makeTempDir({ prefix: "torus-e2e-data-" });
  try {
    await session(["--data-dir", dataDir], fullSession);
    assert.equal((await Deno.stat(`${dataDir}/metadata`)).mode! & 0o777, 0o700);
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});

Deno.test({
  name: `ctl e2e on etcd${etcdAvailable() ? "" : " (ignored: etcd is not installed)"}`,
  ignore: !etcdAvailable(),
  async fn() {
    await using etcd = await testEtcd();
    const prefix = `/torus-e2e-${crypto.randomUUID()}/`;
    await session(["-C", etcd.endpoint, "--metadata-prefix", prefix], async (s) => {
      await fullSession(s);
      // A profile in the config file replaces the flags.
      const config = `${s.home}/.torus/config.json`;
      ok(
        await torus(["ctl", "config", "-C", etcd.endpoint, "--metadata-prefix", prefix], s.home),
        /^Saved profile "default" in /,
      );
      assert.equal((await Deno.stat(config)).mode! & 0o777, 0o600);
      assert.match(ok(await torus(["ctl", "config", "--view"], s.home)), /"etcd": "127\.0\.0\.1:/);
      ok(await torus(["ctl", "init", "--no-ring"], s.home), /ring empty/);
      // Several endpoints: an unreachable first one is skipped (original issue #405).
      const endpoints = `127.0.0.1:1,${etcd.endpoint}`;
      const both = ["ctl", "-C", endpoints, "--metadata-prefix", prefix, "init", "--view"];
      ok(await torus(both, s.home), /^Block size: 524288 bytes/);
      ok(await torus(["ctl", "ring", "get"], s.home), /^Ring: empty\nVersion: 1\n/);
      ok(await torus(["ctl", "wipe", "--yes-i-am-sure"], s.home));
    });
  },
});

Deno.test("ctl fails fast and in one line when etcd is unreachable", async () => {
  const home = await Deno.makeTempDir({ prefix: "torus-e2e-home-" });
  try {
    const started = Date.now();
    const result = await torus(["ctl", "-C", "127.0.0.1:1", "volume", "list"], home);
    const elapsedMs = Date.now() - started;
    fails(result, 1, /127\.0\.0\.1:1.*\(unavailable\)$/);
    // Fast means within the connect deadline plus a process start, not a hang: a loaded machine
    // took 8.5 s here, and a hang is minutes.
    assert.ok(elapsedMs < 20_000, `took ${elapsedMs} ms`);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});
