/**
 * One etcd prefix watch on its own gRPC stream, resumed by revision after the stream breaks.
 *
 * Invariants:
 * - `#nextRevision` is where a new stream starts: every revision below it has been delivered or
 *   is known to hold no change under the prefix. It advances past every delivered event and to
 *   the header revision of every progress report (a response without events, for a watch that
 *   etcd has caught up), as etcd's own client does. So a watch of a quiet prefix (the ring key)
 *   keeps up with the store while other keys change, and compacting the history it has passed,
 *   followed by a reconnect, does not end it with `not_exist` although nothing was missed.
 *   Progress reports come from etcd every few minutes (`progress_notify`) and in answer to the
 *   liveness probe below. Before etcd 3.4.25/3.5.8, an answer to a progress request could run
 *   ahead of events still queued for a watcher that was catching up (etcd #15220); the probe
 *   asks only after a silence of WATCH_IDLE_PROBE_MS, long after a fresh watcher has caught up.
 * - `#deliveredRevision` is the revision of the last delivered event; an event at or below it is
 *   a repeat and dropped, so a reconnect neither loses nor repeats an event. etcd sends the
 *   events of one revision in one response, so a revision is never split.
 * - A stream that breaks is reopened with backoff (100 ms doubling to 2 s). A stream that does not
 *   confirm creation within the call timeout counts as broken, and so does one that stays silent
 *   for WATCH_IDLE_PROBE_MS and then does not answer a progress request within the call timeout
 *   (a partitioned etcd sends no reset; gRPC keepalive is off because its timers outlive close).
 * - After `retryMaxMs` without a confirmed stream the watch ends with `onError(unavailable)`; a
 *   start revision compacted meanwhile ends it with `onError(not_exist)`. The first stream must
 *   work: if it does not, `start` rejects and no onError is called.
 * - After `end`, no callback runs and no timer or stream of the watch is left.
 * @module
 */

import type { Buffer } from "node:buffer";
import type { Etcd3, IDuplexStream, IWatchRequest, IWatchResponse } from "etcd3";
import { notExist, TorusError } from "../core/mod.ts";
import type { Watch, WatchEvent, WatchOptions } from "./kv.ts";
import { decodeKey } from "./kv_common.ts";
import { etcdError } from "./etcd_errors.ts";

const BACKOFF_FIRST_MS = 100;
const BACKOFF_MAX_MS = 2_000;
/** Default silence after which a watch asks etcd for a progress report to prove it alive. */
export const WATCH_IDLE_PROBE_MS = 10_000;

/** What a watch needs from its store. */
export interface EtcdWatchSettings {
  readonly client: Etcd3;
  readonly key: Buffer;
  readonly rangeEnd: Buffer;
  readonly onEvents: (events: readonly WatchEvent[]) => void;
  readonly options: WatchOptions;
  readonly callTimeoutMs: number;
  readonly retryMaxMs: number;
  /** Silence before a liveness probe (WATCH_IDLE_PROBE_MS unless set). */
  readonly idleProbeMs?: number;
  /** Names the watch in error messages. */
  readonly what: string;
  /** Told once when the watch ends, so the store forgets it. */
  readonly onEnd: () => void;
  /** Told when a stream breaks (the store then knows gRPC is reconnecting). */
  readonly onTrouble: () => void;
}

type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

/** A running prefix watch; see the module doc. */
export class EtcdPrefixWatch implements Watch {
  #settings: EtcdWatchSettings;
  #nextRevision: number | null;
  #deliveredRevision: number;
  #stream: WatchStream | null = null;
  #ended = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #livenessTimer: ReturnType<typeof setTimeout> | undefined;
  #backoffMs = BACKOFF_FIRST_MS;
  #failingSinceMs: number | null = null;
  #started: { resolve: () => void; reject: (error: Error) => void } | null = null;

  constructor(settings: EtcdWatchSettings) {
    this.#settings = settings;
    this.#nextRevision = settings.options.fromRevision ?? null;
    this.#deliveredRevision = (settings.options.fromRevision ?? 0) - 1;
  }

  /** Resolves once etcd confirmed the watch; later changes are then delivered. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#started = { resolve, reject };
      this.#open();
    });
  }

  close(): Promise<void> {
    this.#finish(null);
    return Promise.resolve();
  }

  /** Ends the watch, reporting `error` to onError (the store's close). */
  end(error: Error): Promise<void> {
    this.#finish(error);
    return Promise.resolve();
  }

