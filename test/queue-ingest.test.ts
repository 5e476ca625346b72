/**
 * The queued mode (INGEST_QUEUE): ingestMetrics answers QUEUED once NATS JetStream holds the records, the worker
 * stores them with the service's own store path, resends are dropped (by the broker, then by identity), records that
 * can never be stored go to the dead-letter stream, a full stream answers 503, and a PostgreSQL outage neither stops
 * the acknowledgements nor loses a record.
 *
 * Needs NATS with JetStream on 127.0.0.1:4222 (TEST_NATS_URL to use another). Every test has streams and subjects of
 * its own (TQUEUE_*), deleted afterwards.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, test } from 'node:test';
import { type JetStreamManager, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import type { IngestQueue } from '../src/queue/broker.js';
import { connectNatsQueue } from '../src/queue/nats.js';
import { createApiKey } from '../src/services/api-keys.js';
import { recordKeyHex } from '../src/services/ingest.js';
import { createIngestWorker, type IngestWorker } from '../src/worker.js';
import { FaultProxy } from './support/fault-proxy.js';
import { record as anyRecord, nowSeconds, startTestService, type TestService } from './support/harness.js';
import { ownPostgresUnavailable, PgServer } from './support/pg-server.js';

const NATS_URL = process.env.TEST_NATS_URL ?? 'nats://127.0.0.1:4222';

/** One event time for the file: a record sent again (a client's retry) is then the same record, identity included. */
const EVENT_TIME = nowSeconds() - 3600;
const record = (overrides: Record<string, unknown> = {}) => anyRecord({ timestamp: EVENT_TIME, ...overrides });

const QUEUED_INGEST = /* GraphQL */ `
  mutation Ingest($records: [UserMetricInput!]!, $atomic: Boolean) {
    ingestMetrics(records: $records, atomic: $atomic) {
      status
      accepted
      queued
      duplicates
      rejected { index field code }
    }
  }`;

let nc: NatsConnection | undefined;
let jsm: JetStreamManager | undefined;
const streams = new Set<string>();

async function broker(): Promise<{ nc: NatsConnection; jsm: JetStreamManager }> {
  nc ??= await connect({ servers: new URL(NATS_URL).host });
  jsm ??= await jetstreamManager(nc);
  return { nc, jsm };
}

after(async () => {
  const { jsm: manager } = await broker();
  for (const name of streams) await manager.streams.delete(name).catch(() => {});
  await nc?.close();
});

/** The queue variables of a test's own streams and subjects. */
interface QueueEnv extends Record<string, string> {
  INGEST_QUEUE_STREAM: string;
  INGEST_QUEUE_SUBJECT: string;
}

function queueEnv(name: string, extra: Record<string, string> = {}): QueueEnv {
  const unique = `${name}_${crypto.randomBytes(4).toString('hex')}`;
  const env = {
    INGEST_QUEUE: NATS_URL,
    INGEST_QUEUE_STREAM: `TQUEUE_${unique}`,
    INGEST_QUEUE_SUBJECT: `TQUEUE_${unique}.ingest`,
    INGEST_QUEUE_DEAD_LETTER_SUBJECT: `TQUEUE_${unique}.dead`,
    ...extra,
  };
  streams.add(env.INGEST_QUEUE_STREAM);
  streams.add(`${env.INGEST_QUEUE_STREAM}_DEAD`);
  return env;
}

interface Setup {
  service: TestService;
  env: QueueEnv;
  /** The worker's own connection to the queue, as `npm run worker` makes it. */
  queue: IngestQueue;
  worker: IngestWorker;
  stop(): Promise<void>;
}

