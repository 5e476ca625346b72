/**
 * `node --import tsx scripts/bench-import.ts [--rows N] [--rounds R]`: how fast `npm run import` moves a file
 * into PostgreSQL compared with raw `COPY FROM STDIN` of the same rows (record keys included) into a table of the same
 * shape with the same indexes. Uses a database of its own on BENCH_DATABASE_URL (default the local server) and drops it.
 *
 * Rounds interleave the methods; each starts from an empty table. The importer is timed from its own summary (reading,
 * parsing, validating, hashing and storing; not Node's start-up) and by wall clock.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { recordKey } from '../src/services/ingest.js';
import type { MetricRecordInput } from '../src/services/validation.js';

const { values } = parseArgs({ options: { rows: { type: 'string' }, rounds: { type: 'string' }, format: { type: 'string' }, method: { type: 'string' }, 'batch-size': { type: 'string' } } });
const rounds = Number(values.rounds ?? 3);
const users = 1000;
const days = Math.max(1, Math.round((Number(values.rows ?? 200_000) / 3350) ));
const format = values.format === 'csv' ? 'csv' : 'ndjson';
const adminUrl = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const name = `bench_import_${crypto.randomBytes(4).toString('hex')}`;
const dbUrl = new URL(adminUrl);
dbUrl.pathname = `/${name}`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-import-'));
const file = path.join(dir, `records.${format}`);
const tsx = ['--import', 'tsx'];
const importOptions = ['--progress', 'none', ...(values.method ? ['--method', values.method] : []), ...(values['batch-size'] ? ['--batch-size', values['batch-size']] : [])];

const out = (text: string) => process.stdout.write(`${text}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const client = new pg.Client({ connectionString: dbUrl.toString() });
try {
  execFileSync(process.execPath, [...tsx, 'src/cli/seed.ts', '--users', String(users), '--days', String(days), '--seed', 'bench', '--end', '2026-01-01T00:00:00Z', '--out', file, '--progress', 'none'], { stdio: 'ignore' });
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');
  const records: MetricRecordInput[] =
    format === 'csv'
      ? []
      : lines.map((l) => JSON.parse(l) as MetricRecordInput);
  if (format === 'csv') {
    // The reference needs the rows, not the CSV: read them back from an NDJSON twin of the same seed.
    const twin = path.join(dir, 'twin.ndjson');
    execFileSync(process.execPath, [...tsx, 'src/cli/seed.ts', '--users', String(users), '--days', String(days), '--seed', 'bench', '--end', '2026-01-01T00:00:00Z', '--out', twin, '--progress', 'none'], { stdio: 'ignore' });
    for (const l of fs.readFileSync(twin, 'utf8').split('\n')) if (l !== '') records.push(JSON.parse(l) as MetricRecordInput);
  }
  const rows = records.length;
  out(`${rows.toLocaleString('en-US')} rows (${(fs.statSync(file).size / 1e6).toFixed(1)} MB of ${format.toUpperCase()}), ${rounds} rounds, PostgreSQL ${dbUrl.host}, ${os.cpus().length} cores`);

  // The importer migrates the database on its first run; the reference table copies user_metrics' shape and indexes.
  const env = { ...process.env, DATABASE_URL: dbUrl.toString(), LOG_LEVEL: 'warn' };
  execFileSync(process.execPath, [...tsx, 'src/cli/migrate.ts', 'deploy'], { env, stdio: 'ignore' });
  await client.connect();
  await client.query('CREATE TABLE copy_reference (LIKE user_metrics INCLUDING ALL)');
  const esc = (v: string | null | undefined) => (v == null ? '\\N' : v.replace(/[\\\t\n\r]/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' })[c] as string));
  const copyText = records
    .map(
      (r) =>
        `\\\\x${recordKey(r).toString('hex')}\t${esc(r.eventId)}\t${esc(r.userId)}\t${esc(r.sessionId)}\t${r.timestamp}\t${r.talkedTime}\t${r.microphoneUsed ? 't' : 'f'}\t${r.speakerUsed ? 't' : 'f'}\t${esc(r.voiceSentiment)}\n`,
    )
    .join('');
  const chunks: string[] = [];
  for (let i = 0; i < copyText.length; i += 1 << 20) chunks.push(copyText.slice(i, i + (1 << 20)));

  const results: Record<string, number[]> = { copy: [], importInternal: [], importWall: [], rerunInternal: [] };
  for (let round = 1; round <= rounds; round++) {
    await client.query('TRUNCATE copy_reference');
    await client.query('TRUNCATE user_metrics');
    await client.query('CHECKPOINT');
    let started = performance.now();
    await pipeline(
      Readable.from(chunks),
      client.query(
        copyFrom(
          'COPY copy_reference (record_key, event_id, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used, voice_sentiment) FROM STDIN',
        ),
      ),
    );
    const copySeconds = (performance.now() - started) / 1000;
    results.copy?.push(rows / copySeconds);
    await client.query('CHECKPOINT');

    started = performance.now();
    const run = spawnSync(process.execPath, [...tsx, 'src/cli/import.ts', file, ...importOptions], { env, encoding: 'utf8' });
    const wall = (performance.now() - started) / 1000;
    if (run.status !== 0) throw new Error(`import failed: ${run.stderr}`);
    const internal = Number(/([\d.]+) s, /.exec(run.stdout)?.[1]);
    const [{ n } = { n: 0 }] = (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics')).rows;
    if (n !== rows) throw new Error(`import stored ${n} rows, expected ${rows}`);
    results.importInternal?.push(rows / internal);
    results.importWall?.push(rows / wall);

    const rerun = spawnSync(process.execPath, [...tsx, 'src/cli/import.ts', file, ...importOptions], { env, encoding: 'utf8' });
    results.rerunInternal?.push(rows / Number(/([\d.]+) s, /.exec(rerun.stdout)?.[1]));
    out(
      `round ${round}: COPY ${Math.round(rows / copySeconds).toLocaleString('en-US')} rows/s; import ${Math.round(rows / internal).toLocaleString('en-US')} rows/s` +
        ` (wall clock with start-up ${Math.round(rows / wall).toLocaleString('en-US')}); re-run (all duplicates) ${Math.round(results.rerunInternal?.at(-1) ?? 0).toLocaleString('en-US')} rows/s`,
    );
  }
  const copy = median(results.copy ?? []);
  out('\n| method | rows/s (median) | min-max | vs COPY |\n|---|---|---|---|');
  for (const [label, key] of [
    ['COPY FROM STDIN (reference)', 'copy'],
    ['npm run import (timed by the importer)', 'importInternal'],
    ['npm run import (wall clock, with Node start-up)', 'importWall'],
    ['npm run import again (all duplicates)', 'rerunInternal'],
  ] as const) {
    const xs = results[key] ?? [];
    out(`| ${label} | ${Math.round(median(xs)).toLocaleString('en-US')} | ${Math.round(Math.min(...xs)).toLocaleString('en-US')}-${Math.round(Math.max(...xs)).toLocaleString('en-US')} | ${(median(xs) / copy).toFixed(2)} |`);
  }
} finally {
  await client.end().catch(() => {});
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
  fs.rmSync(dir, { recursive: true, force: true });
}
