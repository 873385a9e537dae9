/** `torus version`. @module */

import { type Command, ExitCode, parseFlags } from "../cli/mod.ts";
import { PROTOCOL_VERSION, VERSION } from "../core/mod.ts";

export const versionCommand: Command = {
  name: "version",
  summary: "Print the version of torus",
  help: "Usage: torus version [--json]\n\nPrints the program and peer protocol versions.\n",
  run(args, io) {
    const { values, positionals } = parseFlags(args, { json: { type: "boolean" } });
    if (positionals.length > 0) io.stderr("torus version: takes no arguments\n");
    if (positionals.length > 0) return Promise.resolve(ExitCode.Usage);
    const info = { version: VERSION, protocolVersion: PROTOCOL_VERSION, deno: Deno.version.deno };
    io.stdout(
      values.json
        ? JSON.stringify(info) + "\n"
        : `torus\nVersion: ${VERSION}\nProtocol: ${PROTOCOL_VERSION}\nDeno: ${Deno.version.deno}\n`,
    );
    return Promise.resolve(ExitCode.Ok);
  },
};
