/**
 * The journal's promise to the engine: an append is acknowledged once it has its place (before
 * its write lands), so `sync` must cover every placed record, waiting for writes still running.
 * A FileIo whose writes wait for the test to release them shows a sync that does not wait.
 */

import assert from "node:assert/strict";
import { BlockRef } from "../core/mod.ts";
import { HookedFileIo } from "./hooked_file_io.ts";
import { Journal, JournalKind, type JournalRecord, recordBytesOf } from "./journal.ts";
import { SysFileIo } from "./sys_file_io.ts";

/** Passes calls through; writes wait for `release()` while `holding`; logs what completed. */
class GatedFileIo extends HookedFileIo {
  holding = false;
  /** Writes fail (after any hold) while set. */
  failing = false;
  readonly log: string[] = [];
  readonly #held: (() => void)[] = [];

  constructor() {
    super(new SysFileIo(), () => ({
      write: async (file, bytes, offset) => {
        if (this.holding) await new Promise<void>((go) => this.#held.push(go));
        if (this.failing) throw new Error("the disk failed");
        await file.write(bytes, offset);
        this.log.push(`write ${bytes.length}`);
      },
      datasync: async (file) => {
        this.log.push("datasync");
        await file.datasync();
      },
    }));
  }

  release(): void {
    this.holding = false;
    for (const go of this.#held.splice(0)) go();
  }
}

function writeRecord(seq: number): JournalRecord {
  return {
    seq,
    kind: JournalKind.Write,
    flags: 0,
    ref: new BlockRef({ volume: 1, inode: 1n, index: BigInt(seq) }),
    offsetBytes: 0,
    lengthBytes: 4096,
    data: new Uint8Array(4096).fill(seq),
  };
}

async function withJournal(body: (journal: Journal, io: GatedFileIo) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "torus-journal-" });
  const io = new GatedFileIo();
  const journal = await Journal.open(io, `${dir}/journal-test.blk`, {
    storeId: new Uint8Array(16).fill(7),
    regionBytes: 4 * 1024 * 1024,
  });
  try {
    await body(journal, io);
  } finally {
    io.failing = false;
    io.release();
    await journal.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Lets every pending microtask and a few event loop turns run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setTimeout(resolve, 1));
}

Deno.test("journal: an append is admitted before its write lands, and sync waits for that write", async () => {
  await withJournal(async (journal, io) => {
    io.holding = true;
    const { admitted, written } = journal.append(writeRecord(1));
    await admitted;
    let writtenAt = -1;
    void written.then((end) => writtenAt = end);
    let synced: number | null = null;
    const sync = journal.sync().then((seq) => synced = seq);
    await settle();
    assert.equal(writtenAt, -1, "the write is held");
    assert.equal(synced, null, "sync must not finish before the placed record is written");
    io.release();
    await sync;
    assert.equal(synced, 1, "the sync covers the record");
    assert.ok(writtenAt > 0);
    const datasync = io.log.indexOf("datasync");
    assert.ok(datasync > io.log.indexOf("write 4160"), `the datasync follows the write: ${io.log}`);
  });
});

Deno.test("journal: a sync covers records placed in the same turn as the call, across batches", async () => {
  await withJournal(async (journal, io) => {
    journal.append(writeRecord(1));
    await settle();
    io.holding = true;
    // One batch is being written (held), the next one is placed behind it.
    journal.append(writeRecord(2));
    await settle();
    journal.append(writeRecord(3));
    const sync = journal.sync();
    await settle();
    io.release();
    assert.equal(await sync, 3);
  });
});

Deno.test("journal: a failed write fails the syncs waiting for it and later appends", async () => {
  await withJournal(async (journal, io) => {
    io.holding = true;
    const { written } = journal.append(writeRecord(1));
    const sync = journal.sync();
    await settle();
    io.failing = true;
    io.release();
    await assert.rejects(written);
    await assert.rejects(sync);
    await assert.rejects(journal.append(writeRecord(2)).admitted);
  });
});

