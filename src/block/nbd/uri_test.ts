/** NBD targets: `nbd://HOST[:PORT]/EXPORT` and bare export names. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../core/mod.ts";
import { formatNbdTarget, isUri, parseNbdTarget } from "./uri.ts";

Deno.test("uri: a bare name is an export on the local default server", () => {
  assert.deepEqual(parseNbdTarget("vol"), {
    hostname: "127.0.0.1",
    port: 10809,
    exportName: "vol",
  });
  assert.equal(parseNbdTarget("vol@snap").exportName, "vol@snap");
  assert.equal(isUri("vol@snap"), false);
});

Deno.test("uri: nbd:// with a host, an optional port, IPv6 and %-escapes", () => {
  assert.deepEqual(parseNbdTarget("nbd://example.com/vol"), {
    hostname: "example.com",
    port: 10809,
    exportName: "vol",
  });
  assert.deepEqual(parseNbdTarget("NBD://10.0.0.1:4242/v%40s"), {
    hostname: "10.0.0.1",
    port: 4242,
    exportName: "v@s",
  });
  assert.deepEqual(parseNbdTarget("nbd://[::1]:10810/vol"), {
    hostname: "::1",
    port: 10810,
    exportName: "vol",
  });
  // Only the first slash separates: the rest belongs to the export name.
  assert.equal(parseNbdTarget("nbd://h/a/b").exportName, "a/b");
  assert.equal(isUri("nbd://h/a"), true);
});

Deno.test("uri: formatting round-trips", () => {
  for (const text of ["nbd://127.0.0.1:10809/vol@snap", "nbd://[::1]:1/a%20b"]) {
    assert.equal(formatNbdTarget(parseNbdTarget(text)), text);
  }
});

Deno.test("uri: mistakes get one line saying what is wrong", () => {
  const cases: [string, RegExp][] = [
    ["", /no export name/],
    ["host:10809/vol", /not a volume name: write nbd:\/\/HOST:PORT\/VOLUME/],
    ["nbds://h/vol", /unsupported URI scheme .*no TLS or Unix sockets/],
    ["nbd+unix:///vol?socket=/s", /unsupported URI scheme/],
    ["nbd://h", /names no export/],
    ["nbd://h/", /no export name/],
    ["nbd:///vol", /no host/],
    ["nbd://h:0/vol", /port must be 1\.\.65535/],
    ["nbd://h:65536/vol", /port must be 1\.\.65535/],
    ["nbd://h/vol?x=1", /query or fragment/],
    ["nbd://h/%zz", /bad %-escape/],
    ["nbd://h_x/vol", /not a name or address/],
    [`nbd://h/${"x".repeat(4097)}`, /longer than 4096 bytes/],
  ];
  for (const [text, pattern] of cases) {
    assert.throws(
      () => parseNbdTarget(text),
      (error) => isTorusError(error, ErrorCode.Invalid) && pattern.test(error.message),
      text,
    );
  }
});
