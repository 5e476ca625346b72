/**
 * The `metricIngested` subscription over HTTP as a client sees it: server-sent events read with fetch
 * (`accept: text/event-stream`). What arrives is checked against the rows the database stored (by SQL) and against
 * `metric(id)`; which records should arrive is decided by the test's own predicates, not the service's filter code.
 *
 * With TEST_DATABASE_URL the service runs with Redis (TEST_REDIS_URL, default redis://127.0.0.1:6379, a channel prefix
 * of this run's own), and a second instance runs as a child process on the same database: records ingested through
 * one arrive at the other. The embedded database belongs to one process, so that test needs PostgreSQL.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';
import { createLogger } from '../src/logger.js';
import { createMetricEvents, SubscriberTooSlowError } from '../src/services/events.js';
import { INGEST, nowSeconds, record, startTestService, type TestService, usingPostgres } from './support/harness.js';
import { sseEvents } from './support/http-client.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const CHANNEL_PREFIX = `metrics-test-${crypto.randomUUID()}:`;
const EVENT_TIMEOUT_MS = 10_000;
/** How long "nothing else arrives" is watched for. */
const QUIET_MS = 400;

const FIELDS =
  'id eventId userId sessionId timestamp occurredAt talkedTime microphoneUsed speakerUsed voiceSentiment createdAt';
const SUBSCRIPTION = /* GraphQL */ `
  subscription Live($where: MetricFilter) { metricIngested(where: $where) { ${FIELDS} } }`;

interface Metric {
  id: string;
  eventId: string | null;
  userId: string;
  sessionId: string;
  timestamp: number;
  talkedTime: number;
  microphoneUsed: boolean;
  speakerUsed: boolean;
  voiceSentiment: string | null;
  createdAt: string;
}

interface SseEvent {
  data?: { metricIngested: Metric } | null;
  errors?: { message: string; extensions?: Record<string, unknown> }[];
}

/** One subscription's event stream. */
interface Stream {
  /** The next `next` event; fails after `timeoutMs` or when the stream ends. */
  next(timeoutMs?: number): Promise<SseEvent>;
  /** The next `count` records, in the order they arrive. */
  records(count: number): Promise<Metric[]>;
  /** Fails if any event arrives within `ms`. */
  quiet(ms?: number): Promise<void>;
  /** Whether the server sent `complete`. */
  completed(): boolean;
  close(): void;
}

async function subscribe(baseUrl: string, where?: Record<string, unknown>): Promise<Stream> {
  const controller = new AbortController();
  const response = await fetch(`${baseUrl}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ query: SUBSCRIPTION, variables: { where } }),
    signal: controller.signal,
  });
  assert.equal(response.status, 200, await (response.status === 200 ? Promise.resolve('') : response.text()));
  assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const body = response.body;
  assert.ok(body, 'the response has a body');

  const events: SseEvent[] = [];
  let waiter: (() => void) | undefined;
  let ended = false;
  let complete = false;
  const wake = () => {
    const w = waiter;
    waiter = undefined;
    w?.();
  };
  void (async () => {
    try {
      for await (const { type, data } of sseEvents(body)) {
        if (type === 'next') events.push(JSON.parse(data) as SseEvent);
        else if (type === 'complete') complete = true;
        wake();
      }
    } catch {
      // aborted by close()
    }
    ended = true;
    wake();
  })();

  const next = async (timeoutMs = EVENT_TIMEOUT_MS): Promise<SseEvent> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const event = events.shift();
      if (event) return event;
      if (ended) throw new Error('The event stream ended');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`No event within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  };
  return {
    next,
    async records(count) {
      const out: Metric[] = [];
      while (out.length < count) {
        const event = await next().catch((error: Error) => {
          throw new Error(
            `${error.message} after ${out.length} of ${count} records: ${JSON.stringify(out.map((m) => m.id))}`,
          );
        });
        assert.ok(event.data?.metricIngested, `a record, not ${JSON.stringify(event)}`);
        out.push(event.data.metricIngested);
      }
      return out;
    },
    async quiet(ms = QUIET_MS) {
      const event = await next(ms).catch(() => undefined);
      assert.equal(event, undefined, `nothing else arrives, but got ${JSON.stringify(event)}`);
    },
    completed: () => complete,
    close: () => controller.abort(),
  };
}

let service: TestService;
/** Set by the test that stops the service itself. */
let serviceStopped = false;
const streams: Stream[] = [];
let second: ServiceProcess | undefined;

before(async () => {
  service = await startTestService(usingPostgres ? { REDIS_URL, REDIS_CHANNEL_PREFIX: CHANNEL_PREFIX } : {});
});
after(async () => {
  for (const stream of streams) stream.close();
  await second?.kill();
  if (!serviceStopped) await service?.stop();
});

async function open(where?: Record<string, unknown>, baseUrl = service.url): Promise<Stream> {
  const stream = await subscribe(baseUrl, where);
  streams.push(stream);
  return stream;
}

