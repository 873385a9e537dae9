/**
 * The etcd driver of KvStore, over npm:etcd3's raw gRPC clients (KV, Lease, Watch), so every
 * request is exactly one etcd v3 RPC and the semantics are etcd's own (see kv.ts).
 *
 * Invariants:
 * - Every call carries a gRPC deadline of `callTimeoutMs` and a watchdog timer a little longer
 *   (WATCHDOG_GRACE_MS), so no call outlives it: a lost etcd surfaces as `unavailable`, never as
 *   a hang. gRPC's own deadline error comes first when gRPC works, and it tells whether the
 *   request was ever sent.
 * - A change (put, delete, a txn with a change, lease grant and revoke) that was sent but got no
 *   answer fails with `outcome_unknown`: etcd may have applied it. Only a request that provably
 *   never left (no connection, or still waiting for one at the deadline) is plain `unavailable`.
 * - Messages are one line in our words (etcd_errors.ts): never gRPC's status names or internals.
 * - etcd3's own retry and circuit-breaker policies are replaced: a call is retried only on
 *   another endpoint, only when the endpoint could not be reached at all (so the request was
 *   never sent), and only before its deadline. An endpoint that could not be reached is skipped
 *   for HOST_DOWN_MS when others exist. (etcd3's breaker would fail every call for 5 s after a
 *   lone etcd is back.)
 * - Opening probes the cluster within `connectTimeoutMs`; an unreachable etcd fails the open.
 * - `close` ends watches, fails in-flight calls with `closed` and closes every channel; nothing
 *   of the store (timers, sockets) survives it.
 * @module
 */

import { Buffer } from "node:buffer";
import { isIP } from "node:net";
import { checkServerIdentity, type PeerCertificate } from "node:tls";
import { type ChannelCredentials, credentials as grpcCredentials } from "@grpc/grpc-js";
import { Etcd3, type IKeyValue, type IOptions, type IRequestOp, type IResponseOp } from "etcd3";
import {
  assert,
  closed,
  invalid,
  isTorusError,
  KV_RESPONSE_MAX_BYTES,
  KV_WATCH_RETRY_MAX_MS,
  METADATA_CALL_TIMEOUT_MS,
  METADATA_CONNECT_TIMEOUT_MS,
  notExist,
  TLS_FILE_MAX_BYTES,
  TorusError,
} from "../core/mod.ts";
import { readFileBounded } from "../sys/mod.ts";
import type {
  Compare,
  KvEntry,
  KvStore,
  LeaseId,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResponse,
  Watch,
  WatchEvent,
  WatchOptions,
} from "./kv.ts";
import {
  checkDeletePrefix,
  checkLeaseId,
  checkPut,
  checkTtlMs,
  checkTxn,
  decodeKey,
  encodeKey,
  encodePrefix,
  prefixEnd,
} from "./kv_common.ts";
import { describeFailure, etcdError, outcomeUnknown } from "./etcd_errors.ts";
import { closeStream, EtcdPrefixWatch, WATCH_IDLE_PROBE_MS } from "./etcd_watch.ts";

/** Options of {@link openEtcdKv}. */
export interface EtcdKvOptions {
  /** `host:port` endpoints (`http://` and `https://` prefixes accepted; commas split too). */
  readonly endpoints: readonly string[];
  /** Client certificate, its key and the CA that signed etcd's certificate (PEM files). */
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly caFile?: string;
  /** Deadline of each call (default METADATA_CALL_TIMEOUT_MS). */
  readonly callTimeoutMs?: number;
  /** How long opening waits for etcd (default METADATA_CONNECT_TIMEOUT_MS). */
  readonly connectTimeoutMs?: number;
  /** How long a watch keeps reconnecting before it gives up (default KV_WATCH_RETRY_MAX_MS). */
  readonly watchRetryMaxMs?: number;
  /** Silence after which a watch probes etcd for liveness (default WATCH_IDLE_PROBE_MS). */
  readonly watchIdleProbeMs?: number;
}

/**
 * Longest reconnect backoff of gRPC. It also bounds how long gRPC's own backoff timers outlive a
 * client that saw etcd fail, which `close` waits out (see there).
 */
const GRPC_BACKOFF_MAX_MS = 1_000;

