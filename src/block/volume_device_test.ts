/** Runs the Device contract against block volumes (writable) and their snapshots (read-only). */

import { systemClock } from "../core/mod.ts";
import { createMetadataService, MemoryKvStore } from "../metadata/mod.ts";
import { MemoryBlockStore } from "../storage/mod.ts";
import { LeaseKeeper } from "../server/mod.ts";
import { deviceContract } from "./device_contract.ts";
import { VolumeService } from "./volumes.ts";

/** Small blocks, so the contract's 1 MiB devices span many blocks and map chunks. */
const BLOCK = 16 * 1024;

async function service() {
  const mds = createMetadataService(new MemoryKvStore(), { prefix: "/d/" });
  await mds.cluster.init({
    blockSizeBytes: BLOCK,
    defaultBlockSpec: [{ kind: 0, options: "" }],
    ring: { type: 4, version: 1, replicationFactor: 2, peers: [], attrs: {} },
  });
  const store = new MemoryBlockStore({ blockSizeBytes: BLOCK, totalBlocks: 2000 });
  const leases = await LeaseKeeper.start({ leases: mds.leases, clock: systemClock });
  const volumes = new VolumeService({
    metadata: mds,
    store,
    leases,
    holder: "contract",
    clock: systemClock,
  });
  return {
    mds,
    volumes,
    async cleanup() {
      await volumes.close();
      await leases.close();
      await mds.close();
    },
  };
}

deviceContract("BlockVolume", {
  async writable(sizeBytes) {
    const t = await service();
    await t.mds.volumes.createBlockVolume("v", sizeBytes);
    return {
      device: await t.volumes.openWritable("v"),
      reopen: () => t.volumes.openWritable("v"),
      cleanup: t.cleanup,
    };
  },
  async readOnly(contents) {
    const t = await service();
    await t.mds.volumes.createBlockVolume("v", contents.length);
    const writer = await t.volumes.openWritable("v");
    await writer.writeAt(0, contents);
    await t.volumes.createSnapshot("v", "s");
    // The writer goes on after the snapshot: none of it may show in the snapshot.
    await writer.writeAt(0, new Uint8Array(Math.min(contents.length, 8192)).fill(0xee));
    await writer.close();
    return { device: await t.volumes.openSnapshot("v", "s"), cleanup: t.cleanup };
  },
  knowsZeros: true,
});
