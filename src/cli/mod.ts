/**
 * Shared pieces of the command-line edge: command shape, flag parsing, error-to-exit-code mapping,
 * metadata backend resolution (`openMetadata`), the config file, the data-dir lock and output
 * formats.
 * @module
 */

export * from "./address.ts";
export * from "./command.ts";
export * from "./backend.ts";
export * from "./config_file.ts";
export * from "./data_dir.ts";
export * from "./drivers.ts";
export * from "./input.ts";
export * from "./progress.ts";
export * from "./table.ts";
