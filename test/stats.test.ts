/**
 * `metricStats` and `userSummary` through HTTP over a generated fixture with records around the daylight-saving
 * changes of Europe/Berlin and America/New_York (spring and autumn) and over most of a year. Every figure is checked
 * against what the test computes itself from the records it sent: time buckets from the zone's rules as Node's Intl
 * (ICU) knows them, percentiles with the linear interpolation of percentile_cont, sentiments counted in JavaScript.
 * A few calendar facts (when a local day starts on a change day) are also asserted literally, so that the test's own
 * calendar arithmetic cannot be wrong in the same way as the service's.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { loadConfig } from '../src/config.js';
import { picker } from './support/fixtures.js';
import { INGEST, startTestService, type TestService } from './support/harness.js';

const SEED = Number(process.env.TEST_SEED ?? 20261203);
const MAX_GROUPS = 100;

type Dimension = 'USER_ID' | 'SESSION_ID' | 'VOICE_SENTIMENT' | 'MICROPHONE_USED' | 'SPEAKER_USED';
type Unit = 'MINUTE' | 'HOUR' | 'DAY' | 'WEEK' | 'MONTH';

interface Fixture {
  userId: string;
  sessionId: string;
  timestamp: number;
  talkedTime: number;
  microphoneUsed: boolean;
  speakerUsed: boolean;
  voiceSentiment: string | null;
}

interface Group {
  userId: string | null;
  sessionId: string | null;
  voiceSentiment: string | null;
  microphoneUsed: boolean | null;
  speakerUsed: boolean | null;
  bucketStart: string | null;
  count: number;
  distinctUsers: number;
  distinctSessions: number;
  talkedTime: { sum: number; avg: number; min: number; max: number; p50: number; p95: number };
  microphoneUsageRate: number;
  speakerUsageRate: number;
  sentiments: { value: string | null; count: number }[];
}

const FIGURES = /* GraphQL */ `
  fragment Figures on MetricFigures {
    count distinctUsers distinctSessions
    talkedTime { sum avg min max p50 p95 }
    microphoneUsageRate speakerUsageRate
    sentiments { value count }
  }`;

const STATS = /* GraphQL */ `
  query Stats($where: MetricFilter, $groupBy: [MetricDimension!], $bucket: TimeBucketInput) {
    metricStats(where: $where, groupBy: $groupBy, bucket: $bucket) {
      userId sessionId voiceSentiment microphoneUsed speakerUsed bucketStart
      ...Figures
    }
  }
  ${FIGURES}`;

const SUMMARY = /* GraphQL */ `
  query Summary($userId: String!, $where: MetricFilter) {
    userSummary(userId: $userId, where: $where) { userId firstSeen lastSeen sessionCount ...Figures }
  }
  ${FIGURES}`;

// Fixture -----------------------------------------------------------------------------------------------------------

/** Ids in mixed case and one non-ASCII letter: groups must come in byte order ("Zed" before "adam", "émile" last). */
const USERS = ['adam', 'Zed', 'bob', 'carol', 'émile'];
const SENTIMENTS = ['positive', 'neutral', 'negative', 'Mixed', null];
const at = (iso: string) => Date.parse(iso) / 1000;

/** [from, to) windows, in unix seconds, and how many records each gets. */
const WINDOWS: { name: string; from: number; to: number; n: number }[] = [
  // Europe/Berlin springs forward on 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST).
  { name: 'berlin-march', from: at('2026-03-27T00:00:00Z'), to: at('2026-03-31T00:00:00Z'), n: 90 },
  // Europe/Berlin falls back on 2026-10-25 at 01:00 UTC (03:00 CEST -> 02:00 CET): local 02:00-03:00 happens twice.
  { name: 'berlin-october', from: at('2026-10-24T00:00:00Z'), to: at('2026-10-27T00:00:00Z'), n: 80 },
  { name: 'berlin-repeated-hour', from: at('2026-10-24T23:00:00Z'), to: at('2026-10-25T03:00:00Z'), n: 40 },
  // America/New_York springs forward on 2026-03-08 at 07:00 UTC and falls back on 2026-11-01 at 06:00 UTC.
  { name: 'new-york-march', from: at('2026-03-07T00:00:00Z'), to: at('2026-03-10T12:00:00Z'), n: 70 },
  { name: 'new-york-november', from: at('2026-10-31T12:00:00Z'), to: at('2026-11-02T12:00:00Z'), n: 70 },
  { name: 'new-york-repeated-hour', from: at('2026-11-01T04:00:00Z'), to: at('2026-11-01T08:00:00Z'), n: 30 },
  // The rest of the year, for weeks and months.
  { name: 'year', from: at('2026-01-01T00:00:00Z'), to: at('2026-11-20T00:00:00Z'), n: 160 },
];

