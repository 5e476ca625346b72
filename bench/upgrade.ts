/**
 * How long `npm run db:migrate` takes to turn a single-table deployment (the schema before
 * 20261204000000_partitioned_user_metrics) of N rows into the partitioned table, on the PostgreSQL server of
 * BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres). It makes and drops its own database.
 *
 *   npx tsx bench/upgrade.ts [--rows 10000000]
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { openDatabase } from '../src/db/client.js';
import { MIGRATIONS_DIR, migrate } from '../src/db/migrations.js';

const { values } = parseArgs({ options: { rows: { type: 'string', default: '10000000' } } });
const rows = Number(values.rows);
if (!Number.isSafeInteger(rows) || rows < 1) throw new Error(`--rows must be a positive integer, not ${values.rows}`);
const server = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const name = `metrics_bench_upgrade_${process.pid}`;
const url = new URL(server);
url.pathname = `/${name}`;

const admin = new pg.Client({ connectionString: server });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const before = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-upgrade-'));
try {
  for (const migration of fs.readdirSync(MIGRATIONS_DIR)) {
    if (migration >= '20261204') continue;
    fs.cpSync(path.join(MIGRATIONS_DIR, migration), path.join(before, migration), { recursive: true });
  }
  const db = await openDatabase({ url: url.href, poolMax: 2 });
  const loadStarted = performance.now();
  try {
    await migrate(db, before);
    // 30 days of records, a million per statement; the rollup trigger of that schema runs as it would have.
    for (let from = 1; from <= rows; from += 1_000_000) {
      const to = Math.min(rows, from + 999_999);
      await db.queryDirect(
        `INSERT INTO user_metrics (record_key, event_id, user_id, session_id, "timestamp", talked_time,
           microphone_used, speaker_used, voice_sentiment)
         SELECT sha256(('upgrade-' || g)::bytea), CASE WHEN g % 2 = 0 THEN 'up-' || g END, 'user-' || (g % 10000),
                'session-' || (g % 100000), 1760000000 + (g::int8 * 2592000 / $3::int8), g % 600, g % 3 = 0, g % 5 = 0,
                CASE WHEN g % 4 = 0 THEN NULL ELSE 'positive' END
         FROM generate_series($1::int8, $2::int8) AS g`,
        [from, to, rows],
      );
    }
    await db.queryDirect('VACUUM ANALYZE user_metrics', []);
  } finally {
    await db.close();
  }
  const [size] = (await admin.query(`SELECT pg_size_pretty(pg_database_size($1)) AS size`, [name])).rows as {
    size: string;
  }[];
  console.log(`loaded ${rows} rows in ${((performance.now() - loadStarted) / 1000).toFixed(0)} s (${size?.size})`);

  const started = performance.now();
  const run = spawnSync(process.execPath, ['scripts/cli.mjs', 'db:migrate'], {
    env: { ...process.env, DATABASE_URL: url.href },
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`db:migrate failed (${run.status}): ${run.stderr}${run.stdout}`);
  const seconds = (performance.now() - started) / 1000;
  const check = new pg.Client({ connectionString: url.href });
  await check.connect();
  try {
    const [counted] = (
      await check.query(
        `SELECT (SELECT count(*) FROM user_metrics)::int8 AS n, (SELECT count(*) FROM metric_partitions()) AS partitions`,
      )
    ).rows as { n: string; partitions: string }[];
    if (Number(counted?.n) !== rows) throw new Error(`${counted?.n} rows after the upgrade, ${rows} before`);
    console.log(`db:migrate upgraded ${rows} rows into ${counted?.partitions} partitions in ${seconds.toFixed(1)} s`);
  } finally {
    await check.end();
  }
} finally {
  fs.rmSync(before, { recursive: true, force: true });
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
