/**
 * Ingest rate limits shared through Redis (REDIS_URL): two servers on one Redis enforce one limit per key between
 * them; a refusal on one limit charges neither; a Redis outage falls back to per-instance counting, logged and
 * counted in /metrics, and Redis is used again once it is back.
 *
 * The shared Redis is TEST_REDIS_URL (default redis://127.0.0.1:6379), with keys under a prefix of this run's own,
 * deleted afterwards; the outage test starts and kills a redis-server of its own on a free port. Windows are 60 s
 * long (1 record/s with batches of up to 60), so that every count below happens inside one window, however slow the
 * machine.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { createLogger, type Logger } from '../src/logger.js';
import { connectRateLimitRedis, IngestRateLimiter } from '../src/plugins/rate-limit.js';
import { createServer } from '../src/server.js';
import { FaultProxy } from './support/fault-proxy.js';
import { INGEST, record, startTestService, type TestService } from './support/harness.js';
import { freePort } from './support/pg-server.js';
import { assertRefused, makeKey } from './support/security.js';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const PREFIX = `trl-${crypto.randomBytes(6).toString('hex')}:`;
const silent = createLogger('silent');

/** A second instance in this process: the same configuration and database, a Redis connection of its own. */
async function startSecondServer(service: TestService, redis: Redis | undefined, logger: Logger = silent) {
  const { handler } = createServer({ config: service.config, logger, redis });
  const server = http.createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** POSTs a batch of `n` records with eventIds `${tag}-i` to `url` with the key's header. */
async function ingest(url: string, headers: Record<string, string>, n: number, tag: string) {
  const response = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json', ...headers },
    body: JSON.stringify({
      query: INGEST,
      variables: { records: Array.from({ length: n }, (_, i) => record({ eventId: `${tag}-${i}` })) },
    }),
  });
  const text = await response.text();
  let body: { data?: Record<string, unknown> | null; errors?: [] };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    throw new Error(`Response ${response.status} is not JSON: ${text.slice(0, 500)}`);
  }
  return { status: response.status, headers: response.headers, ...body };
}

/** The value of a counter series on /metrics (0 when absent). */
async function metric(url: string, series: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

async function rowsTagged(service: TestService, tag: string): Promise<number> {
  const [row] = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE $1', [
    `${tag}-%`,
  ]);
  return row?.n ?? -1;
}

async function deleteKeys(redis: Redis, prefix: string): Promise<void> {
  const keys: string[] = [];
  for await (const batch of redis.scanStream({ match: `${prefix}*`, count: 1000 })) keys.push(...(batch as string[]));
  if (keys.length > 0) await redis.del(...keys);
}

