/**
 * Requests to the writer that holds a volume open ({@link VolumeRequestMetadata}), carried by the
 * metadata store. Only the writer can take an exact snapshot of an open volume (it stops its
 * writes at a flush point) or grow it, so `torus ctl` asks it.
 *
 * - A request is `volumemeta/<id>/requests/<uuid>` = `{"Op": "snapshot", "Name": ...}` or
 *   `{"Op": "grow", "Size": ...}`, put under a lease of the requester's, in a transaction guarded
 *   by the lock key's create revision: it exists only while the writer it was meant for holds
 *   the lock, and vanishes with an abandoned requester.
 * - The writer answers `volumemeta/<id>/replies/<uuid>` = `{"Ok": true}` or
 *   `{"Ok": false, "Code": ..., "Message": ...}` under the same lease, then deletes the request.
 * - The requester waits for the reply, and gives up with `again` when the lock changes hands or
 *   is released first (it then acts itself, or asks the new writer).
 * @module
 */

import {
  checkName,
  checkVolumeId,
  type Clock,
  ErrorCode,
  errorMessage,
  invalid,
  isErrorCode,
  isTorusError,
  randomUuid,
  TorusError,
} from "../core/mod.ts";
import type { KvEntry, LeaseId, Watch } from "./kv.ts";
import { fromUtf8, utf8 } from "./keys.ts";
import type { MetadataContext } from "./context.ts";
import type {
  Subscription,
  VolumeReply,
  VolumeRequest,
  VolumeRequestMetadata,
} from "./metadata.ts";

/** How long a requester waits for the writer's answer by default. */
export const VOLUME_REQUEST_TIMEOUT_MS = 60_000;
/** How often a waiting requester checks that the writer still holds the lock. */
const HOLDER_CHECK_INTERVAL_MS = 250;
/** Largest request or reply accepted from the store. */
const MESSAGE_BYTES_MAX = 4096;

/** Encodes a request. */
export function encodeRequest(request: VolumeRequest): Uint8Array {
  return utf8(JSON.stringify(
    request.op === "snapshot"
      ? { Op: "snapshot", Name: request.name }
      : { Op: "grow", Size: request.sizeBytes },
  ));
}

/** Decodes a request read from the store; anything else throws `invalid`. */
export function decodeRequest(bytes: Uint8Array): VolumeRequest {
  const raw = parseObject(bytes, "volume request");
  if (raw.Op === "snapshot" && typeof raw.Name === "string") {
    return { op: "snapshot", name: checkName(raw.Name, "snapshot") };
  }
  if (raw.Op === "grow" && Number.isSafeInteger(raw.Size) && (raw.Size as number) > 0) {
    return { op: "grow", sizeBytes: raw.Size as number };
  }
  throw invalid("volume request: unknown operation or bad arguments");
}

/** Encodes a reply. */
export function encodeReply(reply: VolumeReply): Uint8Array {
  return utf8(JSON.stringify(
    reply.ok ? { Ok: true } : { Ok: false, Code: reply.code, Message: reply.message },
  ));
}

/** Decodes a reply read from the store; anything else throws `invalid`. */
export function decodeReply(bytes: Uint8Array): VolumeReply {
  const raw = parseObject(bytes, "volume reply");
  if (raw.Ok === true) return { ok: true };
  if (raw.Ok === false && isErrorCode(raw.Code) && typeof raw.Message === "string") {
    return { ok: false, code: raw.Code, message: raw.Message.slice(0, 1024) };
  }
  throw invalid("volume reply: malformed");
}

function parseObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  if (bytes.length > MESSAGE_BYTES_MAX) throw invalid(`${what}: too large`);
  let value: unknown;
  try {
    value = JSON.parse(fromUtf8(bytes, what));
  } catch (error) {
    throw invalid(`${what}: malformed JSON`, { cause: error });
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw invalid(`${what}: expected a JSON object`);
  }
  return value as Record<string, unknown>;
}

function again(message: string): TorusError {
  return new TorusError(ErrorCode.Again, message);
}

/** The reply a handler's outcome becomes. */
function replyOf(error: unknown): VolumeReply {
  if (isTorusError(error)) return { ok: false, code: error.code, message: error.message };
  return { ok: false, code: ErrorCode.Unavailable, message: errorMessage(error) };
}

/** See the module doc. */
export class VolumeRequestMetadataImpl implements VolumeRequestMetadata {
  #context: MetadataContext;

  constructor(context: MetadataContext) {
    this.#context = context;
  }

