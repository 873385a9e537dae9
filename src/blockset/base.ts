/**
 * The base layer: index i → the BlockRef holding block i's bytes. Content is the packed table of
 * 24-byte refs, one per index; the all-zero ref means "unset", which reads as a zero-filled block
 * without asking the store.
 * @module
 */

import { BLOCK_REF_BYTES, BlockRef, type INodeRef } from "../core/mod.ts";
import type { BlockCallOptions } from "../storage/mod.ts";
import { LayerKind } from "./blockset.ts";
import { Layer, type PendingLoad, type PutPlan, type StackContext } from "./layer.ts";
import { PackedEntries } from "./packed.ts";
import { checkRefTable, UNSET_REF } from "./refs.ts";

/** The bottom layer of every stack. */
export class BaseLayer extends Layer {
  readonly kind = LayerKind.Base;
  readonly #refs = new PackedEntries(UNSET_REF);

  constructor(context: StackContext) {
    super(context, null);
    context.allocator.register(this.#refs);
  }

  protected ownLength(): number {
    return this.#refs.length;
  }

  async getBlock(index: number, options?: BlockCallOptions): Promise<Uint8Array> {
    this.checkReadIndex(index);
    options?.signal?.throwIfAborted();
    if (this.#refs.isUnset(index)) return new Uint8Array(this.context.blockSizeBytes);
    const ref = BlockRef.fromBytes(this.#refs.view(index));
    return await this.context.readCopy(ref, options?.expectedCrc32, options);
  }

  override primaryRef(index: number): BlockRef {
    return BlockRef.fromBytes(this.#refs.view(index));
  }

  protected planOwnPut(inode: INodeRef, index: number, _block: Uint8Array, plan: PutPlan): void {
    const ref = this.context.allocator.next(inode);
    plan.refs.push(ref);
    plan.commits.push(() => this.#refs.set(index, ref.toBytes()));
  }

  protected truncateOwn(length: number): void {
    this.#refs.resize(length);
  }

  protected trimOwn(fromIndex: number, toIndex: number): void {
    this.#refs.unset(fromIndex, toIndex);
  }

  protected ownRefTables(): readonly PackedEntries[] {
    return [this.#refs];
  }

  protected encodeOwn(fromIndex: number, toIndex: number): Uint8Array {
    return this.#refs.copyRange(fromIndex, toIndex);
  }

  protected decodeOwn(content: Uint8Array): PendingLoad {
    const maxInode = checkRefTable(content, "base layer");
    return {
      count: content.length / BLOCK_REF_BYTES,
      apply: (fromIndex) => {
        this.#refs.writeRange(fromIndex, content);
        this.context.allocator.observe(content, maxInode);
      },
    };
  }
}