const fixture: Fixture[] = [];
let service: TestService;

before(async () => {
  service = await startTestService({ MAX_STAT_GROUPS: String(MAX_GROUPS) });
  const p = picker(SEED);
  for (const window of WINDOWS) {
    for (let i = 0; i < window.n; i++) {
      const userId = p.pick(USERS);
      fixture.push({
        userId,
        // Some sessions shared by users (a call), most a user's own; 150 possible ids in all, for the group limit.
        sessionId: p.chance(0.2) ? `call-${p.int(0, 9)}` : `${userId}-${p.int(0, 27)}`,
        timestamp: p.int(window.from, window.to - 1),
        talkedTime: p.chance(0.1) ? p.pick([0, 86_400]) : p.int(1, 900),
        microphoneUsed: p.chance(0.7),
        speakerUsed: p.chance(0.4),
        voiceSentiment: p.pick(SENTIMENTS),
      });
    }
  }
  // Records at the exact edges of the autumn hours and of a local midnight.
  for (const iso of [
    '2026-10-25T00:00:00Z',
    '2026-10-25T00:59:59Z',
    '2026-10-25T01:00:00Z',
    '2026-10-25T01:59:59Z',
    '2026-03-28T23:00:00Z',
    '2026-03-28T22:59:59Z',
  ]) {
    fixture.push({
      userId: 'bob',
      sessionId: 'edge',
      timestamp: at(iso),
      talkedTime: 30,
      microphoneUsed: true,
      speakerUsed: true,
      voiceSentiment: null,
    });
  }
  for (let i = 0; i < fixture.length; i += 200) {
    const data = await service.gql(INGEST, { records: fixture.slice(i, i + 200) });
    assert.deepEqual(data.ingestMetrics.rejected, [], 'the fixture is valid');
    assert.equal(data.ingestMetrics.accepted + data.ingestMetrics.duplicates, Math.min(200, fixture.length - i));
  }
  // Identical generated records are one record (content identity): the expected figures count each once.
  const seen = new Set<string>();
  for (let i = fixture.length - 1; i >= 0; i--) {
    const key = JSON.stringify(fixture[i]);
    if (seen.has(key)) fixture.splice(i, 1);
    seen.add(key);
  }
  const [row] = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics');
  assert.equal(row?.n, fixture.length, 'every distinct fixture record is stored');
});

after(async () => {
  await service?.stop();
});

// The test's own calendar (Intl / ICU) ------------------------------------------------------------------------------

const formatters = new Map<string, Intl.DateTimeFormat>();
function localParts(seconds: number, timeZone: string) {
  let format = formatters.get(timeZone);
  if (!format) {
    format = new Intl.DateTimeFormat('en-US', {
      timeZone,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
      weekday: 'short',
    });
    formatters.set(timeZone, format);
  }
  const parts = Object.fromEntries(
    format.formatToParts(new Date(seconds * 1000)).map((part) => [part.type, part.value]),
  );
  return {
    year: Number(parts.year),
    month: Number(parts.month),
    day: Number(parts.day),
    hour: Number(parts.hour),
    minute: Number(parts.minute),
    second: Number(parts.second),
    /** 1 = Monday ... 7 = Sunday (ISO). */
    isoWeekday: ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun'].indexOf(parts.weekday as string) + 1,
  };
}

/** The zone's offset from UTC at an instant, in seconds. */
function offsetAt(seconds: number, timeZone: string): number {
  const p = localParts(seconds, timeZone);
  return Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) / 1000 - seconds;
}

