/**
 * Protobuf models (proto/*.proto) with typed codecs, and helpers between them and core types.
 * @module
 */

export * from "./models.ts";
export * from "./extensions.ts";
