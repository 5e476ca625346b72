/**
 * Authentication and scopes.
 *
 * 1. Before the request body is read, the `Authorization: Bearer <key>` header is checked against the hashed keys in
 *    the database (one index probe for every request, so a revocation holds from the next request on; only while the
 *    database is unreachable is a recently verified key taken without it: API_KEY_OUTAGE_GRACE_MS). A
 *    missing, malformed, unknown or revoked key is refused with 401 and `WWW-Authenticate`; the body is never read.
 * 2. After parsing and validation, before execution (so before any SQL of the operation), each root field the operation
 *    selects is checked against the key's scopes (scopeCheck); a missing scope is refused with 403 naming it. A field
 *    declares the scope it needs (`extensions: { requiredScope }`); one that does not needs its operation type's.
 */
import type { ExecutionArgs, GraphQLError, GraphQLSchema, OperationTypeNode } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { AuthSetting } from '../config.js';
import type { RequestContext } from '../context.js';
import { classifyDatabaseError } from '../db/errors.js';
import type { Logger } from '../logger.js';
import {
  ANONYMOUS,
  anyApiKeyExists,
  apiKeyCreatedInThisProcess,
  authenticateApiKey,
  type Caller,
  hashKey,
  hasScope,
  isScope,
  type Scope,
} from '../services/api-keys.js';
import { findOperation, httpError, rootFields } from './operation.js';

const REALM = 'metrics-service';

/**
 * The scope a root field needs when it declares none: query and subscription fields need `read`, mutation fields
 * `admin`, so that a new mutation is admin-only until it declares otherwise.
 */
const DEFAULT_SCOPES: Readonly<Record<OperationTypeNode, Scope>> = {
  query: 'read',
  subscription: 'read',
  mutation: 'admin',
} as Record<OperationTypeNode, Scope>;

/** The scope a root field needs; null for meta fields (`__typename`; introspection is governed by INTROSPECTION). */
export function requiredScope(schema: GraphQLSchema, operation: OperationTypeNode, fieldName: string): Scope | null {
  if (fieldName.startsWith('__')) return null;
  const declared = schema.getRootType(operation)?.getFields()[fieldName]?.extensions?.requiredScope;
  if (typeof declared === 'string' && isScope(declared)) return declared;
  return DEFAULT_SCOPES[operation];
}

export interface AuthOptions {
  setting: AuthSetting;
  production: boolean;
}

/**
 * While no key exists (AUTH=auto outside production) the database is asked at most this often whether one does now:
 * a key made by this process counts at once, one made by another process (the CLI, another instance) within this time.
 */
const NO_KEYS_RECHECK_MS = 1000;

/** Whether a request must carry a key right now. */
export class AuthPolicy {
  private keysSeen = false;
  private noKeysCheckedAt = Number.NEGATIVE_INFINITY;
  constructor(private readonly options: AuthOptions) {}

  async required(): Promise<boolean> {
    const { setting, production } = this.options;
    if (setting === 'off') return false;
    if (setting === 'on' || production || this.keysSeen) return true;
    // auto outside production: open until the first key exists. Keys are never deleted, so once seen it stays on.
    if (apiKeyCreatedInThisProcess()) this.keysSeen = true;
    else if (performance.now() - this.noKeysCheckedAt >= NO_KEYS_RECHECK_MS) {
      try {
        this.keysSeen = await anyApiKeyExists();
      } catch (error) {
        // While the database is out of reach the last answer holds (the queued mode needs no database); with none
        // yet, the request fails as the database does.
        if (this.noKeysCheckedAt === Number.NEGATIVE_INFINITY || classifyDatabaseError(error)?.kind !== 'unavailable')
          throw error;
        return this.keysSeen;
      }
      this.noKeysCheckedAt = performance.now();
    }
    return this.keysSeen;
  }