async function setUp(name: string, extra: Record<string, string> = {}): Promise<Setup> {
  const env = queueEnv(name, { AUTH: 'off', INGEST_RATE_REQUESTS: '0', INGEST_RATE_RECORDS: '0', ...extra });
  const service = await startTestService(env);
  const queueConfig = service.config.ingestQueue;
  assert.ok(queueConfig, 'INGEST_QUEUE is configured');
  const queue = await connectNatsQueue(queueConfig);
  const worker = await createIngestWorker({
    queue,
    logger: createLogger((process.env.LOG_LEVEL as 'warn' | undefined) ?? 'silent'),
    batchSize: queueConfig.workerBatchSize,
    maxBackoffMs: 200,
    fetchWaitMs: 1000,
  });
  return {
    service,
    env,
    queue,
    worker,
    async stop() {
      await worker.stop();
      await queue.close();
      await service.stop();
    },
  };
}

/** Runs batches until the queue hands out nothing; the sums of what they did. */
async function drain(worker: IngestWorker) {
  const total = { received: 0, stored: 0, duplicates: 0, deadLettered: 0 };
  for (;;) {
    const report = await worker.runOnce();
    if (report.received === 0) return total;
    total.received += report.received;
    total.stored += report.stored;
    total.duplicates += report.duplicates;
    total.deadLettered += report.deadLettered;
  }
}

async function storedCount(service: TestService): Promise<number> {
  const [row] = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics');
  return row?.n ?? -1;
}

/** Every entry of the dead-letter stream, parsed. */
async function deadLetters(stream: string) {
  const { jsm: manager } = await broker();
  const info = await manager.streams.info(stream);
  const out: Array<{ reason: { code: string; message: string; problems?: { code: string }[] }; record: string }> = [];
  for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
    const message = await manager.streams.getMessage(stream, { seq });
    if (message) out.push(message.json());
  }
  return out;
}

