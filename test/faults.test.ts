/**
 * Faults: PostgreSQL going away and coming back, statements past their time limit, SIGTERM with batches in flight.
 *
 * The service runs as a child process (`node --import tsx src/main.ts`) against a PostgreSQL server of this file's own,
 * which the tests stop and lock as they need (whatever TEST_DATABASE_URL says: the shared server is never touched).
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { openDatabase } from '../src/db/client.js';
import {
  acknowledged,
  errorCodes,
  get,
  graphQLBody,
  INGEST_MUTATION,
  makeBatch,
  type Outcome,
  postJson,
} from './support/http-client.js';
import { ownPostgresUnavailable, PgServer } from './support/pg-server.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

const skip = ownPostgresUnavailable();
let server: PgServer | undefined;
const services: ServiceProcess[] = [];

before(async () => {
  if (!skip) server = await PgServer.start();
});

after(async () => {
  for (const service of services) await service.kill();
  await server?.destroy();
});

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh database on the test's server and the service on it. */
async function serviceOnNewDatabase(
  env: Record<string, string> = {},
): Promise<{ service: ServiceProcess; database: string }> {
  assert.ok(server);
  const database = `faults_${crypto.randomBytes(4).toString('hex')}`;
  await server.sql(`CREATE DATABASE ${database}`);
  const service = await startServiceProcess({
    DATABASE_URL: server.url(database),
    LOG_LEVEL: 'warn',
    AUTH: 'off',
    INGEST_RATE_REQUESTS: '0',
    INGEST_RATE_RECORDS: '0',
    ...env,
  });
  services.push(service);
  return { service, database };
}

const ingest = (
  service: ServiceProcess,
  records: unknown[],
  options: { agent?: http.Agent; timeoutMs?: number } = {},
) => postJson(`${service.url}/graphql`, { query: INGEST_MUTATION, variables: { records } }, options);

const describe = (outcome: Outcome) => JSON.stringify(outcome).slice(0, 800);

test('PostgreSQL down: requests fail fast with 503 UNAVAILABLE and Retry-After, /ready says so, and service resumes by itself', {
  skip,
  timeout: 120_000,
}, async () => {
  assert.ok(server);
  const db = server;
  const { service, database } = await serviceOnNewDatabase();
  const first = makeBatch('outage-before-', 20);
  assert.ok(acknowledged(await ingest(service, first), 20), 'a batch is stored while the database is up');

  await db.stopServer('immediate');
  try {
    const during = makeBatch('outage-during-', 20);
    const refusedIngest = await ingest(service, during, { timeoutMs: 15_000 });
    assert.equal(refusedIngest.kind, 'response', describe(refusedIngest));
    assert.ok(refusedIngest.kind === 'response');
    assert.equal(refusedIngest.status, 503, describe(refusedIngest));
    assert.deepEqual(errorCodes(refusedIngest), ['UNAVAILABLE'], describe(refusedIngest));
    assert.ok(
      Number(refusedIngest.headers['retry-after']) >= 1,
      `Retry-After: ${refusedIngest.headers['retry-after']}`,
    );
    assert.ok(refusedIngest.ms < 6000, `failed fast: ${refusedIngest.ms} ms`);
    assert.doesNotMatch(
      refusedIngest.body,
      /prisma|ECONNREFUSED|127\.0\.0\.1|at .*\.ts/i,
      'no internals in the answer',
    );

    const query = await postJson(
      `${service.url}/graphql`,
      { query: '{ metrics(first: 5) { totalCount edges { node { id } } } }' },
      { timeoutMs: 15_000 },
    );
    assert.ok(query.kind === 'response' && query.status === 503, describe(query));
    assert.deepEqual(errorCodes(query), ['UNAVAILABLE']);
    assert.ok(query.ms < 6000, `failed fast: ${query.ms} ms`);

    const ready = await get(`${service.url}/ready`, { timeoutMs: 15_000 });
    assert.ok(ready.kind === 'response' && ready.status === 503, `/ready during the outage: ${describe(ready)}`);
    assert.ok(ready.ms < 6000, `/ready answered in ${ready.ms} ms`);
    const health = await get(`${service.url}/health`);
    assert.ok(health.kind === 'response' && health.status === 200, `/health during the outage: ${describe(health)}`);
    assert.ok(service.alive(), 'the process stays up');

    // While it is down, a client keeps retrying the same batch, as the README tells it to.
    await db.startServer();
    let stored: ReturnType<typeof acknowledged>;
    const recoveryStarted = Date.now();
    for (let attempt = 0; attempt < 100 && !stored; attempt++) {
      const retry = await ingest(service, during, { timeoutMs: 15_000 });
      stored = acknowledged(retry, 20);
      if (!stored) {
        assert.ok(retry.kind !== 'response' || retry.status === 503, `only 503 while recovering: ${describe(retry)}`);
        await pause(200);
      }
    }
    assert.ok(stored, 'the service resumed by itself once PostgreSQL was back');
    assert.ok(Date.now() - recoveryStarted < 15_000, `recovered in ${Date.now() - recoveryStarted} ms`);
    assert.equal(stored?.accepted, 20, 'the batch refused during the outage had not been stored');

    const readyAgain = await get(`${service.url}/ready`);
    assert.ok(readyAgain.kind === 'response' && readyAgain.status === 200, describe(readyAgain));
    const rows = await db.sql<{ n: number }>(`SELECT count(*)::int AS n FROM user_metrics`, [], database);
    assert.equal(rows[0]?.n, 40, 'both batches stored once');
  } finally {
    if (!db.isRunning) await db.startServer();
  }
  assert.ok(service.alive());
});

