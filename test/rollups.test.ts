/**
 * Rollups (src/services/rollups.ts, the trigger of prisma/migrations/*_rollups): kept right by every write path, and
 * `metricStats` answers the same from them as from the raw rows. Records are sent through HTTP in a seeded random
 * order with duplicates (repeated identities, an eventId resent with other content), rejected records, an atomic batch
 * that stores nothing, late records (old timestamps after new ones) and concurrent overlapping batches; the days of
 * daylight-saving changes of Europe/Berlin, America/New_York and Australia/Lord_Howe (a 30-minute change) and the
 * +05:30 and +05:45 zones are covered. Then seeded random questions are asked of both sources and must agree exactly;
 * the approximate figures are checked against the exact ones (distinct users within 2%, p50/p95 within 1%).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { database } from '../src/db/client.js';
import {
  foldRollups,
  hourAligned,
  misalignedSlots,
  rebuildRollups,
  refreshSketches,
  startRollupFolding,
} from '../src/services/rollups.js';
import {
  type MetricDimension,
  metricStats,
  planStatsSql,
  resolveTimeZone,
  type StatsArgs,
  type StatsFigure,
} from '../src/services/stats.js';
import { picker } from './support/fixtures.js';
import { INGEST, startTestService, type TestService } from './support/harness.js';

const SEED = Number(process.env.TEST_SEED ?? 20261202);
const LIMITS = { maxGroups: 1000 };
const at = (iso: string) => Date.parse(iso) / 1000;

interface MetricRecord {
  eventId?: string;
  userId: string;
  sessionId: string;
  timestamp: number;
  talkedTime: number;
  microphoneUsed: boolean;
  speakerUsed: boolean;
  voiceSentiment: string | null;
}

const ZONES = [
  'UTC',
  'Europe/Berlin',
  'America/New_York',
  'Asia/Kathmandu',
  'Asia/Kolkata',
  'Australia/Lord_Howe',
  'America/St_Johns',
];
const SENTIMENTS = ['positive', 'neutral', 'negative', 'Mixed', '', null];

/** [from, to) windows in unix seconds, each around a change day or spread over the year. */
const WINDOWS = [
  { from: at('2026-03-28T00:00:00Z'), to: at('2026-03-30T12:00:00Z'), n: 500 }, // Berlin springs forward 03-29 01:00Z
  { from: at('2026-10-24T12:00:00Z'), to: at('2026-10-26T00:00:00Z'), n: 500 }, // Berlin falls back 10-25 01:00Z
  { from: at('2026-03-07T12:00:00Z'), to: at('2026-03-09T12:00:00Z'), n: 400 }, // New York 03-08 07:00Z
  { from: at('2026-10-31T12:00:00Z'), to: at('2026-11-02T12:00:00Z'), n: 400 }, // New York 11-01 06:00Z
  { from: at('2026-04-04T00:00:00Z'), to: at('2026-04-06T00:00:00Z'), n: 300 }, // Lord Howe 04-04 15:00Z (+11 -> +10:30)
  { from: at('2026-10-03T00:00:00Z'), to: at('2026-10-05T00:00:00Z'), n: 300 }, // Lord Howe 10-03 15:30Z (+10:30 -> +11)
  { from: at('2026-01-01T00:00:00Z'), to: at('2026-11-30T00:00:00Z'), n: 600 }, // the year, sent last: late records
];

/** The figures the rollups hold exactly, and those their sketches give. */
const ADDING_FIGURES: StatsFigure[] = [
  'count',
  'talkedSum',
  'talkedAvg',
  'talkedMin',
  'talkedMax',
  'microphoneRate',
  'speakerRate',
  'sentiments',
];
const SKETCH_FIGURES: StatsFigure[] = [
  'count',
  'talkedSum',
  'distinctUsersApprox',
  'talkedP50Approx',
  'talkedP95Approx',
];

let service: TestService;
const p = picker(SEED);

function randomRecord(from: number, to: number): MetricRecord {
  const userId = `user-${p.int(0, 59)}`;
  return {
    userId,
    sessionId: `${userId}-s${p.int(0, 30)}`,
    timestamp: p.int(from, to - 1),
    talkedTime: p.chance(0.05) ? p.pick([0, 86_400]) : p.int(1, 3600),
    microphoneUsed: p.chance(0.7),
    speakerUsed: p.chance(0.4),
    voiceSentiment: p.pick(SENTIMENTS),
  };
}

