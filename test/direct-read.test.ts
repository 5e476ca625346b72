/**
 * Direct reads (src/http/direct-read.ts): a read Yoga has answered cleanly once is answered by the Node listener
 * itself after that. Each case compares the answer with Yoga's answer to the same request (sent with a query text
 * Yoga has not seen, which differs only by a comment), byte for byte, and reads `graphql_direct_reads_total` in
 * /metrics to tell which path answered.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { database } from '../src/db.js';
import { INGEST, type TestService, record, startTestService } from './support/harness.js';
import { makeKey, withoutUserMetrics } from './support/security.js';

const PAGE = `query Page($where: MetricFilter, $first: Int) {
  metrics(where: $where, first: $first) {
    edges { node { id eventId userId sessionId timestamp talkedTime microphoneUsed speakerUsed voiceSentiment createdAt occurredAt } cursor }
    pageInfo { hasNextPage endCursor }
  }
}`;

interface Answer {
  status: number;
  type: string | null;
  requestId: string | null;
  text: string;
}

describe('direct reads', () => {
  let service: TestService;
  let read: Record<string, string>;
  let ingestOnly: Record<string, string>;
  /** Texts sent so far: each variant of a query is new to the service. */
  let variants = 0;

  before(async () => {
    // A low cost limit, so that a page's `first` can push an operation past it.
    service = await startTestService({ MAX_COST: '500' });
    read = (await makeKey(['read'])).headers;
    ingestOnly = (await makeKey(['ingest'])).headers;
    const records = Array.from({ length: 30 }, (_, i) => record({ eventId: `direct-${i}`, userId: i % 2 ? 'alice' : 'bob', talkedTime: i }));
    await service.gql(INGEST, { records }, (await makeKey(['ingest'])).headers);
  });
  after(async () => {
    await service?.stop();
  });

  const post = async (body: string, headers: Record<string, string> = {}, accept: string | null = 'application/json'): Promise<Answer> => {
    const response = await fetch(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(accept === null ? {} : { accept }), ...headers },
      body,
    });
    return { status: response.status, type: response.headers.get('content-type'), requestId: response.headers.get('x-request-id'), text: await response.text() };
  };
  const ask = (query: string, variables: Record<string, unknown> | undefined, headers: Record<string, string> = read, accept?: string | null) =>
    post(JSON.stringify({ query, variables }), headers, accept);
  /** The same query as Yoga answers it: a text it has not seen yet. */
  const viaYoga = (query: string, variables: Record<string, unknown> | undefined, headers: Record<string, string> = read, accept?: string | null) =>
    ask(`${query}\n# variant ${++variants}`, variables, headers, accept);

  const directReads = async () => {
    const text = await (await fetch(`${service.url}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('graphql_direct_reads_total '));
    return Number(line?.split(' ')[1] ?? Number.NaN);
  };
  const same = (direct: Answer, yoga: Answer, what: string) => {
    assert.deepEqual({ ...direct, requestId: undefined }, { ...yoga, requestId: undefined }, what);
    assert.ok(direct.requestId && direct.requestId !== yoga.requestId, `${what}: a request id of its own`);
  };

  test('a repeated read is answered directly, with what Yoga answers for it', async () => {
    const bob = { where: { userId: { equals: 'bob' } }, first: 5 };
    const first = await ask(PAGE, bob);
    assert.equal(first.status, 200, first.text);
    assert.equal(JSON.parse(first.text).data.metrics.edges.length, 5);
    const before = await directReads();
    same(await ask(PAGE, bob), first, 'the same request again');
    assert.equal(await directReads(), before + 1);
    // Other variables: the direct answer is what Yoga gives for them.
    const alice = { where: { userId: { equals: 'alice' }, talkedTime: { gte: 10 } }, first: 3 };
    same(await ask(PAGE, alice), await viaYoga(PAGE, alice), 'other variables');
    // Next pages through the cursor, to the end.
    let after: string | null = null;
    let pages = 0;
    do {
      const variables = { ...alice, after };
      const direct = await ask(PAGE.replace('$first: Int)', '$first: Int, $after: String)').replace('first: $first)', 'first: $first, after: $after)'), variables);
      const data = JSON.parse(direct.text).data.metrics;
      after = data.pageInfo.hasNextPage ? data.pageInfo.endCursor : null;
      pages++;
    } while (after && pages < 10);
    assert.equal(pages, 4, 'alice has 10 records with talkedTime >= 10: pages of 3, 3, 3 and 1');
    // bob again, alice, and the three pages after the first of the new text.
    assert.equal(await directReads(), before + 5);
  });

  test('each Accept header gets the content type Yoga gives it; a stream request is Yoga\'s', async () => {
    const variables = { where: { userId: { equals: 'bob' } }, first: 2 };
    for (const accept of [null, '*/*', 'application/json', 'application/graphql-response+json', 'application/graphql-response+json, application/json', 'application/json; charset=utf-8, application/graphql-response+json']) {
      const query = `${PAGE}\n# accept ${++variants}`;
      const yoga = await ask(query, variables, read, accept);
      const before = await directReads();
      same(await ask(query, variables, read, accept), yoga, `Accept: ${accept}`);
      assert.equal(await directReads(), before + 1, `Accept: ${accept}`);
    }
    const before = await directReads();
    await ask(PAGE, variables, read, 'text/event-stream');
    assert.equal(await directReads(), before, 'a request for an event stream goes to Yoga');
  });

  test('refusals and errors are Yoga\'s, word for word and status for status; none counts as a direct read', async () => {
    assert.equal((await ask(PAGE, { first: 1 })).status, 200);
    const before = await directReads();
    const cases: Array<[string, Record<string, unknown>, Record<string, string>]> = [
      ['a page size out of range (the resolver refuses it)', { first: 0 }, read],
      ['a variable of the wrong type', { first: 'ten' }, read],
      ['a cost past MAX_COST with these variables', { first: 400 }, read],
      ['a key without the read scope', { first: 1 }, ingestOnly],
      ['no key', { first: 1 }, {}],
      ['a key that does not exist', { first: 1 }, { authorization: `Bearer mk_${'x'.repeat(43)}` }],
      ['a malformed Authorization header', { first: 1 }, { authorization: 'Basic YTpi' }],
    ];
    for (const [what, variables, headers] of cases) {
      const direct = await ask(PAGE, variables, headers);
      assert.ok(JSON.parse(direct.text).errors?.length > 0, `${what}: ${direct.text}`);
      same(direct, await viaYoga(PAGE, variables, headers), what);
    }
    assert.equal(await directReads(), before);
  });

  test('an answer with errors goes to Yoga with the result: the read runs once, and Yoga masks its error', async () => {
    assert.equal((await ask(PAGE, { first: 1 })).status, 200);
    const db = database();
    const queryDirect = db.queryDirect;
    let reads = 0;
    db.queryDirect = ((text: string, ...rest: unknown[]) => {
      if (text.includes('FROM user_metrics')) reads++;
      return (queryDirect as (...args: unknown[]) => Promise<unknown[]>).call(db, text, ...rest);
    }) as typeof db.queryDirect;
    try {
      const answer = await withoutUserMetrics(service, () => ask(PAGE, { first: 1 }));
      const [error] = JSON.parse(answer.text).errors;
      assert.equal(error.extensions.code, 'INTERNAL_SERVER_ERROR', answer.text);
      assert.equal(error.extensions.requestId, answer.requestId);
      assert.doesNotMatch(answer.text, /user_metrics|relation/);
      assert.equal(reads, 1);
    } finally {
      db.queryDirect = queryDirect;
    }
  });

  test('a body that is not the plain { query, variables, operationName } is Yoga\'s to judge', async () => {
    assert.equal((await ask(PAGE, { first: 1 })).status, 200);
    const before = await directReads();
    for (const body of [
      JSON.stringify({ query: PAGE, variables: { first: 1 }, extensions: {} }),
      JSON.stringify({ query: PAGE, variables: [1] }),
      JSON.stringify({ query: PAGE, operationName: '' }),
      JSON.stringify({ query: PAGE, operationName: 'Other' }),
      `${JSON.stringify({ query: PAGE })} trailing`,
    ]) {
      const answer = await post(body, read);
      assert.ok(answer.text.startsWith('{'), `${body.slice(-40)}: ${answer.text}`);
    }
    assert.equal(await directReads(), before);
  });
});