type Policy = NonNullable<NonNullable<IOptions["faultHandling"]>["global"]>;

/**
 * A fault policy that runs the call once: retries and breakers are decided here instead. It is
 * async so that a synchronous throw becomes a rejection (etcd3's markFailed relies on that).
 */
const passThrough = {
  execute: async (fn: (context: { signal: AbortSignal; attempt: number }) => unknown) =>
    await fn({ signal: new AbortController().signal, attempt: 0 }),
} as unknown as Policy;

/** How long the watchdog waits past gRPC's deadline before it gives up on a call itself. */
const WATCHDOG_GRACE_MS = 250;

/** How long an unreachable endpoint is skipped while other endpoints exist. */
const HOST_DOWN_MS = 2_000;

/**
 * The per-endpoint policy when there are several endpoints: after a connection failure the
 * endpoint is skipped (etcd3 then picks another) until HOST_DOWN_MS have passed.
 */
function hostHealth(): Policy {
  let downUntilMs = 0;
  return {
    execute: async (fn: (context: { signal: AbortSignal; attempt: number }) => unknown) => {
      if (performance.now() < downUntilMs) throw new Error("etcd endpoint recently unreachable");
      try {
        return await fn({ signal: new AbortController().signal, attempt: 0 });
      } catch (error) {
        if (neverSent(error)) downUntilMs = performance.now() + HOST_DOWN_MS;
        throw error;
      }
    },
  } as unknown as Policy;
}

/** Endpoints as etcd3 wants them, plus whether they ask for TLS. */
export interface ParsedEndpoints {
  readonly hosts: string[];
  readonly secure: boolean;
}

/** Splits and checks endpoints: `host:port` with an optional http(s):// prefix. */
export function parseEndpoints(endpoints: readonly string[]): ParsedEndpoints {
  const items = endpoints.flatMap((e) => e.split(",")).map((e) => e.trim()).filter((e) => e);
  if (items.length === 0) throw invalid("no etcd endpoint given");
  const schemes = new Set<string>();
  const hosts = items.map((item) => {
    const match = /^(?:(https?):\/\/)?([^/\s]+?):(\d{1,5})\/?$/.exec(item);
    const port = Number(match?.[3]);
    if (!match || port < 1 || port > 65535) {
      throw invalid(`etcd endpoint ${item} is not host:port`);
    }
    schemes.add(match[1] ?? "http");
    return `${match[2]}:${match[3]}`;
  });
  if (schemes.size > 1) throw invalid("etcd endpoints mix http:// and https://");
  return { hosts, secure: schemes.has("https") };
}

/** The host of a `host:port` endpoint, without IPv6 brackets. */
function hostOf(endpoint: string): string {
  return endpoint.slice(0, endpoint.lastIndexOf(":")).replace(/^\[|\]$/g, "");
}

async function readPem(path: string, what: string): Promise<Buffer> {
  try {
    // Capped: a PEM path naming /dev/zero or a huge file must fail, not fill the memory.
    return Buffer.from(
      await readFileBounded(path, TLS_FILE_MAX_BYTES, `etcd ${what} file ${path}`),
    );
  } catch (error) {
    if (isTorusError(error)) throw error;
    throw invalid(`cannot read etcd ${what} file ${path}: ${(error as Error).message}`);
  }
}

/** PEM material for TLS to etcd. */
interface TlsFiles {
  readonly ca: Buffer;
  readonly cert: Buffer | null;
  readonly key: Buffer | null;
}

async function loadTls(options: EtcdKvOptions): Promise<TlsFiles | undefined> {
  const { certFile, keyFile, caFile } = options;
  if (certFile === undefined && keyFile === undefined && caFile === undefined) return undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    throw invalid("etcd TLS needs both a certificate file and a key file");
  }
  if (caFile === undefined) throw invalid("etcd TLS needs a CA file");
  return {
    ca: await readPem(caFile, "CA"),
    cert: certFile === undefined ? null : await readPem(certFile, "certificate"),
    key: keyFile === undefined ? null : await readPem(keyFile, "key"),
  };
}

/**
 * SNI name sent when an endpoint is an IP address: TLS forbids IP addresses in SNI (RFC 6066),
 * and Deno's TLS refuses them, so gRPC is given this name and the certificate is checked
 * against the configured endpoints instead (see tlsCredentials).
 */
