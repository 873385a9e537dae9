/**
 * The node's HTTP front end: `/healthz`, `/status` (JSON) and `/metrics` (Prometheus). report.ts
 * is the boundary (what a node tells it), status.ts and metrics.ts render, server.ts serves.
 * @module
 */

export * from "./report.ts";
export * from "./status.ts";
export * from "./metrics.ts";
export * from "./server.ts";
