/**
 * One request pipeline, tried as an attacker would against a production-mode instance: hostile JSON bodies while
 * /health is timed, a declared body that never comes, echoes of client text, lists without `first` in the cost, media
 * types, forged cursors, text after the JSON, NUL characters in arguments, bodies far over the limit. Each case was
 * found on the service before its requests all went through Yoga's pipeline; the test of each fails there.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Worker } from 'node:worker_threads';
import type { Plugin } from 'graphql-yoga';
import { record, startTestService, type TestService } from './support/harness.js';
import { makeKey } from './support/security.js';

let service: TestService;
let readKey: { key: string; headers: Record<string, string> };
let ingestKey: { key: string; headers: Record<string, string> };
let adminKey: { key: string; headers: Record<string, string> };
/** The body limit of the service under test (its default: what a full batch at every field's maximum length needs). */
let LIMIT: number;

before(async () => {
  service = await startTestService({ NODE_ENV: 'production', INGEST_RATE_REQUESTS: '0', INGEST_RATE_RECORDS: '0' });
  LIMIT = service.config.maxBodyBytes;
  readKey = await makeKey(['read']);
  ingestKey = await makeKey(['ingest']);
  adminKey = await makeKey(['admin']);
  const records = Array.from({ length: 40 }, (_, i) =>
    record({
      eventId: `p-${i}`,
      userId: `user-${i % 5}`,
      voiceSentiment: ['positive', 'neutral', 'negative', null][i % 4],
    }),
  );
  await service.gql(
    'mutation($r: [UserMetricInput!]!) { ingestMetrics(records: $r) { accepted } }',
    { r: records },
    ingestKey.headers,
  );
});

after(async () => {
  await service?.stop();
});

interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  ms: number;
}

/** POSTs a body (string or Buffer) with node:http; resolves with the whole answer, rejects on a network error. */
function post(body: string | Buffer, headers: Record<string, string> = {}, path = '/graphql'): Promise<RawAnswer> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const request = http.request(`${service.url}${path}`, {
      method: 'POST',
      agent: false,
      headers: {
        'content-type': 'application/json',
        accept: 'application/json',
        'content-length': String(Buffer.byteLength(body)),
        ...headers,
      },
    });
    request.on('error', reject);
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', reject);
      response.on('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          headers: response.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          ms: performance.now() - started,
        }),
      );
    });
    request.end(body);
  });
}

