/**
 * The HTTP surface around GraphQL: health and readiness, GraphiQL, the request-body limit (declared and streamed),
 * request ids, and masking of unexpected errors. The body limit is set small here (MAX_BODY_BYTES) so the tests can
 * cross it cheaply; ingest.test.ts checks that the default fits a full batch.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { type GraphQLResponse, INGEST, record, startTestService, type TestService } from './support/harness.js';

const LIMIT = 200_000;
let service: TestService;
before(async () => {
  service = await startTestService({ MAX_BODY_BYTES: String(LIMIT) });
});
after(async () => {
  await service?.stop();
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const storedIn = async (sessionId: string) =>
  (
    await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics WHERE session_id = $1', [sessionId])
  )[0]?.n;

/** An ingestMetrics request body of at least `bytes` bytes (records of `sessionId`, padded with userId length). */
function ingestBody(sessionId: string, bytes: number): string {
  const records: Record<string, unknown>[] = [];
  let body = '';
  while (Buffer.byteLength(body) < bytes) {
    records.push(record({ sessionId, userId: 'u'.repeat(200), talkedTime: records.length }));
    body = JSON.stringify({ query: INGEST, variables: { records } });
  }
  return body;
}

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * POSTs `body` to /graphql in chunks without a Content-Length (Transfer-Encoding: chunked), stopping early if the
 * server answers first. A connection the server closes after answering is not an error.
 */
function postChunked(body: string, chunkSize = 16 * 1024): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = http.request(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
    });
    req.on('response', (res) => {
      answered = true;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', (error) => {
      if (!answered) reject(error);
    });
    const bytes = Buffer.from(body);
    void (async () => {
      for (let offset = 0; offset < bytes.length && !answered && !req.destroyed; offset += chunkSize) {
        req.write(bytes.subarray(offset, offset + chunkSize));
        await new Promise((r) => setTimeout(r, 2));
      }
      if (!answered && !req.destroyed) req.end();
    })();
  });
}

test('GET /health answers 200 without touching the database', async () => {
  const response = await fetch(`${service.url}/health`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('x-request-id') ?? '', UUID);
});

test('GET /ready answers 200 on a reachable, migrated database and 503 when a migration is pending', async () => {
  const ready = await fetch(`${service.url}/ready`);
  assert.equal(ready.status, 200, await ready.text());
  const saved = await service.sql('DELETE FROM "_prisma_migrations" RETURNING *');
  assert.ok(saved.length > 0);
  try {
    const notReady = await fetch(`${service.url}/ready`);
    assert.equal(notReady.status, 503);
    const body = (await notReady.json()) as { ready: boolean; reason: string };
    assert.equal(body.ready, false);
    assert.match(body.reason, /pending migrations/);
  } finally {
    for (const row of saved) {
      const columns = Object.keys(row);
      await service.sql(
        `INSERT INTO "_prisma_migrations" (${columns.map((c) => `"${c}"`).join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')})`,
        columns.map((c) => row[c]),
      );
    }
  }
  assert.equal((await fetch(`${service.url}/ready`)).status, 200);
});

test('GET /graphql from a browser serves GraphiQL (text/html) with the example operations', async () => {
  const response = await fetch(`${service.url}/graphql`, { headers: { accept: 'text/html' } });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/html/);
  const html = await response.text();
  assert.match(html, /graphiql/i);
  assert.match(html, /ingestMetrics/);
  assert.match(html, /metrics\(/);
});

test('GraphiQL can run subscriptions: its requests carry the CSRF header, and a GET subscription with it streams', async () => {
  const html = await (await fetch(`${service.url}/graphql`, { headers: { accept: 'text/html' } })).text();
  assert.match(html, /"additionalHeaders":\{"x-graphql-yoga-csrf":"1"\}/);
  const controller = new AbortController();
  const query = encodeURIComponent('subscription { metricIngested { id } }');
  const response = await fetch(`${service.url}/graphql?query=${query}`, {
    headers: { accept: 'text/event-stream', 'x-graphql-yoga-csrf': '1' },
    signal: controller.signal,
  });
  try {
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  } finally {
    controller.abort();
  }
});

test('POST /graphql answers a query as JSON with a request id', async () => {
  const response = await service.request('{ __typename }');
  assert.equal(response.status, 200);
  assert.deepEqual(response.data, { __typename: 'Query' });
  assert.match(response.headers.get('x-request-id') ?? '', UUID);
});

test('a client request id is kept when it is plain, replaced when it is not', async () => {
  const kept = await service.request('{ __typename }', undefined, { 'x-request-id': 'client-req.42:a_b' });
  assert.equal(kept.headers.get('x-request-id'), 'client-req.42:a_b');
  for (const bad of ['has spaces in it', 'x'.repeat(200), 'semi;colon']) {
    const replaced = await service.request('{ __typename }', undefined, { 'x-request-id': bad });
    assert.match(replaced.headers.get('x-request-id') ?? '', UUID, bad);
  }
  const a = await service.request('{ __typename }');
  const b = await service.request('{ __typename }');
  assert.notEqual(a.headers.get('x-request-id'), b.headers.get('x-request-id'), 'each request gets its own');
});

