/**
 * ingestMetrics through HTTP: every validation rule and its message, type errors, partial and atomic batches, record
 * identity, retries, concurrent overlapping batches, and a full batch at the default limits. Every expectation is
 * checked against the database with SQL of the test's own.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { liveUpdatesListening } from '../src/services/events.js';
import { INGEST, nowSeconds, record, startTestService, type TestService, usingPostgres } from './support/harness.js';

let service: TestService;
before(async () => {
  service = await startTestService();
});
after(async () => {
  await service?.stop();
});

interface Rejection {
  index: number;
  eventId: string | null;
  field: string | null;
  code: string;
  message: string;
}
interface IngestResult {
  accepted: number;
  duplicates: number;
  rejected: Rejection[];
}

async function ingest(records: Record<string, unknown>[], atomic?: boolean): Promise<IngestResult> {
  const data = await service.gql<{ ingestMetrics: IngestResult }>(INGEST, { records, atomic });
  return data.ingestMetrics;
}

async function count(where: string, params: unknown[] = []): Promise<number> {
  const [row] = await service.sql<{ n: number }>(`SELECT count(*)::int AS n FROM user_metrics WHERE ${where}`, params);
  return row?.n ?? -1;
}

/** Rows stored with exactly this record's values (eventId null when absent). */
async function storedCopies(r: Record<string, unknown>): Promise<number> {
  return count(
    `event_id IS NOT DISTINCT FROM $1 AND user_id = $2 AND session_id = $3 AND "timestamp" = $4 AND talked_time = $5
     AND microphone_used = $6 AND speaker_used = $7 AND voice_sentiment IS NOT DISTINCT FROM $8`,
    [
      r.eventId ?? null,
      r.userId,
      r.sessionId,
      r.timestamp,
      r.talkedTime,
      r.microphoneUsed,
      r.speakerUsed,
      r.voiceSentiment ?? null,
    ],
  );
}

const byIndexAndField = (a: { index: number; field: string | null }, b: { index: number; field: string | null }) =>
  a.index - b.index || String(a.field).localeCompare(String(b.field));

const EMOJI = '😀'; // one code point, two UTF-16 units, four UTF-8 bytes
const MIN_TIMESTAMP = Date.UTC(2000, 0, 1) / 1000;

interface RuleCase {
  name: string;
  overrides: Record<string, unknown>;
  /** Expected rejections of this record; empty when it must be stored. */
  problems: Array<{ field: string; code: string; message: RegExp }>;
}

