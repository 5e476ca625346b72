/**
 * Authentication and scopes, through HTTP against the real service and database: production refuses anonymous calls,
 * each scope can do exactly what it should, revoked keys stop at once, only hashes are stored, and the keys CLI works.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ConfigError, loadConfig } from '../src/config.js';
import {
  createTestDatabase,
  INGEST,
  record,
  startTestService,
  type TestService,
  usingPostgres,
} from './support/harness.js';
import { assertRefused, makeKey, withoutUserMetrics } from './support/security.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const run = promisify(execFile);

const READ = '{ metrics(first: 5) { totalCount edges { node { eventId userId } } } }';
const countRows = async (service: TestService) =>
  (await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics'))[0]?.n;

/** Each operation and the one scope (besides admin) that may run it. */
const OPERATIONS: Array<{
  name: string;
  scope: 'ingest' | 'read' | 'admin';
  query: string;
  variables?: () => Record<string, unknown>;
}> = [
  {
    name: 'ingestMetrics',
    scope: 'ingest',
    query: INGEST,
    variables: () => ({ records: [record({ eventId: crypto.randomUUID() })] }),
  },
  { name: 'metrics', scope: 'read', query: READ },
  { name: 'metric', scope: 'read', query: '{ metric(id: "1") { id } }' },
  { name: 'apiKeys', scope: 'admin', query: '{ apiKeys { id name scopes } }' },
  {
    name: 'createApiKey',
    scope: 'admin',
    query: 'mutation { createApiKey(name: "made by test", scopes: [read]) { key apiKey { id } } }',
  },
  { name: 'revokeApiKey', scope: 'admin', query: 'mutation { revokeApiKey(id: "mk_nosuchkey") { id } }' },
];

