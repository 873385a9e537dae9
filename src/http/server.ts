/**
 * The node's HTTP status server (`torus serve --host H --port P`), on Deno.serve:
 *
 * - `GET /healthz`: `200 ok` when the block store works and the metadata service answers a read
 *   within HTTP_METADATA_CHECK_TIMEOUT_MS; otherwise `503` with one line saying why.
 * - `GET /status`: the node's state as JSON (status.ts, docs/http.md); always 200, with what could
 *   not be read marked in the document (the volume list is null while the metadata service does
 *   not answer).
 * - `GET /metrics`: the Prometheus text exposition (metrics.ts).
 *
 * HEAD works wherever GET does. Another method on these paths is `405` with `Allow`; any other
 * path is `404`. A handler that throws answers `500` with one line and is logged: no request,
 * however malformed (Deno's HTTP layer answers garbage and oversized headers itself), stops the
 * server. Nothing here blocks the event loop; the metadata calls are bounded by a deadline.
 * @module
 */

import {
  type Clock,
  ErrorCode,
  errorMessage,
  HTTP_METADATA_CHECK_TIMEOUT_MS,
  type Logger,
  logger,
  systemClock,
  TorusError,
} from "../core/mod.ts";
import { METRICS_CONTENT_TYPE, NodeMetrics } from "./metrics.ts";
import type { NodeReporter, VolumeReport } from "./report.ts";
import { renderStatus } from "./status.ts";

/** Options of {@link HttpStatusServer}. */
export interface HttpStatusServerOptions {
  readonly reporter: NodeReporter;
  readonly clock?: Clock;
  /** Deadline of metadata calls (default HTTP_METADATA_CHECK_TIMEOUT_MS). */
  readonly metadataTimeoutMs?: number;
  readonly log?: Logger;
}

/** How long `close` waits for requests in flight before it stops waiting. */
const CLOSE_GRACE_MS = 2_000;

const ALLOWED_METHODS = "GET, HEAD";

/** A plain-text response of one line. */
function textResponse(status: number, line: string, headers: Record<string, string> = {}) {
  return new Response(line.endsWith("\n") ? line : line + "\n", {
    status,
    headers: {
      "content-type": "text/plain; charset=utf-8",
      "cache-control": "no-store",
      ...headers,
    },
  });
}

/** See the module doc. */
export class HttpStatusServer implements AsyncDisposable {
  readonly #reporter: NodeReporter;
  readonly #clock: Clock;
  readonly #metadataTimeoutMs: number;
  readonly #log: Logger;
  readonly #metrics = new NodeMetrics();
  readonly #routes: ReadonlyMap<string, () => Promise<Response>>;
  #server: Deno.HttpServer<Deno.NetAddr> | null = null;
  #closing: Promise<void> | null = null;

  constructor(options: HttpStatusServerOptions) {
    this.#reporter = options.reporter;
    this.#clock = options.clock ?? systemClock;
    this.#metadataTimeoutMs = options.metadataTimeoutMs ?? HTTP_METADATA_CHECK_TIMEOUT_MS;
    this.#log = options.log ?? logger("http");
    this.#routes = new Map([
      ["/healthz", () => this.#healthz()],
      ["/status", () => this.#status()],
      ["/metrics", () => this.#metricsResponse()],
    ]);
  }

  /** Listens on TCP (port 0 picks a free one) and returns the bound address. */
  listen(address: { hostname: string; port: number }): Deno.NetAddr {
    if (this.#server !== null) throw new Error("the HTTP status server listens already");
    this.#server = Deno.serve({
      hostname: address.hostname,
      port: address.port,
      onListen: () => {},
      onError: (error) => this.#failed(error),
    }, (request) => this.handle(request));
    return this.#server.addr;
  }

  /** Answers one request (what the listener calls; tests call it directly). */
  async handle(request: Request): Promise<Response> {
    let path: string;
    try {
      path = new URL(request.url).pathname;
    } catch {
      return textResponse(400, "bad request URL");
    }
    const route = this.#routes.get(path);
    if (route === undefined) {
      return textResponse(
        404,
        `not found: ${path.slice(0, 200)} (try /status, /metrics, /healthz)`,
      );
    }
    if (request.method !== "GET" && request.method !== "HEAD") {
      return textResponse(405, `method ${request.method} not allowed: use GET`, {
        allow: ALLOWED_METHODS,
      });
    }
    try {
      return await route();
    } catch (error) {
      return this.#failed(error);
    }
  }

  #failed(error: unknown): Response {
    this.#log.error(`HTTP request failed: ${errorMessage(error)}`);
    return textResponse(500, `internal error: ${errorMessage(error)}`);
  }

  async #healthz(): Promise<Response> {
    const failure = this.#reporter.live().store?.failure ?? null;
    if (failure !== null) return textResponse(503, errorMessage(new Error(failure)));
    try {
      await this.#withDeadline(this.#reporter.checkMetadata(), "a metadata read");
    } catch (error) {
      return textResponse(503, `metadata service unusable: ${errorMessage(error)}`);
    }
    return textResponse(200, "ok");
  }

  async #status(): Promise<Response> {
    const live = this.#reporter.live();
    let volumes: VolumeReport[] | null = null;
    let metadataError: string | null = null;
    try {
      volumes = await this.#withDeadline(this.#reporter.volumes(), "the volume list");
    } catch (error) {
      metadataError = errorMessage(error);
    }
    const body = renderStatus({ live, volumes, metadataError, nowMs: this.#clock.nowMs() });
    return new Response(body, {
      headers: { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" },
    });
  }

  async #metricsResponse(): Promise<Response> {
    const body = await this.#metrics.render(this.#reporter.live());
    return new Response(body, {
      headers: { "content-type": METRICS_CONTENT_TYPE, "cache-control": "no-store" },
    });
  }

  /** `work`, or an `unavailable` error once the metadata deadline passed. */
  async #withDeadline<T>(work: Promise<T>, what: string): Promise<T> {
    const timer = new AbortController();
    const timeoutMs = this.#metadataTimeoutMs;
    const expired = this.#clock.sleep(timeoutMs, timer.signal).then(() => {
      throw new TorusError(ErrorCode.Unavailable, `no answer to ${what} within ${timeoutMs} ms`);
    });
    try {
      return await Promise.race([work, expired]);
    } finally {
      timer.abort();
      expired.catch(() => {});
    }
  }

  /** Stops listening; requests in flight get CLOSE_GRACE_MS to finish. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    const server = this.#server;
    if (server === null) return;
    const grace = new AbortController();
    const waited = this.#clock.sleep(CLOSE_GRACE_MS, grace.signal).catch(() => {});
    await Promise.race([server.shutdown(), waited]);
    grace.abort();
  }
}
