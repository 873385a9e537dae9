/**
 * Where an NBD client connects: `nbd://HOST[:PORT]/EXPORT` (the NBD URI form, plain TCP), or a
 * bare export name, which means torus's local server on 127.0.0.1:10809. Pure.
 *
 * The export is the URI path after its first `/`, percent-decoded; it must not be empty (torus
 * has no default export). A bare name cannot contain `/` (`host:port/vol` without the scheme is a
 * mistake, not an export name). IPv6 hosts go in brackets (`nbd://[::1]:10809/vol`). The other schemes
 * of the NBD URI spec (TLS `nbds://`, Unix sockets `nbd+unix://`) and query parameters are refused
 * by name rather than half-supported.
 * @module
 */

import { invalid, quoteForMessage } from "../../core/mod.ts";
import { NBD_STRING_MAX_BYTES } from "./protocol.ts";

/** The port NBD servers listen on unless told otherwise (IANA). */
export const NBD_DEFAULT_PORT = 10809;
/** Where a bare export name is looked for: torus serve --nbd's default address. */
export const NBD_LOCAL_HOST = "127.0.0.1";

/** A server and an export on it. */
export interface NbdTarget {
  readonly hostname: string;
  readonly port: number;
  readonly exportName: string;
}

const encoder = new TextEncoder();

const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//;

/** Whether `text` is a URI (`SCHEME://…`) rather than a bare export name. */
export function isUri(text: string): boolean {
  return SCHEME.test(text);
}

/** Parses `nbd://HOST[:PORT]/EXPORT` or a bare export name; `invalid` saying what is wrong. */
export function parseNbdTarget(text: string): NbdTarget {
  const scheme = SCHEME.exec(text);
  if (scheme === null) {
    if (text.includes("/")) {
      throw invalid(`${quoteForMessage(text)} is not a volume name: write nbd://HOST:PORT/VOLUME`);
    }
    return {
      hostname: NBD_LOCAL_HOST,
      port: NBD_DEFAULT_PORT,
      exportName: checkExport(text, text),
    };
  }
  if (scheme[1]!.toLowerCase() !== "nbd") {
    throw invalid(
      `unsupported URI scheme in ${quoteForMessage(text)}: only nbd://HOST[:PORT]/VOLUME ` +
        "(no TLS or Unix sockets)",
    );
  }
  const rest = text.slice(scheme[0].length);
  if (/[?#]/.test(rest)) throw invalid(`NBD URI ${quoteForMessage(text)} has a query or fragment`);
  const slash = rest.indexOf("/");
  if (slash < 0) throw invalid(`NBD URI ${quoteForMessage(text)} names no export (add /VOLUME)`);
  const { hostname, port } = parseAuthority(rest.slice(0, slash), text);
  let exportName: string;
  try {
    exportName = decodeURIComponent(rest.slice(slash + 1));
  } catch {
    throw invalid(`NBD URI ${quoteForMessage(text)} has a bad %-escape`);
  }
  return { hostname, port, exportName: checkExport(exportName, text) };
}

function parseAuthority(authority: string, text: string): { hostname: string; port: number } {
  const bad = (why: string) => invalid(`NBD URI ${quoteForMessage(text)}: ${why}`);
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+))(?::(\d{1,5}))?$/.exec(authority);
  if (match === null) {
    throw bad(authority === "" ? "no host" : "the host is not a name or address");
  }
  const port = match[3] === undefined ? NBD_DEFAULT_PORT : Number(match[3]);
  if (port < 1 || port > 65535) throw bad("the port must be 1..65535");
  return { hostname: match[1] ?? match[2]!, port };
}

function checkExport(name: string, text: string): string {
  if (name === "") throw invalid(`no export name in ${quoteForMessage(text)} (give a volume)`);
  if (encoder.encode(name).length > NBD_STRING_MAX_BYTES) {
    throw invalid(`export name in ${quoteForMessage(text)} is longer than 4096 bytes`);
  }
  return name;
}

/** The target as a URI, with the export percent-encoded where needed. */
export function formatNbdTarget(target: NbdTarget): string {
  const host = target.hostname.includes(":") ? `[${target.hostname}]` : target.hostname;
  const path = encodeURIComponent(target.exportName).replaceAll("%40", "@");
  return `nbd://${host}:${target.port}/${path}`;
}