/** The instant a local midnight happens (unambiguous in the zones used here). */
function localMidnight(year: number, month: number, day: number, timeZone: string): number {
  const wall = Date.UTC(year, month - 1, day) / 1000;
  const first = wall - offsetAt(wall, timeZone);
  const second = wall - offsetAt(first, timeZone);
  return offsetAt(second, timeZone) === offsetAt(first, timeZone) ? second : first;
}

function bucketStart(seconds: number, unit: Unit, timeZone: string): number {
  const p = localParts(seconds, timeZone);
  switch (unit) {
    case 'MINUTE':
      return seconds - p.second;
    case 'HOUR':
      // The local hour this instant is in, with this instant's own offset: the repeated hour is two hours.
      return seconds - p.minute * 60 - p.second;
    case 'DAY':
      return localMidnight(p.year, p.month, p.day, timeZone);
    case 'WEEK': {
      const monday = new Date(Date.UTC(p.year, p.month - 1, p.day - (p.isoWeekday - 1)));
      return localMidnight(monday.getUTCFullYear(), monday.getUTCMonth() + 1, monday.getUTCDate(), timeZone);
    }
    case 'MONTH':
      return localMidnight(p.year, p.month, 1, timeZone);
  }
}

// Expected figures ----------------------------------------------------------------------------------------------------

function percentileCont(sorted: number[], fraction: number): number {
  const position = fraction * (sorted.length - 1);
  const lower = Math.floor(position);
  const upper = Math.ceil(position);
  const low = sorted[lower] as number;
  return low + ((sorted[upper] as number) - low) * (position - lower);
}

/** Byte order of UTF-8 (what COLLATE "C" sorts by); for these ids it is also UTF-16 code unit order. */
const compareText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function compareKey(a: unknown, b: unknown): number {
  if (a === b) return 0;
  if (a === null) return 1; // nulls last
  if (b === null) return -1;
  if (typeof a === 'boolean') return a ? 1 : -1; // false before true
  if (typeof a === 'number') return a - (b as number);
  return compareText(a as string, b as string);
}

const FIELD_OF: Record<Dimension, keyof Fixture> = {
  USER_ID: 'userId',
  SESSION_ID: 'sessionId',
  VOICE_SENTIMENT: 'voiceSentiment',
  MICROPHONE_USED: 'microphoneUsed',
  SPEAKER_USED: 'speakerUsed',
};

interface StatsCase {
  where?: Record<string, unknown>;
  /** The same condition as `where`, written in the test. */
  matches?: (r: Fixture) => boolean;
  groupBy?: Dimension[];
  bucket?: { unit: Unit; timeZone?: string };
}

function figuresOf(records: Fixture[]) {
  const talked = records.map((r) => r.talkedTime).sort((a, b) => a - b);
  const sum = talked.reduce((a, b) => a + b, 0);
  const sentimentCounts = new Map<string | null, number>();
  for (const r of records) sentimentCounts.set(r.voiceSentiment, (sentimentCounts.get(r.voiceSentiment) ?? 0) + 1);
  return {
    count: records.length,
    distinctUsers: new Set(records.map((r) => r.userId)).size,
    distinctSessions: new Set(records.map((r) => r.sessionId)).size,
    talkedTime: {
      sum,
      avg: sum / records.length,
      min: talked[0] as number,
      max: talked.at(-1) as number,
      p50: percentileCont(talked, 0.5),
      p95: percentileCont(talked, 0.95),
    },
    microphoneUsageRate: records.filter((r) => r.microphoneUsed).length / records.length,
    speakerUsageRate: records.filter((r) => r.speakerUsed).length / records.length,
    sentiments: [...sentimentCounts]
      .map(([value, count]) => ({ value, count }))
      .sort((a, b) => b.count - a.count || compareKey(a.value, b.value)),
  };
}

