/**
 * Large JSON bodies parsed in parts (src/http/json-body.ts): parseJsonBody against JSON.parse on generated JSON
 * (valid, written compactly and with spaces, and damaged), with small groups so that every path is taken; then
 * over HTTP, large batches parsed by the listener answered as before, and bodies it gives up on answered by Yoga.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { GROUP_BYTES, PARSED_BODY_MIN, parseJsonBody } from '../src/http/json-body.js';
import { INGEST, type TestService, record, startTestService } from './support/harness.js';
import { makeKey } from './support/security.js';

const seed = process.env.FUZZ_SEED ? Number(process.env.FUZZ_SEED) : undefined;

/** What JSON.parse makes of the bytes, or undefined where it throws. */
function reference(bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    return undefined;
  }
}

/** Records of an ingestion batch and other JSON, nested, with texts that contain JSON's own punctuation. */
const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.constantFrom('},{', '"}', '\\', '[', ']', ',', '{"a":1}', '__proto__ ', 'é', '😀'),
);
const json: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    text,
    fc.integer(),
    fc.double({ noNaN: true, noDefaultInfinity: true }),
    fc.boolean(),
    fc.constant(null),
    tie('array'),
    tie('object'),
  ),
  array: fc.array(tie('value'), { maxLength: 8 }),
  object: fc.dictionary(text, tie('value'), { maxKeys: 6 }),
})).value;
const records = fc.array(
  fc.record({ userId: text, sessionId: text, timestamp: fc.integer(), talkedTime: fc.integer(), microphoneUsed: fc.boolean(), extra: json }),
  { maxLength: 30 },
);
const body = fc.record({ query: text, variables: fc.record({ records, other: json }), operationName: fc.option(text) });

describe('parseJsonBody', () => {
  test('gives what JSON.parse gives, for any JSON, compact or spaced, in groups of any size', () => {
    fc.assert(
      fc.property(fc.oneof(body, json), fc.integer({ min: 1, max: 400 }), fc.constantFrom(undefined, 1, '\t', ' \r\n '), (value, groupBytes, space) => {
        const bytes = Buffer.from(JSON.stringify(value, null, space as string | number | undefined) ?? 'null');
        const parsed = parseJsonBody(bytes, groupBytes);
        // It may leave a `__proto__` key to JSON.parse; nothing else.
        if (parsed === undefined && bytes.includes('"__proto__"')) return;
        assert.deepEqual(parsed, JSON.parse(bytes.toString('utf8')));
      }),
      { seed, numRuns: 3000 },
    );
  });

  test('damaged JSON: undefined where JSON.parse throws, else what JSON.parse gives', () => {
    const damage = fc.tuple(fc.oneof(body, json), fc.integer({ min: 1, max: 200 }), fc.nat(), fc.nat(), fc.constantFrom(...'{}[],:"\\ 0a-'.split(''), '', 'x', '},{'));
    fc.assert(
      fc.property(damage, ([value, groupBytes, at, cut, insert]) => {
        const valid = JSON.stringify(value) ?? 'null';
        const i = at % (valid.length + 1);
        const bytes = Buffer.from(valid.slice(0, i) + insert + valid.slice(i + (cut % 3)));
        const expected = reference(bytes);
        const parsed = parseJsonBody(bytes, groupBytes);
        if (parsed === undefined && (expected === undefined || bytes.includes('"__proto__"'))) return;
        assert.deepEqual(parsed, expected, bytes.toString('utf8'));
      }),
      { seed, numRuns: 5000 },
    );
  });

  test('bytes that are not UTF-8 come out as JSON.parse of their decoded text has them', () => {
    const bytes = Buffer.concat([Buffer.from('{"a":["x'), Buffer.from([0xff, 0xc3]), Buffer.from('",{"b":"\xe9"},{"c":"'), Buffer.from([0xe2, 0x82]), Buffer.from('"}]}')]);
    assert.deepEqual(parseJsonBody(bytes, 4), JSON.parse(bytes.toString('utf8')));
  });

  test('a batch of 1,000 records is parsed in groups of at most GROUP_BYTES', () => {
    const batch = { query: INGEST, variables: { records: Array.from({ length: 1000 }, (_, i) => record({ eventId: `e-${i}` })) } };
    const bytes = Buffer.from(JSON.stringify(batch));
    assert.ok(bytes.length > 2 * GROUP_BYTES);
    const calls: number[] = [];
    const original = JSON.parse;
    JSON.parse = ((textIn: string, reviver?: Parameters<typeof JSON.parse>[1]) => {
      calls.push(textIn.length);
      return original(textIn, reviver);
    }) as typeof JSON.parse;
    let parsed: unknown;
    try {
      parsed = parseJsonBody(bytes);
    } finally {
      JSON.parse = original;
    }
    assert.deepEqual(parsed, batch);
    assert.ok(Math.max(...calls) <= GROUP_BYTES + 2, `largest text given to JSON.parse: ${Math.max(...calls)}`);
  });

  test('deep nesting beyond the stack: undefined, not a crash', () => {
    const deep = Buffer.from(`${'{"a":'.repeat(200_000)}1${'}'.repeat(200_000)}`);
    assert.equal(parseJsonBody(deep, 10), undefined);
  });
});

