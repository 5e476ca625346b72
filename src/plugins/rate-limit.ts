/**
 * Per-key rate limit for ingestion: two fixed-window counters per API key, one for requests and one for records
 * (rate-limiter-flexible; at a window's edge a key can briefly reach twice its rate). With a Redis connection
 * (REDIS_URL) the counters live in Redis, so every instance sharing it enforces one limit per key between them;
 * without one they live in this process's memory. Checked after the scope check, before execution: a refused batch
 * costs no SQL and stores nothing.
 *
 * Both limits stay honest: the request is counted first and its records only if it passed; whatever a refused request
 * counted (its request, and its records when those were short) is given back at once. Between the two steps a
 * concurrent request may be refused that would have fit; none is ever let through past a limit.
 *
 * When Redis cannot answer, each instance falls back to counting in its own memory (the library's insurance limiter):
 * limits are then enforced per instance until Redis is back, and every fallback is logged and counted in
 * ingest_rate_limit_fallbacks_total.
 */
import type { DocumentNode, GraphQLSchema } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { Redis } from 'ioredis';
import { Counter } from 'prom-client';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { redactUrl } from '../config.js';
import type { RequestContext } from '../context.js';
import type { Logger } from '../logger.js';
import { registry } from '../observability/metrics.js';
import { requiredScope } from './auth.js';
import { findOperation, httpError, rawArgument, rootFields } from './operation.js';

export interface IngestRateOptions {
  /** Requests per second per key; 0 = unlimited. A window holds one second's worth. */
  requestsPerSecond: number;
  /** Records per second per key; 0 = unlimited. A window of whole seconds holds at least one full batch. */
  recordsPerSecond: number;
  maxBatchSize: number;
}

/** A fixed window: at most `points` in any `seconds`-long window that starts with the key's first use. */
export interface RateWindow {
  points: number;
  seconds: number;
}

/**
 * The windows for the configured rates: one second, or for records as many whole seconds as a full batch needs at
 * the rate (2 records/s with batches of 10: 10 records per 5 s), so that any valid batch can pass.
 */
export function rateWindows(options: IngestRateOptions): { requests: RateWindow | null; records: RateWindow | null } {
  const { requestsPerSecond, recordsPerSecond, maxBatchSize } = options;
  const recordSeconds = Math.max(1, Math.ceil(maxBatchSize / recordsPerSecond));
  return {
    requests: requestsPerSecond > 0 ? { points: requestsPerSecond, seconds: 1 } : null,
    records: recordsPerSecond > 0 ? { points: recordsPerSecond * recordSeconds, seconds: recordSeconds } : null,
  };
}

export type RateDecision =
  | { allowed: true }
  | { allowed: false; retryAfterSeconds: number; limitedBy: 'requests' | 'records' };

const fallbacks = new Counter({
  name: 'ingest_rate_limit_fallbacks_total',
  help:
    'Ingest rate-limit checks that Redis could not answer and this instance decided from its own memory, by limit ' +
    '(requests | records): while it grows, limits hold per instance, not across them.',
  labelNames: ['limit'] as const,
  registers: [registry],
});
for (const limit of ['requests', 'records']) fallbacks.inc({ limit }, 0);

/** A window's points given back only while it has this much left; nearer its end they lapse with it. */
const GIVE_BACK_MARGIN_MS = 100;

export interface IngestRateLimiterOptions {
  requests: RateWindow | null;
  records: RateWindow | null;
  /** Where counters are shared (REDIS_URL); without it, this process's memory. */
  redis?: Redis | undefined;
  /** Prefix of the Redis keys (REDIS_CHANNEL_PREFIX); instances that share limits use the same one. */
  keyPrefix: string;
  logger: Logger;
}

type LimitName = 'requests' | 'records';

export class IngestRateLimiter {
  private readonly limiters: Partial<Record<LimitName, RateLimiterAbstract>> = {};
  private lastFallbackLog = 0;

  constructor(private readonly options: IngestRateLimiterOptions) {
    for (const name of ['requests', 'records'] as const) {
      const window = options[name];
      if (window) this.limiters[name] = this.limiterFor(name, window);
    }
  }

