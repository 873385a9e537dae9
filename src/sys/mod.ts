/**
 * System calls through Deno FFI (layer 2): libc file, mapping and locking calls, errno names and
 * the SysError they throw. Used by the disk engine now and by the NBD and AoE edges later.
 * Nothing here keeps state beyond the lazily opened libc handle.
 * @module
 */

export * from "./errno.ts";
export * from "./files.ts";
export * from "./libc.ts";
