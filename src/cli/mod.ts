/**
 * Shared pieces of the command-line edge: command shape, flag parsing, error-to-exit-code mapping.
 * @module
 */

export * from "./command.ts";