function expectedGroups(c: StatsCase, records: Fixture[] = fixture): Group[] {
  const groupBy = c.groupBy ?? [];
  const zone = c.bucket?.timeZone ?? 'UTC';
  const groups = new Map<string, { key: unknown[]; records: Fixture[] }>();
  for (const r of records.filter(c.matches ?? (() => true))) {
    const key: unknown[] = [
      c.bucket ? bucketStart(r.timestamp, c.bucket.unit, zone) : null,
      ...groupBy.map((d) => r[FIELD_OF[d]]),
    ];
    const id = JSON.stringify(key);
    const group = groups.get(id) ?? { key, records: [] };
    group.records.push(r);
    groups.set(id, group);
  }
  return [...groups.values()]
    .sort((a, b) => {
      for (let i = 0; i < a.key.length; i++) {
        const order = compareKey(a.key[i], b.key[i]);
        if (order !== 0) return order;
      }
      return 0;
    })
    .map(({ key, records: members }) => {
      const value = (d: Dimension) => (groupBy.includes(d) ? (key[1 + groupBy.indexOf(d)] as never) : null);
      return {
        userId: value('USER_ID'),
        sessionId: value('SESSION_ID'),
        voiceSentiment: value('VOICE_SENTIMENT'),
        microphoneUsed: value('MICROPHONE_USED'),
        speakerUsed: value('SPEAKER_USED'),
        bucketStart: key[0] === null ? null : new Date((key[0] as number) * 1000).toISOString(),
        ...figuresOf(members),
      };
    });
}

const close = (actual: number, expected: number) =>
  Math.abs(actual - expected) <= 1e-9 * Math.max(1, Math.abs(expected));

function assertGroups(actual: Group[], expected: Group[], label: string): void {
  const keyOf = (g: Group) =>
    JSON.stringify([g.bucketStart, g.userId, g.sessionId, g.voiceSentiment, g.microphoneUsed, g.speakerUsed]);
  assert.deepEqual(actual.map(keyOf), expected.map(keyOf), `${label}: the groups and their order`);
  expected.forEach((e, i) => {
    const a = actual[i] as Group;
    const where = `${label}, group ${keyOf(e)}`;
    assert.equal(a.count, e.count, `${where}: count`);
    assert.equal(a.distinctUsers, e.distinctUsers, `${where}: distinctUsers`);
    assert.equal(a.distinctSessions, e.distinctSessions, `${where}: distinctSessions`);
    assert.equal(a.talkedTime.sum, e.talkedTime.sum, `${where}: talkedTime.sum`);
    assert.equal(a.talkedTime.min, e.talkedTime.min, `${where}: talkedTime.min`);
    assert.equal(a.talkedTime.max, e.talkedTime.max, `${where}: talkedTime.max`);
    for (const field of ['avg', 'p50', 'p95'] as const) {
      assert.ok(
        close(a.talkedTime[field], e.talkedTime[field]),
        `${where}: talkedTime.${field} ${a.talkedTime[field]} != ${e.talkedTime[field]}`,
      );
    }
    assert.ok(close(a.microphoneUsageRate, e.microphoneUsageRate), `${where}: microphoneUsageRate`);
    assert.ok(close(a.speakerUsageRate, e.speakerUsageRate), `${where}: speakerUsageRate`);
    assert.deepEqual(a.sentiments, e.sentiments, `${where}: sentiments`);
    assert.equal(
      a.sentiments.reduce((n, s) => n + s.count, 0),
      a.count,
      `${where}: the sentiment counts add up to count`,
    );
  });
}

async function stats(c: StatsCase): Promise<Group[]> {
  const data = await service.gql<{ metricStats: Group[] }>(STATS, {
    where: c.where,
    groupBy: c.groupBy,
    bucket: c.bucket,
  });
  return data.metricStats;
}

async function check(label: string, c: StatsCase): Promise<Group[]> {
  const expected = expectedGroups(c);
  assert.ok(expected.length <= MAX_GROUPS, `${label}: the case itself stays within the group limit`);
  const actual = await stats(c);
  assertGroups(actual, expected, label);
  return actual;
}

const inRange = (from: string, to: string) => ({
  where: { timestamp: { gte: at(from), lt: at(to) } },
  matches: (r: Fixture) => r.timestamp >= at(from) && r.timestamp < at(to),
});