const IP_ENDPOINT_SERVER_NAME = "etcd";

/**
 * gRPC TLS credentials that check etcd's certificate against the endpoint host names, as the
 * original set ServerName to the endpoint's host. For IP endpoints the certificate must name the
 * IP (subjectAltName IP:...); with several endpoints, naming any one of them is enough, since
 * gRPC does not say which endpoint a connection is for.
 */
function tlsCredentials(
  tls: TlsFiles | undefined,
  hosts: readonly string[],
  ipEndpoint: boolean,
): ChannelCredentials {
  const [ca, key, cert] = [tls?.ca ?? null, tls?.key ?? null, tls?.cert ?? null];
  // With host names only, gRPC's own check (certificate against the connection's host) is exact.
  if (!ipEndpoint) return grpcCredentials.createSsl(ca, key, cert);
  const names = hosts.map(hostOf);
  return grpcCredentials.createSsl(ca, key, cert, {
    checkServerIdentity: (_sniName: string, cert: PeerCertificate) => {
      for (const name of names) {
        if (checkServerIdentity(name, cert) === undefined) return undefined;
      }
      return new Error(`etcd's certificate names none of ${names.join(", ")}`);
    },
  });
}

/**
 * Makes etcd3 use `credentials` on every endpoint. etcd3 1.1.2 builds its gRPC credentials
 * without verify options, and those are needed to check IP endpoints (see tlsCredentials), so
 * they are set on its hosts before any connection is made; the shape is checked, so an etcd3
 * upgrade that changes it fails loudly here rather than connecting without TLS.
 */
function useCredentials(client: Etcd3, credentials: ChannelCredentials): void {
  const pool = (client as unknown as { pool?: { hosts?: Record<string, unknown>[] } }).pool;
  const hosts = pool?.hosts;
  assert(
    Array.isArray(hosts) && hosts.length > 0 && hosts.every((h) => "channelCredentials" in h),
    "etcd3's connection pool changed shape: cannot set TLS credentials",
  );
  for (const host of hosts) host.channelCredentials = credentials;
}

/**
 * Connects to etcd and checks it answers within `connectTimeoutMs`: `unavailable` with a one-line
 * message when it does not, `invalid` for bad endpoints or unreadable TLS files.
 */
export async function openEtcdKv(options: EtcdKvOptions): Promise<KvStore> {
  const parsed = parseEndpoints(options.endpoints);
  const tls = await loadTls(options);
  // With a CA or client certificate the connection is TLS whatever the prefix said.
  const secure = parsed.secure || tls !== undefined;
  const ipEndpoint = parsed.hosts.some((h) => isIP(hostOf(h)) !== 0);
  const client = new Etcd3({
    hosts: parsed.hosts,
    faultHandling: {
      host: () => parsed.hosts.length > 1 ? hostHealth() : passThrough,
      global: passThrough,
    },
    grpcOptions: {
      "grpc.max_receive_message_length": KV_RESPONSE_MAX_BYTES,
      // No gRPC keepalive: its timers outlive close(). Watches check liveness themselves.
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": GRPC_BACKOFF_MAX_MS,
      // A private subchannel pool dies with the client instead of lingering process-wide.
      "grpc.use_local_subchannel_pool": 1,
      ...(secure && ipEndpoint ? { "grpc.ssl_target_name_override": IP_ENDPOINT_SERVER_NAME } : {}),
    },
  });
  if (secure) useCredentials(client, tlsCredentials(tls, parsed.hosts, ipEndpoint));
  const store = new EtcdKvStore(client, {
    endpointList: parsed.hosts.join(","),
    endpointCount: parsed.hosts.length,
    callTimeoutMs: options.callTimeoutMs ?? METADATA_CALL_TIMEOUT_MS,
    watchRetryMaxMs: options.watchRetryMaxMs ?? KV_WATCH_RETRY_MAX_MS,
    watchIdleProbeMs: options.watchIdleProbeMs ?? WATCH_IDLE_PROBE_MS,
  });
  try {
    await store.probe(options.connectTimeoutMs ?? METADATA_CONNECT_TIMEOUT_MS);
  } catch (error) {
    await store.close();
    throw error;
  }
  return store;
}

