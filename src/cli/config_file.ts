/**
 * The client config file, `~/.torus/config.json` by default: named profiles of metadata-service
 * settings, in the original's format `{"etcd_config": {"<profile>": {"etcd": "host:port", ...}}}`
 * with empty fields omitted, plus our optional `metadata-prefix`.
 *
 * Invariants: the directory is created 0700 and the file written 0600 (it may name client key
 * files), by writing a temp file, syncing it and renaming it over the old one, so a crash never
 * leaves half a file. Writers hold `<file>.lock` from reading the file to renaming the new one,
 * so two `ctl config` at once both land (neither loses the other's profile). Keys we do not know
 * are kept when a profile is merged.
 *
 * The file is input we do not control: it is read with a cap (CONFIG_FILE_MAX_BYTES, so
 * `--config /dev/zero` fails at once), must be UTF-8, a field may not be blank (the original
 * omitted empty fields; a blank `etcd` would silently mean the embedded store), and profiles are
 * looked up as own properties only (`--profile constructor` is not a profile).
 * @module
 */

import {
  CONFIG_FILE_LOCK_WAIT_MS,
  CONFIG_FILE_MAX_BYTES,
  decodeUtf8,
  ErrorCode,
  escapeText,
  invalid,
  isTorusError,
  TorusError,
} from "../core/mod.ts";
import {
  type HeldFileLock,
  lockFileWaiting,
  makeDirectoryDurable,
  readFileBounded,
  writeFileAtomic,
} from "../sys/mod.ts";
import { envVar, isBlank, readProcessEnv } from "./input.ts";

/** The settings of one profile (the original's JSON keys). */
export interface ConfigProfile {
  etcd?: string;
  "etcd-cert-file"?: string;
  "etcd-key-file"?: string;
  "etcd-ca-file"?: string;
  "metadata-prefix"?: string;
}

/** The fields a profile may hold, in the order they are written. */
export const profileFields = [
  "etcd",
  "etcd-cert-file",
  "etcd-key-file",
  "etcd-ca-file",
  "metadata-prefix",
] as const satisfies readonly (keyof ConfigProfile)[];

/** The whole file. `etcd_config` maps profile names to settings. */
export interface ConfigFile {
  etcd_config: Record<string, ConfigProfile>;
  [other: string]: unknown;
}

/** Environment lookups (injected so tests do not depend on the real $HOME). */
export interface Env {
  get(name: string): string | undefined;
}

/** The process environment (a value that is not valid UTF-8 is a UsageError). */
export const processEnv: Env = { get: readProcessEnv };

/** `$HOME/.torus/config.json`, or null without $HOME (a blank $HOME is a UsageError). */
export function defaultConfigPath(env: Env): string | null {
  const home = envVar(env, "HOME");
  if (home === undefined) return null;
  return `${home.replace(/\/+$/, "")}/.torus/config.json`;
}

/** Profile `name` of `config`, looked up as an own property only; undefined when absent. */
export function configProfile(config: ConfigFile, name: string): ConfigProfile | undefined {
  return Object.hasOwn(config.etcd_config, name) ? config.etcd_config[name] : undefined;
}

function checkProfile(name: string, value: unknown, path: string): ConfigProfile {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(`config file ${path}: profile "${name}" is not an object`);
  }
  const profile: ConfigProfile = {};
  for (const [key, field] of Object.entries(value)) {
    if (!(profileFields as readonly string[]).includes(key)) continue;
    if (typeof field !== "string") {
      throw invalid(`config file ${path}: "${key}" of profile "${name}" is not a string`);
    }
    if (isBlank(field)) {
      throw invalid(
        `config file ${path}: "${key}" of profile "${name}" is empty; remove it or give a value`,
      );
    }
    profile[key as keyof ConfigProfile] = field;
  }
  return profile;
}

/** Parses the file's text; anything malformed is `invalid` with the path in the message. */
export function parseConfigFile(text: string, path: string): ConfigFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw invalid(`config file ${path} is not valid JSON`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw invalid(`config file ${path} is not a JSON object`);
  }
  const record = raw as Record<string, unknown>;
  const profiles = record.etcd_config ?? {};
  if (typeof profiles !== "object" || profiles === null || Array.isArray(profiles)) {
    throw invalid(`config file ${path}: "etcd_config" is not an object`);
  }
  const etcdConfig: Record<string, ConfigProfile> = {};
  for (const [name, value] of Object.entries(profiles)) {
    // Defined, not assigned: a profile named "__proto__" is data like any other name, not the
    // object's prototype. Lookups go through configProfile (own properties only).
    Object.defineProperty(etcdConfig, name, {
      value: checkProfile(name, value, path),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return { ...record, etcd_config: etcdConfig };
}

/** Reads the file (at most CONFIG_FILE_MAX_BYTES of UTF-8); null when it does not exist. */
export async function readConfigFile(path: string): Promise<ConfigFile | null> {
  let bytes: Uint8Array;
  try {
    bytes = await readFileBounded(path, CONFIG_FILE_MAX_BYTES, `config file ${path}`);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    if (isTorusError(error)) throw error;
    throw invalid(`cannot read config file ${path}: ${(error as Error).message}`);
  }
  return parseConfigFile(decodeUtf8(bytes, `config file ${path}`), path);
}

/** Serialises as the original did: tab-indented JSON, empty fields omitted. */
export function formatConfigFile(config: ConfigFile): string {
  return JSON.stringify(config, null, "\t") + "\n";
}

/** Takes `<path>.lock`, waiting a little for another writer of the file to finish. */
async function lockConfigFile(path: string): Promise<HeldFileLock> {
  const attempt = await lockFileWaiting(`${path}.lock`, "torus ctl config", {
    waitMs: CONFIG_FILE_LOCK_WAIT_MS,
  });
  if (attempt.held !== undefined) return attempt.held;
  const { pid, description } = attempt.holder;
  const who = `${escapeText(description ?? "another process")}${
    pid === null ? "" : `, pid ${pid}`
  }`;
  throw new TorusError(
    ErrorCode.Locked,
    `config file ${escapeText(path)} is being written by ${who}`,
  );
}

/**
 * Merges `values` into profile `profile` of the file at `path` (creating both as needed) and
 * writes it back with mode 0600 in a 0700 directory. Returns the file as written.
 */
export async function writeProfile(
  path: string,
  profile: string,
  values: ConfigProfile,
): Promise<ConfigFile> {
  if (profile === "") throw invalid("profile name must not be empty");
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
  await makeDirectoryDurable(dir, 0o700);
  using _lock = await lockConfigFile(path);
  const current = (await readConfigFile(path)) ?? { etcd_config: {} };
  const merged: ConfigProfile = { ...configProfile(current, profile) };
  for (const field of profileFields) {
    const value = values[field];
    if (value !== undefined && value !== "") merged[field] = value;
  }
  const next: ConfigFile = {
    ...current,
    etcd_config: { ...current.etcd_config, [profile]: merged },
  };
  await writeFileAtomic(path, formatConfigFile(next), { mode: 0o600 });
  return next;
}
