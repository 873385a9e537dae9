/**
 * Block volumes and their front ends. `device.ts` is the contract every front end serves,
 * `memory_device.ts` an in-memory Device, `device_contract.ts` the suite every Device runs;
 * `nbd/` is the NBD protocol (codec, server, client); `aoe/` the ATA-over-Ethernet target (the AoE issue).
 * @module
 */

export * from "./device.ts";
export * from "./volume_format.ts";
export * from "./volume_map.ts";
export * from "./volume_reader.ts";
export * from "./volume.ts";
export * from "./volumes.ts";
export * from "./gc.ts";
export * from "./transfer.ts";
export * from "./memory_device.ts";
export * from "./nbd/mod.ts";
export * from "./aoe/mod.ts";