test('the connections carry the configured time limits (statement, idle in transaction)', {
  skip,
  timeout: 60_000,
}, async () => {
  assert.ok(server);
  const db = await openDatabase({
    url: server.url(),
    poolMax: 1,
    statementTimeoutMs: 1234,
    transactionTimeoutMs: 4321,
    connectTimeoutMs: 2000,
  });
  try {
    const [row] = await db.withSession((session) =>
      session.query<{ statement: string; idle: string }>(
        "SELECT current_setting('statement_timeout') AS statement, current_setting('idle_in_transaction_session_timeout') AS idle",
      ),
    );
    assert.deepEqual(row, { statement: '1234ms', idle: '4321ms' });
  } finally {
    await db.close();
  }
});

test('a statement past DB_STATEMENT_TIMEOUT_MS is cancelled, the client gets QUERY_TIMEOUT, and the service stays healthy', {
  skip,
  timeout: 120_000,
}, async () => {
  assert.ok(server);
  const db = server;
  const { service, database } = await serviceOnNewDatabase({ DB_STATEMENT_TIMEOUT_MS: '300' });

  // A table big enough that a filter of many substring tests takes seconds (rows written straight by SQL, test-only):
  // 150,000 rows of 136-character session ids and 90 patterns take about 3 s here, ten times the limit. Plain SQL
  // gets no partition made on demand (the service's writes do): the days' partitions first.
  await db.sql(
    'SELECT metric_partitions_ensure(ARRAY[1700000000, 1700086400, 1700150000]::int8[], 86400)',
    [],
    database,
  );
  await db.sql(
    `INSERT INTO user_metrics (record_key, event_id, user_id, session_id, "timestamp", talked_time, microphone_used, speaker_used)
     SELECT sha256(('slow-' || i)::bytea), 'slow-' || i, 'user-' || (i % 1000), 'session-' || repeat(md5(i::text), 4), 1700000000 + i, i % 600, true, false
     FROM generate_series(1, 150000) AS i`,
    [],
    database,
  );
  const where = { OR: Array.from({ length: 90 }, (_, i) => ({ sessionId: { contains: `zz${i}q` } })) };
  const slow = await postJson(
    `${service.url}/graphql`,
    {
      query:
        'query Slow($where: MetricFilter) { metrics(where: $where, first: 10) { totalCount edges { node { id } } } }',
      variables: { where },
    },
    { timeoutMs: 30_000 },
  );
  assert.ok(slow.kind === 'response', describe(slow));
  assert.equal(slow.status, 504, describe(slow));
  assert.deepEqual([...new Set(errorCodes(slow))], ['QUERY_TIMEOUT'], describe(slow));
  assert.match(graphQLBody(slow)?.errors?.[0]?.message ?? '', /time limit \(300 ms\)/);
  assert.doesNotMatch(
    slow.body,
    /canceling statement|prisma|user_metrics|SELECT/i,
    'no SQL or driver text in the answer',
  );
  assert.ok(slow.ms < 5000, `answered after ${slow.ms} ms, not after the query would have finished`);
  // Cancelling is asynchronous: the statement (and the parallel workers of a scan over several partitions) stop
  // within moments of the answer, not at the same instant.
  let active: { n: number } | undefined;
  for (const deadline = Date.now() + 3000; ; ) {
    [active] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query ILIKE '%LIKE%'`,
      [database],
    );
    if (active?.n === 0 || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(active?.n, 0, 'PostgreSQL is no longer running the cancelled statement');

  // A write that waits past the limit (here on a lock the test holds) is cancelled whole: nothing of it is stored.
  const holder = new pg.Client({ connectionString: db.url(database) });
  await holder.connect();
  try {
    await holder.query('BEGIN');
    await holder.query('LOCK TABLE user_metrics IN SHARE MODE');
    const batch = makeBatch('timeout-write-', 50);
    const blocked = await ingest(service, batch, { timeoutMs: 30_000 });
    assert.ok(blocked.kind === 'response' && blocked.status === 504, describe(blocked));
    assert.deepEqual(errorCodes(blocked), ['QUERY_TIMEOUT']);
    await holder.query('ROLLBACK');
    const [kept] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'timeout-write-%'`,
      [],
      database,
    );
    assert.equal(kept?.n, 0, 'the cancelled batch left nothing behind');

    // The same batch, retried, is stored; reads work; the service is ready.
    assert.deepEqual(acknowledged(await ingest(service, batch), 50), { accepted: 50, duplicates: 0 });
    const fast = await postJson(`${service.url}/graphql`, {
      query: '{ metrics(first: 3, where: { userId: { equals: "user-7" } }) { edges { node { userId } } } }',
    });
    assert.ok(fast.kind === 'response' && fast.status === 200 && !graphQLBody(fast)?.errors, describe(fast));
    const ready = await get(`${service.url}/ready`);
    assert.ok(ready.kind === 'response' && ready.status === 200, describe(ready));
  } finally {
    await holder.end();
  }
  assert.ok(service.alive());
});