async function ingest(records: readonly unknown[], atomic = false) {
  // Sent again when the connection was reset (a kept-alive connection the server closed while idle): a batch resent is
  // stored once, by identity.
  const data = await service.gql(INGEST, { records, atomic }).catch(() => service.gql(INGEST, { records, atomic }));
  return data.ingestMetrics as { accepted: number; duplicates: number; rejected: unknown[] };
}

/**
 * Rows of the rollups that differ from the same figures computed from the raw rows now (both ways), once the deltas
 * are folded, and sketches (15-minute and hourly) that differ once the stale ones are refreshed.
 */
async function rollupDifferences(): Promise<{ rollups: number; sketches: number }> {
  await foldRollups();
  await refreshSketches(null, null);
  const [row] = await service.sql<{ rollups: number; sketches: number }>(`
    WITH raw AS (
      SELECT "timestamp" - "timestamp" % 900 AS slot_start, voice_sentiment IS NOT NULL AS has_sentiment,
             coalesce(voice_sentiment, '') AS voice_sentiment, microphone_used, speaker_used, count(*)::int8 AS count,
             sum(talked_time)::int8 AS talked_sum, min(talked_time) AS talked_min, max(talked_time) AS talked_max,
             min("timestamp") AS first_timestamp, max("timestamp") AS last_timestamp
      FROM user_metrics GROUP BY 1, 2, 3, 4, 5
    ), raw_sketches AS (
      SELECT slot_start, count(*)::int8 AS count, metric_user_bits(array_agg(metric_user_position(user_id)))::text AS user_bits,
             metric_talked_histogram(array_agg(metric_talked_bucket(talked_time)))::text AS talked_histogram
      FROM (SELECT "timestamp" - "timestamp" % 900 AS slot_start, user_id, talked_time FROM user_metrics) AS r GROUP BY 1
      UNION ALL
      -- The hourly sketches (as negative starts, apart from the slots'): the same, over each hour's rows.
      SELECT -hour_start, count(*)::int8, metric_user_bits(array_agg(metric_user_position(user_id)))::text,
             metric_talked_histogram(array_agg(metric_talked_bucket(talked_time)))::text
      FROM (SELECT "timestamp" - "timestamp" % 3600 AS hour_start, user_id, talked_time FROM user_metrics) AS h GROUP BY 1
    ), kept_sketches AS (
      SELECT slot_start, count, user_bits::text, talked_histogram::text FROM metric_rollup_sketches
      UNION ALL
      SELECT -hour_start, count, user_bits::text, talked_histogram::text FROM metric_rollup_sketches_hourly
    )
    SELECT (SELECT count(*)::int FROM (SELECT * FROM raw EXCEPT SELECT * FROM metric_rollups) AS a)
         + (SELECT count(*)::int FROM (SELECT * FROM metric_rollups EXCEPT SELECT * FROM raw) AS b) AS rollups,
           (SELECT count(*)::int FROM (SELECT * FROM raw_sketches EXCEPT SELECT * FROM kept_sketches) AS c)
         + (SELECT count(*)::int FROM (SELECT * FROM kept_sketches EXCEPT SELECT * FROM raw_sketches) AS d) AS sketches`);
  return row as { rollups: number; sketches: number };
}

