/**
 * `torus ringtool`: a placement simulator. It synthesises the block refs of a volume (files of
 * 1-1000 blocks, some rewritten in place so their blocks carry several INode ids), places them
 * with a ring of `--nodes` peers and with the ring after adding or removing `--delta` peers (and
 * changing replication to `--rep-end`), and prints how evenly each ring spreads the replicas and
 * how many replicas the change has to send over the network, against the least any placement
 * could send. Nothing touches a cluster; `--seed` replays a run exactly.
 * @module
 */

import { type Command, ExitCode, type Io, parseFlags, UsageError } from "../cli/mod.ts";
import {
  BLOCK_SIZE_MAX_BYTES,
  BLOCK_SIZE_MIN_BYTES,
  BlockRef,
  errorMessage,
  formatSize,
  KETAMA_POINTS_PER_PEER,
  parseSize,
  type Random,
  randomUuid,
  REPLICATION_DEFAULT,
  RING_MEMBERS_MAX,
  RINGTOOL_BLOCKS_MAX,
  RINGTOOL_KETAMA_POINTS_MAX,
  RINGTOOL_REPLICATION_MAX,
  SeededRandom,
} from "../core/mod.ts";
import { emptyPeerInfo, type PeerInfo } from "../models/mod.ts";
import {
  createMeasurementKetamaRing,
  createModifiableRing,
  KETAMA_POINTS_PER_PEER_MAX,
  type ModifiableRing,
  replicationRange,
  type Ring,
  RingType,
  ringTypeFromName,
  ringTypeNames,
} from "../ring/mod.ts";

/** `--rewrite-edge` range: beyond 4 standard deviations every file, or none, is rewritten. */
const REWRITE_EDGE_MAX = 400;
/** `--seed` range: a 32-bit seed. */
const SEED_MAX = 2 ** 32 - 1;

const help = `Usage: torus ringtool [flags]

Simulates a ring change and measures placement balance and data movement.
Synthesises --total-data / --block-size block refs as files of 1-1000 blocks (a file is
rewritten in place, giving its blocks new INode ids, when a standard-normal draw is below
--rewrite-edge/100), places every replica with the ring before and after adding (--delta > 0)
or removing (--delta < 0) peers, and prints per-peer balance and the replicas the change sends.
Perfect Traffic is the least any placement must send: what the new peers must receive, or what
the removed peers held, plus new replicas when --rep-end raises replication.

Flags (numbers outside the range shown are refused):
  --ring mod|ketama     ring type (default ketama, the type 'torus ctl init' creates)
  --rep N               replication before the change, 1..${RINGTOOL_REPLICATION_MAX} (default 2)
  --rep-end N           replication after the change, 0..${RINGTOOL_REPLICATION_MAX}; 0 = same as --rep (default 0)
  --nodes N             peers before the change, 1..${RING_MEMBERS_MAX} (default 5)
  --delta N             peers to add (positive) or remove (negative); 1..${RING_MEMBERS_MAX} peers must
                        remain (default 2)
  --block-size SIZE     block size, a multiple of 512 B up to 16 MiB (default 256KiB)
  --total-data SIZE     data to place, 1 to ${RINGTOOL_BLOCKS_MAX} blocks (default 64GiB = 262144
                        blocks of 256 KiB; the original's default was 1TiB = 4 Mi blocks)
  --rewrite-edge N      rewritten-file threshold in hundredths of a standard deviation,
                        -${REWRITE_EDGE_MAX}..${REWRITE_EDGE_MAX} (default 40: about 65% of the files)
  --seed N              seed of the peer UUIDs and the files, 0..${SEED_MAX}, to replay a
                        run (default: random, printed)
  --ketama-points N     ketama points per average peer, 1..${KETAMA_POINTS_PER_PEER_MAX} and at most
                        ${RINGTOOL_KETAMA_POINTS_MAX} in a ring (default: the built-in ${KETAMA_POINTS_PER_PEER}; rings
                        with other values are never stored)
  --json                print one JSON object instead of the tables

On a terminal, progress is shown on stderr while the blocks are placed, then erased.
`;

