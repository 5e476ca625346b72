/**
 * The security plugins in the order they act on a request:
 *
 *   onRequestParse  CSRF check, then the API key (401)            — before the body is parsed
 *   onParse         token limit                                    — while parsing
 *   onValidate      depth, aliases, directives, introspection      — validation errors (400)
 *   onExecute       scopes (403), cost (400), ingest rate (429)    — before any resolver, so before any SQL
 *   result          "Did you mean" hints removed (production)
 */
import type { Plugin } from 'graphql-yoga';
import type { Config } from '../config.js';
import type { Logger } from '../logger.js';
import { AuthPolicy, useAuthentication, useScopes } from './auth.js';
import { armorPlugins, useBlockFieldSuggestions, useCostLimit, useCsrfPrevention, useDisableIntrospection } from './limits.js';
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
  return { policy, plugins };
}