/** Times GET /health every 25 ms while `work` runs; resolves with the slowest probe's milliseconds. */
async function slowestHealthProbe(work: () => Promise<unknown>): Promise<number> {
  let slowest = 0;
  let running = true;
  const probes = (async () => {
    while (running) {
      const started = performance.now();
      const response = await fetch(`${service.url}/health`);
      await response.arrayBuffer();
      assert.equal(response.status, 200);
      slowest = Math.max(slowest, performance.now() - started);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  })();
  try {
    await work();
  } finally {
    running = false;
    await probes;
  }
  return slowest;
}

describe('1. hostile JSON bodies do not hold the event loop', () => {
  const ingest = 'mutation($records: [UserMetricInput!]!) { ingestMetrics(records: $records) { accepted } }';
  const bodies: Array<[string, () => string]> = [
    [
      '10^5 levels of nesting in the variables',
      () => `{"query":${JSON.stringify(ingest)},"variables":{"records":${'['.repeat(250_000)}${']'.repeat(250_000)}}}`,
    ],
    [
      '10^5 levels of nested objects',
      () =>
        `{"query":${JSON.stringify(ingest)},"variables":{"records":${'{"a":'.repeat(100_000)}1${'}'.repeat(100_000)}}}`,
    ],
    [
      '10^5 members in the variables object itself',
      () => {
        const members = Array.from({ length: 150_000 }, (_, i) => `"v${i}":[${i}]`).join(',');
        return `{"query":${JSON.stringify(ingest)},"variables":{${members}}}`;
      },
    ],
    [
      '10^5 members in the top-level body',
      () => {
        const members = Array.from({ length: 150_000 }, (_, i) => `"x${i}":{"y":${i}}`).join(',');
        return `{"query":${JSON.stringify(ingest)},${members}}`;
      },
    ],
    [
      '10^5 tiny members in one object',
      () => {
        const members = Array.from({ length: 150_000 }, (_, i) => `"k${i}":${i}`).join(',');
        return `{"query":${JSON.stringify(ingest)},"variables":{"records":[{${members}}]}}`;
      },
    ],
    [
      '10^5 tiny elements in one list',
      () =>
        `{"query":${JSON.stringify(ingest)},"variables":{"records":[${Array.from({ length: 300_000 }, () => '{}').join(',')}]}}`,
    ],
    [
      '10^5 tiny members, pretty-printed',
      () => {
        const records = Array.from({ length: 20_000 }, (_, i) => ({ a: i, b: [i], c: { d: i } }));
        return JSON.stringify({ query: ingest, variables: { records } }, null, 2);
      },
    ],
    [
      'one 3 MiB string',
      () =>
        JSON.stringify({ query: ingest, variables: { records: [record({ eventId: 'x'.repeat(3 * 1024 * 1024) })] } }),
    ],
  ];
  for (const [name, make] of bodies) {
    test(`${name}: every /health probe answers in under 200 ms, and the request is answered`, async () => {
      const body = make();
      assert.ok(body.length >= 400_000 && body.length <= LIMIT, `body of ${body.length} bytes`);
      // The key has read scope only: parsing must not come before the scope check can matter, and must be linear.
      let answer: RawAnswer | undefined;
      const slowest = await slowestHealthProbe(async () => {
        answer = await post(body, readKey.headers);
      });
      assert.ok(
        answer && answer.status >= 200 && answer.status < 500,
        `status ${answer?.status}: ${answer?.body.slice(0, 300)}`,
      );
      assert.ok(slowest < 200, `slowest /health probe took ${slowest.toFixed(0)} ms`);
    });
  }
});

// Concurrent: each case waits out the service's drain bound (seconds of idle waiting), independently of the others.
describe('2. authentication before the body', { concurrency: true }, () => {
  /** Sends a request head and part of its body on a raw socket; resolves with what came back first and when. */
  const partialRequest = (head: string, part: string) =>
    new Promise<{ text: string; ms: number; closedWithin: number | null }>((resolve, reject) => {
      const { port } = new URL(service.url);
      const socket = net.connect(Number(port), '127.0.0.1');
      const started = performance.now();
      let text = '';
      let answeredAt = 0;
      socket.on('error', reject);
      socket.on('data', (chunk) => {
        text += chunk.toString('utf8');
        if (!answeredAt && text.includes('\r\n\r\n')) answeredAt = performance.now();
      });
      socket.on('close', () =>
        resolve({
          text,
          ms: answeredAt ? answeredAt - started : Number.POSITIVE_INFINITY,
          closedWithin: performance.now() - started,
        }),
      );
      socket.write(head + part);
      // Never sends the rest: the service must answer without it, then drain within its bound or close.
      setTimeout(() => socket.destroy(), 15_000).unref();
    });

  for (const [name, authorization] of [
    ['no key', ''],
    ['a malformed header', 'Authorization: Basic abc\r\n'],
    ['an unknown key', 'Authorization: Bearer mk_unknownunknownunknownunknownunknown0000\r\n'],
  ] as const) {
    test(`${name}, Content-Length 1,000,000 and 26 bytes sent: 401 at once, the connection closed within a bound`, async () => {
      const head = `POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n${authorization}Content-Length: 1000000\r\n\r\n`;
      const result = await partialRequest(head, '{"query":"{ __typename }",');
      assert.match(result.text, /^HTTP\/1\.1 401 /, result.text.slice(0, 200));
      assert.ok(result.ms < 1000, `answered after ${result.ms.toFixed(0)} ms`);
      assert.ok(result.closedWithin !== null && result.closedWithin < 12_000, `closed after ${result.closedWithin} ms`);
    });
  }
});

describe('3. bounded echoes', () => {
  test('a 256 KiB eventId rejected under 15 aliases: the answer is not larger than its request', async () => {
    const eventId = 'e'.repeat(256 * 1024);
    const aliases = Array.from(
      { length: 15 },
      (_, i) => `a${i}: ingestMetrics(records: $records) { rejected { index eventId field code message } }`,
    );
    const body = JSON.stringify({
      query: `mutation($records: [UserMetricInput!]!) { ${aliases.join(' ')} }`,
      variables: { records: [record({ eventId })] },
    });
    const answer = await post(body, ingestKey.headers);
    assert.equal(answer.status, 200, answer.body.slice(0, 300));
    assert.ok(answer.body.length < body.length, `answer ${answer.body.length} bytes for a request of ${body.length}`);
    const parsed = JSON.parse(answer.body) as {
      data: Record<string, { rejected: Array<{ eventId: string; code: string; message: string }> }>;
    };
    const rejection = parsed.data.a0?.rejected[0];
    assert.equal(rejection?.code, 'TOO_LONG');
    assert.ok((rejection?.eventId.length ?? 0) < 1000, 'the eventId is cut');
    assert.match(rejection?.eventId ?? '', /…\[\d+ more characters\]$/);
    assert.ok((rejection?.message.length ?? 0) < 1000, 'the message is bounded');
  });

  test('an error message quoting a value is bounded', async () => {
    const zone = 'Z'.repeat(100_000);
    const answer = await post(
      JSON.stringify({
        query: '{ metricStats(bucket: { unit: DAY, timeZone: $z }) { count } }'.replace('$z', JSON.stringify(zone)),
      }),
      readKey.headers,
    );
    assert.ok(answer.body.length < 10_000, `answer of ${answer.body.length} bytes: ${answer.body.slice(0, 300)}`);
  });
});

describe('4. lists without `first` count at their server-side maximum', () => {
  test('15 aliases of metricStats with groups are refused by cost before running', async () => {
    const aliases = Array.from(
      { length: 15 },
      (_, i) => `s${i}: metricStats(groupBy: [USER_ID]) { userId count sentiments { value count } }`,
    );
    const answer = await post(JSON.stringify({ query: `{ ${aliases.join(' ')} }` }), readKey.headers);
    const parsed = JSON.parse(answer.body) as {
      data?: unknown;
      errors?: Array<{ extensions?: { code?: string; found?: number } }>;
    };
    assert.equal(parsed.errors?.[0]?.extensions?.code, 'COST_LIMIT_EXCEEDED', answer.body.slice(0, 300));
    assert.ok((parsed.errors?.[0]?.extensions?.found ?? 0) > 15 * 1000, answer.body.slice(0, 300));
    assert.equal(parsed.data, undefined);
  });

  test('one metricStats with groups fits', async () => {
    const answer = await post(
      JSON.stringify({ query: '{ metricStats(groupBy: [USER_ID]) { userId count sentiments { value count } } }' }),
      readKey.headers,
    );
    assert.equal(answer.status, 200, answer.body.slice(0, 300));
    assert.equal((JSON.parse(answer.body) as { data: { metricStats: unknown[] } }).data.metricStats.length, 5);
  });
});

describe('5. media types are read the same way on every request', () => {
  for (const contentType of [
    'Application/JSON',
    'application/json ; charset=utf-8',
    'APPLICATION/JSON;CHARSET=UTF-8',
  ]) {
    test(`Content-Type: ${contentType}: the first answer and the repeated answer are the same`, async () => {
      const body = JSON.stringify({ query: '{ metrics(first: 2) { totalCount edges { node { eventId } } } }' });
      const answers = [];
      for (let i = 0; i < 4; i++) answers.push(await post(body, { ...readKey.headers, 'content-type': contentType }));
      for (const answer of answers) {
        assert.equal(answer.status, 200, answer.body.slice(0, 300));
        assert.equal(answer.body, answers[0]?.body);
      }
    });
  }
});

describe('6. forged cursors are BAD_USER_INPUT on `after`', () => {
  const forge = (payload: unknown) => Buffer.from(JSON.stringify(payload)).toString('base64url');
  const cursors: Array<[string, string]> = [
    ['an id beyond int8', forge({ o: 'TIMESTAMP:DESC', v: [1795000000, 2 ** 53] })],
    ['a timestamp beyond int8', forge({ o: 'TIMESTAMP:DESC', v: [1e300, 1] })],
    ['a talkedTime beyond int4', forge({ o: 'TALKED_TIME:DESC', v: [2 ** 40, 1] })],
    ['a created_at of 2020-02-30', forge({ o: 'CREATED_AT:DESC', v: ['2020-02-30T00:00:00.000000Z', 1] })],
    ['a created_at in year 275760', forge({ o: 'CREATED_AT:DESC', v: ['+275760-09-13T00:00:00.000Z', 1] })],
    ['a created_at that is not a time', forge({ o: 'CREATED_AT:DESC', v: ['yesterday', 1] })],
    ['a negative id', forge({ o: 'TIMESTAMP:DESC', v: [1795000000, -1] })],
  ];
  for (const [name, cursor] of cursors) {
    test(name, async () => {
      const orderBy = name.includes('talkedTime')
        ? 'orderBy: [{ field: TALKED_TIME, direction: DESC }]'
        : name.includes('created_at')
          ? 'orderBy: [{ field: CREATED_AT, direction: DESC }]'
          : '';
      const query = `{ metrics(first: 2, after: ${JSON.stringify(cursor)} ${orderBy}) { edges { node { eventId } } } }`;
      const answer = await post(JSON.stringify({ query }), readKey.headers);
      const parsed = JSON.parse(answer.body) as {
        errors?: Array<{ extensions?: { code?: string; argument?: string } }>;
      };
      assert.equal(parsed.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', answer.body.slice(0, 400));
      assert.equal(parsed.errors?.[0]?.extensions?.argument, 'after');
    });
  }

  test('a cursor the service issued still works', async () => {
    const first = await service.gql<{ metrics: { pageInfo: { endCursor: string } } }>(
      '{ metrics(first: 3) { pageInfo { endCursor } } }',
      {},
      readKey.headers,
    );
    const next = await service.gql<{ metrics: { edges: unknown[] } }>(
      'query($a: String) { metrics(first: 3, after: $a) { edges { node { eventId } } } }',
      { a: first.metrics.pageInfo.endCursor },
      readKey.headers,
    );
    assert.equal(next.metrics.edges.length, 3);
  });
});

describe('7. text after the JSON is not quoted back', () => {
  for (const tail of ['SECRETTAIL', ' SECRETTAIL', '{"x":"SECRETTAIL"}']) {
    test(JSON.stringify(tail), async () => {
      const answer = await post(`{"query":"{ __typename }"}${tail}`, {
        ...readKey.headers,
        accept: 'application/graphql-response+json',
      });
      assert.equal(answer.status, 400, answer.body);
      assert.doesNotMatch(answer.body, /SECRETTAIL/);
      assert.match(answer.body, /position \d+/);
    });
  }
  test('a long invalid body is not quoted back either', async () => {
    const answer = await post(`{"query":"{ __typename }","variables":{"a":"${'SECRET'.repeat(50_000)}"}`, {
      ...readKey.headers,
      accept: 'application/graphql-response+json',
    });
    assert.equal(answer.status, 400);
    assert.ok(answer.body.length < 2_000, answer.body.slice(0, 300));
  });
});

describe('8. NUL and broken UTF-16 in text arguments are BAD_USER_INPUT', () => {
  const cases: Array<[string, string, Record<string, unknown>, Record<string, string>]> = [
    ['revokeApiKey(id)', 'mutation($v: ID!) { revokeApiKey(id: $v) { id } }', {}, {}],
    ['createApiKey(name)', 'mutation($v: String!) { createApiKey(name: $v, scopes: [read]) { key } }', {}, {}],
    ['userSummary(userId)', 'query($v: String!) { userSummary(userId: $v) { count } }', {}, {}],
    [
      'metrics(where: userId.equals)',
      'query($v: String!) { metrics(where: { userId: { equals: $v } }) { totalCount } }',
      {},
      {},
    ],
    [
      'metrics(where: sessionId.contains)',
      'query($v: String!) { metrics(where: { sessionId: { contains: $v } }) { totalCount } }',
      {},
      {},
    ],
    [
      'metricStats(bucket.timeZone)',
      'query($v: String!) { metricStats(bucket: { unit: DAY, timeZone: $v }) { count } }',
      {},
      {},
    ],
  ];
  for (const [name, query] of cases) {
    for (const [label, value] of [
      ['NUL', 'a\u0000b'],
      ['a lone surrogate', 'a\ud800b'],
    ] as const) {
      test(`${name} with ${label}`, async () => {
        const headers = query.startsWith('mutation') ? adminKey.headers : readKey.headers;
        const response = await service.request(query, { v: value }, { ...headers, accept: 'application/json' });
        const codes = (response.errors ?? []).map((e) => e.extensions?.code);
        assert.deepEqual(codes, ['BAD_USER_INPUT'], JSON.stringify(response.errors));
      });
    }
  }
});

test('metric(id) with NUL is no record (null), not an error: the id never reaches SQL', async () => {
  const response = await service.request(
    'query($v: ID!) { metric(id: $v) { id } }',
    { v: 'a\u0000b' },
    readKey.headers,
  );
  assert.deepEqual({ data: response.data, errors: response.errors }, { data: { metric: null }, errors: undefined });
});

test('a variable inside a filter literal filters (graphql-jit read it as absent, and the filter matched every record)', async () => {
  const query =
    'query($v: String!) { metrics(first: 100, where: { userId: { equals: $v } }) { totalCount edges { node { userId } } } }';
  const data = await service.gql<{ metrics: { totalCount: number; edges: Array<{ node: { userId: string } }> } }>(
    query,
    { v: 'user-2' },
    readKey.headers,
  );
  assert.equal(data.metrics.totalCount, 8);
  assert.ok(data.metrics.edges.every((edge) => edge.node.userId === 'user-2'));
});

describe('9. a body over the limit gets its 413', () => {
  test('20 bodies at twice the limit, sent as fast as possible: 20 answers with status 413', async () => {
    const body = Buffer.alloc(LIMIT * 2, 0x20);
    body.write('{"query":"{ __typename }","variables":{"a":"');
    const statuses = await Promise.all(
      Array.from({ length: 20 }, () =>
        post(body, ingestKey.headers).then(
          (answer) => answer.status,
          (error: Error) => error.message,
        ),
      ),
    );
    assert.deepEqual(statuses, Array(20).fill(413));
  });

  test('the same with fetch, which reads its answer only once its body is sent: 20 answers with status 413', async () => {
    // From a worker thread: fetch copies each 2 x limit body on the thread that sends it (1-3 s for these 20 on this
    // machine), and on the service's thread that stall would fail its key lookups (the pool's connect timeout: 503).
    const statuses = await new Promise<unknown[]>((resolve, reject) => {
      const worker = new Worker(
        `const { parentPort, workerData: { url, headers, size } } = require('node:worker_threads');
        const body = Buffer.alloc(size, 0x20);
        body.write('{"query":"{ __typename }","variables":{"a":"');
        Promise.all(Array.from({ length: 20 }, () =>
          fetch(url, { method: 'POST', headers, body }).then(
            async (response) => (await response.arrayBuffer(), response.status),
            (error) => error.message + ': ' + String(error.cause),
          ),
        )).then((statuses) => parentPort.postMessage(statuses));`,
        {
          eval: true,
          workerData: {
            url: `${service.url}/graphql`,
            headers: { 'content-type': 'application/json', ...ingestKey.headers },
            size: LIMIT * 2,
          },
        },
      );
      worker.once('message', (message: unknown[]) => {
        resolve(message);
        void worker.terminate();
      });
      worker.once('error', reject);
    });
    assert.deepEqual(statuses, Array(20).fill(413));
  });

  test('a chunked body over the limit: 413', async () => {
    const answer = await new Promise<number | string>((resolve) => {
      const request = http.request(`${service.url}/graphql`, {
        method: 'POST',
        agent: false,
        headers: { 'content-type': 'application/json', ...ingestKey.headers },
      });
      request.on('error', (error) => resolve(error.message));
      request.on('response', (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      });
      const chunk = Buffer.alloc(64 * 1024, 0x20);
      request.write('{"query":"{ __typename }","x":"');
      let sent = 0;
      const pump = () => {
        while (sent < LIMIT * 2) {
          sent += chunk.length;
          if (!request.write(chunk)) return void request.once('drain', pump);
        }
        request.end('"}');
      };
      pump();
    });
    assert.equal(answer, 413);
  });
});

describe('cold and warm answers are the same', () => {
  // The old direct path's parity corpus, kept: each request sent three times (its query text new to the service, then
  // parsed and validated from Yoga's cache) gets the same status, content type and body, request ids aside.
  const read = '{ metrics(first: 2) { totalCount edges { node { eventId } } pageInfo { endCursor } } }';
  const corpus: Array<[string, () => { body: string; headers: Record<string, string> }]> = [
    ...[
      'application/json',
      'application/graphql-response+json',
      '*/*',
      'application/graphql-response+json, application/json',
      'text/html',
    ].map((accept): [string, () => { body: string; headers: Record<string, string> }] => [
      `Accept: ${accept}`,
      () => ({ body: JSON.stringify({ query: read }), headers: { ...readKey.headers, accept } }),
    ]),
    ['no key', () => ({ body: JSON.stringify({ query: read }), headers: {} })],
    ['a key without the scope', () => ({ body: JSON.stringify({ query: read }), headers: ingestKey.headers })],
    [
      'past the cost limit',
      () => ({
        body: JSON.stringify({
          query: `{ a: metrics(first: 1000) { edges { node { id } } } b: metrics(first: 1000) { edges { node { id } } } }`,
        }),
        headers: readKey.headers,
      }),
    ],
    [
      'a field that does not exist',
      () => ({ body: JSON.stringify({ query: '{ metricz { id } }' }), headers: readKey.headers }),
    ],
    [
      'a variable of the wrong type',
      () => ({
        body: JSON.stringify({
          query: 'query($n: Int) { metrics(first: $n) { totalCount } }',
          variables: { n: 'ten' },
        }),
        headers: readKey.headers,
      }),
    ],
    [
      'a page argument out of range',
      () => ({ body: JSON.stringify({ query: '{ metrics(first: 5000) { totalCount } }' }), headers: readKey.headers }),
    ],
    [
      'an operation name that is not there',
      () => ({
        body: JSON.stringify({ query: 'query A { __typename }', operationName: 'B' }),
        headers: readKey.headers,
      }),
    ],
    [
      'extra members in the body',
      () => ({ body: JSON.stringify({ query: read, extensions: {}, variables: null }), headers: readKey.headers }),
    ],
    [
      'a cursor page',
      () => ({
        body: JSON.stringify({
          query: 'query($a: String) { metrics(first: 2, after: $a) { edges { node { eventId } } } }',
          variables: {
            a: Buffer.from(JSON.stringify({ o: 'TIMESTAMP:DESC', v: [2_000_000_000, 1_000] })).toString('base64url'),
          },
        }),
        headers: readKey.headers,
      }),
    ],
  ];
  const normalized = (answer: RawAnswer) => ({
    status: answer.status,
    type: answer.headers['content-type'],
    body: answer.body.replace(/"requestId":"[^"]*"/g, '"requestId":"…"'),
  });
  for (const [name, make] of corpus) {
    test(name, async () => {
      const { body, headers } = make();
      const answers = [];
      for (let i = 0; i < 3; i++)
        answers.push(normalized(await post(body, { accept: 'application/json', ...headers })));
      assert.deepEqual(answers[1], answers[0]);
      assert.deepEqual(answers[2], answers[0]);
    });
  }
});

describe('one pipeline', () => {
  test('a plugin added to the server sees every request: cold, warm, small and large, GET and POST', async () => {
    const { createServer } = await import('../src/server.js');
    const { createLogger } = await import('../src/logger.js');
    const seen: string[] = [];
    const probe: Plugin = {
      onRequest({ request }) {
        seen.push(`${request.method} ${new URL(request.url).pathname}`);
      },
    };
    const { handler } = createServer({ config: service.config, logger: createLogger('silent'), plugins: [probe] });
    const server = http.createServer(handler);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    try {
      const read = JSON.stringify({ query: '{ metrics(first: 2) { totalCount } }' });
      const large = JSON.stringify({
        query: 'mutation($r: [UserMetricInput!]!) { ingestMetrics(records: $r) { accepted duplicates } }',
        variables: { r: Array.from({ length: 600 }, (_, i) => record({ eventId: `probe-${i}` })) },
      });
      const send = (body: string, headers: Record<string, string>) =>
        fetch(`${base}/graphql`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body,
        }).then((r) => r.text());
      for (let i = 0; i < 3; i++) await send(read, readKey.headers);
      for (let i = 0; i < 2; i++) await send(large, ingestKey.headers);
      await fetch(`${base}/graphql?query=${encodeURIComponent('{ __typename }')}`, {
        headers: { ...readKey.headers },
      }).then((r) => r.text());
      assert.deepEqual(seen, [...Array(3).fill('POST /graphql'), ...Array(2).fill('POST /graphql'), 'GET /graphql']);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