/** Equal capacity of every simulated peer: 100 Gi blocks, as the original. */
const PEER_TOTAL_BLOCKS = 100n << 30n;
/** Largest file the synthesiser writes, in blocks, and most rewrite passes over one file. */
const FILE_BLOCKS_MAX = 1000;
const REWRITE_PASSES_MAX = 30;
/** The volume the refs belong to (volume ids start at 2). */
const VOLUME_ID = 2;

/** The parsed flags of one run. */
export interface RingtoolOptions {
  readonly ringType: typeof RingType.Mod | typeof RingType.Ketama;
  readonly replication: number;
  readonly replicationEnd: number;
  readonly nodes: number;
  readonly delta: number;
  readonly blockSizeBytes: number;
  readonly blocks: number;
  readonly rewriteEdgePercent: number;
  readonly seed: number;
  readonly ketamaPoints: number | null;
}

/** Replica counts of one ring. */
export interface BalanceReport {
  readonly peers: number;
  readonly replication: number;
  readonly perPeer: readonly {
    uuid: string;
    blocks: number;
    bytes: number;
    percentOfMean: number;
  }[];
  readonly totalBytes: number;
  readonly meanBytes: number;
  readonly stddevBytes: number;
}

/** Everything one run measured. */
export interface RingtoolReport {
  readonly ring: string;
  readonly seed: number;
  readonly blockSizeBytes: number;
  readonly blocks: number;
  readonly rewrittenBlocks: number;
  readonly before: BalanceReport;
  readonly after: BalanceReport;
  readonly blocksKept: number;
  readonly blocksSent: number;
  readonly blocksDropped: number;
  readonly percentSent: number;
  readonly networkTrafficBytes: number;
  readonly perfectTrafficBytes: number;
}

function integerFlag(name: string, text: string, min: number, max: number): number {
  const value = /^-?\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new UsageError(`--${name} must be an integer in ${min}..${max}, got "${text}"`);
  }
  return value;
}

/**
 * `--rep`/`--rep-end`: at most RINGTOOL_REPLICATION_MAX, and within the ring rule for `peers`
 * members (at most max(peers, 2) copies), so the error comes here with its range rather than
 * from building the ring.
 */
function replicationFlag(
  name: string,
  text: string,
  rule: { min: number; ringType: RingtoolOptions["ringType"]; peers: number },
): number {
  const ruleMax = replicationRange(rule.ringType, rule.peers).max;
  if (ruleMax >= RINGTOOL_REPLICATION_MAX) {
    return integerFlag(name, text, rule.min, RINGTOOL_REPLICATION_MAX);
  }
  const value = /^\d+$/.test(text) ? Number(text) : Number.NaN;
  if (!(value >= rule.min && value <= ruleMax)) {
    throw new UsageError(
      `--${name} must be an integer in ${rule.min}..${ruleMax} with ${rule.peers} peers ` +
        `(a ring keeps at most max(peers, ${REPLICATION_DEFAULT}) copies), got "${text}"`,
    );
  }
  return value;
}

/** A decimal number in `-max..max` (no hex, exponents or Infinity). */
function decimalFlag(name: string, text: string, max: number): number {
  const value = /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : Number.NaN;
  if (!(Math.abs(value) <= max)) {
    throw new UsageError(`--${name} must be a number in -${max}..${max}, got "${text}"`);
  }
  return value;
}

function sizeFlag(name: string, text: string): number {
  try {
    const bytes = parseSize(text);
    if (bytes > 0) return bytes;
  } catch (error) {
    throw new UsageError(`--${name}: ${errorMessage(error)}`);
  }
  throw new UsageError(`--${name} must be more than 0 bytes, got "${text}"`);
}

/** A block size a cluster may have: a multiple of 512 B up to 16 MiB. */
function blockSizeFlag(text: string): number {
  const bytes = sizeFlag("block-size", text);
  if (bytes % BLOCK_SIZE_MIN_BYTES !== 0 || bytes > BLOCK_SIZE_MAX_BYTES) {
    throw new UsageError(
      `--block-size must be a multiple of ${BLOCK_SIZE_MIN_BYTES} B in ` +
        `${formatSize(BLOCK_SIZE_MIN_BYTES)}..${formatSize(BLOCK_SIZE_MAX_BYTES)}, got "${text}"`,
    );
  }
  return bytes;
}

