/**
 * Which metadata service a command talks to, decided the same way for `serve`, `ctl` and `blk`:
 *
 * 1. `-C/--etcd host:port[,host:port…]` (with `--etcd-cert-file/--etcd-key-file/--etcd-ca-file`)
 *    selects etcd;
 * 2. otherwise the profile (`--profile`, default `default`) of the config file (`--config`,
 *    default `~/.torus/config.json`) may name etcd endpoints and TLS files;
 * 3. otherwise the embedded store of the data dir (`--data-dir`, else `$TORUS_DATA_DIR`, else
 *    `./torus-data`) at `<data-dir>/metadata/kv.sqlite`, so one machine needs no flag.
 *
 * An empty or blank flag value, profile field or $TORUS_DATA_DIR/$HOME is refused (input.ts):
 * `-C ""` from a script with an unset variable must not quietly pick the embedded store.
 *
 * Each setting is taken from the first of flag, profile, default that has it. `--metadata-prefix`
 * (flag or profile) moves the keys away from the original's `/github.com/coreos/torus/`.
 *
 * Invariant: only `init`-like callers (`create: true`) create the embedded store; every other
 * command on a data dir without one fails at once with "cluster not initialised", instead of
 * silently creating an empty store somewhere unexpected.
 * @module
 */

import {
  type Clock,
  invalid,
  LogLevel,
  METADATA_CALL_TIMEOUT_MS,
  METADATA_CONNECT_TIMEOUT_MS,
  setGlobalLogLevel,
  systemClock,
} from "../core/mod.ts";
import {
  checkPrefix,
  createMetadataService,
  DEFAULT_METADATA_PREFIX,
  type KvStore,
  type MetadataService,
  notInitialised,
} from "../metadata/mod.ts";
import {
  type ConfigProfile,
  configProfile,
  defaultConfigPath,
  type Env,
  processEnv,
  readConfigFile,
} from "./config_file.ts";
import { defaultDrivers, type KvDrivers } from "./drivers.ts";
import { envVar, splitList } from "./input.ts";

/** Flags every metadata-using command accepts (spread into its parseFlags options). */
export const metadataFlagOptions = {
  etcd: { type: "string", short: "C" },
  "etcd-cert-file": { type: "string" },
  "etcd-key-file": { type: "string" },
  "etcd-ca-file": { type: "string" },
  config: { type: "string" },
  profile: { type: "string" },
  "data-dir": { type: "string" },
  "metadata-prefix": { type: "string" },
  debug: { type: "boolean" },
} as const;

/** Help lines for {@link metadataFlagOptions}. */
export const metadataFlagsHelp = `Metadata service flags:
  -C, --etcd HOST:PORT[,HOST:PORT...]  etcd endpoints (default: the profile's, else the
                                       embedded store of the data dir)
      --etcd-cert-file, --etcd-key-file, --etcd-ca-file FILE
                                       TLS client certificate, key and CA for etcd
      --config FILE                    config file (default ~/.torus/config.json)
      --profile NAME                   profile in the config file (default "default")
      --data-dir DIR                   data dir of the embedded store (default
                                       $TORUS_DATA_DIR or ./torus-data)
      --metadata-prefix PREFIX         key prefix (default ${DEFAULT_METADATA_PREFIX})
      --debug                          log debug messages`;

/** Parsed values of {@link metadataFlagOptions}. */
export interface MetadataFlags {
  etcd?: string | undefined;
  "etcd-cert-file"?: string | undefined;
  "etcd-key-file"?: string | undefined;
  "etcd-ca-file"?: string | undefined;
  config?: string | undefined;
  profile?: string | undefined;
  "data-dir"?: string | undefined;
  "metadata-prefix"?: string | undefined;
  debug?: boolean | undefined;
}

/** Where the metadata lives. */
export type BackendSpec =
  | {
    readonly kind: "etcd";
    readonly endpoints: readonly string[];
    readonly certFile?: string;
    readonly keyFile?: string;
    readonly caFile?: string;
    readonly prefix: string;
  }
  | {
    readonly kind: "embedded";
    readonly dataDir: string;
    /** `<data-dir>/metadata/kv.sqlite`. */
    readonly path: string;
    readonly prefix: string;
  };

/**
 * The data dir default: $TORUS_DATA_DIR, else `./torus-data`, for every command. A set but empty
 * $TORUS_DATA_DIR is a UsageError (input.ts), never the filesystem root or the default.
 */
export function defaultDataDir(env: Env): string {
  return envVar(env, "TORUS_DATA_DIR") ?? "./torus-data";
}

/** The data dir of `flags` (`--data-dir`, else {@link defaultDataDir}). */
export function dataDirOf(flags: MetadataFlags, env: Env): string {
  return flags["data-dir"] ?? defaultDataDir(env);
}

/** The embedded store's file inside a data dir. */
export function embeddedStorePath(dataDir: string): string {
  return `${dataDir.replace(/\/+$/, "")}/metadata/kv.sqlite`;
}

