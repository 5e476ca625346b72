/**
 * GET /metrics: Prometheus text with the request, ingestion and pool metrics, moving as the service works; and the
 * log format switch (pretty for a developer, JSON otherwise).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { ConfigError, loadConfig } from '../src/config.js';
import { usePrettyLogs } from '../src/logger.js';
import {
  createTestDatabase,
  INGEST,
  record,
  startTestService,
  type TestService,
  usingPostgres,
} from './support/harness.js';
import { startServiceProcess } from './support/service-process.js';

let service: TestService;
before(async () => {
  service = await startTestService();
});
after(async () => {
  await service?.stop();
});

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus' text format (the lines this test needs: samples, not comments). */
function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[pair[1] as string] = pair[2] as string;
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

async function scrape(): Promise<Sample[]> {
  const response = await fetch(`${service.url}/metrics`);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain/);
  return parseMetrics(await response.text());
}

/** The value of one series (0 when it is absent, as Prometheus treats a counter never incremented). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.find(
    (s) =>
      s.name === name &&
      Object.entries(labels).every(([k, v]) => s.labels[k] === v) &&
      Object.keys(s.labels).length === Object.keys(labels).length,
  );
  return found?.value ?? 0;
}

test('GET /metrics serves process metrics and the ingestion counters from the start', async () => {
  const samples = await scrape();
  const names = new Set(samples.map((s) => s.name));
  for (const name of [
    'process_cpu_user_seconds_total',
    'process_resident_memory_bytes',
    'nodejs_heap_size_used_bytes',
    'nodejs_eventloop_lag_seconds',
  ]) {
    assert.ok(names.has(name), `${name} missing`);
  }
  for (const result of ['accepted', 'duplicate', 'rejected']) {
    assert.ok(
      samples.some((s) => s.name === 'ingest_records_total' && s.labels.result === result),
      `ingest_records_total{result="${result}"} missing`,
    );
  }
});

test('ingest counters move by what ingestMetrics reported, per record', async () => {
  const t = Math.floor(Date.now() / 1000) - 600;
  // 3 distinct valid records, one of them twice (a repeat in the batch), and 2 invalid ones (the second has two problems).
  const batch = [
    record({ eventId: 'obs-1', timestamp: t }),
    record({ eventId: 'obs-2', timestamp: t }),
    record({ eventId: 'obs-3', timestamp: t }),
    record({ eventId: 'obs-1', timestamp: t }),
    record({ eventId: 'obs-bad-1', talkedTime: -1 }),
    record({ eventId: 'obs-bad-2', userId: ' ', talkedTime: 100_000 }),
  ];
  const expectedFirst = { accepted: 3, duplicates: 1, rejectedRecords: 2 };
  const expectedSecond = { accepted: 0, duplicates: 4, rejectedRecords: 2 };

  const before = await scrape();
  const first = (await service.gql(INGEST, { records: batch })).ingestMetrics;
  const second = (await service.gql(INGEST, { records: batch })).ingestMetrics;
  // The service agrees with the fixture's arithmetic (otherwise the deltas below would test nothing).
  for (const [result, expected] of [
    [first, expectedFirst],
    [second, expectedSecond],
  ] as const) {
    assert.equal(result.accepted, expected.accepted);
    assert.equal(result.duplicates, expected.duplicates);
    assert.equal(new Set(result.rejected.map((r: { index: number }) => r.index)).size, expected.rejectedRecords);
  }
  assert.equal(first.rejected.length, 3, 'the record with two problems is listed twice');

  const afterIngest = await scrape();
  const delta = (result: string) =>
    value(afterIngest, 'ingest_records_total', { result }) - value(before, 'ingest_records_total', { result });
  assert.equal(delta('accepted'), expectedFirst.accepted + expectedSecond.accepted);
  assert.equal(delta('duplicate'), expectedFirst.duplicates + expectedSecond.duplicates);
  assert.equal(
    delta('rejected'),
    expectedFirst.rejectedRecords + expectedSecond.rejectedRecords,
    'rejections count records, not problems',
  );
});

test('requests are counted and timed per operation name and type, failures as errors', async () => {
  const ingest = { operation_name: 'Ingest', operation_type: 'mutation' };
  const recent = { operation_name: 'Recent', operation_type: 'query' };
  const invalid = { operation_name: '(none)', operation_type: 'unknown' };
  const before = await scrape();

  await service.gql(INGEST, { records: [record({ eventId: 'obs-req-1' })] });
  await service.gql('query Recent { metrics(first: 1) { edges { node { id } } } }');
  await service.gql('query Recent { metrics(first: 2) { edges { node { id } } } }');
  const broken = await service.request('query Broken { metrics(first: 1) { nope } }');
  assert.ok(broken.errors?.length, 'an invalid query fails');
  const refused = await service.request('query Recent { metrics(first: 100000) { edges { node { id } } } }');
  assert.ok(refused.errors?.length, 'first beyond the limit fails');

  const after = await scrape();
  const d = (name: string, labels: Record<string, string>) => value(after, name, labels) - value(before, name, labels);
  assert.equal(d('graphql_requests_total', { ...ingest, outcome: 'success' }), 1);
  assert.equal(d('graphql_requests_total', { ...recent, outcome: 'success' }), 2);
  assert.equal(d('graphql_requests_total', { ...recent, outcome: 'error' }), 1);
  assert.equal(d('graphql_requests_total', { ...invalid, outcome: 'error' }), 1);
  assert.equal(d('graphql_request_duration_seconds_count', ingest), 1);
  assert.equal(d('graphql_request_duration_seconds_count', recent), 3);
  const seconds = d('graphql_request_duration_seconds_sum', recent);
  assert.ok(seconds > 0 && seconds < 30, `Recent took ${seconds} s in total`);
  // The histogram's buckets are cumulative: the +Inf bucket holds every request.
  assert.equal(d('graphql_request_duration_seconds_bucket', { ...recent, le: '+Inf' }), 3);
  // Scrapes of /metrics are not GraphQL requests.
  assert.equal(
    after.filter((s) => s.name === 'graphql_requests_total' && s.labels.operation_name === 'metrics').length,
    0,
  );
});

test('database pool gauges: present on PostgreSQL, absent on the embedded database', async () => {
  const samples = await scrape();
  if (!usingPostgres) {
    assert.equal(samples.filter((s) => s.name.startsWith('db_pool_')).length, 0);
    return;
  }
  assert.equal(value(samples, 'db_pool_max_connections'), service.config.dbPoolMax);
  const total = value(samples, 'db_pool_connections', { state: 'total' });
  const idle = value(samples, 'db_pool_connections', { state: 'idle' });
  const inUse = value(samples, 'db_pool_connections', { state: 'in_use' });
  assert.ok(total >= 1 && total <= service.config.dbPoolMax, `total ${total}`);
  assert.equal(idle + inUse, total);
  assert.ok(samples.some((s) => s.name === 'db_pool_waiting_clients'));
});

test('pretty logs only when asked, or for development at a terminal; JSON otherwise', () => {
  assert.equal(usePrettyLogs({ format: 'pretty', nodeEnv: 'production' }, false), true);
  assert.equal(usePrettyLogs({ format: 'json', nodeEnv: 'development' }, true), false);
  assert.equal(usePrettyLogs({ format: 'auto', nodeEnv: 'development' }, true), true);
  assert.equal(usePrettyLogs({ format: 'auto', nodeEnv: 'development' }, false), false);
  assert.equal(usePrettyLogs({ format: 'auto', nodeEnv: 'production' }, true), false);
  assert.equal(loadConfig({ LOG_FORMAT: 'Pretty' }).logFormat, 'pretty');
  assert.equal(loadConfig({}).logFormat, 'auto');
  assert.throws(
    () => loadConfig({ LOG_FORMAT: 'xml' }),
    (error: unknown) => error instanceof ConfigError && /LOG_FORMAT/.test(error.message),
  );
});

test('a masked error is logged once, with the request id its answer carries, through Yoga and the direct read path', {
  skip: usingPostgres ? false : 'PostgreSQL only: the test breaks the table under a running service process',
}, async () => {
  const db = await createTestDatabase();
  const sql = new pg.Client({ connectionString: db.url });
  const running = await startServiceProcess({
    DATABASE_URL: db.url as string,
    AUTH: 'off',
    LOG_FORMAT: 'json',
    LOG_LEVEL: 'info',
  });
  try {
    await sql.connect();
    const read = (query: string, requestId: string) =>
      fetch(`${running.url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json', 'x-request-id': requestId },
        body: JSON.stringify({ query }),
      }).then(
        async (response) => (await response.json()) as { errors?: Array<{ extensions?: Record<string, unknown> }> },
      );
    const known = '{ metrics(first: 1) { edges { node { id } } } }';
    assert.equal((await read(known, 'log-check-0')).errors, undefined);
    await sql.query('ALTER TABLE user_metrics RENAME TO user_metrics_away');
    // The same text again (the direct path, handing the error to Yoga), and a text Yoga has not seen.
    for (const [query, requestId] of [
      [known, 'log-check-1'],
      [`${known} # new`, 'log-check-2'],
    ] as const) {
      const answer = await read(query, requestId);
      assert.equal(answer.errors?.[0]?.extensions?.code, 'INTERNAL_SERVER_ERROR');
      assert.equal(answer.errors?.[0]?.extensions?.requestId, requestId);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const entries = running
        .output()
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map(
          (line) => JSON.parse(line) as { level: number; msg: string; requestId?: string; err?: { message?: string } },
        )
        .filter((entry) => entry.level >= 50);
      const mine = entries.filter((entry) => entry.requestId === requestId);
      assert.equal(mine.length, 1, JSON.stringify(entries));
      assert.equal(mine[0]?.msg, 'Unexpected error');
      assert.match(mine[0]?.err?.message ?? '', /user_metrics/);
      assert.equal(
        entries.filter((entry) => entry.requestId === undefined).length,
        0,
        'no error entry without a request id',
      );
    }
  } finally {
    await sql.query('ALTER TABLE IF EXISTS user_metrics_away RENAME TO user_metrics').catch(() => {});
    await sql.end();
    await running.kill();
    await db.drop();
  }
});
