/**
 * Block storage engines behind the BlockStore contract: memory (clients, tests) and file (a
 * node's disk). See block_store.ts for the contract every engine keeps.
 * @module
 */

export * from "./block_store.ts";
export * from "./memory.ts";
export * from "./file.ts";
