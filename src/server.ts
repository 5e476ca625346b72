/**
 * The HTTP service: Yoga with the schema, health and readiness, and every rule a request passes, as Yoga plugins in
 * the order they act (README, Security). The Node listener in front of it only sets the request id and drains what a
 * refused request still sends (src/http/listener.ts): every request, whatever its size or how often it is repeated,
 * goes through the same pipeline.
 * Creating it never listens: main.ts listens, tests listen on a port of their own.
 */
import crypto from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { mapAsyncIterator } from '@graphql-tools/utils';
import { type ExecutionResult, GraphQLError } from 'graphql';
import { createYoga, isAsyncIterable, type Plugin, useReadinessCheck, type YogaLogger } from 'graphql-yoga';
import type { Redis } from 'ioredis';
import type { Config } from './config.js';
import type { RequestContext } from './context.js';
import { useDashboard } from './dashboard/plugin.js';
import { database } from './db/client.js';
import { classifyDatabaseError, type DatabaseFault } from './db/errors.js';
import { migrationStatus } from './db/migrations.js';
import { jsonBodyLimitsFor, useJsonBodyParser } from './http/json-body.js';
import { transport } from './http/listener.js';
import type { Logger } from './logger.js';
import { useMetrics } from './observability/metrics.js';
import { callerOf } from './plugins/auth.js';
import { useFastExecute } from './plugins/execute.js';
import { renderGraphiQLPage, useCompressedGraphiQL } from './plugins/graphiql.js';
import { useInputErrorCodes } from './plugins/input-errors.js';
import { useEmptySubscriptionGuard, useVariablesDepthLimit } from './plugins/input-guards.js';
import { createSecurity, type SecurityConfig } from './plugins/security.js';
import { useFrameworkErrorsInOurWords } from './plugins/wording.js';
import { type IngestQueue, QueueFullError, QueueUnavailableError } from './queue/broker.js';
import { schema } from './schema/index.js';
import type { Caller } from './services/api-keys.js';
import { InputError } from './services/errors.js';

export interface ServerOptions {
  config: Pick<Config, 'maxBatchSize' | 'maxBodyBytes' | 'graphiql' | 'maxStatGroups' | 'dbStatementTimeoutMs'> &
    SecurityConfig;
  logger: Logger;
  /** The ingest queue of the queued mode (INGEST_QUEUE): /ready reports on it. */
  queue?: IngestQueue | undefined;
  /** Plugins after the service's own, before execution (tests use it to see that every request passes them). */
  plugins?: Plugin[];
  /** The Redis connection (REDIS_URL) ingest rate limits are shared through; without it each server counts alone. */
  redis?: Redis | undefined;
}

/** How long a refused request's unread body may keep arriving after its answer before the connection is closed. */
const DRAIN_MS = 5_000;

/**
 * Each request's id, for the fetch Request Yoga works with (the listener sets it on the response first). Not an
 * AsyncLocalStorage: on Node 20 one `run` turns on promise hooks for every promise of the process for good.
 */
const requestIds = new WeakMap<Request, string>();

/**
 * The log entry of an error maskError masked, written once the error's request is known (useRequestIds): then the
 * entry and the client's error carry the same request id.
 */
const pendingLogs = new WeakMap<GraphQLError, (requestId: string | undefined) => void>();
/** Errors maskError masked (and logs itself): Yoga's own log line for them would be a second one. */
const maskedOriginals = new WeakSet<object>();

const EXAMPLE_OPERATIONS = /* GraphQL */ `# Store two records, then read them back:
# run "Ingest", then "Recent" (the ▶ button asks which).

mutation Ingest {
  ingestMetrics(records: [
    {
      eventId: "demo-1"
      userId: "alice"
      sessionId: "s-1"
      timestamp: 1795000000
      talkedTime: 120
      microphoneUsed: true
      speakerUsed: true
      voiceSentiment: "positive"
    }
    {
      eventId: "demo-2"
      userId: "bob"
      sessionId: "s-2"
      timestamp: 1795000060
      talkedTime: 45
      microphoneUsed: true
      speakerUsed: false
    }
  ]) {
    accepted
    duplicates
    rejected { index field code message }
  }
}

query Recent {
  metrics(
    where: { userId: { in: ["alice", "bob"] } }
    first: 10
  ) {
    totalCount
    edges {
      node {
        id
        userId
        sessionId
        occurredAt
        talkedTime
        voiceSentiment
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
`;

