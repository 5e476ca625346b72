/**
 * Authentication and scopes.
 *
 * 1. Before the request body is even parsed, the `Authorization: Bearer <key>` header is checked against the hashed
 *    keys in the database (one index probe, not cached, so a revocation holds from the next request on). A missing or
 *    wrong key is refused with 401 and `WWW-Authenticate`.
 *    A key that already authenticated in this process does not wait for its lookup: the request goes ahead while the
 *    lookup runs (it runs for every request all the same). A read executes meanwhile, but its answer waits for the
 *    lookup and is replaced by the 401 if the key is no longer valid; a mutation or a subscription does not start
 *    before the lookup has confirmed the key. So a revoked key gets nothing from the next request on, and a valid
 *    key's read costs one round trip less (bench/README.md).
 * 2. After parsing and validation, before execution (so before any SQL of the operation), each root field the operation
 *    selects is checked against the key's scopes (scopeCheck); a missing scope is refused with 403 naming it.
 */
import type { ExecutionArgs, GraphQLError, GraphQLSchema, OperationTypeNode } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { AuthSetting } from '../config.js';
import type { RequestContext } from '../context.js';
import type { Logger } from '../logger.js';
import {
  ANONYMOUS,
  type Caller,
  type Scope,
  anyApiKeyExists,
  apiKeyCreatedInThisProcess,
  authenticateApiKey,
  hasScope,
  hashKey,
  isScope,
} from '../services/api-keys.js';
import { findOperation, httpError, rootFields } from './operation.js';

const REALM = 'metrics-service';

/**
 * Root fields whose scope differs from their operation type's default (query and subscription fields need `read`,
 * mutation fields `admin`, so that a new mutation is admin-only until it is listed here). A field can also declare
 * `extensions: { requiredScope: '...' }` in the schema.
 */
const ROOT_FIELD_SCOPES: Readonly<Record<string, Scope>> = {
  'mutation.ingestMetrics': 'ingest',
};
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
  return ROOT_FIELD_SCOPES[`${operation}.${fieldName}`] ?? DEFAULT_SCOPES[operation];
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
      this.keysSeen = await anyApiKeyExists();
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
        message: 'Authentication is off (AUTH=off): anyone who can reach the service can read and write. Unset AUTH to require API keys',
      };
    }
    const why = setting === 'on' ? 'AUTH=on' : production ? 'NODE_ENV=production' : 'API keys exist';
    if (setting === 'on' || production) {
      const keys = await anyApiKeyExists();
      if (!keys) {
        return {
          mode: 'on',
          level: 'warn',
          message: `Authentication is on (${why}) and no API key exists yet: every request will be refused. ` +
            'Create one with `npm run keys -- create --scope read --name <name>`',
        };
      }
      return { mode: 'on', level: 'info', message: `Authentication is on (${why}): requests need an API key (\`npm run keys -- list\`)` };
    }
    if (await this.required()) return { mode: 'on', level: 'info', message: `Authentication is on (${why}): requests need an API key` };
    return {
      mode: 'until-first-key',
      level: 'warn',
      message: 'Authentication is off until the first API key is created (AUTH=auto, not production): anyone can read and write. ' +
        'Create a key with `npm run keys -- create` to require keys',
    };
  }
}

function unauthenticated(message: string, invalidToken: boolean) {
  const challenge = invalidToken ? `Bearer realm="${REALM}", error="invalid_token"` : `Bearer realm="${REALM}"`;
  return httpError(message, 'UNAUTHENTICATED', 401, {}, { 'WWW-Authenticate': challenge });
}

/** The caller of each request, found in onRequestParse and read by the context factory. */
const callers = new WeakMap<Request, Caller>();

/**
 * Keys that authenticated in this process, by hash, with their caller: a hint that lets a request go ahead while its
 * lookup runs, never a pass (see the module comment). A key's scopes are fixed when it is made (there is no way to
 * change them, only to revoke the key), so the hint's scopes are the key's. A key its lookup refuses leaves the map.
 */
const knownKeys = new Map<string, Caller>();
/** Bound on knownKeys: past it the map starts again empty (each key then waits for one lookup once more). */
const KNOWN_KEYS_MAX = 10_000;

/** The lookups still running for requests that went ahead on a hint. */
const pendingLookups = new WeakMap<Request, Promise<Caller | null>>();

const KEY_REFUSED = 'The API key is not valid: it is unknown or has been revoked.';

export function callerOf(request: Request): Caller {
  return callers.get(request) ?? ANONYMOUS;
}

/** Who a request's Authorization header says is calling; `confirmation` is set while that is only a hint (below). */
export interface Identified {
  caller: Caller;
  /**
   * The key's lookup, when the request goes ahead on a key this process already knows (see the module comment): its
   * answer must wait for this, and a null here means the key is no longer valid.
   */
  confirmation?: Promise<Caller | null>;
}

/** The key of a `Bearer <key>` header and its hash; null when the header has another shape. */
function bearerKey(header: string): { key: string; hash: string } | null {
  const key = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header)?.[1];
  return key ? { key, hash: hashKey(key) } : null;
}