describe('production mode (NODE_ENV=production)', () => {
  let service: TestService;

  test('start', async () => {
    service = await startTestService({ NODE_ENV: 'production' });
  });

  test('an anonymous mutation is refused with 401, WWW-Authenticate and UNAUTHENTICATED; nothing is stored', async () => {
    const response = await service.request(INGEST, { records: [record({ eventId: 'anon-1' })] });
    const error = assertRefused(response, 'UNAUTHENTICATED', 401);
    assert.match(error.message, /Authorization: Bearer <key>/);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Bearer realm=/);
    assert.equal(await countRows(service), 0);
    // An anonymous query too.
    assertRefused(await service.request(READ), 'UNAUTHENTICATED', 401);
  });

  test('a wrong key, a malformed header and a key of the wrong shape are refused with 401', async () => {
    const unknown = `mk_${crypto.randomBytes(32).toString('base64url')}`;
    for (const authorization of [
      `Bearer ${unknown}`,
      'Bearer not-a-key',
      `Basic ${Buffer.from('a:b').toString('base64')}`,
      'Bearer',
    ]) {
      const response = await service.request(READ, undefined, { authorization });
      assertRefused(response, 'UNAUTHENTICATED', 401);
      assert.match(response.headers.get('www-authenticate') ?? '', /error="invalid_token"/, authorization);
    }
  });

  test('an ingest key stores a batch; a read key reads it back', async () => {
    const ingest = await makeKey(['ingest']);
    const read = await makeKey(['read']);
    const result = await service.gql(
      INGEST,
      { records: [record({ eventId: 'prod-1', userId: 'alice' })] },
      ingest.headers,
    );
    assert.deepEqual(result.ingestMetrics, { accepted: 1, duplicates: 0, rejected: [] });
    const data = await service.gql(READ, undefined, read.headers);
    assert.deepEqual(data.metrics.edges, [{ node: { eventId: 'prod-1', userId: 'alice' } }]);
  });

  test('an ingest key cannot query (403 naming `read`), a read key cannot ingest (403 naming `ingest`), before any SQL', async () => {
    const ingest = await makeKey(['ingest']);
    const read = await makeKey(['read']);
    const before = await countRows(service);
    await withoutUserMetrics(service, async () => {
      // The trap is armed: a permitted read fails inside the database.
      const armed = await service.request(READ, undefined, read.headers);
      assert.equal(armed.errors?.[0]?.extensions?.code, 'INTERNAL_SERVER_ERROR', JSON.stringify(armed.errors));

      const query = assertRefused(await service.request(READ, undefined, ingest.headers), 'FORBIDDEN', 403);
      assert.match(query.message, /lacks the scope `read` \(for metrics\)/);
      assert.deepEqual(query.extensions?.requiredScopes, ['read']);

      const mutation = assertRefused(
        await service.request(INGEST, { records: [record({ eventId: 'forbidden-1' })] }, read.headers),
        'FORBIDDEN',
        403,
      );
      assert.match(mutation.message, /lacks the scope `ingest` \(for ingestMetrics\)/);
    });
    assert.equal(await countRows(service), before);
  });

  test('each scope can do exactly what it should (admin: everything)', async () => {
    const keys = { ingest: await makeKey(['ingest']), read: await makeKey(['read']), admin: await makeKey(['admin']) };
    for (const [scope, key] of Object.entries(keys)) {
      for (const op of OPERATIONS) {
        const allowed = scope === 'admin' || scope === op.scope;
        const response = await service.request(op.query, op.variables?.(), key.headers);
        const label = `${scope} key, ${op.name}: ${JSON.stringify(response.errors ?? response.data).slice(0, 300)}`;
        if (allowed) {
          assert.equal(response.status, 200, label);
          assert.equal(response.errors, undefined, label);
          assert.ok(response.data?.[op.name] !== undefined, label);
        } else {
          const error = assertRefused(response, 'FORBIDDEN', 403);
          assert.deepEqual(error.extensions?.requiredScopes, [op.scope], label);
        }
      }
    }
  });

  test('a subscription needs `read`: refused for an ingest key, delivered for a read key', async () => {
    const ingest = await makeKey(['ingest']);
    const read = await makeKey(['read']);
    const subscribe = (headers: Record<string, string>, signal: AbortSignal) =>
      fetch(`${service.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...headers },
        body: JSON.stringify({ query: 'subscription { metricIngested { eventId } }' }),
        signal,
      });

    const refused = await subscribe(ingest.headers, AbortSignal.timeout(5000));
    const refusedBody = await refused.text();
    assert.match(refusedBody, /"code":"FORBIDDEN"/);
    assert.match(refusedBody, /lacks the scope `read` \(for metricIngested\)/);

    const controller = new AbortController();
    const stream = await subscribe(read.headers, controller.signal);
    assert.equal(stream.status, 200);
    const reader = stream.body?.getReader();
    assert.ok(reader);
    const decoder = new TextDecoder();
    let text = '';
    const received = (async () => {
      while (!text.includes('"eventId":"sub-')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
    })();
    // The subscription may take a moment to register: send records until one arrives.
    const writer = await makeKey(['ingest']);
    const deadline = Date.now() + 10_000;
    for (let i = 1; !text.includes('"eventId":"sub-') && Date.now() < deadline; i++) {
      await service.gql(INGEST, { records: [record({ eventId: `sub-${i}` })] }, writer.headers);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    controller.abort();
    await received.catch(() => {});
    assert.match(text, /"eventId":"sub-\d+"/);
  });

  test('a revoked key stops working at once (revoked through the admin API)', async () => {
    const admin = await makeKey(['admin']);
    const victim = await makeKey(['read']);
    assert.equal((await service.request(READ, undefined, victim.headers)).status, 200);
    const revoked = await service.gql(
      `mutation { revokeApiKey(id: "${victim.id}") { id revokedAt } }`,
      undefined,
      admin.headers,
    );
    assert.equal(revoked.revokeApiKey.id, victim.id);
    assert.ok(revoked.revokeApiKey.revokedAt);
    // The very next request.
    assertRefused(await service.request(READ, undefined, victim.headers), 'UNAUTHENTICATED', 401);
  });

  test('a key known to the process and then revoked behind its back gets nothing: no rows, no write, no subscription, no error detail', async () => {
    // Revoked in the database directly (as another instance or the CLI would) right after a request that succeeded, so
    // this process still knows the key as valid: the next request goes ahead while its lookup runs, and the lookup's
    // verdict must win. A refused lookup makes the process forget the key, so each case below starts from a valid key.
    const key = await makeKey(['ingest', 'read']);
    const revokeBehindItsBack = async () => {
      await service.sql('UPDATE api_keys SET revoked_at = NULL WHERE id = $1', [key.id]);
      assert.equal((await service.request(READ, undefined, key.headers)).status, 200);
      await service.sql('UPDATE api_keys SET revoked_at = now() WHERE id = $1', [key.id]);
    };
    assert.equal(
      (await service.request(INGEST, { records: [record({ eventId: 'known-1' })] }, key.headers)).status,
      200,
    );
    const before = await countRows(service);

    await revokeBehindItsBack();
    const read = await service.request(READ, undefined, key.headers);
    assert.match(assertRefused(read, 'UNAUTHENTICATED', 401).message, /revoked/);
    assert.match(read.headers.get('www-authenticate') ?? '', /error="invalid_token"/);

    // A mutation never starts.
    await revokeBehindItsBack();
    assertRefused(
      await service.request(INGEST, { records: [record({ eventId: 'known-2' })] }, key.headers),
      'UNAUTHENTICATED',
      401,
    );
    assert.equal(await countRows(service), before);

    // An invalid query and a read that fails are answered with the 401, not with what was wrong with them.
    await revokeBehindItsBack();
    assertRefused(await service.request('{ metrics { nosuchfield } }', undefined, key.headers), 'UNAUTHENTICATED', 401);
    await revokeBehindItsBack();
    assertRefused(
      await service.request('{ metrics(first: 0) { totalCount } }', undefined, key.headers),
      'UNAUTHENTICATED',
      401,
    );

    // A subscription is refused before it starts.
    await revokeBehindItsBack();
    const subscription = await fetch(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...key.headers },
      body: JSON.stringify({ query: 'subscription { metricIngested { eventId } }' }),
      signal: AbortSignal.timeout(5000),
    });
    const events = await subscription.text();
    assert.match(events, /"code":"UNAUTHENTICATED"/);
    assert.doesNotMatch(events, /"data"/);
  });

  test('a key made through createApiKey works at once and carries exactly its scopes', async () => {
    const admin = await makeKey(['admin']);
    const made = await service.gql(
      'mutation { createApiKey(name: "ci reader", scopes: [read]) { key apiKey { id name scopes revokedAt } } }',
      undefined,
      admin.headers,
    );
    const { key, apiKey } = made.createApiKey;
    assert.match(key, /^mk_[A-Za-z0-9_-]{43}$/);
    assert.equal(apiKey.id, key.slice(0, 11));
    assert.deepEqual(
      { ...apiKey, id: undefined },
      { id: undefined, name: 'ci reader', scopes: ['read'], revokedAt: null },
    );
    const headers = { authorization: `Bearer ${key}` };
    assert.equal((await service.request(READ, undefined, headers)).status, 200);
    assertRefused(await service.request(INGEST, { records: [record()] }, headers), 'FORBIDDEN', 403);
  });

  test("no plaintext key is stored anywhere in the database; the stored hash is the key's SHA-256", async () => {
    const keys = [await makeKey(['read']), await makeKey(['ingest', 'read']), await makeKey(['admin'])];
    const tables = await service.sql<{ name: string }>(
      `SELECT quote_ident(table_name) AS name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`,
    );
    assert.ok(tables.some((t) => t.name === 'api_keys'));
    let dump = '';
    for (const table of tables) {
      const rows = await service.sql<{ row: string }>(`SELECT t::text AS row FROM ${table.name} t`);
      dump += rows.map((r) => r.row).join('\n');
    }
    for (const { key, id } of keys) {
      const secret = key.slice(id.length); // what the public id does not show
      assert.ok(!dump.includes(secret), `the secret of ${id} is stored in plain text`);
      assert.ok(!dump.includes(Buffer.from(key).toString('hex')), `the key ${id} is stored as hex`);
      const [row] = await service.sql<{ hash: string }>(
        `SELECT encode(secret_hash, 'hex') AS hash FROM api_keys WHERE id = $1`,
        [id],
      );
      assert.equal(row?.hash, crypto.createHash('sha256').update(key).digest('hex'));
    }
  });

  test('last_used_at is set on first use and not rewritten on every request', async () => {
    const key = await makeKey(['read']);
    const lastUsed = async () =>
      (
        await service.sql<{ at: string | null }>(`SELECT last_used_at::text AS at FROM api_keys WHERE id = $1`, [
          key.id,
        ])
      )[0]?.at;
    assert.equal(await lastUsed(), null);
    const [before] = await service.sql<{ now: string }>('SELECT now()::text AS now');
    await service.gql(READ, undefined, key.headers);
    const first = await lastUsed();
    assert.ok(first && first >= (before?.now ?? ''), `last_used_at ${first} not set after ${before?.now}`);
    for (let i = 0; i < 3; i++) await service.gql(READ, undefined, key.headers);
    assert.equal(await lastUsed(), first);
  });

  test('stop', async () => {
    await service.stop();
  });
});

describe('AUTH=auto outside production', () => {
  test('open while no key exists; from the first key on, anonymous requests get 401', async () => {
    const service = await startTestService({ NODE_ENV: 'development' });
    try {
      assert.equal((await service.gql(INGEST, { records: [record({ eventId: 'open-1' })] })).ingestMetrics.accepted, 1);
      const key = await makeKey(['read']);
      assertRefused(await service.request(READ), 'UNAUTHENTICATED', 401);
      assert.equal((await service.request(READ, undefined, key.headers)).status, 200);
      // Revoking every key does not open the service again.
      await service.sql('UPDATE api_keys SET revoked_at = now()');
      assertRefused(await service.request(READ), 'UNAUTHENTICATED', 401);
    } finally {
      await service.stop();
    }
  });

  test('AUTH=off is refused with NODE_ENV=production; AUTH must be auto, on or off', () => {
    assert.throws(
      () => loadConfig({ NODE_ENV: 'production', AUTH: 'off' }),
      (e: unknown) => e instanceof ConfigError && /AUTH=off is refused/.test(e.message),
    );
    assert.throws(
      () => loadConfig({ AUTH: 'maybe' }),
      (e: unknown) => e instanceof ConfigError && /AUTH="maybe" must be auto, on or off/.test(e.message),
    );
    assert.equal(loadConfig({}).auth, 'auto');
    assert.equal(loadConfig({ AUTH: 'off' }).auth, 'off');
  });
});

describe('npm run keys (child processes)', () => {
  const keysCli = (env: Record<string, string>, ...args: string[]) =>
    run(process.execPath, ['--import', 'tsx', 'src/cli/keys.ts', ...args], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_URL: '', DATA_DIR: '', ...env },
      timeout: 60_000,
    }).then(
      (r) => ({ code: 0, stdout: r.stdout, stderr: r.stderr }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({
        code: e.code ?? -1,
        stdout: e.stdout ?? '',
        stderr: e.stderr ?? '',
      }),
    );

  test('create prints the key once, list shows it without its secret, the service accepts it, revoke stops it', async () => {
    const db = await createTestDatabase();
    const env: Record<string, string> = db.url ? { DATABASE_URL: db.url } : { DATA_DIR: db.dataDir };
    const services: TestService[] = [];
    const start = async () => {
      const service = await startTestService({ NODE_ENV: 'production', ...env });
      services.push(service);
      return service;
    };
    try {
      const created = await keysCli(env, 'create', '--scope', 'ingest,read', '--name', 'cli key');
      assert.equal(created.code, 0, created.stderr);
      const key = created.stdout.trim();
      assert.match(key, /^mk_[A-Za-z0-9_-]{43}$/);
      assert.match(created.stderr, /cannot be shown again/);
      const id = key.slice(0, 'mk_'.length + 8);
      const headers = { authorization: `Bearer ${key}` };

      const listed = await keysCli(env, 'list', '--json');
      assert.equal(listed.code, 0, listed.stderr);
      assert.ok(!listed.stdout.includes(key.slice(id.length)), 'list shows the secret');
      const infos = JSON.parse(listed.stdout) as Array<{
        id: string;
        name: string;
        scopes: string[];
        revokedAt: string | null;
      }>;
      assert.deepEqual(
        infos.map((k) => [k.id, k.name, k.scopes, k.revokedAt]),
        [[id, 'cli key', ['ingest', 'read'], null]],
      );

      let service = await start();
      assert.equal(
        (await service.gql(INGEST, { records: [record({ eventId: 'cli-1' })] }, headers)).ingestMetrics.accepted,
        1,
      );
      assert.equal((await service.gql(READ, undefined, headers)).metrics.totalCount, 1);

      if (usingPostgres) {
        // With PostgreSQL the CLI works beside the running service, and its revocation holds from the next request.
        const revoked = await keysCli(env, 'revoke', id);
        assert.equal(revoked.code, 0, revoked.stderr);
        assert.match(revoked.stdout, /Revoked/);
      } else {
        // The embedded database is locked by the running service: the CLI says so and what to do instead.
        const locked = await keysCli(env, 'list');
        assert.equal(locked.code, 1);
        assert.match(locked.stderr, /in use by process/);
        assert.match(locked.stderr, /stop it.*createApiKey/s);
        await service.stop();
        const revoked = await keysCli(env, 'revoke', id);
        assert.equal(revoked.code, 0, revoked.stderr);
        assert.match(revoked.stdout, /Revoked/);
        service = await start();
      }
      assertRefused(await service.request(READ, undefined, headers), 'UNAUTHENTICATED', 401);
    } finally {
      for (const service of services) await service.stop();
      await db.drop();
    }
  });
});