async function metricValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} is on /metrics:\n${text.slice(0, 3000)}`);
  return Number(line.split(' ')[1]);
}

test('a queued batch is answered QUEUED and stored once the worker runs; /ready and /metrics show the backlog', async () => {
  const setup = await setUp('basic');
  try {
    const records = [record({ eventId: 'q-1' }), record({ eventId: 'q-2' }), record({ eventId: 'q-3' })];
    const answer = await setup.service.gql(QUEUED_INGEST, { records: [...records, record({ talkedTime: -1 })] });
    assert.deepEqual(answer.ingestMetrics, {
      status: 'QUEUED',
      accepted: 0,
      queued: 3,
      duplicates: 0,
      rejected: [{ index: 3, field: 'talkedTime', code: 'OUT_OF_RANGE' }],
    });
    assert.equal(await storedCount(setup.service), 0, 'nothing is stored before the worker runs');
    assert.equal(await metricValue(setup.service.url, 'ingest_queue_pending'), 3);
    assert.equal(await metricValue(setup.service.url, 'ingest_queue_lag'), 3);
    const ready = await fetch(`${setup.service.url}/ready`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), {
      ready: true,
      database: 'up',
      queue: { pending: 3, lag: 3, deadLetters: 0 },
    });

    const done = await drain(setup.worker);
    assert.deepEqual(done, { received: 3, stored: 3, duplicates: 0, deadLettered: 0 });
    const rows = await setup.service.sql<{ event_id: string }>('SELECT event_id FROM user_metrics ORDER BY event_id');
    assert.deepEqual(
      rows.map((r) => r.event_id),
      ['q-1', 'q-2', 'q-3'],
    );
    assert.equal(await metricValue(setup.service.url, 'ingest_queue_pending'), 0);
    assert.equal(await metricValue(setup.service.url, 'ingest_queue_lag'), 0);
    // The same records through GraphQL read back as the direct mode stores them.
    const read = await setup.service.gql('{ metrics(first: 5) { totalCount } }');
    assert.equal(read.metrics.totalCount, 3);
  } finally {
    await setup.stop();
  }
});

test('a resend is dropped by the broker within its window, and by identity after it', async () => {
  const setup = await setUp('resend');
  try {
    const records = [record({ eventId: 'r-1' }), record({ eventId: 'r-2' }), record({ eventId: 'r-2' })];
    const first = await setup.service.gql(QUEUED_INGEST, { records });
    assert.equal(first.ingestMetrics.queued, 2);
    assert.equal(first.ingestMetrics.duplicates, 1, 'the repeat within the batch');
    const again = await setup.service.gql(QUEUED_INGEST, { records });
    assert.deepEqual(
      { queued: again.ingestMetrics.queued, duplicates: again.ingestMetrics.duplicates },
      { queued: 0, duplicates: 3 },
      'the broker dropped both resent records',
    );
    assert.equal((await broker().then((b) => b.jsm.streams.info(setup.env.INGEST_QUEUE_STREAM))).state.messages, 2);
    assert.deepEqual(await drain(setup.worker), { received: 2, stored: 2, duplicates: 0, deadLettered: 0 });

    // After the broker's window (or from a producer with ids of its own) the record comes again: its identity drops it.
    const js = jetstream((await broker()).nc);
    await js.publish(`${setup.env.INGEST_QUEUE_SUBJECT}.api`, JSON.stringify(records[0]), { msgID: 'another-id' });
    assert.deepEqual(await drain(setup.worker), { received: 1, stored: 0, duplicates: 1, deadLettered: 0 });
    assert.equal(await storedCount(setup.service), 2);
  } finally {
    await setup.stop();
  }
});

test('a record that can never be stored goes to the dead letters with its reason; the others are stored', async () => {
  const setup = await setUp('poison', { INGEST_WORKER_BATCH_SIZE: '50' });
  try {
    // A rule of the database that validation does not know: the worker learns of it only from the store's refusal.
    await setup.service.sql(
      "ALTER TABLE user_metrics ADD CONSTRAINT tqueue_no_poison CHECK (user_id <> 'poison-user')",
    );
    const records = Array.from({ length: 20 }, (_, i) =>
      record({ eventId: `p-${i}`, userId: i === 13 ? 'poison-user' : `user-${i}` }),
    );
    const answer = await setup.service.gql(QUEUED_INGEST, { records });
    assert.equal(answer.ingestMetrics.queued, 20);
    // Other producers' mistakes: not JSON, not a record, a record breaking a rule.
    const js = jetstream((await broker()).nc);
    const subject = `${setup.env.INGEST_QUEUE_SUBJECT}.sensors`;
    await js.publish(subject, '{"userId": "u", "sessi');
    await js.publish(subject, JSON.stringify({ ...record(), talkedTime: 'long' }));
    await js.publish(subject, JSON.stringify(record({ eventId: 'future', timestamp: nowSeconds() + 7 * 86_400 })));

    const done = await drain(setup.worker);
    assert.deepEqual(done, { received: 23, stored: 19, duplicates: 0, deadLettered: 4 });
    assert.equal(await storedCount(setup.service), 19);
    const [poisoned] = await setup.service.sql(
      "SELECT count(*)::int AS n FROM user_metrics WHERE user_id = 'poison-user'",
    );
    assert.equal(poisoned?.n, 0);

    const dead = await deadLetters(`${setup.env.INGEST_QUEUE_STREAM}_DEAD`);
    const byCode = dead.map((d) => d.reason.code).sort();
    assert.deepEqual(byCode, ['INVALID_RECORD', 'INVALID_RECORD', 'NOT_JSON', 'STORE_FAILED']);
    const storeFailed = dead.find((d) => d.reason.code === 'STORE_FAILED');
    assert.match(storeFailed?.reason.message ?? '', /tqueue_no_poison/);
    assert.equal(JSON.parse(storeFailed?.record ?? '{}').userId, 'poison-user');
    const codes = dead.flatMap((d) => d.reason.problems?.map((p) => p.code) ?? []).sort();
    assert.deepEqual(codes, ['TIMESTAMP_IN_FUTURE', 'WRONG_TYPE']);
    assert.equal(await metricValue(setup.service.url, 'ingest_queue_dead_letters'), 4);

    // The stream keeps flowing: a new record after the poison one is stored.
    await setup.service.gql(QUEUED_INGEST, { records: [record({ eventId: 'after' })] });
    assert.equal((await drain(setup.worker)).stored, 1);
  } finally {
    await setup.stop();
  }
});

test('a full stream answers 503 QUEUE_FULL with Retry-After, never a silent drop', async () => {
  const setup = await setUp('full', { INGEST_QUEUE_MAX_MESSAGES: '3' });
  try {
    const first = await setup.service.gql(QUEUED_INGEST, {
      records: [record({ eventId: 'f-1' }), record({ eventId: 'f-2' })],
    });
    assert.equal(first.ingestMetrics.queued, 2);
    const refused = await setup.service.request(QUEUED_INGEST, {
      records: [record({ eventId: 'f-3' }), record({ eventId: 'f-4' })],
    });
    assert.equal(refused.status, 503, JSON.stringify(refused));
    assert.equal(refused.errors?.[0]?.extensions?.code, 'QUEUE_FULL');
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    assert.match(refused.errors?.[0]?.message ?? '', /full/);

    // The worker makes room; the client's retry of the refused batch is taken whole (f-3, queued before the
    // refusal, is dropped by the broker as a resend).
    assert.equal((await drain(setup.worker)).stored, 3);
    const retried = await setup.service.gql(QUEUED_INGEST, {
      records: [record({ eventId: 'f-3' }), record({ eventId: 'f-4' })],
    });
    assert.equal(retried.ingestMetrics.queued + retried.ingestMetrics.duplicates, 2);
    await drain(setup.worker);
    const rows = await setup.service.sql<{ event_id: string }>('SELECT event_id FROM user_metrics ORDER BY event_id');
    assert.deepEqual(
      rows.map((r) => r.event_id),
      ['f-1', 'f-2', 'f-3', 'f-4'],
    );
  } finally {
    await setup.stop();
  }
});

test('a broker out of reach answers 503 UNAVAILABLE with Retry-After; the retried batch is queued once', async () => {
  const nats = new URL(NATS_URL);
  const proxy = await FaultProxy.start({ host: nats.hostname, port: Number(nats.port || 4222) });
  const setup = await setUp('unreachable', { INGEST_QUEUE: `nats://127.0.0.1:${proxy.port}` });
  try {
    const records = Array.from({ length: 10 }, (_, i) => record({ eventId: `u-${i}` }));
    // Nothing reaches the broker (held, as a network that drops packets would, and delivered when it heals).
    proxy.blackhole(120_000);
    const refused = await setup.service.request(QUEUED_INGEST, { records });
    assert.equal(refused.status, 503, JSON.stringify(refused));
    assert.equal(refused.errors?.[0]?.extensions?.code, 'UNAVAILABLE');
    assert.match(refused.headers.get('retry-after') ?? '', /^\d+$/);
    const ready = await fetch(`${setup.service.url}/ready`);
    assert.equal(ready.status, 503);
    assert.deepEqual(await ready.json(), { ready: false, reason: 'ingest queue unreachable', database: 'up' });

    proxy.heal();
    // The held publishes may land after all: the client's retry of the refused batch is then dropped as resends.
    const retried = await setup.service.gql(QUEUED_INGEST, { records });
    assert.equal(retried.ingestMetrics.queued + retried.ingestMetrics.duplicates, 10);
    assert.equal((await drain(setup.worker)).stored, 10);
    assert.equal(await storedCount(setup.service), 10);
  } finally {
    await setup.stop();
    await proxy.close();
  }
});

