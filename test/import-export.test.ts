/**
 * `npm run import` and `npm run export` as a user runs them: child processes against a database this test creates
 * (PostgreSQL with TEST_DATABASE_URL, else an embedded data folder), checked by SQL and by the files they write.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { type Database, openDatabase } from '../src/db/client.js';
import { createTestDatabase, type TestDatabase, usingPostgres } from './support/harness.js';

const T = Math.floor(Date.now() / 1000) - 3 * 86_400;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'import-export-'));
const databases: TestDatabase[] = [];
let main: TestDatabase;

before(async () => {
  main = await createTestDatabase();
  databases.push(main);
});
after(async () => {
  for (const db of databases) await db.drop();
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function envFor(db: TestDatabase): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env))
    if (v !== undefined && k !== 'DATABASE_URL' && k !== 'DATA_DIR') env[k] = v;
  return {
    ...env,
    NODE_ENV: 'test',
    LOG_LEVEL: 'warn',
    ...(db.url ? { DATABASE_URL: db.url } : { DATA_DIR: db.dataDir }),
  };
}

/** Runs a CLI of src/cli as `npm run <name>` would, without npm. */
function cli(db: TestDatabase, script: string, args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', `src/cli/${script}.ts`, ...args], { env: envFor(db) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

function ok(run: Run): Run {
  assert.equal(run.code, 0, `exit ${run.code}\nstdout: ${run.stdout}\nstderr: ${run.stderr}`);
  return run;
}

/** The summary's counts: "  accepted   3" lines. */
function summary(run: Run): { records: number; accepted: number; duplicates: number; rejected: number } {
  const count = (label: string) => {
    const match = new RegExp(`^\\s+${label}\\s+([\\d,]+)`, 'm').exec(run.stdout);
    assert.ok(match, `no "${label}" in the summary:\n${run.stdout}`);
    return Number((match[1] as string).replaceAll(',', ''));
  };
  return {
    records: count('records'),
    accepted: count('accepted'),
    duplicates: count('duplicates'),
    rejected: count('rejected'),
  };
}

/** Runs SQL on a test database directly (the embedded folder is opened only between CLI runs: it is single-process). */
async function query<Row>(db: TestDatabase, text: string): Promise<Row[]> {
  let handle: Database | undefined;
  try {
    handle = await openDatabase(db.url ? { url: db.url, poolMax: 1 } : { dataDir: db.dataDir });
    return await handle.withSession((session) => session.query<Row>(text));
  } finally {
    await handle?.close();
  }
}

type Tuple = [string | null, string, string, number, number, boolean, boolean, string | null];
const ROW_SQL = `SELECT event_id, user_id, session_id, "timestamp"::float8 AS timestamp, talked_time, microphone_used, speaker_used, voice_sentiment FROM user_metrics`;
interface Row {
  event_id: string | null;
  user_id: string;
  session_id: string;
  timestamp: number;
  talked_time: number;
  microphone_used: boolean;
  speaker_used: boolean;
  voice_sentiment: string | null;
}
const tuple = (r: Row): Tuple => [
  r.event_id,
  r.user_id,
  r.session_id,
  Number(r.timestamp),
  r.talked_time,
  r.microphone_used,
  r.speaker_used,
  r.voice_sentiment,
];
const sortTuples = (rows: Tuple[]) => rows.map((r) => JSON.stringify(r)).sort();

async function storedRows(db: TestDatabase, where = 'TRUE'): Promise<string[]> {
  return sortTuples((await query<Row>(db, `${ROW_SQL} WHERE ${where}`)).map(tuple));
}

function readRejected(file: string): { line: number; codes: string[]; fields: (string | null)[]; text: string }[] {
  return fs
    .readFileSync(file, 'utf8')
    .trim()
    .split('\n')
    .map(
      (l) =>
        JSON.parse(l) as {
          line: number;
          reasons: { field: string | null; code: string; message: string }[];
          text: string;
        },
    )
    .map((e) => {
      for (const r of e.reasons) assert.ok(r.message.length > 0);
      return {
        line: e.line,
        codes: e.reasons.map((r) => r.code).sort(),
        fields: e.reasons.map((r) => r.field),
        text: e.text,
      };
    })
    .sort((a, b) => a.line - b.line);
}

// NDJSON: both naming styles, every kind of bad line --------------------------------------------------------------

const camel = (o: Record<string, unknown>) => JSON.stringify(o);
const base = {
  sessionId: 's-n',
  timestamp: T,
  talkedTime: 30,
  microphoneUsed: true,
  speakerUsed: false,
  voiceSentiment: 'positive',
};
const NDJSON_LINES = [
  /* 1 */ camel({ eventId: 'n-1', userId: 'u-1', ...base }),
  /* 2 */ camel({
    event_id: 'n-2',
    user_id: 'u-2',
    session_id: 's-2',
    timestamp: T + 1,
    talked_time: 12,
    microphone_used: false,
    speaker_used: true,
    voice_sentiment: null,
  }),
  /* 3 */ '',
  /* 4 */ '{"eventId": "n-x", not json',
  /* 5 */ camel({ eventId: 'n-3', userId: 'u-3', ...base, timestamp: String(T) }),
  /* 6 */ camel({
    eventId: 'n-4',
    userId: 'u-4',
    timestamp: T,
    talkedTime: 1,
    microphoneUsed: true,
    speakerUsed: true,
  }),
  /* 7 */ camel({ eventId: 'n-5', userId: 'u-5', ...base, timestamp: T * 1000 }),
  /* 8 */ camel({ eventId: 'n-6', userId: '   ', ...base, talkedTime: -5 }),
  /* 9 */ camel({ eventId: 'n-1', userId: 'u-1-again', ...base }),
  /* 10 */ '[1, 2]',
  /* 11 */ camel({ userId: 'u-11', ...base, voiceSentiment: null }),
  /* 12 */ JSON.stringify({
    user_id: 'u-11',
    session_id: base.sessionId,
    timestamp: T,
    talked_time: 30,
    microphone_used: true,
    speaker_used: false,
  }),
];
const NDJSON_EXPECTED = {
  stored: sortTuples([
    ['n-1', 'u-1', 's-n', T, 30, true, false, 'positive'],
    ['n-2', 'u-2', 's-2', T + 1, 12, false, true, null],
    [null, 'u-11', 's-n', T, 30, true, false, null],
  ]),
  // Line 9 repeats n-1's eventId; line 12 is line 11's content in snake_case: the same identity.
  duplicates: 2,
  rejected: [
    { line: 4, codes: ['INVALID_JSON'] },
    { line: 5, codes: ['WRONG_TYPE'] },
    { line: 6, codes: ['MISSING'] },
    { line: 7, codes: ['TIMESTAMP_IN_MILLISECONDS'] },
    { line: 8, codes: ['BLANK', 'OUT_OF_RANGE'] },
    { line: 10, codes: ['NOT_AN_OBJECT'] },
  ],
};

test('NDJSON import: both naming styles, per-line rejections with reasons in the rejected file, summary counts', async () => {
  const file = path.join(dir, 'records.ndjson');
  fs.writeFileSync(file, `${NDJSON_LINES.join('\n')}\n`);
  const run = ok(await cli(main, 'import', [file, '--progress', 'none']));
  const counts = summary(run);
  assert.deepEqual(counts, {
    records: NDJSON_LINES.filter((l) => l !== '').length,
    accepted: NDJSON_EXPECTED.stored.length,
    duplicates: NDJSON_EXPECTED.duplicates,
    rejected: NDJSON_EXPECTED.rejected.length,
  });
  assert.deepEqual(await storedRows(main), NDJSON_EXPECTED.stored);

  const rejected = readRejected(`${file}.rejected.ndjson`);
  assert.deepEqual(
    rejected.map(({ line, codes }) => ({ line, codes })),
    NDJSON_EXPECTED.rejected,
  );
  for (const entry of rejected)
    assert.equal(entry.text, NDJSON_LINES[entry.line - 1], 'the rejected file keeps the line as it was');
  assert.deepEqual(rejected.find((e) => e.line === 8)?.fields.sort(), ['talkedTime', 'userId']);
  assert.deepEqual(rejected.find((e) => e.line === 5)?.fields, ['timestamp']);
  assert.deepEqual(rejected.find((e) => e.line === 6)?.fields, ['sessionId']);
});

test('re-running an import adds nothing: every valid record counts as a duplicate', async () => {
  const file = path.join(dir, 'records.ndjson');
  const rejectedFile = path.join(dir, 'custom-rejected.ndjson');
  const run = ok(await cli(main, 'import', [file, '--progress', 'none', '--rejected', rejectedFile]));
  assert.deepEqual(summary(run), {
    records: NDJSON_LINES.filter((l) => l !== '').length,
    accepted: 0,
    duplicates: NDJSON_EXPECTED.stored.length + NDJSON_EXPECTED.duplicates,
    rejected: NDJSON_EXPECTED.rejected.length,
  });
  assert.deepEqual(await storedRows(main), NDJSON_EXPECTED.stored);
  assert.deepEqual(
    readRejected(rejectedFile).map((e) => e.line),
    NDJSON_EXPECTED.rejected.map((e) => e.line),
  );
});

// CSV: quoting, multi-line values, booleans, null vs "" --------------------------------------------------------

const CSV_SNAKE = [
  'event_id,user_id,session_id,timestamp,talked_time,microphone_used,speaker_used,voice_sentiment', // 1
  `c-1,"Smith, Jane",s-1,${T},10,true,false,positive`, // 2
  `c-2,u-2,"multi`, // 3
  `line",${T},20,t,f,`, // 4 (the same record)
  `c-3,"say ""hi""",s-3,${T},30,1,0,""`, // 5
  `c-4,u-4,s-4,1.5e9,40,TRUE,False,neutral`, // 6
  `c-5,u-5,s-5,${T},50,yes,false,neutral`, // 7
  `c-6,u-6,s-6,${T},60,false`, // 8
  `,u-7,s-7,${T},70,0,1,negative`, // 9
  `c-8,u-8,s-8,${T},90000,true,true,positive`, // 10
].join('\n');
const CSV_EXPECTED = {
  stored: sortTuples([
    ['c-1', 'Smith, Jane', 's-1', T, 10, true, false, 'positive'],
    ['c-2', 'u-2', 'multi\nline', T, 20, true, false, null],
    ['c-3', 'say "hi"', 's-3', T, 30, true, false, ''],
    [null, 'u-7', 's-7', T, 70, false, true, 'negative'],
  ]),
  rejected: [
    { line: 6, codes: ['WRONG_TYPE'] },
    { line: 7, codes: ['WRONG_TYPE'] },
    { line: 8, codes: ['WRONG_COLUMN_COUNT'] },
    { line: 10, codes: ['OUT_OF_RANGE'] },
  ],
};

test('CSV import (seed column names): quoted commas, newlines and quotes, boolean spellings, empty vs "" sentiment', async () => {
  // Into the database of the NDJSON tests: these records' identities are all new there.
  const db = main;
  const csvRows = `event_id LIKE 'c-%' OR user_id = 'u-7'`;
  const file = path.join(dir, 'records.csv');
  fs.writeFileSync(file, `${CSV_SNAKE}\n`);
  const run = ok(await cli(db, 'import', [file, '--progress', 'none']));
  assert.deepEqual(summary(run), { records: 8, accepted: 4, duplicates: 0, rejected: 4 });
  assert.deepEqual(
    readRejected(`${file}.rejected.ndjson`).map(({ line, codes }) => ({ line, codes })),
    CSV_EXPECTED.rejected,
  );

  // camelCase header, CRLF line ends, no extension (detected from the content); c-1 overlaps the file above.
  const camelFile = path.join(dir, 'camel-records');
  fs.writeFileSync(
    camelFile,
    `${[
      'eventId,userId,sessionId,timestamp,talkedTime,microphoneUsed,speakerUsed,voiceSentiment',
      `c-1,"Smith, Jane",s-1,${T},10,true,false,positive`,
      `k-2,u-k2,"crlf\r\nvalue",${T},15,f,T,neutral`,
    ].join('\r\n')}\r\n`,
  );
  const second = ok(await cli(db, 'import', [camelFile, '--progress', 'none']));
  assert.deepEqual(summary(second), { records: 2, accepted: 1, duplicates: 1, rejected: 0 });
  assert.ok(!fs.existsSync(`${camelFile}.rejected.ndjson`), 'no rejected file when nothing is rejected');
  assert.deepEqual(
    await storedRows(db, `${csvRows} OR event_id = 'k-2'`),
    sortTuples([
      ...CSV_EXPECTED.stored.map((t) => JSON.parse(t) as Tuple),
      ['k-2', 'u-k2', 'crlf\r\nvalue', T, 15, false, true, 'neutral'],
    ]),
  );
});

test('a CSV header without the required columns stops the import before anything is stored', async () => {
  const file = path.join(dir, 'bad-header.csv');
  fs.writeFileSync(file, `user,session,when\nu,s,${T}\n`);
  const run = await cli(main, 'import', [file, '--progress', 'none']);
  assert.equal(run.code, 1, run.stderr);
  assert.match(run.stderr, /bad-header\.csv: the first line is not a usable CSV header/);
  assert.match(run.stderr, /lacks user_id, session_id, timestamp, talked_time, microphone_used, speaker_used/);
});

// Export ------------------------------------------------------------------------------------------------------------

test('export --where streams the matching records; importing them into an empty database gives the same rows', async () => {
  // More records than one export batch, so that keyset paging is exercised.
  const bulk = path.join(dir, 'bulk.ndjson');
  const lines: string[] = [];
  for (let i = 0; i < 1500; i++) {
    lines.push(
      camel({
        eventId: i % 3 === 0 ? null : `b-${i}`,
        userId: `bulk-${i % 7}`,
        sessionId: i % 11 === 0 ? `s, "quoted"\nnext ${i}` : `s-${i % 50}`,
        timestamp: T + i,
        talkedTime: i % 600,
        microphoneUsed: i % 2 === 0,
        speakerUsed: i % 5 === 0,
        voiceSentiment: i % 4 === 0 ? null : i % 13 === 0 ? '' : ['positive', 'neutral', 'negative'][i % 3],
      }),
    );
  }
  fs.writeFileSync(bulk, `${lines.join('\n')}\n`);
  assert.equal(
    summary(ok(await cli(main, 'import', [bulk, '--progress', 'none', '--batch-size', '400']))).accepted,
    1500,
  );

  // Also the CSV test's awkward values: a quoted user id, a two-line session id, an empty-string sentiment.
  const where = { userId: { in: ['bulk-1', 'bulk-2', 'u-1', 'u-2', 'say "hi"'] }, talkedTime: { gte: 10 } };
  const sqlWhere = `user_id IN ('bulk-1', 'bulk-2', 'u-1', 'u-2', 'say "hi"') AND talked_time >= 10`;
  const expected = await storedRows(main, sqlWhere);
  assert.ok(expected.length > 300, `the filter matches ${expected.length} rows`);

  const out = path.join(dir, 'export.csv');
  const exported = ok(
    await cli(main, 'export', [
      '--where',
      JSON.stringify(where),
      '--out',
      out,
      '--batch-size',
      '100',
      '--progress',
      'none',
    ]),
  );
  assert.match(exported.stderr, new RegExp(`Exported ${expected.length.toLocaleString('en-US')} records`));
  const text = fs.readFileSync(out, 'utf8');
  assert.ok(
    text.startsWith(
      'id,event_id,user_id,session_id,timestamp,talked_time,microphone_used,speaker_used,voice_sentiment,created_at\n',
    ),
  );
  assert.match(text, /"s, ""quoted""\nnext \d+"/, 'values with commas, quotes and newlines are quoted');

  const empty = await createTestDatabase();
  databases.push(empty);
  const reimported = ok(await cli(empty, 'import', [out, '--progress', 'none']));
  assert.deepEqual(summary(reimported), {
    records: expected.length,
    accepted: expected.length,
    duplicates: 0,
    rejected: 0,
  });
  assert.deepEqual(await storedRows(empty), expected);

  // NDJSON to stdout: the same records, one object per line, in id order.
  const ndjson = ok(await cli(main, 'export', ['--where', JSON.stringify(where), '--format', 'ndjson']));
  const objects = ndjson.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { id: number; userId: string });
  assert.equal(objects.length, expected.length);
  assert.deepEqual(
    objects.map((o) => o.id),
    [...objects.map((o) => o.id)].sort((a, b) => a - b),
  );
});