/** `--total-data` in blocks of `blockSizeBytes`: 1..RINGTOOL_BLOCKS_MAX. */
function blocksFlag(text: string, blockSizeBytes: number): number {
  const blocks = Math.floor(sizeFlag("total-data", text) / blockSizeBytes);
  if (blocks < 1 || blocks > RINGTOOL_BLOCKS_MAX) {
    throw new UsageError(
      `--total-data must be 1..${RINGTOOL_BLOCKS_MAX} blocks of ${formatSize(blockSizeBytes)} ` +
        `(${formatSize(blockSizeBytes)}..${formatSize(RINGTOOL_BLOCKS_MAX * blockSizeBytes)}), ` +
        `got "${text}" = ${blocks} blocks`,
    );
  }
  return blocks;
}

/** `--ketama-points`, also bounded by the points of the larger ring. */
function ketamaPointsFlag(text: string | undefined, largestRingPeers: number): number | null {
  if (text === undefined) return null;
  const points = integerFlag("ketama-points", text, 1, KETAMA_POINTS_PER_PEER_MAX);
  const perPeerMax = Math.floor(RINGTOOL_KETAMA_POINTS_MAX / largestRingPeers);
  if (points > perPeerMax) {
    throw new UsageError(
      `--ketama-points with ${largestRingPeers} peers must be in 1..${perPeerMax} ` +
        `(at most ${RINGTOOL_KETAMA_POINTS_MAX} points in a ring), got "${text}"`,
    );
  }
  return points;
}

function ringTypeFlag(text: string): RingtoolOptions["ringType"] {
  let type: RingType;
  try {
    type = ringTypeFromName(text);
  } catch (error) {
    throw new UsageError(`--ring: ${errorMessage(error)}`);
  }
  if (type !== RingType.Mod && type !== RingType.Ketama) {
    throw new UsageError(`--ring ${ringTypeNames[type]} cannot change; use mod or ketama`);
  }
  return type;
}

const flagSpec = {
  ring: { type: "string", default: "ketama" },
  rep: { type: "string", default: "2" },
  "rep-end": { type: "string", default: "0" },
  nodes: { type: "string", default: "5" },
  delta: { type: "string", default: "2" },
  "block-size": { type: "string", default: "256KiB" },
  "total-data": { type: "string", default: "64GiB" },
  "rewrite-edge": { type: "string", default: "40" },
  seed: { type: "string" },
  "ketama-points": { type: "string" },
  json: { type: "boolean", default: false },
} as const;

/**
 * Joins `--delta -1` into `--delta=-1` (any value starting with a dash and a digit, such as
 * `--rewrite-edge -12.5`): node:util's parser takes a value that starts with a dash for a flag,
 * and removing peers is written with a negative number.
 */
function joinNegativeValues(args: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i]!.startsWith("--") ? args[i]!.slice(2) : "";
    const next = args[i + 1];
    const takesValue = Object.hasOwn(flagSpec, name) &&
      flagSpec[name as keyof typeof flagSpec].type === "string";
    if (takesValue && next !== undefined && /^-\d/.test(next)) {
      out.push(`${args[i]}=${next}`);
      i++;
    } else {
      out.push(args[i]!);
    }
  }
  return out;
}

/** Parses the command line; wrong flags throw UsageError with one line. */
export function parseRingtoolArgs(
  args: string[],
  newSeed: () => number,
): RingtoolOptions & { json: boolean } {
  const { values, positionals } = parseFlags(joinNegativeValues(args), flagSpec);
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
  const nodes = integerFlag("nodes", values.nodes, 1, RING_MEMBERS_MAX);
  const delta = integerFlag("delta", values.delta, 1 - nodes, RING_MEMBERS_MAX - nodes);
  const ringType = ringTypeFlag(values.ring);
  const replication = replicationFlag("rep", values.rep, { min: 1, ringType, peers: nodes });
  const replicationEnd = replicationFlag("rep-end", values["rep-end"], {
    min: 0,
    ringType,
    peers: nodes + delta,
  });
  const blockSizeBytes = blockSizeFlag(values["block-size"]);
  const blocks = blocksFlag(values["total-data"], blockSizeBytes);
  const edge = decimalFlag("rewrite-edge", values["rewrite-edge"], REWRITE_EDGE_MAX);
  const seed = values.seed === undefined
    ? newSeed()
    : integerFlag("seed", values.seed, 0, SEED_MAX);
  const ketamaPoints = ketamaPointsFlag(values["ketama-points"], nodes + Math.max(0, delta));
  return {
    ringType,
    replication,
    replicationEnd: replicationEnd === 0 ? replication : replicationEnd,
    nodes,
    delta,
    blockSizeBytes,
    blocks,
    rewriteEdgePercent: edge,
    seed,
    ketamaPoints,
    json: values.json,
  };
}

