/**
 * Randomness as a dependency: a seeded generator for tests and simulations (replayable from the
 * seed printed in the test name) and a crypto-backed one for production.
 * @module
 */

import { assert } from "./assert.ts";

/** Source of random values. */
export interface Random {
  /** Uniform unsigned 32-bit integer. */
  nextU32(): number;
  /** Uniform float in [0, 1). */
  float(): number;
  /** Uniform integer in [0, maxExclusive). */
  int(maxExclusive: number): number;
  /** `length` random bytes. */
  bytes(length: number): Uint8Array;
  /** True with probability `p`. */
  chance(p: number): boolean;
}

abstract class RandomBase implements Random {
  abstract nextU32(): number;

  float(): number {
    // 53 random bits, as Math.random does.
    const high = this.nextU32() >>> 5;
    const low = this.nextU32() >>> 6;
    return (high * 67108864 + low) / 9007199254740992;
  }

  int(maxExclusive: number): number {
    assert(Number.isSafeInteger(maxExclusive) && maxExclusive > 0, "Random.int needs max > 0");
    return Math.floor(this.float() * maxExclusive);
  }

  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i += 4) {
      const word = this.nextU32();
      for (let j = 0; j < 4 && i + j < length; j++) out[i + j] = (word >>> (8 * j)) & 0xff;
    }
    return out;
  }

  chance(p: number): boolean {
    return this.float() < p;
  }
}

/** xoshiro128** seeded through splitmix32: fast, good enough for tests, exactly replayable. */
export class SeededRandom extends RandomBase {
  readonly seed: number;
  #s0: number;
  #s1: number;
  #s2: number;
  #s3: number;

  constructor(seed: number) {
    super();
    this.seed = seed >>> 0;
    let x = this.seed;
    const splitmix = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.#s0 = splitmix();
    this.#s1 = splitmix();
    this.#s2 = splitmix();
    this.#s3 = splitmix();
  }

  nextU32(): number {
    const result = Math.imul(rotl(Math.imul(this.#s1, 5) >>> 0, 7), 9) >>> 0;
    const t = (this.#s1 << 9) >>> 0;
    this.#s2 ^= this.#s0;
    this.#s3 ^= this.#s1;
    this.#s1 ^= this.#s2;
    this.#s0 ^= this.#s3;
    this.#s2 ^= t;
    this.#s3 = rotl(this.#s3, 11);
    return result;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Cryptographically strong randomness from the platform. */
export class CryptoRandom extends RandomBase {
  #buffer = new Uint32Array(256);
  #position = 256;

  nextU32(): number {
    if (this.#position >= this.#buffer.length) {
      crypto.getRandomValues(this.#buffer);
      this.#position = 0;
    }
    return this.#buffer[this.#position++]!;
  }

  override bytes(length: number): Uint8Array {
    const out = new Uint8Array(length);
    for (let i = 0; i < length; i += 65536) {
      crypto.getRandomValues(out.subarray(i, Math.min(length, i + 65536)));
    }
    return out;
  }
}

/** A seed for a test: $SEED when set, else a fresh random one (print it in the test name). */
export function testSeed(): number {
  const permission = Deno.permissions.querySync({ name: "env", variable: "SEED" });
  let fromEnv: string | undefined;
  try {
    fromEnv = permission.state === "granted" ? Deno.env.get("SEED") : undefined;
  } catch {
    // Not valid UTF-8, so not a seed: a random one is used (and printed by the test).
  }
  if (fromEnv !== undefined && /^\d+$/.test(fromEnv)) return Number(fromEnv) >>> 0;
  return crypto.getRandomValues(new Uint32Array(1))[0]!;
}

/** A random (version 4) UUID string from `random`, so ids are replayable in tests. */
export function randomUuid(random: Random): string {
  const b = random.bytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${
    hex.slice(20)
  }`;
}