  private limiterFor(name: LimitName, window: RateWindow): RateLimiterAbstract {
    const { redis, keyPrefix } = this.options;
    const settings = { points: window.points, duration: window.seconds, keyPrefix: `${keyPrefix}rate-limit:${name}` };
    if (!redis) return new RateLimiterMemory(settings);
    const noteFallback = () => this.noteFallback(name);
    // The library asks its insurance limiter whenever Redis fails or is not connected; this one counts that first.
    class FallbackLimiter extends RateLimiterMemory {
      override consume(key: string | number, points?: number, options?: { [key: string]: unknown }) {
        noteFallback();
        return super.consume(key, points, options);
      }
    }
    return new RateLimiterRedis({
      ...settings,
      storeClient: redis,
      // Not connected: decide at once from memory, rather than wait in ioredis' queue for a reconnect.
      rejectIfRedisNotReady: true,
      insuranceLimiter: new FallbackLimiter(settings),
    });
  }

  private noteFallback(limit: LimitName): void {
    fallbacks.inc({ limit });
    // One line every 10 s is enough to see the outage; the counter has every one.
    if (Date.now() - this.lastFallbackLog < 10_000) return;
    this.lastFallbackLog = Date.now();
    this.options.logger.warn(
      { limit, redis: this.options.redis?.status },
      'Redis cannot answer for ingest rate limits: this instance enforces them from its own memory until Redis is ' +
        'back (each instance then allows the full limit)',
    );
  }

  /** Counts one request and `records` records against the key, or neither when either limit is reached. */
  async take(keyId: string, records: number): Promise<RateDecision> {
    const { requests, records: recordLimiter } = this.limiters;
    const requestTaken = requests ? await this.consume(requests, keyId, 1) : null;
    if (requestTaken && !requestTaken.allowed) return this.refuse('requests', requestTaken.res);
    const recordsTaken = recordLimiter && records > 0 ? await this.consume(recordLimiter, keyId, records) : null;
    if (recordsTaken && !recordsTaken.allowed) {
      if (requests && requestTaken) await this.giveBack(requests, keyId, 1, requestTaken);
      return this.refuse('records', recordsTaken.res);
    }
    return { allowed: true };
  }

  /** Consumes `points`; a refusal is given back at once, so that a refused request leaves the count as it was. */
  private async consume(limiter: RateLimiterAbstract, keyId: string, points: number) {
    const at = Date.now();
    try {
      return { allowed: true as const, res: await limiter.consume(keyId, points), at, points };
    } catch (error) {
      if (!(error instanceof RateLimiterRes)) throw error;
      const taken = { allowed: false as const, res: error, at, points };
      await this.giveBack(limiter, keyId, points, taken);
      return taken;
    }
  }

  /**
   * Gives back what a consume counted, unless its window ends within the margin: then the points lapse with the
   * window, instead of landing in the next one as extra room.
   */
  private async giveBack(
    limiter: RateLimiterAbstract,
    keyId: string,
    points: number,
    taken: { res: RateLimiterRes; at: number },
  ): Promise<void> {
    if (Date.now() + GIVE_BACK_MARGIN_MS >= taken.at + taken.res.msBeforeNext) return;
    await limiter.reward(keyId, points);
  }

  private refuse(limitedBy: LimitName, res: RateLimiterRes): RateDecision {
    return { allowed: false, retryAfterSeconds: Math.max(1, Math.ceil(res.msBeforeNext / 1000)), limitedBy };
  }
}

/**
 * Connects the Redis client that rate limits are shared through; a Redis that cannot be reached at start-up stops it
 * (as live updates do). Later outages fall back to per-instance counting (IngestRateLimiter).
 */
