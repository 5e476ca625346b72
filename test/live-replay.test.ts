/**
 * `metricIngested` loses nothing: a subscriber that resumes with the `cursor` of the last record it received gets
 * every matching record stored since, once each, in stream order ((txid, id): the transaction that stored a record,
 * then its id), then goes on live. What arrives is compared with the table (read by SQL, ordered by the test, and
 * filtered with the test's own predicates rather than the service's filter code).
 *
 * The first tests run on both databases; the last two need PostgreSQL: a transaction held open beside the service,
 * and two service instances (this process and a child) sharing a private Redis server that the test restarts.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { INGEST, nowSeconds, record, startTestService, type TestService, usingPostgres } from './support/harness.js';
import { sseEvents } from './support/http-client.js';
import { freePort } from './support/pg-server.js';
import { RedisServer } from './support/redis-server.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

const EVENT_TIMEOUT_MS = 20_000;
/** How long "nothing else arrives" is watched for. */
const QUIET_MS = 500;
const POLL_MS = '100';

interface Metric {
  id: string;
  eventId: string | null;
  userId: string;
  sessionId: string;
  talkedTime: number;
  speakerUsed: boolean;
  cursor: string;
}

const SUBSCRIPTION = /* GraphQL */ `
  subscription Live($where: MetricFilter, $after: String) {
    metricIngested(where: $where, after: $after) { id eventId userId sessionId talkedTime speakerUsed cursor }
  }`;

/** One subscription's SSE stream, read as it arrives into `received`. */
class Subscriber {
  readonly received: Metric[] = [];
  readonly errors: { message: string; extensions?: Record<string, unknown> }[] = [];
  completed = false;
  ended = false;
  private wake: (() => void) | undefined;
  private readonly controller = new AbortController();

  private constructor(readonly label: string) {}

