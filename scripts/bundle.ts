/**
 * `deno task bundle`: builds dist/torus.js, one file that runs with `deno run -A dist/torus.js`
 * or, as a program, `./dist/torus.js` (see {@link launcherHeader}).
 * Pure-JS dependencies are inlined. Packages that cannot be inlined (a native addon, etcd3 which
 * reads its .proto files at run time, grpc-js) stay external and are rewritten to pinned `npm:`
 * specifiers, which Deno fetches into its cache on first use; no node_modules is needed beside
 * the file. Files loaded at run time by URL (the embedded store's worker,
 * `new URL("./embedded_worker.js", import.meta.url)`) are inlined as data: URLs.
 */

const root = new URL("../", import.meta.url).pathname;
const external = ["@node-rs/crc32", "etcd3", "@grpc/grpc-js"];

/** Exact versions of the external packages, from package.json (they are pinned there). */
async function pinnedVersions(): Promise<Map<string, string>> {
  const pkg = JSON.parse(await Deno.readTextFile(`${root}package.json`));
  const versions = new Map<string, string>();
  for (const name of external) {
    const version = pkg.dependencies?.[name];
    if (typeof version !== "string" || !/^\d+\.\d+\.\d+$/.test(version)) {
      throw new Error(`package.json must pin ${name} to an exact version, found ${version}`);
    }
    versions.set(name, version);
  }
  return versions;
}

/** Rewrites `from "pkg"` / `import("pkg")` of external packages to `npm:pkg@version`. */
export function pinExternalImports(code: string, versions: Map<string, string>): string {
  let out = code;
  for (const [name, version] of versions) {
    const escaped = name.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
    const pattern = new RegExp(`(from\\s*|import\\s*\\(\\s*|import\\s*)(["'])${escaped}\\2`, "g");
    out = out.replace(pattern, `$1$2npm:${name}@${version}$2`);
  }
  return out;
}

/** Source files under src/ by base name, for inlining assets referenced by URL. */
async function findSources(dir: string, found = new Map<string, string[]>()) {
  for await (const entry of Deno.readDir(dir)) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) await findSources(path, found);
    else found.set(entry.name, [...(found.get(entry.name) ?? []), path]);
  }
  return found;
}

/**
 * Replaces `new URL("./asset.js", import.meta.url)` with a data: URL holding the asset, so the
 * bundle needs no file beside it. Each asset name must be unique under src/.
 */
export async function inlineUrlAssets(code: string): Promise<string> {
  const sources = await findSources(`${root}src`);
  const pattern = /new URL\(\s*["']\.\/([\w.-]+\.js)["']\s*,\s*import\.meta\.url\s*\)/g;
  const assets = new Map<string, string>();
  for (const match of code.matchAll(pattern)) {
    const name = match[1]!;
    const paths = sources.get(name) ?? [];
    if (paths.length !== 1) throw new Error(`asset ${name}: expected one file under src/`);
    const bytes = await Deno.readFile(paths[0]!);
    const base64 = btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    assets.set(name, `new URL("data:application/javascript;base64,${base64}")`);
  }
  return code.replace(pattern, (_whole, name: string) => assets.get(name)!);
}

/**
 * The first two lines of the bundle: a file that is both a shell script and a module. Run as a
 * program (`./torus.js ARGS`), /bin/sh checks that every argument is valid UTF-8 (Deno refuses
 * other command lines before any torus code runs, with its own usage text and backtrace) and
 * then runs the file with Deno; to Deno the second line is a comment. Same check as bin/torus.
 */
export const launcherHeader = "#!/bin/sh\n" +
  "//usr/bin/env true; " +
  "if command -v iconv >/dev/null 2>&1 && " +
  "! printf '%s\\n' \"$@\" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1; then n=0; " +
  'for a in "$@"; do n=$((n + 1)); ' +
  "printf '%s' \"$a\" | iconv -f UTF-8 -t UTF-8 >/dev/null 2>&1 || " +
  '{ echo "torus: argument $n is not valid UTF-8" >&2; exit 2; }; done; fi; ' +
  'exec deno run -A "$0" "$@"\n';

async function main(): Promise<void> {
  const output = Deno.args[0] ?? `${root}dist/torus.js`;
  await Deno.mkdir(output.replace(/\/[^/]*$/, ""), { recursive: true });
  const args = [
    "bundle",
    "--platform=deno",
    ...external.flatMap((name) => ["--external", name]),
    "-o",
    output,
    `${root}main.ts`,
  ];
  const result = await new Deno.Command(Deno.execPath(), { args, cwd: root }).output();
  if (!result.success) {
    console.error(new TextDecoder().decode(result.stderr));
    Deno.exit(1);
  }
  const code = await Deno.readTextFile(output);
  const pinned = pinExternalImports(await inlineUrlAssets(code), await pinnedVersions());
  await Deno.writeTextFile(
    output,
    launcherHeader + pinned.replace(/^#!.*\n/, ""),
  );
  await Deno.chmod(output, 0o755);
  console.log(`wrote ${output} (${(pinned.length / 1024).toFixed(0)} KiB)`);
}

if (import.meta.main) await main();
