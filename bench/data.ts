/**
 * The benchmark's records: deterministic (seeded), realistic values, and the same rows in every form the benchmark
 * sends them (GraphQL request bodies, COPY text).
 */
import crypto from 'node:crypto';

export interface BenchRecord {
  eventId: string;
  userId: string;
  sessionId: string;
  timestamp: number;
  talkedTime: number;
  microphoneUsed: boolean;
  speakerUsed: boolean;
  voiceSentiment: string | null;
}

/** mulberry32: a small, fast, seeded generator, so every run sends the same records. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function uuid(rand: () => number): string {
  const hex = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 16).toString(16)).join('');
  return `${hex(8)}-${hex(4)}-4${hex(3)}-${'89ab'[Math.floor(rand() * 4)]}${hex(3)}-${hex(12)}`;
}

export function userName(index: number): string {
  return `user-${String(index).padStart(4, '0')}`;
}

const SENTIMENTS = ['positive', 'neutral', 'negative'] as const;

function sentiment(rand: () => number): string | null {
  const r = rand();
  if (r < 0.35) return SENTIMENTS[0];
  if (r < 0.7) return SENTIMENTS[1];
  if (r < 0.85) return SENTIMENTS[2];
  return null;
}

/** Seconds talked: mostly a few minutes, a long tail up to two hours. */
function talkedTime(rand: () => number): number {
  return Math.min(7200, Math.floor(-Math.log(1 - rand()) * 240));
}

/** Hours of the day weighted like a working day (more calls at 9-18 UTC). */
function diurnalSecondOfDay(rand: () => number): number {
  for (;;) {
    const s = Math.floor(rand() * 86_400);
    const hour = s / 3600;
    const weight = hour >= 8 && hour < 19 ? 1 : hour >= 6 && hour < 22 ? 0.5 : 0.15;
    if (rand() < weight) return s;
  }
}

/**
 * `count` records from `users` users over the `days` days before `endSeconds`, sessions of a few records each.
 * Every record carries an eventId (a UUID), as a client that retries safely sends.
 */
export function makeRecords(
  count: number,
  options: { seed: number; users: number; days: number; endSeconds: number },
): BenchRecord[] {
  const rand = random(options.seed);
  const startDay = Math.floor(options.endSeconds / 86_400) - options.days;
  const records: BenchRecord[] = new Array(count);
  let session = uuid(rand);
  let sessionUser = 0;
  let sessionLeft = 0;
  for (let i = 0; i < count; i++) {
    if (sessionLeft === 0) {
      session = uuid(rand);
      sessionUser = 1 + Math.floor(rand() * options.users);
      sessionLeft = 1 + Math.floor(rand() * 6);
    }
    sessionLeft--;
    let timestamp = (startDay + Math.floor(rand() * options.days)) * 86_400 + diurnalSecondOfDay(rand);
    if (timestamp > options.endSeconds) timestamp -= 86_400;
    records[i] = {
      eventId: uuid(rand),
      userId: userName(sessionUser),
      sessionId: session,
      timestamp,
      talkedTime: talkedTime(rand),
      microphoneUsed: rand() < 0.85,
      speakerUsed: rand() < 0.6,
      voiceSentiment: sentiment(rand),
    };
  }
  return records;
}

/**
 * 1,000 records per user (for 1,000 users: 1,000,000), spread over `days` days: the query benchmark's table.
 * Generated in slices so the whole set is never in memory at once.
 */
export function* recordsPerUser(options: {
  users: number;
  perUser: number;
  days: number;
  endSeconds: number;
  seed: number;
}): Generator<BenchRecord[]> {
  const rand = random(options.seed);
  const startDay = Math.floor(options.endSeconds / 86_400) - options.days;
  for (let u = 1; u <= options.users; u++) {
    const slice: BenchRecord[] = new Array(options.perUser);
    let session = uuid(rand);
    let sessionLeft = 0;
    for (let i = 0; i < options.perUser; i++) {
      if (sessionLeft === 0) {
        session = uuid(rand);
        sessionLeft = 1 + Math.floor(rand() * 6);
      }
      sessionLeft--;
      let timestamp = (startDay + Math.floor(rand() * options.days)) * 86_400 + diurnalSecondOfDay(rand);
      if (timestamp > options.endSeconds) timestamp -= 86_400;
      slice[i] = {
        eventId: uuid(rand),
        userId: userName(u),
        sessionId: session,
        timestamp,
        talkedTime: talkedTime(rand),
        microphoneUsed: rand() < 0.85,
        speakerUsed: rand() < 0.6,
        voiceSentiment: sentiment(rand),
      };
    }
    yield slice;
  }
}

/** The record's identity as the service computes it for a record with an eventId (see recordKey in src/services/ingest.ts). */
export function eventKeyHex(eventId: string): string {
  return crypto.createHash('sha256').update('event:').update(eventId).digest('hex');
}

export const COPY_COLUMNS =
  'record_key, event_id, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used, voice_sentiment';

/** Rows in COPY's text format (the generated values hold no tab, newline or backslash). */
export function copyText(records: readonly BenchRecord[]): string {
  let out = '';
  for (const r of records) {
    out += `\\\\x${eventKeyHex(r.eventId)}\t${r.eventId}\t${r.userId}\t${r.sessionId}\t${r.timestamp}\t${r.talkedTime}\t${
      r.microphoneUsed ? 't' : 'f'
    }\t${r.speakerUsed ? 't' : 'f'}\t${r.voiceSentiment ?? '\\N'}\n`;
  }
  return out;
}

export const INGEST_MUTATION = /* GraphQL */ `
  mutation Ingest($records: [UserMetricInput!]!) {
    ingestMetrics(records: $records) { accepted duplicates rejected { index field code message } }
  }`;

/** One request body per batch, serialised once before timing starts (the client's JSON cost is not the service's). */
export function ingestBodies(records: readonly BenchRecord[], batchSize: number): Buffer[] {
  const bodies: Buffer[] = [];
  for (let i = 0; i < records.length; i += batchSize) {
    bodies.push(
      Buffer.from(JSON.stringify({ query: INGEST_MUTATION, variables: { records: records.slice(i, i + batchSize) } })),
    );
  }
  return bodies;
}