  #open(): void {
    if (this.#ended) return;
    const attemptTimer = () => {
      clearTimeout(this.#timer);
      this.#timer = setTimeout(
        () => this.#broken(new Error("watch not confirmed in time")),
        this.#settings.callTimeoutMs,
      );
    };
    attemptTimer();
    this.#settings.client.watchClient.watch().then((stream) => {
      if (this.#ended) return closeStream(stream);
      this.#stream = stream;
      stream.on("data", (response) => {
        if (this.#stream !== stream) return;
        this.#armLiveness(stream);
        this.#onResponse(response);
      });
      stream.on("error", (error) => {
        if (this.#stream === stream) this.#broken(error);
      });
      stream.on("end", () => {
        if (this.#stream === stream) this.#broken(new Error("watch stream ended"));
      });
      stream.write({
        create_request: {
          key: this.#settings.key,
          range_end: this.#settings.rangeEnd,
          start_revision: this.#nextRevision ?? 0,
          // Periodic reports that the watch is current, so a quiet one still advances.
          progress_notify: true,
        },
      });
    }, (error: unknown) => this.#broken(error));
  }

  #onResponse(response: IWatchResponse): void {
    if (response.created) return this.#onCreated(Number(response.header.revision));
    if (response.canceled) {
      const compacted = Number(response.compact_revision);
      const reason = compacted > 0
        ? notExist(`${this.#settings.what}: history before revision ${compacted} was compacted`)
        : new TorusError("unavailable", `${this.#settings.what}: canceled by etcd`);
      return this.#finish(reason);
    }
    const events: WatchEvent[] = [];
    for (const event of response.events ?? []) {
      const modRevision = Number(event.kv.mod_revision);
      if (modRevision <= this.#deliveredRevision) continue;
      events.push({
        type: event.type === "Delete" ? "delete" : "put",
        key: decodeKey(event.kv.key),
        value: event.type === "Delete" ? new Uint8Array() : new Uint8Array(event.kv.value ?? []),
        modRevision,
      });
    }
    const last = events[events.length - 1];
    if (last) {
      this.#deliveredRevision = last.modRevision;
      this.#settings.onEvents(events);
      this.#advance(last.modRevision);
    } else if ((response.events ?? []).length === 0) {
      // A progress report: etcd has sent every change under the prefix up to this revision.
      this.#advance(Number(response.header.revision));
    }
  }

  /** Every change up to `revision` is delivered: resume after it, and tell onProgress. */
  #advance(revision: number): void {
    if (this.#ended || this.#nextRevision === null || revision < this.#nextRevision) return;
    this.#nextRevision = revision + 1;
    this.#settings.options.onProgress?.(revision);
  }

  #onCreated(headerRevision: number): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#failingSinceMs = null;
    this.#backoffMs = BACKOFF_FIRST_MS;
    // Without a start revision etcd watches from the revision after the one it reports here.
    // With one, the header says nothing about how far the new watcher has caught up.
    if (this.#nextRevision === null) {
      this.#nextRevision = headerRevision + 1;
      this.#deliveredRevision = headerRevision;
    }
    const started = this.#started;
    this.#started = null;
    started?.resolve();
  }

  #broken(error: unknown): void {
    if (this.#ended) return;
    this.#settings.onTrouble();
    this.#dropStream();
    clearTimeout(this.#timer);
    const reason = etcdError(error, this.#settings.what);
    // The first stream must work: opening a watch on an unreachable etcd fails the call.
    if (this.#started !== null) return this.#finish(reason);
    // Monotonic: a wall-clock step must neither end the watch early nor keep it retrying.
    const nowMs = performance.now();
    this.#failingSinceMs ??= nowMs;
    if (nowMs - this.#failingSinceMs >= this.#settings.retryMaxMs) {
      return this.#finish(
        new TorusError(
          reason.code,
          `${reason.message} (gave up after ${this.#settings.retryMaxMs} ms)`,
          { cause: error },
        ),
      );
    }
    this.#timer = setTimeout(() => this.#open(), this.#backoffMs);
    this.#backoffMs = Math.min(this.#backoffMs * 2, BACKOFF_MAX_MS);
  }

  /** Restarts the silence timer: after WATCH_IDLE_PROBE_MS, probe; no answer means broken. */
  #armLiveness(stream: WatchStream): void {
    clearTimeout(this.#livenessTimer);
    this.#livenessTimer = setTimeout(() => {
      if (this.#stream !== stream) return;
      stream.write({ progress_request: {} });
      this.#livenessTimer = setTimeout(() => {
        if (this.#stream === stream) this.#broken(new Error("watch stream went silent"));
      }, this.#settings.callTimeoutMs);
    }, this.#settings.idleProbeMs ?? WATCH_IDLE_PROBE_MS);
  }

  #dropStream(): void {
    clearTimeout(this.#livenessTimer);
    this.#livenessTimer = undefined;
    const stream = this.#stream;
    this.#stream = null;
    if (stream) closeStream(stream);
  }

  #finish(error: Error | null): void {
    if (this.#ended) return;
    this.#ended = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#dropStream();
    this.#settings.onEnd();
    const started = this.#started;
    this.#started = null;
    if (started) {
      started.reject(error ?? new TorusError("closed", `${this.#settings.what}: closed`));
    } else if (error) {
      this.#settings.options.onError?.(error);
    }
  }
}

/**
 * Ends our side before cancelling: etcd3 treats an error on a still-writable stream as a failed
 * host and closes every channel to it, which would cut other calls in flight.
 */
export function closeStream(stream: { end(): void; cancel(): void }): void {
  try {
    stream.end();
    stream.cancel();
  } catch {
    // already closed
  }
}