/** Rollup delta rows not folded yet. */
const pending = async () =>
  (await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM metric_rollup_deltas'))[0]?.n ?? 0;

before(async () => {
  // Deltas folded only where a test says so, so that answers are compared with deltas pending and after a fold.
  service = await startTestService({ MAX_STAT_GROUPS: String(LIMITS.maxGroups), ROLLUP_FOLD_INTERVAL_MS: '0' });
  const sent: MetricRecord[] = [];
  for (const window of WINDOWS) {
    const records = Array.from({ length: window.n }, () => randomRecord(window.from, window.to));
    for (let i = 0; i < records.length; i += 250) {
      const batch: unknown[] = records.slice(i, i + 250);
      // Identities stored already, a record repeated within the batch, and records the rules refuse.
      for (let d = 0; d < 20 && sent.length > 0; d++) batch.push(p.pick(sent));
      batch.push(
        batch[0],
        { ...records[i], talkedTime: -1 },
        { ...records[i], timestamp: records[i]!.timestamp * 1000 },
      );
      const result = await ingest(batch);
      assert.equal(result.rejected.length, 2, 'two records of each batch are refused');
      sent.push(...records.slice(i, i + 250));
    }
  }
  // An atomic batch with a refused record stores nothing; an eventId resent at its time with other content is a
  // duplicate (the identity is the eventId with the timestamp: README, "Record identity").
  const atomic = await ingest(
    [
      randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to),
      { ...randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to), talkedTime: -1 },
    ],
    true,
  );
  assert.equal(atomic.accepted, 0);
  const once = { ...randomRecord(WINDOWS[1]!.from, WINDOWS[1]!.to), eventId: 'evt-1' };
  const first = await ingest([once]);
  const again = await ingest([
    { ...randomRecord(WINDOWS[2]!.from, WINDOWS[2]!.to), eventId: 'evt-1', timestamp: once.timestamp },
  ]);
  assert.deepEqual([first.accepted, again.accepted, again.duplicates], [1, 0, 1]);
  // Concurrent batches sharing half their records: each record is stored (and counted) once.
  const shared = Array.from({ length: 200 }, () => randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to));
  const batches = Array.from({ length: 6 }, () => [
    ...shared,
    ...Array.from({ length: 200 }, () => randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to)),
  ]);
  const results = await Promise.all(batches.map((batch) => ingest(batch)));
  assert.equal(
    results.reduce((sum, r) => sum + r.accepted, 0),
    200 + 6 * 200,
  );
});

after(async () => {
  await service?.stop();
});

/** A random question: a filter on kept dimensions and time (on slot edges or not), a grouping and a bucket. */
function randomQuestion(): StatsArgs {
  const window = p.pick(WINDOWS.slice(0, 6));
  const aligned = (t: number) => Math.floor(t / 900) * 900;
  const from = p.int(window.from, window.to - 3600);
  const to = p.int(from + 1, window.to);
  const range = p.pick([
    { gte: aligned(from), lt: aligned(to) + 900 },
    { gt: aligned(from) - 1, lte: aligned(to) - 1 },
    { gte: from, lt: to },
    { gt: from, lte: to },
    { gte: aligned(from) },
  ]);
  const where = p.pick<StatsArgs['where']>([
    { timestamp: range },
    { timestamp: range, voiceSentiment: { in: ['positive', ''] } },
    { timestamp: range, microphoneUsed: p.chance(0.5) },
    { timestamp: range, OR: [{ voiceSentiment: { isNull: true } }, { speakerUsed: true }] },
    { timestamp: range, NOT: { voiceSentiment: { startsWith: 'neg' } } },
    { AND: [{ timestamp: { gte: aligned(window.from) } }, { timestamp: { lt: aligned(window.to) } }] },
    null,
  ]);
  const dimensions: MetricDimension[] = ['VOICE_SENTIMENT', 'MICROPHONE_USED', 'SPEAKER_USED'];
  const groupBy = dimensions.filter(() => p.chance(0.3));
  if (p.chance(0.5)) groupBy.reverse();
  // Hours only over a range of days, so that a question stays within the group limit.
  const unit =
    where?.timestamp && 'lt' in range
      ? p.pick(['HOUR', 'DAY', 'WEEK', 'MONTH'] as const)
      : p.pick(['DAY', 'WEEK', 'MONTH'] as const);
  const bucket = p.chance(0.85) ? { unit, timeZone: p.pick(ZONES) } : null;
  return { where, groupBy, bucket, figures: new Set(p.chance(0.6) ? ADDING_FIGURES : SKETCH_FIGURES) };
}