function ruleCases(): RuleCase[] {
  const now = nowSeconds();
  const blank = (field: string) => ({
    field,
    code: 'BLANK',
    message: new RegExp(`${field}.*(empty|blank).*whitespace.*1 to 255`),
  });
  const tooLong = (field: string, length: number, max: number) => ({
    field,
    code: 'TOO_LONG',
    message: new RegExp(`${field} is ${length} characters.*at most ${max}`),
  });
  const nul = (field: string) => ({ field, code: 'INVALID_CHARACTER', message: new RegExp(`${field}.*NUL`) });
  return [
    { name: 'empty userId', overrides: { userId: '' }, problems: [blank('userId')] },
    { name: 'whitespace userId', overrides: { userId: ' \t\n ' }, problems: [blank('userId')] },
    { name: 'empty sessionId', overrides: { sessionId: '' }, problems: [blank('sessionId')] },
    { name: 'whitespace sessionId', overrides: { sessionId: '   ' }, problems: [blank('sessionId')] },
    {
      name: 'userId with surrounding spaces is stored as sent',
      overrides: { userId: '  padded user  ' },
      problems: [],
    },
    { name: 'userId of 255 emoji', overrides: { userId: EMOJI.repeat(255) }, problems: [] },
    { name: 'userId of 256 emoji', overrides: { userId: EMOJI.repeat(256) }, problems: [tooLong('userId', 256, 255)] },
    { name: 'userId of 256 ASCII', overrides: { userId: 'u'.repeat(256) }, problems: [tooLong('userId', 256, 255)] },
    { name: 'sessionId of 255 emoji', overrides: { sessionId: EMOJI.repeat(255) }, problems: [] },
    {
      name: 'sessionId of 256 emoji',
      overrides: { sessionId: EMOJI.repeat(256) },
      problems: [tooLong('sessionId', 256, 255)],
    },
    { name: 'voiceSentiment of 50 emoji', overrides: { voiceSentiment: EMOJI.repeat(50) }, problems: [] },
    {
      name: 'voiceSentiment of 51 emoji',
      overrides: { voiceSentiment: EMOJI.repeat(51) },
      problems: [tooLong('voiceSentiment', 51, 50)],
    },
    {
      name: 'voiceSentiment absent',
      overrides: { voiceSentiment: undefined, sessionId: 'no-sentiment' },
      problems: [],
    },
    { name: 'voiceSentiment null', overrides: { voiceSentiment: null, sessionId: 'null-sentiment' }, problems: [] },
    { name: 'eventId of 255 emoji', overrides: { eventId: EMOJI.repeat(255) }, problems: [] },
    {
      name: 'eventId of 256 emoji',
      overrides: { eventId: `${EMOJI.repeat(255)}x` },
      problems: [tooLong('eventId', 256, 255)],
    },
    {
      name: 'talkedTime -1',
      overrides: { talkedTime: -1 },
      problems: [{ field: 'talkedTime', code: 'OUT_OF_RANGE', message: /talkedTime -1 .*0\.\.86400/ }],
    },
    { name: 'talkedTime 0', overrides: { talkedTime: 0 }, problems: [] },
    { name: 'talkedTime 86400', overrides: { talkedTime: 86_400 }, problems: [] },
    {
      name: 'talkedTime 86401',
      overrides: { talkedTime: 86_401 },
      problems: [{ field: 'talkedTime', code: 'OUT_OF_RANGE', message: /talkedTime 86401 .*0\.\.86400/ }],
    },
    { name: 'timestamp 2000-01-01T00:00:00Z', overrides: { timestamp: MIN_TIMESTAMP }, problems: [] },
    {
      name: 'timestamp one second before 2000',
      overrides: { timestamp: MIN_TIMESTAMP - 1 },
      problems: [{ field: 'timestamp', code: 'TIMESTAMP_TOO_OLD', message: /before 2000-01-01/ }],
    },
    {
      name: 'timestamp 0',
      overrides: { timestamp: 0 },
      problems: [{ field: 'timestamp', code: 'TIMESTAMP_TOO_OLD', message: /before 2000-01-01/ }],
    },
    { name: 'timestamp 23h59m ahead', overrides: { timestamp: now + 86_400 - 60 }, problems: [] },
    {
      name: 'timestamp 24h01m ahead',
      overrides: { timestamp: now + 86_400 + 60 },
      problems: [{ field: 'timestamp', code: 'TIMESTAMP_IN_FUTURE', message: /more than 24 hours ahead/ }],
    },
    {
      name: 'timestamp in milliseconds (an hour ago)',
      overrides: { timestamp: (now - 3600) * 1000 },
      problems: [
        {
          field: 'timestamp',
          code: 'TIMESTAMP_IN_MILLISECONDS',
          message: new RegExp(`milliseconds.*seconds \\(${now - 3600}\\)`),
        },
      ],
    },
    {
      name: 'timestamp in milliseconds (2000-01-01)',
      overrides: { timestamp: MIN_TIMESTAMP * 1000 },
      problems: [{ field: 'timestamp', code: 'TIMESTAMP_IN_MILLISECONDS', message: /milliseconds/ }],
    },
    { name: 'NUL in userId', overrides: { userId: 'nul\u0000user' }, problems: [nul('userId')] },
    { name: 'NUL in sessionId', overrides: { sessionId: '\u0000' }, problems: [nul('sessionId')] },
    { name: 'NUL in voiceSentiment', overrides: { voiceSentiment: 'pos\u0000' }, problems: [nul('voiceSentiment')] },
    { name: 'NUL in eventId', overrides: { eventId: 'ev\u0000' }, problems: [nul('eventId')] },
    {
      name: 'unpaired surrogate in userId',
      overrides: { userId: 'a\uD800b' },
      problems: [{ field: 'userId', code: 'INVALID_CHARACTER', message: /userId.*surrogate/ }],
    },
    {
      name: 'two problems: blank sessionId and talkedTime out of range',
      overrides: { sessionId: ' ', talkedTime: 100_000 },
      problems: [blank('sessionId'), { field: 'talkedTime', code: 'OUT_OF_RANGE', message: /talkedTime 100000 / }],
    },
    {
      name: 'three problems: too-long userId, old timestamp, too-long voiceSentiment',
      overrides: { userId: 'x'.repeat(300), timestamp: 1, voiceSentiment: 'v'.repeat(51) },
      problems: [
        tooLong('userId', 300, 255),
        { field: 'timestamp', code: 'TIMESTAMP_TOO_OLD', message: /before 2000-01-01/ },
        tooLong('voiceSentiment', 51, 50),
      ],
    },
  ];
}

