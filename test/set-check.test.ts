/**
 * The set check: several clients ingest records with eventIds, each retrying a batch until it is acknowledged, while
 * a fault-injecting proxy between the service and PostgreSQL adds latency, resets connections and blackholes them,
 * and the PostgreSQL server is killed (`pg_ctl -m immediate stop`) and started again. At the end every acknowledged
 * record must be stored exactly once, and nothing else stored.
 *
 * The service runs as a child process against a PostgreSQL server of the test's own, whatever TEST_DATABASE_URL says.
 * Sizes come from the environment (`npm run test:stress` sets bigger ones):
 *   SET_CHECK_CLIENTS (4), SET_CHECK_RECORDS (3,000 per client), SET_CHECK_BATCH (100), SET_CHECK_RESTARTS (2),
 *   SET_CHECK_PACE_MS (40: pause between a client's batches, so the faults land while batches flow).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { FaultProxy } from './support/fault-proxy.js';
import { seededRandom } from './support/fixtures.js';
import {
  acknowledged,
  errorCodes,
  get,
  INGEST_MUTATION,
  makeBatch,
  type Outcome,
  postJson,
} from './support/http-client.js';
import { ownPostgresUnavailable, PgServer } from './support/pg-server.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

/** Retry jitter from a fixed seed (SET_CHECK_SEED to change it): the same waits on every run. */
const jitter = seededRandom(Number(process.env.SET_CHECK_SEED ?? 20261202));
const envInt = (name: string, fallback: number) => {
  const raw = process.env[name];
  return raw && /^\d+$/.test(raw) ? Number(raw) : fallback;
};
const CLIENTS = envInt('SET_CHECK_CLIENTS', 4);
const RECORDS_PER_CLIENT = envInt('SET_CHECK_RECORDS', 3000);
const BATCH = envInt('SET_CHECK_BATCH', 100);
const RESTARTS = Math.max(2, envInt('SET_CHECK_RESTARTS', 2));
const PACE_MS = envInt('SET_CHECK_PACE_MS', 40);
/** The whole run must end within this; a client still retrying then fails the test. */
const DEADLINE_MS = envInt('SET_CHECK_DEADLINE_MS', 150_000);

const skip = ownPostgresUnavailable();

let pg: PgServer | undefined;
let proxy: FaultProxy | undefined;
let service: ServiceProcess | undefined;

before(async () => {
  if (skip) return;
  pg = await PgServer.start();
  proxy = await FaultProxy.start({ host: '127.0.0.1', port: pg.port });
  service = await startServiceProcess({
    DATABASE_URL: proxy.url(),
    LOG_LEVEL: 'error',
    AUTH: 'off',
    INGEST_RATE_REQUESTS: '0',
    INGEST_RATE_RECORDS: '0',
    DB_POOL_MAX: '8',
    DB_CONNECT_TIMEOUT_MS: '2000',
    DB_STATEMENT_TIMEOUT_MS: '3000',
    SHUTDOWN_TIMEOUT_MS: '10000',
  });
});

after(async () => {
  await service?.kill();
  await proxy?.close();
  await pg?.destroy();
});

interface Figures {
  clients: number;
  batches: number;
  sent: number;
  acknowledged: number;
  stored: number;
  lost: number;
  duplicated: number;
  unsent_stored: number;
  attempts: number;
  retries: number;
  answered_503: number;
  answered_504: number;
  network_errors: number;
  acks_with_duplicates: number;
  restarts: number;
  resets: number;
  blackholes: number;
  proxied_connections: number;
  seconds: number;
}