test('metricStats answers the same from rollups and from raw rows (seeded random questions)', async () => {
  let fromRollups = 0;
  let withEdges = 0;
  let answered = 0;
  assert.ok((await pending()) > 0, 'deltas not folded yet');
  for (let i = 0; i < 150; i++) {
    // The first half with every delta pending, the second after a fold: the same answers.
    if (i === 75) {
      assert.ok((await foldRollups()) > 0);
      assert.equal(await pending(), 0);
    }
    const args = randomQuestion();
    const zone = args.bucket ? await resolveTimeZone(args.bucket.timeZone) : null;
    const planned = planStatsSql(
      { ...args, bucket: args.bucket && { ...args.bucket, timeZone: zone }, maxGroups: LIMITS.maxGroups },
      'auto',
      zone ? await misalignedSlots(zone) : [],
    );
    if (planned.rollups) fromRollups++;
    if (planned.rollups && /FROM user_metrics WHERE/.test(planned.sql.text)) withEdges++;
    const [auto, raw] = await Promise.all([metricStats(args, LIMITS, 'auto'), metricStats(args, LIMITS, 'raw')]);
    const what = `question ${i}: ${JSON.stringify({ ...args, figures: [...(args.figures ?? [])] })}`;
    if (raw.length > 0) answered++;
    assert.deepEqual(auto, raw, what);
  }
  // Nearly every question can be answered from rollups; some of them cut slots at the range's edges.
  assert.ok(fromRollups >= 100, `${fromRollups} of 150 questions answered from rollups`);
  assert.ok(withEdges >= 20, `${withEdges} questions combined rollups with raw edge rows`);
  assert.ok(answered >= 120, `${answered} of 150 questions have groups`);
});

test('the trigger keeps the rollups equal to the raw rows: duplicates, refused records and a failed atomic batch add nothing', async () => {
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
  const [row] = await service.sql<{ raw: number; rolled: number }>(
    'SELECT (SELECT count(*)::int FROM user_metrics) AS raw, (SELECT sum(count)::int FROM metric_rollups) AS rolled',
  );
  assert.equal(row?.rolled, row?.raw);
});

