/**
 * MD5 (RFC 1321), written out for the ketama ring. MD5 is used here only as a well-mixed,
 * fixed hash for placement, never for security. It is hand-written because the ring hashes
 * every BlockRef on the data path: node:crypto's createHash costs ~3.5 µs per 24-byte input
 * under Deno, this ~0.2 µs (src/ring/ketama_bench.ts).
 *
 * Invariants: pure functions; the scratch buffers below are module-private and never escape, so
 * results never alias them. JavaScript runs one call at a time, so sharing them is safe.
 * @module
 */

/** Per-step left-rotation amounts, rounds 1-4 (RFC 1321 §3.4). */
const shifts = new Uint8Array([7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21]);

/** K[i] = floor(2^32 · |sin(i + 1)|), as the RFC defines the table. */
const sineTable = Int32Array.from(
  { length: 64 },
  (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) | 0,
);

/** Message word used by step i. */
const wordIndex = Uint8Array.from({ length: 64 }, (_, i) => {
  if (i < 16) return i;
  if (i < 32) return (5 * i + 1) % 16;
  if (i < 48) return (3 * i + 5) % 16;
  return (7 * i) % 16;
});

const words = new Int32Array(16);
const state = new Int32Array(4);

function resetState(): void {
  state[0] = 0x67452301;
  state[1] = 0xefcdab89 | 0;
  state[2] = 0x98badcfe | 0;
  state[3] = 0x10325476;
}

/** Runs the compression function over `words` into `state`: four rounds of 16 steps. */
function compress(): void {
  let a = state[0]!;
  let b = state[1]!;
  let c = state[2]!;
  let d = state[3]!;
  let sum: number;
  let shift: number;
  for (let i = 0; i < 16; i++) {
    sum = (a + ((b & c) | (~b & d)) + sineTable[i]! + words[i]!) | 0;
    shift = shifts[i & 3]!;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
  }
  for (let i = 16; i < 32; i++) {
    sum = (a + ((d & b) | (~d & c)) + sineTable[i]! + words[wordIndex[i]!]!) | 0;
    shift = shifts[4 | (i & 3)]!;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
  }
  for (let i = 32; i < 48; i++) {
    sum = (a + (b ^ c ^ d) + sineTable[i]! + words[wordIndex[i]!]!) | 0;
    shift = shifts[8 | (i & 3)]!;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
  }
  for (let i = 48; i < 64; i++) {
    sum = (a + (c ^ (b | ~d)) + sineTable[i]! + words[wordIndex[i]!]!) | 0;
    shift = shifts[12 | (i & 3)]!;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << shift) | (sum >>> (32 - shift)))) | 0;
  }
  state[0] = (state[0]! + a) | 0;
  state[1] = (state[1]! + b) | 0;
  state[2] = (state[2]! + c) | 0;
  state[3] = (state[3]! + d) | 0;
}

/** Loads 64 bytes of `bytes` from `offset` into `words` (little-endian), zero past the end. */
function loadWords(bytes: Uint8Array, offset: number): void {
  const end = Math.min(bytes.length, offset + 64);
  let w = 0;
  let i = offset;
  for (; i + 4 <= end; i += 4, w++) {
    words[w] = bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24);
  }
  let last = 0;
  for (let shift = 0; i < end; i++, shift += 8) last |= bytes[i]! << shift;
  // A partial word (or the word right after a whole one) is zero-padded; the rest is cleared.
  if (w < 16) words[w++] = last;
  while (w < 16) words[w++] = 0;
}

/** Hashes `bytes` into `state`. */
function hashInto(bytes: Uint8Array): void {
  resetState();
  const length = bytes.length;
  let offset = 0;
  for (; offset + 64 <= length; offset += 64) {
    loadWords(bytes, offset);
    compress();
  }
  // The tail, the 0x80 marker and the 64-bit bit length: one block if they fit, else two.
  loadWords(bytes, offset);
  const tail = length - offset;
  words[tail >> 2]! |= 0x80 << ((tail & 3) << 3);
  if (tail >= 56) {
    compress();
    words.fill(0);
  }
  words[14] = (length * 8) | 0;
  words[15] = Math.floor(length / 0x20000000) | 0;
  compress();
}

/** The 16-byte MD5 digest of `bytes`. */
export function md5(bytes: Uint8Array): Uint8Array {
  hashInto(bytes);
  const out = new Uint8Array(16);
  const view = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) view.setInt32(i * 4, state[i]!, true);
  return out;
}

/**
 * The four little-endian 32-bit words of the MD5 digest of `bytes`, written to `out[0..4)` as
 * unsigned numbers (digest bytes [0:4] are `out[0]`). Avoids allocating on the lookup path.
 */
export function md5Words(bytes: Uint8Array, out: Uint32Array): void {
  hashInto(bytes);
  out[0] = state[0]!;
  out[1] = state[1]!;
  out[2] = state[2]!;
  out[3] = state[3]!;
}

/** The first little-endian 32-bit word of the MD5 digest of `bytes` (digest bytes [0:4]). */
export function md5FirstWord(bytes: Uint8Array): number {
  hashInto(bytes);
  return state[0]! >>> 0;
}