function yogaLogger(logger: Logger): YogaLogger {
  const withScope =
    (level: 'debug' | 'info' | 'warn' | 'error') =>
    (...args: unknown[]) => {
      const [first, ...rest] = args;
      const fields: Record<string, unknown> = {};
      // Yoga logs every error it masks; maskError logs each once itself, with the request id (a database fault as a
      // warning: during an outage an error-level entry with a stack for every request would only bury the log).
      if (first instanceof Error && level === 'error' && (maskedOriginals.has(first) || classifyDatabaseError(first)))
        return;
      // A client's own mistake (a bad argument) is answered with its message; it is not the service's error.
      const cause = first instanceof GraphQLError ? first.originalError : first;
      if (cause instanceof InputError) {
        logger.debug({ ...fields, code: cause.code, argument: cause.path }, cause.message);
        return;
      }
      if (first instanceof Error) logger[level]({ ...fields, err: first }, first.message);
      else logger[level]({ ...fields, ...(rest.length > 0 ? { details: rest } : {}) }, String(first));
    };
  return { debug: withScope('debug'), info: withScope('info'), warn: withScope('warn'), error: withScope('error') };
}

export function createServer({ config, logger, queue, plugins = [], redis }: ServerOptions) {
  const maskError = (error: unknown, message: string): Error => {
    const original = error instanceof GraphQLError ? error.originalError : error;
    if (original instanceof InputError) {
      return new GraphQLError(original.message, {
        nodes: error instanceof GraphQLError ? error.nodes : undefined,
        path: error instanceof GraphQLError ? error.path : undefined,
        extensions: { code: original.code, argument: original.path },
      });
    }
    if (error instanceof GraphQLError && (!original || original instanceof GraphQLError)) return error;
    if (typeof original === 'object' && original !== null) maskedOriginals.add(original);
    if (typeof error === 'object' && error !== null) maskedOriginals.add(error);
    const path = error instanceof GraphQLError ? error.path : undefined;
    if (original instanceof QueueFullError || original instanceof QueueUnavailableError) {
      const masked = queueFaultError(original, error);
      pendingLogs.set(masked, (requestId) => logger.warn({ err: original, requestId, path }, original.message));
      return masked;
    }
    const fault = classifyDatabaseError(original);
    // The request id is filled in, and the entry logged, by useRequestIds.
    if (fault) {
      const masked = databaseFaultError(fault, error, config.dbStatementTimeoutMs);
      pendingLogs.set(masked, (requestId) =>
        logger.warn({ err: original, requestId, reason: fault.reason, path }, `Database ${fault.kind}`),
      );
      return masked;
    }
    const masked = new GraphQLError(message, {
      nodes: error instanceof GraphQLError ? error.nodes : undefined,
      path,
      extensions: { code: 'INTERNAL_SERVER_ERROR', requestId: undefined },
    });
    pendingLogs.set(masked, (requestId) => logger.error({ err: original, requestId, path }, 'Unexpected error'));
    return masked;
  };

  const security = createSecurity(config, logger, redis);
  const limits = { maxBatchSize: config.maxBatchSize, maxStatGroups: config.maxStatGroups };
  /** The request's part of the GraphQL context (Yoga adds its own: request, params). */
  const contextFor = (requestId: string, caller: Caller) => ({ requestId, caller, limits });
  const yoga = createYoga<
    Record<string, unknown>,
    Omit<RequestContext, keyof import('graphql-yoga').YogaInitialContext>
  >({
    schema,
    graphqlEndpoint: '/graphql',
    healthCheckEndpoint: '/health',
    landingPage: false,
    graphiql: config.graphiql
      ? {
          title: 'Metrics service',
          defaultQuery: EXAMPLE_OPERATIONS,
          // GraphiQL runs subscriptions as GET requests (server-sent events); the header tells CSRF prevention that
          // the request comes from a page allowed to set headers.
          additionalHeaders: { 'x-graphql-yoga-csrf': '1' },
        }
      : false,
    // GraphiQL's assets are served by the service itself, not fetched from a CDN: it works offline and behind
    // firewalls. Loaded on the first GraphiQL page only: a production service (GraphiQL off) does not carry the
    // bundle's memory. The page names the bundle's parts as files, cached and compressed by useCompressedGraphiQL
    // (src/plugins/graphiql.ts).
    renderGraphiQL: (options) => renderGraphiQLPage(options, '/graphql'),
    logging: yogaLogger(logger),
    // Yoga's own body limit (413 by Content-Length up front, or counted while a chunked body streams in): it runs
    // after the CSRF and key checks, so a refused caller's body is never read.
    maxRequestBodySize: config.maxBodyBytes,
    maskedErrors: { maskError },
    context: ({ request }) => contextFor(requestIds.get(request) ?? crypto.randomUUID(), callerOf(request)),
    plugins: [
      // GET /metrics (Prometheus) and request timing per operation: first, so it times everything after it.
      useMetrics(),
      // GraphiQL's page and files compressed and cached; before the key checks: GraphiQL itself needs no key.
      useCompressedGraphiQL({ endpoint: '/graphql' }),
      // The request id for the context, and for the errors maskError masked (and their log entries).
      useRequestIds(),
      // GET /dashboard: static files that draw what /graphql answers (src/dashboard/); no data, so no key.
      useDashboard(),
      useReadinessCheck({
        endpoint: '/ready',
        check: async () => {
          if (queue) return queueReadiness(queue, logger);
          try {
            const status = await migrationStatus(database());
            if (status.pending.length > 0) {
              return jsonResponse(503, { ready: false, reason: `pending migrations: ${status.pending.join(', ')}` });
            }
            return true;
          } catch (error) {
            logger.warn({ err: error }, 'Readiness check failed');
            return jsonResponse(503, { ready: false, reason: 'database unreachable' });
          }
        },
      }),
      // Framework errors (CSRF, body limit, invalid JSON, introspection) in our words and codes; every message bounded.
      useFrameworkErrorsInOurWords({ maxBodyBytes: config.maxBodyBytes }),
      // Content type, CSRF, the API key, query limits, scopes, cost, rate limits: src/plugins/security.ts.
      ...security.plugins,
      // JSON bodies read a chunk at a time, their shape bounded before one JSON.parse: src/http/json-body.ts.
      useJsonBodyParser(jsonBodyLimitsFor(config.maxBatchSize)),
      // Inputs graphql-js would crash on, refused as client errors: src/plugins/input-guards.ts.
      useVariablesDepthLimit(),
      useEmptySubscriptionGuard(),
      // Variables of the wrong type get BAD_USER_INPUT, as README promises every fixable error a code.
      useInputErrorCodes(),
      ...plugins,
      // graphql-jit for ingestMetrics and the read fields, graphql-js for the rest: src/plugins/execute.ts.
      useFastExecute(),
    ] satisfies Plugin[],
  });

  const handler = transport(yoga.requestListener as import('node:http').RequestListener, {
    bytes: config.maxBodyBytes,
    ms: DRAIN_MS,
  });

  return { yoga, handler, authPolicy: security.policy };
}

