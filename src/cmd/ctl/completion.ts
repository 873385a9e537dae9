/**
 * `torus ctl completion bash`: a bash completion script for the whole `torus` program, generated
 * from the command tree itself (subcommands of every group, flags named in every help text), so it
 * cannot fall out of date with the commands.
 * @module
 */

import { type Command, ExitCode, parseFlags, UsageError } from "../../cli/mod.ts";
import { type CtlDeps, expectPositionals } from "./common.ts";

/** Flags a command's help text mentions (`--json`, `-C`). */
export function flagsInHelp(help: string): string[] {
  const found = new Set<string>();
  for (const match of help.matchAll(/(?:^|[\s,[|])(--[a-z][a-z0-9-]*|-[A-Za-z])(?=[\s,=\]|]|$)/g)) {
    found.add(match[1]!);
  }
  return [...found].sort();
}

/** Completion words per command path ("" is the program itself, "ctl volume" a group). */
export function completionTable(root: readonly Command[]): Map<string, string[]> {
  const table = new Map<string, string[]>();
  table.set("", [...root.map((c) => c.name), "help"]);
  const visit = (path: string, command: Command) => {
    const subcommands = command.subcommands ?? [];
    table.set(path, [...subcommands.map((c) => c.name), ...flagsInHelp(command.help)]);
    for (const sub of subcommands) visit(`${path} ${sub.name}`, sub);
  };
  for (const command of root) visit(command.name, command);
  return table;
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/** The bash script: `source <(torus ctl completion bash)`. */
export function bashCompletion(root: readonly Command[]): string {
  const cases = [...completionTable(root)].map(([path, words]) =>
    `    ${shellQuote(path)}) echo ${shellQuote(words.join(" "))} ;;`
  );
  return `# bash completion for torus; load with: source <(torus ctl completion bash)
_torus_words() {
  case "$1" in
${cases.join("\n")}
    *) echo "" ;;
  esac
}

_torus() {
  local cur word path i
  cur="\${COMP_WORDS[COMP_CWORD]}"
  path=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="\${COMP_WORDS[i]}"
    case "$word" in -*) continue ;; esac
    case " $(_torus_words "$path") " in
      *" $word "*) path="\${path:+$path }$word" ;;
    esac
  done
  COMPREPLY=($(compgen -W "$(_torus_words "$path")" -- "$cur"))
}

complete -o default -F _torus torus
`;
}

/** `torus ctl completion`. */
export function completionCommand(deps: CtlDeps): Command {
  return {
    name: "completion",
    summary: "Print a shell completion script (bash)",
    help: `Usage: torus ctl completion bash

Prints a bash completion script for torus and all its subcommands. Load it with
  source <(torus ctl completion bash)
or save it as /etc/bash_completion.d/torus.
`,
    run(args, io) {
      const { positionals } = parseFlags(args, {});
      expectPositionals(positionals, ["SHELL"]);
      if (positionals[0] !== "bash") {
        throw new UsageError(`unsupported shell "${positionals[0]}": only bash is supported`);
      }
      io.stdout(bashCompletion(deps.rootCommands()));
      return Promise.resolve(ExitCode.Ok);
    },
  };
}