/** A standard-normal draw (Box-Muller), as Go's rand.NormFloat64 gave the original. */
function normal(random: Random): number {
  const u = 1 - random.float();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random.float());
}

/**
 * Calls `onRef` for `blocks` synthetic refs, file by file: a file of 1..1000 blocks written
 * linearly under a new INode id, then, when rewritten, up to 30 passes that each overwrite a
 * random run of blocks under yet another INode id. Returns how many refs came from rewritten
 * files. The original gave rewritten runs the indexes 1..len wherever they landed; here a block
 * keeps its index.
 */
export function synthesizeRefs(
  options: { blocks: number; rewriteEdgePercent: number; random: Random },
  onRef: (ref: BlockRef) => void,
): number {
  const { random } = options;
  let inode = 2n;
  let emitted = 0;
  let rewritten = 0;
  while (emitted < options.blocks) {
    const size = 1 + random.int(FILE_BLOCKS_MAX);
    const owners: bigint[] = new Array<bigint>(size).fill(inode++);
    const isRewritten = normal(random) < options.rewriteEdgePercent / 100;
    const passes = isRewritten ? random.int(REWRITE_PASSES_MAX) : 0;
    for (let pass = 0; pass < passes; pass++) {
      const offset = random.int(size);
      const length = random.int(size - offset);
      owners.fill(inode++, offset, offset + length);
    }
    const count = Math.min(size, options.blocks - emitted);
    for (let index = 0; index < count; index++) {
      onRef(new BlockRef({ volume: VOLUME_ID, inode: owners[index]!, index }));
    }
    emitted += count;
    if (isRewritten) rewritten += count;
  }
  return rewritten;
}

function simulatedPeers(count: number, seed: number): PeerInfo[] {
  const random = new SeededRandom(seed);
  return Array.from(
    { length: count },
    () => ({ ...emptyPeerInfo(randomUuid(random)), totalBlocks: PEER_TOTAL_BLOCKS }),
  );
}

/** Builds the rings before and after the change. */
export function buildRings(options: RingtoolOptions): { before: ModifiableRing; after: Ring } {
  const peers = simulatedPeers(options.nodes + Math.max(0, options.delta), options.seed);
  const initial = peers.slice(0, options.nodes);
  const ringOptions = { version: 1, replication: options.replication, peers: initial };
  const before = options.ringType === RingType.Ketama && options.ketamaPoints !== null
    ? createMeasurementKetamaRing({ ...ringOptions, pointsPerPeer: options.ketamaPoints })
    : createModifiableRing(options.ringType, ringOptions);
  let after: ModifiableRing = before;
  // Replication is lowered before peers leave and raised after they join, as an administrator
  // must: a ring never claims more copies than the rule allows for its members.
  const lowering = options.replicationEnd < options.replication;
  if (lowering) after = after.changeReplication(options.replicationEnd);
  if (options.delta > 0) after = after.addPeers(peers.slice(options.nodes));
  if (options.delta < 0) {
    after = after.removePeers(initial.slice(options.nodes + options.delta).map((p) => p.uuid));
  }
  if (!lowering && options.replicationEnd !== options.replication) {
    after = after.changeReplication(options.replicationEnd);
  }
  return { before, after };
}

function balance(ring: Ring, counts: Map<string, number>, blockSizeBytes: number): BalanceReport {
  const blocks = ring.memberUuids().map((uuid) => counts.get(uuid) ?? 0);
  const total = blocks.reduce((sum, n) => sum + n, 0);
  const mean = total / blocks.length;
  const variance = blocks.reduce((sum, n) => sum + (n - mean) ** 2, 0) / blocks.length;
  return {
    peers: blocks.length,
    replication: Math.min(ring.replication, blocks.length),
    perPeer: ring.memberUuids().map((uuid, i) => ({
      uuid,
      blocks: blocks[i]!,
      bytes: blocks[i]! * blockSizeBytes,
      percentOfMean: mean === 0 ? 0 : (100 * blocks[i]!) / mean,
    })),
    totalBytes: total * blockSizeBytes,
    meanBytes: mean * blockSizeBytes,
    stddevBytes: Math.sqrt(variance) * blockSizeBytes,
  };
}