export async function connectRateLimitRedis(redisUrl: string, logger: Logger): Promise<Redis> {
  // Loaded only with REDIS_URL, as for live updates.
  const { Redis: RedisClient } = await import('ioredis');
  const redis = new RedisClient(redisUrl, {
    lazyConnect: true,
    connectionName: 'metrics-rate-limit',
    connectTimeout: 10_000,
    // A rate-limit check never waits for a reconnect nor a Redis that stopped answering: it falls back at once.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: 1_000,
  });
  let lastErrorLog = 0;
  let lastError: Error | undefined;
  let failing = false;
  redis.on('error', (error: Error) => {
    lastError = error;
    failing = true;
    // ioredis reports every failed reconnect; one line every 10 s is enough to see the outage.
    if (Date.now() - lastErrorLog < 10_000) return;
    lastErrorLog = Date.now();
    logger.warn({ err: error }, `Redis connection problem (ingest rate limits are per instance): ${error.message}`);
  });
  // A lost connection (Redis stopped, a network cut) shows as `close` before any error: checks fall back from then.
  redis.on('close', () => {
    failing = true;
  });
  redis.on('ready', () => {
    if (!failing) return;
    failing = false;
    logger.info('Redis is back: ingest rate limits are shared between instances again');
  });
  try {
    await redis.connect();
  } catch (error) {
    redis.disconnect();
    const reason =
      lastError && lastError !== error
        ? `${lastError.message} (${(error as Error).message})`
        : (error as Error).message;
    throw new Error(`Cannot use Redis at ${redactUrl(redisUrl)} (REDIS_URL) for rate limits: ${reason}`);
  }
  failing = false;
  return redis;
}

/** Records an operation asks to ingest: the length of each ingest root field's `records` (literal or variable). */
function ingestedRecords(
  schema: GraphQLSchema,
  document: DocumentNode,
  operationName: string | null | undefined,
  variables: Readonly<Record<string, unknown>> | null | undefined,
): number | null {
  const operation = findOperation(document, operationName);
  if (operation?.operation !== 'mutation') return null;
  let ingesting = false;
  let records = 0;
  for (const field of rootFields(document, operation)) {
    if (requiredScope(schema, operation.operation, field.name.value) !== 'ingest') continue;
    ingesting = true;
    const { value } = rawArgument(field, 'records', operation, variables);
    // A single object is coerced to a list of one; anything else fails validation of the variables later.
    records += Array.isArray(value) ? value.length : value == null ? 0 : 1;
  }
  return ingesting ? records : null;
}

export interface IngestRateLimitOptions extends IngestRateOptions {
  /** Where counters are shared between instances (REDIS_URL); without it, this process's memory. */
  redis?: Redis | undefined;
  /** Prefix of the Redis keys (REDIS_CHANNEL_PREFIX). */
  keyPrefix: string;
  logger: Logger;
}

export function useIngestRateLimit(options: IngestRateLimitOptions): Plugin {
  const { requestsPerSecond, recordsPerSecond, maxBatchSize } = options;
  const limiter = new IngestRateLimiter({ ...rateWindows(options), ...options });
  return {
    async onExecute({ args, setResultAndStopExecution }) {
      const keyId = (args.contextValue as RequestContext).caller?.keyId;
      // Anonymous callers (authentication off) have no key to count against.
      if (!keyId || (requestsPerSecond === 0 && recordsPerSecond === 0)) return;
      const records = ingestedRecords(args.schema, args.document, args.operationName, args.variableValues);
      if (records === null) return;
      // A batch over MAX_BATCH_SIZE is refused by ingestMetrics itself (BATCH_TOO_LARGE), whatever the rate.
      const decision = await limiter.take(keyId, records > maxBatchSize ? 0 : records);
      if (decision.allowed) return;
      const limits = [
        requestsPerSecond > 0 ? `${requestsPerSecond} requests` : null,
        recordsPerSecond > 0 ? `${recordsPerSecond} records` : null,
      ].filter(Boolean);
      setResultAndStopExecution({
        errors: [
          httpError(
            `Rate limit of API key ${keyId} reached: at most ${limits.join(' and ')} per second may be ingested. ` +
              `Nothing was stored; retry after ${decision.retryAfterSeconds} s.`,
            'RATE_LIMITED',
            429,
            { retryAfter: decision.retryAfterSeconds, limitedBy: decision.limitedBy },
            { 'Retry-After': String(decision.retryAfterSeconds) },
          ),
        ],
      });
    },
  };
}
