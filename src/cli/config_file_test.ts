/** The config file: the original's format, 0600/0700 modes, merging, garbage rejected. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { defaultConfigPath, parseConfigFile, readConfigFile, writeProfile } from "./config_file.ts";

const isInvalid = (e: unknown) => isTorusError(e, ErrorCode.Invalid);

Deno.test("writeProfile creates the directory 0700 and the file 0600, tab-indented", async () => {
  const home = await Deno.makeTempDir();
  try {
    const path = `${home}/.torus/config.json`;
    await writeProfile(path, "default", { etcd: "h:2379", "etcd-ca-file": "" });
    assert.equal((await Deno.stat(`${home}/.torus`)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal(
      await Deno.readTextFile(path),
      '{\n\t"etcd_config": {\n\t\t"default": {\n\t\t\t"etcd": "h:2379"\n\t\t}\n\t}\n}\n',
    );
  } finally {
    await Deno.remove(home, { recursive: true });
  }
});

Deno.test("writeProfile merges into a profile and keeps other profiles and keys", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.json`;
    await Deno.writeTextFile(
      path,
      JSON.stringify({
        etcd_config: { default: { etcd: "a:1", "etcd-key-file": "/k" }, other: { etcd: "b:2" } },
        future_setting: 7,
      }),
    );
    await writeProfile(path, "default", { etcd: "c:3", "etcd-cert-file": "/c" });
    const config = await readConfigFile(path);
    assert.deepEqual(config, {
      etcd_config: {
        default: { etcd: "c:3", "etcd-key-file": "/k", "etcd-cert-file": "/c" },
        other: { etcd: "b:2" },
      },
      future_setting: 7,
    });
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.equal(await readConfigFile(`${dir}/absent.json`), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("garbage, truncated and oversized config files are invalid", () => {
  const good = '{"etcd_config":{"default":{"etcd":"h:1"}}}';
  for (
    const text of [
      "",
      "\u0000\u0001",
      good.slice(0, 15),
      "[]",
      '{"etcd_config":[]}',
      '{"etcd_config":{"default":7}}',
      '{"etcd_config":{"default":{"etcd":5}}}',
      "[".repeat(100_000),
    ]
  ) {
    assert.throws(
      () => parseConfigFile(text, "c.json"),
      isInvalid,
      JSON.stringify(text.slice(0, 20)),
    );
  }
  assert.deepEqual(parseConfigFile("{}", "c.json"), { etcd_config: {} });
  assert.equal(defaultConfigPath({ get: () => undefined }), null);
  assert.equal(defaultConfigPath({ get: () => "/home/u/" }), "/home/u/.torus/config.json");
});

Deno.test("a blank field of a profile is refused, not read as absent", () => {
  for (const value of ["", " ", "\t"]) {
    const text = JSON.stringify({ etcd_config: { default: { etcd: value } } });
    assert.throws(
      () => parseConfigFile(text, "c.json"),
      (e: unknown) =>
        isInvalid(e) && /"etcd" of profile "default" is empty/.test((e as Error).message),
    );
  }
});

Deno.test("a config file that is not UTF-8, or too large, is refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/c.json`;
    await Deno.writeFile(
      path,
      Uint8Array.of(...new TextEncoder().encode('{"a":"'), 0xff, 0x22, 0x7d),
    );
    await assert.rejects(
      readConfigFile(path),
      (e: unknown) => isInvalid(e) && /not valid UTF-8/.test((e as Error).message),
    );
    await Deno.writeTextFile(path, `{"pad":"${"x".repeat(1024 * 1024)}"}`);
    await assert.rejects(
      readConfigFile(path),
      (e: unknown) => isInvalid(e) && /larger than 1048576 bytes/.test((e as Error).message),
    );
    await assert.rejects(readConfigFile(dir), isInvalid);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