// Tests -------------------------------------------------------------------------------------------------------------

test('without groupBy or bucket: one group of every record', async () => {
  const groups = await check('all records', {});
  assert.equal(groups.length, 1);
  assert.equal(groups[0]?.count, fixture.length);
});

test('grouped by user, by sentiment and microphone, by speaker then user; filters applied', async () => {
  await check('by user', { groupBy: ['USER_ID'] });
  await check('by user, filtered', {
    groupBy: ['USER_ID'],
    where: {
      OR: [{ voiceSentiment: { in: ['positive', 'Mixed'] } }, { talkedTime: { gte: 600 } }],
      microphoneUsed: true,
    },
    matches: (r) =>
      ((r.voiceSentiment !== null && ['positive', 'Mixed'].includes(r.voiceSentiment)) || r.talkedTime >= 600) &&
      r.microphoneUsed,
  });
  const bySentiment = await check('by sentiment and microphone', { groupBy: ['VOICE_SENTIMENT', 'MICROPHONE_USED'] });
  assert.equal(bySentiment.at(-1)?.voiceSentiment, null, 'the group without a sentiment comes last');
  await check('by speaker, then user', { groupBy: ['SPEAKER_USED', 'USER_ID'] });
  await check('by user, then speaker', { groupBy: ['USER_ID', 'SPEAKER_USED'] });
  await check('by session, one user', {
    groupBy: ['SESSION_ID'],
    where: { userId: { equals: 'carol' } },
    matches: (r) => r.userId === 'carol',
  });
  await check('sentiment split of records without a sentiment', {
    groupBy: ['USER_ID'],
    where: { voiceSentiment: { isNull: true } },
    matches: (r) => r.voiceSentiment === null,
  });
});

test("user ids come in byte order, not a locale's", async () => {
  const groups = await stats({ groupBy: ['USER_ID'] });
  assert.deepEqual(
    groups.map((g) => g.userId),
    ['Zed', 'adam', 'bob', 'carol', 'émile'],
  );
});

test('per-day buckets in Europe/Berlin across the March change: local days, a 23-hour day', async () => {
  const groups = await check('Berlin days, March', {
    ...inRange('2026-03-27T00:00:00Z', '2026-03-31T00:00:00Z'),
    bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' },
  });
  const starts = groups.map((g) => g.bucketStart);
  // Calendar facts: CET is UTC+1 until 2026-03-29 01:00 UTC, CEST (UTC+2) after.
  for (const start of ['2026-03-27T23:00:00.000Z', '2026-03-28T23:00:00.000Z', '2026-03-29T22:00:00.000Z']) {
    assert.ok(starts.includes(start), `a local day starts at ${start}: ${starts.join(', ')}`);
  }
  // The record one second before local midnight of the 29th is in the 28th; the one at midnight in the 29th.
  const edge = await stats({
    where: { sessionId: { equals: 'edge' }, timestamp: { lt: at('2026-04-01T00:00:00Z') } },
    bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' },
  });
  assert.deepEqual(
    edge.map((g) => [g.bucketStart, g.count]),
    [
      ['2026-03-27T23:00:00.000Z', 1],
      ['2026-03-28T23:00:00.000Z', 1],
    ],
  );
  await check('Berlin days by user, March', {
    ...inRange('2026-03-27T00:00:00Z', '2026-03-31T00:00:00Z'),
    groupBy: ['USER_ID'],
    bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' },
  });
});

