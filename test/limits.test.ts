/**
 * Every query limit, through HTTP against the real service: each refuses with its own code before any SQL runs, and
 * the limits agree with the API (a full page and a full batch pass; anything past them does not). Also: masked errors
 * carry the request id, no "Did you mean" or introspection in production, GET mutations and CSRF refused, and the
 * per-key ingest rate limit answers 429 with Retry-After. (The 413 body limit is tested in http.test.ts.)
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type GraphQLObjectType, getNamedType, isLeafType } from 'graphql';
import { loadConfig } from '../src/config.js';
import { schema } from '../src/schema/index.js';
import { PAGE_LIMITS } from '../src/services/metric-query.js';
import { INGEST, nowSeconds, record, startTestService, type TestService } from './support/harness.js';
import { assertRefused, makeKey, withoutUserMetrics } from './support/security.js';

const countRows = async (service: TestService) =>
  (await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics'))[0]?.n;

/** Every leaf field of a type, from the schema itself: "every field" stays true when fields are added. */
function leaves(typeName: string): string {
  const type = schema.getType(typeName) as GraphQLObjectType;
  return Object.values(type.getFields())
    .filter((f) => isLeafType(getNamedType(f.type)))
    .map((f) => f.name)
    .join(' ');
}
const PAGE_SELECTION = `totalCount edges { cursor node { ${leaves('UserMetric')} } } pageInfo { ${leaves('PageInfo')} }`;

