import assert from "node:assert/strict";
import { UsageError } from "../cli/mod.ts";
import { isTorusError } from "../core/mod.ts";
import { flushInitiatorDevice } from "./aoe.ts";
import {
  checkAoeExportSpecs,
  checkInterfaceName,
  parseAoeExportSpec,
  parseShelf,
  parseSlot,
} from "./aoe_export.ts";

Deno.test("aoe export spec: VOLUME:INTERFACE:MAJOR.MINOR, volume names may hold colons", () => {
  assert.deepEqual(parseAoeExportSpec("vol1:eth0:1.2"), {
    volume: "vol1",
    interfaceName: "eth0",
    major: 1,
    minor: 2,
  });
  assert.deepEqual(parseAoeExportSpec("a:b@snap:veth-x:65534.254"), {
    volume: "a:b@snap",
    interfaceName: "veth-x",
    major: 65534,
    minor: 254,
  });
});

Deno.test("aoe export spec: garbage, broadcast addresses and oversized parts are usage errors", () => {
  for (
    const [text, pattern] of [
      ["", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      ["vol", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      ["vol:eth0", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      ["vol:eth0:1", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      [":eth0:1.2", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      ["vol::1.2", /give VOLUME:INTERFACE:MAJOR.MINOR/],
      ["vol:eth0:65535.1", /MAJOR "65535" is not a number from 0 to 65534/],
      ["vol:eth0:1.255", /MINOR "255" is not a number from 0 to 254/],
      ["vol:eth0:-1.2", /MAJOR "-1"/],
      ["vol:eth0:1.2x", /MINOR "2x"/],
      ["vol:eth0:99999999999.1", /MAJOR "99999999999"/],
      ["vol:an-interface-name-too-long:1.2", /not an interface name/],
      ["vol:eth 0:1.2", /not an interface name/],
    ] as const
  ) {
    assert.throws(
      () => parseAoeExportSpec(text),
      (error: unknown) => error instanceof UsageError && pattern.test(error.message),
      JSON.stringify(text),
    );
  }
});

Deno.test("aoe addresses: shelf 0..65534, slot 0..254, interface names of 1..15 characters", () => {
  assert.equal(parseShelf("0"), 0);
  assert.equal(parseShelf("65534"), 65534);
  assert.equal(parseSlot("254"), 254);
  assert.throws(() => parseShelf("1e3"), UsageError);
  assert.throws(() => parseSlot(" 1"), UsageError);
  assert.throws(() => parseSlot(""), UsageError);
  assert.equal(checkInterfaceName("eth0"), "eth0");
  assert.equal(checkInterfaceName("x".repeat(15)), "x".repeat(15));
  for (const bad of ["", "x".repeat(16), "a/b", "a:b", "a b", "a\nb"]) {
    assert.throws(() => checkInterfaceName(bad), UsageError, JSON.stringify(bad));
  }
});

Deno.test("aoe export specs: one volume twice, or one address twice on an interface, refused", () => {
  const spec = (volume: string, interfaceName: string, major: number, minor: number) => ({
    volume,
    interfaceName,
    major,
    minor,
  });
  checkAoeExportSpecs([spec("a", "eth0", 1, 1), spec("b", "eth0", 1, 2), spec("c", "eth1", 1, 1)]);
  assert.throws(
    () => checkAoeExportSpecs([spec("a", "eth0", 1, 1), spec("a", "eth1", 2, 2)]),
    /volume "a" is given twice/,
  );
  assert.throws(
    () => checkAoeExportSpecs([spec("a", "eth0", 1, 1), spec("b", "eth0", 1, 1)]),
    /eth0 e1.1 is given twice/,
  );
});

Deno.test("aoe --flush: writes the device name to the driver's flush file", async () => {
  const path = await Deno.makeTempFile();
  try {
    await flushInitiatorDevice("e12.3", path);
    assert.equal(await Deno.readTextFile(path), "e12.3");
    await Deno.writeTextFile(path, "");
    await flushInitiatorDevice("all", path);
    assert.equal(await Deno.readTextFile(path), "all");
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("aoe --flush: a bad name is a usage error; no driver says so in one line", async () => {
  for (const bad of ["", "e1", "1.2", "e1.2.3", "eA.B", "e1.2\n", "all e1.2"]) {
    await assert.rejects(
      flushInitiatorDevice(bad, "/nonexistent"),
      UsageError,
      JSON.stringify(bad),
    );
  }
  await assert.rejects(
    flushInitiatorDevice("e1.2", "/nonexistent/etherd/flush"),
    (error: unknown) =>
      isTorusError(error, "not_exist") &&
      /no AoE initiator on this machine: \/nonexistent\/etherd\/flush does not exist/.test(
        error.message,
      ),
  );
});