test('hour buckets in Europe/Berlin across the October change: the repeated 02:00 hour is two buckets', async () => {
  const groups = await check('Berlin hours, October', {
    ...inRange('2026-10-24T22:00:00Z', '2026-10-25T04:00:00Z'),
    bucket: { unit: 'HOUR', timeZone: 'Europe/Berlin' },
  });
  const starts = groups.map((g) => g.bucketStart);
  // Local 02:00 CEST is 00:00 UTC; local 02:00 CET is 01:00 UTC.
  assert.ok(
    starts.includes('2026-10-25T00:00:00.000Z') && starts.includes('2026-10-25T01:00:00.000Z'),
    starts.join(', '),
  );
  const edge = await stats({
    where: { sessionId: { equals: 'edge' }, timestamp: { gte: at('2026-10-01T00:00:00Z') } },
    bucket: { unit: 'HOUR', timeZone: 'Europe/Berlin' },
  });
  assert.deepEqual(
    edge.map((g) => [g.bucketStart, g.count]),
    [
      ['2026-10-25T00:00:00.000Z', 2],
      ['2026-10-25T01:00:00.000Z', 2],
    ],
  );
  // The day of the change has 25 hours and is one DAY bucket.
  await check('Berlin days, October', {
    ...inRange('2026-10-24T00:00:00Z', '2026-10-27T00:00:00Z'),
    bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' },
  });
  await check('Berlin hours by sentiment, October', {
    ...inRange('2026-10-24T23:00:00Z', '2026-10-25T03:00:00Z'),
    groupBy: ['VOICE_SENTIMENT'],
    bucket: { unit: 'HOUR', timeZone: 'Europe/Berlin' },
  });
});

test('America/New_York: days across the March change, hours across the November change', async () => {
  const days = await check('New York days, March', {
    ...inRange('2026-03-07T00:00:00Z', '2026-03-10T12:00:00Z'),
    bucket: { unit: 'DAY', timeZone: 'America/New_York' },
  });
  const starts = days.map((g) => g.bucketStart);
  // EST (UTC-5) until 2026-03-08 07:00 UTC, EDT (UTC-4) after.
  assert.ok(
    starts.includes('2026-03-08T05:00:00.000Z') && starts.includes('2026-03-09T04:00:00.000Z'),
    starts.join(', '),
  );
  const hours = await check('New York hours, November', {
    ...inRange('2026-11-01T03:00:00Z', '2026-11-01T09:00:00Z'),
    bucket: { unit: 'HOUR', timeZone: 'America/New_York' },
  });
  // Local 01:00 EDT is 05:00 UTC, local 01:00 EST is 06:00 UTC: two buckets.
  const hourStarts = hours.map((g) => g.bucketStart);
  assert.ok(
    hourStarts.includes('2026-11-01T05:00:00.000Z') && hourStarts.includes('2026-11-01T06:00:00.000Z'),
    hourStarts.join(', '),
  );
  await check('New York days by microphone, November', {
    ...inRange('2026-10-31T12:00:00Z', '2026-11-02T12:00:00Z'),
    groupBy: ['MICROPHONE_USED'],
    bucket: { unit: 'DAY', timeZone: 'America/New_York' },
  });
});

test('hour buckets in a half-hour zone follow local hours', async () => {
  const groups = await check('Kolkata hours', {
    ...inRange('2026-03-27T00:00:00Z', '2026-03-27T12:00:00Z'),
    bucket: { unit: 'HOUR', timeZone: 'Asia/Kolkata' },
  });
  assert.ok(
    groups.length > 0 && groups.every((g) => g.bucketStart?.endsWith(':30:00.000Z')),
    'UTC+05:30: local hours start at :30 UTC',
  );
});

test("week buckets start on Monday in the zone; month buckets follow the zone's calendar", async () => {
  for (const timeZone of ['UTC', 'Europe/Berlin', 'America/New_York']) {
    const weeks = await check(`weeks in ${timeZone}`, { bucket: { unit: 'WEEK', timeZone } });
    for (const week of weeks) {
      const p = localParts(Date.parse(week.bucketStart as string) / 1000, timeZone);
      assert.deepEqual(
        [p.isoWeekday, p.hour, p.minute],
        [1, 0, 0],
        `${week.bucketStart} is a Monday, 00:00 in ${timeZone}`,
      );
    }
    await check(`months in ${timeZone}`, { bucket: { unit: 'MONTH', timeZone } });
  }
  await check('microphone usage per week', {
    groupBy: ['MICROPHONE_USED'],
    bucket: { unit: 'WEEK', timeZone: 'Europe/Berlin' },
  });
  await check('months by user, Berlin', {
    groupBy: ['USER_ID'],
    bucket: { unit: 'MONTH', timeZone: 'Europe/Berlin' },
    where: { userId: { in: ['adam', 'Zed'] } },
    matches: (r) => r.userId === 'adam' || r.userId === 'Zed',
  });
});