describe('large bodies over HTTP', () => {
  let service: TestService;
  let key: Record<string, string>;

  before(async () => {
    service = await startTestService({ AUTH: 'on' });
    key = (await makeKey(['ingest'])).headers;
  });
  after(async () => {
    await service?.stop();
  });

  const largeBodies = async () => {
    const metrics = await (await fetch(`${service.url}/metrics`)).text();
    const count = (by: string) => Number(metrics.match(new RegExp(`^graphql_large_bodies_total\\{parsed_by="${by}"\\} (\\d+)`, 'm'))?.[1]);
    return { listener: count('listener'), yoga: count('yoga') };
  };
  /** POSTs the text with its Content-Length, or `chunked` without (Yoga reads it itself). */
  const post = async (bodyText: string, chunked = false, headers = key) => {
    const bytes = Buffer.from(bodyText);
    const response = await fetch(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json', ...headers },
      body: chunked ? new Blob([bytes]).stream() : bytes,
      ...(chunked ? { duplex: 'half' } : {}),
    } as RequestInit);
    return { status: response.status, body: (await response.json()) as Record<string, any> };
  };
  const batch = (prefix: string, count: number) =>
    Array.from({ length: count }, (_, i) => record({ eventId: `${prefix}-${i}`, userId: `user-${i % 7}`, sessionId: `sé-${i}` }));

  test('a large batch is parsed by the listener and stored, compact or pretty-printed; sent again, all duplicates', async () => {
    const records = batch('large', 600);
    for (const space of [undefined, 2]) {
      const text = JSON.stringify({ query: INGEST, variables: { records } }, null, space);
      assert.ok(Buffer.byteLength(text) > PARSED_BODY_MIN);
      const before = await largeBodies();
      const answer = await post(text);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      const expected = space === undefined ? { accepted: 600, duplicates: 0 } : { accepted: 0, duplicates: 600 };
      assert.deepEqual({ ...answer.body.data.ingestMetrics, rejected: undefined }, { ...expected, rejected: undefined });
      assert.deepEqual(await largeBodies(), { ...before, listener: before.listener + 1 });
    }
    const [stored] = await service.sql<{ n: number; accents: number }>(
      "SELECT count(*)::int AS n, count(*) FILTER (WHERE session_id LIKE 'sé-%')::int AS accents FROM user_metrics WHERE event_id LIKE 'large-%'",
    );
    assert.deepEqual(stored, { n: 600, accents: 600 });
  });

  test('bad records in a large batch are rejected by index, the rest stored', async () => {
    const records = batch('mixed', 400);
    records[17] = { ...records[17], talkedTime: -5 };
    records[321] = { ...records[321], timestamp: 'yesterday' };
    const answer = await post(JSON.stringify({ query: INGEST, variables: { records } }));
    // A value of the wrong type fails the whole request in GraphQL's variable coercion, as it does in a small body.
    const small = await post(JSON.stringify({ query: INGEST, variables: { records: [records[321]] } }));
    assert.equal(answer.status, small.status);
    assert.deepEqual(answer.body.errors?.map((e: { extensions?: { code?: string } }) => e.extensions?.code), small.body.errors?.map((e: { extensions?: { code?: string } }) => e.extensions?.code));
    records[321] = { ...records[321], timestamp: record().timestamp };
    const fixed = await post(JSON.stringify({ query: INGEST, variables: { records } }));
    assert.equal(fixed.status, 200);
    assert.equal(fixed.body.data.ingestMetrics.accepted, 399);
    assert.deepEqual(fixed.body.data.ingestMetrics.rejected.map((r: { index: number }) => r.index), [17]);
  });

  test('bodies the listener gives up on get what Yoga answers for them', async () => {
    let sent = 0;
    const cases: Record<string, () => string> = {
      'invalid JSON': () => `${valid()},}`.replace(/\},\}$/, ',}'),
      'a batch of operations (an array)': () => `[${valid()}]`,
      'a __proto__ key': () => `{"__proto__":{},${valid().slice(1)}`,
      'a byte order mark': () => `\ufeff${valid()}`,
    };
    function valid() {
      return JSON.stringify({ query: INGEST, variables: { records: batch(`broken-${++sent}`, 400) } });
    }
    for (const [what, make] of Object.entries(cases)) {
      const text = make();
      assert.ok(Buffer.byteLength(text) > PARSED_BODY_MIN);
      const before = await largeBodies();
      const answer = await post(text);
      assert.deepEqual(await largeBodies(), { ...before, yoga: before.yoga + 1 }, what);
      // The same body (other records) sent chunked, without a Content-Length: the listener leaves it to Yoga unread.
      const yoga = await post(make(), true);
      const same = (a: unknown) => JSON.stringify(a).replace(/broken-\d+/g, 'broken-N');
      assert.equal(same(answer), same(yoga), what);
    }
  });

  test('a body that is not JSON is answered with where it fails, not with the body quoted back', async () => {
    const large = `${JSON.stringify({ query: INGEST, variables: { records: batch('quoted', 400) } }).slice(0, -1)},}`;
    const cases: Array<[string, string, RegExp]> = [
      ['small, a property name expected', '{"query": "{ __typename }",}', /^Expected double-quoted property name in JSON at position 27\b/],
      ['small, an unexpected token', '{"query": x}', /^Unexpected token 'x', "\{"query": x\}" is not valid JSON$/],
      ['large', large, new RegExp(`^Expected double-quoted property name in JSON at position ${large.length - 1}\\b`)],
      ['large, not JSON at all', 'x'.repeat(PARSED_BODY_MIN + 10), /^Unexpected token 'x', "x+"\.\.\. is not valid JSON$/],
    ];
    for (const [what, text, expected] of cases) {
      for (const chunked of [false, true]) {
        const answer = await post(text, chunked);
        assert.equal(answer.status, 400, what);
        const [error] = answer.body.errors;
        assert.equal(error.message, 'POST body sent invalid JSON.', what);
        assert.equal(error.extensions.code, 'BAD_REQUEST', what);
        assert.match(error.extensions.originalError.message, expected, `${what}${chunked ? ', chunked' : ''}`);
      }
    }
  });

  test('its request is timed from its arrival, not from the end of its body', async () => {
    const durationSum = async () => {
      const metrics = await (await fetch(`${service.url}/metrics`)).text();
      return Number(metrics.match(/^graphql_request_duration_seconds_sum\{operation_name="Ingest",operation_type="mutation"\} ([\d.e+-]+)$/m)?.[1] ?? 0);
    };
    const before = await durationSum();
    const bytes = Buffer.from(JSON.stringify({ query: INGEST, variables: { records: batch('slow', 400) } }));
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request(`${service.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': bytes.length, ...key },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      // Half the body, then the rest 400 ms later.
      req.write(bytes.subarray(0, bytes.length >> 1));
      setTimeout(() => req.end(bytes.subarray(bytes.length >> 1)), 400);
    });
    assert.equal(status, 200);
    const took = (await durationSum()) - before;
    assert.ok(took >= 0.4, `timed ${took} s`);
  });

  test('a large body without its API key is refused before it is parsed', async () => {
    const before = await largeBodies();
    const answer = await post(JSON.stringify({ query: INGEST, variables: { records: batch('nokey', 400) } }), false, {});
    assert.equal(answer.status, 401);
    assert.deepEqual(await largeBodies(), before);
  });
});
