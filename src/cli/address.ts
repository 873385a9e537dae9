/**
 * Network addresses on the command line: `HOST:PORT`, `[IPV6]:PORT`, or a bare `PORT` (on
 * 127.0.0.1). One parser, so every flag that takes an address says the same things about it.
 * @module
 */

import { escapeText } from "../core/mod.ts";
import { UsageError } from "./usage_error.ts";

/** A host and port to listen on or connect to. */
export interface HostPort {
  readonly hostname: string;
  readonly port: number;
}

/** Parses an address flag value; `what` names the flag in errors. */
export function parseHostPort(
  text: string,
  what: string,
  options: { listen?: boolean } = {},
): HostPort {
  const bad = (why: string) =>
    new UsageError(`invalid ${what} "${escapeText(text)}": ${why} (HOST:PORT or PORT)`);
  let hostname = "127.0.0.1";
  let portText = text;
  const bracketed = /^\[([0-9A-Fa-f:.]+)\]:(\d+)$/.exec(text);
  if (bracketed) {
    hostname = bracketed[1]!;
    portText = bracketed[2]!;
  } else if (text.includes(":")) {
    const at = text.lastIndexOf(":");
    hostname = text.slice(0, at);
    portText = text.slice(at + 1);
    if (hostname.includes(":")) throw bad("put an IPv6 address in brackets");
    if (!/^[A-Za-z0-9.-]+$/.test(hostname)) throw bad("not a host name or address");
  }
  if (!/^\d{1,5}$/.test(portText)) throw bad("the port is not a number");
  const port = Number(portText);
  // Port 0 asks the system for any free port: only where this process listens.
  const lowest = options.listen ? 0 : 1;
  if (port < lowest || port > 65535) throw bad(`the port must be ${lowest}..65535`);
  return { hostname, port };
}

/** `HOST:PORT`, with brackets around an IPv6 host. */
export function formatHostPort(address: HostPort): string {
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  return `${host}:${address.port}`;
}
