/**
 * Test helper process: registers fake storage nodes (and clients) in the metadata service under
 * one lease, as `torus serve` heartbeats will, optionally takes volume locks with that lease, then
 * prints `ready` and keeps the lease alive and the registrations fresh until its stdin closes (then
 * revokes it and exits).
 *
 * Usage: deno run -A tests/cli/helpers/register_peers.ts [metadata flags]
 *          [--peer UUID=ADDRESS:TOTAL_BLOCKS:USED_BLOCKS]... [--lock VOLUME]... [--ttl-ms N]
 * An empty ADDRESS registers a client.
 */

import { parseArgs } from "node:util";
import { metadataFlagOptions, openMetadata } from "../../../src/cli/mod.ts";
import { emptyPeerInfo, type PeerInfo } from "../../../src/models/mod.ts";

function parsePeer(spec: string): PeerInfo {
  const match = /^([^=]+)=(.*):(\d+):(\d+)$/.exec(spec);
  if (!match) throw new Error(`bad --peer ${spec}: expected UUID=ADDRESS:TOTAL:USED`);
  return {
    ...emptyPeerInfo(match[1]!),
    address: match[2]!,
    totalBlocks: BigInt(match[3]!),
    usedBlocks: BigInt(match[4]!),
    protocolVersion: 2n,
  };
}

const { values } = parseArgs({
  args: Deno.args,
  options: {
    ...metadataFlagOptions,
    peer: { type: "string", multiple: true },
    lock: { type: "string", multiple: true },
    "ttl-ms": { type: "string", default: "30000" },
  },
});

const { peer: peerSpecs, lock: locks, "ttl-ms": ttlText, ...flags } = values;
const ttlMs = Number(ttlText);
await using opened = await openMetadata(flags);
const { service } = opened;
const lease = await service.leases.grant(ttlMs);
for (const spec of peerSpecs ?? []) await service.peers.registerPeer(parsePeer(spec), lease);
for (const name of locks ?? []) {
  const volume = await service.volumes.getVolume(name);
  await service.blockVolumes.lock(volume.id, { uuid: "e2e-helper", lease });
}
// Each period renews the lease and registers again, as heartbeats do: a registration's
// timestamp older than PEER_STALE_MS hides the peer, however long a slow test runs.
const keepAlive = setInterval(() => {
  service.leases.keepAlive(lease).catch((e) => console.error(`keepalive: ${e.message}`));
  for (const spec of peerSpecs ?? []) {
    service.peers.registerPeer(parsePeer(spec), lease).catch((e) =>
      console.error(`heartbeat: ${e.message}`)
    );
  }
}, Math.max(100, ttlMs / 3));
console.log("ready");
// Wait for the test to close our stdin.
for await (const _ of Deno.stdin.readable) {
  // ignore input
}
clearInterval(keepAlive);
await service.leases.revoke(lease);
