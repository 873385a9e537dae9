/**
 * A strict reader of the Prometheus text exposition format (version 0.0.4), for tests: every line
 * must be a `# HELP`, a `# TYPE`, another comment, blank, or a sample; a sample's family must have
 * been typed before it, a family is typed and described once, a series appears once, and values
 * are Go-style floats. Throws naming the line otherwise.
 * @module
 */

/** One family: its type, help and samples by series (`name{labels}` as written). */
export interface MetricFamily {
  type: string;
  help: string | null;
  samples: Map<string, number>;
}

const NAME = "[a-zA-Z_:][a-zA-Z0-9_:]*";
const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
const VALUE =
  "[+-]?(?:Inf|NaN|[0-9]+(?:\\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\\.[0-9]+(?:[eE][+-]?[0-9]+)?)";
const SAMPLE = new RegExp(
  `^(${NAME})(\\{(?:${LABEL}(?:,${LABEL})*,?)?\\})? (${VALUE})(?: -?[0-9]+)?$`,
);
const HELP = new RegExp(`^# HELP (${NAME})(?: (.*))?$`);
const TYPE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);
const SUFFIXES = ["_bucket", "_sum", "_count"];

function familyOf(name: string, families: Map<string, MetricFamily>): MetricFamily | undefined {
  const exact = families.get(name);
  if (exact !== undefined) return exact;
  for (const suffix of SUFFIXES) {
    if (!name.endsWith(suffix)) continue;
    const family = families.get(name.slice(0, -suffix.length));
    if (family?.type === "histogram" || family?.type === "summary") return family;
  }
  return undefined;
}

function parseValue(text: string): number {
  const sign = text.startsWith("-") ? -1 : 1;
  const body = text.replace(/^[+-]/, "");
  if (body === "Inf") return sign * Infinity;
  if (body === "NaN") return NaN;
  return Number(text);
}

/** Parses `text`; throws `line N: ...` on the first line that breaks the format. */
export function parseExposition(text: string): Map<string, MetricFamily> {
  if (text.length > 0 && !text.endsWith("\n")) throw new Error("the exposition must end with \\n");
  const families = new Map<string, MetricFamily>();
  const lines = text.split("\n").slice(0, -1);
  lines.forEach((line, i) => {
    const fail = (why: string) => new Error(`line ${i + 1}: ${why}: ${JSON.stringify(line)}`);
    if (line.trim() === "") return;
    const type = TYPE.exec(line);
    if (type) {
      const existing = families.get(type[1]!);
      if (existing !== undefined && existing.type !== "") throw fail("a second TYPE");
      if (existing !== undefined && existing.samples.size > 0) throw fail("TYPE after samples");
      families.set(type[1]!, {
        type: type[2]!,
        help: existing?.help ?? null,
        samples: existing?.samples ?? new Map(),
      });
      return;
    }
    const help = HELP.exec(line);
    if (help) {
      const family = families.get(help[1]!) ?? { type: "", help: null, samples: new Map() };
      if (family.help !== null) throw fail("a second HELP");
      family.help = help[2] ?? "";
      families.set(help[1]!, family);
      return;
    }
    if (line.startsWith("#")) {
      if (/^#\s*(HELP|TYPE)\b/.test(line)) throw fail("a malformed HELP or TYPE");
      return;
    }
    const sample = SAMPLE.exec(line);
    if (!sample) throw fail("not a sample");
    const family = familyOf(sample[1]!, families);
    if (family === undefined || family.type === "") throw fail("a sample before its TYPE");
    const series = sample[1]! + (sample[2] ?? "");
    if (family.samples.has(series)) throw fail("a series twice");
    family.samples.set(series, parseValue(sample[3]!));
  });
  return families;
}

/** The value of one series, e.g. `torus_nbd_requests_total{command="write"}`; throws if absent. */
export function sampleValue(families: Map<string, MetricFamily>, series: string): number {
  const name = /^[^{]*/.exec(series)![0];
  const value = familyOf(name, families)?.samples.get(series);
  if (value === undefined) throw new Error(`no series ${series} in the exposition`);
  return value;
}