describe('production defaults', () => {
  let service: TestService;
  let read: Awaited<ReturnType<typeof makeKey>>;
  let ingest: Awaited<ReturnType<typeof makeKey>>;
  const asRead = (query: string, variables?: Record<string, unknown>, headers: Record<string, string> = {}) =>
    service.request(query, variables, { ...read.headers, ...headers });

  test('start', async () => {
    service = await startTestService({ NODE_ENV: 'production' });
    read = await makeKey(['read']);
    ingest = await makeKey(['ingest']);
    const defaults = loadConfig({ NODE_ENV: 'production' });
    assert.deepEqual(
      [defaults.maxDepth, defaults.maxAliases, defaults.maxTokens, defaults.maxDirectives, defaults.maxCost],
      [6, 15, 1000, 50, 5000],
    );
    assert.deepEqual([defaults.introspection, defaults.fieldSuggestions, defaults.graphiql], [false, false, false]);
  });

  test('a full batch (MAX_BATCH_SIZE records as a variable) is accepted', async () => {
    const size = service.config.maxBatchSize;
    const base = nowSeconds() - 86_400;
    const records = Array.from({ length: size }, (_, i) =>
      record({ eventId: `full-${i}`, userId: `user-${i % 7}`, sessionId: `s-${i}`, timestamp: base + i }),
    );
    const result = await service.gql(INGEST, { records }, ingest.headers);
    assert.deepEqual(result.ingestMetrics, { accepted: size, duplicates: 0, rejected: [] });
    assert.equal(await countRows(service), size);
  });

  test('a full page (first: 1000, every field) is allowed as a literal and as a variable', async () => {
    const max = PAGE_LIMITS.maxFirst;
    const literal = await asRead(`{ metrics(first: ${max}) { ${PAGE_SELECTION} } }`);
    assert.equal(literal.errors, undefined, JSON.stringify(literal.errors));
    assert.equal(literal.data?.metrics.edges.length, max);
    assert.equal(literal.data?.metrics.totalCount, await countRows(service));
    const variable = await asRead(`query($n: Int) { metrics(first: $n) { ${PAGE_SELECTION} } }`, { n: max });
    assert.equal(variable.errors, undefined, JSON.stringify(variable.errors));
    assert.deepEqual(variable.data, literal.data);
  });

  test('past the limits: page 1001, batch MAX_BATCH_SIZE + 1, cost, aliases, tokens, directives — each refused before any SQL', async () => {
    const size = service.config.maxBatchSize;
    const before = await countRows(service);
    const page = (alias: string, first: string) => `${alias}: metrics(first: ${first}) { ${PAGE_SELECTION} }`;
    const ids = Array.from({ length: 1000 }, (_, i) => `"u${i}"`).join(', ');
    await withoutUserMetrics(service, async () => {
      const armed = await asRead(`{ metrics(first: 1) { totalCount } }`);
      assert.equal(armed.errors?.[0]?.extensions?.code, 'INTERNAL_SERVER_ERROR', 'the trap is armed');

      const tooBigPage = await asRead(`query($n: Int) { metrics(first: $n) { totalCount } }`, {
        n: PAGE_LIMITS.maxFirst + 1,
      });
      assert.equal(tooBigPage.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(tooBigPage.errors));
      assert.match(tooBigPage.errors?.[0]?.message ?? '', /first must be between 1 and 1000/);

      const records = Array.from({ length: size + 1 }, (_, i) => record({ eventId: `over-${i}` }));
      const tooBigBatch = await service.request(INGEST, { records }, ingest.headers);
      assert.equal(
        tooBigBatch.errors?.[0]?.extensions?.code,
        'BATCH_TOO_LARGE',
        JSON.stringify(tooBigBatch.errors).slice(0, 500),
      );

      // Two full pages in one operation: literal, and through variables (graphql-armor's own cost rule counts `$n` as 1).
      const cost = assertRefused(
        await asRead(`{ ${page('a', '1000')} ${page('b', '1000')} }`),
        'COST_LIMIT_EXCEEDED',
        400,
      );
      assert.equal(cost.extensions?.limit, 5000);
      assert.ok(Number(cost.extensions?.found) > 5000);
      assertRefused(
        await asRead(`query($n: Int) { ${page('a', '$n')} ${page('b', '$n')} }`, { n: 1000 }),
        'COST_LIMIT_EXCEEDED',
        400,
      );

      const aliases = (n: number) =>
        `{ ${Array.from({ length: n }, (_, i) => `m${i}: metric(id: "${i + 1}") { id }`).join(' ')} }`;
      const alias = assertRefused(await asRead(aliases(16)), 'ALIAS_LIMIT_EXCEEDED', 400);
      assert.match(alias.message, /16 aliases; at most 15/);

      const tokens = assertRefused(
        await asRead(`{ metrics(where: { userId: { in: [${ids}] } }) { totalCount } }`),
        'TOKEN_LIMIT_EXCEEDED',
        400,
      );
      assert.match(tokens.message, /more than 1000 tokens.*variables/);

      const directives = (n: number) =>
        `{ ${Array.from({ length: n }, () => '__typename @include(if: true)').join(' ')} }`;
      const directive = assertRefused(await asRead(directives(51)), 'DIRECTIVE_LIMIT_EXCEEDED', 400);
      assert.match(directive.message, /51 directives; at most 50/);

      // At the limits, nothing is refused by a limit (the trap makes the aliased reads fail inside the database).
      const atAliasLimit = await asRead(aliases(15));
      assert.ok(
        atAliasLimit.errors?.every((e) => e.extensions?.code === 'INTERNAL_SERVER_ERROR'),
        JSON.stringify(atAliasLimit.errors).slice(0, 300),
      );
      assert.deepEqual((await asRead(directives(50))).data, { __typename: 'Query' });
    });
    assert.equal(await countRows(service), before);
    // The same long filter as a variable is not a token problem (1,000 values is the filter's own limit).
    const variable = await asRead(
      'query($ids: [String!]) { metrics(where: { userId: { in: $ids } }) { totalCount } }',
      {
        ids: Array.from({ length: 1000 }, (_, i) => `u${i}`),
      },
    );
    assert.equal(variable.errors, undefined);
  });

  test('an unexpected error is masked: no SQL, no stack, no internal message; it carries the request id', async () => {
    const response = await withoutUserMetrics(service, () =>
      asRead('{ metrics { totalCount } }', undefined, { 'x-request-id': 'limits-test-42' }),
    );
    assert.equal(response.headers.get('x-request-id'), 'limits-test-42');
    const [error] = response.errors ?? [];
    assert.equal(error?.extensions?.code, 'INTERNAL_SERVER_ERROR');
    assert.equal(error?.extensions?.requestId, 'limits-test-42');
    const body = JSON.stringify(response.errors);
    for (const leak of [/user_metrics/i, /relation/i, /select/i, /\bat .*\.(ts|js):\d+/, /prisma/i, /stack/i]) {
      assert.doesNotMatch(body, leak);
    }
  });

  test('no "Did you mean" hints and no introspection in production; __typename still works', async () => {
    const field = await asRead('{ metricz { totalCount } }');
    assert.match(field.errors?.[0]?.message ?? '', /Cannot query field "metricz"/);
    const enumValue = await asRead('query($o: [MetricOrder!]) { metrics(orderBy: $o) { totalCount } }', {
      o: [{ field: 'TIMESTAMPS' }],
    });
    assert.ok(enumValue.errors?.length);
    for (const message of [...(field.errors ?? []), ...(enumValue.errors ?? [])].map((e) => e.message)) {
      assert.doesNotMatch(message, /Did you mean/);
    }
    assertRefused(await asRead('{ __schema { queryType { name } } }'), 'INTROSPECTION_DISABLED', 400);
    assertRefused(await asRead('{ __type(name: "Query") { name } }'), 'INTROSPECTION_DISABLED', 400);
    assert.deepEqual((await asRead('{ __typename }')).data, { __typename: 'Query' });
  });

  test('GraphiQL is off; a mutation over GET is refused (405); CSRF: a GET or form POST without a preflight header is refused', async () => {
    const page = await fetch(`${service.url}/graphql`, { headers: { accept: 'text/html' } });
    assert.doesNotMatch(page.headers.get('content-type') ?? '', /text\/html/);
    await page.arrayBuffer();

    const before = await countRows(service);
    const mutation = encodeURIComponent('mutation { ingestMetrics(records: []) { accepted } }');
    const viaGet = await fetch(`${service.url}/graphql?query=${mutation}`, {
      headers: { ...ingest.headers, accept: 'application/json' },
    });
    assert.equal(viaGet.status, 405, await viaGet.clone().text());
    assert.match(await viaGet.text(), /mutation operation from a POST request/);
    assert.equal(await countRows(service), before);

    const query = encodeURIComponent('{ metrics(first: 1) { totalCount } }');
    const plainGet = await fetch(`${service.url}/graphql?query=${query}`);
    assert.equal(plainGet.status, 403);
    assert.match(await plainGet.text(), /CSRF_PREVENTED/);
    const form = await fetch(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `query=${query}`,
    });
    assert.equal(form.status, 403);
    assert.match(await form.text(), /x-graphql-yoga-csrf/);
    // With the header a browser cannot add cross-site without asking, the GET goes on to authentication, then runs.
    const withHeader = await fetch(`${service.url}/graphql?query=${query}`, {
      headers: { 'x-graphql-yoga-csrf': '1' },
    });
    assert.equal(withHeader.status, 401);
    await withHeader.arrayBuffer();
    const authorized = await fetch(`${service.url}/graphql?query=${query}`, {
      headers: { ...read.headers, accept: 'application/json' },
    });
    assert.equal(authorized.status, 200);
    assert.equal(
      ((await authorized.json()) as { data: { metrics: { totalCount: number } } }).data.metrics.totalCount,
      before,
    );
  });

  test('stop', async () => {
    await service.stop();
  });
});