Deno.test("journal: a lone append is written soon without a sync; close writes what waits", async () => {
  await withJournal(async (journal, io) => {
    const before = io.log.length;
    const { written } = journal.append(writeRecord(1));
    let landed = false;
    void written.then(() => landed = true);
    await settle();
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(landed, "written within a few milliseconds");
    assert.deepEqual(io.log.slice(before), ["write 4160"], "one write, no datasync");
    const second = journal.append(writeRecord(2)).written;
    await journal.close();
    assert.ok((await second) > 0, "close wrote the waiting record");
    await assert.rejects(journal.sync(), "closed");
  });
});

Deno.test("journal: a record whose seq does not follow the last one is refused", async () => {
  await withJournal(async (journal) => {
    await journal.append(writeRecord(5)).admitted;
    // Replay would stop at it and lose every record after it: refused, not written.
    assert.throws(() => journal.append(writeRecord(5)), /does not follow 5/);
    assert.throws(() => journal.append(writeRecord(3)), /does not follow 5/);
    await journal.append(writeRecord(6)).admitted;
    assert.equal(await journal.sync(), 6);
  });
});

Deno.test("journal: a new journal's region is written whole when it is made", async () => {
  // Allocated only (fallocate), every first append would land in an unwritten extent: ext4
  // converts it at writeback and each fdatasync commits that metadata. Written once, appends
  // never change the file's layout.
  const dir = await Deno.makeTempDir({ prefix: "torus-journal-" });
  const path = `${dir}/journal-test.blk`;
  const regionBytes = 3 * 1024 * 1024 + recordBytesOf(4096);
  const written = new Map<number, number>();
  const io = new HookedFileIo(new SysFileIo(), (opened) => ({
    write: (file, bytes, at) => {
      if (opened.endsWith(".tmp")) written.set(at, bytes.length);
      return file.write(bytes, at);
    },
  }));
  try {
    const journal = await Journal.open(io, path, { storeId: new Uint8Array(16), regionBytes });
    await journal.close();
    let covered = 4096;
    for (const [at, length] of [...written].sort((a, b) => a[0] - b[0])) {
      if (at <= covered) covered = Math.max(covered, at + length);
    }
    assert.equal(covered, 4096 + regionBytes, "every byte of the region was written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("journal: a batch that reaches the region's end exactly goes on at its start", async () => {
  const dir = await Deno.makeTempDir({ prefix: "torus-journal-" });
  const path = `${dir}/journal-test.blk`;
  const options = { storeId: new Uint8Array(16).fill(7), regionBytes: 10 * recordBytesOf(4096) };
  const record = recordBytesOf(4096);
  try {
    const journal = await Journal.open(new SysFileIo(), path, options);
    for (let seq = 1; seq <= 8; seq++) journal.append(writeRecord(seq));
    await journal.sync();
    const epoch = journal.checkpoint.epoch;
    await journal.setCheckpoint({ seq: 5, position: 5 * record, epoch });
    // One batch: seqs 9 and 10 fill the region to its last byte, 11 to 14 start it again. No
    // wrap record is needed, so nothing but the position says where the region ends.
    for (let seq = 9; seq <= 14; seq++) journal.append(writeRecord(seq));
    await journal.sync();
    await journal.close();
    const reopened = await Journal.open(new SysFileIo(), path, options);
    try {
      const seqs: number[] = [];
      for await (const replayed of reopened.replay()) {
        assert.deepEqual(replayed.data, writeRecord(replayed.seq).data);
        seqs.push(replayed.seq);
      }
      assert.deepEqual(seqs, [6, 7, 8, 9, 10, 11, 12, 13, 14]);
      const sizeBytes = (await Deno.stat(path)).size;
      assert.equal(sizeBytes, 4096 + options.regionBytes, "nothing is written past the region");
    } finally {
      await reopened.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
