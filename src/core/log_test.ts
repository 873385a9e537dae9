import assert from "node:assert/strict";
import {
  configureLogPackages,
  ErrorCode,
  isTorusError,
  logger,
  LogLevel,
  setGlobalLogLevel,
  setLogSink,
} from "./mod.ts";

// Log settings are process-wide: these tests run in order in their own test module.
const lines: string[] = [];
setLogSink((line) => lines.push(line));

Deno.test("loggers write `<time> <level letter> | <package>: <message>` at enabled levels", () => {
  setGlobalLogLevel(LogLevel.Info);
  lines.length = 0;
  const log = logger("ring");
  log.info("hello");
  log.debug("hidden");
  log.error("bad");
  assert.equal(lines.length, 2);
  assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT[\d:.]+Z I \| ring: hello$/);
  assert.match(lines[1]!, / E \| ring: bad$/);
  assert.ok(log.enabled(LogLevel.Notice) && !log.enabled(LogLevel.Debug));
});

Deno.test("configureLogPackages sets levels per package and `*` for all", () => {
  setGlobalLogLevel(LogLevel.Warning);
  configureLogPackages(" distributor = T , etcd=d,,");
  assert.ok(logger("distributor").enabled(LogLevel.Trace));
  assert.ok(logger("etcd").enabled(LogLevel.Debug) && !logger("etcd").enabled(LogLevel.Trace));
  assert.ok(!logger("other").enabled(LogLevel.Notice));
  configureLogPackages("*=N");
  assert.ok(logger("other").enabled(LogLevel.Notice));
});

Deno.test("a bad log spec is invalid and changes nothing", () => {
  setGlobalLogLevel(LogLevel.Info);
  for (const spec of ["nolevel", "x=Q", "=T", "a=T=x", "gc=D,broken"]) {
    assert.throws(() => configureLogPackages(spec), (error: unknown) => {
      assert.ok(isTorusError(error, ErrorCode.Invalid), String(error));
      return true;
    });
  }
  assert.ok(!logger("gc").enabled(LogLevel.Debug), "the good part of a bad spec was not applied");
});

Deno.test("log lines are escaped: a value cannot drive the terminal or break the line", () => {
  setGlobalLogLevel(LogLevel.Info);
  lines.length = 0;
  logger("metadata").warn("skipping peer nodes/\x1b[2J\nforged\u202e");
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, / W \| metadata: skipping peer nodes\/\\x1b\[2J\\x0aforged\\u202e$/);
});