test('folds running beside concurrent batches lose no increment and count none twice', async () => {
  let ingesting = true;
  let folds = 0;
  const folding = (async () => {
    while (ingesting) {
      if ((await foldRollups(false)) >= 0) folds++;
      // A macrotask between folds: on the embedded database a query can settle without one, and the loop would
      // then starve the requests it runs beside.
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  })();
  await Promise.all(
    Array.from({ length: 6 }, () =>
      ingest(Array.from({ length: 300 }, () => randomRecord(WINDOWS[1]!.from, WINDOWS[1]!.to))),
    ),
  );
  ingesting = false;
  await folding;
  assert.ok(folds > 0, 'folds ran');
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
});

test('the service folds the deltas on its schedule, and stops doing so when stopped', async () => {
  const warnings: string[] = [];
  const folding = startRollupFolding(20, { warn: (_obj, msg) => warnings.push(msg), info: () => {} });
  try {
    await ingest(Array.from({ length: 50 }, () => randomRecord(WINDOWS[2]!.from, WINDOWS[2]!.to)));
    const deadline = Date.now() + 10_000;
    while ((await pending()) > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(await pending(), 0, 'folded within 10 s');
  } finally {
    await folding.stop();
  }
  await ingest(Array.from({ length: 50 }, () => randomRecord(WINDOWS[2]!.from, WINDOWS[2]!.to)));
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.ok((await pending()) > 0, 'no fold after stop');
  assert.deepEqual(warnings, []);
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
});

test('questions the rollups cannot answer exactly read the raw rows', async () => {
  const plan = (args: StatsArgs) =>
    planStatsSql({ ...args, bucket: args.bucket && { ...args.bucket, timeZone: 'UTC' }, maxGroups: 10 }).rollups;
  const figures = new Set<StatsFigure>(['count']);
  assert.equal(plan({ figures, bucket: { unit: 'DAY' } }), true);
  assert.equal(plan({ figures, bucket: { unit: 'MINUTE' } }), false, 'minutes are finer than slots');
  assert.equal(plan({ figures, groupBy: ['USER_ID'] }), false, 'no user dimension');
  assert.equal(plan({ figures, where: { userId: { equals: 'user-1' } } }), false);
  assert.equal(plan({ figures, where: { talkedTime: { gt: 10 } } }), false);
  assert.equal(plan({ figures, where: { timestamp: { equals: WINDOWS[0]!.from } } }), false);
  assert.equal(
    plan({ figures, where: { OR: [{ timestamp: { gte: 1_800_000_001 } }, { speakerUsed: true }] } }),
    false,
    'a cut inside OR',
  );
  assert.equal(
    plan({ figures, where: { timestamp: { gte: 1_800_000_001, lt: 1_800_000_100 } } }),
    false,
    'no whole slot',
  );
  assert.equal(plan({ figures: new Set(['distinctUsers']) }), false, 'exact distinct counts need rows');
  assert.equal(plan({ figures: new Set(['talkedP95']) }), false, 'exact percentiles need rows');
  assert.equal(plan({ figures: new Set(['talkedP95Approx']) }), true);
  assert.equal(
    plan({ figures: new Set(['talkedP95Approx']), groupBy: ['VOICE_SENTIMENT'] }),
    false,
    'sketches keep no dimension',
  );

  // Newfoundland changed its clocks at 00:01 local time until 2011: those slots straddle two of its hours (or days).
  const stJohns = await misalignedSlots('America/St_Johns');
  assert.ok(
    stJohns.includes(at('2010-11-07T02:30:00Z')) && stJohns.every((slot) => slot < at('2012-01-01T00:00:00Z')),
    JSON.stringify(stJohns),
  );
  assert.deepEqual(await misalignedSlots('Asia/Kathmandu'), []);
  const newfoundland = (where: StatsArgs['where']) =>
    planStatsSql(
      { figures, where, bucket: { unit: 'DAY', timeZone: 'America/St_Johns' }, maxGroups: 10 },
      'auto',
      stJohns,
    ).rollups;
  assert.equal(newfoundland({ timestamp: { gte: at('2026-01-01T00:00:00Z') } }), true);
  assert.equal(newfoundland({ timestamp: { gte: at('2010-01-01T00:00:00Z'), lt: at('2011-01-01T00:00:00Z') } }), false);
  assert.equal(newfoundland(null), false, 'an unbounded range holds the misaligned slots');
});

test('hourly sketches stand for their slots in whole-hour zones: the same answers, from a quarter of the merges', async () => {
  assert.equal(await hourAligned('Europe/Berlin'), true);
  assert.equal(await hourAligned('UTC'), true);
  assert.equal(await hourAligned('America/New_York'), true);
  assert.equal(await hourAligned('Asia/Kathmandu'), false, '+05:45');
  assert.equal(await hourAligned('Australia/Lord_Howe'), false, 'a 30-minute DST shift');
  assert.equal(await hourAligned('America/Moncton'), false, 'changes at 00:01 local time until 2006');

  const where = { timestamp: { gte: WINDOWS[0]!.from, lt: WINDOWS[0]!.to } };
  const figures = new Set<StatsFigure>([
    ...ADDING_FIGURES,
    'distinctUsersApprox',
    'talkedP50Approx',
    'talkedP95Approx',
  ]);
  const args: StatsArgs = { where, bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' }, figures };
  const sqlOf = (zone: string, aligned: boolean) =>
    planStatsSql({ ...args, bucket: { unit: 'DAY', timeZone: zone }, maxGroups: LIMITS.maxGroups }, 'auto', [], aligned)
      .sql.text;
  assert.match(sqlOf('Europe/Berlin', true), /metric_rollup_sketches_hourly/);
  assert.doesNotMatch(sqlOf('Asia/Kathmandu', false), /metric_rollup_sketches_hourly/);

  await refreshSketches(null, null);
  const [hours] = await service.sql<{ n: number }>(
    'SELECT count(*)::int AS n FROM metric_rollup_sketches_hourly WHERE hour_start >= $1 AND hour_start < $2',
    [where.timestamp.gte, where.timestamp.lt],
  );
  assert.ok((hours?.n ?? 0) > 40, `${hours?.n} hourly sketches in the window`);
  assert.deepEqual(await metricStats(args, LIMITS), await metricStats(args, LIMITS, 'raw'));
  // A record stored after them: its hour's sketch no longer covers the hour, and its slots answer instead.
  await ingest([{ ...randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to), userId: `late-${p.int(0, 1e9)}` }]);
  assert.deepEqual(await metricStats(args, LIMITS), await metricStats(args, LIMITS, 'raw'));
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
});

test('approximate figures: distinct users within 2%, p50 and p95 within 1% of the exact ones', async () => {
  // A crowd: 4,000 users in one day, so that the bitmap has collisions to correct for.
  const day = at('2026-06-10T00:00:00Z');
  const crowd = Array.from({ length: 6000 }, (_, i) => ({
    userId: `crowd-${i % 4000}`,
    sessionId: `crowd-${i}`,
    timestamp: day + p.int(0, 86_399),
    talkedTime: p.chance(0.02) ? 0 : Math.round(Math.exp(p.int(0, 900) / 100)),
    microphoneUsed: true,
    speakerUsed: false,
    voiceSentiment: null,
  }));
  for (let i = 0; i < crowd.length; i += 500) await ingest(crowd.slice(i, i + 500));
  const figures = new Set<StatsFigure>([
    'count',
    'distinctUsers',
    'distinctUsersApprox',
    'talkedP50',
    'talkedP95',
    'talkedP50Approx',
    'talkedP95Approx',
  ]);
  const questions: StatsArgs[] = [
    { where: { timestamp: { gte: day, lt: day + 86_400 } }, figures },
    {
      where: { timestamp: { gte: day, lt: day + 86_400 } },
      bucket: { unit: 'HOUR', timeZone: 'Asia/Kathmandu' },
      figures,
    },
    { bucket: { unit: 'MONTH', timeZone: 'Europe/Berlin' }, figures },
    { groupBy: ['VOICE_SENTIMENT', 'SPEAKER_USED'], figures },
  ];
  let checked = 0;
  for (const args of questions) {
    for (const group of await metricStats(args, LIMITS)) {
      const what = `${JSON.stringify(args.bucket ?? args.groupBy)} ${group.bucketStart?.toISOString() ?? group.voiceSentiment}`;
      assert.ok(
        Math.abs(group.distinctUsersApprox - group.distinctUsers) <= 0.02 * group.distinctUsers,
        `${what}: ${group.distinctUsersApprox} users for ${group.distinctUsers}`,
      );
      for (const [approx, exact] of [
        [group.talkedTime.p50Approx, group.talkedTime.p50],
        [group.talkedTime.p95Approx, group.talkedTime.p95],
      ] as const) {
        assert.ok(Math.abs(approx - exact) <= 0.01 * exact, `${what}: ${approx} for ${exact}`);
      }
      checked++;
    }
  }
  assert.ok(checked > 30, `${checked} groups checked`);
  const [whole] = await metricStats(questions[0]!, LIMITS);
  assert.ok((whole?.distinctUsers ?? 0) >= 4000, 'the crowd and the few of the year on that day');
});

test('GraphQL: a question computes only the figures it selects, and says which are approximate', async () => {
  const db = database();
  const original = db.queryDirect;
  const originalSession = db.withSession;
  const statements: string[] = [];
  db.queryDirect = function (this: typeof db, ...args: Parameters<typeof original>) {
    if (!/metric_rollup_sketches_refresh/.test(args[0])) statements.push(args[0]);
    return original.apply(this, args);
  } as typeof original;
  // The statements over sketches run in a session of their own (JIT off on PostgreSQL).
  db.withSession = function (this: typeof db, work: Parameters<typeof originalSession>[0]) {
    return originalSession.call(this, (session) =>
      work({
        ...session,
        query: (text, params, name) => {
          statements.push(text);
          return session.query(text, params, name);
        },
      }),
    );
  } as typeof originalSession;
  try {
    const where = { timestamp: { gte: WINDOWS[0]!.from, lt: WINDOWS[0]!.to } };
    const narrow = await service.gql<{ metricStats: Array<{ count: number; talkedTime: { sum: number } }> }>(
      `query($where: MetricFilter) { metricStats(where: $where, bucket: { unit: HOUR }) { bucketStart count talkedTime { sum } } }`,
      { where },
    );
    assert.ok(narrow.metricStats.length > 24);
    const sql = statements.at(-1) ?? '';
    assert.match(sql, /metric_rollups/, 'answered from rollups');
    assert.doesNotMatch(
      sql,
      /percentile_cont|DISTINCT|metric_user_bits|metric_talked|jsonb_agg/i,
      'no percentile, distinct count or sentiment split',
    );

    const approx = await service.gql<{
      metricStats: Array<{ count: number; distinctUsersApprox: number; talkedTime: { p95Approx: number } }>;
    }>(
      `query($where: MetricFilter) { metricStats(where: $where) { count distinctUsersApprox talkedTime { p95Approx } } }`,
      { where },
    );
    assert.match(statements.at(-1) ?? '', /metric_rollup_sketches/);
    assert.doesNotMatch(statements.at(-1) ?? '', /percentile_cont|count\(DISTINCT/);
    const exact = await service.gql<{ metricStats: Array<{ distinctUsers: number; talkedTime: { p95: number } }> }>(
      `query($where: MetricFilter) { metricStats(where: $where) { ...F } } fragment F on MetricFigures { distinctUsers talkedTime { p95 } }`,
      { where },
    );
    assert.match(statements.at(-1) ?? '', /percentile_cont/, 'the exact percentile, selected through a fragment');
    assert.doesNotMatch(statements.at(-1) ?? '', /metric_rollup/, 'exact figures read the raw rows');
    const [a] = approx.metricStats;
    const [e] = exact.metricStats;
    assert.ok(a && e);
    assert.ok(Math.abs(a.distinctUsersApprox - e.distinctUsers) <= 0.02 * e.distinctUsers);
    assert.ok(Math.abs(a.talkedTime.p95Approx - e.talkedTime.p95) <= 0.01 * e.talkedTime.p95);
  } finally {
    db.queryDirect = original;
    db.withSession = originalSession;
  }
});

test('a sketch is used only while it covers its slot: a record stored after it is answered from the raw rows', async () => {
  const where = { timestamp: { gte: WINDOWS[0]!.from, lt: WINDOWS[0]!.to } };
  const figures = new Set<StatsFigure>(SKETCH_FIGURES);
  const args: StatsArgs = { where, bucket: { unit: 'HOUR', timeZone: 'Asia/Kathmandu' }, figures };
  await refreshSketches(null, null);
  const [fresh] = await service.sql<{ n: number }>(
    'SELECT count(*)::int AS n FROM metric_rollup_sketches WHERE slot_start >= $1 AND slot_start < $2',
    [where.timestamp.gte, where.timestamp.lt],
  );
  assert.ok((fresh?.n ?? 0) > 100, 'sketches built');
  await ingest(
    Array.from({ length: 30 }, () => ({
      ...randomRecord(WINDOWS[0]!.from, WINDOWS[0]!.to),
      userId: `late-${p.int(0, 1e9)}`,
    })),
  );
  assert.deepEqual(await metricStats(args, LIMITS), await metricStats(args, LIMITS, 'raw'));
  const [stale] = await service.sql<{ n: number }>(`
    SELECT count(*)::int AS n FROM metric_rollup_sketches s
    WHERE s.count <> (
      SELECT sum(count) FROM (SELECT slot_start, count FROM metric_rollups
                              UNION ALL SELECT slot_start, count FROM metric_rollup_deltas) AS r
      WHERE r.slot_start = s.slot_start)`);
  assert.ok((stale?.n ?? 0) > 0 || (await refreshSketches(null, null)) >= 0, 'stale sketches (or refreshed meanwhile)');
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
});

test('rebuild recomputes a range from raw rows; rollups outlive deleted raw rows', async () => {
  const from = WINDOWS[0]!.from;
  const to = WINDOWS[0]!.to;
  // Damage both tables within the range (as a bug would), then rebuild it.
  await service.sql('UPDATE metric_rollups SET count = count + 5 WHERE slot_start >= $1 AND slot_start < $2', [
    from,
    to,
  ]);
  await service.sql('DELETE FROM metric_rollup_sketches WHERE slot_start >= $1 AND slot_start < $2', [from, to]);
  assert.notDeepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });
  const slots = await rebuildRollups(from + 100, to - 100);
  assert.ok(slots > 100, `${slots} slots rebuilt`);
  assert.deepEqual(await rollupDifferences(), { rollups: 0, sketches: 0 });

  // Raw rows deleted (as retention will): the slot's rollup stays, through a rebuild too, and still answers.
  const slot = Math.floor((from + 7200) / 900) * 900;
  const where = { timestamp: { gte: slot, lt: slot + 900 } };
  const figures = new Set<StatsFigure>(ADDING_FIGURES);
  const before = await metricStats({ where, figures }, LIMITS);
  assert.equal(before.length, 1);
  await service.sql('DELETE FROM user_metrics WHERE "timestamp" >= $1 AND "timestamp" < $2', [slot, slot + 900]);
  await rebuildRollups(null, null);
  assert.deepEqual(await metricStats({ where, figures }, LIMITS), before);
  assert.deepEqual(await metricStats({ where, figures }, LIMITS, 'raw'), []);
});
