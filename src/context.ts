/** What one request carries. The database is not here: it is the module singleton in db.ts. */
import type { YogaInitialContext } from 'graphql-yoga';
import type { Caller } from './services/api-keys.js';

/** Limits the server was configured with, as the resolvers need them. */
export interface RequestLimits {
  /** Most records one `ingestMetrics` call accepts. */
  maxBatchSize: number;
  /** Most groups one `metricStats` answer may have (MAX_STAT_GROUPS). */
  maxStatGroups: number;
}

export interface RequestContext extends YogaInitialContext {
  /** Identifies the request in logs and in the response's `x-request-id` header. */
  requestId: string;
  limits: RequestLimits;
  /** Who is asking: the API key's id and scopes, or the anonymous caller (every scope) while authentication is off. */
  caller: Caller;
}