/** Waits until PostgreSQL shows `count` statements of `database` waiting on a lock. */
async function waitForLockWaiters(db: PgServer, database: string, count: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const [row] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`,
      [database],
    );
    if ((row?.n ?? 0) >= count) return;
    await pause(25);
  }
  throw new Error(`no ${count} statement(s) waiting on the lock`);
}

test('SIGTERM with a batch in flight: new connections are refused, the batch finishes and is answered, exit 0', {
  skip,
  timeout: 120_000,
}, async () => {
  assert.ok(server);
  const db = server;
  const { service, database } = await serviceOnNewDatabase({ SHUTDOWN_TIMEOUT_MS: '10000' });
  const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
  // An idle keep-alive connection, open before the signal.
  assert.ok(acknowledged(await ingest(service, makeBatch('warm-', 1), { agent: keepAlive }), 1));

  const holder = new pg.Client({ connectionString: db.url(database) });
  await holder.connect();
  try {
    await holder.query('BEGIN');
    await holder.query('LOCK TABLE user_metrics IN SHARE MODE');
    const batch = makeBatch('in-flight-', 500);
    const inFlight = ingest(service, batch, { timeoutMs: 30_000 });
    await waitForLockWaiters(db, database, 1);

    const signalledAt = Date.now();
    service.child.kill('SIGTERM');
    let refused: Outcome | undefined;
    for (let i = 0; i < 100; i++) {
      refused = await get(`${service.url}/health`, { timeoutMs: 2000 });
      if (refused.kind === 'refused') break;
      await pause(20);
    }
    assert.equal(
      refused?.kind,
      'refused',
      `a new connection is refused once SIGTERM arrived: ${refused && describe(refused)}`,
    );
    // The idle keep-alive connection carries at most one more request, answered 503 with Connection: close (or it is
    // already closed); after that the agent must open a new connection, which is refused.
    const viaKeepAlive = await ingest(service, makeBatch('after-signal-', 1), { agent: keepAlive });
    if (viaKeepAlive.kind === 'response') {
      assert.equal(viaKeepAlive.status, 503, describe(viaKeepAlive));
      assert.deepEqual(errorCodes(viaKeepAlive), ['UNAVAILABLE']);
      assert.equal(viaKeepAlive.headers.connection, 'close');
      assert.ok(viaKeepAlive.headers['retry-after']);
      const next = await ingest(service, makeBatch('after-signal-', 1), { agent: keepAlive });
      assert.equal(next.kind, 'refused', describe(next));
    } else {
      assert.equal(viaKeepAlive.kind, 'refused', describe(viaKeepAlive));
    }
    assert.ok(service.alive(), 'still running while the batch is in flight');

    await pause(300);
    await holder.query('COMMIT');
    const answered = await inFlight;
    assert.deepEqual(
      acknowledged(answered, 500),
      { accepted: 500, duplicates: 0 },
      `the batch in flight got its whole answer: ${describe(answered)}`,
    );
    const exit = await service.exited;
    assert.equal(exit.code, 0, service.output().slice(-3000));
    assert.ok(exit.at - signalledAt < 10_000, `exited ${exit.at - signalledAt} ms after SIGTERM`);
    const [row] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'in-flight-%'`,
      [],
      database,
    );
    assert.equal(row?.n, 500);
    const [late] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'after-signal-%'`,
      [],
      database,
    );
    assert.equal(late?.n, 0, 'nothing sent after the signal was run');
  } finally {
    keepAlive.destroy();
    await holder.end();
  }
});

test('SIGTERM past SHUTDOWN_TIMEOUT_MS: the process still exits 0 in time, and the cut-off batch is whole or absent', {
  skip,
  timeout: 120_000,
}, async () => {
  assert.ok(server);
  const db = server;
  const { service, database } = await serviceOnNewDatabase({ SHUTDOWN_TIMEOUT_MS: '1500' });
  const holder = new pg.Client({ connectionString: db.url(database) });
  await holder.connect();
  try {
    await holder.query('BEGIN');
    await holder.query('LOCK TABLE user_metrics IN SHARE MODE');
    const inFlight = ingest(service, makeBatch('cut-off-', 300), { timeoutMs: 30_000 });
    await waitForLockWaiters(db, database, 1);
    const signalledAt = Date.now();
    service.child.kill('SIGTERM');
    const exit = await service.exited;
    assert.equal(exit.code, 0, service.output().slice(-3000));
    assert.ok(exit.at - signalledAt < 1500 + 1000, `exited ${exit.at - signalledAt} ms after SIGTERM (bound 1500 ms)`);
    const outcome = await inFlight;
    assert.ok(
      outcome.kind === 'network' && !outcome.partial,
      `the cut-off request saw its connection close, no half answer: ${describe(outcome)}`,
    );
    await holder.query('COMMIT');
    // Whatever PostgreSQL does with the orphaned statement, it does to the whole batch.
    await pause(500);
    const [row] = await db.sql<{ n: number }>(
      `SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'cut-off-%'`,
      [],
      database,
    );
    assert.ok(row?.n === 0 || row?.n === 300, `the cut-off batch has ${row?.n} of 300 rows`);
  } finally {
    await holder.end();
  }
});

test('SIGTERM under load: every request is answered whole or refused, no batch is half-written, exit 0 in time', {
  skip,
  timeout: 120_000,
}, async () => {
  assert.ok(server);
  const db = server;
  const shutdownTimeoutMs = 10_000;
  const { service, database } = await serviceOnNewDatabase({
    SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs),
    DB_POOL_MAX: '4',
  });
  const BATCH = 250;
  interface Sent {
    prefix: string;
    outcome: Outcome;
  }
  const log: Sent[] = [];
  let signalledAt = 0;
  const client = async (c: number) => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let b = 0; ; b++) {
        const prefix = `load-c${c}-b${b}-`;
        const outcome = await ingest(service, makeBatch(prefix, BATCH), { agent, timeoutMs: 30_000 });
        log.push({ prefix, outcome });
        if (outcome.kind === 'refused') return;
        if (outcome.kind === 'network' && signalledAt > 0) continue; // its keep-alive socket was closed: reconnect
        if (outcome.kind === 'network') throw new Error(`network error before the signal: ${describe(outcome)}`);
      }
    } finally {
      agent.destroy();
    }
  };
  const clients = Promise.all([0, 1, 2, 3, 4, 5].map(client));
  while (log.filter((entry) => acknowledged(entry.outcome, BATCH)).length < 12) await pause(20);
  signalledAt = Date.now();
  service.child.kill('SIGTERM');
  await clients;
  const exit = await service.exited;

  const counts = new Map(
    (
      await db.sql<{ prefix: string; n: number }>(
        `SELECT substring(event_id from '^(load-c\\d+-b\\d+-)') AS prefix, count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'load-%' GROUP BY 1`,
        [],
        database,
      )
    ).map((row) => [row.prefix, row.n]),
  );
  const tally = {
    acknowledged: 0,
    refusedWhileStopping: 0,
    connectionRefused: 0,
    closedBeforeAnswer: 0,
    halfAnswered: 0,
    other: 0,
  };
  const problems: string[] = [];
  for (const { prefix, outcome } of log) {
    const stored = counts.get(prefix) ?? 0;
    if (stored !== 0 && stored !== BATCH) problems.push(`${prefix} is half-written: ${stored} of ${BATCH}`);
    if (acknowledged(outcome, BATCH)) {
      tally.acknowledged++;
      if (stored !== BATCH) problems.push(`${prefix} was acknowledged but has ${stored} rows`);
    } else if (outcome.kind === 'response' && outcome.status === 503 && errorCodes(outcome).join() === 'UNAVAILABLE') {
      tally.refusedWhileStopping++;
      if (stored !== 0) problems.push(`${prefix} was refused while stopping yet has ${stored} rows`);
    } else if (outcome.kind === 'refused') {
      tally.connectionRefused++;
      if (stored !== 0) problems.push(`${prefix} never connected yet has ${stored} rows`);
    } else if (outcome.kind === 'network' && !outcome.partial) {
      tally.closedBeforeAnswer++;
      problems.push(`${prefix}: the connection closed before any answer (${outcome.code}, ${stored} rows stored)`);
    } else if (outcome.kind === 'network') {
      tally.halfAnswered++;
      problems.push(`${prefix}: the answer was cut off: ${describe(outcome)}`);
    } else {
      tally.other++;
      problems.push(`${prefix}: ${describe(outcome)}`);
    }
  }
  console.log(
    `shutdown under load: ${JSON.stringify({ ...tally, exitCode: exit.code, exitMs: exit.at - signalledAt })}`,
  );
  assert.deepEqual(problems, []);
  assert.equal(exit.code, 0, service.output().slice(-3000));
  assert.ok(exit.at - signalledAt < shutdownTimeoutMs, `exited ${exit.at - signalledAt} ms after SIGTERM`);
  assert.equal(tally.connectionRefused, 6, 'every client ended on a refused connection');
  assert.ok(tally.acknowledged >= 12);
});