describe('configured limits outside production', () => {
  let service: TestService;

  test('start', async () => {
    service = await startTestService({
      AUTH: 'on',
      MAX_DEPTH: '3',
      MAX_BATCH_SIZE: '10',
      INGEST_RATE_REQUESTS: '1',
      INGEST_RATE_RECORDS: '2',
    });
  });

  test('MAX_DEPTH is enforced before any SQL; suggestions and introspection are on by default', async () => {
    const read = await makeKey(['read']);
    await withoutUserMetrics(service, async () => {
      const deep = assertRefused(
        await service.request('{ metrics { edges { node { id } } } }', undefined, read.headers),
        'DEPTH_LIMIT_EXCEEDED',
        400,
      );
      assert.match(deep.message, /4 levels deep; at most 3/);
      assert.deepEqual([deep.extensions?.limit, deep.extensions?.found], [3, 4]);
    });
    assert.equal(
      (await service.request('{ metrics { pageInfo { hasNextPage } } }', undefined, read.headers)).status,
      200,
    );
    const hint = await service.request('{ metricz { totalCount } }', undefined, read.headers);
    assert.match(hint.errors?.[0]?.message ?? '', /Did you mean .*"metrics"/);
    const introspection = await service.request('{ __schema { queryType { name } } }', undefined, read.headers);
    assert.deepEqual(introspection.data, { __schema: { queryType: { name: 'Query' } } });
  });

  test('ingest rate per key: requests and records per second, 429 with Retry-After, nothing stored, other keys unaffected', async () => {
    const [a, b, c] = [await makeKey(['ingest']), await makeKey(['ingest']), await makeKey(['admin'])];
    const send = (key: typeof a, n: number, tag: string) =>
      service.request(
        INGEST,
        { records: Array.from({ length: n }, (_, i) => record({ eventId: `${tag}-${i}` })) },
        key.headers,
      );
    const before = await countRows(service);

    // Requests: one per second, so a second request at once is refused.
    assert.equal((await send(a, 1, 'a1')).status, 200);
    const second = await send(a, 1, 'a2');
    const limited = assertRefused(second, 'RATE_LIMITED', 429);
    assert.equal(second.headers.get('retry-after'), '1');
    assert.equal(limited.extensions?.retryAfter, 1);
    assert.equal(limited.extensions?.limitedBy, 'requests');
    // Another key has its own windows; reads are not rate limited.
    assert.equal((await send(c, 1, 'c1')).status, 200);
    for (let i = 0; i < 3; i++)
      assert.equal((await service.request('{ metrics { totalCount } }', undefined, c.headers)).status, 200);
    // After Retry-After, key a may ingest again.
    await new Promise((resolve) => setTimeout(resolve, 1000 * Number(second.headers.get('retry-after')) + 50));
    assert.equal((await send(a, 1, 'a3')).status, 200);

    // Records: 2 per second, in a window that holds a full batch (MAX_BATCH_SIZE=10: 10 records per 5 s). A full batch,
    // then another a second later: the request window has passed, the records window has not.
    const sentFirst = performance.now();
    assert.equal((await send(b, 10, 'b1')).status, 200);
    const answeredFirst = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 1050));
    const sentSecond = performance.now();
    const records = await send(b, 10, 'b2');
    const answeredSecond = performance.now();
    const recordsLimited = assertRefused(records, 'RATE_LIMITED', 429);
    assert.equal(recordsLimited.extensions?.limitedBy, 'records');
    // The records window began with the first batch and ends 5 s later: T seconds on, T between these bounds, 5 - T s.
    const [tMin, tMax] = [(sentSecond - answeredFirst) / 1000, (answeredSecond - sentFirst) / 1000];
    const expected = [Math.max(1, Math.ceil(5 - tMax)), Math.max(1, Math.ceil(5 - tMin))];
    const retryAfter = Number(records.headers.get('retry-after'));
    assert.ok(
      retryAfter >= (expected[0] ?? 0) && retryAfter <= (expected[1] ?? 0),
      `Retry-After ${retryAfter}, expected within ${expected}`,
    );
    assert.equal(recordsLimited.extensions?.retryAfter, retryAfter);

    assert.equal(await countRows(service), (before ?? 0) + 1 + 1 + 1 + 10);
  });

  test('stop', async () => {
    await service.stop();
  });
});