test('every validation rule: each failure is a rejection with its field, code and message; the valid records are stored', async () => {
  const cases = ruleCases();
  // Distinct talkedTime values keep records apart, except where talkedTime is the rule under test.
  const records = cases.map((c, i) => record({ sessionId: `rules-${i}`, talkedTime: 1000 + i, ...c.overrides }));
  const before = await count('TRUE');
  const result = await ingest(records);

  const expected = cases
    .flatMap((c, index) =>
      c.problems.map((p) => ({ ...p, index, name: c.name, eventId: (records[index]?.eventId as string) ?? null })),
    )
    .sort(byIndexAndField);
  const actual = [...result.rejected].sort(byIndexAndField);
  assert.equal(actual.length, expected.length, `rejections: ${JSON.stringify(actual, null, 1)}`);
  expected.forEach((want, i) => {
    const got = actual[i] as Rejection;
    assert.equal(got.index, want.index, `${want.name}: index`);
    assert.equal(got.field, want.field, `${want.name}: field`);
    assert.equal(got.code, want.code, `${want.name}: code`);
    assert.equal(got.eventId, want.eventId, `${want.name}: eventId`);
    assert.match(got.message, want.message, `${want.name}: message`);
  });

  const valid = cases
    .map((c, i) => ({ c, r: records[i] as Record<string, unknown> }))
    .filter(({ c }) => c.problems.length === 0);
  assert.equal(result.accepted, valid.length);
  assert.equal(result.duplicates, 0);
  assert.equal(await count('TRUE'), before + valid.length, 'only the valid records are stored');
  for (const { c, r } of valid) assert.equal(await storedCopies(r), 1, `${c.name}: stored once, exactly as sent`);
});

test('lengths count code points: 255 emoji are stored intact and read back intact', async () => {
  const userId = EMOJI.repeat(255);
  const eventId = `${'𝔸'.repeat(254)}${EMOJI}`;
  const voiceSentiment = '𝄞'.repeat(50);
  const result = await ingest([record({ userId, eventId, voiceSentiment, sessionId: 'code-points' })]);
  assert.deepEqual(result, { accepted: 1, duplicates: 0, rejected: [] });
  const [row] = await service.sql<{
    id: number;
    chars: number;
    bytes: number;
    user_id: string;
    event_id: string;
    voice_sentiment: string;
  }>(
    `SELECT id, char_length(user_id)::int AS chars, octet_length(user_id)::int AS bytes, user_id, event_id, voice_sentiment
     FROM user_metrics WHERE session_id = 'code-points'`,
  );
  assert.ok(row);
  assert.equal(row.chars, 255);
  assert.equal(row.bytes, 255 * 4);
  assert.equal(row.user_id, userId);
  assert.equal(row.event_id, eventId);
  assert.equal(row.voice_sentiment, voiceSentiment);
  const read = await service.gql(`query($id: ID!) { metric(id: $id) { userId eventId voiceSentiment } }`, {
    id: String(row.id),
  });
  assert.deepEqual(read.metric, { userId, eventId, voiceSentiment });
});

test('a NUL character rejects only its record; the rest of the batch is stored', async () => {
  const records = [
    record({ sessionId: 'nul-batch', talkedTime: 1 }),
    record({ sessionId: 'nul-batch', talkedTime: 2, userId: 'a\u0000b' }),
    record({ sessionId: 'nul-batch', talkedTime: 3 }),
  ];
  const response = await service.request(INGEST, { records });
  assert.equal(response.errors, undefined, JSON.stringify(response.errors));
  assert.equal(response.data?.ingestMetrics.accepted, 2);
  assert.deepEqual(
    response.data?.ingestMetrics.rejected.map((r: Rejection) => [r.index, r.field, r.code]),
    [[1, 'userId', 'INVALID_CHARACTER']],
  );
  assert.deepEqual(
    (
      await service.sql<{ t: number }>(
        `SELECT talked_time AS t FROM user_metrics WHERE session_id = 'nul-batch' ORDER BY 1`,
      )
    ).map((r) => r.t),
    [1, 3],
  );
});

test('a string, a decimal or an integer beyond 2^53 as a number fails the whole request, naming the record, storing nothing', async () => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['timestamp as a numeric string', { timestamp: String(nowSeconds() - 60) }],
    ['timestamp as a decimal', { timestamp: nowSeconds() - 60.5 }],
    ['timestamp beyond 2^53', { timestamp: 2 ** 53 + 2 }],
    ['timestamp at 2^53', { timestamp: 2 ** 53 }],
    ['talkedTime as a string', { talkedTime: '60' }],
    ['talkedTime as a decimal', { talkedTime: 1.5 }],
    ['talkedTime beyond 32 bits', { talkedTime: 2 ** 31 }],
    ['microphoneUsed as a string', { microphoneUsed: 'true' }],
  ];
  for (const [name, overrides] of cases) {
    const tag = `type-error-${name}`;
    const records = [
      record({ sessionId: tag, talkedTime: 1 }),
      record({ sessionId: tag, talkedTime: 2 }),
      record({ sessionId: tag, ...overrides }),
    ];
    const response = await service.request(INGEST, { records });
    assert.ok(
      response.errors && response.errors.length > 0,
      `${name}: expected a GraphQL error, got ${JSON.stringify(response)}`,
    );
    assert.ok(response.data == null, `${name}: no data`);
    assert.match(response.errors[0]?.message ?? '', /records\[2\]/, `${name}: the message names the record's index`);
    assert.equal(await count('session_id = $1', [tag]), 0, `${name}: nothing stored`);
  }
});

