/**
 * Listening for the commands that open server ports (serve, blk nbdserve): a refusal says which
 * server and which address, not only the system's words.
 * @module
 */

import { ErrorCode, errorMessage, TorusError } from "../core/mod.ts";
import { formatHostPort, type HostPort } from "../cli/mod.ts";

/** Listens with `listen`; a refusal (port taken, unknown host) names what and where. */
export function listenOrExplain(
  what: string,
  address: HostPort,
  listen: (address: HostPort) => Deno.NetAddr,
): Deno.NetAddr {
  try {
    return listen(address);
  } catch (error) {
    throw new TorusError(
      ErrorCode.Unavailable,
      `${what} cannot listen on ${formatHostPort(address)}: ${errorMessage(error)}`,
      { cause: error },
    );
  }
}
