/**
 * Prometheus metrics (prom-client), served at GET /metrics by the Yoga plugin below:
 *
 *   graphql_requests_total{operation_name, operation_type, outcome}   GraphQL requests, outcome success | error
 *   graphql_request_duration_seconds{operation_name, operation_type}  from the request's arrival to its response
 *   ingest_records_total{result}                 ingestMetrics records: accepted | queued | duplicate | rejected
 *   ingest_queue_pending, ingest_queue_lag, ingest_queue_dead_letters
 *                                                the queued mode's backlog (INGEST_QUEUE): src/queue/metrics.ts
 *   ingest_batch_writes_total{path}              batches written: copy | lookup_copy | insert
 *   db_pool_connections{state}, db_pool_waiting_clients, db_pool_max_connections
 *                                                the PostgreSQL pool (not on the embedded database): src/db/client.ts
 *   rollup_deltas_folded_total, rollup_fold_failures_total
 *                                                the rollups' fold: src/services/rollups.ts
 *   ingest_rate_limit_fallbacks_total{limit}     rate-limit checks Redis could not answer: src/plugins/rate-limit.ts
 *   process_*, nodejs_*                          prom-client's default process metrics
 *
 * One registry per process (module singleton): metrics count the process's work, whatever creates servers in it.
 * This module imports nothing of the service's: each owner of a figure registers its own metric here.
 */
import { getOperationAST, type OperationTypeNode } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { Counter, collectDefaultMetrics, Histogram, Registry } from 'prom-client';

export const registry = new Registry();
collectDefaultMetrics({ register: registry });

const requests = new Counter({
  name: 'graphql_requests_total',
  help: 'GraphQL requests by operation name and type, and whether the response carried errors.',
  labelNames: ['operation_name', 'operation_type', 'outcome'] as const,
  registers: [registry],
});

const duration = new Histogram({
  name: 'graphql_request_duration_seconds',
  help: "Time from a GraphQL request's arrival to its response, by operation name and type.",
  labelNames: ['operation_name', 'operation_type'] as const,
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  registers: [registry],
});

const ingested = new Counter({
  name: 'ingest_records_total',
  help:
    'Records sent to ingestMetrics: accepted (newly stored), queued (newly queued: the queued mode), duplicate ' +
    '(stored or queued already, or repeated), ' +
    'rejected (failed a rule).',
  labelNames: ['result'] as const,
  registers: [registry],
});
// Present at zero from the start, so that rate() and alerts see the series before the first ingestion.
for (const result of ['accepted', 'queued', 'duplicate', 'rejected']) ingested.inc({ result }, 0);

const batchWrites = new Counter({
  name: 'ingest_batch_writes_total',
  help:
    'ingestMetrics batches written to the database, by how: copy (COPY straight away), lookup_copy (COPY of the ' +
    'records ' +
    'not stored yet, after looking them up: retried batches), insert (INSERT ... ON CONFLICT: the embedded ' +
    'database, or a ' +
    'batch that raced a concurrent one for the same records).',
  labelNames: ['path'] as const,
  registers: [registry],
});
for (const path of ['copy', 'lookup_copy', 'insert']) batchWrites.inc({ path }, 0);

/** Counts one ingestMetrics result: called by the resolver with what it returns. */
export function recordIngestResult(result: {
  accepted: number;
  queued: number;
  duplicates: number;
  rejected: readonly { index: number }[];
  writePath: string | null;
}): void {
  if (result.writePath) batchWrites.inc({ path: result.writePath });
  if (result.accepted > 0) ingested.inc({ result: 'accepted' }, result.accepted);
  if (result.queued > 0) ingested.inc({ result: 'queued' }, result.queued);
  if (result.duplicates > 0) ingested.inc({ result: 'duplicate' }, result.duplicates);
  // A record with two problems has two entries: count records.
  const rejected = new Set(result.rejected.map((r) => r.index)).size;
  if (rejected > 0) ingested.inc({ result: 'rejected' }, rejected);
}

/** Operation names are chosen by clients: past this many distinct ones, new names are counted as "(other)". */
const MAX_OPERATION_NAMES = 200;
const knownNames = new Set<string>();

function operationLabel(name: string | undefined): string {
  if (!name) return '(anonymous)';
  if (knownNames.has(name)) return name;
  if (knownNames.size >= MAX_OPERATION_NAMES) return '(other)';
  knownNames.add(name);
  return name;
}

interface RequestTiming {
  started: number;
  graphql: boolean;
  name?: string;
  type?: OperationTypeNode | 'unknown';
  failed: boolean;
}

/** Counts and times one GraphQL request (started: its performance.now() on arrival). */
function observeRequest(
  request: { started: number; name?: string | undefined; type?: OperationTypeNode | 'unknown' | undefined },
  failed: boolean,
): void {
  const labels = {
    operation_name: request.type ? operationLabel(request.name) : '(none)',
    operation_type: request.type ?? 'unknown',
  };
  duration.observe(labels, (performance.now() - request.started) / 1000);
  requests.inc({ ...labels, outcome: failed ? 'error' : 'success' });
}

export interface MetricsPluginOptions {
  /** The path that serves the metrics; default `/metrics`. */
  endpoint?: string;
}

/**
 * The Yoga plugin: serves GET /metrics, and times every GraphQL request under its operation's name and type.
 * Requests that never reach execution (unparsable, invalid, refused) count as operation_type "unknown", outcome error.
 */
export function useMetrics(options: MetricsPluginOptions = {}): Plugin {
  const endpoint = options.endpoint ?? '/metrics';
  const timings = new WeakMap<Request, RequestTiming>();
  const noteOperation = (
    request: Request | undefined,
    document: Parameters<typeof getOperationAST>[0],
    operationName?: string | null,
  ) => {
    const timing = request && timings.get(request);
    if (!timing) return;
    const operation = getOperationAST(document, operationName ?? undefined);
    timing.name = operation?.name?.value ?? operationName ?? undefined;
    timing.type = operation?.operation ?? 'unknown';
  };
  return {
    async onRequest({ request, url, endResponse, fetchAPI }) {
      if (url.pathname === endpoint && request.method === 'GET') {
        endResponse(
          new fetchAPI.Response(await registry.metrics(), {
            status: 200,
            headers: { 'content-type': registry.contentType },
          }),
        );
        return;
      }
      timings.set(request, { started: performance.now(), graphql: false, failed: false });
    },
    onParams({ request }) {
      const timing = timings.get(request);
      if (timing) timing.graphql = true;
    },
    onExecute({ args }) {
      noteOperation(args.contextValue.request, args.document, args.operationName);
    },
    onSubscribe({ args }) {
      noteOperation(args.contextValue.request, args.document, args.operationName);
    },
    onResultProcess({ request, result }) {
      const timing = timings.get(request);
      if (!timing) return;
      const results = Array.isArray(result) ? result : Symbol.asyncIterator in result ? [] : [result];
      if (results.some((r) => (r.errors?.length ?? 0) > 0)) timing.failed = true;
    },
    onResponse({ request, response }) {
      const timing = timings.get(request);
      if (!timing?.graphql) return;
      timings.delete(request);
      observeRequest(timing, timing.failed || response.status >= 400);
    },
  };
}