test('an inline timestamp literal is accepted as an integer and refused as a string', async () => {
  const ts = nowSeconds() - 120;
  const literal = (
    value: string,
  ) => `mutation { ingestMetrics(records: [{ userId: "inline", sessionId: "inline", timestamp: ${value},
    talkedTime: 5, microphoneUsed: true, speakerUsed: true }]) { accepted duplicates rejected { index } } }`;
  const ok = await service.gql(literal(String(ts)));
  assert.deepEqual(ok.ingestMetrics, { accepted: 1, duplicates: 0, rejected: [] });
  const bad = await service.request(literal(`"${ts}"`));
  assert.ok(bad.errors?.length, JSON.stringify(bad));
  assert.equal(await count(`session_id = 'inline'`), 1);
});

test('a partial batch stores the valid records and counts each outcome', async () => {
  const a = record({ sessionId: 'partial', talkedTime: 10 });
  const b = record({ sessionId: 'partial', talkedTime: 11 });
  const records = [
    a,
    record({ sessionId: 'partial', talkedTime: -5 }),
    b,
    { ...a },
    record({ sessionId: '', talkedTime: 12 }),
    record({ sessionId: 'partial', talkedTime: 13 }),
  ];
  const result = await ingest(records);
  assert.equal(result.accepted, 3);
  assert.equal(result.duplicates, 1, 'the repeat of record 0 within the batch');
  assert.deepEqual(
    result.rejected.map((r) => [r.index, r.field]),
    [
      [1, 'talkedTime'],
      [4, 'sessionId'],
    ],
  );
  assert.deepEqual(
    (
      await service.sql<{ t: number }>(
        `SELECT talked_time AS t FROM user_metrics WHERE session_id = 'partial' ORDER BY 1`,
      )
    ).map((r) => r.t),
    [10, 11, 13],
  );
});

test('an atomic batch with a rejected record stores nothing and lists every rejection', async () => {
  const already = record({ sessionId: 'atomic', talkedTime: 1, eventId: 'atomic-stored' });
  assert.equal((await ingest([already])).accepted, 1);
  const records = [
    record({ sessionId: 'atomic', talkedTime: 2 }),
    record({ sessionId: 'atomic', talkedTime: 86_401, userId: ' ', eventId: 'atomic-bad' }),
    already,
    record({ sessionId: 'atomic', talkedTime: 3 }),
    record({ sessionId: 'atomic', talkedTime: 4, timestamp: 5 }),
  ];
  const result = await ingest(records, true);
  assert.equal(result.accepted, 0);
  assert.equal(result.duplicates, 0);
  assert.deepEqual(
    [...result.rejected].sort(byIndexAndField).map((r) => [r.index, r.field, r.eventId]),
    [
      [1, 'talkedTime', 'atomic-bad'],
      [1, 'userId', 'atomic-bad'],
      [4, 'timestamp', null],
    ],
  );
  assert.equal(await count(`session_id = 'atomic'`), 1, 'only the record stored before the atomic batch');

  const valid = [records[0], records[2], records[3]] as Record<string, unknown>[];
  assert.deepEqual(await ingest(valid, true), { accepted: 2, duplicates: 1, rejected: [] });
  assert.deepEqual(
    (
      await service.sql<{ t: number }>(
        `SELECT talked_time AS t FROM user_metrics WHERE session_id = 'atomic' ORDER BY 1`,
      )
    ).map((r) => r.t),
    [1, 2, 3],
  );
});

test('eventId is stored and returned as sent, null when absent', async () => {
  const eventId = '  Event/ID with spaces, ümlauts and 🎉  ';
  const result = await ingest([
    record({ sessionId: 'event-ids', eventId, talkedTime: 1 }),
    record({ sessionId: 'event-ids', talkedTime: 2 }),
  ]);
  assert.equal(result.accepted, 2);
  const rows = await service.sql<{ id: number; event_id: string | null }>(
    `SELECT id, event_id FROM user_metrics WHERE session_id = 'event-ids' ORDER BY talked_time`,
  );
  assert.deepEqual(
    rows.map((r) => r.event_id),
    [eventId, null],
  );
  for (const row of rows) {
    const read = await service.gql(`query($id: ID!) { metric(id: $id) { id eventId } }`, { id: String(row.id) });
    assert.deepEqual(read.metric, { id: String(row.id), eventId: row.event_id });
  }
});

