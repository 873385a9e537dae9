/**
 * Network addresses on the command line: `HOST:PORT`, `[IPV6]:PORT`, or a bare `PORT` (on
 * 127.0.0.1); and the two halves as separate flags (`--host H --port P`, as the original's HTTP
 * flags). One set of rules, so every flag that takes an address says the same things about it.
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
    if (!HOST_NAME.test(hostname)) throw bad("not a host name or address");
  }
  const port = portNumber(portText, options);
  if (typeof port === "string") throw bad(port);
  return { hostname, port };
}

const HOST_NAME = /^[A-Za-z0-9.-]+$/;

/** Whether `text` is an IPv6 address (without brackets), as URLs accept them. */
function isIpv6(text: string): boolean {
  if (!/^[0-9A-Fa-f:.]+$/.test(text) || !text.includes(":")) return false;
  try {
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}

/** The port of `text`, or why it is none. */
function portNumber(text: string, options: { listen?: boolean }): number | string {
  if (!/^\d{1,5}$/.test(text)) return "the port is not a number";
  const port = Number(text);
  // Port 0 asks the system for any free port: only where this process listens.
  const lowest = options.listen ? 0 : 1;
  if (port < lowest || port > 65535) return `the port must be ${lowest}..65535`;
  return port;
}

/** Parses a host flag (`--host`): a host name, an IPv4 address or an IPv6 address. */
export function parseHost(text: string, what: string): string {
  const bracketed = /^\[(.*)\]$/.exec(text);
  const host = bracketed ? bracketed[1]! : text;
  if (isIpv6(host) || (!bracketed && HOST_NAME.test(host))) return host;
  throw new UsageError(
    `invalid ${what} "${escapeText(text)}": not a host name or address (HOST, or an IPv6 ` +
      `address)`,
  );
}

/** Parses a port flag (`--port`); 0 (any free port) only where this process listens. */
export function parsePort(text: string, what: string, options: { listen?: boolean } = {}): number {
  const port = portNumber(text, options);
  if (typeof port === "string") {
    throw new UsageError(`invalid ${what} "${escapeText(text)}": ${port}`);
  }
  return port;
}

/** `HOST:PORT`, with brackets around an IPv6 host. */
export function formatHostPort(address: HostPort): string {
  const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname;
  return `${host}:${address.port}`;
}
