/**
 * Hand-written helpers over the models: conversions between core value types and their
 * protobuf messages, and the check of a PeerInfo that was read from somewhere (the metadata
 * store, a ring proto).
 * @module
 */

import {
  BlockRef,
  hasInvisibleOrControl,
  INodeRef,
  invalid,
  parseUuid,
  PEER_ADDRESS_LENGTH_MAX,
  quoteForMessage,
} from "../core/mod.ts";
import type { BlockRefMessage, INodeRefMessage, PeerInfo } from "./models.ts";

export function blockRefToMessage(ref: BlockRef): BlockRefMessage {
  return { volume: ref.volumeField(), inode: ref.inode, block: ref.index };
}

export function blockRefFromMessage(message: BlockRefMessage): BlockRef {
  return BlockRef.fromVolumeField(message.volume, message.inode, message.block);
}

export function inodeRefToMessage(ref: INodeRef): INodeRefMessage {
  return { volume: BigInt(ref.volume), inode: ref.inode };
}

export function inodeRefFromMessage(message: INodeRefMessage): INodeRef {
  if (message.volume > 0xff_ffff_ffffn) throw invalid(`INodeRef volume out of range`);
  return new INodeRef(Number(message.volume), message.inode);
}

/** A PeerInfo with every field at its default and the given uuid. */
export function emptyPeerInfo(uuid: string): PeerInfo {
  return {
    uuid,
    address: "",
    lastSeen: 0n,
    totalBlocks: 0n,
    usedBlocks: 0n,
    timedOut: false,
    rebalanceInfo: null,
    protocolVersion: 0n,
  };
}

/**
 * A checked copy of a PeerInfo read from the metadata store or a ring: its UUID in canonical form
 * ({@link parseUuid}) and an address without whitespace, control or format characters (no real
 * address has them; a forged one could drive a terminal). `invalid` otherwise, naming `what`.
 */
export function checkedPeerInfo(peer: PeerInfo, what = "peer"): PeerInfo {
  const uuid = parseUuid(peer.uuid, `${what} UUID`);
  const address = peer.address;
  if (
    address.length > PEER_ADDRESS_LENGTH_MAX || /\s/.test(address) ||
    hasInvisibleOrControl(address)
  ) {
    throw invalid(`${what} ${uuid} has an invalid address ${quoteForMessage(address)}`);
  }
  return uuid === peer.uuid ? peer : { ...peer, uuid };
}