test('the same eventId with different content is a duplicate and never overwrites the stored row', async () => {
  const first = record({ eventId: 'same-id', sessionId: 'same-id', talkedTime: 100, voiceSentiment: 'positive' });
  assert.deepEqual(await ingest([first]), { accepted: 1, duplicates: 0, rejected: [] });
  const changed = { ...first, talkedTime: 200, voiceSentiment: 'negative', userId: 'someone-else' };
  assert.deepEqual(await ingest([changed]), { accepted: 0, duplicates: 1, rejected: [] });
  // Within one batch too: the first occurrence is the one stored.
  const inBatch = [
    record({ eventId: 'same-id-batch', sessionId: 'same-id', talkedTime: 1 }),
    record({ eventId: 'same-id-batch', sessionId: 'same-id', talkedTime: 2 }),
  ];
  assert.deepEqual(await ingest(inBatch), { accepted: 1, duplicates: 1, rejected: [] });
  const rows = await service.sql<{ event_id: string; user_id: string; talked_time: number; voice_sentiment: string }>(
    `SELECT event_id, user_id, talked_time, voice_sentiment FROM user_metrics WHERE session_id = 'same-id' ORDER BY event_id`,
  );
  assert.deepEqual(rows, [
    { event_id: 'same-id', user_id: first.userId, talked_time: 100, voice_sentiment: 'positive' },
    { event_id: 'same-id-batch', user_id: first.userId, talked_time: 1, voice_sentiment: 'positive' },
  ]);
});

test('without an eventId, the content is the identity: each of the seven fields tells records apart', async () => {
  const base = record({ sessionId: 'digest', userId: 'digest-user', talkedTime: 30, voiceSentiment: 'calm' });
  const variants = [
    base,
    { ...base, userId: 'digest-user-2' },
    { ...base, sessionId: 'digest-2' },
    { ...base, timestamp: (base.timestamp as number) - 1 },
    { ...base, talkedTime: 31 },
    { ...base, microphoneUsed: !base.microphoneUsed },
    { ...base, speakerUsed: !base.speakerUsed },
    { ...base, voiceSentiment: 'Calm' },
    { ...base, voiceSentiment: null },
  ];
  assert.deepEqual(await ingest(variants), { accepted: variants.length, duplicates: 0, rejected: [] });
  // An absent voiceSentiment is the same content as null; a reordered object is the same content.
  const { voiceSentiment: _omitted, ...withoutSentiment } = base;
  const reordered = Object.fromEntries(Object.entries(base).reverse());
  assert.deepEqual(await ingest([withoutSentiment, reordered, ...variants]), {
    accepted: 0,
    duplicates: variants.length + 2,
    rejected: [],
  });
  assert.equal(await count(`user_id LIKE 'digest-user%'`), variants.length);
});

test('a record with an eventId and an identical record without one are two records; keys never collide', async () => {
  const content = record({ sessionId: 'with-and-without', talkedTime: 7, voiceSentiment: null });
  // An eventId spelled like the content's canonical form must not collide with the content digest either.
  const canonical = JSON.stringify([
    content.userId,
    content.sessionId,
    content.timestamp,
    content.talkedTime,
    content.microphoneUsed,
    content.speakerUsed,
    null,
  ]);
  const records = [
    content,
    { ...content, eventId: 'wa-1' },
    { ...content, eventId: canonical },
    { ...content, eventId: `content:v1:${canonical}` },
  ];
  assert.deepEqual(await ingest(records), { accepted: 4, duplicates: 0, rejected: [] });
  assert.deepEqual(await ingest(records), { accepted: 0, duplicates: 4, rejected: [] });
  assert.equal(await count(`session_id = 'with-and-without'`), 4);
  assert.equal(await count(`session_id = 'with-and-without' AND event_id IS NULL`), 1);
});

test('the identity is the documented, fixed digest: sha256 of "event:" + eventId, else of the canonical content', async () => {
  const withEvent = record({ sessionId: 'digest-form', eventId: 'Évent "1" 🎉', talkedTime: 1 });
  const withoutEvent = record({
    sessionId: 'digest-form',
    userId: 'quote " and 😀',
    talkedTime: 2,
    voiceSentiment: null,
  });
  const sentiment = record({ sessionId: 'digest-form', talkedTime: 3, voiceSentiment: 'tab\there' });
  assert.equal((await ingest([withEvent, withoutEvent, sentiment])).accepted, 3);
  const sha256 = (text: string) => crypto.createHash('sha256').update(text, 'utf8').digest('hex');
  const content = (r: Record<string, unknown>) =>
    `content:v1:${JSON.stringify([r.userId, r.sessionId, r.timestamp, r.talkedTime, r.microphoneUsed, r.speakerUsed, r.voiceSentiment ?? null])}`;
  const keys = await service.sql<{ t: number; key: string }>(
    `SELECT talked_time AS t, encode(record_key, 'hex') AS key FROM user_metrics WHERE session_id = 'digest-form' ORDER BY 1`,
  );
  assert.deepEqual(
    keys.map((k) => k.key),
    [sha256(`event:${withEvent.eventId}`), sha256(content(withoutEvent)), sha256(content(sentiment))],
  );
});