/**
 * The least a change must send, in replicas, with equal capacities: each of the M peers after
 * the change should hold `after/M` replicas, and a peer that was already a member can keep at
 * most the `before/N` it held, so the rest must arrive over the network.
 */
export function perfectReplicasSent(
  options: { nodes: number; delta: number; replicasBefore: number; replicasAfter: number },
): number {
  const peersAfter = options.nodes + options.delta;
  const survivors = Math.min(options.nodes, peersAfter);
  const share = options.replicasAfter / peersAfter;
  const held = options.replicasBefore / options.nodes;
  return survivors * Math.max(0, share - held) + (peersAfter - survivors) * share;
}

/** How a run reports progress. */
export interface RingtoolProgress {
  /** Blocks between two reports. */
  readonly intervalBlocks: number;
  /** Called after every `intervalBlocks` placed blocks. */
  onPlaced(placedBlocks: number): void;
}

/**
 * Runs the simulation. Each ref needs only its holders before and after the change, which a
 * ring finds without building the whole permutation (with 4096 peers that walk was the cost).
 */
export function runRingtool(options: RingtoolOptions, progress?: RingtoolProgress): RingtoolReport {
  const { before, after } = buildRings(options);
  let placed = 0;
  const countsBefore = new Map<string, number>();
  const countsAfter = new Map<string, number>();
  let kept = 0;
  let sent = 0;
  let dropped = 0;
  const fileRandom = new SeededRandom((options.seed ^ 0x9e3779b9) >>> 0);
  const rewrittenBlocks = synthesizeRefs(
    { blocks: options.blocks, rewriteEdgePercent: options.rewriteEdgePercent, random: fileRandom },
    (ref) => {
      const old = before.getHolders(ref);
      const fresh = after.getHolders(ref);
      for (const uuid of old) countsBefore.set(uuid, (countsBefore.get(uuid) ?? 0) + 1);
      for (const uuid of fresh) {
        countsAfter.set(uuid, (countsAfter.get(uuid) ?? 0) + 1);
        if (old.includes(uuid)) kept++;
        else sent++;
      }
      for (const uuid of old) if (!fresh.includes(uuid)) dropped++;
      if (progress !== undefined && ++placed % progress.intervalBlocks === 0) {
        progress.onPlaced(placed);
      }
    },
  );
  const balanceBefore = balance(before, countsBefore, options.blockSizeBytes);
  const balanceAfter = balance(after, countsAfter, options.blockSizeBytes);
  const perfect = perfectReplicasSent({
    nodes: options.nodes,
    delta: options.delta,
    replicasBefore: options.blocks * balanceBefore.replication,
    replicasAfter: options.blocks * balanceAfter.replication,
  });
  return {
    ring: ringTypeNames[options.ringType],
    seed: options.seed,
    blockSizeBytes: options.blockSizeBytes,
    blocks: options.blocks,
    rewrittenBlocks,
    before: balanceBefore,
    after: balanceAfter,
    blocksKept: kept,
    blocksSent: sent,
    blocksDropped: dropped,
    percentSent: kept + sent === 0 ? 0 : (100 * sent) / (kept + sent),
    networkTrafficBytes: sent * options.blockSizeBytes,
    perfectTrafficBytes: Math.round(perfect) * options.blockSizeBytes,
  };
}

const iecUnits = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"] as const;