test('export --where is checked against the MetricFilter type, with errors naming the field', async () => {
  const run = await cli(main, 'export', ['--where', '{"userId":{"equal":"x"},"timestamp":{"gte":"soon"}}']);
  assert.equal(run.code, 2);
  assert.match(run.stderr, /where\.userId: Field "equal" is not defined by type "StringFilter"/);
  assert.match(run.stderr, /where\.timestamp\.gte: SafeInt cannot represent/);
  const notJson = await cli(main, 'export', ['--where', '{userId']);
  assert.equal(notJson.code, 2);
  assert.match(notJson.stderr, /--where is not valid JSON/);
});

test('the embedded database in use by another process: the import says so and stores nothing', {
  skip: usingPostgres,
}, async () => {
  const holder = await openDatabase({ dataDir: main.dataDir });
  try {
    const file = path.join(dir, 'records.ndjson');
    const run = await cli(main, 'import', [file, '--progress', 'none']);
    assert.equal(run.code, 1);
    assert.match(run.stderr, new RegExp(`in use by process ${process.pid}`));
    assert.match(run.stderr, /cannot run while the service does/);
  } finally {
    await holder.close();
  }
});

// Seed -------------------------------------------------------------------------------------------------------------

test('seed: the same --seed makes the same data; it loads through the importer and a second run stores nothing', async () => {
  const end = '2026-01-15T00:00:00Z';
  const endSeconds = Date.parse(end) / 1000;
  const args = ['--users', '40', '--days', '3', '--seed', 'test-seed', '--end', end, '--progress', 'none'];
  const [a, b] = [path.join(dir, 'seed-a.ndjson'), path.join(dir, 'seed-b.ndjson')];
  const [first, second] = await Promise.all([
    cli(main, 'seed', [...args, '--out', a]),
    cli(main, 'seed', [...args, '--out', b]),
  ]);
  ok(first);
  ok(second);
  const text = fs.readFileSync(a, 'utf8');
  assert.equal(text, fs.readFileSync(b, 'utf8'), 'deterministic');
  const records = text
    .trim()
    .split('\n')
    .map(
      (l) => JSON.parse(l) as { eventId: string; sessionId: string; timestamp: number; voiceSentiment: string | null },
    );
  assert.match(first.stdout, new RegExp(`records\\s+${records.length.toLocaleString('en-US')}`));
  assert.ok(records.length > 100, `${records.length} records`);
  assert.ok(records.every((r) => r.timestamp >= endSeconds - 3 * 86_400 && r.timestamp < endSeconds));
  assert.ok(records.length / new Set(records.map((r) => r.sessionId)).size > 1.5, 'sessions have several records');
  assert.ok(records.some((r) => r.voiceSentiment === null) && records.some((r) => r.voiceSentiment === 'positive'));

  const loaded = ok(await cli(main, 'seed', args));
  assert.match(loaded.stdout, new RegExp(`${records.length.toLocaleString('en-US')} accepted, 0 duplicates`));
  const [{ n } = { n: -1 }] = await query<{ n: number }>(
    main,
    `SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'seed-test-seed-%'`,
  );
  assert.equal(n, records.length);
  const again = ok(await cli(main, 'seed', args));
  assert.match(again.stdout, new RegExp(`0 accepted, ${records.length.toLocaleString('en-US')} duplicates`));
});