test('duplicates within one batch are counted and stored once', async () => {
  const a = record({ sessionId: 'in-batch', talkedTime: 1 });
  const b = record({ sessionId: 'in-batch', talkedTime: 2, eventId: 'in-batch-b' });
  const result = await ingest([a, b, a, { ...b, talkedTime: 3 }, a, record({ sessionId: 'in-batch', talkedTime: 4 })]);
  assert.deepEqual(result, { accepted: 3, duplicates: 3, rejected: [] });
  assert.equal(await count(`session_id = 'in-batch'`), 3);
});

test('retrying a batch stores nothing twice: every record is a duplicate', async () => {
  const records = Array.from({ length: 50 }, (_, i) =>
    record({ sessionId: 'retry', talkedTime: i, ...(i % 2 ? { eventId: `retry-${i}` } : {}) }),
  );
  assert.deepEqual(await ingest(records), { accepted: 50, duplicates: 0, rejected: [] });
  for (let attempt = 0; attempt < 2; attempt++) {
    assert.deepEqual(await ingest(records), { accepted: 0, duplicates: 50, rejected: [] });
  }
  // A retry that adds a few new records stores only those.
  const extended = [
    ...records,
    record({ sessionId: 'retry', talkedTime: 50 }),
    record({ sessionId: 'retry', talkedTime: 51 }),
  ];
  assert.deepEqual(await ingest(extended.reverse()), { accepted: 2, duplicates: 50, rejected: [] });
  assert.equal(await count(`session_id = 'retry'`), 52);
  assert.equal(await count(`session_id = 'retry' AND event_id IS NOT NULL`), 25);
});

test('concurrent overlapping batches from several clients never fail and store each record exactly once', async () => {
  const clients = 6;
  const perClient = 150;
  const stride = 40;
  for (let round = 0; round < 3; round++) {
    const tag = `concurrent-${round}`;
    const poolSize = stride * (clients - 1) + perClient;
    const pool = Array.from({ length: poolSize }, (_, i) =>
      record({
        sessionId: tag,
        userId: `c-${i % 17}`,
        talkedTime: i,
        ...(i % 3 === 0 ? { eventId: `${tag}-${i}` } : {}),
      }),
    );
    const batches = Array.from({ length: clients }, (_, c) => {
      const slice = pool.slice(c * stride, c * stride + perClient);
      return c % 2 === 0 ? slice : slice.reverse();
    });
    // Every client sends its batch twice at once (a retry racing the original), so the same rows are contended.
    const results = await Promise.all(
      [...batches, ...batches].map((batch) => service.request(INGEST, { records: batch })),
    );
    for (const response of results) {
      assert.equal(response.errors, undefined, `round ${round}: ${JSON.stringify(response.errors)}`);
      assert.deepEqual(response.data?.ingestMetrics.rejected, []);
    }
    const accepted = results.reduce((sum, r) => sum + (r.data?.ingestMetrics.accepted as number), 0);
    const duplicates = results.reduce((sum, r) => sum + (r.data?.ingestMetrics.duplicates as number), 0);
    assert.equal(accepted, poolSize, `round ${round}: each record accepted by exactly one request`);
    assert.equal(
      accepted + duplicates,
      2 * clients * perClient,
      `round ${round}: every record counted once per request`,
    );
    const [stats] = await service.sql<{ n: number; talked: number; events: number; distinct_events: number }>(
      `SELECT count(*)::int AS n, count(DISTINCT talked_time)::int AS talked,
              count(event_id)::int AS events, count(DISTINCT event_id)::int AS distinct_events
       FROM user_metrics WHERE session_id = $1`,
      [tag],
    );
    assert.deepEqual(stats, {
      n: poolSize,
      talked: poolSize,
      events: Math.ceil(poolSize / 3),
      distinct_events: Math.ceil(poolSize / 3),
    });
  }
});

