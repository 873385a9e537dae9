/** libc through FFI: positional I/O, errors with errno names, locks, mappings. */

import assert from "node:assert/strict";
import { ErrorCode, isTorusError } from "../core/mod.ts";
import { Errno, errnoCode, errnoName, SysError } from "./errno.ts";
import {
  close,
  fdatasync,
  fileSizeBytes,
  FlockOps,
  ftruncate,
  mappedBytes,
  mmap,
  MmapFlags,
  msync,
  munmap,
  open,
  OpenFlags,
  pread,
  preadFull,
  pwriteFull,
  pwriteSync,
  tryFlock,
} from "./libc.ts";

async function withFile(body: (path: string, fd: number) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "torus-libc-" });
  const path = `${dir}/f`;
  const fd = open(path, OpenFlags.O_RDWR | OpenFlags.O_CREAT);
  try {
    await body(path, fd);
  } finally {
    close(fd);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("libc: nonblocking and synchronous positional writes read back", async () => {
  await withFile(async (_path, fd) => {
    const data = new Uint8Array(100_000).map((_, i) => i * 7);
    await pwriteFull(fd, data, 4096);
    assert.equal(pwriteSync(fd, new Uint8Array([1, 2, 3]), 0), 3);
    await fdatasync(fd);
    assert.equal(fileSizeBytes(fd), 4096 + data.length);
    const back = new Uint8Array(data.length);
    assert.equal(await preadFull(fd, back, 4096), data.length);
    assert.deepEqual(back, data);
    const head = new Uint8Array(3);
    assert.equal(await pread(fd, head, 0), 3);
    assert.deepEqual(head, new Uint8Array([1, 2, 3]));
    // Reading past the end returns what exists.
    assert.equal(await preadFull(fd, new Uint8Array(10), 4096 + data.length - 4), 4);
  });
});

Deno.test("libc: a failed call throws a SysError naming the call and errno", async () => {
  assert.throws(() => open("/nonexistent-dir/x", OpenFlags.O_RDONLY), (error: unknown) => {
    assert.ok(error instanceof SysError);
    assert.equal(error.errno, Errno.ENOENT);
    assert.equal(error.code, ErrorCode.NotExist);
    assert.match(error.message, /^open\(\/nonexistent-dir\/x\) failed: ENOENT No such file/);
    return true;
  });
  // A nonblocking call's errno is recovered by repeating it on the repeat worker.
  await assert.rejects(pwriteFull(987_654, new Uint8Array(8), 0), (error: unknown) => {
    assert.ok(error instanceof SysError);
    assert.equal(error.errno, Errno.EBADF);
    return true;
  });
  await assert.rejects(fdatasync(987_654), (error: unknown) => {
    assert.ok(isTorusError(error, ErrorCode.Unavailable));
    assert.match(String(error), /errno is lost/);
    return true;
  });
});

Deno.test("libc: errno names and codes", () => {
  assert.equal(errnoName(Errno.ENOSPC), "ENOSPC");
  assert.equal(errnoName(9999), "errno 9999");
  assert.equal(errnoCode(Errno.ENOSPC), ErrorCode.OutOfSpace);
  assert.equal(errnoCode(Errno.EAGAIN), ErrorCode.Again);
  assert.equal(errnoCode(Errno.EIO), ErrorCode.Unavailable);
});

Deno.test("libc: flock excludes a second open file of the same path", async () => {
  await withFile((path, fd) => {
    assert.equal(tryFlock(fd, FlockOps.LOCK_EX), true);
    const other = open(path, OpenFlags.O_RDWR);
    try {
      assert.equal(tryFlock(other, FlockOps.LOCK_EX), false);
    } finally {
      close(other);
    }
    return Promise.resolve();
  });
});

Deno.test("libc: a shared mapping sees and syncs file bytes", async () => {
  await withFile(async (_path, fd) => {
    ftruncate(fd, 8192);
    await pwriteFull(fd, new Uint8Array([9, 8, 7]), 4096);
    const mapping = mmap(fd, {
      lengthBytes: 8192,
      prot: MmapFlags.PROT_READ | MmapFlags.PROT_WRITE,
      flags: MmapFlags.MAP_SHARED,
    });
    try {
      const view = mappedBytes(mapping, 4096, 4096);
      assert.deepEqual(view.subarray(0, 3), new Uint8Array([9, 8, 7]));
      view[3] = 6;
      await msync(mapping, { offsetBytes: 0, lengthBytes: 8192, flags: MmapFlags.MS_SYNC });
      const back = new Uint8Array(4);
      await preadFull(fd, back, 4096);
      assert.deepEqual(back, new Uint8Array([9, 8, 7, 6]));
    } finally {
      munmap(mapping);
    }
  });
});

/** The main thread's errno, read and written directly (a synchronous libc call sets it). */
function mainThreadErrno(): { get(): number; set(value: number): void } {
  const lib = Deno.dlopen(
    "libc.so.6",
    {
      __errno_location: { parameters: [], result: "pointer" },
    } as const,
  );
  const location = lib.symbols.__errno_location();
  assert.ok(location !== null);
  const cell = new Int32Array(Deno.UnsafePointerView.getArrayBuffer(location, 4));
  return { get: () => cell[0]!, set: (value) => void (cell[0] = value) };
}

Deno.test("libc: a failed nonblocking pread/pwrite learns its errno off the main thread", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-libc-" });
  // pread/pwrite of a directory fail with EISDIR / EBADF, which nothing else on this thread sets.
  const dirFd = open(dir, OpenFlags.O_RDONLY);
  const errno = mainThreadErrno();
  try {
    errno.set(0);
    await assert.rejects(pread(dirFd, new Uint8Array(16), 0), (error: unknown) => {
      assert.ok(error instanceof SysError);
      assert.equal(error.errno, Errno.EISDIR);
      assert.equal(error.code, ErrorCode.Invalid);
      return true;
    });
    // A synchronous repeat on this thread would have left EISDIR in this thread's errno.
    assert.notEqual(errno.get(), Errno.EISDIR, "the failed pread was repeated on the main thread");
    errno.set(0);
    await assert.rejects(pwriteFull(dirFd, new Uint8Array(16), 0), (error: unknown) => {
      assert.ok(error instanceof SysError);
      assert.equal(error.errno, Errno.EBADF);
      return true;
    });
    assert.notEqual(errno.get(), Errno.EBADF, "the failed pwrite was repeated on the main thread");
  } finally {
    close(dirFd);
    await Deno.remove(dir, { recursive: true });
  }
});
