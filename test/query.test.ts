/**
 * The `metrics` and `metric` queries through HTTP over a generated fixture of 3,000 varied rows: every filter operator
 * and their combinations, ordering by every field and direction, and cursor paging, each checked against SQL the test
 * writes itself (not the service's translation).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { database } from '../src/db/client.js';
import { picker, sleep } from './support/fixtures.js';
import { INGEST, nowSeconds, startTestService, type TestService } from './support/harness.js';

const SEED = Number(process.env.TEST_SEED ?? 20261127);

let service: TestService;
let total = 0;
/** The latest created_at of each ingested batch (ISO text with microseconds), oldest first. */
let batchTimes: string[] = [];

const USER_IDS = [
  'alice',
  'Alice',
  'ALICE',
  'alicia',
  'bob',
  'bobby',
  'a%b',
  'a_b',
  'axb',
  'a\\b',
  '100%',
  '50_50',
  'user_1',
  'user_10',
  'userX1',
  'ümlaut',
  '😀emoji',
  ' spaced ',
  'carol',
  'dave',
];
const SENTIMENTS = [
  'positive',
  'negative',
  'neutral',
  'Positive',
  'POSITIVE',
  'pos%itive',
  'mixed_up',
  'mixedXup',
  '😀happy',
];
const TALKED = [0, 1, 59, 60, 61, 300, 3600, 86_399, 86_400];