/** ingest_batch_writes_total per path, from the service's /metrics. */
async function batchWrites(): Promise<Record<string, number>> {
  const text = await (await fetch(`${service.url}/metrics`)).text();
  return Object.fromEntries(
    [...text.matchAll(/^ingest_batch_writes_total\{path="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]),
  );
}

/**
 * Ingests three records while another transaction stores the second one's identity: the service's COPY waits for that
 * transaction, which commits once the wait shows in pg_stat_activity.
 */
async function ingestRacing(tag: string): Promise<IngestResult> {
  // One time for the batch and the other transaction's row: the identity is the eventId's key with the timestamp.
  const timestamp = nowSeconds() - 3600;
  const records = [0, 1, 2].map((i) => record({ sessionId: tag, eventId: `${tag}-${i}`, talkedTime: i, timestamp }));
  const blocker = new pg.Client({ connectionString: service.config.databaseUrl });
  await blocker.connect();
  try {
    await blocker.query('BEGIN');
    await blocker.query(
      `INSERT INTO user_metrics (record_key, event_id, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used)
       VALUES (decode($1, 'hex'), $2, 'blocker', $3, $4, 99, false, false)`,
      [crypto.createHash('sha256').update(`event:${tag}-1`).digest('hex'), `${tag}-1`, tag, timestamp],
    );
    const pending = ingest(records);
    for (let waited = 0; ; waited += 20) {
      const [waiting] = await service.sql<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
      );
      if ((waiting?.n ?? 0) > 0) break;
      if (waited > 10_000) throw new Error('The ingest never waited for the concurrent transaction');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await blocker.query('COMMIT');
    return await pending;
  } finally {
    await blocker.end();
  }
}

test('a batch racing another transaction for one of its identities stores the rest, whichever way it was being written', {
  skip: usingPostgres
    ? false
    : 'PostgreSQL only: the embedded database runs one statement at a time, so nothing can race',
}, async () => {
  // A fresh batch finds nothing stored: the next batch is copied straight away.
  await ingest([record({ sessionId: 'race-fresh' })]);
  const before = await batchWrites();
  // Copied straight away, the COPY fails on the identity the other transaction stored: the batch is looked up and
  // copied again without it. Batches keep looking up first, as this one found an identity stored.
  assert.deepEqual(await ingestRacing('race-a'), { accepted: 2, duplicates: 1, rejected: [] });
  const afterLookup = await batchWrites();
  assert.equal(afterLookup.lookup_copy, (before.lookup_copy ?? 0) + 1, JSON.stringify({ before, afterLookup }));
  // Looked up first, the lookup cannot see the other transaction's row: the COPY fails, and the INSERT skips it.
  assert.deepEqual(await ingestRacing('race-b'), { accepted: 2, duplicates: 1, rejected: [] });
  const afterInsert = await batchWrites();
  assert.equal(afterInsert.insert, (afterLookup.insert ?? 0) + 1, JSON.stringify({ afterLookup, afterInsert }));
  assert.equal(afterInsert.copy, before.copy, 'no batch of the two was stored by its first COPY');

  const rows = await service.sql<{ event_id: string; user_id: string; talked_time: number }>(
    `SELECT event_id, user_id, talked_time FROM user_metrics WHERE session_id IN ('race-a', 'race-b') ORDER BY event_id`,
  );
  assert.deepEqual(
    rows,
    ['race-a', 'race-b'].flatMap((tag) => [
      { event_id: `${tag}-0`, user_id: 'user-1', talked_time: 0 },
      { event_id: `${tag}-1`, user_id: 'blocker', talked_time: 99 },
      { event_id: `${tag}-2`, user_id: 'user-1', talked_time: 2 },
    ]),
  );
});

test('a subscription that begins while a batch is being stored gets that batch, with the ids stored', {
  skip: usingPostgres
    ? false
    : "PostgreSQL only: the embedded database stores each batch in one step on the service's thread",
}, async () => {
  // With nobody listening, a batch is copied without ids (the columns' defaults give them). Here a subscription
  // begins while such a COPY waits for a lock another transaction holds: the records are stored after it began, so
  // it must receive them, with the ids the database gave them.
  assert.equal(liveUpdatesListening(), false, 'no subscription open at the start');
  // A fresh batch finds nothing stored: the next batch is copied straight away (not looked up first).
  await ingest([record({ sessionId: 'late-subscriber-before' })]);
  const records = [0, 1, 2].map((i) => record({ sessionId: 'late-subscriber', eventId: `late-${i}`, talkedTime: i }));
  const blocker = new pg.Client({ connectionString: service.config.databaseUrl });
  await blocker.connect();
  const controller = new AbortController();
  try {
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE user_metrics IN SHARE MODE');
    const pending = ingest(records);
    for (let waited = 0; ; waited += 20) {
      const [waiting] = await service.sql<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'COPY user_metrics (record_key%'`,
      );
      if ((waiting?.n ?? 0) > 0) break;
      if (waited > 10_000) throw new Error('The COPY never waited for the lock');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const response = await fetch(`${service.url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ query: 'subscription { metricIngested { id eventId createdAt } }' }),
      signal: controller.signal,
    });
    assert.equal(response.status, 200);
    for (let waited = 0; !liveUpdatesListening(); waited += 10) {
      if (waited > 10_000) throw new Error('The subscription never registered');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await blocker.query('COMMIT');
    assert.deepEqual(await pending, { accepted: 3, duplicates: 0, rejected: [] });

    const received: Array<{ id: string; eventId: string; createdAt: string }> = [];
    const decoder = new TextDecoder();
    let text = '';
    const reader = response.body?.getReader();
    assert.ok(reader);
    const deadline = setTimeout(() => controller.abort(), 10_000);
    while (received.length < 3) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      for (let end = text.indexOf('\n\n'); end >= 0; end = text.indexOf('\n\n')) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        if (!block.includes('event: next')) continue;
        const data = block
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5))
          .join('');
        received.push(
          (JSON.parse(data) as { data: { metricIngested: (typeof received)[number] } }).data.metricIngested,
        );
      }
    }
    clearTimeout(deadline);
    const stored = await service.sql<{ id: number; event_id: string; created_at: string }>(
      `SELECT id, event_id, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at
         FROM user_metrics WHERE session_id = 'late-subscriber' ORDER BY id`,
    );
    assert.deepEqual(
      received,
      stored.map((r) => ({ id: String(r.id), eventId: r.event_id, createdAt: r.created_at })),
    );
  } finally {
    controller.abort();
    await blocker.end();
  }
});