test('minute buckets, and the default zone is UTC', async () => {
  await check('minutes, one user, repeated hour', {
    where: {
      userId: { equals: 'bob' },
      timestamp: { gte: at('2026-10-24T23:00:00Z'), lt: at('2026-10-25T03:00:00Z') },
    },
    matches: (r) =>
      r.userId === 'bob' && r.timestamp >= at('2026-10-24T23:00:00Z') && r.timestamp < at('2026-10-25T03:00:00Z'),
    bucket: { unit: 'MINUTE', timeZone: 'Europe/Berlin' },
  });
  const march = inRange('2026-03-01T00:00:00Z', '2026-04-01T00:00:00Z');
  const withDefault = await stats({ where: march.where, bucket: { unit: 'DAY' } });
  assertGroups(
    withDefault,
    expectedGroups({ ...march, bucket: { unit: 'DAY', timeZone: 'UTC' } }),
    'days, default zone',
  );
  assert.ok(withDefault.every((g) => g.bucketStart?.endsWith('T00:00:00.000Z')));
});

test('time zone names: tz-database names only, with a clear error for anything else', async () => {
  // Names are matched without regard to case, as PostgreSQL does.
  const lower = await stats({ bucket: { unit: 'WEEK', timeZone: 'europe/berlin' } });
  assertGroups(lower, expectedGroups({ bucket: { unit: 'WEEK', timeZone: 'Europe/Berlin' } }), 'lower-case zone name');
  for (const timeZone of [
    'Mars/Olympus_Mons',
    '+02',
    'UTC+2',
    'CEST',
    'EDT',
    '',
    'Europe/Berlin ',
    'posix/Europe/Berlin',
    'localtime',
  ]) {
    const response = await service.request(STATS, { bucket: { unit: 'DAY', timeZone } });
    assert.equal(response.data, null, `${JSON.stringify(timeZone)} is refused`);
    const error = response.errors?.[0];
    assert.equal(error?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(response.errors));
    assert.equal(error?.extensions?.argument, 'bucket.timeZone');
    assert.match(error?.message ?? '', /is not a time zone of the tz database/);
    assert.ok(error?.message.includes(JSON.stringify(timeZone)), error?.message);
  }
});

test('an empty result is an empty list', async () => {
  const none = { where: { userId: { equals: 'nobody' } } };
  assert.deepEqual(await stats(none), []);
  assert.deepEqual(await stats({ ...none, groupBy: ['USER_ID', 'VOICE_SENTIMENT'] }), []);
  assert.deepEqual(await stats({ ...none, bucket: { unit: 'HOUR', timeZone: 'Europe/Berlin' } }), []);
  assert.deepEqual(
    await stats({ where: { timestamp: { gt: at('2026-12-01T00:00:00Z') } }, groupBy: ['SESSION_ID'] }),
    [],
  );
});

test('the group limit: exactly MAX_STAT_GROUPS groups are allowed, one more is an error naming it', async () => {
  assert.equal(loadConfig({}).maxStatGroups, 1000, 'the default limit');
  const sessions = [...new Set(fixture.map((r) => r.sessionId))].sort(compareText);
  assert.ok(sessions.length > MAX_GROUPS, `the fixture has more than ${MAX_GROUPS} sessions (${sessions.length})`);
  const atLimit = sessions.slice(0, MAX_GROUPS);
  await check('exactly the limit', {
    groupBy: ['SESSION_ID'],
    where: { sessionId: { in: atLimit } },
    matches: (r) => atLimit.includes(r.sessionId),
  });
  for (const where of [{ sessionId: { in: sessions.slice(0, MAX_GROUPS + 1) } }, {}]) {
    const response = await service.request(STATS, { groupBy: ['SESSION_ID'], where });
    assert.equal(response.data, null);
    const error = response.errors?.[0];
    assert.equal(error?.extensions?.code, 'TOO_MANY_GROUPS', JSON.stringify(response.errors));
    assert.match(error?.message ?? '', /more than 100 groups/);
    assert.match(error?.message ?? '', /MAX_STAT_GROUPS/);
  }
});