/** Starts the lookup of a key; it keeps knownKeys up to date when it answers. */
function lookUp({ key, hash }: { key: string; hash: string }): Promise<Caller | null> {
  return authenticateApiKey(key, hash).then((caller) => {
    if (!caller) knownKeys.delete(hash);
    else if (!knownKeys.has(hash)) {
      if (knownKeys.size >= KNOWN_KEYS_MAX) knownKeys.clear();
      knownKeys.set(hash, caller);
    }
    return caller;
  });
}

/** For a key this process knows: its caller at once, its lookup started as the confirmation. Null otherwise. */
function hinted(bearer: { key: string; hash: string }): Identified | null {
  const known = knownKeys.get(bearer.hash);
  if (!known) return null;
  const confirmation = lookUp(bearer);
  // Settled later by whoever answers the request; a failed lookup must not become an unhandled rejection meanwhile.
  confirmation.catch(() => {});
  return { caller: known, confirmation };
}

/**
 * The caller an Authorization header names, at once, when that is a key this process already knows (or authentication
 * is off): its lookup is started (in the caller's synchronous section: see Database.together) and is the
 * confirmation. Null when only `identify` can tell.
 */
export function identifyKnown(header: string | null | undefined, setting: AuthSetting): Identified | null {
  if (setting === 'off') return { caller: ANONYMOUS };
  const bearer = header ? bearerKey(header) : null;
  return bearer && hinted(bearer);
}

/** The caller an Authorization header names; throws the 401 when a key is required and missing, malformed or refused. */
export async function identify(header: string | null | undefined, policy: AuthPolicy, setting: AuthSetting): Promise<Identified> {
  if (setting === 'off') return { caller: ANONYMOUS };
  if (header == null || header.trim() === '') {
    if (await policy.required()) {
      throw unauthenticated('This service needs an API key: send it as the header `Authorization: Bearer <key>`.', false);
    }
    return { caller: ANONYMOUS };
  }
  const bearer = bearerKey(header);
  if (!bearer) throw unauthenticated('The Authorization header must be `Bearer <key>`, with the API key after one space.', true);
  const known = hinted(bearer);
  if (known) return known;
  const caller = await lookUp(bearer);
  if (!caller) throw unauthenticated(KEY_REFUSED, true);
  return { caller };
}

export function useAuthentication(policy: AuthPolicy, setting: AuthSetting, logger: Logger): Plugin {
  return {
    async onRequestParse({ request }) {
      const { caller, confirmation } = await identify(request.headers.get('authorization'), policy, setting);
      callers.set(request, caller);
      if (confirmation) pendingLookups.set(request, confirmation);
      if (caller.keyId) logger.debug({ apiKey: caller.keyId }, 'Authenticated');
    },
  };
}

/**
 * For requests that went ahead on a known key (see the module comment): a mutation or subscription waits for the
 * key's lookup before it starts; a read runs beside it and its answer waits; a refused key gets the 401 instead of
 * anything the operation produced. After the execution plugin, whose execute function it wraps.
 */
export function useLookupBeforeAnswer(): Plugin {
  const refused = () => ({ errors: [unauthenticated(KEY_REFUSED, true)] });
  return {
    onExecute({ args, executeFn, setExecuteFn }) {
      const lookup = pendingLookups.get((args.contextValue as RequestContext).request);
      if (!lookup) return;
      if (findOperation(args.document, args.operationName)?.operation === 'query') {
        setExecuteFn(async (executionArgs) => {
          const execution = Promise.resolve(executeFn(executionArgs));
          execution.catch(() => {});
          // The lookup decides first: a refused key learns nothing from the execution, not even its errors.
          return (await lookup) ? execution : refused();
        });
      } else {
        setExecuteFn(async (executionArgs) => ((await lookup) ? executeFn(executionArgs) : refused()));
      }
    },
    onSubscribe({ args, subscribeFn, setSubscribeFn }) {
      const lookup = pendingLookups.get((args.contextValue as RequestContext).request);
      if (!lookup) return;
      setSubscribeFn(async (subscribeArgs) => ((await lookup) ? subscribeFn(subscribeArgs) : refused()));
    },
    // Answers that did not come from an execution (a parse or validation error): a refused key gets its 401 there too.
    async onResultProcess({ request, result, setResult }) {
      const lookup = pendingLookups.get(request);
      if (!lookup) return;
      // A lookup that failed (the database) decided nothing here: an execution waited for it and failed with it, and a
      // request that did not execute keeps its own answer (an error).
      if ((await lookup.catch(() => undefined)) !== null) return;
      // A stream that should not exist (subscriptions wait for the lookup above) is ended, not left registered.
      if (Symbol.asyncIterator in result) void result[Symbol.asyncIterator]().return?.();
      setResult(refused());
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
  const needs = [...missing.entries()].map(([scope, fields]) => `\`${scope}\` (for ${[...new Set(fields)].join(', ')})`);
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
