/**
 * The security plugins in the order they act on a request (README, Security):
 *
 *   onRequestParse  CSRF check (Yoga's), then the API key (401)    — before the body is read; then Yoga's body limit
 *   onParse         token limit                                    — while parsing
 *   onValidate      depth, aliases, directives, introspection      — validation errors (400)
 *   onExecute       scopes (403), cost (400), ingest rate (429)    — before any resolver, so before any SQL
 *   result          "Did you mean" hints removed (production)
 */

import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { useDisableIntrospection } from '@graphql-yoga/plugin-disable-introspection';
import type { ExecutionArgs, GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { Redis } from 'ioredis';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { AuthPolicy, scopeCheck, useAuthentication } from './auth.js';
import { armorPlugins, CSRF_HEADER, costLimit, useBlockFieldSuggestions } from './limits.js';
import { useIngestRateLimit } from './rate-limit.js';

export type SecurityConfig = Pick<
  Config,
  | 'nodeEnv'
  | 'auth'
  | 'introspection'
  | 'fieldSuggestions'
  | 'maxDepth'
  | 'maxAliases'
  | 'maxTokens'
  | 'maxDirectives'
  | 'maxCost'
  | 'maxBatchSize'
  | 'maxStatGroups'
  | 'ingestRequestsPerSecond'
  | 'ingestRecordsPerSecond'
  | 'redisChannelPrefix'
>;

export interface Security {
  policy: AuthPolicy;
  plugins: Plugin[];
}

/** A check before execution: the error that refuses the operation, or null. */
export type ExecutionCheck = (args: ExecutionArgs) => GraphQLError | null;

/** Refuses an operation or subscription before any resolver runs when the check gives an error. */
function useExecutionCheck(check: ExecutionCheck): Plugin {
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ errors: [error] });
    },
  };
}

/**
 * The request rules; `redis` (REDIS_URL's connection) shares the ingest rate limits between instances, without it they
 * are counted in this process.
 */
export function createSecurity(config: SecurityConfig, logger: Logger, redis?: Redis): Security {
  const policy = new AuthPolicy({ setting: config.auth, production: config.nodeEnv === 'production' });
  const executionChecks: ExecutionCheck[] = [
    scopeCheck,
    costLimit(config.maxCost, { maxStatGroups: config.maxStatGroups }),
  ];
  const plugins: Plugin[] = [
    // A request a browser may send cross-site without a CORS preflight must carry a header only a preflighted
    // request can have; an API key in Authorization counts.
    useCSRFPrevention({ requestHeaders: [CSRF_HEADER, 'authorization'] }) as Plugin,
    useAuthentication(policy, config.auth, logger),
    ...armorPlugins(config),
    ...(config.introspection ? [] : [useDisableIntrospection() as Plugin]),
    ...(config.fieldSuggestions ? [] : [useBlockFieldSuggestions()]),
    ...executionChecks.map(useExecutionCheck),
    useIngestRateLimit({
      requestsPerSecond: config.ingestRequestsPerSecond,
      recordsPerSecond: config.ingestRecordsPerSecond,
      maxBatchSize: config.maxBatchSize,
      redis,
      keyPrefix: config.redisChannelPrefix,
      logger,
    }),
  ];
  return { policy, plugins };
}
