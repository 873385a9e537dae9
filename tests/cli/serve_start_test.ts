/**
 * Starting on a fresh data dir with real concurrent processes: of eight `torus serve` started at
 * once exactly one wins, the node UUID it printed is the one on disk, and every other exits 1
 * with one line naming the winner; `ctl init` racing `serve` is serialised the same way; a
 * SIGKILLed serve leaves no stale lock.
 */

import assert from "node:assert/strict";

const root = new URL("../../", import.meta.url).pathname;
const decoder = new TextDecoder();

interface Run {
  readonly child: Deno.ChildProcess;
  /** All output so far (stdout and stderr interleaved as they arrive). */
  output(): string;
  /** Resolves when `text` was printed (true) or the process exited first (false). */
  printedOrExited(text: string): Promise<boolean>;
}

function torus(args: string[]): Run {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}main.ts`, ...args],
    env: { RUST_BACKTRACE: "0", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const waiters: (() => void)[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      text += decoder.decode(chunk);
      waiters.splice(0).forEach((wake) => wake());
    }
  };
  const drained = Promise.all([pump(child.stdout), pump(child.stderr)]);
  const exited = child.status.then(() => drained);
  return {
    child,
    output: () => text,
    async printedOrExited(expected) {
      while (!text.includes(expected)) {
        const more = new Promise<"more">((wake) => waiters.push(() => wake("more")));
        if (await Promise.race([more, exited.then(() => "exited" as const)]) === "exited") {
          return text.includes(expected);
        }
      }
      return true;
    },
  };
}

async function exitOf(run: Run): Promise<{ code: number; output: string }> {
  const status = await run.child.status;
  await run.printedOrExited("\u0000never");
  return { code: status.code, output: run.output() };
}

async function withDataDir(body: (dataDir: string) => Promise<void>): Promise<void> {
  const parent = await Deno.makeTempDir({ prefix: "torus-start-" });
  try {
    await body(`${parent}/data`);
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
}

const inUse = (dataDir: string, who: string, pid: number) =>
  `data dir ${dataDir} is in use by ${who}, pid ${pid} (locked)`;

Deno.test("eight serves started at once on a fresh data dir: one wins, its UUID is on disk", async () => {
  await withDataDir(async (dataDir) => {
    const runs = Array.from(
      { length: 8 },
      () => torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]),
    );
    const ready = await Promise.all(runs.map((run) => run.printedOrExited("Ready.")));
    const winners = runs.filter((_, i) => ready[i]);
    assert.equal(winners.length, 1, runs.map((run) => run.output()).join("\n---\n"));
    const winner = winners[0]!;
    try {
      const printed = /node ([0-9a-f-]{36})/.exec(winner.output())?.[1];
      const onDisk = (await Deno.readTextFile(`${dataDir}/metadata/uuid`)).trim();
      assert.equal(printed, onDisk, "the UUID the winner printed is the one on disk");
      for (const loser of runs.filter((run) => run !== winner)) {
        const { code, output } = await exitOf(loser);
        assert.equal(code, 1, output);
        assert.equal(
          output,
          `torus serve: ${inUse(dataDir, "torus serve", winner.child.pid)}\n`,
          "one line naming the winner",
        );
      }
      assert.equal((await Deno.readTextFile(`${dataDir}/metadata/uuid`)).trim(), onDisk);
    } finally {
      winner.child.kill("SIGTERM");
      assert.equal((await exitOf(winner)).code, 0);
    }
  });
});

Deno.test("ctl init and serve racing on a fresh data dir: one creates, the other names it", async () => {
  await withDataDir(async (dataDir) => {
    const serve = torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]);
    const init = torus(["ctl", "init", "--data-dir", dataDir, "--block-size", "64KiB"]);
    const [served, initialised] = await Promise.all([
      serve.printedOrExited("Ready."),
      init.printedOrExited("Initialised torus"),
    ]);
    const initResult = await exitOf(init);
    const initWon = initResult.code === 0;
    if (!initWon) {
      // serve won: it initialised its single-node defaults, and ctl init changed nothing.
      assert.ok(served, serve.output());
      assert.equal(initResult.code, 1, initResult.output);
      assert.equal(
        initResult.output,
        `torus ctl init: ${inUse(dataDir, "torus serve", serve.child.pid)}\n`,
      );
      assert.match(serve.output(), /blocks of 512 KiB/);
      serve.child.kill("SIGTERM");
      assert.equal((await exitOf(serve)).code, 0);
    } else if (served) {
      // ctl init won and was done before serve looked: serve started on init's cluster.
      assert.ok(initialised, initResult.output);
      assert.match(serve.output(), /blocks of 64 KiB/);
      serve.child.kill("SIGTERM");
      assert.equal((await exitOf(serve)).code, 0);
    } else {
      // ctl init won while serve looked: serve created nothing and named it.
      assert.ok(initialised, initResult.output);
      const serveResult = await exitOf(serve);
      assert.equal(serveResult.code, 1);
      assert.equal(
        serveResult.output,
        `torus serve: ${inUse(dataDir, "torus ctl init", init.child.pid)}\n`,
      );
    }
    // Either way the store holds one consistent cluster, and serve starts on it now.
    const again = torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]);
    assert.ok(await again.printedOrExited("Ready."), again.output());
    assert.match(again.output(), initWon ? /blocks of 64 KiB/ : /blocks of 512 KiB/);
    again.child.kill("SIGTERM");
    assert.equal((await exitOf(again)).code, 0);
  });
});

Deno.test("ctl init on a data dir a serve holds names the serve; other ctl commands work", async () => {
  await withDataDir(async (dataDir) => {
    const serve = torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]);
    try {
      assert.ok(await serve.printedOrExited("Ready."), serve.output());
      const init = await exitOf(torus(["ctl", "init", "--data-dir", dataDir]));
      assert.equal(init.code, 1);
      assert.equal(
        init.output,
        `torus ctl init: ${inUse(dataDir, "torus serve", serve.child.pid)}\n`,
      );
      const view = await exitOf(torus(["ctl", "init", "--view", "--data-dir", dataDir]));
      assert.equal(view.code, 0, view.output);
      assert.match(view.output, /Block size: 524288 bytes/);
    } finally {
      serve.child.kill("SIGTERM");
      assert.equal((await exitOf(serve)).code, 0);
    }
  });
});

Deno.test("a SIGKILLed serve leaves no stale lock: the next start keeps its identity", async () => {
  await withDataDir(async (dataDir) => {
    const first = torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]);
    assert.ok(await first.printedOrExited("Ready."), first.output());
    const uuid = /node ([0-9a-f-]{36})/.exec(first.output())?.[1];
    first.child.kill("SIGKILL");
    await exitOf(first);
    const second = torus(["serve", "--data-dir", dataDir, "--size", "4MiB"]);
    try {
      assert.ok(await second.printedOrExited("Ready."), second.output());
      assert.match(second.output(), new RegExp(`node ${uuid}`));
    } finally {
      second.child.kill("SIGTERM");
      assert.equal((await exitOf(second)).code, 0);
    }
  });
});
