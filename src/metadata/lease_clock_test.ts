/** The lease clock: /proc/uptime parsing and the machine's boot-time clock. */

import assert from "node:assert/strict";
import { bootClock, parseUptimeMs, WALL_CLOCK_BOOT_ID } from "./lease_clock.ts";

Deno.test("parseUptimeMs reads seconds with up to nine decimals as whole milliseconds", () => {
  assert.equal(parseUptimeMs("350735.47 234388.90\n"), 350_735_470);
  assert.equal(parseUptimeMs("12.5 3.0\n"), 12_500);
  assert.equal(parseUptimeMs("7 1\n"), 7_000);
  assert.equal(parseUptimeMs("1.123456789 0\n"), 1_123);
  assert.throws(() => parseUptimeMs("garbage"), /unexpected \/proc\/uptime/);
});

Deno.test("the boot clock names this boot, never steps back and follows real time", async () => {
  const first = await bootClock.now();
  assert.notEqual(first.bootId, WALL_CLOCK_BOOT_ID, "this machine has /proc");
  assert.match(first.bootId, /^[0-9a-f-]{36}$/);
  // Unaffected by this process's wall clock.
  const machineNow = Date.now;
  Date.now = () => machineNow() - 86_400_000;
  let second;
  try {
    await new Promise((r) => setTimeout(r, 120));
    second = await bootClock.now();
  } finally {
    Date.now = machineNow;
  }
  assert.equal(second.bootId, first.bootId);
  assert.ok(second.ms - first.ms >= 100 && second.ms - first.ms < 5_000, `${second.ms - first.ms}`);
});
