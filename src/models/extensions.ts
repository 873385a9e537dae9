/**
 * Hand-written helpers over the models: conversions between core value types and their
 * protobuf messages.
 * @module
 */

import { BlockRef, INodeRef, invalid } from "../core/mod.ts";
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
