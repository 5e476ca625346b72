/**
 * API key management over GraphQL, for holders of an `admin` key: the same operations as `npm run keys`, usable while
 * the service runs (the embedded database cannot be opened by a second process then).
 */

import {
  type ApiKeyInfo,
  createApiKey,
  listApiKeys,
  NAME_MAX_LENGTH,
  revokeApiKey,
  SCOPES,
} from '../services/api-keys.js';
import { builder } from './builder.js';

const ADMIN = { requiredScope: 'admin' } as const;

const ApiKeyScope = builder.enumType('ApiKeyScope', {
  description: 'What a key may do. `admin` includes the other two.',
  values: {
    ingest: { value: 'ingest', description: 'Call `ingestMetrics`.' },
    read: { value: 'read', description: 'Run queries and subscriptions.' },
    admin: { value: 'admin', description: 'Manage API keys, and everything `ingest` and `read` allow.' },
  } as const,
});

const ApiKey = builder.objectRef<ApiKeyInfo>('ApiKey').implement({
  description: 'An API key, without its secret (only a hash of it is stored).',
  fields: (t) => ({
    id: t.exposeID('id', {
      description: "The key's prefix and first characters, e.g. `mk_Ab3dE9xQ`: the key starts with it.",
    }),
    name: t.exposeString('name'),
    scopes: t.field({ type: [ApiKeyScope], resolve: (k) => k.scopes }),
    createdAt: t.field({ type: 'DateTime', resolve: (k) => k.createdAt }),
    lastUsedAt: t.field({
      type: 'DateTime',
      nullable: true,
      description: 'When the key last authenticated a request, to the minute.',
      resolve: (k) => k.lastUsedAt,
    }),
    revokedAt: t.field({ type: 'DateTime', nullable: true, resolve: (k) => k.revokedAt }),
  }),
});

const CreatedApiKey = builder.objectRef<{ key: string; apiKey: ApiKeyInfo }>('CreatedApiKey').implement({
  fields: (t) => ({
    key: t.exposeString('key', {
      description:
        'The key to send as `Authorization: Bearer <key>`. Shown this once: it is not stored and cannot be shown ' +
        'again.',
    }),
    apiKey: t.field({ type: ApiKey, resolve: (c) => c.apiKey }),
  }),
});

builder.queryField('apiKeys', (t) =>
  t.field({
    type: [ApiKey],
    description: 'Every API key, newest first, revoked ones included. Needs the `admin` scope.',
    extensions: ADMIN,
    resolve: () => listApiKeys(),
  }),
);

builder.mutationFields((t) => ({
  createApiKey: t.field({
    type: CreatedApiKey,
    description: 'Creates an API key and returns it once. Needs the `admin` scope.',
    extensions: ADMIN,
    args: {
      name: t.arg.string({ required: true, description: `What the key is for, 1..${NAME_MAX_LENGTH} characters.` }),
      scopes: t.arg({ type: [ApiKeyScope], required: true, description: `Any of ${SCOPES.join(', ')}.` }),
    },
    resolve: async (_root, args) => {
      const { key, info } = await createApiKey({ name: args.name, scopes: args.scopes });
      return { key, apiKey: info };
    },
  }),
  revokeApiKey: t.field({
    type: ApiKey,
    nullable: true,
    description:
      'Revokes a key by id: it is refused from the next request on. Revoking a revoked key changes nothing. ' +
      'Null when there is no such key. Needs the `admin` scope.',
    extensions: ADMIN,
    args: { id: t.arg.id({ required: true }) },
    resolve: async (_root, args) => (await revokeApiKey(String(args.id)))?.info ?? null,
  }),
}));
