/**
 * Partitioned storage (README: "Storage"): partitions made ahead and on demand, the identity across partitions,
 * retention, pruning, and the upgrade of a single-table deployment.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { database, openDatabase } from '../src/db/client.js';
import { MIGRATIONS_DIR, migrate } from '../src/db/migrations.js';
import { exportMetrics } from '../src/services/metric-export.js';
import { configurePartitions, maintainPartitions, partitionSettings } from '../src/services/partitions.js';
import {
  createTestDatabase,
  INGEST,
  nowSeconds,
  record,
  startTestService,
  type TestService,
  usingPostgres,
} from './support/harness.js';
import { describeRun, runTsx } from './support/process.js';

const DAY = 86_400;
let service: TestService;

before(async () => {
  service = await startTestService({ PARTITION_MAINTENANCE_INTERVAL_MS: '0' });
});
after(async () => {
  await service?.stop();
});

interface IngestAnswer {
  accepted: number;
  duplicates: number;
  rejected: { index: number; code: string; message: string }[];
}

async function ingest(records: unknown[]): Promise<IngestAnswer> {
  return (await service.gql<{ ingestMetrics: IngestAnswer }>(INGEST, { records })).ingestMetrics;
}

async function partitions(): Promise<{ partition_name: string; from_ts: number; to_ts: number }[]> {
  return service.sql('SELECT partition_name, from_ts, to_ts FROM metric_partitions()');
}

const dayStart = (t: number) => t - (t % DAY);

test('a record whose time has no partition is stored: its partition is made on demand', async () => {
  const old = Date.UTC(2019, 2, 10, 12) / 1000;
  assert.equal((await partitions()).filter((p) => p.from_ts <= old && old < p.to_ts).length, 0, 'none at first');
  const late = record({ eventId: 'late-2019', timestamp: old, sessionId: 'on-demand' });
  // With a record of a day that has its partition already, in one batch.
  assert.deepEqual(await ingest([late, record({ sessionId: 'on-demand' })]), {
    accepted: 2,
    duplicates: 0,
    rejected: [],
  });
  const made = (await partitions()).filter((p) => p.from_ts <= old && old < p.to_ts);
  assert.deepEqual(made, [
    { partition_name: 'user_metrics_p20190310', from_ts: dayStart(old), to_ts: dayStart(old) + DAY },
  ]);
  const [row] = await service.sql('SELECT tableoid::regclass::text AS part FROM user_metrics WHERE event_id = $1', [
    'late-2019',
  ]);
  assert.equal(row?.part, 'user_metrics_p20190310');
  assert.deepEqual(await ingest([late]), { accepted: 0, duplicates: 1, rejected: [] }, 'a retry is a duplicate');
});

test('partitions are made ahead: from a day before now to two days after', async () => {
  const now = nowSeconds();
  await maintainPartitions(now);
  const list = await partitions();
  for (let t = dayStart(now) - DAY; t <= now + 2 * DAY; t += DAY) {
    assert.ok(
      list.some((p) => p.from_ts <= t && t < p.to_ts),
      `a partition for ${new Date(t * 1000).toISOString()}`,
    );
  }
  const again = await maintainPartitions(now);
  assert.deepEqual(again.created, [], 'a second run makes nothing');
});

test('a retried batch spread over many partitions is all duplicates; the identity is eventId and timestamp', async () => {
  const now = nowSeconds();
  const batch = Array.from({ length: 40 }, (_, i) =>
    record({ eventId: `spread-${i}`, sessionId: 'spread', timestamp: now - (i % 8) * DAY - i * 60, talkedTime: i }),
  );
  assert.deepEqual(await ingest(batch), { accepted: 40, duplicates: 0, rejected: [] });
  const [spread] = await service.sql<{ parts: number }>(
    `SELECT count(DISTINCT tableoid)::int AS parts FROM user_metrics WHERE session_id = 'spread'`,
  );
  assert.ok((spread?.parts ?? 0) >= 8, `${spread?.parts} partitions hold the batch`);
  assert.deepEqual(await ingest([...batch].reverse()), { accepted: 0, duplicates: 40, rejected: [] });
  // The same eventId at its time with other content: the retry of that record, not stored again.
  const first = batch[0] as { timestamp: number };
  assert.deepEqual(await ingest([{ ...first, talkedTime: 999 }]), { accepted: 0, duplicates: 1, rejected: [] });
  // The same eventId at another time is another record (README: "Record identity"), whichever partition it is in.
  assert.deepEqual(await ingest([{ ...first, timestamp: first.timestamp - 3 * DAY }]), {
    accepted: 1,
    duplicates: 0,
    rejected: [],
  });
  const rows = await service.sql(`SELECT count(*)::int AS n FROM user_metrics WHERE event_id = 'spread-0'`);
  assert.equal(rows[0]?.n, 2);
});

test('RETENTION_DAYS drops the partitions past the horizon; rows inside it and the rollups stay', async () => {
  const now = nowSeconds();
  const old = Array.from({ length: 30 }, (_, i) =>
    record({ sessionId: 'retention-old', timestamp: now - 12 * DAY + i * 3600, eventId: `old-${i}` }),
  );
  const recent = Array.from({ length: 10 }, (_, i) =>
    record({ sessionId: 'retention-recent', timestamp: now - 2 * DAY + i * 60, eventId: `recent-${i}` }),
  );
  assert.equal((await ingest([...old, ...recent])).accepted, 40);
  await service.sql('SELECT metric_rollups_fold(true)');
  const rollupsBefore = await service.sql('SELECT sum(count)::int AS n FROM metric_rollups');
  const saved = partitionSettings();
  configurePartitions({ ...saved, retentionDays: 7 });
  try {
    if (usingPostgres) {
      // Another instance applying retention (it holds the lock): this one makes partitions ahead, drops nothing.
      const other = new pg.Client({ connectionString: service.config.databaseUrl });
      await other.connect();
      try {
        await other.query('SELECT pg_advisory_lock(7240315003)');
        const skipped = await maintainPartitions(now);
        assert.deepEqual([skipped.retentionRan, skipped.dropped], [false, []]);
      } finally {
        await other.end();
      }
    }
    const result = await maintainPartitions(now);
    assert.equal(result.retentionRan, true);
    const horizon = now - 7 * DAY;
    assert.ok(result.dropped.length >= 2, `dropped ${result.dropped.join(', ')}`);
    const left = await partitions();
    assert.ok(
      left.every((p) => p.to_ts > horizon),
      `no partition ends before the horizon: ${JSON.stringify(left.slice(0, 3))}`,
    );
    const [counts] = await service.sql<{ old: number; recent: number }>(
      `SELECT count(*) FILTER (WHERE session_id = 'retention-old')::int AS old,
              count(*) FILTER (WHERE session_id = 'retention-recent')::int AS recent FROM user_metrics`,
    );
    assert.deepEqual(counts, { old: 0, recent: 10 });
    assert.deepEqual(await service.sql('SELECT sum(count)::int AS n FROM metric_rollups'), rollupsBefore);
    // Sent again after the drop, an old record is refused, saying why (it would be dropped at the next run); a record
    // inside the horizon whose partition is gone gets it back.
    const refused = await ingest([old[0], record({ sessionId: 'retention-recent', timestamp: now - 6 * DAY })]);
    assert.equal(refused.accepted, 1);
    assert.deepEqual(
      refused.rejected.map((r) => [r.index, r.code]),
      [[0, 'TIMESTAMP_PAST_RETENTION']],
    );
    assert.match(refused.rejected[0]?.message ?? '', /older than the 7 days of RETENTION_DAYS/);

    // The rollups outlive the rows, and the service says where the rows begin.
    const { rawRowsFrom } = await service.gql<{ rawRowsFrom: string }>('{ rawRowsFrom }');
    const rawFrom = Date.parse(rawRowsFrom) / 1000;
    assert.ok(rawFrom <= horizon && old.every((r) => (r.timestamp as number) < rawFrom), `rawRowsFrom ${rawRowsFrom}`);
    const oldRange = { timestamp: { gte: dayStart(now - 13 * DAY), lt: dayStart(now - 9 * DAY) } };
    const fromRollups = await service.gql<{
      metricStats: { count: number; distinctUsersApprox: number; talkedTime: { sum: number; p95Approx: number } }[];
    }>(
      `query($where: MetricFilter) {
         metricStats(where: $where) { count distinctUsersApprox talkedTime { sum p95Approx } }
       }`,
      { where: oldRange },
    );
    const [group] = fromRollups.metricStats;
    assert.equal(fromRollups.metricStats.length, 1);
    assert.deepEqual([group?.count, group?.distinctUsersApprox, group?.talkedTime.sum], [30, 1, 30 * 60]);
    assert.ok(Math.abs((group?.talkedTime.p95Approx ?? 0) - 60) <= 0.6, `p95Approx ${group?.talkedTime.p95Approx}`);
    // A figure that needs the rows is refused, saying from when rows exist; so is userSummary over all time.
    const exact = await service.request(
      'query($where: MetricFilter) { metricStats(where: $where) { count distinctUsers } }',
      { where: oldRange },
    );
    assert.equal(exact.errors?.[0]?.extensions?.code, 'RAW_ROWS_DROPPED', JSON.stringify(exact.errors));
    assert.match(exact.errors?.[0]?.message ?? '', new RegExp(`Set where.timestamp.gte to ${rawFrom} or later`));
    const summary = `query($where: MetricFilter) { userSummary(userId: "user-1", where: $where) { count } }`;
    const unbounded = await service.request(summary, {});
    assert.equal(unbounded.errors?.[0]?.extensions?.code, 'RAW_ROWS_DROPPED', JSON.stringify(unbounded.errors));
    const kept = await service.gql<{ userSummary: { count: number } }>(summary, {
      where: { timestamp: { gte: rawFrom }, sessionId: { equals: 'retention-recent' } },
    });
    assert.equal(kept.userSummary.count, 11);
  } finally {
    configurePartitions(saved);
  }
});

test('dropping partitions while 4 clients ingest holds no request back', {
  skip: usingPostgres ? false : 'PostgreSQL only: the embedded database runs one statement at a time',
}, async () => {
  const now = nowSeconds();
  // Old partitions with rows to drop, and a reader that holds them: DETACH ... CONCURRENTLY waits for it, so the drop
  // is in progress for the whole window below. A drop that took a lock ingestion needs would hold every batch back
  // until the reader ends.
  const victims = Array.from({ length: 60 }, (_, i) =>
    record({ sessionId: 'drop-me', timestamp: now - 20 * DAY + i * 3600, eventId: `victim-${i}` }),
  );
  assert.equal((await ingest(victims)).accepted, 60);
  const reader = new pg.Client({ connectionString: service.config.databaseUrl });
  await reader.connect();
  let sequence = 0;
  const batchOf = (size: number) =>
    Array.from({ length: size }, () => record({ sessionId: 'during-drop', eventId: `d-${sequence++}` }));
  /** 4 clients, `rounds` batches each; the slowest request, ms. */
  const load = async (rounds: number) => {
    const times: number[] = [];
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        for (let r = 0; r < rounds; r++) {
          const started = performance.now();
          assert.equal((await ingest(batchOf(100))).accepted, 100);
          times.push(performance.now() - started);
        }
      }),
    );
    return Math.max(...times);
  };
  const saved = partitionSettings();
  try {
    await load(5);
    const without = await load(10);
    await reader.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
    await reader.query(`SELECT count(*) FROM user_metrics WHERE session_id = 'drop-me'`);
    configurePartitions({ ...saved, retentionDays: 7 });
    const dropping = maintainPartitions(now);
    // The detach has begun and waits for the reader.
    for (let waited = 0; ; waited += 20) {
      const [detach] = await service.sql<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_stat_activity WHERE query LIKE 'ALTER TABLE user_metrics DETACH%'
           AND state = 'active'`,
      );
      if ((detach?.n ?? 0) > 0) break;
      if (waited > 10_000) throw new Error('The detach never began');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const during = await load(10);
    const stillDropping = await Promise.race([dropping.then(() => false), Promise.resolve(true)]);
    assert.ok(stillDropping, 'the drop was in progress while the clients ingested');
    await reader.query('COMMIT');
    const result = await dropping;
    assert.ok(result.dropped.length > 0);
    const after = await load(10);
    console.log(
      `slowest of 40 requests: ${without.toFixed(1)} ms before, ${during.toFixed(1)} ms while dropping, ` +
        `${after.toFixed(1)} ms after`,
    );
    assert.ok(
      during <= Math.max(without, after) + 100,
      `while dropping ${during.toFixed(1)} ms, without ${Math.max(without, after).toFixed(1)} ms`,
    );
    const [gone] = await service.sql(`SELECT count(*)::int AS n FROM user_metrics WHERE session_id = 'drop-me'`);
    assert.equal(gone?.n, 0);
  } finally {
    configurePartitions(saved);
    await reader.end();
  }
});

test('the page, stats and export read only the partitions of their time range', async () => {
  const now = nowSeconds();
  const spread = Array.from({ length: 60 }, (_, i) =>
    record({ sessionId: 'pruning', userId: `prune-${i % 3}`, timestamp: now - (i % 6) * DAY - 600, talkedTime: i }),
  );
  assert.equal((await ingest(spread)).accepted, 60);
  const from = dayStart(now - 3 * DAY) + 1800;
  const to = dayStart(now - 2 * DAY) + 1800;
  const inRange = (await partitions()).filter((p) => p.to_ts > from && p.from_ts < to).map((p) => p.partition_name);
  assert.equal(inRange.length, 2, 'the range crosses a day boundary');

  // The service's own statements, as it sends them: each is explained with its parameters.
  const db = database();
  const original = db.queryDirect.bind(db);
  const seen: { text: string; params: unknown[] }[] = [];
  Object.assign(db, {
    queryDirect: (text: string, params: unknown[], ...rest: unknown[]) => {
      if (/\buser_metrics\b/.test(text)) seen.push({ text, params });
      return (original as (...args: unknown[]) => Promise<unknown[]>)(text, params, ...rest);
    },
  });
  const where = { timestamp: { gte: from, lt: to } };
  const scanned = new Map<string, Set<string>>();
  try {
    for (const [label, run] of [
      [
        'page',
        () => service.gql('query($where: MetricFilter) { metrics(where: $where, first: 5) { totalCount } }', { where }),
      ],
      [
        'stats',
        () =>
          service.gql(
            `query($where: MetricFilter) {
               metricStats(where: $where, groupBy: [USER_ID]) { count distinctSessions talkedTime { p95 } }
             }`,
            { where },
          ),
      ],
      [
        // Rollups answer the whole slots; the raw rows of the cut slots at the edges are read.
        'stats over rollups',
        () =>
          service.gql('query($where: MetricFilter) { metricStats(where: $where) { count } }', {
            where: { timestamp: { gte: from + 60, lt: to - 60 } },
          }),
      ],
      [
        'export',
        async () => {
          for await (const _ of exportMetrics(where, 10));
        },
      ],
    ] as const) {
      seen.length = 0;
      await run();
      assert.ok(seen.length > 0, `${label}: read user_metrics`);
      const names = new Set<string>();
      for (const statement of seen) {
        const [plan] = await service.sql<{ 'QUERY PLAN': unknown }>(
          `EXPLAIN (FORMAT JSON) ${statement.text}`,
          statement.params,
        );
        const walk = (node: unknown): void => {
          if (Array.isArray(node)) node.forEach(walk);
          else if (node && typeof node === 'object') {
            const relation = (node as Record<string, unknown>)['Relation Name'];
            if (typeof relation === 'string' && relation.startsWith('user_metrics')) names.add(relation);
            for (const value of Object.values(node)) walk(value);
          }
        };
        walk(plan?.['QUERY PLAN']);
      }
      scanned.set(label, names);
    }
  } finally {
    Object.assign(db, { queryDirect: original });
  }
  for (const [label, names] of scanned) {
    for (const name of names)
      assert.ok(inRange.includes(name), `${label} reads ${name}, outside ${inRange.join(', ')}`);
    assert.ok(names.size > 0, `${label} reads some partition`);
  }
});

test('a single-table deployment of 100,000 rows upgrades with db:migrate, every row kept', {
  timeout: 300_000,
}, async () => {
  const target = await createTestDatabase();
  const before = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-upgrade-'));
  try {
    // The migrations before partitioning, as such a deployment has them.
    for (const name of fs.readdirSync(MIGRATIONS_DIR)) {
      if (name.startsWith('20261204') || name > '20261204') continue;
      fs.cpSync(path.join(MIGRATIONS_DIR, name), path.join(before, name), { recursive: true });
    }
    const db = await openDatabase({ url: target.url, dataDir: target.dataDir, poolMax: 2 });
    const fingerprint = `SELECT count(*)::int AS n, max(id)::int8 AS max_id,
        md5(string_agg(concat_ws('|', id, encode(record_key, 'hex'), event_id, user_id, session_id, "timestamp",
          talked_time, microphone_used, speaker_used, voice_sentiment, created_at), ',' ORDER BY id)) AS digest
      FROM user_metrics`;
    let was: Record<string, unknown> | undefined;
    try {
      await migrate(db, before);
      await db.withSession(async (session) => {
        const [kind] = await session.query<{ relkind: string }>(
          `SELECT relkind FROM pg_class WHERE relname = 'user_metrics'`,
        );
        assert.equal(kind?.relkind, 'r', 'a plain table before the upgrade');
        await session.query(
          `INSERT INTO user_metrics (record_key, event_id, user_id, session_id, "timestamp", talked_time,
             microphone_used, speaker_used, voice_sentiment)
           SELECT sha256(('upgrade-' || g)::bytea), CASE WHEN g % 2 = 0 THEN 'up-' || g END, 'user-' || (g % 500),
                  'session-' || (g % 5000), 1760000000 + g * 50, g % 600, g % 3 = 0, g % 5 = 0,
                  CASE WHEN g % 4 = 0 THEN NULL ELSE 'positive' END
           FROM generate_series(1, 100000) AS g`,
        );
        [was] = await session.query(fingerprint);
      });
    } finally {
      await db.close();
    }
    const started = performance.now();
    const run = await runTsx('src/cli/migrate.ts', ['deploy'], {
      NODE_ENV: 'test',
      ...(target.url ? { DATABASE_URL: target.url } : { DATA_DIR: target.dataDir }),
    });
    assert.equal(run.code, 0, describeRun(run));
    console.log(
      `upgrade of 100,000 rows: ${((performance.now() - started) / 1000).toFixed(1)} s (with the CLI's start)`,
    );
    const upgraded = await openDatabase({ url: target.url, dataDir: target.dataDir, poolMax: 2 });
    try {
      await upgraded.withSession(async (session) => {
        const [now] = await session.query(fingerprint);
        assert.deepEqual(now, was, 'every row kept, ids and all');
        const [kind] = await session.query<{ relkind: string }>(
          `SELECT relkind FROM pg_class WHERE relname = 'user_metrics'`,
        );
        assert.equal(kind?.relkind, 'p', 'partitioned after it');
        // The id sequence goes on; an old row's identity still refuses its retry.
        const [next] = await session.query<{ id: number }>(
          `INSERT INTO user_metrics (record_key, user_id, session_id, "timestamp", talked_time, microphone_used,
             speaker_used) VALUES ('\\x00', 'u', 's', 1760000050, 1, true, true) RETURNING id`,
        );
        assert.equal(next?.id, Number(was?.max_id) + 1);
        const retried = await session.query(
          `INSERT INTO user_metrics (record_key, user_id, session_id, "timestamp", talked_time, microphone_used,
             speaker_used) VALUES (sha256('upgrade-1'::bytea), 'u', 's', 1760000050, 1, true, true)
           ON CONFLICT (record_key, "timestamp") DO NOTHING RETURNING id`,
        );
        assert.equal(retried.length, 0);
      });
    } finally {
      await upgraded.close();
    }
  } finally {
    fs.rmSync(before, { recursive: true, force: true });
    await target.drop();
  }
});
