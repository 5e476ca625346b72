/**
 * Per-key rate limit for ingestion: two token buckets per API key, one for requests and one for records, kept in this
 * process's memory (with several instances each enforces its own share; a shared store such as Redis could replace the
 * Map later). Checked after the scope check, before execution: a refused batch costs no SQL and stores nothing.
 */
import type { DocumentNode, GraphQLSchema } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';
import { requiredScope } from './auth.js';
import { findOperation, httpError, rawArgument, rootFields } from './operation.js';

export interface IngestRateOptions {
  /** Requests per second per key; 0 = unlimited. The bucket holds one second's worth. */
  requestsPerSecond: number;
  /** Records per second per key; 0 = unlimited. The bucket holds one second's worth, and at least one full batch. */
  recordsPerSecond: number;
  maxBatchSize: number;
}

class TokenBucket {
  private tokens: number;
  private updatedAt: number;
  constructor(
    readonly rate: number,
    readonly capacity: number,
    now: number,
  ) {
    this.tokens = capacity;
    this.updatedAt = now;
  }

  /** Refills for the time passed; returns the seconds until `n` tokens are there (0: there now). */
  waitFor(n: number, now: number): number {
    this.tokens = Math.min(this.capacity, this.tokens + ((now - this.updatedAt) / 1000) * this.rate);
    this.updatedAt = now;
    return this.tokens >= n ? 0 : (n - this.tokens) / this.rate;
  }

  take(n: number): void {
    this.tokens -= n;
  }
}

export type RateDecision =
  | { allowed: true }
  | { allowed: false; retryAfterSeconds: number; limitedBy: 'requests' | 'records' };

export class IngestRateLimiter {
  private readonly buckets = new Map<string, { requests?: TokenBucket; records?: TokenBucket }>();
  constructor(private readonly options: IngestRateOptions) {}

  /** Takes one request and `records` records from the key's buckets, or neither when either is short. */
  take(keyId: string, records: number, now: number = performance.now()): RateDecision {
    const { requestsPerSecond, recordsPerSecond, maxBatchSize } = this.options;
    let entry = this.buckets.get(keyId);
    if (!entry) {
      entry = {
        requests: requestsPerSecond > 0 ? new TokenBucket(requestsPerSecond, requestsPerSecond, now) : undefined,
        records:
          recordsPerSecond > 0
            ? new TokenBucket(recordsPerSecond, Math.max(recordsPerSecond, maxBatchSize), now)
            : undefined,
      };
      this.buckets.set(keyId, entry);
    }
    // A batch over MAX_BATCH_SIZE is refused by ingestMetrics itself (BATCH_TOO_LARGE), whatever the rate.
    const recordCount = records > maxBatchSize ? 0 : records;
    const requestWait = entry.requests?.waitFor(1, now) ?? 0;
    const recordWait = entry.records?.waitFor(recordCount, now) ?? 0;
    if (requestWait === 0 && recordWait === 0) {
      entry.requests?.take(1);
      entry.records?.take(recordCount);
      return { allowed: true };
    }
    return {
      allowed: false,
      retryAfterSeconds: Math.max(1, Math.ceil(Math.max(requestWait, recordWait))),
      limitedBy: recordWait > requestWait ? 'records' : 'requests',
    };
  }
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

export function useIngestRateLimit(options: IngestRateOptions): Plugin {
  const limiter = new IngestRateLimiter(options);
  const { requestsPerSecond, recordsPerSecond } = options;
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const keyId = (args.contextValue as RequestContext).caller?.keyId;
      // Anonymous callers (authentication off) have no key to count against.
      if (!keyId || (requestsPerSecond === 0 && recordsPerSecond === 0)) return;
      const records = ingestedRecords(args.schema, args.document, args.operationName, args.variableValues);
      if (records === null) return;
      const decision = limiter.take(keyId, records);
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
