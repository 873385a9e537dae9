import assert from "node:assert/strict";
import { CryptoRandom, type Random, randomUuid, SeededRandom, testSeed } from "./mod.ts";

/** The four state words splitmix32 derives from `seed`. */
function splitmixState(seed: number): number[] {
  let x = seed >>> 0;
  const next = () => {
    x = (x + 0x9e3779b9) >>> 0;
    let z = x;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  return [next(), next(), next(), next()];
}

/** xoshiro128** from a given state, restated with unsigned arithmetic throughout. */
function xoshiroReference(state: readonly number[], count: number): number[] {
  const s = [...state];
  const rotl = (v: number, k: number) => ((v << k) | (v >>> (32 - k))) >>> 0;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    out.push(Math.imul(rotl(Math.imul(s[1]!, 5) >>> 0, 7), 9) >>> 0);
    const t = (s[1]! << 9) >>> 0;
    s[2] = (s[2]! ^ s[0]!) >>> 0;
    s[3] = (s[3]! ^ s[1]!) >>> 0;
    s[1] = (s[1]! ^ s[2]!) >>> 0;
    s[0] = (s[0]! ^ s[3]!) >>> 0;
    s[2] = (s[2]! ^ t) >>> 0;
    s[3] = rotl(s[3]!, 11);
  }
  return out;
}

Deno.test("the xoshiro128** reference matches the published output for state 1,2,3,4", () => {
  assert.deepEqual(xoshiroReference([1, 2, 3, 4], 10), [
    11520,
    0,
    5927040,
    70819200,
    2031721883,
    1637235492,
    1287239034,
    3734860849,
    3729100597,
    4258142804,
  ]);
});

Deno.test("SeededRandom is xoshiro128** seeded by splitmix32", () => {
  for (const seed of [0, 1, 42, 0xffffffff, 123456789]) {
    const random = new SeededRandom(seed);
    const outputs = Array.from({ length: 1000 }, () => random.nextU32());
    assert.deepEqual(outputs, xoshiroReference(splitmixState(seed), 1000), `seed ${seed}`);
  }
});

const replaySeed = testSeed();
Deno.test(`SeededRandom replays the same sequence for the same seed (seed=${replaySeed})`, () => {
  const draw = (random: Random) => [
    random.nextU32(),
    random.float(),
    random.int(1000),
    Array.from(random.bytes(7)),
    random.chance(0.5),
  ];
  assert.deepEqual(draw(new SeededRandom(replaySeed)), draw(new SeededRandom(replaySeed)));
  assert.notDeepEqual(draw(new SeededRandom(1)), draw(new SeededRandom(2)));
  assert.equal(new SeededRandom(-1).seed, 0xffffffff);
});

function checkRanges(random: Random): void {
  for (let i = 0; i < 5000; i++) {
    const u = random.nextU32();
    assert.ok(Number.isInteger(u) && u >= 0 && u <= 0xffffffff);
    const f = random.float();
    assert.ok(f >= 0 && f < 1);
    const n = random.int(7);
    assert.ok(Number.isInteger(n) && n >= 0 && n < 7);
  }
  assert.equal(random.int(1), 0);
  for (const length of [0, 1, 3, 4, 5, 100_000]) assert.equal(random.bytes(length).length, length);
  assert.equal(Array.from({ length: 100 }, () => random.chance(0)).some((x) => x), false);
  assert.equal(Array.from({ length: 100 }, () => random.chance(1)).every((x) => x), true);
  assert.throws(() => random.int(0));
  assert.throws(() => random.int(1.5));
}

const rangeSeed = testSeed();
Deno.test(`SeededRandom values stay in their ranges (seed=${rangeSeed})`, () => {
  checkRanges(new SeededRandom(rangeSeed));
});

Deno.test("CryptoRandom values stay in their ranges", () => {
  checkRanges(new CryptoRandom());
});

Deno.test("SeededRandom.int is roughly uniform", () => {
  const random = new SeededRandom(7);
  const counts = new Array(10).fill(0);
  for (let i = 0; i < 100_000; i++) counts[random.int(10)]++;
  for (const count of counts) assert.ok(count > 9_500 && count < 10_500, String(counts));
  const bytes = random.bytes(100_000);
  const ones = bytes.reduce((sum, b) => sum + (b & 1), 0);
  assert.ok(ones > 49_000 && ones < 51_000);
});

Deno.test("randomUuid gives version 4 UUIDs, replayable from a seed", () => {
  const pattern = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
  const random = new SeededRandom(99);
  const seen = new Set<string>();
  for (let i = 0; i < 1000; i++) {
    const uuid = randomUuid(random);
    assert.match(uuid, pattern);
    seen.add(uuid);
  }
  assert.equal(seen.size, 1000);
  assert.equal(randomUuid(new SeededRandom(5)), randomUuid(new SeededRandom(5)));
  assert.match(randomUuid(new CryptoRandom()), pattern);
});

Deno.test("testSeed takes $SEED when it is a number", () => {
  const previous = Deno.env.get("SEED");
  try {
    Deno.env.set("SEED", "1234");
    assert.equal(testSeed(), 1234);
    Deno.env.set("SEED", "not a number");
    const seed = testSeed();
    assert.ok(Number.isInteger(seed) && seed >= 0 && seed <= 0xffffffff);
  } finally {
    if (previous === undefined) Deno.env.delete("SEED");
    else Deno.env.set("SEED", previous);
  }
});