before(async () => {
  service = await startTestService();
  const p = picker(SEED);
  const base = nowSeconds() - 30 * 86_400;
  const makeRecord = (i: number) => ({
    ...(p.chance(0.3) ? { eventId: `q-${i}` } : {}),
    userId: p.pick(USER_IDS),
    sessionId: p.chance(0.9) ? `s-${p.int(0, 29)}` : p.pick(['S-1', 'sess%1', 'sess_1', 'sessX1']),
    timestamp: base + p.int(0, 2000) * 600,
    talkedTime: p.chance(0.5) ? p.pick(TALKED) : p.int(0, 86_400),
    microphoneUsed: p.chance(0.5),
    speakerUsed: p.chance(0.6),
    ...(p.chance(0.25) ? (p.chance(0.5) ? { voiceSentiment: null } : {}) : { voiceSentiment: p.pick(SENTIMENTS) }),
  });
  // Four small batches a little apart (createdAt ranges), then two large ones: each batch shares one created_at.
  const sizes = [100, 100, 100, 100, 1300, 1300];
  let i = 0;
  for (const size of sizes) {
    const records = Array.from({ length: size }, () => makeRecord(i++));
    const data = await service.gql(INGEST, { records });
    assert.deepEqual(data.ingestMetrics.rejected, []);
    await sleep(15);
  }
  // Rows written by concurrent requests can share a millisecond and differ in microseconds: make one batch so, to check
  // that createdAt ordering and cursors keep full precision.
  await service.sql(`
    UPDATE user_metrics SET created_at = date_trunc('milliseconds', created_at) + (id % 7) * interval '1 microsecond' + interval '500 microseconds'
    WHERE created_at = (SELECT DISTINCT created_at FROM user_metrics ORDER BY created_at OFFSET 1 LIMIT 1)`);
  total = (await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics'))[0]?.n ?? 0;
  batchTimes = (
    await service.sql<{ t: string }>(
      `SELECT to_char(max(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS t
       FROM user_metrics GROUP BY date_trunc('milliseconds', created_at) ORDER BY 1`,
    )
  ).map((r) => r.t);
});
after(async () => {
  await service?.stop();
});

const PAGE = /* GraphQL */ `
  query Page($where: MetricFilter, $orderBy: [MetricOrder!], $first: Int, $after: String, $count: Boolean!) {
    metrics(where: $where, orderBy: $orderBy, first: $first, after: $after) {
      totalCount @include(if: $count)
      edges { cursor node { id } }
      pageInfo { hasNextPage endCursor }
    }
  }`;

interface Page {
  totalCount?: number;
  edges: Array<{ cursor: string; node: { id: string } }>;
  pageInfo: { hasNextPage: boolean; endCursor: string | null };
}

async function page(vars: {
  where?: unknown;
  orderBy?: unknown;
  first?: number;
  after?: string | null;
  count?: boolean;
}): Promise<Page> {
  const data = await service.gql<{ metrics: Page }>(PAGE, { count: false, ...vars });
  return data.metrics;
}

/** Every id the query returns, page by page, checking pageInfo on the way. */
async function allIds(
  where: unknown,
  orderBy: unknown,
  first: number,
): Promise<{ ids: number[]; totalCount: number; pages: number }> {
  const ids: number[] = [];
  const seen = new Set<number>();
  let after: string | null = null;
  let totalCount = -1;
  let pages = 0;
  for (;;) {
    const p: Page = await page({ where, orderBy, first, after, count: pages === 0 });
    if (pages === 0) totalCount = p.totalCount as number;
    pages++;
    for (const edge of p.edges) {
      const id = Number(edge.node.id);
      assert.ok(!seen.has(id), `row ${id} came again on page ${pages}`);
      seen.add(id);
      ids.push(id);
    }
    assert.equal(p.pageInfo.endCursor, p.edges.at(-1)?.cursor ?? null, 'endCursor is the last edge cursor');
    if (!p.pageInfo.hasNextPage) {
      assert.ok(p.edges.length <= first);
      break;
    }
    assert.equal(p.edges.length, first, 'a page followed by another one is full');
    after = p.pageInfo.endCursor;
    assert.ok(pages < 10_000, 'paging ends');
  }
  return { ids, totalCount, pages };
}

async function sqlIds(where: string, params: unknown[] = [], orderBy = 'id'): Promise<number[]> {
  return (
    await service.sql<{ id: number }>(`SELECT id FROM user_metrics WHERE ${where} ORDER BY ${orderBy}`, params)
  ).map((r) => r.id);
}

// Filters ---------------------------------------------------------------------------------------------------------

interface FilterCase {
  name: string;
  where: unknown;
  /** The same condition in SQL, written independently of the service's translation. */
  sql: string;
  params?: unknown[];
  /** What the fixture must give, so that every case is able to fail: `some` means neither none nor all. */
  expect: 'some' | 'none' | 'all';
}

/** SQL's unknown for a null voiceSentiment, else the condition: nulls match neither a condition nor its NOT. */
const sentiment = (condition: string) => `(CASE WHEN voice_sentiment IS NULL THEN NULL ELSE ${condition} END)`;

function filterCases(): FilterCase[] {
  return [
    // userId: every operator, case-sensitive, % and _ literal
    {
      name: 'userId equals',
      where: { userId: { equals: 'alice' } },
      sql: `user_id = $1`,
      params: ['alice'],
      expect: 'some',
    },
    {
      name: 'userId equals is case-sensitive',
      where: { userId: { equals: 'Alice' } },
      sql: `user_id = $1`,
      params: ['Alice'],
      expect: 'some',
    },
    {
      name: 'userId equals keeps spaces',
      where: { userId: { equals: ' spaced ' } },
      sql: `user_id = $1`,
      params: [' spaced '],
      expect: 'some',
    },
    { name: 'userId equals nothing stored', where: { userId: { equals: 'nobody' } }, sql: `FALSE`, expect: 'none' },
    {
      name: 'userId in',
      where: { userId: { in: ['alice', 'bob', 'nobody'] } },
      sql: `user_id IN ('alice', 'bob')`,
      expect: 'some',
    },
    { name: 'userId in []', where: { userId: { in: [] } }, sql: `FALSE`, expect: 'none' },
    {
      name: 'userId notIn',
      where: { userId: { notIn: ['alice', 'Alice', 'a%b'] } },
      sql: `user_id NOT IN ('alice', 'Alice', 'a%b')`,
      expect: 'some',
    },
    { name: 'userId notIn []', where: { userId: { notIn: [] } }, sql: `TRUE`, expect: 'all' },
    {
      name: 'userId startsWith',
      where: { userId: { startsWith: 'ali' } },
      sql: `left(user_id, 3) = 'ali'`,
      expect: 'some',
    },
    {
      name: 'userId startsWith is case-sensitive',
      where: { userId: { startsWith: 'A' } },
      sql: `left(user_id, 1) = 'A'`,
      expect: 'some',
    },
    {
      name: 'userId startsWith % is literal',
      where: { userId: { startsWith: 'a%' } },
      sql: `left(user_id, 2) = 'a%'`,
      expect: 'some',
    },
    {
      name: 'userId startsWith _ is literal',
      where: { userId: { startsWith: 'a_' } },
      sql: `left(user_id, 2) = 'a_'`,
      expect: 'some',
    },
    {
      name: 'userId startsWith user_ (not userX)',
      where: { userId: { startsWith: 'user_' } },
      sql: `left(user_id, 5) = 'user_'`,
      expect: 'some',
    },
    {
      name: 'userId startsWith a backslash is literal',
      where: { userId: { startsWith: 'a\\' } },
      sql: `left(user_id, 2) = $1`,
      params: ['a\\'],
      expect: 'some',
    },
    { name: 'userId startsWith empty', where: { userId: { startsWith: '' } }, sql: `TRUE`, expect: 'all' },
    {
      name: 'userId startsWith an emoji',
      where: { userId: { startsWith: '😀' } },
      sql: `left(user_id, 1) = '😀'`,
      expect: 'some',
    },
    {
      name: 'userId contains',
      where: { userId: { contains: 'li' } },
      sql: `strpos(user_id, 'li') > 0`,
      expect: 'some',
    },
    {
      name: 'userId contains is case-sensitive',
      where: { userId: { contains: 'LIC' } },
      sql: `strpos(user_id, 'LIC') > 0`,
      expect: 'some',
    },
    {
      name: 'userId contains % is literal',
      where: { userId: { contains: '%' } },
      sql: `strpos(user_id, '%') > 0`,
      expect: 'some',
    },
    {
      name: 'userId contains _ is literal',
      where: { userId: { contains: '_' } },
      sql: `strpos(user_id, '_') > 0`,
      expect: 'some',
    },
    {
      name: 'userId contains 0_',
      where: { userId: { contains: '0_' } },
      sql: `strpos(user_id, '0_') > 0`,
      expect: 'some',
    },
    {
      name: 'userId contains a backslash',
      where: { userId: { contains: '\\' } },
      sql: `strpos(user_id, $1) > 0`,
      params: ['\\'],
      expect: 'some',
    },
    {
      name: 'userId: several operators in one filter all hold',
      where: { userId: { startsWith: 'a', contains: 'i', notIn: ['alice'] } },
      sql: `left(user_id, 1) = 'a' AND strpos(user_id, 'i') > 0 AND user_id <> 'alice'`,
      expect: 'some',
    },
    // sessionId
    { name: 'sessionId equals', where: { sessionId: { equals: 's-7' } }, sql: `session_id = 's-7'`, expect: 'some' },
    {
      name: 'sessionId in',
      where: { sessionId: { in: ['s-1', 'S-1'] } },
      sql: `session_id IN ('s-1', 'S-1')`,
      expect: 'some',
    },
    {
      name: 'sessionId notIn',
      where: { sessionId: { notIn: ['s-1', 's-2'] } },
      sql: `session_id NOT IN ('s-1', 's-2')`,
      expect: 'some',
    },
    {
      name: 'sessionId startsWith sess_',
      where: { sessionId: { startsWith: 'sess_' } },
      sql: `left(session_id, 5) = 'sess_'`,
      expect: 'some',
    },
    {
      name: 'sessionId contains %',
      where: { sessionId: { contains: 's%' } },
      sql: `strpos(session_id, 's%') > 0`,
      expect: 'some',
    },
    // voiceSentiment: nulls match only isNull: true
    {
      name: 'voiceSentiment equals',
      where: { voiceSentiment: { equals: 'positive' } },
      sql: `voice_sentiment = 'positive'`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment in',
      where: { voiceSentiment: { in: ['positive', 'neutral'] } },
      sql: `voice_sentiment IN ('positive', 'neutral')`,
      expect: 'some',
    },
    { name: 'voiceSentiment in []', where: { voiceSentiment: { in: [] } }, sql: `FALSE`, expect: 'none' },
    {
      name: 'voiceSentiment notIn does not match nulls',
      where: { voiceSentiment: { notIn: ['positive'] } },
      sql: `voice_sentiment IS NOT NULL AND voice_sentiment <> 'positive'`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment notIn [] does not match nulls',
      where: { voiceSentiment: { notIn: [] } },
      sql: `voice_sentiment IS NOT NULL`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment startsWith pos% (literal)',
      where: { voiceSentiment: { startsWith: 'pos%' } },
      sql: `left(voice_sentiment, 4) = 'pos%'`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment startsWith is case-sensitive',
      where: { voiceSentiment: { startsWith: 'P' } },
      sql: `left(voice_sentiment, 1) = 'P'`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment contains _ (literal)',
      where: { voiceSentiment: { contains: 'd_' } },
      sql: `strpos(voice_sentiment, 'd_') > 0`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment contains',
      where: { voiceSentiment: { contains: 'itive' } },
      sql: `strpos(voice_sentiment, 'itive') > 0`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment isNull true',
      where: { voiceSentiment: { isNull: true } },
      sql: `voice_sentiment IS NULL`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment isNull false',
      where: { voiceSentiment: { isNull: false } },
      sql: `voice_sentiment IS NOT NULL`,
      expect: 'some',
    },
    {
      name: 'voiceSentiment isNull true and equals',
      where: { voiceSentiment: { isNull: true, equals: 'positive' } },
      sql: `FALSE`,
      expect: 'none',
    },
    // timestamp and talkedTime: every number operator
    ...numberCases('timestamp', '"timestamp"'),
    ...numberCases('talkedTime', 'talked_time'),
    { name: 'talkedTime equals 0', where: { talkedTime: { equals: 0 } }, sql: `talked_time = 0`, expect: 'some' },
    {
      name: 'talkedTime gte 86400',
      where: { talkedTime: { gte: 86_400 } },
      sql: `talked_time = 86400`,
      expect: 'some',
    },
    {
      name: 'talkedTime in [0, 86400]',
      where: { talkedTime: { in: [0, 86_400] } },
      sql: `talked_time IN (0, 86400)`,
      expect: 'some',
    },
    { name: 'talkedTime in []', where: { talkedTime: { in: [] } }, sql: `FALSE`, expect: 'none' },
    { name: 'timestamp in []', where: { timestamp: { in: [] } }, sql: `FALSE`, expect: 'none' },
    // booleans
    { name: 'microphoneUsed true', where: { microphoneUsed: true }, sql: `microphone_used`, expect: 'some' },
    { name: 'microphoneUsed false', where: { microphoneUsed: false }, sql: `NOT microphone_used`, expect: 'some' },
    { name: 'speakerUsed true', where: { speakerUsed: true }, sql: `speaker_used`, expect: 'some' },
    {
      name: 'microphoneUsed and speakerUsed',
      where: { microphoneUsed: false, speakerUsed: true },
      sql: `NOT microphone_used AND speaker_used`,
      expect: 'some',
    },
    // AND / OR / NOT
    { name: 'empty AND matches everything', where: { AND: [] }, sql: `TRUE`, expect: 'all' },
    { name: 'empty OR matches nothing', where: { OR: [] }, sql: `FALSE`, expect: 'none' },
    { name: 'empty filter matches everything', where: {}, sql: `TRUE`, expect: 'all' },
    { name: 'NOT of empty OR matches everything', where: { NOT: { OR: [] } }, sql: `TRUE`, expect: 'all' },
    {
      name: 'AND of two',
      where: { AND: [{ userId: { startsWith: 'a' } }, { talkedTime: { gte: 3600 } }] },
      sql: `left(user_id, 1) = 'a' AND talked_time >= 3600`,
      expect: 'some',
    },
    {
      name: 'fields and AND in one filter all hold',
      where: {
        microphoneUsed: true,
        AND: [{ voiceSentiment: { isNull: false } }],
        OR: [{ userId: { equals: 'bob' } }, { userId: { equals: 'carol' } }],
      },
      sql: `microphone_used AND voice_sentiment IS NOT NULL AND user_id IN ('bob', 'carol')`,
      expect: 'some',
    },
    {
      name: 'OR of three',
      where: {
        OR: [{ userId: { equals: 'bob' } }, { voiceSentiment: { equals: 'neutral' } }, { talkedTime: { equals: 60 } }],
      },
      sql: `user_id = 'bob' OR voice_sentiment = 'neutral' OR talked_time = 60`,
      expect: 'some',
    },
    {
      name: 'OR nesting AND',
      where: {
        OR: [{ AND: [{ userId: { equals: 'alice' } }, { speakerUsed: false }] }, { sessionId: { startsWith: 'sess' } }],
      },
      sql: `(user_id = 'alice' AND NOT speaker_used) OR left(session_id, 4) = 'sess'`,
      expect: 'some',
    },
    {
      name: 'NOT userId equals',
      where: { NOT: { userId: { equals: 'alice' } } },
      sql: `user_id <> 'alice'`,
      expect: 'some',
    },
    {
      name: 'NOT voiceSentiment equals does not match nulls',
      where: { NOT: { voiceSentiment: { equals: 'positive' } } },
      sql: `voice_sentiment IS NOT NULL AND voice_sentiment <> 'positive'`,
      expect: 'some',
    },
    {
      name: 'NOT voiceSentiment notIn does not match nulls',
      where: { NOT: { voiceSentiment: { notIn: ['positive', 'negative'] } } },
      sql: `voice_sentiment IN ('positive', 'negative')`,
      expect: 'some',
    },
    {
      name: 'NOT voiceSentiment notIn [] does not match nulls',
      where: { NOT: { voiceSentiment: { notIn: [] } } },
      sql: `FALSE`,
      expect: 'none',
    },
    {
      name: 'NOT voiceSentiment in [] does not match nulls',
      where: { NOT: { voiceSentiment: { in: [] } } },
      sql: `voice_sentiment IS NOT NULL`,
      expect: 'some',
    },
    {
      name: 'NOT voiceSentiment isNull true',
      where: { NOT: { voiceSentiment: { isNull: true } } },
      sql: `voice_sentiment IS NOT NULL`,
      expect: 'some',
    },
    {
      name: 'NOT voiceSentiment contains does not match nulls',
      where: { NOT: { voiceSentiment: { contains: 'itive' } } },
      sql: `voice_sentiment IS NOT NULL AND strpos(voice_sentiment, 'itive') = 0`,
      expect: 'some',
    },
    {
      name: 'NOT of an OR: three-valued logic',
      where: { NOT: { OR: [{ voiceSentiment: { equals: 'positive' } }, { talkedTime: { lt: 300 } }] } },
      sql: `NOT (${sentiment(`voice_sentiment = 'positive'`)} OR talked_time < 300)`,
      expect: 'some',
    },
    {
      name: 'NOT of an AND: three-valued logic',
      where: { NOT: { AND: [{ voiceSentiment: { startsWith: 'pos' } }, { microphoneUsed: true }] } },
      sql: `NOT (${sentiment(`left(voice_sentiment, 3) = 'pos'`)} AND microphone_used)`,
      expect: 'some',
    },
    {
      name: 'NOT NOT voiceSentiment equals',
      where: { NOT: { NOT: { voiceSentiment: { equals: 'negative' } } } },
      sql: `voice_sentiment = 'negative'`,
      expect: 'some',
    },
    {
      name: 'OR with isNull',
      where: { OR: [{ voiceSentiment: { isNull: true } }, { voiceSentiment: { in: ['neutral'] } }] },
      sql: `voice_sentiment IS NULL OR voice_sentiment = 'neutral'`,
      expect: 'some',
    },
    {
      name: 'deep nesting',
      where: {
        AND: [
          { OR: [{ userId: { in: ['alice', 'bob', 'carol'] } }, { NOT: { talkedTime: { gt: 100 } } }] },
          { NOT: { OR: [{ speakerUsed: true }, { sessionId: { in: ['s-3', 's-4'] } }] } },
        ],
      },
      sql: `(user_id IN ('alice', 'bob', 'carol') OR talked_time <= 100) AND NOT speaker_used AND session_id NOT IN ('s-3', 's-4')`,
      expect: 'some',
    },
    ...createdAtCases(),
  ];
}

function numberCases(field: 'timestamp' | 'talkedTime', column: string): FilterCase[] {
  // Values from the fixture's own range, read back by SQL before the cases run.
  const v = numberValues[field];
  return [
    {
      name: `${field} equals`,
      where: { [field]: { equals: v.common } },
      sql: `${column} = $1`,
      params: [v.common],
      expect: 'some',
    },
    {
      name: `${field} in`,
      where: { [field]: { in: [v.common, v.low, v.high, -1] } },
      sql: `${column} IN ($1, $2, $3)`,
      params: [v.common, v.low, v.high],
      expect: 'some',
    },
    { name: `${field} gt`, where: { [field]: { gt: v.mid } }, sql: `${column} > $1`, params: [v.mid], expect: 'some' },
    {
      name: `${field} gte`,
      where: { [field]: { gte: v.mid } },
      sql: `${column} >= $1`,
      params: [v.mid],
      expect: 'some',
    },
    { name: `${field} lt`, where: { [field]: { lt: v.mid } }, sql: `${column} < $1`, params: [v.mid], expect: 'some' },
    {
      name: `${field} lte`,
      where: { [field]: { lte: v.mid } },
      sql: `${column} <= $1`,
      params: [v.mid],
      expect: 'some',
    },
    {
      name: `${field} range gte..lt`,
      where: { [field]: { gte: v.low, lt: v.high } },
      sql: `${column} >= $1 AND ${column} < $2`,
      params: [v.low, v.high],
      expect: 'some',
    },
    {
      name: `${field} range gt..lte`,
      where: { [field]: { gt: v.low, lte: v.high } },
      sql: `${column} > $1 AND ${column} <= $2`,
      params: [v.low, v.high],
      expect: 'some',
    },
    { name: `${field} empty range`, where: { [field]: { gt: v.high, lt: v.low } }, sql: `FALSE`, expect: 'none' },
    { name: `${field} lte max`, where: { [field]: { lte: v.max } }, sql: `TRUE`, expect: 'all' },
  ];
}

const numberValues = {
  timestamp: { common: 0, low: 0, mid: 0, high: 0, max: 0 },
  talkedTime: { common: 0, low: 0, mid: 0, high: 0, max: 0 },
};

function createdAtCases(): FilterCase[] {
  // batchTimes: six batches; the second one's rows differ in microseconds.
  const [, second, third, , fifth] = batchTimes;
  const ms = (iso: string) => new Date(iso).toISOString(); // truncated to milliseconds, as a client would send it
  const between = (a: string, b: string) => new Date((Date.parse(a) + Date.parse(b)) / 2).toISOString();
  const last = batchTimes.at(-1) as string;
  const c = (
    name: string,
    where: unknown,
    sql: string,
    params: unknown[],
    expect: FilterCase['expect'],
  ): FilterCase => ({
    name: `createdAt ${name}`,
    where: { createdAt: where },
    sql,
    params,
    expect,
  });
  return [
    c(
      'gt between batches',
      { gt: between(third as string, batchTimes[3] as string) },
      `created_at > $1::timestamptz`,
      [between(third as string, batchTimes[3] as string)],
      'some',
    ),
    c('gte a batch (ms)', { gte: ms(fifth as string) }, `created_at >= $1::timestamptz`, [ms(fifth as string)], 'some'),
    c('lt a batch (ms)', { lt: ms(third as string) }, `created_at < $1::timestamptz`, [ms(third as string)], 'some'),
    c(
      'lte the microsecond batch (ms)',
      { lte: ms(second as string) },
      `created_at <= $1::timestamptz`,
      [ms(second as string)],
      'some',
    ),
    c(
      'range',
      { gte: between(batchTimes[0] as string, second as string), lt: between(fifth as string, last) },
      `created_at >= $1::timestamptz AND created_at < $2::timestamptz`,
      [between(batchTimes[0] as string, second as string), between(fifth as string, last)],
      'some',
    ),
    c('gt the last batch', { gt: new Date(Date.parse(last) + 1).toISOString() }, `FALSE`, [], 'none'),
  ];
}

test('the fixture is what the filter and order tests need', async () => {
  assert.ok(total >= 2900, `rows: ${total}`);
  assert.ok(batchTimes.length >= 6, `distinct created_at values: ${batchTimes.length}`);
  const [nulls] = await service.sql<{ n: number }>(
    'SELECT count(*)::int AS n FROM user_metrics WHERE voice_sentiment IS NULL',
  );
  assert.ok((nulls?.n ?? 0) > 100, 'many null voiceSentiment rows');
  const [shared] = await service.sql<{ n: number }>(
    'SELECT max(c)::int AS n FROM (SELECT count(*) AS c FROM user_metrics GROUP BY created_at) g',
  );
  assert.ok((shared?.n ?? 0) >= 1000, 'a batch shares one created_at');
});

test('every filter operator and combination matches an independent SQL count, across pages', async () => {
  for (const field of ['timestamp', 'talkedTime'] as const) {
    const column = field === 'timestamp' ? '"timestamp"' : 'talked_time';
    const [stats] = await service.sql<{ common: number; low: number; mid: number; high: number; max: number }>(
      `SELECT (SELECT ${column} FROM user_metrics GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1)::float8 AS common,
              percentile_disc(0.2) WITHIN GROUP (ORDER BY ${column})::float8 AS low,
              percentile_disc(0.5) WITHIN GROUP (ORDER BY ${column})::float8 AS mid,
              percentile_disc(0.8) WITHIN GROUP (ORDER BY ${column})::float8 AS high,
              max(${column})::float8 AS max
       FROM user_metrics`,
    );
    Object.assign(numberValues[field], stats);
  }
  const failures: string[] = [];
  for (const c of filterCases()) {
    const expected = await sqlIds(c.sql, c.params);
    const shape = expected.length === 0 ? 'none' : expected.length === total ? 'all' : 'some';
    assert.equal(shape, c.expect, `${c.name}: the fixture gives ${expected.length} of ${total} rows`);
    const { ids, totalCount } = await allIds(c.where, [{ field: 'TALKED_TIME', direction: 'ASC' }], 1000);
    const got = [...ids].sort((a, b) => a - b);
    if (totalCount !== expected.length || got.length !== expected.length || got.some((id, i) => id !== expected[i])) {
      const missing = expected.filter((id) => !got.includes(id)).length;
      const extra = got.filter((id) => !expected.includes(id)).length;
      failures.push(
        `${c.name}: SQL ${expected.length}, totalCount ${totalCount}, ids ${got.length} (${missing} missing, ${extra} extra)`,
      );
    }
  }
  assert.deepEqual(failures, []);
});

test('startsWith can use an index (a LIKE prefix with % and _ escaped, as the service sends it)', async () => {
  const plans = await database().withSession(async (session) => {
    await session.query('SET enable_seqscan = off');
    try {
      const explain = async (column: string, prefix: string) =>
        (
          await session.query<{ 'QUERY PLAN': string }>(`EXPLAIN SELECT id FROM user_metrics WHERE ${column} LIKE $1`, [
            `${prefix}%`,
          ])
        )
          .map((r) => r['QUERY PLAN'])
          .join('\n');
      return { userId: await explain('user_id', 'a\\%'), sessionId: await explain('session_id', 'sess\\_') };
    } finally {
      await session.query('RESET enable_seqscan');
    }
  });
  assert.match(plans.userId, /Index Cond: .*user_id.* ~>=~ 'a%'.* ~<~ 'a&'/, plans.userId);
  assert.match(plans.sessionId, /Index Cond: .*session_id.* ~>=~ 'sess_'.* ~<~ 'sess`'/, plans.sessionId);
});

test('filter mistakes are errors that name the argument', async () => {
  const notIn = await service.request(PAGE, {
    count: false,
    where: { NOT: [{ userId: { equals: 'a' } }, { userId: { equals: 'b' } }] },
  });
  assert.ok(notIn.errors?.length, 'NOT takes one filter, not a list');
  const nul = await service.request(PAGE, { count: false, where: { userId: { equals: 'a\u0000' } } });
  assert.equal(nul.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(nul.errors));
  assert.match(nul.errors?.[0]?.message ?? '', /userId\.equals/);
});

// Ordering and paging ---------------------------------------------------------------------------------------------

const COLUMN = { TIMESTAMP: '"timestamp"', TALKED_TIME: 'talked_time', CREATED_AT: 'created_at' } as const;
type Order = Array<{ field: keyof typeof COLUMN; direction: 'ASC' | 'DESC' }>;
const orderSql = (order: Order) =>
  [...order.map((o) => `${COLUMN[o.field]} ${o.direction}`), `id ${order[0]?.direction ?? 'DESC'}`].join(', ');

const ORDERS: Order[] = [
  [{ field: 'TIMESTAMP', direction: 'ASC' }],
  [{ field: 'TIMESTAMP', direction: 'DESC' }],
  [{ field: 'TALKED_TIME', direction: 'ASC' }],
  [{ field: 'TALKED_TIME', direction: 'DESC' }],
  [{ field: 'CREATED_AT', direction: 'ASC' }],
  [{ field: 'CREATED_AT', direction: 'DESC' }],
  [
    { field: 'TALKED_TIME', direction: 'ASC' },
    { field: 'TIMESTAMP', direction: 'DESC' },
  ],
  [
    { field: 'CREATED_AT', direction: 'DESC' },
    { field: 'TALKED_TIME', direction: 'ASC' },
  ],
  [
    { field: 'CREATED_AT', direction: 'ASC' },
    { field: 'TIMESTAMP', direction: 'ASC' },
  ],
  [
    { field: 'TIMESTAMP', direction: 'DESC' },
    { field: 'CREATED_AT', direction: 'ASC' },
    { field: 'TALKED_TIME', direction: 'DESC' },
  ],
];

test('paging through every row with first=137 follows SQL ORDER BY of the same keys, for every order, without skips or repeats', async () => {
  for (const order of ORDERS) {
    const expected = await sqlIds('TRUE', [], orderSql(order));
    const { ids, totalCount, pages } = await allIds(null, order, 137);
    const label = JSON.stringify(order);
    assert.equal(totalCount, total, label);
    assert.equal(new Set(ids).size, ids.length, `${label}: no row twice`);
    assert.equal(pages, Math.ceil(total / 137), label);
    assert.deepEqual(ids, expected, `${label}: the same rows in the same order as SQL`);
  }
});

test('the default order is newest timestamp first, ties by id; first defaults to 100', async () => {
  const expected = await sqlIds('TRUE', [], '"timestamp" DESC, id DESC LIMIT 100');
  const p = await page({});
  assert.deepEqual(
    p.edges.map((e) => Number(e.node.id)),
    expected,
  );
  assert.equal(p.pageInfo.hasNextPage, true);
  const { ids } = await allIds({ voiceSentiment: { isNull: true } }, null, 250);
  assert.deepEqual(ids, await sqlIds('voice_sentiment IS NULL', [], '"timestamp" DESC, id DESC'));
});

test('paging a filtered, multi-key order matches SQL', async () => {
  const order: Order = [
    { field: 'TALKED_TIME', direction: 'DESC' },
    { field: 'CREATED_AT', direction: 'ASC' },
  ];
  const { ids, totalCount } = await allIds(
    { OR: [{ voiceSentiment: { isNull: true } }, { microphoneUsed: true }] },
    order,
    61,
  );
  const expected = await sqlIds('voice_sentiment IS NULL OR microphone_used', [], orderSql(order));
  assert.equal(totalCount, expected.length);
  assert.deepEqual(ids, expected);
});

test('any edge cursor continues right after its row', async () => {
  const order: Order = [{ field: 'CREATED_AT', direction: 'ASC' }];
  const expected = await sqlIds('TRUE', [], orderSql(order));
  const first = await page({ orderBy: order, first: 400 });
  for (const k of [0, 57, 99, 150, 399]) {
    const next = await page({ orderBy: order, first: 20, after: first.edges[k]?.cursor });
    assert.deepEqual(
      next.edges.map((e) => Number(e.node.id)),
      expected.slice(k + 1, k + 21),
      `after edge ${k}`,
    );
  }
});

test('hasNextPage is false on the exact last page and true only when another row exists', async () => {
  const where = { userId: { equals: 'bob' } };
  const expected = await sqlIds(`user_id = 'bob'`, [], '"timestamp" DESC, id DESC');
  const n = expected.length;
  assert.ok(n > 2);
  const exact = await page({ where, first: n });
  assert.equal(exact.edges.length, n);
  assert.equal(exact.pageInfo.hasNextPage, false, 'first = the number of matching rows');
  const short = await page({ where, first: n - 1 });
  assert.equal(short.pageInfo.hasNextPage, true);
  const lastOne = await page({ where, first: 1, after: short.pageInfo.endCursor });
  assert.deepEqual(
    lastOne.edges.map((e) => Number(e.node.id)),
    expected.slice(n - 1),
  );
  assert.equal(lastOne.pageInfo.hasNextPage, false);
  const beyond = await page({ where, first: 5, after: lastOne.pageInfo.endCursor });
  assert.deepEqual(beyond, { edges: [], pageInfo: { hasNextPage: false, endCursor: null } });
  const none = await page({ where: { OR: [] }, count: true });
  assert.deepEqual(none, { totalCount: 0, edges: [], pageInfo: { hasNextPage: false, endCursor: null } });
  // The whole table in pages of 1,000: the last page is exact when the total is a multiple of the page size.
  const all = await allIds(null, null, 1000);
  assert.equal(all.ids.length, total);
});

test('rows sharing one created_at (one batch) and rows apart by microseconds page correctly by createdAt', async () => {
  for (const direction of ['ASC', 'DESC'] as const) {
    const order: Order = [{ field: 'CREATED_AT', direction }];
    const expected = await sqlIds(`created_at <= $1::timestamptz`, [batchTimes[2]], orderSql(order));
    const { ids } = await allIds(
      { createdAt: { lte: new Date(Date.parse(batchTimes[2] as string) + 1).toISOString() } },
      order,
      7,
    );
    assert.deepEqual(ids, expected, direction);
  }
});

test('a cursor belongs to its order: reusing it with another orderBy is an error', async () => {
  const p = await page({ orderBy: [{ field: 'TIMESTAMP', direction: 'ASC' }], first: 3 });
  const cursor = p.pageInfo.endCursor;
  for (const orderBy of [
    [{ field: 'TALKED_TIME', direction: 'ASC' }],
    [{ field: 'TIMESTAMP', direction: 'DESC' }],
    null,
    [
      { field: 'TIMESTAMP', direction: 'ASC' },
      { field: 'TALKED_TIME', direction: 'ASC' },
    ],
  ]) {
    const response = await service.request(PAGE, { count: false, orderBy, after: cursor });
    const [error] = response.errors ?? [];
    assert.equal(error?.extensions?.code, 'BAD_USER_INPUT', `${JSON.stringify(orderBy)}: ${JSON.stringify(response)}`);
    assert.match(error?.message ?? '', /order/);
  }
  for (const damaged of ['nonsense', Buffer.from('{"o":"TIMESTAMP:ASC","v":["x",1]}').toString('base64url'), '']) {
    const response = await service.request(PAGE, {
      count: false,
      orderBy: [{ field: 'TIMESTAMP', direction: 'ASC' }],
      after: damaged,
    });
    assert.equal(response.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', `${damaged}: ${JSON.stringify(response)}`);
  }
});

test('first must be 1..1000, with an error that says so', async () => {
  for (const first of [0, -1, 1001, 100_000]) {
    const response = await service.request(PAGE, { count: false, first });
    const [error] = response.errors ?? [];
    assert.equal(error?.extensions?.code, 'BAD_USER_INPUT', `first=${first}: ${JSON.stringify(response)}`);
    assert.match(error?.message ?? '', /first must be between 1 and 1000/);
  }
  assert.equal((await page({ first: 1000 })).edges.length, 1000);
  assert.equal((await page({ first: 1 })).edges.length, 1);
  const repeated = await service.request(PAGE, {
    count: false,
    orderBy: [
      { field: 'TIMESTAMP', direction: 'ASC' },
      { field: 'TIMESTAMP', direction: 'DESC' },
    ],
  });
  assert.equal(repeated.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT');
});

test('metric(id) returns the stored record with every field, or null', async () => {
  const rows = await service.sql<Record<string, unknown>>(
    `SELECT id, event_id, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used, voice_sentiment, created_at
     FROM user_metrics WHERE id IN ((SELECT min(id) FROM user_metrics WHERE event_id IS NOT NULL AND voice_sentiment IS NOT NULL),
                                    (SELECT min(id) FROM user_metrics WHERE event_id IS NULL AND voice_sentiment IS NULL))`,
  );
  assert.equal(rows.length, 2);
  const METRIC = `query($id: ID!) { metric(id: $id) { id eventId userId sessionId timestamp occurredAt talkedTime microphoneUsed speakerUsed voiceSentiment createdAt } }`;
  for (const row of rows) {
    const data = await service.gql(METRIC, { id: String(row.id) });
    assert.deepEqual(data.metric, {
      id: String(row.id),
      eventId: row.event_id,
      userId: row.user_id,
      sessionId: row.session_id,
      timestamp: Number(row.timestamp),
      occurredAt: new Date(Number(row.timestamp) * 1000).toISOString(),
      talkedTime: row.talked_time,
      microphoneUsed: row.microphone_used,
      speakerUsed: row.speaker_used,
      voiceSentiment: row.voice_sentiment,
      createdAt: new Date(row.created_at as Date).toISOString(),
    });
  }
  const [max] = await service.sql<{ id: number }>('SELECT max(id) AS id FROM user_metrics');
  for (const id of [String((max?.id ?? 0) + 1), '0', '-1', 'abc', '99999999999999999999', '1.5']) {
    const data = await service.gql(METRIC, { id });
    assert.equal(data.metric, null, `metric(id: ${JSON.stringify(id)})`);
  }
});

test('nodes in a page carry the stored values', async () => {
  const data = await service.gql(
    `{ metrics(first: 50, orderBy: [{ field: TALKED_TIME, direction: DESC }]) { edges { node { id eventId userId sessionId timestamp talkedTime microphoneUsed speakerUsed voiceSentiment } } } }`,
  );
  const rows = await service.sql<Record<string, unknown>>(
    `SELECT id::text AS id, event_id AS "eventId", user_id AS "userId", session_id AS "sessionId", "timestamp"::int8 AS "timestamp",
            talked_time AS "talkedTime", microphone_used AS "microphoneUsed", speaker_used AS "speakerUsed", voice_sentiment AS "voiceSentiment"
     FROM user_metrics ORDER BY talked_time DESC, user_metrics.id DESC LIMIT 50`,
  );
  assert.deepEqual(
    data.metrics.edges.map((e: { node: unknown }) => e.node),
    rows.map((r) => ({ ...r, timestamp: Number(r.timestamp) })),
  );
});