interface StoreSettings {
  readonly endpointList: string;
  readonly endpointCount: number;
  readonly callTimeoutMs: number;
  readonly watchRetryMaxMs: number;
  readonly watchIdleProbeMs: number;
}

/** gRPC call options with the absolute deadline gRPC wants. */
export interface CallDeadline {
  readonly deadline: Date;
}

class EtcdKvStore implements KvStore {
  readonly kind = "etcd";
  #client: Etcd3;
  #settings: StoreSettings;
  #closed = false;
  #closing = new AbortController();
  #watches = new Set<EtcdPrefixWatch>();
  /** Whether a connection failed: gRPC then has reconnect timers running. */
  #troubled = false;

  constructor(client: Etcd3, settings: StoreSettings) {
    this.#client = client;
    this.#settings = settings;
  }

  /** Fails with `unavailable` unless etcd answers within `timeoutMs`. */
  async probe(timeoutMs: number): Promise<void> {
    const what = `etcd at ${this.#settings.endpointList} unreachable within ${timeoutMs} ms`;
    await this.#call(what, (o) => this.#client.maintenance.status(o), { timeoutMs });
  }

  async get(key: string): Promise<KvEntry | null> {
    const keyBytes = encodeKey(key);
    const response = await this.#call(
      "etcd get",
      (o) => this.#client.kv.range({ key: Buffer.from(keyBytes) }, o),
    );
    const kv = response.kvs[0];
    return kv === undefined ? null : toEntry(kv);
  }

  async range(prefix: string): Promise<KvEntry[]> {
    const response = await this.#call(
      "etcd range",
      (o) => this.#client.kv.range(prefixRange(prefix), o),
    );
    return response.kvs.map(toEntry);
  }

  async put(key: string, value: Uint8Array, options?: { lease?: LeaseId }): Promise<void> {
    const put = checkPut(key, value, options?.lease);
    await this.#call("etcd put", (o) =>
      this.#client.kv.put({
        key: Buffer.from(put.key),
        value: Buffer.from(put.value),
        lease: put.lease.toString(),
      }, o), CHANGE);
  }

  async delete(key: string): Promise<boolean> {
    const keyBytes = encodeKey(key);
    const response = await this.#call(
      "etcd delete",
      (o) => this.#client.kv.deleteRange({ key: Buffer.from(keyBytes) }, o),
      CHANGE,
    );
    return Number(response.deleted) > 0;
  }

  async deletePrefix(prefix: string): Promise<number> {
    checkDeletePrefix(prefix);
    const response = await this.#call(
      "etcd delete prefix",
      (o) => this.#client.kv.deleteRange(prefixRange(prefix), o),
      CHANGE,
    );
    return Number(response.deleted);
  }

  async txn(request: TxnRequest): Promise<TxnResponse> {
    const checked = checkTxn(request);
    const success = checked.success.map(toRequestOp);
    const failure = (checked.failure ?? []).map(toRequestOp);
    const changes = [...checked.success, ...checked.failure ?? []].some((op) => isChange(op));
    const response = await this.#call("etcd txn", (o) =>
      this.#client.kv.txn({
        compare: checked.compare.map(toCompare),
        success,
        failure,
      }, o), changes ? CHANGE : {});
    const ops = response.succeeded ? checked.success : checked.failure ?? [];
    return {
      succeeded: response.succeeded,
      revision: Number(response.header.revision),
      results: ops.map((op, i) => toResult(op, response.responses[i])),
    };
  }

  async watchPrefix(
    prefix: string,
    onEvents: (events: readonly WatchEvent[]) => void,
    options: WatchOptions = {},
  ): Promise<Watch> {
    const range = prefixRange(prefix);
    this.#checkOpen();
    if (options.fromRevision !== undefined) await this.#checkHistory(range, options.fromRevision);
    const watch = new EtcdPrefixWatch({
      client: this.#client,
      key: range.key,
      rangeEnd: range.range_end,
      onEvents,
      options,
      callTimeoutMs: this.#settings.callTimeoutMs,
      retryMaxMs: this.#settings.watchRetryMaxMs,
      idleProbeMs: this.#settings.watchIdleProbeMs,
      what: `etcd watch of ${prefix} at ${this.#settings.endpointList}`,
      onEnd: () => this.#watches.delete(watch),
      onTrouble: () => {
        this.#troubled = true;
      },
    });
    this.#watches.add(watch);
    await watch.start();
    return watch;
  }

  /**
   * Fails with `not_exist` when `revision` was compacted away: etcd would accept the watch and
   * cancel it right after, which callers could not tell from a later failure.
   */
  async #checkHistory(range: { key: Buffer; range_end: Buffer }, revision: number): Promise<void> {
    try {
      await this.#call(
        "etcd watch history",
        (o) => this.#client.kv.range({ ...range, revision, count_only: true, limit: 1 }, o),
      );
    } catch (error) {
      // A revision still to come is a valid place to start a watch.
      if (/future revision/.test((error as Error).message)) return;
      throw error;
    }
  }

  async grantLease(ttlMs: number): Promise<LeaseId> {
    const ttlSeconds = Math.ceil(checkTtlMs(ttlMs) / 1000);
    const response = await this.#call(
      "etcd lease grant",
      (o) => this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }, o),
      CHANGE,
    );
    if (response.error) {
      throw new TorusError("unavailable", `etcd lease grant: ${describeFailure(response.error)}`);
    }
    return BigInt(response.ID);
  }

  async keepAliveLease(lease: LeaseId): Promise<void> {
    const id = checkLeaseId(lease).toString();
    const ttl = await this.#call("etcd lease keepalive", async (o) => {
      const stream = await this.#client.leaseClient.leaseKeepAlive(o);
      try {
        return await new Promise<number>((resolve, reject) => {
          stream.on("data", (response) => resolve(Number(response.TTL)));
          stream.on("error", reject);
          stream.on("end", () => reject(new Error("keepalive stream ended")));
          stream.write({ ID: id });
        });
      } finally {
        closeStream(stream);
      }
    });
    if (ttl <= 0) throw notExist(`lease ${id} expired or was revoked`);
  }

  async revokeLease(lease: LeaseId): Promise<void> {
    const id = checkLeaseId(lease).toString();
    try {
      await this.#call(
        "etcd lease revoke",
        (o) => this.#client.leaseClient.leaseRevoke({ ID: id }, o),
        CHANGE,
      );
    } catch (error) {
      if (!isTorusError(error, "not_exist")) throw error;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort();
    const ending = [...this.#watches].map((w) => w.end(closed("metadata store closed")));
    await Promise.all(ending);
    this.#client.close();
    // After a connection failure gRPC keeps reconnect-backoff timers running for up to its
    // maximum backoff, even once closed. Waiting them out keeps the promise of close(): nothing
    // of the store is left behind. A healthy client closes at once.
    if (this.#troubled) await new Promise((r) => setTimeout(r, GRPC_BACKOFF_MAX_MS * 1.3 + 100));
  }

  #checkOpen(): void {
    if (this.#closed) throw closed("metadata store closed");
  }

  /**
   * Runs one RPC under a deadline. Retries only when no endpoint could be reached (the request
   * was never sent) and another endpoint exists, so a write is never applied twice by us. A
   * change (`options.change`) that was sent but got no answer (deadline, lost connection, etcd's
   * own timeout) fails with `outcome_unknown`: it may have been applied.
   */
  async #call<T>(
    call: string,
    run: (options: CallDeadline) => Promise<T>,
    options: { change?: boolean; timeoutMs?: number } = {},
  ): Promise<T> {
    this.#checkOpen();
    const timeoutMs = options.timeoutMs ?? this.#settings.callTimeoutMs;
    const endpoints = this.#settings.endpointList;
    const what = call.includes(endpoints) ? call : `${call} at ${endpoints}`;
    // Monotonic, so a wall-clock step cannot cut a call short or stretch it; gRPC gets the
    // deadline as a wall-clock Date when each attempt starts.
    const deadlineMs = performance.now() + timeoutMs;
    const attempts = this.#settings.endpointCount > 1 ? this.#settings.endpointCount * 2 : 1;
    for (let attempt = 1;; attempt++) {
      try {
        const remainingMs = Math.max(0, deadlineMs - performance.now());
        const call = run({ deadline: new Date(Date.now() + remainingMs) });
        return await this.#withWatchdog(call, remainingMs, what);
      } catch (error) {
        if (this.#closed) throw closed(`${what}: metadata store closed`);
        const mapped = etcdError(error, what);
        if (mapped.code === "unavailable") this.#troubled = true;
        const retry = attempt < attempts && performance.now() < deadlineMs && neverSent(error);
        if (retry) continue;
        if (options.change && mapped.code === "unavailable" && !neverSent(error)) {
          throw outcomeUnknown(error, what);
        }
        throw mapped;
      }
    }
  }

  #withWatchdog<T>(call: Promise<T>, remainingMs: number, what: string): Promise<T> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onClose: (() => void) | undefined;
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error("no answer before the deadline")),
        remainingMs + WATCHDOG_GRACE_MS,
      );
      onClose = () => reject(closed(`${what}: metadata store closed`));
      this.#closing.signal.addEventListener("abort", onClose, { once: true });
    });
    // The losing promise's rejection is handled here so it never surfaces as unhandled.
    call.catch(() => {});
    return Promise.race([call, guard]).finally(() => {
      clearTimeout(timer);
      if (onClose) this.#closing.signal.removeEventListener("abort", onClose);
    });
  }
}