test('a body over the limit is refused with 413 by its Content-Length, storing nothing', async () => {
  const body = ingestBody('too-large-declared', LIMIT + 1);
  const response = await fetch(`${service.url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body,
  });
  assert.equal(response.status, 413);
  assert.match(response.headers.get('x-request-id') ?? '', UUID);
  const payload = (await response.json()) as {
    errors: Array<{ message: string; extensions: { code: string; limit: number } }>;
  };
  assert.equal(payload.errors[0]?.extensions.code, 'PAYLOAD_TOO_LARGE');
  assert.equal(payload.errors[0]?.extensions.limit, LIMIT);
  assert.match(payload.errors[0]?.message ?? '', new RegExp(String(LIMIT)));
  assert.equal(await storedIn('too-large-declared'), 0);
});

test('a body at the limit is accepted', async () => {
  const records: Record<string, unknown>[] = [];
  let body = '';
  for (let i = 0; ; i++) {
    const next = JSON.stringify({
      query: INGEST,
      variables: {
        records: [...records, record({ sessionId: 'at-body-limit', talkedTime: i, userId: 'u'.repeat(200) })],
      },
    });
    if (Buffer.byteLength(next) > LIMIT) break;
    records.push(record({ sessionId: 'at-body-limit', talkedTime: i, userId: 'u'.repeat(200) }));
    body = next;
  }
  // Pad with whitespace to exactly the limit.
  body = body.replace(/\}$/, `${' '.repeat(LIMIT - Buffer.byteLength(body))}}`);
  assert.equal(Buffer.byteLength(body), LIMIT);
  const response = await fetch(`${service.url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body,
  });
  assert.equal(response.status, 200, (await response.clone().text()).slice(0, 500));
  const payload = (await response.json()) as { data: { ingestMetrics: { accepted: number } } };
  assert.equal(payload.data.ingestMetrics.accepted, records.length);
  assert.equal(await storedIn('at-body-limit'), records.length);
});

test('a chunked body over the limit is refused with 413 while it streams in, storing nothing', async () => {
  const response = await postChunked(ingestBody('too-large-chunked', LIMIT * 3));
  assert.equal(response.status, 413, response.body.slice(0, 500));
  assert.equal(response.headers['transfer-encoding'] === undefined || response.status === 413, true);
  const payload = JSON.parse(response.body) as { errors: Array<{ extensions: { code: string } }> };
  assert.equal(payload.errors[0]?.extensions.code, 'PAYLOAD_TOO_LARGE');
  assert.equal(await storedIn('too-large-chunked'), 0);
  // The service keeps serving.
  assert.equal((await service.request('{ __typename }')).status, 200);
});

test('a chunked body under the limit is read whole and processed', async () => {
  const body = ingestBody('chunked-ok', LIMIT / 2);
  const response = await postChunked(body, 4096);
  assert.equal(response.status, 200, response.body.slice(0, 500));
  const payload = JSON.parse(response.body) as { data: { ingestMetrics: { accepted: number; rejected: unknown[] } } };
  const sent = (JSON.parse(body) as { variables: { records: unknown[] } }).variables.records.length;
  assert.deepEqual(payload.data.ingestMetrics.rejected, []);
  assert.equal(payload.data.ingestMetrics.accepted, sent);
  assert.equal(await storedIn('chunked-ok'), sent);
});

test('an unexpected error is masked: a generic message, the request id, no internals', async () => {
  await service.sql('ALTER TABLE user_metrics RENAME TO user_metrics_away');
  let response: GraphQLResponse;
  try {
    response = await service.request('{ metrics(first: 1) { edges { node { id } } } }', undefined, {
      'x-request-id': 'mask-check-1',
    });
  } finally {
    await service.sql('ALTER TABLE user_metrics_away RENAME TO user_metrics');
  }
  const [error] = response.errors ?? [];
  assert.ok(error, JSON.stringify(response));
  assert.equal(error.extensions?.code, 'INTERNAL_SERVER_ERROR');
  assert.equal(error.extensions?.requestId, 'mask-check-1');
  const text = JSON.stringify(response);
  for (const secret of ['user_metrics', 'relation', 'does not exist', 'prisma', 'stack', 'at ']) {
    assert.ok(!text.toLowerCase().includes(secret.toLowerCase()), `the response leaks "${secret}": ${text}`);
  }
  // And the service works again.
  assert.equal((await service.gql('{ metrics(first: 1) { edges { cursor } } }')).metrics.edges.length, 1);
});

test('client mistakes are not masked: they say what to fix', async () => {
  const response = await service.request('{ metrics(first: 0) { edges { cursor } } }');
  assert.equal(response.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT');
  assert.match(response.errors?.[0]?.message ?? '', /first must be between 1 and 1000/);
  const syntax = await service.request('{ metrics(');
  assert.ok(syntax.errors?.[0]?.message.includes('Syntax Error'), JSON.stringify(syntax));
});