/** Bytes in the largest IEC unit with two decimals (`25.16 GiB`): balance needs the digits. */
function size(bytes: number): string {
  let value = Math.round(bytes);
  let unit = 0;
  while (value >= 1024 && unit < iecUnits.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(2)} ${iecUnits[unit]}`;
}

function formatBalance(title: string, report: BalanceReport): string[] {
  const stddevPercent = report.meanBytes === 0 ? 0 : (100 * report.stddevBytes) / report.meanBytes;
  return [
    `${title}: ${report.peers} peers, replication ${report.replication}`,
    `  ${"PEER".padEnd(36)}  ${"BLOCKS".padStart(10)}  ${"BYTES".padStart(11)}  % OF MEAN`,
    ...report.perPeer.map((peer) =>
      `  ${peer.uuid.padEnd(36)}  ${String(peer.blocks).padStart(10)}  ${
        size(peer.bytes).padStart(11)
      }  ${peer.percentOfMean.toFixed(1).padStart(8)}%`
    ),
    `Total: ${size(report.totalBytes)}, Mean: ${size(report.meanBytes)}, ` +
    `Stddev: ${size(report.stddevBytes)} (${stddevPercent.toFixed(2)}% of mean)`,
  ];
}

/** The human-readable report. */
export function formatRingtoolReport(report: RingtoolReport): string {
  const rewrittenPercent = (100 * report.rewrittenBlocks) / report.blocks;
  return [
    `Ring: ${report.ring}, seed ${report.seed}`,
    `Unique blocks: ${report.blocks} of ${formatSize(report.blockSizeBytes)} ` +
    `(${formatSize(report.blocks * report.blockSizeBytes)}), ` +
    `${rewrittenPercent.toFixed(1)}% in rewritten files`,
    "",
    ...formatBalance("Before", report.before),
    "",
    ...formatBalance("After", report.after),
    "",
    `Blocks Kept: ${report.blocksKept}`,
    `Blocks Sent: ${report.blocksSent}`,
    `Blocks Dropped: ${report.blocksDropped}`,
    `Percentage Sent: ${report.percentSent.toFixed(2)}%`,
    `Network Traffic: ${size(report.networkTrafficBytes)}`,
    `Perfect Traffic: ${size(report.perfectTrafficBytes)}`,
    "",
  ].join("\n");
}

/** What the command takes from its process; tests replace it. */
export interface RingtoolDeps {
  /** A fresh seed when `--seed` is not given. */
  newSeed(): number;
  /** Whether stderr is a terminal: progress is shown there, and only there. */
  stderrIsTerminal(): boolean;
  /** Blocks between two progress updates. */
  readonly progressIntervalBlocks: number;
}

/** Progress updates: often enough to move, rare enough to cost nothing (~20 a second). */
const PROGRESS_INTERVAL_BLOCKS = 65_536;

/** The process's seed source and stderr. */
export const processRingtoolDeps: RingtoolDeps = {
  newSeed: () => crypto.getRandomValues(new Uint32Array(1))[0]!,
  stderrIsTerminal: () => Deno.stderr.isTerminal(),
  progressIntervalBlocks: PROGRESS_INTERVAL_BLOCKS,
};

/** Progress on one terminal line of stderr, rewritten in place and erased at the end. */
function terminalProgress(
  io: Io,
  options: RingtoolOptions,
  intervalBlocks: number,
): RingtoolProgress & { done(): void } {
  const peersAfter = options.nodes + options.delta;
  io.stderr(`\rtorus ringtool: building rings of ${options.nodes} and ${peersAfter} peers\x1b[K`);
  return {
    intervalBlocks,
    onPlaced(placed) {
      const percent = Math.floor((100 * placed) / options.blocks);
      io.stderr(
        `\rtorus ringtool: placed ${placed} of ${options.blocks} blocks (${percent}%)\x1b[K`,
      );
    },
    done: () => io.stderr("\r\x1b[K"),
  };
}

/** `torus ringtool` with its dependencies. */
export function createRingtoolCommand(deps: RingtoolDeps): Command {
  return {
    name: "ringtool",
    summary: "Measure ring balance and data movement of a ring change",
    help,
    run(args: string[], io: Io): Promise<number> {
      const { json, ...options } = parseRingtoolArgs(args, deps.newSeed);
      const progress = deps.stderrIsTerminal()
        ? terminalProgress(io, options, deps.progressIntervalBlocks)
        : undefined;
      let report: RingtoolReport;
      try {
        report = runRingtool(options, progress);
      } finally {
        progress?.done();
      }
      io.stdout(json ? JSON.stringify(report) + "\n" : formatRingtoolReport(report));
      return Promise.resolve(ExitCode.Ok);
    },
  };
}

/** `torus ringtool`. */
export const ringtoolCommand: Command = createRingtoolCommand(processRingtoolDeps);
