/**
 * The ketama ring: capacity-weighted consistent hashing (docs/adr/0002-ketama-placement.md).
 *
 * Each member gets round(P · n · w / W) points on a 32-bit circle, where P is
 * KETAMA_POINTS_PER_PEER, n the member count, w the member's PeerInfo.totalBlocks and W their sum
 * (equal points for all when every capacity is 0). The points of a member are the four
 * little-endian words of MD5("<uuid>-<group>") for group 0, 1, 2, ... A block hashes to the first
 * word of MD5(24-byte BlockRef); its permutation lists members in the order their first point
 * appears clockwise strictly after that word (wrapping), then the members with no points in
 * UUID order, so every member appears exactly once.
 *
 * Invariants: the placement depends only on the set of (UUID, capacity) pairs, never on the
 * order members were listed or added in. Equal points are all kept, the smaller UUID first (the
 * original let the later one overwrite the earlier), so with equal capacities adding a member
 * only inserts it into each permutation and removing one only deletes it. The
 * tables are built once per member set and shared, read-only, by rings that differ only in
 * version or replication.
 * @module
 */

import { type BlockRef, invalid, KETAMA_POINTS_PER_PEER } from "../core/mod.ts";
import type { PeerInfo, Ring as RingMessage } from "../models/mod.ts";
import { md5FirstWord, md5Words } from "./md5.ts";
import {
  holdersOf,
  type MemberRingOptions,
  ModifiableMemberRing,
  noPeers,
  permutation,
  PermutationCache,
  refBytes,
} from "./peers.ts";
import { type ModifiableRing, type PeerPermutation, RingType } from "./ring.ts";

/** Most points per peer a measurement ring may ask for (memory: 8 bytes per point). */
export const KETAMA_POINTS_PER_PEER_MAX = 65_536;

/** Points per digest: MD5 gives four 32-bit words. */
const POINTS_PER_DIGEST = 4;

/** The placement tables of one member set. Read-only after construction. */
export interface KetamaTable {
  /** Points, ascending; equal points are ordered by owner. */
  readonly points: Uint32Array;
  /** `owners[i]` is the index in `uuids` of the member owning `points[i]`. */
  readonly owners: Uint32Array;
  /** Member UUIDs, sorted. */
  readonly uuids: readonly string[];
  /** How many members own at least one point. */
  readonly ownersWithPoints: number;
  /** Members without points (tiny capacity), sorted; they end every permutation. */
  readonly pointless: readonly string[];
  /** Lookup scratch: `seen[owner] === stamp` marks owners already listed by this walk. */
  readonly seen: Uint32Array;
  /** Lookup scratch: owners in walk order. */
  readonly order: Uint32Array;
  stamp: number;
}