test('a record another producer published to its own subject is stored', async () => {
  const setup = await setUp('producer');
  try {
    const js = jetstream((await broker()).nc);
    const sent = record({ eventId: 'billing-1', userId: 'from-billing' });
    const ack = await js.publish(`${setup.env.INGEST_QUEUE_SUBJECT}.billing`, JSON.stringify(sent), {
      msgID: recordKeyHex(sent as never),
    });
    assert.equal(ack.duplicate, false);
    // The import's snake_case names are taken too.
    const snake = {
      event_id: 'billing-2',
      user_id: 'from-billing',
      session_id: 's',
      timestamp: nowSeconds() - 60,
      talked_time: 5,
      microphone_used: false,
      speaker_used: true,
    };
    await js.publish(`${setup.env.INGEST_QUEUE_SUBJECT}.billing`, JSON.stringify(snake));
    assert.deepEqual(await drain(setup.worker), { received: 2, stored: 2, duplicates: 0, deadLettered: 0 });
    const rows = await setup.service.sql<{ event_id: string; user_id: string }>(
      'SELECT event_id, user_id FROM user_metrics ORDER BY event_id',
    );
    assert.deepEqual(rows, [
      { event_id: 'billing-1', user_id: 'from-billing' },
      { event_id: 'billing-2', user_id: 'from-billing' },
    ]);
  } finally {
    await setup.stop();
  }
});