  static async open(label: string, baseUrl: string, where?: Record<string, unknown>, after?: string) {
    const subscriber = new Subscriber(label);
    const response = await fetch(`${baseUrl}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify({ query: SUBSCRIPTION, variables: { where, after } }),
      signal: subscriber.controller.signal,
    });
    assert.equal(response.status, 200, `${label}: ${response.status === 200 ? '' : await response.text()}`);
    assert.ok(response.body, 'the response has a body');
    void subscriber.read(response.body);
    return subscriber;
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const { type, data } of sseEvents(body)) {
        if (type === 'next') {
          const event = JSON.parse(data) as { data?: { metricIngested: Metric }; errors?: Subscriber['errors'] };
          if (event.data?.metricIngested) this.received.push(event.data.metricIngested);
          if (event.errors) this.errors.push(...event.errors);
        } else if (type === 'complete') this.completed = true;
        this.notify();
      }
    } catch {
      // aborted by close()
    }
    this.ended = true;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Waits until `count` records (or an error) have arrived; fails after EVENT_TIMEOUT_MS. */
  async waitFor(count: number): Promise<void> {
    const deadline = Date.now() + EVENT_TIMEOUT_MS;
    while (this.received.length < count && this.errors.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0 || this.ended)
        throw new Error(
          `${this.label}: ${this.received.length} of ${count} records after ${EVENT_TIMEOUT_MS} ms` +
            `${this.ended ? ' (the stream ended)' : ''}`,
        );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    assert.deepEqual(this.errors, [], `${this.label}: no error`);
  }

  /** Fails if anything more than `count` records arrives within QUIET_MS. */
  async quietAt(count: number): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, QUIET_MS));
    assert.equal(this.received.length, count, `${this.label}: nothing else arrives`);
    assert.deepEqual(this.errors, [], `${this.label}: no error`);
  }

  /** Waits for the stream to end (the server completing it, or the connection closing). */
  async closed(): Promise<void> {
    while (!this.ended) await new Promise<void>((resolve) => (this.wake = resolve));
  }

  close(): void {
    this.controller.abort();
  }
}

let service: TestService;
const subscribers: Subscriber[] = [];

before(async () => {
  service = await startTestService({ LIVE_POLL_INTERVAL_MS: POLL_MS });
});
after(async () => {
  for (const subscriber of subscribers) subscriber.close();
  await service?.stop();
});

async function open(label: string, where?: Record<string, unknown>, after?: string, url = service.url) {
  const subscriber = await Subscriber.open(label, url, where, after);
  subscribers.push(subscriber);
  return subscriber;
}

let counter = 0;
/** A valid record with an eventId of its own. */
function fresh(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  counter++;
  return record({
    eventId: `replay-${counter}`,
    userId: `u${counter % 4}`,
    timestamp: nowSeconds() - 900 + (counter % 600),
    talkedTime: (counter * 37) % 500,
    speakerUsed: counter % 3 === 0,
    ...overrides,
  });
}

async function ingest(records: Record<string, unknown>[], url = service.url) {
  const response = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ query: INGEST, variables: { records } }),
  });
  const body = (await response.json()) as {
    data?: { ingestMetrics: { accepted: number; duplicates: number; rejected: unknown[] } };
  };
  assert.ok(body.data, `ingest through ${url}: ${JSON.stringify(body)}`);
  assert.deepEqual(body.data.ingestMetrics.rejected, [], 'every record is valid');
  return body.data.ingestMetrics;
}

interface Row {
  id: string;
  user_id: string;
  session_id: string;
  talked_time: number;
  speaker_used: boolean;
}

/** The stored rows of these sessions in stream order, as the test reads them. */
async function storedInStreamOrder(sessionPrefix: string): Promise<Row[]> {
  return service.sql<Row>(
    `SELECT id::text AS id, user_id, session_id, talked_time, speaker_used FROM user_metrics
     WHERE starts_with(session_id, $1) ORDER BY txid, user_metrics.id`,
    [sessionPrefix],
  );
}

const ids = (rows: readonly { id: string }[]) => rows.map((r) => r.id);

test('a subscriber that resumes after its last cursor gets every matching record since, in order, then live', async () => {
  const where = { sessionId: { startsWith: 'resume-' }, talkedTime: { gte: 100 } };
  const matches = (r: Row) => r.session_id.startsWith('resume-') && r.talked_time >= 100;
  assert.equal((await ingest([fresh({ sessionId: 'resume-before' })])).accepted, 1);
  const first = await open('first', where);
  for (let batch = 0; batch < 3; batch++)
    await ingest(Array.from({ length: 6 }, () => fresh({ sessionId: `resume-a${batch}` })));
  const expectedFirst = (await storedInStreamOrder('resume-a')).filter(matches);
  assert.ok(expectedFirst.length >= 6, `enough records match (${expectedFirst.length})`);
  await first.waitFor(expectedFirst.length);
  await first.quietAt(expectedFirst.length);
  assert.deepEqual(ids(first.received), ids(expectedFirst), 'what was stored before subscribing is not sent');
  first.close();

  // The client handled only part of what it received; meanwhile more is stored, matching and not.
  const handled = first.received.slice(0, -2);
  const lastHandled = handled.at(-1);
  assert.ok(lastHandled);
  for (let batch = 0; batch < 3; batch++)
    await ingest(Array.from({ length: 5 }, () => fresh({ sessionId: `resume-b${batch}` })));
  const resumed = await open('resumed', where, lastHandled.cursor);
  const since = (await storedInStreamOrder('resume-'))
    .filter(matches)
    .slice(ids((await storedInStreamOrder('resume-')).filter(matches)).indexOf(lastHandled.id) + 1);
  await resumed.waitFor(since.length);
  // Then live: records stored after it resumed follow, in order.
  await ingest(Array.from({ length: 5 }, () => fresh({ sessionId: 'resume-c' })));
  const all = (await storedInStreamOrder('resume-')).filter(matches);
  const expectedResumed = all.slice(ids(all).indexOf(lastHandled.id) + 1);
  assert.ok(expectedResumed.length > since.length, 'some records came live');
  await resumed.waitFor(expectedResumed.length);
  await resumed.quietAt(expectedResumed.length);
  assert.deepEqual(ids(resumed.received), ids(expectedResumed));
  assert.deepEqual(ids([...handled, ...resumed.received]), ids(all.filter((r) => r.session_id !== 'resume-before')));
  assert.ok(
    resumed.received.every((m) => m.cursor && m.sessionId.startsWith('resume-') && m.talkedTime >= 100),
    'every record carries its cursor and matches',
  );

  // Resuming from the last record there is: nothing until something new is stored.
  const caughtUp = await open('caught up', where, resumed.received.at(-1)?.cursor);
  await caughtUp.quietAt(0);
  await ingest([fresh({ sessionId: 'resume-d', talkedTime: 300 })]);
  await caughtUp.waitFor(1);
  assert.equal(caughtUp.received[0]?.sessionId, 'resume-d');
  for (const s of [resumed, caughtUp]) s.close();
});

test('a cursor that is not one the stream gave is refused with a clear error', async () => {
  const forged = Buffer.from('m1:12:x').toString('base64url');
  for (const cursor of ['not a cursor', forged, 'bTE6MTI6MA', 'A'.repeat(200)]) {
    const subscriber = await open(`bad ${cursor.slice(0, 10)}`, undefined, cursor);
    await subscriber.closed();
    assert.equal(subscriber.errors[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(subscriber.errors));
    assert.match(subscriber.errors[0]?.message ?? '', /^after is not a cursor of metricIngested/);
  }
});

test('a batch that commits after one with larger ids comes after it, and a resume after that one still gets it', async () => {
  // Ids are taken before commit: here the id of `late` is taken first, `early` is stored (larger id, committed
  // first), then `late` is stored with its id. In stream order `early` comes first; a client that resumed "after the
  // id of `early`" would never see `late`, one that resumes after its cursor does.
  const stream = await open('order', { sessionId: { startsWith: 'order-' } });
  const [reserved] = await service.sql<{ id: number }>(`SELECT nextval('user_metrics_id_seq') AS id`);
  assert.ok(reserved);
  const early = fresh({ sessionId: 'order-early' });
  assert.equal((await ingest([early])).accepted, 1);
  // Its time's partition exists now: the direct INSERT below uses the same time.
  await stream.waitFor(1);
  await service.sql(
    `INSERT INTO user_metrics (id, record_key, event_id, user_id, session_id, "timestamp", talked_time,
       microphone_used, speaker_used)
     VALUES ($1, sha256(convert_to('order-late', 'UTF8')), 'order-late', 'u1', 'order-late', $2, 5, true, false)`,
    [reserved.id, early.timestamp],
  );
  await stream.waitFor(2);
  const stored = await storedInStreamOrder('order-');
  assert.deepEqual(
    stored.map((r) => r.session_id),
    ['order-early', 'order-late'],
  );
  assert.ok(Number(stored[1]?.id) < Number(stored[0]?.id), 'the later one has the smaller id');
  assert.deepEqual(ids(stream.received), ids(stored));
  const resumed = await open('order resumed', { sessionId: { startsWith: 'order-' } }, stream.received[0]?.cursor);
  await resumed.waitFor(1);
  await resumed.quietAt(1);
  assert.equal(resumed.received[0]?.sessionId, 'order-late');
  for (const s of [stream, resumed]) s.close();
});

test('a record is not delivered while an older transaction that may store before it is still open', {
  skip: usingPostgres ? false : 'needs TEST_DATABASE_URL: the embedded database runs one transaction at a time',
}, async () => {
  const warm = fresh({ sessionId: 'warm-held' });
  await ingest([warm]); // its time's partition exists: the direct INSERT below uses the same time
  const stream = await open('held', { sessionId: { startsWith: 'held-' } });
  const other = new pg.Client({ connectionString: service.config.databaseUrl });
  await other.connect();
  try {
    await other.query('BEGIN');
    await other.query(
      `INSERT INTO user_metrics (record_key, event_id, user_id, session_id, "timestamp", talked_time,
         microphone_used, speaker_used)
       VALUES (sha256(convert_to('held-first', 'UTF8')), 'held-first', 'u1', 'held-first', $1, 5, true, false)`,
      [warm.timestamp],
    );
    assert.equal((await ingest([fresh({ sessionId: 'held-second' })])).accepted, 1);
    // Delivering held-second now would let held-first appear before it later: a gap for a client resuming after it.
    await stream.quietAt(0);
    await other.query('COMMIT');
  } finally {
    await other.end();
  }
  await stream.waitFor(2);
  assert.deepEqual(
    stream.received.map((m) => m.sessionId),
    ['held-first', 'held-second'],
  );
  stream.close();
});

test('two instances, Redis restarted and an instance restarted mid-stream: each subscriber gets the table', {
  skip: usingPostgres ? false : 'needs TEST_DATABASE_URL: two service processes cannot share the embedded database',
  timeout: 180_000,
}, async (t) => {
  assert.ok(service.config.databaseUrl, 'the service runs on PostgreSQL');
  const redis = new RedisServer(await freePort());
  await redis.start();
  let b: ServiceProcess | undefined;
  const startB = async () =>
    startServiceProcess({
      DATABASE_URL: service.config.databaseUrl as string,
      REDIS_URL: redis.url,
      REDIS_CHANNEL_PREFIX: 'live-replay:',
      LIVE_POLL_INTERVAL_MS: POLL_MS,
      SHUTDOWN_TIMEOUT_MS: '3000',
    });
  // This process's own instance cannot be given another REDIS_URL: a second child plays "a".
  let a: ServiceProcess | undefined;
  try {
    [a, b] = await Promise.all([startB(), startB()]);
    for (const instance of [a, b]) assert.match(instance.output(), /"liveUpdates":"redis"/);

    const session = (r: Row | Metric) => ('session_id' in r ? r.session_id : r.sessionId);
    const userOf = (r: Row | Metric) => ('user_id' in r ? r.user_id : r.userId);
    const filters = {
      aUsers: {
        where: { sessionId: { startsWith: 'mix-' }, userId: { in: ['u0', 'u1'] } },
        matches: (r: Row) => session(r).startsWith('mix-') && ['u0', 'u1'].includes(userOf(r)),
      },
      aAll: { where: { sessionId: { startsWith: 'mix-' } }, matches: (r: Row) => session(r).startsWith('mix-') },
      bTalk: {
        where: { sessionId: { startsWith: 'mix-' }, talkedTime: { gte: 250 } },
        matches: (r: Row) => session(r).startsWith('mix-') && r.talked_time >= 250,
      },
      bOr: {
        where: { sessionId: { startsWith: 'mix-' }, OR: [{ userId: { equals: 'u2' } }, { speakerUsed: true }] },
        matches: (r: Row) => session(r).startsWith('mix-') && (r.user_id === 'u2' || r.speaker_used),
      },
    };
    const onA = {
      aUsers: await open('a: u0/u1', filters.aUsers.where, undefined, a.url),
      aAll: await open('a: all', filters.aAll.where, undefined, a.url),
    };
    const onB: Record<'bTalk' | 'bOr', Subscriber[]> = {
      bTalk: [await open('b: talked >= 250', filters.bTalk.where, undefined, b.url)],
      bOr: [await open('b: u2 or speaker', filters.bOr.where, undefined, b.url)],
    };

    // Four clients ingest at once, to both instances (only to "a" while "b" is down), until 80 batches are stored.
    let targets = [a.url, b.url];
    const inFlight = new Map<string, number>();
    let batches = 0;
    let resent: Record<string, unknown> | undefined;
    const TOTAL = 80;
    const writer = async (w: number) => {
      for (let i = 0; batches < TOTAL; i++) {
        const url = targets[(w + i) % targets.length] as string;
        const size = 1 + ((w * 7 + i * 3) % 12);
        const records = Array.from({ length: size }, () => fresh({ sessionId: `mix-${w}-${i}` }));
        // Now and then a record sent again: stored once, delivered once.
        if (resent && i % 5 === 0) records.push(resent);
        resent = records[0];
        batches++;
        inFlight.set(url, (inFlight.get(url) ?? 0) + 1);
        try {
          await ingest(records, url);
        } finally {
          inFlight.set(url, (inFlight.get(url) ?? 1) - 1);
        }
      }
    };
    const until = async (n: number) => {
      while (batches < n) await new Promise((resolve) => setTimeout(resolve, 10));
    };
    const writing = Promise.all([0, 1, 2, 3].map(writer));

    // Redis goes away mid-stream and comes back on the same port: the instances reconnect by themselves.
    await until(20);
    await redis.stop();
    await until(30);
    // Back only once "a" has seen it go: its subscribers then depend on the catch-up after the outage.
    for (let waited = 0; !/Redis connection problem/.test(a.output()); waited += 10) {
      if (waited > 30_000) throw new Error(`"a" never noticed Redis going away:\n${a.output().slice(-2000)}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await redis.start();

    // "b" stops (SIGTERM: its streams complete) and starts again; its clients resume after their last cursor.
    await until(45);
    targets = [a.url];
    while ((inFlight.get(b.url) ?? 0) > 0) await new Promise((resolve) => setTimeout(resolve, 10));
    b.child.kill('SIGTERM');
    assert.equal((await b.exited).code, 0, b.output().slice(-2000));
    for (const list of Object.values(onB)) await (list[0] as Subscriber).closed();
    await until(55);
    b = await startB();
    for (const [name, list] of Object.entries(onB) as ['bTalk' | 'bOr', Subscriber[]][]) {
      const last = list[0]?.received.at(-1);
      assert.ok(last, `${name} received something before the restart`);
      list.push(await open(`${name} resumed`, filters[name].where, last.cursor, b.url));
    }
    targets = [a.url, b.url];
    await writing;

    const stored = await storedInStreamOrder('mix-');
    const check = async (label: string, received: () => Metric[], wait: Subscriber, matches: (r: Row) => boolean) => {
      const expected = stored.filter(matches);
      assert.ok(expected.length > 20, `${label}: enough records match (${expected.length})`);
      const already = received().length - wait.received.length;
      await wait.waitFor(expected.length - already);
      await wait.quietAt(expected.length - already);
      const got = received();
      assert.equal(new Set(ids(got)).size, got.length, `${label}: no record twice`);
      assert.deepEqual(ids(got), ids(expected), `${label}: every matching record, in stream order`);
    };
    await check('a: u0/u1', () => onA.aUsers.received, onA.aUsers, filters.aUsers.matches);
    await check('a: all', () => onA.aAll.received, onA.aAll, filters.aAll.matches);
    for (const name of ['bTalk', 'bOr'] as const) {
      const [before, resumed] = onB[name] as [Subscriber, Subscriber];
      assert.ok(before.completed, `${name}: the stopping instance completed the stream`);
      await check(name, () => [...before.received, ...resumed.received], resumed, filters[name].matches);
    }
    assert.match(a.output(), /Redis connection problem/, '"a" saw Redis go away while records were stored');
    // The figures, for the commit body: how far commit order strayed from id order in this run.
    const outOfIdOrder = stored.filter((r, i) => i > 0 && Number(r.id) < Number(stored[i - 1]?.id)).length;
    t.diagnostic(`${stored.length} records in ${TOTAL} batches; ${outOfIdOrder} come after a larger id`);
  } finally {
    await a?.kill();
    await b?.kill();
    await redis.stop();
  }
});
