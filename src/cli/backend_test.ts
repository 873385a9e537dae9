/** Backend resolution (flag > profile > default) and opening the embedded store. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { MemoryKvStore } from "../metadata/mod.ts";
import { embeddedStorePath, openMetadata, resolveBackend } from "./backend.ts";
import type { Env } from "./config_file.ts";
import { UsageError } from "./usage_error.ts";
import type { EmbeddedDriverOptions, KvDrivers } from "./drivers.ts";

function envOf(values: Record<string, string>): Env {
  return { get: (name) => values[name] };
}

async function withHome<T>(config: unknown, body: (home: string) => Promise<T>): Promise<T> {
  const home = await Deno.makeTempDir({ prefix: "torus-home-" });
  try {
    if (config !== undefined) {
      await Deno.mkdir(`${home}/.torus`);
      await Deno.writeTextFile(`${home}/.torus/config.json`, JSON.stringify(config));
    }
    return await body(home);
  } finally {
    await Deno.remove(home, { recursive: true });
  }
}

const isInvalid = (pattern: RegExp) => (e: unknown) =>
  isTorusError(e, ErrorCode.Invalid) && pattern.test(e.message);

Deno.test("without etcd anywhere the embedded store of the data dir is used", async () => {
  await withHome(undefined, async (home) => {
    const spec = await resolveBackend({}, envOf({ HOME: home }));
    assert.deepEqual(spec, {
      kind: "embedded",
      dataDir: "./torus-data",
      path: "./torus-data/metadata/kv.sqlite",
      prefix: "/github.com/coreos/torus/",
    });
    const fromEnv = await resolveBackend({}, envOf({ HOME: home, TORUS_DATA_DIR: "/srv/t/" }));
    assert.equal(fromEnv.kind === "embedded" && fromEnv.path, "/srv/t/metadata/kv.sqlite");
    const fromFlag = await resolveBackend(
      { "data-dir": "/d" },
      envOf({ HOME: home, TORUS_DATA_DIR: "/srv/t" }),
    );
    assert.equal(fromFlag.kind === "embedded" && fromFlag.dataDir, "/d");
  });
  assert.equal(embeddedStorePath("/"), "/metadata/kv.sqlite");
});

Deno.test("a flag beats the profile, the profile beats the default", async () => {
  const config = {
    etcd_config: {
      default: { etcd: "10.0.0.1:2379", "etcd-ca-file": "/ca.pem", "metadata-prefix": "/p/" },
      other: { etcd: "10.0.0.9:2379,10.0.0.10:2379" },
    },
  };
  await withHome(config, async (home) => {
    const env = envOf({ HOME: home });
    assert.deepEqual(await resolveBackend({}, env), {
      kind: "etcd",
      endpoints: ["10.0.0.1:2379"],
      caFile: "/ca.pem",
      prefix: "/p/",
    });
    const flagged = await resolveBackend({ etcd: "h1:1, h2:2", "metadata-prefix": "/q/" }, env);
    assert.deepEqual(flagged, {
      kind: "etcd",
      endpoints: ["h1:1", "h2:2"],
      caFile: "/ca.pem",
      prefix: "/q/",
    });
    const other = await resolveBackend({ profile: "other" }, env);
    assert.deepEqual(other.kind === "etcd" && other.endpoints, ["10.0.0.9:2379", "10.0.0.10:2379"]);
    await assert.rejects(resolveBackend({ profile: "nope" }, env), isInvalid(/profile "nope"/));
  });
});

Deno.test("bad config paths, TLS without etcd and bad prefixes are one-line errors", async () => {
  await withHome(undefined, async (home) => {
    const env = envOf({ HOME: home });
    await assert.rejects(
      resolveBackend({ config: `${home}/missing.json` }, env),
      isInvalid(/does not exist/),
    );
    await assert.rejects(
      resolveBackend({ "etcd-ca-file": "/ca" }, env),
      isInvalid(/needs an etcd/),
    );
    await assert.rejects(resolveBackend({ "metadata-prefix": "nope" }, env), isInvalid(/prefix/));
    await assert.rejects(
      resolveBackend({ etcd: " , " }, env),
      (e: unknown) => e instanceof UsageError && /empty etcd endpoint/.test(e.message),
    );
    await Deno.writeTextFile(`${home}/bad.json`, "{not json");
    await assert.rejects(
      resolveBackend({ config: `${home}/bad.json` }, env),
      isInvalid(/not valid JSON/),
    );
  });
});

function memoryDrivers(opened: string[]): KvDrivers {
  return {
    openEtcd: () => Promise.resolve(new MemoryKvStore()),
    openEmbedded: (options: EmbeddedDriverOptions) => {
      opened.push(options.path);
      return Promise.resolve(new MemoryKvStore());
    },
  };
}

Deno.test("an absent embedded store is 'not initialised' unless the caller creates it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-data-" });
  try {
    const opened: string[] = [];
    const options = { env: envOf({}), drivers: memoryDrivers(opened) };
    const flags = { "data-dir": `${dir}/node` };
    await assert.rejects(
      openMetadata(flags, options),
      (e: unknown) => isTorusError(e, ErrorCode.NotExist) && /run `torus ctl init`/.test(e.message),
    );
    assert.deepEqual(opened, []);
    await using created = await openMetadata(flags, { ...options, create: true });
    assert.equal(created.backend.kind, "embedded");
    assert.deepEqual(opened, [`${dir}/node/metadata/kv.sqlite`]);
    assert.equal((await Deno.stat(`${dir}/node/metadata`)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(`${dir}/node`)).mode! & 0o777, 0o700);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const builtinNames = ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf"];

Deno.test("--profile naming a JavaScript built-in is not a profile", async () => {
  await withHome({ etcd_config: { default: { etcd: "h:1" } } }, async (home) => {
    const env = envOf({ HOME: home });
    for (const profile of builtinNames) {
      await assert.rejects(
        resolveBackend({ profile }, env),
        isInvalid(new RegExp(`profile "${profile}" is not in config file`)),
        profile,
      );
    }
  });
});

Deno.test("profiles named like built-ins are data: found when present, nothing else", async () => {
  const text = '{"etcd_config":{"__proto__":{"etcd":"p:1"},"constructor":{"etcd":"c:1"}}}';
  await withHome(undefined, async (home) => {
    await Deno.mkdir(`${home}/.torus`);
    await Deno.writeTextFile(`${home}/.torus/config.json`, text);
    const env = envOf({ HOME: home });
    const proto = await resolveBackend({ profile: "__proto__" }, env);
    assert.deepEqual(proto.kind === "etcd" && proto.endpoints, ["p:1"]);
    const ctor = await resolveBackend({ profile: "constructor" }, env);
    assert.deepEqual(ctor.kind === "etcd" && ctor.endpoints, ["c:1"]);
    // The "__proto__" profile did not become the prototype of the others.
    assert.equal((await resolveBackend({}, env)).kind, "embedded");
    await assert.rejects(resolveBackend({ profile: "etcd" }, env), isInvalid(/not in config/));
  });
});

Deno.test("a blank $TORUS_DATA_DIR or $HOME is a usage error, never a default place", async () => {
  await withHome(undefined, async (home) => {
    const blank = (pattern: RegExp) => (e: unknown) =>
      e instanceof UsageError && pattern.test(e.message);
    for (const value of ["", " "]) {
      await assert.rejects(
        resolveBackend({}, envOf({ HOME: home, TORUS_DATA_DIR: value })),
        blank(/^\$TORUS_DATA_DIR is set but empty/),
      );
      await assert.rejects(resolveBackend({}, envOf({ HOME: value })), blank(/^\$HOME is set/));
    }
    // Where the variable is not needed it does not matter.
    const spec = await resolveBackend(
      { "data-dir": `${home}/d` },
      envOf({ HOME: home, TORUS_DATA_DIR: "" }),
    );
    assert.equal(spec.kind === "embedded" && spec.dataDir, `${home}/d`);
  });
});

Deno.test("--config /dev/zero and TLS files of /dev/zero fail at once on the cap", async () => {
  await withHome(undefined, async (home) => {
    const env = envOf({ HOME: home });
    await assert.rejects(
      resolveBackend({ config: "/dev/zero" }, env),
      isInvalid(/^config file \/dev\/zero is larger than 1048576 bytes$/),
    );
    const zero = {
      etcd: "127.0.0.1:1",
      "etcd-cert-file": "/dev/zero",
      "etcd-key-file": "/dev/zero",
      "etcd-ca-file": "/dev/zero",
    };
    await assert.rejects(
      openMetadata(zero, { env }),
      isInvalid(/^etcd (certificate|key|CA) file \/dev\/zero is larger than 1048576 bytes$/),
    );
  });
});