const noOwnPostgres = ownPostgresUnavailable();

test('with PostgreSQL stopped, batches are still acknowledged; after its restart every one is stored exactly once', {
  skip: noOwnPostgres,
}, async () => {
  const pg = await PgServer.start();
  let setup: Setup | undefined;
  try {
    await pg.sql('CREATE DATABASE zz_queue_outage');
    setup = await setUp('outage', {
      DATABASE_URL: pg.url('zz_queue_outage'),
      AUTH: 'on',
      DB_CONNECT_TIMEOUT_MS: '1000',
      INGEST_WORKER_BATCH_SIZE: '40',
    });
    const { key } = await createApiKey({ name: 'outage', scopes: ['ingest'] });
    const auth = { authorization: `Bearer ${key}` };
    const batch = (n: number) =>
      Array.from({ length: 25 }, (_, i) => record({ eventId: `o-${n}-${i}`, userId: `user-${i % 4}` }));
    const send = async (n: number) => {
      const answer = await setup?.service.request(QUEUED_INGEST, { records: batch(n) }, auth);
      assert.equal(answer?.status, 200, JSON.stringify(answer));
      assert.equal(answer?.data?.ingestMetrics.status, 'QUEUED');
      return answer?.data?.ingestMetrics.queued as number;
    };

    const running = setup.worker.run();
    let acknowledged = await send(0);
    await waitFor(async () => (await pg.sql<{ n: number }>(COUNT, [], 'zz_queue_outage'))[0]?.n === 25);

    await pg.stopServer('immediate');
    for (let n = 1; n <= 4; n++) acknowledged += await send(n);
    // The verified key was taken from the short-lived cache; a key the database never confirmed cannot be.
    const unverified = await setup.service.request(
      QUEUED_INGEST,
      { records: batch(9) },
      { authorization: `Bearer mk_${'x'.repeat(43)}` },
    );
    assert.equal(unverified.status, 503, JSON.stringify(unverified));
    assert.equal(unverified.errors?.[0]?.extensions?.code, 'UNAVAILABLE');
    // A resend of an acknowledged batch while the database is down: dropped by the broker, stored once later.
    const resent = await setup.service.request(QUEUED_INGEST, { records: batch(2) }, auth);
    assert.equal(resent.data?.ingestMetrics.duplicates, 25, JSON.stringify(resent));
    const ready = await fetch(`${setup.service.url}/ready`);
    assert.equal(ready.status, 200);
    const readiness = (await ready.json()) as { database: string; queue: { pending: number } };
    assert.equal(readiness.database, 'unreachable');
    assert.equal(readiness.queue.pending, 100, 'the four batches wait in the queue');

    await pg.startServer();
    await waitFor(async () => (await pg.sql<{ n: number }>(COUNT, [], 'zz_queue_outage'))[0]?.n === acknowledged);
    assert.equal(acknowledged, 125);
    const repeated = await pg.sql(
      'SELECT event_id, count(*) FROM user_metrics GROUP BY event_id HAVING count(*) > 1',
      [],
      'zz_queue_outage',
    );
    assert.deepEqual(repeated, [], 'no record is stored twice');
    await setup.worker.stop();
    await running;
    assert.equal((await setup.queue.backlog()).pending, 0);
    assert.equal((await setup.queue.backlog()).deadLetters, 0, 'the outage set no record aside');
  } finally {
    if (!pg.isRunning) await pg.startServer();
    await setup?.stop();
    await pg.destroy();
  }
});

