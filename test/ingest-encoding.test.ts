/**
 * The batch insert sends each column as one PostgreSQL array literal that the service builds itself: text that means
 * something inside an array literal (quotes, backslashes, commas, braces, spaces, the word NULL) and text beyond ASCII
 * must arrive exactly as sent, and an absent optional field must arrive as SQL NULL, not as the text "NULL".
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { INGEST, record, startTestService, type TestService } from './support/harness.js';

let service: TestService;
before(async () => {
  service = await startTestService();
});
after(async () => {
  await service?.stop();
});

const AWKWARD = [
  'say "hi"',
  'back\\slash',
  '\\"both\\"',
  'a,b',
  '{braces}',
  '}',
  'NULL',
  'null',
  ' leading and trailing ',
  '\ttab\nnewline',
  "it's",
  'x'.repeat(255),
  '😀 grinning, ünïcödé, 中文',
  '\\',
  '"',
];

interface Row {
  event_id: string | null;
  user_id: string;
  session_id: string;
  voice_sentiment: string | null;
  timestamp: number;
  talked_time: number;
  microphone_used: boolean;
  speaker_used: boolean;
}

test('text fields with array-literal syntax and non-ASCII text are stored exactly as sent', async () => {
  const records = AWKWARD.map((text, i) =>
    record({
      eventId: `enc-${i}-${text}`.slice(0, 255),
      userId: text,
      sessionId: `s ${text}`.slice(0, 255),
      voiceSentiment: text.slice(0, 50),
      talkedTime: i,
      microphoneUsed: i % 2 === 0,
      speakerUsed: i % 3 === 0,
    }),
  );
  const data = await service.gql<{ ingestMetrics: { accepted: number; rejected: unknown[] } }>(INGEST, { records });
  assert.deepEqual(data.ingestMetrics.rejected, []);
  assert.equal(data.ingestMetrics.accepted, records.length);
  const rows = await service.sql<Row>(
    `SELECT event_id, user_id, session_id, voice_sentiment, "timestamp", talked_time, microphone_used, speaker_used
     FROM user_metrics WHERE event_id LIKE 'enc-%' ORDER BY talked_time`,
  );
  assert.equal(rows.length, records.length);
  rows.forEach((row, i) => {
    const sent = records[i] as Record<string, unknown>;
    assert.deepEqual(
      {
        eventId: row.event_id,
        userId: row.user_id,
        sessionId: row.session_id,
        voiceSentiment: row.voice_sentiment,
        timestamp: Number(row.timestamp),
        talkedTime: row.talked_time,
        microphoneUsed: row.microphone_used,
        speakerUsed: row.speaker_used,
      },
      {
        eventId: sent.eventId,
        userId: sent.userId,
        sessionId: sent.sessionId,
        voiceSentiment: sent.voiceSentiment,
        timestamp: sent.timestamp,
        talkedTime: sent.talkedTime,
        microphoneUsed: sent.microphoneUsed,
        speakerUsed: sent.speakerUsed,
      },
      `record ${i} (${JSON.stringify(AWKWARD[i])})`,
    );
  });
});

test('absent eventId and voiceSentiment are stored as NULL; the text "NULL" stays text', async () => {
  const absent = record({ userId: 'enc-null', sessionId: 'absent', talkedTime: 1 });
  delete absent.voiceSentiment;
  const explicitNull = record({
    userId: 'enc-null',
    sessionId: 'explicit',
    talkedTime: 2,
    voiceSentiment: null,
    eventId: null,
  });
  const text = record({
    userId: 'enc-null',
    sessionId: 'text',
    talkedTime: 3,
    voiceSentiment: 'NULL',
    eventId: 'NULL',
  });
  const data = await service.gql<{ ingestMetrics: { accepted: number } }>(INGEST, {
    records: [absent, explicitNull, text],
  });
  assert.equal(data.ingestMetrics.accepted, 3);
  const rows = await service.sql<{ session_id: string; event_id: string | null; voice_sentiment: string | null }>(
    `SELECT session_id, event_id, voice_sentiment FROM user_metrics WHERE user_id = 'enc-null' ORDER BY talked_time`,
  );
  assert.deepEqual(rows, [
    { session_id: 'absent', event_id: null, voice_sentiment: null },
    { session_id: 'explicit', event_id: null, voice_sentiment: null },
    { session_id: 'text', event_id: 'NULL', voice_sentiment: 'NULL' },
  ]);
});