let counter = 0;
/** A valid record with an eventId of its own. */
function fresh(overrides: Record<string, unknown> = {}): Record<string, unknown> & { eventId: string } {
  counter++;
  return record({
    eventId: `live-${counter}`,
    timestamp: nowSeconds() - 600 + counter,
    talkedTime: counter % 500,
    ...overrides,
  }) as Record<string, unknown> & {
    eventId: string;
  };
}

async function ingest(records: Record<string, unknown>[], options: { atomic?: boolean; url?: string } = {}) {
  if (!options.url) return (await service.gql(INGEST, { records, atomic: options.atomic })).ingestMetrics;
  const response = await fetch(`${options.url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: INGEST, variables: { records, atomic: options.atomic } }),
  });
  const body = (await response.json()) as { data?: { ingestMetrics: unknown }; errors?: unknown };
  assert.ok(body.data, JSON.stringify(body));
  return body.data.ingestMetrics as { accepted: number; duplicates: number; rejected: unknown[] };
}

/** The stored ids of these eventIds, in the order stored. */
async function storedIds(eventIds: string[]): Promise<string[]> {
  const rows = await service.sql<{ id: number }>(
    'SELECT id FROM user_metrics WHERE event_id = ANY($1::text[]) ORDER BY id',
    [eventIds],
  );
  return rows.map((r) => String(r.id));
}

/** What the metric(id) query returns for these ids: the subscription must deliver the same records. */
async function asQueried(ids: string[]): Promise<Metric[]> {
  const out: Metric[] = [];
  for (const id of ids)
    out.push((await service.gql(`query ($id: ID!) { metric(id: $id) { ${FIELDS} } }`, { id })).metric as Metric);
  return out;
}

test('receives what is stored after it subscribes, each record once, in the order stored', async () => {
  const before = fresh();
  assert.equal((await ingest([before])).accepted, 1);
  const stream = await open();
  const first = Array.from({ length: 7 }, () => fresh({ userId: `u-${counter % 3}` }));
  const later = Array.from({ length: 4 }, () => fresh());
  assert.equal((await ingest(first)).accepted, 7);
  assert.equal((await ingest(later)).accepted, 4);
  const received = await stream.records(11);
  // Within a batch the service inserts in its own order: the order stored is the id order, batch after batch.
  const expectedIds = [
    ...(await storedIds(first.map((r) => r.eventId))),
    ...(await storedIds(later.map((r) => r.eventId))),
  ];
  assert.deepEqual(
    received.map((m) => m.id),
    expectedIds,
  );
  assert.deepEqual(received, await asQueried(expectedIds));
  assert.ok(!received.some((m) => m.eventId === before.eventId), 'what was stored before subscribing is not sent');
  await stream.quiet();
  stream.close();
});

test('only records matching its filter; several subscribers each get their own', async () => {
  const byUser = await open({ userId: { equals: 'filter-a' }, voiceSentiment: { isNull: true } });
  const byOr = await open({
    OR: [{ talkedTime: { gte: 400 } }, { speakerUsed: true, sessionId: { startsWith: 'sess-x' } }],
  });
  const everything = await open();
  const records = Array.from({ length: 24 }, (_, i) =>
    fresh({
      userId: i % 2 === 0 ? 'filter-a' : 'filter-b',
      sessionId: i % 3 === 0 ? `sess-x${i}` : `sess-y${i}`,
      talkedTime: (i * 37) % 800,
      speakerUsed: i % 4 < 2,
      voiceSentiment: i % 5 === 0 ? null : 'positive',
    }),
  );
  assert.equal((await ingest(records)).accepted, records.length);
  const ids = await storedIds(records.map((r) => r.eventId));
  const rows = await asQueried(ids);
  const expectA = rows.filter((m) => m.userId === 'filter-a' && m.voiceSentiment === null);
  const expectOr = rows.filter((m) => m.talkedTime >= 400 || (m.speakerUsed && m.sessionId.startsWith('sess-x')));
  assert.ok(
    expectA.length > 0 && expectA.length < rows.length && expectOr.length > 0 && expectOr.length < rows.length,
    'the filters select some, not all',
  );
  assert.deepEqual(await byUser.records(expectA.length), expectA);
  assert.deepEqual(await byOr.records(expectOr.length), expectOr);
  assert.deepEqual(await everything.records(rows.length), rows);
  await Promise.all([byUser.quiet(), byOr.quiet(), everything.quiet()]);
  for (const s of [byUser, byOr, everything]) s.close();
});

test('duplicates and rejected records are never sent', async () => {
  const stored = fresh();
  assert.equal((await ingest([stored])).accepted, 1);
  const stream = await open();
  const valid = fresh();
  const result = await ingest([
    stored, // stored before: a duplicate
    valid,
    fresh({ talkedTime: -1 }), // rejected
    { ...valid }, // repeated within the batch
    fresh({ userId: '' }), // rejected
  ]);
  assert.deepEqual([result.accepted, result.duplicates, result.rejected.length], [1, 2, 2]);
  // An atomic batch with one rejected record stores nothing, so sends nothing.
  const atomic = await ingest([fresh(), fresh({ timestamp: 1 })], { atomic: true });
  assert.equal(atomic.accepted, 0);
  const marker = fresh();
  await ingest([marker]);
  const received = await stream.records(2);
  assert.deepEqual(
    received.map((m) => m.eventId),
    [valid.eventId, marker.eventId],
    'only the one new valid record, then the marker',
  );
  await stream.quiet();
  stream.close();
});

test('a filter the metrics query would refuse is refused here too', async () => {
  const stream = await open({ userId: { in: Array.from({ length: 1001 }, (_, i) => `u${i}`) } });
  const event = await stream.next();
  assert.equal(event.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(event));
  assert.match(event.errors?.[0]?.message ?? '', /where\.userId\.in has 1001 values/);
  stream.close();
});

test('two instances sharing Redis: records ingested through either reach subscribers of both, once each, in order', {
  skip: usingPostgres ? false : 'needs TEST_DATABASE_URL: two service processes cannot share the embedded database',
}, async () => {
  assert.ok(service.config.databaseUrl, 'the service runs on PostgreSQL');
  second = await startServiceProcess({
    DATABASE_URL: service.config.databaseUrl,
    REDIS_URL,
    REDIS_CHANNEL_PREFIX: CHANNEL_PREFIX,
    SHUTDOWN_TIMEOUT_MS: '2000',
  });
  assert.match(second.output(), /"liveUpdates":"redis"/, 'the second instance uses Redis');
  const onFirst = await open();
  const onSecond = await open(undefined, second.url);
  const filteredOnSecond = await open({ userId: { equals: 'remote-b' } }, second.url);

  const batches = [
    {
      via: undefined,
      records: Array.from({ length: 5 }, (_, i) => fresh({ userId: i % 2 ? 'remote-a' : 'remote-b' })),
    },
    {
      via: second.url,
      records: Array.from({ length: 6 }, (_, i) => fresh({ userId: i % 2 ? 'remote-a' : 'remote-b' })),
    },
    { via: undefined, records: Array.from({ length: 3 }, () => fresh({ userId: 'remote-b' })) },
  ];
  const expectedIds: string[] = [];
  for (const batch of batches) {
    assert.equal((await ingest(batch.records, { url: batch.via })).accepted, batch.records.length);
    expectedIds.push(...(await storedIds(batch.records.map((r) => r.eventId))));
  }
  // A batch sent again through the other instance: all duplicates, nothing sent.
  assert.equal((await ingest(batches[0]?.records ?? [], { url: second.url })).duplicates, 5);

  const rows = await asQueried(expectedIds);
  assert.deepEqual(await onFirst.records(rows.length), rows);
  assert.deepEqual(await onSecond.records(rows.length), rows);
  const remoteB = rows.filter((m) => m.userId === 'remote-b');
  assert.deepEqual(await filteredOnSecond.records(remoteB.length), remoteB);
  await Promise.all([onFirst.quiet(), onSecond.quiet(), filteredOnSecond.quiet()]);
  for (const s of [onFirst, onSecond, filteredOnSecond]) s.close();
  await second.kill();
});

test('the live-update hub: registered on subscribe, a reader too far behind is dropped with a clear error', async () => {
  // A hub of its own beside the service's, on the same database: it finds what the service stores by its poll.
  const events = await createMetricEvents({
    channelPrefix: 'unused:',
    logger: createLogger('silent'),
    maxQueuedPerSubscriber: 3,
    pollIntervalMs: 20,
  });
  const hub = (n: number) => fresh({ userId: 'hub', talkedTime: n });
  const odd = await events.subscribe((m) => m.userId === 'hub' && m.talkedTime % 2 === 1);
  const slow = await events.subscribe((m) => m.userId === 'hub');
  // Stored before anything was read: still delivered, since a subscription counts from when it is made.
  assert.equal((await ingest([hub(1), hub(2), hub(3)])).accepted, 3);
  assert.deepEqual([(await odd.next()).value?.talkedTime, (await odd.next()).value?.talkedTime], [1, 3]);
  assert.equal((await ingest([hub(4), hub(5)])).accepted, 2);
  assert.equal((await odd.next()).value?.talkedTime, 5);
  // `slow` never read: 5 records waiting, more than 3.
  await assert.rejects(
    slow.next(),
    (error: unknown) => error instanceof SubscriberTooSlowError && error.code === 'SUBSCRIBER_TOO_SLOW',
  );
  assert.deepEqual(await slow.next(), { value: undefined, done: true });
  await odd.return?.();
  await ingest([hub(7)]);
  assert.deepEqual(await odd.next(), { value: undefined, done: true }, 'nothing after return()');
  await events.stop();
});

test('stopping the service ends open subscriptions instead of waiting for them', async () => {
  const stream = await open();
  const started = Date.now();
  const stopped = service.app.stop();
  // The server completes the stream (`event: complete`), then the connection ends.
  await stream.next(3000).catch(() => undefined);
  const elapsed = Date.now() - started;
  assert.ok(stream.completed(), 'the stream was completed by the server');
  assert.ok(elapsed < 2000, `completed ${elapsed} ms after stop began (the shutdown timeout is 5,000 ms)`);
  await stopped;
  await service.stop();
  serviceStopped = true;
});
