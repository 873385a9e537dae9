/**
 * The key layout of the metadata service and the encodings of its values. It keeps the original
 * torus layout (inventory §3.2) so a dump of an old cluster reads the same, under a configurable
 * prefix (default `/github.com/coreos/torus/`).
 *
 * Invariants:
 * - Every key is `<prefix><path>` and the prefix ends with `/`, so `wipe` (a range over the
 *   prefix) never touches a sibling tree such as `/github.com/coreos/torus-other/`.
 * - Every directory used as a range or a delete-prefix ends with `/`: deleting the metadata of
 *   volume 2 (`volumemeta/2/`) never touches volume 20 (`volumemeta/20/`), which the original did.
 * - Volume, snapshot and peer names never contain `/`, so a name cannot reach into another
 *   directory. Peer keys hold the canonical (lowercase) UUID, so one node has one key. New names
 *   follow the rule of src/core/names.ts; keys of existing names only need a usable segment, so
 *   volumes named by older builds stay reachable.
 * @module
 */

import {
  checkNameLookup,
  checkVolumeId,
  hasInvisibleOrControl,
  INodeRef,
  invalid,
  parseUuid,
  quoteForMessage,
  VOLUME_ID_MAX,
} from "../core/mod.ts";

/** The original's key prefix. */
export const DEFAULT_METADATA_PREFIX = "/github.com/coreos/torus/";

/** Checks a metadata prefix: non-empty, starts and ends with `/`, no empty segment. */
export function checkPrefix(prefix: string): string {
  if (!prefix.startsWith("/") || !prefix.endsWith("/") || prefix.includes("//")) {
    throw invalid(
      `metadata prefix ${quoteForMessage(prefix)} must start and end with "/" and have no "//"`,
    );
  }
  if (hasInvisibleOrControl(prefix)) {
    throw invalid(`metadata prefix ${quoteForMessage(prefix)} contains control characters`);
  }
  return prefix;
}

/** Longest lock holder accepted (a client UUID; see {@link checkLockHolder}). */
const LOCK_HOLDER_LENGTH_MAX = 255;

/**
 * Checks the holder written into a volume lock: a non-empty token without whitespace or control
 * characters. Holders are client identities minted by `newUuid`; they never come from a flag.
 */
export function checkLockHolder(holder: string): string {
  const bad = /[\s/]/.test(holder) || hasInvisibleOrControl(holder);
  if (holder.length === 0 || holder.length > LOCK_HOLDER_LENGTH_MAX || bad) {
    throw invalid(`invalid lock holder ${quoteForMessage(holder)}`);
  }
  return holder;
}

/** Checks a request id: a key segment of 1..64 letters, digits and `-`. */
export function checkRequestId(id: string): string {
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) throw invalid(`invalid request id ${quoteForMessage(id)}`);
  return id;
}

/** A volume id as its key segment: lowercase hex without padding, as the original. */
export function volumeHex(volumeId: number): string {
  return volumeId.toString(16);
}

/** Every key of the layout under one prefix. Directory keys end with `/`. */
export class MetadataKeys {
  readonly prefix: string;

  constructor(prefix: string = DEFAULT_METADATA_PREFIX) {
    this.prefix = checkPrefix(prefix);
  }