/**
 * Request ids in Yoga: each fetch Request gets its response's id (onRequest); each error maskError masked gets it in
 * its extensions, and its log entry is written with it (onResultProcess, for every answer, the events of a stream too).
 */
function useRequestIds(): Plugin {
  const settle = (result: ExecutionResult, requestId: string | undefined) => {
    for (const error of result.errors ?? []) {
      const log = pendingLogs.get(error);
      if (!log) continue;
      pendingLogs.delete(error);
      if ('requestId' in error.extensions) (error.extensions as Record<string, unknown>).requestId = requestId;
      log(requestId);
    }
    return result;
  };
  return {
    onRequest({ request, serverContext }) {
      const id = (serverContext as { res?: ServerResponse } | undefined)?.res?.getHeader('x-request-id');
      if (typeof id === 'string') requestIds.set(request, id);
    },
    onResultProcess({ request, result, setResult }) {
      const requestId = requestIds.get(request);
      if (isAsyncIterable(result))
        setResult(mapAsyncIterator(result, (event: ExecutionResult) => settle(event, requestId)));
      else for (const single of Array.isArray(result) ? result : [result]) settle(single, requestId);
    },
  };
}

/**
 * What a client sees when the database failed it (its `requestId` filled in by useRequestIds): a code to act on and
 * the HTTP status that generic clients and proxies already treat as "try again". Both mean the operation's writes did
 * not happen (or, if the connection broke after a commit, happened once: a retried batch is counted as duplicates,
 * never stored twice).
 */
