/**
 * Block storage engines behind the BlockStore contract: memory (clients, tests) and file (a
 * node's disk), and the FileIo boundary the file engine does all its file I/O through (the real
 * file system, or a power-loss simulation for tests). See block_store.ts for the contract every
 * engine keeps and file_io.ts for the file system's.
 * @module
 */

export * from "./block_store.ts";
export * from "./store_stats.ts";
export * from "./memory.ts";
export * from "./file.ts";
export * from "./file_io.ts";
export * from "./sys_file_io.ts";
export * from "./power_loss_file_io.ts";
export * from "./hooked_file_io.ts";
export * from "./storage_contract.ts";
export * from "./forwarding_store.ts";
export * from "./held_store.ts";