  /** JSON global metadata (block size, default block spec). */
  globalMetadata(): string {
    return `${this.prefix}meta/globalmetadata`;
  }
  /**
   * The cluster's id (a UUID as text), minted by init: peers refuse connections from another
   * cluster. A key of its own, so the original's global metadata JSON stays as it was.
   */
  clusterId(): string {
    return `${this.prefix}meta/cluster-id`;
  }
  /** 8-byte LE counter: the last minted volume id. */
  volumeMinter(): string {
    return `${this.prefix}meta/volumeminter`;
  }
  /** Protobuf Ring. */
  ring(): string {
    return `${this.prefix}meta/the-one-ring`;
  }
  /** Directory of peer registrations. */
  nodesDir(): string {
    return `${this.prefix}nodes/`;
  }
  /** Protobuf PeerInfo of one peer, under its lease; the UUID in its canonical form. */
  node(uuid: string): string {
    return `${this.nodesDir()}${parseUuid(uuid, "peer UUID")}`;
  }
  /**
   * Directory of the ring version each node last finished applying (8-byte LE, no lease: it
   * outlives the node's registration, so a writer knows it while the node is down).
   */
  balancedDir(): string {
    return `${this.prefix}balanced/`;
  }
  /** The ring version node `uuid` last finished applying. */
  balanced(uuid: string): string {
    return `${this.balancedDir()}${parseUuid(uuid, "peer UUID")}`;
  }
  /** Directory of the name → id index. */
  volumeNamesDir(): string {
    return `${this.prefix}volumes/`;
  }
  /** 8-byte LE volume id of the volume called `name`. */
  volumeName(name: string): string {
    return `${this.volumeNamesDir()}${checkNameLookup(name, "volume")}`;
  }
  /** Directory of volume records. */
  volumeIdsDir(): string {
    return `${this.prefix}volumeid/`;
  }
  /** Protobuf Volume of volume `id`. */
  volumeRecord(volumeId: number): string {
    return `${this.volumeIdsDir()}${volumeHex(volumeId)}`;
  }
  /** Directory of every volume's {@link volumeMetaDir} (ends with `/`). */
  volumeMetaDirs(): string {
    return `${this.prefix}volumemeta/`;
  }
  /**
   * The volume whose lock `key` is (`volumemeta/<hex id>/blocklock`, as {@link lock} builds
   * it); null for any other key.
   */
  lockVolume(key: string): number | null {
    const match = /^([1-9a-f][0-9a-f]{0,9})\/blocklock$/.exec(
      key.startsWith(this.volumeMetaDirs()) ? key.slice(this.volumeMetaDirs().length) : "",
    );
    if (match === null) return null;
    const volumeId = parseInt(match[1]!, 16);
    return volumeId <= VOLUME_ID_MAX ? volumeId : null;
  }
  /** Directory of everything else about volume `id` (ends with `/`). */
  volumeMetaDir(volumeId: number): string {
    return `${this.prefix}volumemeta/${volumeHex(volumeId)}/`;
  }
  /** 8-byte LE counter: the last INode id handed out for volume `id`. */
  inodeCounter(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}inode`;
  }
  /** 16-byte INodeRef: the head of volume `id`. */
  head(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}blockinode`;
  }
  /**
   * 8-byte LE generation whose root the head's generation starts from while it has none of its
   * own (set by a snapshot or restore taken without a writer; cleared by the next writer).
   */
  base(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}blockbase`;
  }
  /** 8-byte LE count of the clones made from snapshots of volume `id`. */
  cloneCount(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}clones`;
  }
  /** Directory of requests to the writer holding volume `id` open (snapshot, grow). */
  requestsDir(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}requests/`;
  }
  /** JSON request `id` to the writer, under the requester's lease. */
  request(volumeId: number, id: string): string {
    return `${this.requestsDir(volumeId)}${checkRequestId(id)}`;
  }
  /** Directory of the writer's replies. */
  repliesDir(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}replies/`;
  }
  /** JSON reply to request `id`, under the requester's lease. */
  reply(volumeId: number, id: string): string {
    return `${this.repliesDir(volumeId)}${checkRequestId(id)}`;
  }
  /** UUID of the lock holder, under the holder's lease. */
  lock(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}blocklock`;
  }
  /** Directory of the snapshots of volume `id`. */
  snapshotsDir(volumeId: number): string {
    return `${this.volumeMetaDir(volumeId)}snapshots/`;
  }
  /** JSON snapshot `name` of volume `id`. */
  snapshot(volumeId: number, name: string): string {
    return `${this.snapshotsDir(volumeId)}${checkNameLookup(name, "snapshot")}`;
  }
  /** Directory of the stale marks of every volume (stale_marks.ts). */
  staleDir(): string {
    return `${this.prefix}stale/`;
  }
  /** Directory of the stale marks of volume `id`: one record per node that lacks changes. */
  staleVolumeDir(volumeId: number): string {
    return `${this.staleDir()}${volumeHex(checkStaleVolumeId(volumeId))}/`;
  }
  /** Binary stale record (stale_marks.ts) of `node` for volume `id`; the UUID canonical. */
  staleRecord(volumeId: number, node: string): string {
    return `${this.staleVolumeDir(volumeId)}${parseUuid(node, "node UUID")}`;
  }
  /**
   * The volume and node a stale record's key names: `stale/<hex id>/<canonical UUID>`, exactly
   * as {@link staleRecord} builds it. Any other key throws `invalid` naming it.
   */
  parseStaleRecord(key: string): { volumeId: number; node: string } {
    const bad = (why: string) => invalid(`stale record key ${quoteForMessage(key, 200)}: ${why}`);
    if (!key.startsWith(this.staleDir())) throw bad(`not under ${this.staleDir()}`);
    const segments = key.slice(this.staleDir().length).split("/");
    if (segments.length !== 2) throw bad("expected <volume id>/<node UUID>");
    const [hex, node] = segments as [string, string];
    if (!/^[1-9a-f][0-9a-f]{0,9}$/.test(hex) || parseInt(hex, 16) > VOLUME_ID_MAX) {
      throw bad("the volume id is not a canonical hex id in range");
    }
    let canonical: string;
    try {
      canonical = parseUuid(node, "node UUID");
    } catch {
      throw bad("the node is not a UUID");
    }
    if (canonical !== node) throw bad("the node UUID is not in its canonical (lowercase) form");
    return { volumeId: parseInt(hex, 16), node };
  }
}

/** Checks the volume id of a stale mark: a volume id in range, and not 0 (which names none). */
function checkStaleVolumeId(volumeId: number): number {
  if (checkVolumeId(volumeId) === 0) throw invalid("volume id 0 names no volume");
  return volumeId;
}

/** Encodes an unsigned counter as 8 bytes little-endian (volume minter, INode counter, ids). */
export function encodeU64(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  return bytes;
}

/**
 * Decodes an 8-byte LE counter. An empty value reads as 0, as the original's BytesAddOne did;
 * any other length is corruption and throws `invalid`.
 */
export function decodeU64(bytes: Uint8Array, what: string): bigint {
  if (bytes.length === 0) return 0n;
  if (bytes.length !== 8) throw invalid(`${what}: expected 8 bytes, found ${bytes.length}`);
  return new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
}

/** Decodes an 8-byte LE volume id and checks its 40-bit range. */
export function decodeVolumeId(bytes: Uint8Array, what: string): number {
  const value = decodeU64(bytes, what);
  if (value === 0n || value > BigInt(VOLUME_ID_MAX)) {
    throw invalid(`${what}: volume id ${value} out of range`);
  }
  return Number(value);
}

/** One layer of a block spec as stored in global metadata (`{"Kind":1,"Options":""}`). */
export interface BlockSpecLayer {
  readonly kind: number;
  readonly options: string;
}

/** Cluster-wide settings written by `init`. */
export interface GlobalMetadata {
  readonly blockSizeBytes: number;
  /** Layers top first, as `crc,base` parses: `[{kind: 1}, {kind: 0}]`. */
  readonly defaultBlockSpec: readonly BlockSpecLayer[];
}

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** The original's JSON: `{"BlockSize":524288,"DefaultBlockSpec":[{"Kind":1,"Options":""}]}`. */
export function encodeGlobalMetadata(global: GlobalMetadata): Uint8Array {
  return encoder.encode(JSON.stringify({
    BlockSize: global.blockSizeBytes,
    DefaultBlockSpec: global.defaultBlockSpec.map((l) => ({ Kind: l.kind, Options: l.options })),
  }));
}

/** Parses global metadata JSON; anything malformed throws `invalid`. */
export function decodeGlobalMetadata(bytes: Uint8Array): GlobalMetadata {
  const raw = parseJsonObject(bytes, "global metadata");
  const blockSize = raw.BlockSize;
  const spec = raw.DefaultBlockSpec;
  if (typeof blockSize !== "number" || !Number.isSafeInteger(blockSize) || blockSize <= 0) {
    throw invalid("global metadata: BlockSize is not a positive integer");
  }
  if (!Array.isArray(spec)) throw invalid("global metadata: DefaultBlockSpec is not a list");
  const layers = spec.map((entry: unknown): BlockSpecLayer => {
    const layer = entry as { Kind?: unknown; Options?: unknown } | null;
    const kind = layer?.Kind;
    const options = layer?.Options ?? "";
    if (typeof kind !== "number" || !Number.isInteger(kind) || kind < 0) {
      throw invalid("global metadata: a layer Kind is not a non-negative integer");
    }
    if (typeof options !== "string") throw invalid("global metadata: a layer Options is no string");
    return { kind, options };
  });
  return { blockSizeBytes: blockSize, defaultBlockSpec: layers };
}

/** A named, sealed generation of a volume. */
export interface Snapshot {
  readonly name: string;
  /** When it was taken, in ms since the epoch. */
  readonly whenMs: number;
  /** (volume, generation): the generation the snapshot sealed. */
  readonly inodeRef: INodeRef;
  /** The volume's size when it was taken (null in records of the original, which had none). */
  readonly sizeBytes: number | null;
  /** Ids of the volumes cloned from this snapshot (it cannot be deleted while there are any). */
  readonly clones: readonly number[];
}

/**
 * The original's snapshot JSON, `{"Name": str, "When": RFC 3339 time, "INodeRef": base64 of the
 * 16-byte INodeRef}`, plus `"Size"` (bytes) and `"Clones"` (volume ids) when they are known.
 */
export function encodeSnapshot(snapshot: Snapshot): Uint8Array {
  return encoder.encode(JSON.stringify({
    Name: snapshot.name,
    When: new Date(snapshot.whenMs).toISOString(),
    INodeRef: bytesToBase64(snapshot.inodeRef.toBytes()),
    ...(snapshot.sizeBytes === null ? {} : { Size: snapshot.sizeBytes }),
    ...(snapshot.clones.length === 0 ? {} : { Clones: [...snapshot.clones] }),
  }));
}

/** Parses snapshot JSON; anything malformed throws `invalid`. */
export function decodeSnapshot(bytes: Uint8Array): Snapshot {
  const raw = parseJsonObject(bytes, "snapshot");
  if (typeof raw.Name !== "string" || typeof raw.When !== "string") {
    throw invalid("snapshot: Name and When must be strings");
  }
  if (typeof raw.INodeRef !== "string") throw invalid("snapshot: INodeRef must be base64");
  const whenMs = Date.parse(raw.When);
  if (Number.isNaN(whenMs)) throw invalid(`snapshot: bad time "${raw.When}"`);
  const size = raw.Size ?? null;
  if (size !== null && (typeof size !== "number" || !Number.isSafeInteger(size) || size <= 0)) {
    throw invalid("snapshot: Size is not a positive integer");
  }
  const clones = raw.Clones ?? [];
  if (
    !Array.isArray(clones) ||
    !clones.every((id) => Number.isSafeInteger(id) && id > 0 && id <= VOLUME_ID_MAX)
  ) {
    throw invalid("snapshot: Clones is not a list of volume ids");
  }
  return {
    name: raw.Name,
    whenMs,
    inodeRef: INodeRef.fromBytes(base64ToBytes(raw.INodeRef)),
    sizeBytes: size,
    clones: clones as number[],
  };
}

function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch (error) {
    throw invalid(`${what}: malformed JSON`, { cause: error });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(`${what}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

function bytesToBase64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function base64ToBytes(text: string): Uint8Array {
  let binary: string;
  try {
    binary = atob(text);
  } catch (error) {
    throw invalid("snapshot: INodeRef is not base64", { cause: error });
  }
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

/** UTF-8 bytes of `text` (lock holder values). */
export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Text of UTF-8 `bytes`; invalid UTF-8 throws `invalid`. */
export function fromUtf8(bytes: Uint8Array, what: string): string {
  try {
    return decoder.decode(bytes);
  } catch (error) {
    throw invalid(`${what}: not UTF-8`, { cause: error });
  }
}
