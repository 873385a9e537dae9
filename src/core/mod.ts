/**
 * Core value types and cross-cutting helpers shared by every module: block identities, errors,
 * assertions, limits, sizes, clock, randomness, checksums, logging, the rules for names and UUIDs,
 * and the escaping of text for terminals. Nothing here does network or disk I/O.
 * @module
 */

export * from "./assert.ts";
export * from "./block_ref.ts";
export * from "./byte_stream.ts";
export * from "./bytes.ts";
export * from "./bounded_read.ts";
export * from "./checksum.ts";
export * from "./clock.ts";
export * from "./durations.ts";
export * from "./errors.ts";
export * from "./limits.ts";
export * from "./in_flight.ts";
export * from "./log.ts";
export * from "./names.ts";
export * from "./pacer.ts";
export * from "./random.ts";
export * from "./shared_run.ts";
export * from "./sizes.ts";
export * from "./text.ts";
export * from "./uuid.ts";
export * from "./version.ts";
