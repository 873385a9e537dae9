import assert from "node:assert/strict";
import { NodeMetrics } from "./metrics.ts";
import { clusterSection, liveReport } from "./report_fixture.ts";

/** The sample lines of an exposition, as `series value`. */
function samples(text: string): string[] {
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
}

Deno.test("metrics: the original's storage names with label storage, volumes and NBD counters", async () => {
  const text = await new NodeMetrics().render(liveReport());
  const lines = samples(text);
  for (
    const expected of [
      'torus_build_info{version="1.2.3"} 1',
      'torus_storage_blocks{storage="current"} 3',
      'torus_storage_blocks_total{storage="current"} 127',
      'torus_storage_block_bytes{storage="current"} 524288',
      'torus_storage_failed{storage="current"} 0',
      'torus_storage_read_blocks{storage="current"} 11',
      'torus_storage_read_bytes_total{storage="current"} 45056',
      'torus_storage_failed_blocks{storage="current"} 1',
      'torus_storage_written_blocks{storage="current"} 7',
      'torus_storage_written_bytes_total{storage="current"} 28672',
      'torus_storage_failed_written_blocks{storage="current"} 2',
      'torus_storage_deleted_blocks{storage="current"} 5',
      'torus_storage_flushes{storage="current"} 4',
      'torus_server_open_files{volume="db"} 2',
      'torus_server_file_written_bytes{volume="db"} 28672',
      "torus_nbd_connections 2",
      "torus_nbd_connections_accepted_total 9",
      'torus_nbd_requests_total{command="read"} 11',
      'torus_nbd_requests_total{command="write"} 7',
      'torus_nbd_requests_total{command="flush"} 3',
      "torus_nbd_request_errors_total 1",
      "torus_nbd_protocol_errors_total 6",
      "torus_nbd_read_bytes_total 45056",
      "torus_nbd_written_bytes_total 28672",
    ]
  ) {
    assert.ok(lines.includes(expected), `missing "${expected}" in:\n${text}`);
  }
  assert.equal(lines.length, 24, text);
  assert.match(text, /^# TYPE torus_storage_read_blocks counter$/m);
  assert.match(text, /^# TYPE torus_storage_blocks gauge$/m);
  assert.match(text, /^# TYPE torus_server_open_files gauge$/m);
  assert.match(text, /^# TYPE torus_nbd_requests_total counter$/m);
});

Deno.test("metrics: each render shows only the present (a closed volume's series go away)", async () => {
  const metrics = new NodeMetrics();
  const first = await metrics.render(liveReport());
  assert.match(first, /volume="db"/);
  const later = liveReport({
    openVolumes: [],
    store: {
      ...liveReport().store!,
      totalBlocks: null,
      usedBlocks: null,
      failure: "block store current failed: flush failed: EIO",
    },
    nbd: null,
    aoe: [],
  });
  const second = samples(await metrics.render(later));
  assert.ok(!second.some((line) => line.includes('volume="db"')), second.join("\n"));
  // A failed store says so; its counts are not invented.
  assert.ok(second.includes('torus_storage_failed{storage="current"} 1'));
  assert.ok(!second.some((line) => line.startsWith("torus_storage_blocks{")));
  assert.ok(!second.some((line) => line.startsWith("torus_storage_blocks_total{")));
  // Counters stay what the store counted.
  assert.ok(second.includes('torus_storage_read_blocks{storage="current"} 11'));
  // NBD off: no connections, no requests.
  assert.ok(second.includes("torus_nbd_connections 0"));
  assert.ok(!second.some((line) => line.startsWith("torus_nbd_requests_total{")));
});

Deno.test("metrics: each AoE target's counters, by target, interface and volume", async () => {
  const counters = {
    framesReceived: 40,
    repliesSent: 31,
    ignored: 2,
    malformed: 5,
    busyDropped: 1,
    duplicates: 3,
    ataErrors: 4,
    aoeErrors: 6,
    bytesRead: 4096,
    bytesWritten: 8192,
    flushes: 7,
    syncFailures: 0,
    sendFailures: 0,
  };
  const target = {
    volume: "db",
    interface: "eth1",
    mac: "02:00:00:00:00:01",
    address: "e1.2",
    readOnly: false,
    sectorsPerFrame: 2,
    counters,
  };
  const lines = samples(await new NodeMetrics().render(liveReport({ aoe: [target] })));
  const labels = '{target="e1.2",interface="eth1",volume="db"}';
  for (
    const [name, value] of [
      ["frames_received", 40],
      ["replies_sent", 31],
      ["frames_ignored", 2],
      ["frames_malformed", 5],
      ["frames_busy_dropped", 1],
      ["duplicates", 3],
      ["ata_errors", 4],
      ["aoe_errors", 6],
      ["read_bytes", 4096],
      ["written_bytes", 8192],
      ["flushes", 7],
      ["sync_failures", 0],
      ["send_failures", 0],
    ] as const
  ) {
    const expected = `torus_aoe_${name}_total${labels} ${value}`;
    assert.ok(lines.includes(expected), `missing "${expected}" in:\n${lines.join("\n")}`);
  }
  // Without targets, no AoE series at all.
  const none = samples(await new NodeMetrics().render(liveReport()));
  assert.ok(!none.some((line) => line.startsWith("torus_aoe_")), none.join("\n"));
});

Deno.test("metrics: a volume name with quotes, backslashes and a newline is escaped", async () => {
  const open = liveReport().openVolumes[0]!;
  const text = await new NodeMetrics().render(
    liveReport({ openVolumes: [{ ...open, name: 'a"b\\c\nd' }] }),
  );
  assert.ok(
    samples(text).includes('torus_server_open_files{volume="a\\"b\\\\c\\nd"} 2'),
    text,
  );
});

Deno.test("metrics: renders started together each show their own moment", async () => {
  const metrics = new NodeMetrics();
  const at = (reads: number) =>
    liveReport({
      store: {
        ...liveReport().store!,
        counters: { ...liveReport().store!.counters, readBlocks: reads },
      },
    });
  const [a, b] = await Promise.all([metrics.render(at(100)), metrics.render(at(200))]);
  assert.ok(samples(a).includes('torus_storage_read_blocks{storage="current"} 100'), a);
  assert.ok(samples(b).includes('torus_storage_read_blocks{storage="current"} 200'), b);
});

Deno.test("metrics: a cluster node shows the original's distributor and server names", async () => {
  const single = samples(await new NodeMetrics().render(liveReport()));
  assert.ok(!single.some((line) => line.startsWith("torus_distributor_")), "no cluster, no series");
  const lines = samples(await new NodeMetrics().render(liveReport({ cluster: clusterSection() })));
  for (
    const expected of [
      "torus_server_heartbeats 9",
      "torus_server_peers_total 2",
      "torus_distributor_block_requests_total 20",
      "torus_distributor_block_cached_blocks 3",
      "torus_distributor_block_local_blocks 10",
      "torus_distributor_block_local_block_fails 1",
      'torus_distributor_block_peer_blocks{peer="b"} 6',
      'torus_distributor_block_peer_block_fails{peer="c"} 2',
      "torus_distributor_block_request_failures 1",
      "torus_distributor_repaired_blocks 1",
      "torus_distributor_resynced_blocks 4",
      "torus_distributor_stale_blocks 2",
      "torus_distributor_pulled_blocks 3",
      "torus_distributor_degraded_writes 6",
      "torus_distributor_marked_blocks 7",
      "torus_rebalance_rebalancing 1",
      "torus_rebalance_ring_version 4",
      "torus_rebalance_pass_scanned_blocks 5",
      "torus_rebalance_pass_total_blocks 10",
      "torus_rebalance_sent_blocks_total 9",
      `torus_rebalance_sent_bytes_total ${9 * 524288}`,
      "torus_rebalance_deleted_blocks_total 6",
      "torus_distributor_rebalance_rpc_failures 1",
      "torus_scrub_scrubbed_blocks_total 40",
      "torus_scrub_damaged_blocks_total 3",
      "torus_scrub_repaired_blocks_total 2",
      "torus_scrub_unrepaired_blocks_total 1",
      "torus_scrub_passes_total 2",
      "torus_server_refused_stale_writer_changes_total 4",
      "torus_server_refused_stale_ring_changes_total 5",
    ]
  ) {
    assert.ok(lines.includes(expected), `missing ${expected} in\n${lines.join("\n")}`);
  }
});

Deno.test("metrics: a cluster client (no store) has no storage series, and the rest as a node", async () => {
  const lines = samples(await new NodeMetrics().render(liveReport({ store: null })));
  assert.ok(!lines.some((line) => line.startsWith("torus_storage_")), lines.join("\n"));
  assert.ok(lines.includes("torus_nbd_connections 2"), lines.join("\n"));
  assert.ok(lines.includes('torus_server_open_files{volume="db"} 2'), lines.join("\n"));
});
