/**
 * System calls through Deno FFI (layer 2): libc file, mapping and locking calls, errno names and
 * the SysError they throw; on top of them, whole-file locks that name their holder and durable
 * creation of small files and directories. Used by the disk engine, the commands' data-dir and
 * config-file handling, and by the NBD and AoE edges; TCP client sockets whose descriptor can be
 * handed to the kernel, and ioctl (kernel NBD attach). Nothing here keeps state beyond the
 * lazily opened libc handle, the set of lock files this process holds and a temp-name counter.
 * @module
 */

export * from "./aio.ts";
export * from "./uring.ts";
export * from "./durable_file.ts";
export * from "./errno.ts";
export * from "./files.ts";
export * from "./libc.ts";
export * from "./lock_file.ts";
export * from "./ioctl.ts";
export * from "./socket.ts";
export * from "./packet_socket.ts";