function compareUuids(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * Points per member, in the order of `peers`: round(P·n·w/W) with exact integer arithmetic, or
 * P each when no member states a capacity.
 */
export function ketamaPointCounts(
  peers: readonly PeerInfo[],
  pointsPerPeer: number = KETAMA_POINTS_PER_PEER,
): number[] {
  const total = peers.reduce((sum, peer) => sum + peer.totalBlocks, 0n);
  if (total === 0n) return peers.map(() => pointsPerPeer);
  const scale = 2n * BigInt(pointsPerPeer) * BigInt(peers.length);
  // floor((2·P·n·w + W) / (2·W)) = round(P·n·w / W), halves rounded up.
  return peers.map((peer) => Number((scale * peer.totalBlocks + total) / (2n * total)));
}

const encoder = new TextEncoder();

/** Writes `value` in ASCII decimal at `offset` of `target`; returns the digit count. */
function writeDecimal(target: Uint8Array, offset: number, value: number): number {
  let digits = 1;
  for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  for (let i = digits - 1, rest = value; i >= 0; i--, rest = Math.floor(rest / 10)) {
    target[offset + i] = 0x30 + (rest % 10);
  }
  return digits;
}

/** The points of one table: `owners[i]` owns `points[i]`. */
export interface PointList {
  readonly points: Uint32Array;
  readonly owners: Uint32Array;
}

/** Every (point, owner) pair of the members, owners ascending. */
function pointsByOwner(uuids: readonly string[], counts: readonly number[]): PointList {
  const total = counts.reduce((sum, count) => sum + count, 0);
  const points = new Uint32Array(total);
  const owners = new Uint32Array(total);
  const digest = new Uint32Array(POINTS_PER_DIGEST);
  let next = 0;
  uuids.forEach((uuid, owner) => {
    const count = counts[owner]!;
    const prefix = encoder.encode(`${uuid}-`);
    const text = new Uint8Array(prefix.length + 10);
    text.set(prefix);
    for (let group = 0; group * POINTS_PER_DIGEST < count; group++) {
      md5Words(text.subarray(0, prefix.length + writeDecimal(text, prefix.length, group)), digest);
      const inGroup = Math.min(POINTS_PER_DIGEST, count - group * POINTS_PER_DIGEST);
      for (let j = 0; j < inGroup; j++) {
        points[next] = digest[j]!;
        owners[next++] = owner;
      }
    }
  });
  return { points, owners };
}

/** Digit width of the radix sort: three passes over 32-bit points, 2 Ki buckets each. */
const RADIX_BITS = 11;

/** One stable counting pass of `from` into `to` on the `bits`-wide digit at `shift`. */
function radixPass(from: PointList, to: PointList, digit: { shift: number; bits: number }): void {
  const mask = (1 << digit.bits) - 1;
  const starts = new Uint32Array(mask + 2);
  const { points, owners } = from;
  for (let i = 0; i < points.length; i++) {
    const bucket = (points[i]! >>> digit.shift) & mask;
    starts[bucket + 1] = starts[bucket + 1]! + 1;
  }
  for (let bucket = 0; bucket <= mask; bucket++) {
    starts[bucket + 1] = starts[bucket + 1]! + starts[bucket]!;
  }
  for (let i = 0; i < points.length; i++) {
    const bucket = (points[i]! >>> digit.shift) & mask;
    const at = starts[bucket]!;
    starts[bucket] = at + 1;
    to.points[at] = points[i]!;
    to.owners[at] = owners[i]!;
  }
}

/**
 * The points ascending, owners carried along, by a stable LSD radix sort: equal points keep
 * their input order (owners ascending), which is ketama's tie rule. It is linear: with 4096 peers
 * (4 Mi points) it takes a fraction of what sorting packed (point, owner) float keys took.
 */
export function sortPoints(list: PointList): PointList {
  const length = list.points.length;
  let from = list;
  let to: PointList = { points: new Uint32Array(length), owners: new Uint32Array(length) };
  for (let shift = 0; shift < 32; shift += RADIX_BITS) {
    radixPass(from, to, { shift, bits: Math.min(RADIX_BITS, 32 - shift) });
    // The input list is never written: the first pass leaves it, later passes swap buffers.
    const next = from === list
      ? { points: new Uint32Array(length), owners: new Uint32Array(length) }
      : from;
    from = to;
    to = next;
  }
  return from;
}

/** Builds the tables of `peers` with `pointsPerPeer` points per average-capacity member. */
function buildTable(peers: readonly PeerInfo[], pointsPerPeer: number): KetamaTable {
  const sortedPeers = [...peers].sort((a, b) => compareUuids(a.uuid, b.uuid));
  const uuids = Object.freeze(sortedPeers.map((peer) => peer.uuid));
  const counts = ketamaPointCounts(sortedPeers, pointsPerPeer);
  const { points, owners } = sortPoints(pointsByOwner(uuids, counts));
  const pointless = Object.freeze(uuids.filter((_, owner) => counts[owner] === 0));
  return {
    points,
    owners,
    uuids,
    ownersWithPoints: uuids.length - pointless.length,
    pointless,
    seen: new Uint32Array(uuids.length),
    order: new Uint32Array(uuids.length),
    stamp: 0,
  };
}

/** Index of the first point strictly greater than `key`, wrapping to 0. */
function successor(points: Uint32Array, key: number): number {
  let low = 0;
  let high = points.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (points[mid]! <= key) low = mid + 1;
    else high = mid;
  }
  return low === points.length ? 0 : low;
}

/**
 * Distinct owners clockwise from point `start`, then the pointless members. The loop is written
 * without a data-dependent branch (each owner is stored, and the count advances only for a new
 * one) because whether an owner is new is unpredictable for the CPU.
 */
