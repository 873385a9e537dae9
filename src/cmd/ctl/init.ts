/**
 * `torus ctl init`: writes the cluster's settings (block size, default block spec) and its first
 * ring (ketama, replication 2, version 1, no peers; or empty with --no-ring) in one transaction.
 * `--view` shows the settings of an initialised cluster (original issue #351). On the embedded
 * store it holds the data-dir lock while it creates and initialises the store.
 * @module
 */

import {
  type Command,
  describeBackend,
  ExitCode,
  lockDataDir,
  metadataFlagOptions,
  metadataFlagsHelp,
  parseFlags,
  renderJson,
  resolveBackend,
} from "../../cli/mod.ts";
import { escapeText, formatSize, parseSize, REPLICATION_DEFAULT } from "../../core/mod.ts";
import { formatBlockLayerSpec, parseBlockLayerSpec } from "../../blockset/mod.ts";
import { checkInitOptions, type GlobalMetadata, type InitOptions } from "../../metadata/mod.ts";
import { createRing, RingType } from "../../ring/mod.ts";
import { makeDirectoryDurable } from "../../sys/mod.ts";
import { type CtlDeps, expectPositionals, metadataFlagsOf, withMetadata } from "./common.ts";

const flags = {
  ...metadataFlagOptions,
  "block-size": { type: "string", default: "512KiB" },
  "block-spec": { type: "string", default: "crc" },
  "no-ring": { type: "boolean" },
  view: { type: "boolean" },
  json: { type: "boolean" },
} as const;

function specText(global: GlobalMetadata): string {
  return formatBlockLayerSpec(
    global.defaultBlockSpec.map((l) => ({ kind: l.kind as 0, options: l.options })),
  );
}

/** `torus ctl init`. */
export function initCommand(deps: CtlDeps): Command {
  return {
    name: "init",
    summary: "Initialise the cluster metadata (block size, block spec, first ring)",
    help: `Usage: torus ctl init [--block-size SIZE] [--block-spec SPEC] [--no-ring]
       torus ctl init --view [--json]

Writes the cluster settings and its first ring. Without -C (or a profile naming etcd) this
creates the embedded metadata store in the data dir, holding the data-dir lock meanwhile: it
fails, naming the pid, while a torus serve runs on that data dir.
  --block-size SIZE  block size of every volume (default 512KiB)
  --block-spec SPEC  default layers of new volumes, top first (default crc; ",base" is appended
                     when missing, so the default is crc,base)
  --no-ring          start with an empty ring instead of ketama (replication ${REPLICATION_DEFAULT})
  --view             print the settings of an initialised cluster instead
  --json             with --view: machine-readable output

${metadataFlagsHelp}
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      const metadata = metadataFlagsOf(values);
      if (values.view) {
        const global = await withMetadata(
          deps,
          metadata,
          (m) => m.service.cluster.globalMetadata(),
        );
        io.stdout(
          values.json
            ? renderJson({ blockSizeBytes: global.blockSizeBytes, blockSpec: specText(global) })
            : `Block size: ${global.blockSizeBytes} bytes (${
              formatSize(global.blockSizeBytes)
            })\n` +
              `Block spec: ${escapeText(specText(global))}\n`,
        );
        return ExitCode.Ok;
      }
      // Inputs are checked before anything is opened, so a typo never creates a store.
      const blockSizeBytes = parseSize(values["block-size"]);
      const spec = parseBlockLayerSpec(values["block-spec"]);
      const ring = values["no-ring"]
        ? createRing(RingType.Empty, { version: 1, replication: 0, peers: [] })
        : createRing(RingType.Ketama, { version: 1, replication: REPLICATION_DEFAULT, peers: [] });
      const init: InitOptions = {
        blockSizeBytes,
        defaultBlockSpec: spec.map((l) => ({ kind: l.kind, options: l.options })),
        ring: ring.toMessage(),
      };
      checkInitOptions(init);
      // Creating the embedded store takes the data-dir lock, as serve does, so the two never
      // create the same files at once; a running serve is named instead.
      const backend = await resolveBackend(metadata, deps.env);
      using _dataDirLock = backend.kind === "embedded"
        ? await lockDataDir(backend.dataDir, "torus ctl init")
        : undefined;
      if (backend.kind === "embedded") {
        await makeDirectoryDurable(backend.path.slice(0, backend.path.lastIndexOf("/")), 0o700);
      }
      const where = await withMetadata(deps, metadata, async ({ service, backend }) => {
        await service.cluster.init(init);
        return escapeText(describeBackend(backend));
      }, { create: true });
      io.stdout(
        `Initialised torus in ${where}: block size ${formatSize(blockSizeBytes)}, ` +
          `block spec ${formatBlockLayerSpec(spec)}, ring ${
            values["no-ring"] ? "empty" : "ketama"
          }` +
          `${values["no-ring"] ? "" : ` (replication ${REPLICATION_DEFAULT})`}\n`,
      );
      return ExitCode.Ok;
    },
  };
}
