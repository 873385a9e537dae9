/**
 * AF_PACKET sockets: the errors of opening, which need no link of the test's own. The tests
 * over veth pairs (frames, bursts, close, link loss) are in tests/sys/packet_socket_test.ts,
 * because they need tests/support/netns.ts, which src/ may not import.
 */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { openPacketSocket } from "./packet_socket.ts";

const AOE = 0x88a2;
const isRoot = Deno.uid() === 0;

function throwsWith(open: () => unknown, code: string, text: RegExp): void {
  assert.throws(open, (error) => {
    assert.ok(isTorusError(error), `not a TorusError: ${error}`);
    assert.equal(error.code, code);
    assert.match(error.message, text);
    return true;
  });
}

Deno.test("packet socket: an unknown interface is not_exist, naming it and the errno", () => {
  throwsWith(
    () => openPacketSocket("trs-nope0", AOE),
    ErrorCode.NotExist,
    /^no such interface trs-nope0: if_nametoindex\(trs-nope0\) failed: ENODEV/,
  );
});

Deno.test("packet socket: names, EtherTypes and buffer sizes the kernel cannot take are invalid", () => {
  for (const name of ["", "sixteen-bytes-xx", "a/b", "a b"]) {
    throwsWith(() => openPacketSocket(name, AOE), ErrorCode.Invalid, /is not an interface name/);
  }
  for (const etherType of [0x05ff, 0x10000, 1.5]) {
    throwsWith(() => openPacketSocket("lo", etherType), ErrorCode.Invalid, /EtherType/);
  }
  for (const receiveBufferBytes of [0, -1, 2 ** 30, 0.5]) {
    throwsWith(
      () => openPacketSocket("lo", AOE, { receiveBufferBytes }),
      ErrorCode.Invalid,
      /receive buffer/,
    );
  }
});

Deno.test({
  name: `packet socket: a link that is not Ethernet is not_supported${
    isRoot ? "" : " (skipped: needs root for AF_PACKET)"
  }`,
  ignore: !isRoot,
  fn() {
    throwsWith(
      () => openPacketSocket("lo", AOE),
      ErrorCode.NotSupported,
      /interface lo is not Ethernet \(hardware type 772\)/,
    );
  },
});

/** Whether `setpriv` (util-linux) can start a process without a capability. */
function haveSetpriv(): boolean {
  try {
    return new Deno.Command("setpriv", { args: ["--version"], stdout: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const canDropCapability = isRoot && haveSetpriv();

Deno.test({
  name: `packet socket: without CAP_NET_RAW the error says so${
    canDropCapability ? "" : " (skipped: needs root and setpriv)"
  }`,
  ignore: !canDropCapability,
  async fn() {
    const module = import.meta.resolve("./packet_socket.ts");
    const script = `import { openPacketSocket } from "${module}";
      try { openPacketSocket("lo", ${AOE}); } catch (e) { console.log(e.code + " " + e.message); }`;
    const config = new URL("../../deno.json", import.meta.url).pathname;
    const output = await new Deno.Command("setpriv", {
      args: ["--bounding-set=-net_raw", Deno.execPath(), "eval", "--config", config, script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
    assert.match(
      text,
      /^invalid AF_PACKET needs CAP_NET_RAW .*socket\(AF_PACKET, SOCK_RAW\) failed: EPERM/,
    );
  },
});
