import assert from "node:assert/strict";
import { InFlight } from "./in_flight.ts";

Deno.test("InFlight: idle waits for every call that runs, failed ones too", async () => {
  const calls = new InFlight();
  await calls.idle();
  let release!: () => void;
  const held = calls.run(() => new Promise<void>((resolve) => release = resolve));
  const failing = calls.run(() => Promise.reject(new Error("boom")));
  assert.equal(calls.count, 2);
  let idle = false;
  const waiting = calls.idle().then(() => idle = true);
  await assert.rejects(failing, /boom/);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(idle, false, "idle while a call still ran");
  release();
  await held;
  await waiting;
  assert.equal(calls.count, 0);
});
