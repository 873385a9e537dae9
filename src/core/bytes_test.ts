import assert from "node:assert/strict";
import { firstDifference, joinedBytes } from "./bytes.ts";

Deno.test("joinedBytes: adjacent views of one buffer become one view, without a copy", () => {
  const buffer = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]);
  const joined = joinedBytes([buffer.subarray(2, 4), buffer.subarray(4, 5), buffer.subarray(5, 7)]);
  assert.deepEqual([...joined], [3, 4, 5, 6, 7]);
  assert.equal(joined.buffer, buffer.buffer, "a view of the same memory");
  assert.equal(joined.byteOffset, 2);
});

Deno.test("joinedBytes: gaps, reordering and other buffers are copied in order", () => {
  const buffer = new Uint8Array([1, 2, 3, 4, 5, 6]);
  const other = new Uint8Array([9, 9]);
  for (
    const parts of [
      [buffer.subarray(0, 2), buffer.subarray(3, 4)],
      [buffer.subarray(2, 4), buffer.subarray(0, 2)],
      [buffer.subarray(0, 2), other],
    ]
  ) {
    const joined = joinedBytes(parts);
    assert.deepEqual([...joined], parts.flatMap((part) => [...part]));
    assert.notEqual(joined.buffer, buffer.buffer, "a copy");
  }
  const single = joinedBytes([other]);
  assert.deepEqual([...single], [9, 9]);
});

Deno.test("firstDifference: the first differing offset, the shorter length for a prefix, -1 if equal", () => {
  assert.equal(firstDifference(new Uint8Array([1, 2]), new Uint8Array([1, 3])), 1);
  assert.equal(firstDifference(new Uint8Array([1, 2]), new Uint8Array([1, 2, 3])), 2);
  assert.equal(firstDifference(new Uint8Array([1]), new Uint8Array([1])), -1);
});