test('a dimension named twice is refused', async () => {
  const response = await service.request(STATS, { groupBy: ['USER_ID', 'USER_ID'] });
  assert.equal(response.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(response.errors));
  assert.match(response.errors?.[0]?.message ?? '', /USER_ID more than once/);
});

test('userSummary: the figures of one user, first and last seen, sessions; null without records', async () => {
  for (const c of [
    { userId: 'bob' },
    { userId: 'émile' },
    { userId: 'carol', where: { speakerUsed: true }, matches: (r: Fixture) => r.speakerUsed },
    { userId: 'Zed', ...inRange('2026-03-01T00:00:00Z', '2026-04-01T00:00:00Z') },
  ]) {
    const mine = fixture.filter((r) => r.userId === c.userId && (c.matches ?? (() => true))(r));
    assert.ok(mine.length > 0);
    const data = await service.gql(SUMMARY, { userId: c.userId, where: c.where });
    const summary = data.userSummary;
    const expected = figuresOf(mine);
    const [group] = expectedGroups({ groupBy: ['USER_ID'] }, mine);
    assertGroups(
      [
        {
          ...summary,
          sessionId: null,
          voiceSentiment: null,
          microphoneUsed: null,
          speakerUsed: null,
          bucketStart: null,
        },
      ],
      [group as Group],
      `userSummary ${c.userId}`,
    );
    assert.equal(summary.userId, c.userId);
    assert.equal(summary.sessionCount, expected.distinctSessions);
    assert.equal(summary.distinctUsers, 1);
    assert.equal(summary.firstSeen, new Date(Math.min(...mine.map((r) => r.timestamp)) * 1000).toISOString());
    assert.equal(summary.lastSeen, new Date(Math.max(...mine.map((r) => r.timestamp)) * 1000).toISOString());
  }
  assert.equal((await service.gql(SUMMARY, { userId: 'nobody' })).userSummary, null);
  assert.equal((await service.gql(SUMMARY, { userId: 'BOB' })).userSummary, null, 'ids are case-sensitive');
  assert.equal(
    (await service.gql(SUMMARY, { userId: 'bob', where: { userId: { equals: 'adam' } } })).userSummary,
    null,
  );
  // Text that cannot reach PostgreSQL is a client mistake naming the argument, like every text argument's.
  const nul = await service.request(SUMMARY, { userId: 'bob\u0000' });
  assert.equal(nul.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(nul.errors));
  assert.equal(nul.errors?.[0]?.extensions?.argument, 'userId');
});

test('sums beyond 32 bits are exact', async () => {
  // 50,000 records of a day's talk each: 4,320,000,000 seconds, more than 2^32. Written by SQL for speed.
  const n = 50_000;
  // Plain SQL gets no partition made on demand (the service's writes do): the day's partition first.
  await service.sql('SELECT metric_partitions_ensure($1::int8[], 86400)', [[at('2026-06-01T00:00:00Z')]]);
  await service.sql(
    `INSERT INTO user_metrics (record_key, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used, voice_sentiment)
     SELECT decode(md5('marathon-' || g), 'hex'), 'marathon', 'm-' || (g % 3), $1::int8 + g, 86400, g % 2 = 0, false, NULL
     FROM generate_series(1, $2::int) AS g`,
    [at('2026-06-01T00:00:00Z'), n],
  );
  const [group] = await stats({ where: { userId: { equals: 'marathon' } }, groupBy: ['USER_ID'] });
  assert.equal(group?.talkedTime.sum, n * 86_400);
  assert.ok((group?.talkedTime.sum ?? 0) > 2 ** 32);
  assert.equal(group?.count, n);
  assert.equal(group?.distinctSessions, 3);
  assert.equal(group?.microphoneUsageRate, 0.5);
  assert.deepEqual(group?.sentiments, [{ value: null, count: n }]);
  const summary = (await service.gql(SUMMARY, { userId: 'marathon' })).userSummary;
  assert.equal(summary.talkedTime.sum, n * 86_400);
});
