/**
 * `torus ctl config`: writes the metadata settings given as flags into a profile of the config
 * file (merging with what the profile already has), or shows the file with `--view`.
 * @module
 */

import {
  type Command,
  type ConfigProfile,
  defaultConfigPath,
  ExitCode,
  formatConfigFile,
  metadataFlagOptions,
  parseFlags,
  readConfigFile,
  writeProfile,
} from "../../cli/mod.ts";
import { checkPrefix } from "../../metadata/mod.ts";
import { escapeJsonText, escapeText, invalid } from "../../core/mod.ts";
import { type CtlDeps, expectPositionals } from "./common.ts";

const flags = { ...metadataFlagOptions, view: { type: "boolean" } } as const;

/** `torus ctl config`. */
export function configCommand(deps: CtlDeps): Command {
  return {
    name: "config",
    summary: "Save etcd endpoints and TLS files in a config profile, or --view it",
    help: `Usage: torus ctl config [-C HOST:PORT[,HOST:PORT...]] [--etcd-cert-file FILE]
                        [--etcd-key-file FILE] [--etcd-ca-file FILE]
                        [--metadata-prefix PREFIX] [--profile NAME] [--config FILE]
       torus ctl config --view [--config FILE]

Merges the given settings into profile NAME (default "default") of the config file (default
~/.torus/config.json; directory mode 0700, file mode 0600). Later commands use the profile when
no -C flag is given. --view prints the file.
`,
    async run(args, io) {
      const { values, positionals } = parseFlags(args, flags);
      expectPositionals(positionals, []);
      const path = values.config ?? defaultConfigPath(deps.env);
      if (path === null) throw invalid("no config file: $HOME is not set; pass --config FILE");
      if (values.view) {
        const config = await readConfigFile(path);
        if (config === null) throw invalid(`config file ${path} does not exist`);
        io.stdout(escapeJsonText(formatConfigFile(config)));
        return ExitCode.Ok;
      }
      const profile: ConfigProfile = {};
      if (values.etcd !== undefined) profile.etcd = values.etcd;
      if (values["etcd-cert-file"] !== undefined) {
        profile["etcd-cert-file"] = values["etcd-cert-file"];
      }
      if (values["etcd-key-file"] !== undefined) profile["etcd-key-file"] = values["etcd-key-file"];
      if (values["etcd-ca-file"] !== undefined) profile["etcd-ca-file"] = values["etcd-ca-file"];
      if (values["metadata-prefix"] !== undefined) {
        profile["metadata-prefix"] = checkPrefix(values["metadata-prefix"]);
      }
      if (Object.keys(profile).length === 0) {
        throw invalid("nothing to save: give -C HOST:PORT, TLS files or --metadata-prefix");
      }
      const name = values.profile ?? "default";
      await writeProfile(path, name, profile);
      io.stdout(`Saved profile "${escapeText(name)}" in ${escapeText(path)}\n`);
      return ExitCode.Ok;
    },
  };
}
