/**
 * `node --import tsx scripts/bench-import.ts [--rows N] [--rounds R] [--format csv|ndjson]`: how fast `npm run import`
 * moves a file into PostgreSQL compared with raw `COPY FROM STDIN` of the same rows (record keys included) into a table
 * of the same shape with the same indexes. Uses a database of its own on BENCH_DATABASE_URL (default the local server)
 * and drops it. `--method` and `--batch-size` go to the importer.
 *
 * Rounds interleave the methods; each starts from an empty table. The importer is timed from its own summary (reading,
 * parsing, validating, hashing and storing; not Node's start-up) and by wall clock. Each round also writes the rows
 * out in the file's format, with `npm run export` (from the table) and `npm run seed -- --out` (generated), each timed
 * from its own summary: the file writers' side of the bulk tools.
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

const { values } = parseArgs({
  options: {
    rows: { type: 'string' },
    rounds: { type: 'string' },
    format: { type: 'string' },
    method: { type: 'string' },
    'batch-size': { type: 'string' },
  },
});
const rounds = Number(values.rounds ?? 3);
const users = 1000;
const days = Math.max(1, Math.round(Number(values.rows ?? 200_000) / 3350));
const format = values.format === 'csv' ? 'csv' : 'ndjson';
const adminUrl = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const name = `bench_import_${crypto.randomBytes(4).toString('hex')}`;
const dbUrl = new URL(adminUrl);
dbUrl.pathname = `/${name}`;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bench-import-'));
const file = path.join(dir, `records.${format}`);
const tsx = ['--import', 'tsx'];
const seedArgs = ['--users', String(users), '--days', String(days), '--seed', 'bench', '--end', '2026-01-01T00:00:00Z'];
const importOptions = [
  '--progress',
  'none',
  ...(values.method ? ['--method', values.method] : []),
  ...(values['batch-size'] ? ['--batch-size', values['batch-size']] : []),
];

const out = (text: string) => process.stdout.write(`${text}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
const thousands = (n: number) => Math.round(n).toLocaleString('en-US');

/** Runs a tool of src/cli and returns what it printed, or throws with its stderr. */
function tool(script: string, args: string[], env?: NodeJS.ProcessEnv): { stdout: string; stderr: string } {
  const run = spawnSync(process.execPath, [...tsx, `src/cli/${script}.ts`, ...args], { env, encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`${script} ${args.join(' ')} exited ${run.status}: ${run.stderr}`);
  return run;
}

/** The records/s figure of a tool's summary ("3.1 s, 66,123 records/s"), checked against the rows it should count. */
function rowsPerSecond(summary: string, rows: number): number {
  const match = /([\d,]+) records\/s/.exec(summary);
  if (!match?.[1]) throw new Error(`no records/s in the summary:\n${summary}`);
  if (!summary.includes(thousands(rows))) throw new Error(`the summary does not count ${rows} rows:\n${summary}`);
  return Number(match[1].replaceAll(',', ''));
}

const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const client = new pg.Client({ connectionString: dbUrl.toString() });
try {
  tool('seed', [...seedArgs, '--out', file, '--progress', 'none']);
  // The reference needs the rows, not the file: a CSV file's are read back from an NDJSON twin of the same seed.
  const twin = format === 'csv' ? path.join(dir, 'twin.ndjson') : file;
  if (twin !== file) tool('seed', [...seedArgs, '--out', twin, '--progress', 'none']);
  const records: MetricRecordInput[] = fs
    .readFileSync(twin, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as MetricRecordInput);
  const rows = records.length;
  const megabytes = (fs.statSync(file).size / 1e6).toFixed(1);
  out(
    `${thousands(rows)} rows (${megabytes} MB of ${format.toUpperCase()}), ${rounds} rounds, ` +
      `PostgreSQL ${dbUrl.host}, ${os.cpus().length} cores`,
  );

  // The importer migrates the database on its first run; the reference table copies user_metrics' shape and indexes.
  const env = { ...process.env, DATABASE_URL: dbUrl.toString(), LOG_LEVEL: 'warn' };
  execFileSync(process.execPath, [...tsx, 'src/cli/migrate.ts', 'deploy'], { env, stdio: 'ignore' });
  await client.connect();
  await client.query('CREATE TABLE copy_reference (LIKE user_metrics INCLUDING ALL)');
  const escapes: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };
  const esc = (v: string | null | undefined) => (v == null ? '\\N' : v.replace(/[\\\t\n\r]/g, (c) => escapes[c] ?? c));
  const copyText = records
    .map(
      (r) =>
        `\\\\x${recordKey(r).toString('hex')}\t${esc(r.eventId)}\t${esc(r.userId)}\t${esc(r.sessionId)}\t` +
        `${r.timestamp}\t${r.talkedTime}\t${r.microphoneUsed ? 't' : 'f'}\t${r.speakerUsed ? 't' : 'f'}\t` +
        `${esc(r.voiceSentiment)}\n`,
    )
    .join('');
  const chunks: string[] = [];
  for (let i = 0; i < copyText.length; i += 1 << 20) chunks.push(copyText.slice(i, i + (1 << 20)));
  const copyColumns = [
    'record_key',
    'event_id',
    'user_id',
    'session_id',
    '"timestamp"',
    'talked_time',
    'microphone_used',
    'speaker_used',
    'voice_sentiment',
  ].join(', ');

  const results = {
    copy: [] as number[],
    importInternal: [] as number[],
    importWall: [] as number[],
    rerunInternal: [] as number[],
    export: [] as number[],
    seed: [] as number[],
  };
  for (let round = 1; round <= rounds; round++) {
    await client.query('TRUNCATE copy_reference');
    await client.query('TRUNCATE user_metrics');
    await client.query('CHECKPOINT');
    let started = performance.now();
    await pipeline(Readable.from(chunks), client.query(copyFrom(`COPY copy_reference (${copyColumns}) FROM STDIN`)));
    results.copy.push(rows / ((performance.now() - started) / 1000));
    await client.query('CHECKPOINT');

    started = performance.now();
    const run = tool('import', [file, ...importOptions], env);
    results.importWall.push(rows / ((performance.now() - started) / 1000));
    results.importInternal.push(rowsPerSecond(run.stdout, rows));
    const [{ n } = { n: 0 }] = (await client.query<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics')).rows;
    if (n !== rows) throw new Error(`import stored ${n} rows, expected ${rows}`);
    results.rerunInternal.push(rowsPerSecond(tool('import', [file, ...importOptions], env).stdout, rows));

    const exported = tool('export', ['--out', path.join(dir, `export.${format}`), '--progress', 'none'], env);
    results.export.push(rowsPerSecond(exported.stderr, rows));
    const seeded = tool('seed', [...seedArgs, '--out', path.join(dir, `seed.${format}`), '--progress', 'none']);
    results.seed.push(rowsPerSecond(seeded.stdout, rows));

    const last = (xs: number[]) => thousands(xs.at(-1) ?? 0);
    out(
      `round ${round}: COPY ${last(results.copy)} rows/s; import ${last(results.importInternal)} rows/s` +
        ` (wall clock with start-up ${last(results.importWall)}); re-run (all duplicates)` +
        ` ${last(results.rerunInternal)} rows/s; export ${last(results.export)} rows/s;` +
        ` seed --out ${last(results.seed)} rows/s`,
    );
  }
  const copy = median(results.copy);
  out('\n| method | rows/s (median) | min-max | vs COPY |\n|---|---|---|---|');
  for (const [label, key] of [
    ['COPY FROM STDIN (reference)', 'copy'],
    ['npm run import (timed by the importer)', 'importInternal'],
    ['npm run import (wall clock, with Node start-up)', 'importWall'],
    ['npm run import again (all duplicates)', 'rerunInternal'],
    [`npm run export -- --out file.${format} (timed by the exporter)`, 'export'],
    [`npm run seed -- --out file.${format} (timed by the generator)`, 'seed'],
  ] as const) {
    const xs = results[key];
    const range = `${thousands(Math.min(...xs))}-${thousands(Math.max(...xs))}`;
    out(`| ${label} | ${thousands(median(xs))} | ${range} | ${(median(xs) / copy).toFixed(2)} |`);
  }
} finally {
  await client.end().catch(() => {});
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
  fs.rmSync(dir, { recursive: true, force: true });
}
