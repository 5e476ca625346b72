/**
 * `npm run seed -- --users N --days D [--seed S]`: realistic demo data (see bulk/demo-data.ts) loaded through the
 * importer's fast path, or written to a file with --out. Deterministic with --seed; seeding twice stores nothing new.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createRandom, demoDay, demoDayCount, makeUsers } from '../bulk/demo-data.js';
import { BatchLoader } from '../bulk/loader.js';
import { formatCount, Progress } from '../bulk/progress.js';
import { CSV_HEADER, csvLine, ndjsonLine } from '../bulk/records.js';
import { loadConfig } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { type BulkMethod, openBulkWriter } from '../services/bulk-import.js';
import type { MetricRecordInput } from '../services/validation.js';
import { choiceOption, integerOption, PROGRESS_MODES, parseCommandLine, UsageError } from './args.js';
import { connectForTool, describeDatabase } from './connect.js';
import { close, runTool, write } from './support.js';

const USAGE = `usage: npm run seed -- --users N --days D [options]

  --users <n>           users, 1..1000000 (default 100)
  --days <n>            days of history ending at --end, 1..3650 (default 7)
  --seed <text>         the same seed (with the same --end) makes the same data; default: a random one, printed
  --end <time>          end of the window, ISO 8601 or unix seconds (default: now, down to the hour)
  --out <file>          write the records to a file (.csv, else NDJSON) instead of loading them
  --batch-size <n>      records per database batch (default 10000)
  --method copy|insert  as for npm run import (default: copy on PostgreSQL, insert on the embedded database)
  --progress bar|lines|none
  -h, --help

Loads into DATABASE_URL, or the embedded database in DATA_DIR (stop the service first: it holds that folder).`;

interface Stats {
  records: number;
  sessions: number;
  lastSession: string;
  users: Set<string>;
  sentiments: Map<string, number>;
  microphone: number;
  speaker: number;
  talked: number[];
  byUtcHour: number[];
  first: number;
  last: number;
}

function observe(stats: Stats, record: MetricRecordInput): void {
  stats.records++;
  // A session's records are generated one after another: counting changes counts sessions without remembering them.
  if (record.sessionId !== stats.lastSession) stats.sessions++;
  stats.lastSession = record.sessionId;
  stats.users.add(record.userId);
  const sentiment = record.voiceSentiment ?? '(none)';
  stats.sentiments.set(sentiment, (stats.sentiments.get(sentiment) ?? 0) + 1);
  if (record.microphoneUsed) stats.microphone++;
  if (record.speakerUsed) stats.speaker++;
  // A bounded reservoir is enough for the median shown at the end.
  if (stats.talked.length < 100_000) stats.talked.push(record.talkedTime);
  const hour = Math.floor((record.timestamp % 86_400) / 3600);
  stats.byUtcHour[hour] = (stats.byUtcHour[hour] ?? 0) + 1;
  stats.first = Math.min(stats.first, record.timestamp);
  stats.last = Math.max(stats.last, record.timestamp);
}

function parseEnd(raw: string | undefined): number {
  if (raw === undefined) return Math.floor(Date.now() / 3_600_000) * 3600;
  const seconds = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw) / 1000;
  if (!Number.isFinite(seconds)) {
    throw new UsageError(`--end must be an ISO 8601 time or unix seconds (got ${JSON.stringify(raw)})`);
  }
  if (seconds > Date.now() / 1000 + 86_400) {
    throw new UsageError('--end may be at most 24 hours from now (the service refuses later timestamps)');
  }
  return Math.floor(seconds);
}

const percent = (part: number, whole: number) => `${whole === 0 ? '0.0' : ((100 * part) / whole).toFixed(1)}%`;
const iso = (seconds: number) => new Date(seconds * 1000).toISOString().replace(/:00\.000Z$/, 'Z');

async function main(): Promise<number> {
  const { values } = parseCommandLine({
    args: process.argv.slice(2),
    options: {
      users: { type: 'string' },
      days: { type: 'string' },
      seed: { type: 'string' },
      end: { type: 'string' },
      out: { type: 'string' },
      'batch-size': { type: 'string' },
      method: { type: 'string' },
      progress: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const users = integerOption('users', values.users, 100, 1, 1_000_000);
  const days = integerOption('days', values.days, 7, 1, 3650);
  const batchSize = integerOption('batch-size', values['batch-size'], 10_000, 100, 100_000);
  const seed = values.seed ?? String(Math.floor(Math.random() * 1e9));
  if (seed.length > 100) throw new UsageError('--seed may be at most 100 characters');
  const end = parseEnd(values.end);
  const method: BulkMethod | undefined = choiceOption('method', values.method, ['copy', 'insert'] as const);
  const progressMode = choiceOption('progress', values.progress, PROGRESS_MODES);
  if (end - days * 86_400 < 946_684_800) {
    throw new UsageError('--days reaches before 2000-01-01, which the service refuses');
  }

  const options = { users, days, seed, end };
  const random = createRandom(`${seed}:${users}:${days}`);
  const people = makeUsers(random, users);
  const stats: Stats = {
    records: 0,
    sessions: 0,
    lastSession: '',
    users: new Set(),
    sentiments: new Map(),
    microphone: 0,
    speaker: 0,
    talked: [],
    byUtcHour: Array.from({ length: 24 }, () => 0),
    first: Number.POSITIVE_INFINITY,
    last: 0,
  };
  const dayCount = demoDayCount(options);
  let daysDone = 0;
  const progress = new Progress({
    label: 'seed',
    mode: progressMode,
    sample: () => ({ rows: stats.records, fraction: daysDone / dayCount, detail: `day ${daysDone} of ${dayCount}` }),
  });
  let started = performance.now();
  let outcome = '';

  if (values.out) {
    const file = values.out;
    const csv = path.extname(file).toLowerCase() === '.csv';
    const out = fs.createWriteStream(file);
    progress.start();
    try {
      if (csv) await write(out, `${CSV_HEADER.join(',')}\n`);
      for (; daysDone < dayCount; daysDone++) {
        for (const record of demoDay(options, people, random, daysDone)) {
          observe(stats, record);
          await write(out, csv ? csvLine(record) : ndjsonLine(record));
        }
      }
      await close(out);
    } finally {
      progress.stop();
    }
    outcome = `written to ${file} (${csv ? 'CSV' : 'NDJSON'}); load it with: npm run import -- ${file}`;
  } else {
    const config = loadConfig();
    const db = await connectForTool(config, 'npm run seed');
    const writer = await openBulkWriter(method);
    const problems: string[] = [];
    const loader = new BatchLoader(writer, batchSize, (line, reasons) => {
      if (problems.length < 5) problems.push(`record ${line}: ${reasons.map((r) => r.message).join('; ')}`);
    });
    process.stderr.write(`Seeding ${describeDatabase(db)} (${writer.method} method)\n`);
    // Timed from here: opening (and, the first time, creating) the embedded database is not loading.
    started = performance.now();
    progress.start();
    try {
      for (; daysDone < dayCount; daysDone++) {
        for (const record of demoDay(options, people, random, daysDone)) {
          observe(stats, record);
          loader.add(stats.records, record, record);
        }
        if (loader.hasFullBatches) await loader.drain();
      }
      await loader.finish();
    } finally {
      progress.stop();
      await writer.close().catch(() => {});
      await disconnectDatabase();
    }
    const t = loader.totals;
    const again = t.duplicates === t.read && t.read > 0 ? ' (this seed was loaded before)' : '';
    outcome =
      `loaded into ${describeDatabase(db)}: ${formatCount(t.accepted)} accepted, ` +
      `${formatCount(t.duplicates)} duplicates${again}, ${formatCount(t.rejected)} rejected` +
      (problems.length > 0 ? `\n    ${problems.join('\n    ')}` : '');
  }

  const seconds = (performance.now() - started) / 1000;
  const talked = stats.talked.sort((a, b) => a - b);
  const median = talked[Math.floor(talked.length / 2)] ?? 0;
  const p95 = talked[Math.floor(talked.length * 0.95)] ?? 0;
  const sentiments = [...stats.sentiments.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([name, n]) => `${name} ${percent(n, stats.records)}`)
    .join(', ');
  const hours = stats.byUtcHour.map((n, hour) => ({ n, hour }));
  const busiest = [...hours].sort((a, b) => b.n - a.n)[0];
  const quietest = [...hours].sort((a, b) => a.n - b.n)[0];
  const hour = (h: { n: number; hour: number } | undefined) => `${h?.hour}:00 (${formatCount(h?.n ?? 0)})`;
  const perSession = (stats.records / Math.max(1, stats.sessions)).toFixed(1);
  const span = stats.records > 0 ? `, ${iso(stats.first)} .. ${iso(stats.last)}` : '';
  process.stdout.write(
    `Seed ${JSON.stringify(seed)}: ${formatCount(users)} users over ${days} day(s), ` +
      `${iso(end - days * 86_400)} .. ${iso(end)}\n` +
      `  users with data   ${formatCount(stats.users.size)}\n` +
      `  sessions          ${formatCount(stats.sessions)} (${perSession} records each on average)\n` +
      `  records           ${formatCount(stats.records)}${span}\n` +
      `  talked_time       median ${median} s, 95th percentile ${p95} s\n` +
      `  voice_sentiment   ${sentiments}\n` +
      `  microphone_used   ${percent(stats.microphone, stats.records)}; ` +
      `speaker_used ${percent(stats.speaker, stats.records)}\n` +
      `  by UTC hour       busiest ${hour(busiest)}, quietest ${hour(quietest)}\n` +
      `  ${outcome}\n` +
      `  ${seconds.toFixed(1)} s, ${formatCount(stats.records / Math.max(seconds, 0.001))} records/s\n`,
  );
  return 0;
}

runTool(USAGE, main);
