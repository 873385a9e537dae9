/**
 * Reports for the tests of this folder: a node with a working store, NBD on, one volume open,
 * and a fake {@link NodeReporter} whose answers a test sets.
 * @module
 */

import type { ClusterReport, LiveReport, NodeReporter, VolumeReport } from "./report.ts";

/** The cluster section of a member node of three at replication 2. */
export function clusterSection(): ClusterReport {
  return {
    peerAddress: "tdp://10.0.0.1:40000",
    ring: { version: 4, type: "ketama", replication: 2, members: ["a", "b", "c"] },
    peers: [
      {
        uuid: "a",
        address: "tdp://10.0.0.1:40000",
        totalBlocks: 100,
        usedBlocks: 10,
        lastSeenMs: 1,
        rebalancing: false,
      },
      {
        uuid: "b",
        address: "tdp://10.0.0.2:40000",
        totalBlocks: 100,
        usedBlocks: 12,
        lastSeenMs: 2,
        rebalancing: true,
      },
    ],
    heartbeats: 9,
    distributor: {
      blockRequests: 20,
      cachedBlocks: 3,
      localBlocks: 10,
      localBlockFails: 1,
      peerBlocks: { b: 6 },
      peerBlockFails: { c: 2 },
      requestFailures: 1,
      repairedBlocks: 1,
      resyncedBlocks: 4,
      staleBlocks: 2,
      pulledBlocks: 3,
      degradedWrites: 6,
      markedBlocks: 7,
    },
    rebalance: {
      rebalancing: true,
      ringVersion: 4,
      passScannedBlocks: 5,
      passTotalBlocks: 10,
      passSentBlocks: 2,
      lastPassSentBlocks: 7,
      lastFinishMs: 1_700_000_000_000,
      sentBlocks: 9,
      sentBytes: 9 * 524288,
      deletedBlocks: 6,
      failedCalls: 1,
      passes: 3,
    },
    scrub: {
      passes: 2,
      scrubbedBlocks: 40,
      damagedBlocks: 3,
      repairedBlocks: 2,
      unrepairedBlocks: 1,
      passScannedBlocks: 8,
      passTotalBlocks: 20,
      lastFinishMs: 1_700_000_000_000,
    },
    fence: { refusedStaleWriters: 4, refusedStaleRing: 5 },
  };
}

/** A live report; `change` overrides whole sections. */
export function liveReport(change: Partial<LiveReport> = {}): LiveReport {
  return {
    node: {
      uuid: "6dd1f036-fe4c-4f22-96a1-3e2aac9f99a9",
      version: "1.2.3",
      dataDir: "/var/lib/torus",
      pid: 4242,
      startedAtMs: Date.UTC(2024, 0, 2, 3, 4, 5),
    },
    store: {
      name: "current",
      kind: "file",
      blockSizeBytes: 524288,
      totalBlocks: 127,
      usedBlocks: 3,
      failure: null,
      counters: {
        readBlocks: 11,
        readBytes: 45056,
        failedBlocks: 1,
        writtenBlocks: 7,
        writtenBytes: 28672,
        failedWrittenBlocks: 2,
        deletedBlocks: 5,
        flushes: 4,
      },
    },
    metadata: { kind: "embedded", path: "/var/lib/torus/metadata/kv.sqlite" },
    nbd: {
      address: "127.0.0.1:10809",
      connectionsOpen: 2,
      connectionsAccepted: 9,
      requestsByCommand: { read: 11, write: 7, flush: 3 },
      errorReplies: 1,
      protocolErrors: 6,
      readBytes: 45056,
      writtenBytes: 28672,
    },
    aoe: [],
    openVolumes: [{
      name: "db",
      id: 2,
      sizeBytes: 1073741824,
      generation: 5,
      handles: 2,
      state: "open",
      failure: null,
      writtenBytes: 28672,
      fencingToken: "18446744073709551615",
    }],
    cluster: null,
    ...change,
  };
}

/** The volumes beside {@link liveReport}: `db` (open here), a clone of it, and `free`. */
export function volumeReports(): VolumeReport[] {
  return [
    {
      name: "db",
      id: 2,
      type: "block",
      sizeBytes: 1073741824,
      cloneOf: null,
      lockHolder: "6dd1f036-fe4c-4f22-96a1-3e2aac9f99a9",
    },
    {
      name: "db3",
      id: 4,
      type: "block",
      sizeBytes: 1073741824,
      cloneOf: "db@monday",
      lockHolder: "0c7d2f52-8b8e-4d55-9a43-7f7f00000001",
    },
    { name: "free", id: 5, type: "block", sizeBytes: 4096, cloneOf: null, lockHolder: null },
  ];
}

/** A reporter whose parts a test replaces. */
export class FakeReporter implements NodeReporter {
  liveNow: () => LiveReport = () => liveReport();
  volumesNow: () => Promise<VolumeReport[]> = () => Promise.resolve(volumeReports());
  metadataNow: () => Promise<void> = () => Promise.resolve();

  live(): LiveReport {
    return this.liveNow();
  }
  volumes(): Promise<VolumeReport[]> {
    return this.volumesNow();
  }
  checkMetadata(): Promise<void> {
    return this.metadataNow();
  }
}
