/**
 * The set check of the queued mode (INGEST_QUEUE): clients ingest records with eventIds through the service, each
 * retrying a batch until it is acknowledged (QUEUED), while the worker (`src/cli/worker.ts`, a child process) is
 * killed with SIGKILL 20 times, each time at a point the test makes sure of: half of them with a batch in flight
 * before its commit (the test holds a lock the batch's insert waits for), half between the commit and the
 * acknowledgement (the worker's connection to NATS is held by a proxy of the test's while the insert commits); and the
 * PostgreSQL server is killed twice (`pg_ctl -m immediate stop`) and stopped for 30 s once while the worker runs. At
 * the end every acknowledged record is stored exactly once, nothing else is stored, and nothing went to the dead
 * letters.
 *
 * The service and the worker run against a PostgreSQL server of the test's own, whatever TEST_DATABASE_URL says, and
 * NATS with JetStream on 127.0.0.1:4222 (TEST_NATS_URL), in a stream of the test's own (deleted afterwards).
 * Sizes come from the environment: QUEUE_SET_CLIENTS (4), QUEUE_SET_KILLS (20).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import pg from 'pg';
import { FaultProxy } from './support/fault-proxy.js';
import { seededRandom } from './support/fixtures.js';
import { errorCodes, get, makeBatch, type Outcome, postJson } from './support/http-client.js';
import { ownPostgresUnavailable, PgServer } from './support/pg-server.js';
import { PROJECT_ROOT, SCRUBBED } from './support/process.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

const NATS_URL = process.env.TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const random = seededRandom(Number(process.env.QUEUE_SET_SEED ?? 20261204));
const envInt = (name: string, fallback: number) => {
  const raw = process.env[name];
  return raw && /^\d+$/.test(raw) ? Number(raw) : fallback;
};
const CLIENTS = envInt('QUEUE_SET_CLIENTS', 4);
const BATCH = 50;
const KILLS = Math.max(20, envInt('QUEUE_SET_KILLS', 20));
/** Between a client's batches: records flow all through the run, so the worker always has a batch to take. */
const PACE_MS = 400;
const OUTAGE_MS = 30_000;
const DEADLINE_MS = envInt('QUEUE_SET_DEADLINE_MS', 240_000);

const QUEUED_INGEST = /* GraphQL */ `
  mutation Ingest($records: [UserMetricInput!]!) {
    ingestMetrics(records: $records) { status accepted queued duplicates rejected { index code } }
  }`;

// It starts a PostgreSQL server of its own whatever the suite runs on: the PostgreSQL passes of CI are enough.
const skip =
  ownPostgresUnavailable() ??
  (process.env.TEST_DATABASE_URL ? undefined : 'runs with TEST_DATABASE_URL (the PostgreSQL passes)');
const unique = crypto.randomBytes(4).toString('hex');
const STREAM = `TQUEUE_SET_${unique}`;
const env: Record<string, string> = {
  INGEST_QUEUE: NATS_URL,
  INGEST_QUEUE_STREAM: STREAM,
  INGEST_QUEUE_SUBJECT: `TQUEUE_SET_${unique}.ingest`,
  INGEST_QUEUE_DEAD_LETTER_SUBJECT: `TQUEUE_SET_${unique}.dead`,
  // A killed worker's batch is handed out again 2 s later, not after the default minute.
  INGEST_QUEUE_ACK_WAIT_MS: '2000',
  INGEST_WORKER_BATCH_SIZE: '200',
  INGEST_WORKER_MAX_BACKOFF_MS: '1000',
  AUTH: 'off',
  INGEST_RATE_REQUESTS: '0',
  INGEST_RATE_RECORDS: '0',
  DB_CONNECT_TIMEOUT_MS: '2000',
  DB_STATEMENT_TIMEOUT_MS: '5000',
  LOG_LEVEL: 'error',
};

let server: PgServer | undefined;
let service: ServiceProcess | undefined;
let worker: ChildProcess | undefined;
/** Between the worker and NATS: it holds the worker's acknowledgements when the test wants them held. */
let natsProxy: FaultProxy | undefined;

