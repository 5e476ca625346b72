/**
 * The security plugins in the order they act on a request:
 *
 *   onRequestParse  CSRF check, then the API key (401)            — before the body is parsed
 *   onParse         token limit                                    — while parsing
 *   onValidate      depth, aliases, directives, introspection      — validation errors (400)
 *   onExecute       scopes (403), cost (400), ingest rate (429)    — before any resolver, so before any SQL
 *   result          "Did you mean" hints removed (production)
 */
import type { ExecutionArgs, GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { AuthPolicy, scopeError, useAuthentication, useScopes } from './auth.js';
import { armorPlugins, costLimit, useBlockFieldSuggestions, useCostLimit, useCsrfPrevention, useDisableIntrospection } from './limits.js';
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
  | 'ingestRequestsPerSecond'
  | 'ingestRecordsPerSecond'
>;

export interface Security {
  policy: AuthPolicy;
  plugins: Plugin[];
  /**
   * What the plugins check before execution that depends on the caller or the variables, as functions: for the
   * direct read path (src/http/direct-read.ts), which runs reads without Yoga. Reads are not rate-limited.
   */
  executionChecks: Array<(args: ExecutionArgs) => GraphQLError | null>;
}

export function createSecurity(config: SecurityConfig, logger: Logger): Security {
  const policy = new AuthPolicy({ setting: config.auth, production: config.nodeEnv === 'production' });
  const plugins: Plugin[] = [
    useCsrfPrevention(),
    useAuthentication(policy, config.auth, logger),
    ...armorPlugins(config),
    ...(config.introspection ? [] : [useDisableIntrospection()]),
    ...(config.fieldSuggestions ? [] : [useBlockFieldSuggestions()]),
    useScopes(),
    useCostLimit(config.maxCost),
    useIngestRateLimit({
      requestsPerSecond: config.ingestRequestsPerSecond,
      recordsPerSecond: config.ingestRecordsPerSecond,
      maxBatchSize: config.maxBatchSize,
    }),
  ];
  const cost = costLimit(config.maxCost);
  const executionChecks = [
    (args: ExecutionArgs) => scopeError(args, (args.contextValue as RequestContext).caller),
    (args: ExecutionArgs) => cost(args),
  ];
  return { policy, plugins, executionChecks };
}