const COUNT = 'SELECT count(*)::int AS n FROM user_metrics';

/** Polls `condition` until it holds (a generous bound, not a timing assertion: the work has no deadline). */
async function waitFor(condition: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`condition still false after ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

test('INGEST_WORKER_IN_PROCESS: the service stores what it queued itself (the embedded database way)', async () => {
  const env = queueEnv('inprocess', { AUTH: 'off', INGEST_WORKER_IN_PROCESS: 'true' });
  const service = await startTestService(env);
  try {
    const records = Array.from({ length: 30 }, (_, i) => record({ eventId: `i-${i}` }));
    const answer = await service.gql(QUEUED_INGEST, { records });
    assert.equal(answer.ingestMetrics.status, 'QUEUED');
    assert.equal(answer.ingestMetrics.queued, 30);
    await waitFor(async () => (await storedCount(service)) === 30);
    const ready = (await (await fetch(`${service.url}/ready`)).json()) as { queue: { pending: number } };
    assert.equal(ready.queue.pending, 0);
  } finally {
    await service.stop();
  }
});

test('without INGEST_QUEUE the answer says STORED, and the records are readable at once', async () => {
  const service = await startTestService({ AUTH: 'off' });
  try {
    const answer = await service.gql(QUEUED_INGEST, {
      records: [record({ eventId: 'd-1' }), record({ eventId: 'd-1' })],
    });
    assert.deepEqual(answer.ingestMetrics, { status: 'STORED', accepted: 1, queued: 0, duplicates: 1, rejected: [] });
    assert.equal(await storedCount(service), 1);
    assert.equal((await fetch(`${service.url}/ready`)).status, 200);
  } finally {
    await service.stop();
  }
});

test('INGEST_QUEUE settings are validated with messages naming them', () => {
  assert.throws(() => loadConfig({ INGEST_QUEUE: 'http://x' }), /INGEST_QUEUE must be a nats:\/\/ URL/);
  assert.throws(() => loadConfig({ INGEST_QUEUE_STREAM: 'S' }), /INGEST_QUEUE_STREAM set without INGEST_QUEUE/);
  assert.throws(
    () => loadConfig({ INGEST_QUEUE: NATS_URL, INGEST_QUEUE_STREAM: 'a.b' }),
    /INGEST_QUEUE_STREAM="a.b" must be/,
  );
  assert.throws(
    () => loadConfig({ INGEST_QUEUE: NATS_URL, INGEST_QUEUE_SUBJECT: 'metrics.*' }),
    /INGEST_QUEUE_SUBJECT="metrics.\*" must be dot-separated/,
  );
  assert.throws(
    () => loadConfig({ INGEST_QUEUE: NATS_URL, INGEST_QUEUE_DEAD_LETTER_SUBJECT: 'metrics.ingest.dead' }),
    /must not overlap/,
  );
  assert.throws(
    () => loadConfig({ INGEST_QUEUE: NATS_URL, INGEST_WORKER_BATCH_SIZE: '0' }),
    /INGEST_WORKER_BATCH_SIZE/,
  );
  const config = loadConfig({ INGEST_QUEUE: NATS_URL });
  assert.equal(config.ingestQueue?.stream, 'METRICS_INGEST');
  assert.equal(config.ingestQueue?.deadLetterStream, 'METRICS_INGEST_DEAD');
  assert.equal(loadConfig({}).ingestQueue, undefined);
});