/**
 * Whether an error shows the request never left this process: nothing could be reached, or the
 * deadline passed while gRPC was still waiting for a connection to send it on ("Waiting for LB
 * pick"; a call that was sent reports "LB pick: 0.001s,remote_addr=..." instead).
 */
function neverSent(error: unknown): boolean {
  const message = error instanceof Error ? error.message : "";
  return /No connection established|ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|recently unreachable|Waiting for LB pick/
    .test(message);
}

/** Options of a call that changes the store (see #call). */
const CHANGE = { change: true } as const;

/** Whether a transaction op changes the store. */
function isChange(op: TxnOp): boolean {
  return op.type === "put" || op.type === "delete" || op.type === "deletePrefix";
}

function prefixRange(prefix: string): { key: Buffer; range_end: Buffer } {
  const bytes = encodePrefix(prefix);
  const end = prefixEnd(bytes);
  // etcd spells "from the start" and "to the end" as a single zero byte.
  return {
    key: bytes.length === 0 ? Buffer.from([0]) : Buffer.from(bytes),
    range_end: end === null ? Buffer.from([0]) : Buffer.from(end),
  };
}

function toEntry(kv: IKeyValue): KvEntry {
  return {
    key: decodeKey(kv.key),
    value: new Uint8Array(kv.value ?? []),
    version: Number(kv.version),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    lease: BigInt(kv.lease || "0"),
  };
}

