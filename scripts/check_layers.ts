/**
 * Enforces the import rules of docs/ARCHITECTURE.md: a module under src/ may import only from its
 * own folder or, through their mod.ts, from modules in lower layers, and never from tests/. Pure modules (ring,
 * blockset, models) may not touch Deno's I/O APIs. Exits 1 listing every violation.
 */

/** Layer of each top-level folder of src/ (lower may not import higher). */
export const layers: Readonly<Record<string, number>> = {
  core: 1,
  models: 2,
  sys: 2,
  ring: 3,
  storage: 3,
  metadata: 3,
  blockset: 4,
  distributor: 4,
  gc: 4,
  server: 5,
  block: 6,
  http: 6,
  cli: 7,
  cmd: 8,
};

/** Folders whose code must stay pure: no Deno I/O, no FFI, no clock reads. */
export const pureFolders: readonly string[] = ["ring", "blockset", "models"];

const ioPattern =
  /\bDeno\.(open|openSync|readFile|writeFile|readTextFile|writeTextFile|connect|listen|dlopen|Command|remove|mkdir)\b|\bDate\.now\(|\bsetTimeout\(/;

/** One broken rule. */
export interface Violation {
  file: string;
  message: string;
}

function folderOf(path: string): string | null {
  const match = /(?:^|\/)src\/([^/]+)\//.exec(path);
  return match ? match[1]! : null;
}

function resolveImport(fromFile: string, specifier: string): string | null {
  if (!specifier.startsWith(".")) return null;
  return new URL(specifier, `file://${fromFile}`).pathname;
}

/** Violations of one file's imports and (for pure folders) its I/O use. */
export function checkFile(file: string, text: string): Violation[] {
  const from = folderOf(file);
  if (from === null) return [];
  const violations: Violation[] = [];
  const importPattern =
    /(?:import|export)\s[^'"]*?from\s+["']([^"']+)["']|import\(["']([^"']+)["']\)/g;
  for (const match of text.matchAll(importPattern)) {
    const target = resolveImport(file, match[1] ?? match[2] ?? "");
    if (target === null) continue;
    if (/\/tests\//.test(target)) {
      violations.push({ file, message: `imports test code ${target}` });
      continue;
    }
    const to = folderOf(target);
    if (to === null || to === from) continue;
    const fromLayer = layers[from];
    const toLayer = layers[to];
    if (fromLayer === undefined || toLayer === undefined) {
      violations.push({ file, message: `folder src/${from} or src/${to} has no layer` });
    } else if (toLayer >= fromLayer) {
      violations.push({
        file,
        message: `src/${from} (layer ${fromLayer}) imports src/${to} (layer ${toLayer})`,
      });
    } else if (!target.endsWith(`/src/${to}/mod.ts`)) {
      violations.push({ file, message: `imports ${target} instead of src/${to}/mod.ts` });
    }
  }
  if (pureFolders.includes(from) && !file.endsWith("_test.ts") && !file.endsWith("_bench.ts")) {
    const line = text.split("\n").findIndex((l) => ioPattern.test(l));
    if (line >= 0) violations.push({ file, message: `pure module does I/O at line ${line + 1}` });
  }
  return violations;
}

async function* walk(dir: string): AsyncIterable<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) yield* walk(path);
    else if (entry.isFile && path.endsWith(".ts")) yield path;
  }
}

if (import.meta.main) {
  const root = new URL("../", import.meta.url).pathname;
  const violations: Violation[] = [];
  for await (const file of walk(`${root}src`)) {
    violations.push(...checkFile(file, await Deno.readTextFile(file)));
  }
  for (const v of violations) console.error(`${v.file.replace(root, "")}: ${v.message}`);
  if (violations.length > 0) Deno.exit(1);
  console.log("layers ok");
}