async function profileOf(flags: MetadataFlags, env: Env): Promise<ConfigProfile> {
  const path = flags.config ?? defaultConfigPath(env);
  const config = path === null ? null : await readConfigFile(path);
  if (flags.config !== undefined && config === null) {
    throw invalid(`config file ${flags.config} does not exist`);
  }
  const name = flags.profile ?? "default";
  const profile = config === null ? undefined : configProfile(config, name);
  if (flags.profile !== undefined && profile === undefined) {
    throw invalid(
      path === null
        ? `profile "${name}" needs a config file: $HOME is not set; pass --config FILE`
        : config === null
        ? `profile "${name}" needs a config file: ${path} does not exist`
        : `profile "${name}" is not in config file ${path}`,
    );
  }
  return profile ?? {};
}

function splitEndpoints(text: string): string[] {
  return splitList(text, "etcd endpoint");
}

/** Decides the backend from flags, config file and environment (flag > profile > default). */
export async function resolveBackend(
  flags: MetadataFlags,
  env: Env = processEnv,
): Promise<BackendSpec> {
  const profile = await profileOf(flags, env);
  const prefix = checkPrefix(
    flags["metadata-prefix"] ?? profile["metadata-prefix"] ?? DEFAULT_METADATA_PREFIX,
  );
  // Never blank here (parseFlags and the config file refuse that), and never silently ignored:
  // a value without any endpoint fails in splitEndpoints instead of falling back to embedded.
  const etcd = flags.etcd ?? profile.etcd;
  if (etcd !== undefined) {
    const tls = {
      certFile: flags["etcd-cert-file"] ?? profile["etcd-cert-file"],
      keyFile: flags["etcd-key-file"] ?? profile["etcd-key-file"],
      caFile: flags["etcd-ca-file"] ?? profile["etcd-ca-file"],
    };
    const spec: BackendSpec = {
      kind: "etcd",
      endpoints: splitEndpoints(etcd),
      prefix,
      ...Object.fromEntries(Object.entries(tls).filter(([, v]) => v !== undefined)),
    };
    return spec;
  }
  const tlsFlag = ["etcd-cert-file", "etcd-key-file", "etcd-ca-file"] as const;
  const stray = tlsFlag.find((f) => flags[f] !== undefined);
  if (stray) throw invalid(`--${stray} needs an etcd endpoint (-C HOST:PORT)`);
  const dataDir = dataDirOf(flags, env);
  const spec: BackendSpec = { kind: "embedded", dataDir, path: embeddedStorePath(dataDir), prefix };
  return spec;
}

/** One line naming the backend, for messages (`etcd 127.0.0.1:2379` / `embedded ./x/...`). */
export function describeBackend(spec: BackendSpec): string {
  return spec.kind === "etcd" ? `etcd ${spec.endpoints.join(",")}` : `embedded store ${spec.path}`;
}

/** Options of {@link openMetadata}. */
export interface OpenMetadataOptions {
  /** Create the embedded store (and its directories, 0700) if absent: only `init` does. */
  readonly create?: boolean;
  readonly env?: Env;
  readonly clock?: Clock;
  readonly drivers?: KvDrivers;
}

/** An open metadata service and where it lives. */
export interface OpenedMetadata extends AsyncDisposable {
  readonly service: MetadataService;
  readonly backend: BackendSpec;
  close(): Promise<void>;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function openStore(spec: BackendSpec, options: OpenMetadataOptions): Promise<KvStore> {
  const drivers = options.drivers ?? defaultDrivers;
  if (spec.kind === "etcd") {
    return await drivers.openEtcd({
      endpoints: spec.endpoints,
      ...(spec.certFile !== undefined ? { certFile: spec.certFile } : {}),
      ...(spec.keyFile !== undefined ? { keyFile: spec.keyFile } : {}),
      ...(spec.caFile !== undefined ? { caFile: spec.caFile } : {}),
      callTimeoutMs: METADATA_CALL_TIMEOUT_MS,
      connectTimeoutMs: METADATA_CONNECT_TIMEOUT_MS,
    });
  }
  if (!(await exists(spec.path))) {
    if (!options.create) throw notInitialised();
    await Deno.mkdir(spec.path.slice(0, spec.path.lastIndexOf("/")), {
      recursive: true,
      mode: 0o700,
    });
  }
  return await drivers.openEmbedded({ path: spec.path });
}

/**
 * Resolves the backend from `flags` and opens the metadata service on it. The one function every
 * command uses to reach metadata. Unreachable etcd fails with `unavailable` within the connect
 * timeout; a missing embedded store with "cluster not initialised" (unless `create`).
 */
export async function openMetadata(
  flags: MetadataFlags,
  options: OpenMetadataOptions = {},
): Promise<OpenedMetadata> {
  if (flags.debug) setGlobalLogLevel(LogLevel.Debug);
  const backend = await resolveBackend(flags, options.env ?? processEnv);
  const kv = await openStore(backend, options);
  const service = createMetadataService(kv, {
    prefix: backend.prefix,
    clock: options.clock ?? systemClock,
  });
  return {
    service,
    backend,
    close: () => service.close(),
    [Symbol.asyncDispose]: () => service.close(),
  };
}
