/**
 * Configuration: defaults, and a bad value stopping start-up with a message that names the variable (every bad one,
 * when there are several), in loadConfig and in the real entry point.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.js';
import { describeRun, runTsx } from './support/process.js';

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-config-'));
after(() => fs.rmSync(dataDir, { recursive: true, force: true }));

/** The problems loadConfig reports for `env`, or [] when it accepts it. */
function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
    return [];
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.problems;
  }
}

test('defaults: port 4000 on 127.0.0.1, the embedded database in ./.data migrated on start, a batch of 5,000', () => {
  const config = loadConfig({});
  assert.equal(config.port, 4000);
  assert.equal(config.host, '127.0.0.1');
  assert.equal(config.databaseUrl, undefined);
  assert.equal(config.dataDir, path.resolve('.data'));
  assert.equal(config.migrateOnStart, true);
  assert.equal(config.maxBatchSize, 5000);
  assert.equal(config.logLevel, 'info');
  assert.equal(config.graphiql, true);
  // A full batch with every string at its maximum length (815 characters a record), each written in JSON as up to 6 bytes.
  assert.ok(config.maxBodyBytes >= 5000 * (815 * 6 + 200), String(config.maxBodyBytes));
  assert.equal(loadConfig({ NODE_ENV: 'production' }).graphiql, false, 'no GraphiQL in production by default');
  assert.equal(loadConfig({ NODE_ENV: 'test' }).logLevel, 'warn');
});

test('good values are parsed; blank values mean the default', () => {
  const config = loadConfig({
    PORT: '8080',
    HOST: '0.0.0.0',
    DATABASE_URL: 'postgresql://user:pw@db.example:5432/metrics',
    DATA_DIR: '/tmp/somewhere',
    MIGRATE_ON_START: 'false',
    MAX_BATCH_SIZE: '10',
    LOG_LEVEL: 'DEBUG',
    GRAPHIQL: 'off',
  });
  assert.equal(config.port, 8080);
  assert.equal(config.host, '0.0.0.0');
  assert.equal(config.databaseUrl, 'postgresql://user:pw@db.example:5432/metrics');
  assert.equal(config.dataDir, '/tmp/somewhere');
  assert.equal(config.migrateOnStart, false);
  assert.equal(config.maxBatchSize, 10);
  assert.ok(config.maxBodyBytes < loadConfig({}).maxBodyBytes, 'the default body limit follows the batch limit');
  assert.equal(config.logLevel, 'debug');
  assert.equal(config.graphiql, false);
  assert.equal(loadConfig({}).livePollIntervalMs, 1000);
  assert.equal(loadConfig({ LIVE_POLL_INTERVAL_MS: '250' }).livePollIntervalMs, 250);
  for (const [value, expected] of [
    ['1', true],
    ['yes', true],
    ['TRUE', true],
    ['0', false],
    ['no', false],
    ['Off', false],
  ] as const) {
    assert.equal(loadConfig({ MIGRATE_ON_START: value }).migrateOnStart, expected, value);
  }
  const blank = loadConfig({ PORT: '  ', DATABASE_URL: '', MAX_BATCH_SIZE: ' ' });
  assert.equal(blank.port, 4000);
  assert.equal(blank.databaseUrl, undefined);
  assert.equal(blank.maxBatchSize, 5000);
});

test('each bad variable stops start-up with a message that names it', () => {
  const cases: Array<[string, string]> = [
    ['PORT', 'abc'],
    ['PORT', '65536'],
    ['PORT', '-1'],
    ['PORT', '80.5'],
    ['DATABASE_URL', 'mysql://user@host/db'],
    ['DATABASE_URL', 'not a url'],
    ['MIGRATE_ON_START', 'maybe'],
    ['MAX_BATCH_SIZE', '0'],
    ['MAX_BATCH_SIZE', 'lots'],
    ['MAX_BODY_BYTES', '10'],
    ['DB_POOL_MAX', '0'],
    ['LOG_LEVEL', 'loud'],
    ['NODE_ENV', 'staging'],
    ['GRAPHIQL', 'perhaps'],
    ['EMBEDDED_DB_PORT', '70000'],
    ['SHUTDOWN_TIMEOUT_MS', 'soon'],
    ['LIVE_POLL_INTERVAL_MS', '0'],
    ['LIVE_POLL_INTERVAL_MS', 'often'],
  ];
  for (const [name, value] of cases) {
    const problems = problemsOf({ [name]: value });
    assert.equal(problems.length, 1, `${name}=${value}: ${JSON.stringify(problems)}`);
    assert.ok(problems[0]?.startsWith(name), `${name}=${value}: ${problems[0]}`);
    assert.throws(
      () => loadConfig({ [name]: value }),
      (error: Error) => error.message.includes(name),
    );
  }
});

test('several bad variables are all listed at once', () => {
  const problems = problemsOf({
    PORT: 'abc',
    MAX_BATCH_SIZE: '0',
    LOG_LEVEL: 'loud',
    DATABASE_URL: 'mysql://x',
    MIGRATE_ON_START: 'maybe',
  });
  assert.equal(problems.length, 5, JSON.stringify(problems));
  for (const name of ['PORT', 'MAX_BATCH_SIZE', 'LOG_LEVEL', 'DATABASE_URL', 'MIGRATE_ON_START']) {
    assert.ok(
      problems.some((p) => p.startsWith(name)),
      `${name} in ${JSON.stringify(problems)}`,
    );
  }
});

test('a bad DATABASE_URL is named without echoing its password', () => {
  const [problem] = problemsOf({ DATABASE_URL: 'mysql://user:s3cret-pw@host/db' });
  assert.ok(problem?.includes('DATABASE_URL'));
  assert.ok(!problem?.includes('s3cret-pw'), problem);
});

test('the service (node src/main.ts) exits 1 on a bad PORT, naming it, and lists every bad variable', async () => {
  const bad = await runTsx('src/main.ts', [], { PORT: 'abc', DATA_DIR: dataDir, NODE_ENV: 'test' }, 30_000);
  assert.equal(bad.code, 1, describeRun(bad));
  assert.match(bad.stderr, /PORT="abc" must be an integer from 0 to 65535/, describeRun(bad));
  const several = await runTsx(
    'src/main.ts',
    [],
    { PORT: '99999', MAX_BATCH_SIZE: 'x', LOG_LEVEL: 'loud', DATA_DIR: dataDir, NODE_ENV: 'test' },
    30_000,
  );
  assert.equal(several.code, 1, describeRun(several));
  for (const name of ['PORT', 'MAX_BATCH_SIZE', 'LOG_LEVEL'])
    assert.match(several.stderr, new RegExp(name), describeRun(several));
  assert.deepEqual(fs.readdirSync(dataDir), [], 'it stopped before touching the database');
});
