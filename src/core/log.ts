/**
 * Leveled logging per package, as the original's capnslog: `--debug` lowers the global level and
 * `--logpkg "distributor=T,etcd=D"` sets levels per package. Lines go to stderr so stdout stays
 * clean for tables and JSON. Every line is escaped (src/core/text.ts): a logged value read from the
 * metadata store or the network cannot drive the terminal or break the line.
 * @module
 */

import { invalid } from "./errors.ts";
import { escapeText } from "./text.ts";

/** Levels, most severe first (capnslog letters C,E,W,N,I,D,T). */
export const LogLevel = {
  Critical: 0,
  Error: 1,
  Warning: 2,
  Notice: 3,
  Info: 4,
  Debug: 5,
  Trace: 6,
} as const;
export type LogLevel = typeof LogLevel[keyof typeof LogLevel];

const levelLetters = ["C", "E", "W", "N", "I", "D", "T"] as const;

/** A package's logger. */
export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  notice(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  trace(message: string): void;
  enabled(level: LogLevel): boolean;
}

type Sink = (line: string) => void;

const encoder = new TextEncoder();
let globalLevel: LogLevel = LogLevel.Info;
const packageLevels = new Map<string, LogLevel>();
let sink: Sink = (line) => {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
};

/** Sets the level for every package without its own setting. */
export function setGlobalLogLevel(level: LogLevel): void {
  globalLevel = level;
}

/** Replaces the output (tests capture lines this way). */
export function setLogSink(newSink: Sink): void {
  sink = newSink;
}

/** Applies a `pkg=L,pkg2=L` string (`*` = all packages), as `--logpkg`. */
export function configureLogPackages(spec: string): void {
  const parts = spec.split(",").map((p) => p.trim()).filter((p) => p !== "");
  // Every part is checked before any is applied, so a bad spec changes nothing.
  const settings = parts.map((part): [string, LogLevel] => {
    const pieces = part.split("=").map((piece) => piece.trim());
    const letter = (pieces[1] ?? "").toUpperCase() as typeof levelLetters[number];
    const level = levelLetters.indexOf(letter);
    if (pieces.length !== 2 || !pieces[0] || level < 0) {
      throw invalid(`invalid log spec "${part}": expected package=LEVEL`);
    }
    return [pieces[0], level as LogLevel];
  });
  for (const [name, level] of settings) {
    if (name === "*") globalLevel = level;
    else packageLevels.set(name, level);
  }
}

/** The logger of package `name`. */
export function logger(name: string): Logger {
  const enabled = (level: LogLevel) => level <= (packageLevels.get(name) ?? globalLevel);
  const emit = (level: LogLevel, message: string) => {
    if (!enabled(level)) return;
    const text = escapeText(`${name}: ${message}`);
    sink(`${new Date().toISOString()} ${levelLetters[level]} | ${text}`);
  };
  return {
    error: (m) => emit(LogLevel.Error, m),
    warn: (m) => emit(LogLevel.Warning, m),
    notice: (m) => emit(LogLevel.Notice, m),
    info: (m) => emit(LogLevel.Info, m),
    debug: (m) => emit(LogLevel.Debug, m),
    trace: (m) => emit(LogLevel.Trace, m),
    enabled,
  };
}