function walk(table: KetamaTable, start: number): string[] {
  if (table.stamp === 0xffff_ffff) {
    table.seen.fill(0);
    table.stamp = 0;
  }
  const stamp = ++table.stamp;
  const { owners, seen, order, uuids, pointless } = table;
  const wanted = table.ownersWithPoints;
  const length = owners.length;
  let count = 0;
  for (let i = start; count < wanted; i = i + 1 === length ? 0 : i + 1) {
    const owner = owners[i]!;
    order[count] = owner;
    count += seen[owner] === stamp ? 0 : 1;
    seen[owner] = stamp;
  }
  const result = new Array<string>(wanted + pointless.length);
  for (let k = 0; k < wanted; k++) result[k] = uuids[order[k]!]!;
  for (let k = 0; k < pointless.length; k++) result[wanted + k] = pointless[k]!;
  return result;
}

/**
 * The first `count` members of the walk from point `start` (see {@link walk}), visiting only as
 * many points as it takes to meet `count` distinct owners: a few for the usual replication.
 */
function walkHolders(table: KetamaTable, start: number, count: number): readonly string[] {
  if (table.stamp === 0xffff_ffff) {
    table.seen.fill(0);
    table.stamp = 0;
  }
  const stamp = ++table.stamp;
  const { owners, seen, uuids, pointless } = table;
  const result: string[] = [];
  const fromPoints = Math.min(count, table.ownersWithPoints);
  const length = owners.length;
  for (let i = start; result.length < fromPoints; i = i + 1 === length ? 0 : i + 1) {
    const owner = owners[i]!;
    if (seen[owner] === stamp) continue;
    seen[owner] = stamp;
    result.push(uuids[owner]!);
  }
  for (let k = 0; result.length < count; k++) result.push(pointless[k]!);
  return Object.freeze(result);
}

/** Options of a ketama ring; `pointsPerPeer` exists for measurements only (it is not stored). */
export interface KetamaRingOptions extends MemberRingOptions {
  readonly pointsPerPeer?: number;
}

/** A ketama ring. */
export class KetamaRing extends ModifiableMemberRing {
  readonly type = RingType.Ketama;
  readonly #table: KetamaTable;
  readonly #pointsPerPeer: number;
  /** One permutation per point, built on first use. */
  readonly #cache: PermutationCache;

  constructor(options: KetamaRingOptions, table?: KetamaTable) {
    super(options);
    this.#pointsPerPeer = options.pointsPerPeer ?? KETAMA_POINTS_PER_PEER;
    const points = this.#pointsPerPeer;
    if (!Number.isSafeInteger(points) || points < 1 || points > KETAMA_POINTS_PER_PEER_MAX) {
      throw invalid(
        `ketama points per peer must be in 1..${KETAMA_POINTS_PER_PEER_MAX}: ${points}`,
      );
    }
    this.#table = table ?? buildTable(this.members(), this.#pointsPerPeer);
    this.#cache = new PermutationCache(this.#table.points.length, this.members().length);
  }

  /** Points on the circle. */
  get pointCount(): number {
    return this.#table.points.length;
  }

  getPeers(ref: BlockRef): PeerPermutation {
    const table = this.#table;
    if (table.uuids.length === 0) throw noPeers();
    const start = successor(table.points, md5FirstWord(refBytes(ref)));
    const cached = this.#cache.get(start);
    if (cached !== undefined) return cached;
    const result = permutation(walk(table, start), this.effectiveReplication());
    this.#cache.set(start, result);
    return result;
  }

  override getHolders(ref: BlockRef): readonly string[] {
    const table = this.#table;
    if (table.uuids.length === 0) throw noPeers();
    const start = successor(table.points, md5FirstWord(refBytes(ref)));
    const cached = this.#cache.get(start);
    if (cached !== undefined) return holdersOf(cached);
    return walkHolders(table, start, this.effectiveReplication());
  }

  /** The Ring proto; refused for measurement rings, whose point count the proto cannot carry. */
  override toMessage(): RingMessage {
    if (this.#pointsPerPeer !== KETAMA_POINTS_PER_PEER) {
      throw invalid(
        `a ketama ring with ${this.#pointsPerPeer} points per peer is for measurement only`,
      );
    }
    return super.toMessage();
  }

  protected rebuild(options: MemberRingOptions, samePeers: boolean): ModifiableRing {
    const next = { ...options, pointsPerPeer: this.#pointsPerPeer };
    return new KetamaRing(next, samePeers ? this.#table : undefined);
  }
}
