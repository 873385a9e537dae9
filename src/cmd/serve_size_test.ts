/** `serve --size`: N% of the available space, block-count bounds, and the free-space rule. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError, parseCapacity, STORE_SLOTS_MAX } from "../core/mod.ts";
import {
  checkStoreBlocks,
  checkStoreSpace,
  measureStoreSpace,
  storeSizeBytes,
  type StoreSpace,
} from "./serve_size.ts";

const GiB = 2 ** 30;
const block = 512 * 1024;

function request(text: string) {
  return { capacity: parseCapacity(text), text };
}

const invalidMatching = (pattern: RegExp) => (error: unknown) =>
  isTorusError(error, ErrorCode.Invalid) && pattern.test(error.message);

Deno.test("N% is a share of the free space plus what the store already occupies", () => {
  const fresh: StoreSpace = { freeBytes: 100 * GiB, storeAllocatedBytes: 0, storeApparentBytes: 0 };
  assert.equal(storeSizeBytes(parseCapacity("50%"), fresh), 50 * GiB);
  // After the store filled 40 GiB of its 50, 50% still means the same 50 GiB.
  const filled = {
    freeBytes: 60 * GiB,
    storeAllocatedBytes: 40 * GiB,
    storeApparentBytes: 50 * GiB,
  };
  assert.equal(storeSizeBytes(parseCapacity("50%"), filled), 50 * GiB);
  assert.equal(storeSizeBytes(parseCapacity("2GiB"), filled), 2 * GiB);
});

Deno.test("a store must hold one block beside its spare, and at most STORE_SLOTS_MAX", () => {
  const check = (text: string, bytes: number) =>
    checkStoreBlocks(bytes, { ...request(text), blockSizeBytes: block });
  check("1MiB", 2 * block);
  check(String(STORE_SLOTS_MAX * block), STORE_SLOTS_MAX * block);
  for (const bytes of [0, 1, block, 2 * block - 1]) {
    assert.throws(
      () => check(String(bytes), bytes),
      invalidMatching(/is too small: the block store needs at least 1 MiB \(2 blocks of 512 KiB/),
      String(bytes),
    );
  }
  assert.throws(
    () => check("8TiB", 8 * 2 ** 40),
    invalidMatching(/^--size 8TiB is too large: a block store holds at most 16000000 blocks/),
  );
  assert.throws(
    () => checkStoreBlocks(700 * 1024, { ...request("1%"), blockSizeBytes: block }),
    invalidMatching(/^--size 1% \(700 KiB\) is too small/),
    "a percentage names the bytes it came to",
  );
});

Deno.test("a new or growing store must fit the space; an existing one only warns", () => {
  const where = "/srv/torus";
  const space: StoreSpace = { freeBytes: 10 * GiB, storeAllocatedBytes: 0, storeApparentBytes: 0 };
  assert.equal(checkStoreSpace(10 * GiB, { ...request("10GiB"), space, where }), null);
  assert.throws(
    () => checkStoreSpace(11 * GiB, { ...request("11GiB"), space, where }),
    invalidMatching(/^--size 11GiB is more than the 10 GiB available in \/srv\/torus \(free space/),
  );
  // A 50 GiB store holding 40 GiB whose disk then filled up from elsewhere to 5 GiB free.
  const existing = {
    freeBytes: 5 * GiB,
    storeAllocatedBytes: 40 * GiB,
    storeApparentBytes: 50 * GiB,
  };
  const warning = checkStoreSpace(50 * GiB, { ...request("50GiB"), space: existing, where });
  assert.match(warning ?? "", /^warning: the block store \(50 GiB\) is larger than the 45 GiB/);
  // Growing it beyond the space is still refused.
  assert.throws(
    () => checkStoreSpace(60 * GiB, { ...request("60GiB"), space: existing, where }),
    invalidMatching(/is more than the 45 GiB available/),
  );
});

Deno.test("measureStoreSpace counts the store's allocated and apparent bytes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-space-" });
  try {
    const none = await measureStoreSpace(`${dir}/block`);
    assert.equal(none.storeApparentBytes, 0);
    assert.ok(none.freeBytes > 0);
    await Deno.mkdir(`${dir}/block`);
    await Deno.writeFile(`${dir}/block/dense`, new Uint8Array(64 * 1024).fill(1));
    using sparse = await Deno.open(`${dir}/block/sparse`, { write: true, create: true });
    await sparse.truncate(GiB);
    const space = await measureStoreSpace(`${dir}/block`);
    assert.equal(space.storeApparentBytes, GiB + 64 * 1024);
    assert.ok(space.storeAllocatedBytes >= 64 * 1024 && space.storeAllocatedBytes < GiB / 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