test('a batch over the default limit of 5,000 is refused whole, naming the limit', async () => {
  const records = Array.from({ length: 5001 }, (_, i) =>
    record({ sessionId: 'over-default-limit', talkedTime: i % 86_400 }),
  );
  const response = await service.request(INGEST, { records });
  assert.ok(response.errors?.length, JSON.stringify(response).slice(0, 500));
  assert.equal(response.errors[0]?.extensions?.code, 'BATCH_TOO_LARGE');
  assert.match(response.errors[0]?.message ?? '', /at most 5000 records/);
  assert.equal(await count(`session_id = 'over-default-limit'`), 0);
});

/**
 * A full batch at the default limit with every string at its maximum length: `fill` characters, each ending in three
 * `glyphs` that make it unique. Returns the records and the size of the request body JSON.stringify makes of them.
 */
function fullBatch(fill: string, glyphs: string[]) {
  const digits = (n: number) => {
    let out = '';
    for (let i = 0; i < 3; i++) {
      out = (glyphs[n % glyphs.length] as string) + out;
      n = Math.floor(n / glyphs.length);
    }
    return out;
  };
  const limit = service.config.maxBatchSize;
  assert.ok(glyphs.length ** 3 >= limit);
  const records = Array.from({ length: limit }, (_, i) => ({
    eventId: fill.repeat(252) + digits(i),
    userId: fill.repeat(252) + digits(i),
    sessionId: fill.repeat(252) + digits(i),
    timestamp: nowSeconds() - 86_400 * 365 - i,
    talkedTime: 86_400,
    microphoneUsed: false,
    speakerUsed: false,
    voiceSentiment: fill.repeat(47) + digits(i),
  }));
  return { records, bodyBytes: Buffer.byteLength(JSON.stringify({ query: INGEST, variables: { records } })) };
}

async function storesFullBatch(fill: string, glyphs: string[], bytesPerCharacter: number): Promise<void> {
  const limit = service.config.maxBatchSize;
  assert.equal(limit, 5000, 'the default batch limit');
  const { records, bodyBytes } = fullBatch(fill, glyphs);
  assert.ok(
    bodyBytes > limit * 815 * bytesPerCharacter,
    `the body (${bodyBytes} bytes) is a full batch at maximum lengths`,
  );
  assert.ok(
    bodyBytes <= service.config.maxBodyBytes,
    `${bodyBytes} bytes fit the body limit of ${service.config.maxBodyBytes}`,
  );
  const response = await service.request(INGEST, { records });
  assert.equal(response.status, 200, JSON.stringify(response).slice(0, 500));
  assert.deepEqual(response.data?.ingestMetrics, { accepted: limit, duplicates: 0, rejected: [] });
  const [stats] = await service.sql<{ n: number; chars: number }>(
    `SELECT count(*)::int AS n,
            sum(char_length(event_id) + char_length(user_id) + char_length(session_id) + char_length(voice_sentiment))::int AS chars
     FROM user_metrics WHERE starts_with(user_id, $1)`,
    [fill.repeat(252)],
  );
  assert.deepEqual(stats, { n: limit, chars: limit * 815 });
}

test('a full batch at the default limit, every field at its maximum length in 4-byte characters, fits the body limit', async () => {
  await storesFullBatch('𝕌', [...'😀😁😂🤣😃😄😅😆😉😊😋😎😍😘🥰😗😙🥲😚🙂🤗🤩🤔🫡🤨😐😑😶🫥🙄'], 4);
  const [row] = await service.sql<{ bytes: number }>(
    `SELECT sum(octet_length(user_id))::int AS bytes FROM user_metrics WHERE starts_with(user_id, '𝕌')`,
  );
  assert.equal(row?.bytes, 5000 * 255 * 4, 'stored as 4-byte characters');
});

test('a full batch at the default limit fits the body limit even when every character must be escaped in JSON', async () => {
  // Control characters are valid (not blank, not NUL) and JSON writes each as \u00XX: 6 bytes, the most for any character.
  const escaped = [...Array(32).keys()]
    .map((c) => String.fromCharCode(c))
    .filter((c) => JSON.stringify(c).length === 8 && c !== '\0');
  await storesFullBatch('\u0001', escaped.slice(1), 6);
});