function databaseFaultError(fault: DatabaseFault, error: unknown, statementTimeoutMs: number): GraphQLError {
  const location = {
    nodes: error instanceof GraphQLError ? error.nodes : undefined,
    path: error instanceof GraphQLError ? error.path : undefined,
  };
  if (fault.kind === 'unavailable') {
    return new GraphQLError(
      'The database is unavailable right now, so this operation did not run. Retry it after the Retry-After ' +
        'delay; a retried ingestMetrics batch is never stored twice.',
      {
        ...location,
        extensions: {
          code: 'UNAVAILABLE',
          requestId: undefined,
          http: { status: 503, headers: { 'Retry-After': String(RETRY_AFTER_SECONDS) } },
        },
      },
    );
  }
  return new GraphQLError(
    `The database did not finish this operation within the time limit${
      statementTimeoutMs > 0 ? ` (${statementTimeoutMs} ms)` : ''
    } and cancelled it: nothing it would have written was stored. ` +
      'Narrow the filter or ask for less; retry unchanged only if the database was busy.',
    { ...location, extensions: { code: 'QUERY_TIMEOUT', requestId: undefined, http: { status: 504 } } },
  );
}

/**
 * The 503 of a batch the ingest queue did not take: QUEUE_FULL while the worker catches up (the stream is at its
 * limit), UNAVAILABLE when the broker cannot be reached. Records of the batch that were queued before the failure are
 * dropped as resends when the client retries.
 */
function queueFaultError(fault: QueueFullError | QueueUnavailableError, error: unknown): GraphQLError {
  const full = fault instanceof QueueFullError;
  return new GraphQLError(
    full
      ? 'The ingest queue is full, so this batch was not queued (or only in part). Retry it after the Retry-After ' +
          'delay, when the worker has caught up; a retried batch is never stored twice.'
      : 'The ingest queue is unavailable right now, so this batch was not queued (or only in part). Retry it after ' +
          'the Retry-After delay; a retried batch is never stored twice.',
    {
      nodes: error instanceof GraphQLError ? error.nodes : undefined,
      path: error instanceof GraphQLError ? error.path : undefined,
      extensions: {
        code: full ? 'QUEUE_FULL' : 'UNAVAILABLE',
        requestId: undefined,
        http: {
          status: 503,
          headers: { 'Retry-After': String(full ? QUEUE_FULL_RETRY_AFTER_SECONDS : RETRY_AFTER_SECONDS) },
        },
      },
    },
  );
}

/** Seconds a client should wait after QUEUE_FULL: a worker takes a while to make room. */
const QUEUE_FULL_RETRY_AFTER_SECONDS = 5;

/**
 * Readiness in the queued mode: ingestion needs the broker, not the database (its records wait in the queue while the
 * database is down), so the broker decides; the answer shows the backlog and whether the database answers.
 */
async function queueReadiness(queue: IngestQueue, logger: Logger): Promise<Response> {
  let databaseState: string;
  try {
    const status = await migrationStatus(database());
    databaseState = status.pending.length > 0 ? `pending migrations: ${status.pending.join(', ')}` : 'up';
  } catch {
    databaseState = 'unreachable';
  }
  try {
    const backlog = await queue.backlog();
    return jsonResponse(200, { ready: true, database: databaseState, queue: backlog });
  } catch (error) {
    logger.warn({ err: error }, 'Readiness check failed');
    return jsonResponse(503, { ready: false, reason: 'ingest queue unreachable', database: databaseState });
  }
}

/**
 * Seconds a client should wait before retrying after UNAVAILABLE: a restarting PostgreSQL is usually back within a few.
 */
const RETRY_AFTER_SECONDS = 1;

function jsonResponse(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}
