/**
 * The rep layer: file-level extra copies on top of the ring's replication. With `rep=N` every put
 * writes the block under the primary ref (the layers below) and under N−1 extra refs; being other
 * refs, the copies land on other peers of the ring. A read tries the primary, then each extra copy
 * in order when a copy is unavailable or missing; other errors (closed, aborted) end the read.
 * Extra copies are checked against the CRC of the crc layer wherever it sits in the stack.
 *
 * Content (little-endian): int32 copies N, then N−1 lists, each an int32 count followed by count
 * 24-byte refs (one per index; the all-zero ref where the index is unset). The original allocated
 * N lists when reading this back; here exactly N−1 are read and anything after them is rejected.
 * @module
 */

import {
  assert,
  BLOCK_REF_BYTES,
  BlockRef,
  blockUnavailable,
  ErrorCode,
  type INodeRef,
  invalid,
  isTorusError,
  REP_LAYER_COPIES_MAX,
} from "../core/mod.ts";
import type { BlockCallOptions } from "../storage/mod.ts";
import { LayerKind } from "./blockset.ts";
import { Layer, type PendingLoad, type PutPlan, type StackContext } from "./layer.ts";
import { PackedEntries } from "./packed.ts";
import { checkRefTable, UNSET_REF } from "./refs.ts";

const INT32_BYTES = 4;

/** Reads and checks the copy count at the start of rep layer content. Throws `invalid`. */
export function readRepCopies(content: Uint8Array): number {
  if (content.length < INT32_BYTES) {
    throw invalid(`rep layer: ${content.length} bytes cannot hold its copy count`);
  }
  const copies = new DataView(content.buffer, content.byteOffset, INT32_BYTES).getInt32(0, true);
  if (copies < 1 || copies > REP_LAYER_COPIES_MAX) {
    throw invalid(`rep layer: copy count ${copies} is not in 1..${REP_LAYER_COPIES_MAX}`);
  }
  return copies;
}

/** Errors after which the next copy is worth trying. */
function isCopyUnavailable(error: unknown): boolean {
  return isTorusError(error, ErrorCode.BlockUnavailable) || isTorusError(error, ErrorCode.NotExist);
}

/** Keeps N−1 extra copies of every block. */
export class RepLayer extends Layer {
  readonly kind = LayerKind.Rep;
  /** Total copies, the primary included. */
  readonly copies: number;
  readonly #extras: PackedEntries[];
  #length = 0;

  constructor(context: StackContext, sub: Layer, copies: number) {
    super(context, sub);
    assert(Number.isSafeInteger(copies) && copies >= 1, "rep layer: bad copy count");
    assert(copies <= REP_LAYER_COPIES_MAX, "rep layer: too many copies");
    this.copies = copies;
    this.#extras = Array.from({ length: copies - 1 }, () => new PackedEntries(UNSET_REF));
    for (const table of this.#extras) context.allocator.register(table);
  }

  protected ownLength(): number {
    return this.#length;
  }

  async getBlock(index: number, options?: BlockCallOptions): Promise<Uint8Array> {
    this.checkReadIndex(index);
    // Everything about this index is read now, before any await (see layer.ts).
    const extras = this.#extras.filter((table) => !table.isUnset(index))
      .map((table) => BlockRef.fromBytes(table.view(index)));
    const expected = options?.expectedCrc32 ?? this.sub!.expectedCrc32(index);
    let lastError: unknown;
    try {
      return await this.sub!.getBlock(index, options);
    } catch (error) {
      if (extras.length === 0 || !isCopyUnavailable(error)) throw error;
      lastError = error;
    }
    for (const ref of extras) {
      try {
        return await this.context.readCopy(ref, expected, options);
      } catch (error) {
        if (!isCopyUnavailable(error)) throw error;
        lastError = error;
      }
    }
    throw blockUnavailable(`no copy of block ${index} is readable (${extras.length + 1} tried)`, {
      cause: lastError,
    });
  }

  protected planOwnPut(inode: INodeRef, index: number, _block: Uint8Array, plan: PutPlan): void {
    for (const table of this.#extras) {
      const ref = this.context.allocator.next(inode);
      plan.refs.push(ref);
      plan.commits.push(() => table.set(index, ref.toBytes()));
    }
    plan.commits.push(() => {
      this.#length = Math.max(this.#length, index + 1);
    });
  }

  protected truncateOwn(length: number): void {
    for (const table of this.#extras) table.resize(length);
    this.#length = length;
  }

  protected trimOwn(fromIndex: number, toIndex: number): void {
    for (const table of this.#extras) table.unset(fromIndex, toIndex);
  }

  protected ownRefTables(): readonly PackedEntries[] {
    return this.#extras;
  }

  protected encodeOwn(fromIndex: number, toIndex: number): Uint8Array {
    const count = toIndex - fromIndex;
    const listBytes = INT32_BYTES + count * BLOCK_REF_BYTES;
    const content = new Uint8Array(INT32_BYTES + this.#extras.length * listBytes);
    const view = new DataView(content.buffer);
    view.setInt32(0, this.copies, true);
    this.#extras.forEach((table, j) => {
      const offset = INT32_BYTES + j * listBytes;
      view.setInt32(offset, count, true);
      content.set(table.copyRange(fromIndex, toIndex), offset + INT32_BYTES);
    });
    return content;
  }

  protected decodeOwn(content: Uint8Array): PendingLoad {
    const copies = readRepCopies(content);
    if (copies !== this.copies) {
      throw invalid(`rep layer content keeps ${copies} copies, this blockset ${this.copies}`);
    }
    const view = new DataView(content.buffer, content.byteOffset, content.byteLength);
    const lists: { refs: Uint8Array; maxInode: bigint }[] = [];
    let offset = INT32_BYTES;
    for (let j = 0; j < copies - 1; j++) {
      if (content.length - offset < INT32_BYTES) {
        throw invalid(`rep layer: content ends before the count of list ${j}`);
      }
      const count = view.getInt32(offset, true);
      offset += INT32_BYTES;
      if (count < 0 || count > (content.length - offset) / BLOCK_REF_BYTES) {
        throw invalid(`rep layer: list ${j} claims ${count} refs, the content is shorter`);
      }
      const refs = content.subarray(offset, offset + count * BLOCK_REF_BYTES);
      offset += refs.length;
      if (lists.length > 0 && refs.length !== lists[0]!.refs.length) {
        throw invalid(`rep layer: list ${j} holds ${count} refs, list 0 a different number`);
      }
      lists.push({ refs, maxInode: checkRefTable(refs, `rep layer list ${j}`) });
    }
    if (offset !== content.length) {
      throw invalid(`rep layer: ${content.length - offset} bytes after the last list`);
    }
    return this.#pendingLoad(lists);
  }

  #pendingLoad(lists: readonly { refs: Uint8Array; maxInode: bigint }[]): PendingLoad {
    const first = lists[0];
    return {
      // With one copy the content has no lists, so it says nothing about the length.
      count: first === undefined ? undefined : first.refs.length / BLOCK_REF_BYTES,
      apply: (fromIndex, count) => {
        lists.forEach((list, j) => {
          this.#extras[j]!.writeRange(fromIndex, list.refs);
          this.context.allocator.observe(list.refs, list.maxInode);
        });
        this.#length = Math.max(this.#length, fromIndex + count);
      },
    };
  }
}