test('every acknowledged record is stored exactly once through resets, blackholes and PostgreSQL restarts', {
  skip,
  timeout: DEADLINE_MS + 60_000,
}, async () => {
  assert.ok(pg && proxy && service);
  const db = pg;
  const faults = proxy;
  const svc = service;
  const graphqlUrl = `${svc.url}/graphql`;
  const totalRecords = CLIENTS * RECORDS_PER_CLIENT;
  const started = Date.now();

  const sent = new Set<string>();
  const acked = new Set<string>();
  const unexpected: string[] = [];
  let ackedRecords = 0;
  let attempts = 0;
  let answered503 = 0;
  let answered504 = 0;
  let networkErrors = 0;
  let acksWithDuplicates = 0;

  const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Sends one batch until it is acknowledged (or the deadline passes). */
  const sendBatch = async (prefix: string, size: number) => {
    const records = makeBatch(prefix, size);
    for (const record of records) sent.add(record.eventId as string);
    for (let attempt = 0; ; attempt++) {
      if (Date.now() - started > DEADLINE_MS)
        throw new Error(`batch ${prefix} not acknowledged after ${attempt} attempts before the deadline`);
      attempts++;
      const outcome: Outcome = await postJson(
        graphqlUrl,
        { query: INGEST_MUTATION, variables: { records } },
        { timeoutMs: 20_000 },
      );
      const ack = acknowledged(outcome, size);
      if (ack) {
        for (const record of records) acked.add(record.eventId as string);
        ackedRecords += size;
        if (ack.duplicates > 0) acksWithDuplicates++;
        return;
      }
      let wait = 100 + jitter() * 200;
      if (outcome.kind === 'response') {
        const codes = errorCodes(outcome);
        if (outcome.status === 503 && codes.every((code) => code === 'UNAVAILABLE')) {
          answered503++;
          assert.ok(outcome.headers['retry-after'], '503 answers carry Retry-After');
          wait = Number(outcome.headers['retry-after']) * 1000 * (0.5 + jitter());
        } else if (outcome.status === 504 && codes.every((code) => code === 'QUERY_TIMEOUT')) {
          answered504++;
        } else {
          unexpected.push(`HTTP ${outcome.status}: ${outcome.body.slice(0, 500)}`);
        }
      } else {
        networkErrors++;
      }
      await pause(wait);
    }
  };

  const client = async (c: number) => {
    const batches = Math.ceil(RECORDS_PER_CLIENT / BATCH);
    for (let b = 0; b < batches; b++) {
      await sendBatch(`c${c}-b${b}-`, Math.min(BATCH, RECORDS_PER_CLIENT - b * BATCH));
      if (PACE_MS > 0) await pause(PACE_MS);
    }
  };

  // The faults, fired as the acknowledged share of the records passes each mark: restarts spread over the run, a
  // blackhole longer than the connect timeout, and a reset of every connection; latency and random resets throughout.
  const events: Array<{ at: number; name: string; run: () => Promise<void> }> = [];
  for (let i = 0; i < RESTARTS; i++) {
    events.push({ at: (i + 0.5) / (RESTARTS + 0.5) - 0.1, name: 'restart', run: () => db.restart(300) });
  }
  events.push({
    at: 0.35,
    name: 'blackhole',
    run: async () => {
      faults.blackhole(2500);
      await pause(2500);
    },
  });
  events.push({ at: 0.8, name: 'reset all', run: async () => void faults.resetAll() });
  events.sort((a, b) => a.at - b.at);
  const fired: string[] = [];
  let clientsDone = false;
  faults.latency = { min: 0, max: 4 };
  faults.resetProbability = 0.03;
  const chaos = (async () => {
    for (const event of events) {
      while (!clientsDone && ackedRecords / totalRecords < event.at) await pause(20);
      if (clientsDone) break;
      fired.push(`${event.name}@${Math.round((100 * ackedRecords) / totalRecords)}%`);
      await event.run();
    }
  })();

  try {
    await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)));
  } finally {
    clientsDone = true;
    await chaos;
    faults.heal();
  }
  if (!db.isRunning) await db.startServer();

  // What is stored, read straight from PostgreSQL (not through the proxy or the service).
  const rows = await db.sql<{ event_id: string }>('SELECT event_id FROM user_metrics');
  const duplicated = await db.sql<{ event_id: string; n: number }>(
    'SELECT event_id, count(*)::int AS n FROM user_metrics GROUP BY event_id HAVING count(*) > 1',
  );
  const stored = new Set(rows.map((row) => row.event_id));
  const lost = [...acked].filter((id) => !stored.has(id));
  const unsentStored = [...stored].filter((id) => !sent.has(id));

  const figures: Figures = {
    clients: CLIENTS,
    batches: CLIENTS * Math.ceil(RECORDS_PER_CLIENT / BATCH),
    sent: sent.size,
    acknowledged: acked.size,
    stored: rows.length,
    lost: lost.length,
    duplicated: duplicated.length,
    unsent_stored: unsentStored.length,
    attempts,
    retries: attempts - CLIENTS * Math.ceil(RECORDS_PER_CLIENT / BATCH),
    answered_503: answered503,
    answered_504: answered504,
    network_errors: networkErrors,
    acks_with_duplicates: acksWithDuplicates,
    restarts: db.restarts,
    resets: faults.stats.resets,
    blackholes: faults.stats.blackholes,
    proxied_connections: faults.stats.connections,
    seconds: Math.round((Date.now() - started) / 100) / 10,
  };
  console.log(`set check (faults fired: ${fired.join(', ')}):\n${JSON.stringify(figures, null, 2)}`);

  assert.deepEqual(unexpected, [], 'every failed attempt was a retryable 503/504 or a network error');
  assert.equal(lost.length, 0, `acknowledged but not stored: ${lost.slice(0, 10).join(', ')}`);
  assert.equal(duplicated.length, 0, `stored more than once: ${JSON.stringify(duplicated.slice(0, 10))}`);
  assert.equal(unsentStored.length, 0, `stored but never sent: ${unsentStored.slice(0, 10).join(', ')}`);
  assert.equal(acked.size, totalRecords, 'every batch was acknowledged in the end');
  assert.equal(rows.length, acked.size, 'stored exactly the acknowledged records');
  assert.ok(
    db.restarts >= 2,
    `PostgreSQL was restarted at least twice during the run (${db.restarts}; fired: ${fired.join(', ')})`,
  );
  assert.ok(faults.stats.resets > 0, 'connections were reset during the run');
  assert.ok(answered503 > 0, 'the outages reached the clients as 503 UNAVAILABLE');

  // The service came through on its own: alive, ready, and it stops cleanly.
  assert.ok(svc.alive(), `the service is still running:\n${svc.output().slice(-3000)}`);
  let ready: Outcome | undefined;
  for (let i = 0; i < 50; i++) {
    ready = await get(`${svc.url}/ready`, { timeoutMs: 5000 });
    if (ready.kind === 'response' && ready.status === 200) break;
    await pause(200);
  }
  assert.equal(
    ready?.kind === 'response' && ready.status,
    200,
    `/ready answers 200 after the faults: ${JSON.stringify(ready)}`,
  );
  svc.child.kill('SIGTERM');
  const exit = await svc.exited;
  assert.equal(exit.code, 0, `exit code after SIGTERM:\n${svc.output().slice(-3000)}`);
});
