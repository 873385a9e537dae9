/**
 * Building rings: from a type and options, from two rings (union), and from the Ring proto.
 * Every path checks its input and throws `invalid` with a one-line message; none asserts on
 * data, because rings arrive from etcd and from the command line.
 *
 * Replication follows the one rule of replication.ts everywhere. Reading a proto, a replication
 * of 0 is read as 1 for mod, ketama and single rings, and an empty ring's stored replication is
 * read as 0, as the original did (it ignored it). Member UUIDs of a proto are checked and
 * normalised by the one UUID parser (checkedPeerInfo), so a ring read from the store never holds
 * an address or a second spelling of a member as a UUID.
 * @module
 */

import { invalid } from "../core/mod.ts";
import {
  checkedPeerInfo,
  type PeerInfo,
  type Ring as RingMessage,
  RingCodec,
} from "../models/mod.ts";
import { EmptyRing } from "./empty.ts";
import { KetamaRing } from "./ketama.ts";
import { ModRing } from "./modulo.ts";
import { checkVersion } from "./peers.ts";
import { checkRingReplication } from "./replication.ts";
import { type ModifiableRing, type Ring, RingType, ringTypeNames } from "./ring.ts";
import { SingleRing } from "./single.ts";
import { UnionRing } from "./union.ts";

/** Options of {@link createRing}. */
export interface CreateRingOptions {
  readonly version: number;
  readonly replication: number;
  readonly peers: readonly PeerInfo[];
}

const typeByName: ReadonlyMap<string, RingType> = new Map(
  Object.entries(ringTypeNames).map(([id, name]) => [name, Number(id) as RingType]),
);

/** The ring type called `name` (`ketama`); `invalid` listing the valid names otherwise. */
export function ringTypeFromName(name: string): RingType {
  const type = typeByName.get(name);
  if (type === undefined) {
    const names = [...typeByName.keys()].join(", ");
    throw invalid(`unknown ring type "${name}": expected one of ${names}`);
  }
  return type;
}

function isRingType(value: number): value is RingType {
  return Object.hasOwn(ringTypeNames, value);
}

/**
 * A new ring of `type`. Empty takes no peers, single exactly one; mod and ketama any number
 * (lookups on a ring without members fail with `invalid`). The replication must obey the rule of
 * replication.ts. Union rings come from {@link createUnionRing}.
 * @example
 * ```ts
 * import { createRing, RingType } from "./mod.ts";
 * import { emptyPeerInfo } from "../models/mod.ts";
 * const uuid = (c: string) => `${c.repeat(8)}-0000-4000-8000-${"0".repeat(12)}`;
 * const peers = ["a", "b", "c"].map((c) => emptyPeerInfo(uuid(c)));
 * const ring = createRing(RingType.Ketama, { version: 1, replication: 2, peers });
 * ring.memberUuids().length; // 3
 * ```
 */
export function createRing(type: RingType, options: CreateRingOptions): Ring {
  checkVersion(options.version);
  switch (type) {
    case RingType.Empty:
      if (options.peers.length !== 0) {
        throw invalid(`an empty ring takes no peers, got ${options.peers.length}`);
      }
      checkRingReplication(type, 0, options.replication);
      return new EmptyRing(options);
    case RingType.Single:
      checkRingReplication(type, options.peers.length, options.replication);
      return new SingleRing(options);
    case RingType.Mod:
    case RingType.Ketama:
      return createModifiableRing(type, options);
    case RingType.Union:
      throw invalid("a union ring is built from two rings (createUnionRing)");
    default:
      throw invalid(`unknown ring type id ${String(type)}`);
  }
}

/** A new mod or ketama ring. */
export function createModifiableRing(
  type: typeof RingType.Mod | typeof RingType.Ketama,
  options: CreateRingOptions,
): ModifiableRing {
  checkVersion(options.version);
  checkRingReplication(type, options.peers.length, options.replication);
  return type === RingType.Mod ? new ModRing(options) : new KetamaRing(options);
}

/**
 * A ketama ring with a non-default number of points per peer, for measuring placement
 * (`torus ringtool --ketama-points`). It cannot be turned into a proto.
 */
export function createMeasurementKetamaRing(
  options: CreateRingOptions & { readonly pointsPerPeer: number },
): ModifiableRing {
  checkVersion(options.version);
  checkRingReplication(RingType.Ketama, options.peers.length, options.replication);
  return new KetamaRing(options);
}

/** The union of `oldRing` and `newRing` during a transition (see union.ts for the order). */
export function createUnionRing(oldRing: Ring, newRing: Ring): Ring {
  return new UnionRing(oldRing, newRing);
}

/** Decodes a nested ring of a union's attrs. */
function decodeNested(message: RingMessage, key: "old" | "new"): Ring {
  const bytes = message.attrs[key];
  if (bytes === undefined) throw invalid(`union ring without attrs["${key}"]`);
  const ring = ringFromMessage(RingCodec.decode(bytes));
  if (ring.type === RingType.Union) throw invalid(`union ring attrs["${key}"] is a union`);
  return ring;
}

function unionFromMessage(message: RingMessage): Ring {
  const keys = Object.keys(message.attrs).sort();
  if (keys.length !== 2 || keys[0] !== "new" || keys[1] !== "old") {
    throw invalid(`union ring attrs must be exactly "old" and "new", got [${keys.join(", ")}]`);
  }
  if (message.peers.length !== 0) throw invalid("a union ring lists no peers of its own");
  const ring = new UnionRing(decodeNested(message, "old"), decodeNested(message, "new"));
  if (message.version !== ring.version) {
    throw invalid(`union ring version ${message.version} differs from its new ring's`);
  }
  // The original wrote 0 here; we write the new ring's factor. Both read back the same.
  if (message.replicationFactor !== 0 && message.replicationFactor !== ring.replication) {
    throw invalid(
      `union ring replication ${message.replicationFactor} differs from its new ring's`,
    );
  }
  return ring;
}

/** The replication of a stored ring as the original read it: 0 means 1; an empty ring has 0. */
function storedReplication(message: RingMessage): number {
  if (message.type === RingType.Empty) return 0;
  return message.replicationFactor === 0 ? 1 : message.replicationFactor;
}

/** The ring described by a Ring proto; `invalid` for unknown types and malformed contents. */
export function ringFromMessage(message: RingMessage): Ring {
  if (!isRingType(message.type)) throw invalid(`unknown ring type id ${message.type}`);
  if (message.type === RingType.Union) return unionFromMessage(message);
  const extra = Object.keys(message.attrs);
  if (extra.length > 0) {
    throw invalid(`a ${ringTypeNames[message.type]} ring has no attrs, got [${extra.join(", ")}]`);
  }
  return createRing(message.type, {
    version: message.version,
    replication: storedReplication(message),
    peers: message.peers.map((peer) => checkedPeerInfo(peer, "ring member")),
  });
}