  async send(
    volumeId: number,
    request: VolumeRequest,
    options: { timeoutMs?: number } = {},
  ): Promise<VolumeReply> {
    const { kv, keys, random, clock } = this.#context;
    const lockKey = keys.lock(checkVolumeId(volumeId));
    const holder = await kv.get(lockKey);
    if (holder === null) throw again(`volume id ${volumeId} is not open anywhere`);
    const timeoutMs = options.timeoutMs ?? VOLUME_REQUEST_TIMEOUT_MS;
    const id = randomUuid(random);
    const lease = await kv.grantLease(timeoutMs + 10_000);
    try {
      const placed = await kv.txn({
        compare: [{
          key: lockKey,
          target: "createRevision",
          op: "==",
          revision: holder.createRevision,
        }],
        success: [{
          type: "put",
          key: keys.request(volumeId, id),
          value: encodeRequest(request),
          lease,
        }],
      });
      if (!placed.succeeded) throw again(`the writer of volume id ${volumeId} changed`);
      return await this.#awaitReply(volumeId, id, {
        fromRevision: placed.revision,
        holder,
        deadlineMs: clock.nowMs() + timeoutMs,
      });
    } finally {
      await kv.delete(keys.request(volumeId, id)).catch(() => {});
      await kv.delete(keys.reply(volumeId, id)).catch(() => {});
      await kv.revokeLease(lease).catch(() => {});
    }
  }

  /** Waits for the reply to request `id`, the holder's departure or the deadline. */
  async #awaitReply(
    volumeId: number,
    id: string,
    wait: { fromRevision: number; holder: KvEntry; deadlineMs: number },
  ): Promise<VolumeReply> {
    const { kv, keys, clock } = this.#context;
    const replyKey = keys.reply(volumeId, id);
    let settle!: (reply: VolumeReply | Error) => void;
    const outcome = new Promise<VolumeReply | Error>((resolve) => settle = resolve);
    const watch = await kv.watchPrefix(replyKey, (events) => {
      for (const event of events) {
        if (event.key !== replyKey || event.type !== "put") continue;
        try {
          settle(decodeReply(event.value));
        } catch (error) {
          settle(error as Error);
        }
      }
    }, { fromRevision: wait.fromRevision, onError: (error) => settle(error) });
    try {
      const checking = this.#watchHolder(volumeId, wait, clock, settle);
      const result = await outcome;
      checking.stop();
      if (result instanceof Error) throw result;
      return result;
    } finally {
      await watch.close();
    }
  }

  /** Settles with an error when the writer leaves or the deadline passes. */
  #watchHolder(
    volumeId: number,
    wait: { holder: KvEntry; deadlineMs: number },
    clock: Clock,
    settle: (reply: VolumeReply | Error) => void,
  ): { stop(): void } {
    const { kv, keys } = this.#context;
    const controller = new AbortController();
    const loop = async () => {
      while (!controller.signal.aborted) {
        await clock.sleep(HOLDER_CHECK_INTERVAL_MS, controller.signal).catch(() => {});
        if (controller.signal.aborted) return;
        const now = await kv.get(keys.lock(volumeId)).catch(() => wait.holder);
        if (now === null || now.createRevision !== wait.holder.createRevision) {
          settle(again(`the writer of volume id ${volumeId} closed it before answering`));
          return;
        }
        if (clock.nowMs() >= wait.deadlineMs) {
          const who = fromUtf8(wait.holder.value, "lock");
          settle(
            new TorusError(
              ErrorCode.Unavailable,
              `volume id ${volumeId} is open by ${who}, which did not answer in time`,
            ),
          );
          return;
        }
      }
    };
    void loop();
    return { stop: () => controller.abort() };
  }

  async serve(
    volumeId: number,
    handler: (request: VolumeRequest) => Promise<VolumeReply>,
  ): Promise<Subscription> {
    const { kv, keys, log } = this.#context;
    const dir = keys.requestsDir(checkVolumeId(volumeId));
    let queue = Promise.resolve();
    let stopped = false;
    const answer = (key: string) => {
      queue = queue.then(async () => {
        if (stopped) return;
        try {
          await this.#answer(volumeId, key, handler);
        } catch (error) {
          log.warn(`volume id ${volumeId}: request ${key} not answered: ${errorMessage(error)}`);
        }
      });
    };
    const existing = await kv.txn({ compare: [], success: [{ type: "range", prefix: dir }] });
    const result = existing.results[0];
    const entries = result?.type === "range" ? result.entries : [];
    for (const entry of entries) answer(entry.key);
    const watch: Watch = await kv.watchPrefix(dir, (events) => {
      for (const event of events) if (event.type === "put") answer(event.key);
    }, {
      fromRevision: existing.revision + 1,
      onError: (error) => log.warn(`volume id ${volumeId}: request watch ended: ${error.message}`),
    });
    return {
      async unsubscribe() {
        stopped = true;
        await watch.close();
        await queue;
      },
    };
  }

  /** Runs one request and stores the reply under the requester's lease. */
  async #answer(
    volumeId: number,
    requestKey: string,
    handler: (request: VolumeRequest) => Promise<VolumeReply>,
  ): Promise<void> {
    const { kv, keys } = this.#context;
    const entry = await kv.get(requestKey);
    if (entry === null) return; // abandoned (its lease expired) or already answered
    const id = requestKey.slice(keys.requestsDir(volumeId).length);
    let reply: VolumeReply;
    try {
      reply = await handler(decodeRequest(entry.value));
    } catch (error) {
      reply = replyOf(error);
    }
    const lease: LeaseId = entry.lease;
    await kv.txn({
      compare: [{ key: requestKey, target: "modRevision", op: "==", revision: entry.modRevision }],
      success: [
        { type: "put", key: keys.reply(volumeId, id), value: encodeReply(reply), lease },
        { type: "delete", key: requestKey },
      ],
    });
  }
}