  /** The mode, why, and what to do about it: the start-up log line. */
  async describe(): Promise<{ mode: 'on' | 'off' | 'until-first-key'; level: 'info' | 'warn'; message: string }> {
    const { setting, production } = this.options;
    if (setting === 'off') {
      return {
        mode: 'off',
        level: 'warn',
        message:
          'Authentication is off (AUTH=off): anyone who can reach the service can read and write. Unset AUTH to ' +
          'require API keys',
      };
    }
    const why = setting === 'on' ? 'AUTH=on' : production ? 'NODE_ENV=production' : 'API keys exist';
    if (setting === 'on' || production) {
      const keys = await anyApiKeyExists();
      if (!keys) {
        return {
          mode: 'on',
          level: 'warn',
          message:
            `Authentication is on (${why}) and no API key exists yet: every request will be refused. ` +
            'Create one with `npm run keys -- create --scope read --name <name>`',
        };
      }
      return {
        mode: 'on',
        level: 'info',
        message: `Authentication is on (${why}): requests need an API key (\`npm run keys -- list\`)`,
      };
    }
    if (await this.required())
      return { mode: 'on', level: 'info', message: `Authentication is on (${why}): requests need an API key` };
    return {
      mode: 'until-first-key',
      level: 'warn',
      message:
        'Authentication is off until the first API key is created (AUTH=auto, not production): anyone can read ' +
        'and write. ' +
        'Create a key with `npm run keys -- create --scope admin --name <name>` to require keys',
    };
  }
}

function unauthenticated(message: string, invalidToken: boolean) {
  const challenge = invalidToken ? `Bearer realm="${REALM}", error="invalid_token"` : `Bearer realm="${REALM}"`;
  return httpError(message, 'UNAUTHENTICATED', 401, {}, { 'WWW-Authenticate': challenge });
}

/** The caller of each request, found in onRequestParse and read by the context factory. */
const callers = new WeakMap<Request, Caller>();

const KEY_REFUSED = 'The API key is not valid: it is unknown or has been revoked.';

export function callerOf(request: Request): Caller {
  return callers.get(request) ?? ANONYMOUS;
}

/** The key of a `Bearer <key>` header and its hash; null when the header has another shape. */
function bearerKey(header: string): { key: string; hash: string } | null {
  const key = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header)?.[1];
  return key ? { key, hash: hashKey(key) } : null;
}

/**
 * The caller an Authorization header names; throws the 401 when a key is required and missing, malformed or refused.
 */
export async function identify(
  header: string | null | undefined,
  policy: AuthPolicy,
  setting: AuthSetting,
): Promise<Caller> {
  if (setting === 'off') return ANONYMOUS;
  if (header == null || header.trim() === '') {
    if (await policy.required()) {
      throw unauthenticated(
        'This service needs an API key: send it as the header `Authorization: Bearer <key>`.',
        false,
      );
    }
    return ANONYMOUS;
  }
  const bearer = bearerKey(header);
  if (!bearer)
    throw unauthenticated('The Authorization header must be `Bearer <key>`, with the API key after one space.', true);
  const caller = await authenticateApiKey(bearer.key, bearer.hash);
  if (!caller) throw unauthenticated(KEY_REFUSED, true);
  return caller;
}

export function useAuthentication(policy: AuthPolicy, setting: AuthSetting, logger: Logger): Plugin {
  return {
    async onRequestParse({ request }) {
      const caller = await identify(request.headers.get('authorization'), policy, setting);
      callers.set(request, caller);
      if (caller.keyId) logger.debug({ apiKey: caller.keyId }, 'Authenticated');
    },
  };
}

/** The 403 for an operation that selects a root field the caller's scopes do not cover; null when they cover it. */
export function scopeError(
  args: { schema: GraphQLSchema; document: import('graphql').DocumentNode; operationName?: string | null },
  caller: Caller,
): GraphQLError | null {
  const operation = findOperation(args.document, args.operationName);
  if (!operation) return null;
  const missing = new Map<Scope, string[]>();
  for (const field of rootFields(args.document, operation)) {
    const scope = requiredScope(args.schema, operation.operation, field.name.value);
    if (scope && !hasScope(caller.scopes, scope)) missing.set(scope, [...(missing.get(scope) ?? []), field.name.value]);
  }
  if (missing.size === 0) return null;
  const needs = [...missing.entries()].map(
    ([scope, fields]) => `\`${scope}\` (for ${[...new Set(fields)].join(', ')})`,
  );
  const who = caller.keyId ? `The API key ${caller.keyId}` : 'This caller';
  return httpError(
    `${who} lacks the scope ${needs.join(' and ')}; its scopes: ${caller.scopes.join(', ') || 'none'}.`,
    'FORBIDDEN',
    403,
    { requiredScopes: [...missing.keys()] },
  );
}

/** The scope check of a request about to run (its caller from the context): see security.ts executionChecks. */
export function scopeCheck(args: ExecutionArgs): GraphQLError | null {
  return scopeError(args, (args.contextValue as RequestContext).caller ?? ANONYMOUS);
}
