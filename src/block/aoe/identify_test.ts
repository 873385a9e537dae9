/** The IDENTIFY DEVICE page: words and bits, capacities around the LBA28 limit, the checksum. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../../core/mod.ts";
import {
  buildIdentifyPage,
  IDENTIFY_PAGE_BYTES,
  integrityChecksum,
  parseIdentifyPage,
} from "./identify.ts";

const word = (page: Uint8Array, n: number) => page[n * 2]! | (page[n * 2 + 1]! << 8);
const base = { sectors: 2048, serial: "vol-42", firmwareRevision: "0.1.0" };

Deno.test("identify: the page claims LBA48, flushes and an enabled write cache, never TRIM", () => {
  const page = buildIdentifyPage(base);
  assert.equal(page.length, IDENTIFY_PAGE_BYTES);
  assert.equal(word(page, 0) & 0x8000, 0, "an ATA device");
  assert.ok(word(page, 49) & (1 << 9), "LBA supported");
  assert.ok(word(page, 82) & (1 << 5), "write cache supported");
  assert.ok(word(page, 85) & (1 << 5), "write cache enabled");
  assert.ok(word(page, 82) & (1 << 3), "power management (CHECK POWER MODE)");
  for (
    const [bit, what] of [[12, "FLUSH CACHE"], [13, "FLUSH CACHE EXT"], [10, "LBA48"]] as const
  ) {
    assert.ok(word(page, 83) & (1 << bit), `${what} supported`);
    assert.ok(word(page, 86) & (1 << bit), `${what} enabled`);
  }
  for (const n of [83, 84, 87]) assert.equal(word(page, n) & 0xc000, 0x4000, `word ${n} valid`);
  assert.equal(word(page, 169), 0, "no DATA SET MANAGEMENT (TRIM)");
  const info = parseIdentifyPage(page);
  assert.equal(info.trimSupported, false);
  assert.equal(info.writeCacheEnabled, true);
  assert.equal(info.flushCacheExtSupported, true);
  assert.equal(info.lba48Supported, true);
  assert.equal(info.integrityWordPresent, true);
});

Deno.test("identify: strings are space padded, two characters a word, first in the high byte", () => {
  const page = buildIdentifyPage({ ...base, serial: "AB", firmwareRevision: "v1.2" });
  assert.equal(String.fromCharCode(page[21]!, page[20]!), "AB", "serial starts at word 10");
  assert.ok(page.subarray(22, 40).every((byte) => byte === 0x20), "serial padded with spaces");
  assert.equal(String.fromCharCode(page[47]!, page[46]!, page[49]!, page[48]!), "v1.2");
  assert.equal(String.fromCharCode(page[55]!, page[54]!, page[57]!, page[56]!), "toru");
  const info = parseIdentifyPage(page);
  assert.deepEqual([info.model, info.serial, info.firmwareRevision], ["torus AoE", "AB", "v1.2"]);
});

Deno.test("identify: strings are cut to their fields; non-ASCII becomes '_'", () => {
  const info = parseIdentifyPage(buildIdentifyPage({
    sectors: 8,
    serial: "0123456789abcdefghijKLMN",
    firmwareRevision: "0.1.0-dev.5",
    model: "modèle 🚀 x",
  }));
  assert.equal(info.serial, "0123456789abcdefghij");
  assert.equal(info.firmwareRevision, "0.1.0-de");
  assert.equal(info.model, "mod_le _ x");
});

Deno.test("identify: capacities at the LBA28 boundary", () => {
  const cases: [number, number][] = [
    [0, 0],
    [1, 1],
    [0x0fff_fffe, 0x0fff_fffe],
    [0x0fff_ffff, 0x0fff_ffff],
    [0x1000_0000, 0x0fff_ffff],
    [0x1_0000_0000, 0x0fff_ffff],
    [2 ** 48, 0x0fff_ffff],
  ];
  for (const [sectors, lba28] of cases) {
    const page = buildIdentifyPage({ ...base, sectors });
    const info = parseIdentifyPage(page);
    assert.equal(info.lba28Sectors, lba28, `words 60-61 for ${sectors} sectors`);
    assert.equal(word(page, 60) + word(page, 61) * 65536, lba28);
    assert.equal(info.lba48Sectors, sectors, `words 100-103 for ${sectors} sectors`);
    assert.equal(info.sectors, sectors);
  }
  const page = buildIdentifyPage({ ...base, sectors: 0x1234_5678_9abc });
  assert.deepEqual([100, 101, 102, 103].map((n) => word(page, n)), [0x9abc, 0x5678, 0x1234, 0]);
});

Deno.test("identify: capacities beyond 48 bits or not whole are refused", () => {
  for (const sectors of [2 ** 48 + 1, -1, 1.5, Number.NaN]) {
    assert.throws(
      () => buildIdentifyPage({ ...base, sectors }),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
});

Deno.test("identify: the integrity word makes the page sum to zero, and is checked", () => {
  for (const sectors of [0, 7, 123_456_789, 2 ** 40 + 3]) {
    const page = buildIdentifyPage({ ...base, sectors, serial: `s${sectors}` });
    assert.equal(page[510], 0xa5);
    assert.equal(page.reduce((sum, byte) => sum + byte, 0) % 256, 0, `${sectors} sectors`);
    assert.equal(page[511], integrityChecksum(page));
  }
  const page = buildIdentifyPage(base);
  page[100] = page[100]! ^ 1;
  assert.throws(
    () => parseIdentifyPage(page),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid) && /checksum/.test(error.message),
  );
  page[510] = 0; // no signature: the checksum is not claimed, so not checked
  assert.equal(parseIdentifyPage(page).integrityWordPresent, false);
});

Deno.test("identify: a page of another size or an impossible capacity is invalid", () => {
  for (const length of [0, 511, 513]) {
    assert.throws(
      () => parseIdentifyPage(new Uint8Array(length)),
      (error: unknown) => isTorusError(error, ErrorCode.Invalid),
    );
  }
  const page = new Uint8Array(512);
  page[207] = 0x01; // word 103 high byte: 2^56 sectors
  assert.throws(
    () => parseIdentifyPage(page),
    (error: unknown) => isTorusError(error, ErrorCode.Invalid) && /2\^48/.test(error.message),
  );
});

Deno.test("identify: a page without LBA48 reports its LBA28 capacity", () => {
  const page = buildIdentifyPage({ ...base, sectors: 5000 });
  page[83 * 2 + 1] = page[83 * 2 + 1]! & ~(1 << 2); // word 83 bit 10
  page[511] = integrityChecksum(page);
  const info = parseIdentifyPage(page);
  assert.equal(info.lba48Supported, false);
  assert.equal(info.sectors, 5000);
});