describe('two instances sharing Redis', () => {
  let service: TestService;
  let admin: Redis;
  let second: Awaited<ReturnType<typeof startSecondServer>>;
  let secondRedis: Redis;

  before(async () => {
    service = await startTestService({
      AUTH: 'on',
      REDIS_URL,
      REDIS_CHANNEL_PREFIX: PREFIX,
      MAX_BATCH_SIZE: '60',
      INGEST_RATE_REQUESTS: '1000',
      INGEST_RATE_RECORDS: '1',
    });
    admin = await connectRateLimitRedis(REDIS_URL, silent);
    secondRedis = await connectRateLimitRedis(REDIS_URL, silent);
    second = await startSecondServer(service, secondRedis);
  });

  after(async () => {
    await second?.close();
    secondRedis?.disconnect();
    if (admin) {
      await deleteKeys(admin, PREFIX);
      admin.disconnect();
    }
    await service?.stop();
  });

  test('one limit between them: 60 records per 60 s, 10 batches of 12 across both, exactly 5 stored', async () => {
    const key = await makeKey(['ingest']);
    const answers = [];
    for (let i = 0; i < 10; i++)
      answers.push(await ingest(i % 2 === 0 ? service.url : second.url, key.headers, 12, `x${i}`));
    const allowed = answers.filter((a) => a.status === 200);
    assert.equal(allowed.length, 5, JSON.stringify(answers.map((a) => a.status)));
    // The first five fill the window, whichever instance they went to; every later one is refused, on both.
    assert.deepEqual(
      answers.map((a) => a.status),
      [200, 200, 200, 200, 200, 429, 429, 429, 429, 429],
    );
    for (const refused of answers.slice(5)) {
      const error = assertRefused(refused, 'RATE_LIMITED', 429);
      assert.equal(error.extensions?.limitedBy, 'records');
      const retryAfter = Number(refused.headers.get('retry-after'));
      assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${retryAfter}`);
      assert.equal(error.extensions?.retryAfter, retryAfter);
    }
    let stored = 0;
    for (let i = 0; i < 10; i++) stored += await rowsTagged(service, `x${i}`);
    assert.equal(stored, 60);
    // The refused batches gave back what they counted: the window holds the 60 stored records, not 120.
    assert.equal(await admin.get(`${PREFIX}rate-limit:records:${key.id}`), '60');
    // Another key has its own window, on either instance.
    const other = await makeKey(['ingest']);
    assert.equal((await ingest(second.url, other.headers, 12, 'other')).status, 200);
  });
});

describe('both limits stay honest (the limiter on its own, 60 s windows)', () => {
  let redisA: Redis;
  let redisB: Redis;

  before(async () => {
    [redisA, redisB] = [await connectRateLimitRedis(REDIS_URL, silent), await connectRateLimitRedis(REDIS_URL, silent)];
  });
  after(async () => {
    await deleteKeys(redisA, `${PREFIX}honest:`);
    redisA.disconnect();
    redisB.disconnect();
  });

  const windows = { requests: { points: 3, seconds: 60 }, records: { points: 10, seconds: 60 } };
  const stores = [
    ['Redis, two limiters (two instances)', () => [redisA, redisB] as const],
    ['memory, one limiter', () => [undefined, undefined] as const],
  ] as const;

  for (const [name, clients] of stores) {
    test(name, async () => {
      const [a, b] = clients();
      const keyPrefix = `${PREFIX}honest:${a ? 'redis' : 'memory'}:`;
      const first = new IngestRateLimiter({ ...windows, redis: a, keyPrefix, logger: silent });
      const other = a ? new IngestRateLimiter({ ...windows, redis: b, keyPrefix, logger: silent }) : first;
      const counted = async (limit: string) =>
        a ? Number(await redisA.get(`${keyPrefix}rate-limit:${limit}:k`)) : undefined;

      assert.deepEqual(await first.take('k', 4), { allowed: true });
      assert.deepEqual(await other.take('k', 4), { allowed: true });
      // Refused on records: neither its request nor its records are counted.
      const records = await first.take('k', 5);
      assert.equal(records.allowed, false);
      assert.equal(records.allowed === false && records.limitedBy, 'records');
      if (a) assert.deepEqual([await counted('requests'), await counted('records')], [2, 8]);
      // So the third request and the last two records still fit...
      assert.deepEqual(await other.take('k', 2), { allowed: true });
      // ...and now the requests are used up: refused on requests, records untouched (and not even asked).
      const requests = await first.take('k', 0);
      assert.equal(requests.allowed === false && requests.limitedBy, 'requests');
      assert.ok(requests.allowed === false && requests.retryAfterSeconds >= 1 && requests.retryAfterSeconds <= 60);
      if (a) assert.deepEqual([await counted('requests'), await counted('records')], [3, 10]);
      assert.equal((await first.take('k', 1)).allowed, false);
      // Another key is not affected.
      assert.deepEqual(await other.take('k2', 10), { allowed: true });
    });
  }
});

/** A redis-server of this test's own, on a free port, that keeps nothing on disk. */
async function startRedisServer(port: number): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) resolve();
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`redis-server on port ${port} exited (${code}):\n${output}`)));
    child.once('error', reject);
  });
  return child;
}

describe('Redis outage', () => {
  let service: TestService;
  let redisServer: ChildProcess | undefined;

  before(async () => {
    service = await startTestService({
      AUTH: 'on',
      MAX_BATCH_SIZE: '60',
      INGEST_RATE_REQUESTS: '1000',
      INGEST_RATE_RECORDS: '1',
      REDIS_CHANNEL_PREFIX: PREFIX,
    });
  });
  after(async () => {
    if (redisServer && redisServer.exitCode === null) {
      redisServer.kill('SIGKILL');
      await once(redisServer, 'exit');
    }
    await service?.stop();
  });

  test('start-up with an unreachable Redis fails, naming REDIS_URL', async () => {
    const port = await freePort();
    await assert.rejects(
      connectRateLimitRedis(`redis://127.0.0.1:${port}`, silent),
      new RegExp(`Cannot use Redis at redis://127\\.0\\.0\\.1:${port} \\(REDIS_URL\\) for rate limits: .*ECONNREFUSED`),
    );
  });

  test('a Redis that stops answering (a network that drops everything): checks fall back after 1 s', async () => {
    const target = new URL(REDIS_URL);
    const proxy = await FaultProxy.start({ host: target.hostname, port: Number(target.port || 6379) });
    const redis = await connectRateLimitRedis(`redis://127.0.0.1:${proxy.port}`, silent);
    const instance = await startSecondServer(service, redis);
    try {
      const key = await makeKey(['ingest']);
      assert.equal((await ingest(instance.url, key.headers, 12, 'h0')).status, 200);
      const fallbacks = () => metric(service.url, 'ingest_rate_limit_fallbacks_total{limit="records"}');
      const before = await fallbacks();
      // The connection stays open ("ready"), so only the command timeout can tell that Redis does not answer.
      proxy.blackhole(60_000);
      assert.equal((await ingest(instance.url, key.headers, 12, 'h1')).status, 200);
      assert.equal(await fallbacks(), before + 1);
      assert.equal(await rowsTagged(service, 'h1'), 12);
    } finally {
      proxy.heal();
      await instance.close();
      await deleteKeys(redis, PREFIX);
      redis.disconnect();
      await proxy.close();
    }
  });

  test('falls back to counting per instance, logged and counted; Redis is used again once it is back', async () => {
    const port = await freePort();
    redisServer = await startRedisServer(port);
    const lines: string[] = [];
    const logger = pino(
      { level: 'info' },
      new Writable({
        write(chunk, _encoding, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    );
    const redis = await connectRateLimitRedis(`redis://127.0.0.1:${port}`, logger);
    const instance = await startSecondServer(service, redis, logger);
    try {
      const key = await makeKey(['ingest']);
      const countedKey = `${PREFIX}rate-limit:records:${key.id}`;
      assert.equal((await ingest(instance.url, key.headers, 12, 'o0')).status, 200);
      assert.equal(await redis.get(countedKey), '12');

      const fallbacks = () => metric(service.url, 'ingest_rate_limit_fallbacks_total{limit="records"}');
      const before = await fallbacks();
      // Not events.once: that would reject on the connection errors ioredis reports while it reconnects.
      const closed = new Promise((resolve) => redis.once('close', resolve));
      const exited = once(redisServer, 'exit');
      redisServer.kill('SIGKILL');
      await exited;
      await closed;

      // This instance's memory knows nothing of the 12 counted in Redis: it allows its own full window, then refuses.
      const statuses = [];
      for (let i = 1; i <= 6; i++) statuses.push((await ingest(instance.url, key.headers, 12, `o${i}`)).status);
      assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429]);
      assert.equal(await fallbacks(), before + 6);
      assert.equal(
        (await metric(service.url, 'ingest_rate_limit_fallbacks_total{limit="requests"}')) >= 6,
        true,
        'the requests limit fell back too',
      );
      const warning = lines.find((l) => l.includes('enforces them from its own memory'));
      assert.ok(warning, `expected a warning about the fallback in:\n${lines.join('')}`);

      // Redis back (empty: it keeps nothing): checks go to it again, and nothing more falls back.
      const ready = new Promise((resolve) => redis.once('ready', resolve));
      redisServer = await startRedisServer(port);
      await ready;
      assert.equal((await ingest(instance.url, key.headers, 12, 'o7')).status, 200);
      assert.equal(await redis.get(countedKey), '12');
      assert.equal(await fallbacks(), before + 6);
      assert.ok(
        lines.some((l) => l.includes('Redis is back')),
        `expected a line saying Redis is back in:\n${lines.join('')}`,
      );
    } finally {
      await instance.close();
      redis.disconnect();
    }
  });
});