/** The worker as `npm run worker` runs it, a child process of its own; its debug lines report each batch. */
function startWorker(): { child: ChildProcess; exited: Promise<void>; output: () => string } {
  const base: Record<string, string | undefined> = { ...process.env };
  for (const name of [...SCRUBBED, 'TEST_DATABASE_URL']) delete base[name];
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/worker.ts'], {
    cwd: PROJECT_ROOT,
    env: {
      ...base,
      ...env,
      NODE_ENV: 'test',
      DATABASE_URL: server?.url() ?? '',
      INGEST_QUEUE: `nats://127.0.0.1:${natsProxy?.port}`,
      LOG_LEVEL: 'debug',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  return { child, exited, output: () => output };
}

before(async () => {
  if (skip) return;
  server = await PgServer.start();
  // A backend whose client has died ends within 100 ms even while it waits for a lock, instead of going on to commit.
  await server.sql(`ALTER SYSTEM SET client_connection_check_interval = '100ms'`);
  await server.sql('SELECT pg_reload_conf()');
  const natsUrl = new URL(NATS_URL);
  natsProxy = await FaultProxy.start({ host: natsUrl.hostname, port: Number(natsUrl.port || 4222) });
  service = await startServiceProcess({ ...env, DATABASE_URL: server.url() });
});

after(async () => {
  worker?.kill('SIGKILL');
  await service?.kill();
  await natsProxy?.close();
  await server?.destroy();
  const nc = await connect({ servers: new URL(NATS_URL).host });
  const jsm = await jetstreamManager(nc);
  for (const name of [STREAM, `${STREAM}_DEAD`]) await jsm.streams.delete(name).catch(() => {});
  await nc.close();
});

test('queued mode: every acknowledged record is stored exactly once through worker kills and PostgreSQL outages', {
  skip,
  timeout: DEADLINE_MS + 60_000,
}, async () => {
  assert.ok(server && service && natsProxy);
  const db = server;
  const proxy = natsProxy;
  const svc = service;
  const started = Date.now();
  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
  const sent = new Set<string>();
  const acked = new Set<string>();
  const unexpected: string[] = [];
  let attempts = 0;
  let answered503 = 0;

  const sendBatch = async (prefix: string) => {
    const records = makeBatch(prefix, BATCH);
    for (const record of records) sent.add(record.eventId as string);
    for (;;) {
      if (Date.now() - started > DEADLINE_MS) throw new Error(`batch ${prefix} not acknowledged before the deadline`);
      attempts++;
      const outcome: Outcome = await postJson(
        `${svc.url}/graphql`,
        { query: QUEUED_INGEST, variables: { records } },
        { timeoutMs: 20_000 },
      );
      if (outcome.kind === 'response' && outcome.status === 200) {
        const body = JSON.parse(outcome.body) as {
          data?: { ingestMetrics: { status: string; queued: number; duplicates: number; rejected: unknown[] } };
          errors?: unknown[];
        };
        const answer = body.data?.ingestMetrics;
        if (
          !body.errors?.length &&
          answer?.status === 'QUEUED' &&
          answer.rejected.length === 0 &&
          answer.queued + answer.duplicates === BATCH
        ) {
          for (const record of records) acked.add(record.eventId as string);
          return;
        }
        unexpected.push(`HTTP 200 without the acknowledgement: ${outcome.body.slice(0, 300)}`);
        continue;
      }
      if (outcome.kind === 'response' && outcome.status === 503) answered503++;
      else
        unexpected.push(
          outcome.kind === 'response' ? `HTTP ${outcome.status}: ${outcome.body.slice(0, 300)}` : 'network',
        );
      if (outcome.kind === 'response') unexpected.push(...errorCodes(outcome).filter((c) => c !== 'UNAVAILABLE'));
      await pause(200 + random() * 300);
    }
  };
  let stopClients = false;
  const client = async (c: number) => {
    for (let b = 0; !stopClients; b++) {
      await sendBatch(`q${c}-b${b}-`);
      await pause(PACE_MS * (0.5 + random()));
    }
  };
  const clients = Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));

  // Connections of the test's own to PostgreSQL (not the service's or the worker's).
  const withClient = async <T>(work: (client: pg.Client) => Promise<T>): Promise<T> => {
    const client = new pg.Client({ connectionString: db.url(), connectionTimeoutMillis: 10_000 });
    await client.connect();
    try {
      return await work(client);
    } finally {
      await client.end();
    }
  };
  const waitFor = async (what: string, condition: () => Promise<boolean>, ms = 30_000) => {
    const until = Date.now() + ms;
    while (!(await condition())) {
      if (Date.now() > until) throw new Error(`waited ${ms} ms for ${what}`);
      await pause(20);
    }
  };
  /** Backends of this database waiting for a lock: the worker's insert, behind the test's lock. */
  const lockWaiters = async (client: pg.Client) =>
    Number(
      (
        await client.query(
          `SELECT count(*) AS n FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
        )
      ).rows[0]?.n,
    );
  const storedRows = async (client: pg.Client) =>
    Number((await client.query('SELECT count(*) AS n FROM user_metrics')).rows[0]?.n);

  const workerOutput: string[] = [];
  let current: ReturnType<typeof startWorker> | undefined;
  const startOne = () => {
    current = startWorker();
    worker = current.child;
    return current;
  };
  const killCurrent = async () => {
    assert.ok(current && current.child.exitCode === null, 'the worker is running when it is killed');
    current.child.kill('SIGKILL');
    await current.exited;
    workerOutput.push(current.output());
    current = undefined;
  };
  const kills = { beforeCommit: 0, afterCommit: 0, afterCommitNewRows: 0 };

  /**
   * One kill at a point made sure of: the test locks user_metrics against inserts, waits until the worker's batch
   * waits for the lock, then either kills it there (before the commit), or holds the worker's NATS traffic, lets the
   * insert commit, sees the rows, and kills it before its acknowledgements get out (between commit and ack).
   */
  const killCycle = async (afterCommit: boolean) => {
    startOne();
    await withClient(async (locker) => {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE user_metrics IN SHARE ROW EXCLUSIVE MODE');
      const before = await storedRows(locker);
      await withClient((watcher) =>
        waitFor('the worker to wait for the lock', async () => (await lockWaiters(watcher)) > 0),
      );
      if (!afterCommit) {
        await killCurrent();
        await withClient((watcher) =>
          waitFor("the dead worker's insert to end", async () => (await lockWaiters(watcher)) === 0, 10_000),
        );
        await locker.query('ROLLBACK');
        await withClient(async (watcher) => assert.equal(await storedRows(watcher), before, 'nothing was committed'));
        kills.beforeCommit++;
        return;
      }
      proxy.blackhole(600_000);
      await locker.query('COMMIT');
      // Committed: new rows are there, or (a batch a killed worker had committed, handed out again) the worker's
      // session has finished its transaction and waits for NATS.
      await withClient((watcher) =>
        waitFor('the batch to commit', async () => {
          if ((await storedRows(watcher)) > before) return true;
          const busy = await watcher.query(
            `SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
               AND (state <> 'idle' OR wait_event_type = 'Lock') AND query NOT LIKE '%metric_rollups_fold%'`,
          );
          return Number(busy.rows[0]?.n) === 0;
        }),
      );
      if ((await withClient(storedRows)) > before) kills.afterCommitNewRows++;
      await killCurrent();
      // Its held acknowledgements are dropped with its connections, never delivered.
      proxy.resetAll();
      proxy.heal();
      kills.afterCommit++;
    });
  };

  const outages: string[] = [];
  for (let i = 0; i < KILLS / 2; i++) await killCycle(i % 2 === 1);
  // PostgreSQL killed twice and stopped for 30 s while a worker runs: it hands its batches back and goes on.
  const steady = startOne();
  await pause(1000);
  await db.restart(300);
  outages.push(`restart@${Math.round((Date.now() - started) / 1000)}s`);
  await pause(2000);
  await db.restart(300);
  outages.push(`restart@${Math.round((Date.now() - started) / 1000)}s`);
  await pause(2000);
  await db.stopServer('immediate');
  const down = Date.now();
  await pause(OUTAGE_MS);
  await db.startServer();
  outages.push(`outage ${Math.round((Date.now() - down) / 1000)}s@${Math.round((down - started) / 1000)}s`);
  await pause(2000);
  assert.equal(steady.child.exitCode, null, `the worker came through the outages:\n${steady.output().slice(-2000)}`);
  await killCurrent();
  for (let i = KILLS / 2; i < KILLS; i++) await killCycle(i % 2 === 1);
  stopClients = true;
  await clients;
  // A last worker drains the backlog.
  const last = startOne();
  // The backlog drains: nothing pending or handed out but unacknowledged.
  let backlog: { pending: number; lag: number; deadLetters: number } | undefined;
  for (;;) {
    const ready = await get(`${svc.url}/ready`, { timeoutMs: 5000 });
    if (ready.kind === 'response' && ready.status === 200) {
      backlog = JSON.parse(ready.body).queue;
      if (backlog?.pending === 0) break;
    }
    if (Date.now() - started > DEADLINE_MS) {
      throw new Error(
        `the backlog did not drain: ${JSON.stringify(backlog)}; the worker said:\n${workerOutput.join('').slice(-3000)}`,
      );
    }
    await pause(250);
  }
  last.child.kill('SIGTERM');
  await last.exited;
  workerOutput.push(last.output());

  const rows = await db.sql<{ event_id: string }>('SELECT event_id FROM user_metrics');
  const duplicated = await db.sql<{ event_id: string; n: number }>(
    'SELECT event_id, count(*)::int AS n FROM user_metrics GROUP BY event_id HAVING count(*) > 1',
  );
  const stored = new Set(rows.map((row) => row.event_id));
  const lost = [...acked].filter((id) => !stored.has(id));
  const unsentStored = [...stored].filter((id) => !sent.has(id));
  // What the workers' batch lines say: records found stored already (a kill between commit and acknowledgement, or
  // a redelivery) and batches handed back while PostgreSQL was down.
  let foundStored = 0;
  let handedBack = 0;
  for (const line of workerOutput.join('').split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { duplicates?: number; retryInMs?: number };
    if (typeof entry.duplicates === 'number') foundStored += entry.duplicates;
    if (typeof entry.retryInMs === 'number') handedBack++;
  }
  const figures = {
    clients: CLIENTS,
    sent: sent.size,
    acknowledged: acked.size,
    stored: rows.length,
    lost: lost.length,
    duplicated: duplicated.length,
    unsent_stored: unsentStored.length,
    dead_letters: backlog?.deadLetters,
    attempts,
    answered_503: answered503,
    worker_kills_before_commit: kills.beforeCommit,
    worker_kills_between_commit_and_ack: kills.afterCommit,
    of_which_with_new_rows: kills.afterCommitNewRows,
    records_found_stored_again: foundStored,
    batches_handed_back: handedBack,
    postgres: outages,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  };
  console.log(`queued set check:\n${JSON.stringify(figures, null, 2)}`);

  assert.deepEqual(unexpected, [], 'every failed attempt was a retryable 503');
  assert.equal(lost.length, 0, `acknowledged but not stored: ${lost.slice(0, 10).join(', ')}`);
  assert.equal(duplicated.length, 0, `stored more than once: ${JSON.stringify(duplicated.slice(0, 10))}`);
  assert.equal(unsentStored.length, 0, `stored but never sent: ${unsentStored.slice(0, 10).join(', ')}`);
  assert.equal(acked.size, sent.size, 'every batch was acknowledged in the end');
  assert.equal(rows.length, acked.size, 'stored exactly the acknowledged records');
  assert.equal(backlog?.deadLetters, 0, 'nothing went to the dead letters');
  assert.equal(kills.beforeCommit + kills.afterCommit, KILLS);
  assert.ok(foundStored > 0, 'records committed by a killed worker came again and were found stored');
  assert.equal(outages.length, 3, `PostgreSQL: ${outages.join(', ')}`);
  assert.ok(handedBack > 0, 'the worker met the outage and handed its batch back');
});