const compareOps = { "==": "Equal", "!=": "NotEqual", "<": "Less", ">": "Greater" } as const;

function toCompare(compare: Compare) {
  const base = { key: Buffer.from(encodeKey(compare.key)), result: compareOps[compare.op] };
  switch (compare.target) {
    case "version":
      return { ...base, target: "Version" as const, version: compare.version };
    case "modRevision":
      return { ...base, target: "Mod" as const, mod_revision: compare.revision };
    case "createRevision":
      return { ...base, target: "Create" as const, create_revision: compare.revision };
    case "value":
      return { ...base, target: "Value" as const, value: Buffer.from(compare.value) };
  }
}

function toRequestOp(op: TxnOp): IRequestOp {
  switch (op.type) {
    case "put":
      return {
        request_put: {
          key: Buffer.from(encodeKey(op.key)),
          value: Buffer.from(op.value),
          lease: (op.lease ?? 0n).toString(),
        },
      };
    case "delete":
      return { request_delete_range: { key: Buffer.from(encodeKey(op.key)) } };
    case "deletePrefix":
      return { request_delete_range: prefixRange(op.prefix) };
    case "get":
      return { request_range: { key: Buffer.from(encodeKey(op.key)) } };
    case "range":
      return { request_range: prefixRange(op.prefix) };
  }
}

function toResult(op: TxnOp, response: IResponseOp | undefined): TxnOpResult {
  switch (op.type) {
    case "put":
      return { type: "put" };
    case "delete":
    case "deletePrefix":
      return { type: op.type, deleted: Number(response?.response_delete_range?.deleted ?? 0) };
    case "get":
    case "range":
      return { type: op.type, entries: (response?.response_range?.kvs ?? []).map(toEntry) };
  }
}
