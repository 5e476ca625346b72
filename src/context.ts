/** What one request carries. The database is not here: it is the module singleton in db.ts. */
import type { YogaInitialContext } from 'graphql-yoga';

/** Limits the server was configured with, as the resolvers need them. */
export interface RequestLimits {
  /** Most records one `ingestMetrics` call accepts. */
  maxBatchSize: number;
}

export interface RequestContext extends YogaInitialContext {
  /** Identifies the request in logs and in the response's `x-request-id` header. */
  requestId: string;
  limits: RequestLimits;
}
