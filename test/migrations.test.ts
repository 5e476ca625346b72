/**
 * Migrations on a fresh database of this file's own (a database on the TEST_DATABASE_URL server, or an embedded one in a
 * temporary folder): applied once and atomically, recorded in `_prisma_migrations` as Prisma records them, refused by
 * the service when pending and MIGRATE_ON_START=false, reported by `npm run db:status`.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startApp } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { type Database, openDatabase } from '../src/db/client.js';
import { MIGRATIONS_DIR, MigrationError, migrate, migrationStatus } from '../src/db/migrations.js';
import { createLogger } from '../src/logger.js';
import { createTestDatabase, type TestDatabase, usingPostgres } from './support/harness.js';
import { describeRun, runTsx } from './support/process.js';

let testDb: TestDatabase;
const tempDirs: string[] = [];

/** The committed migrations, read by the test itself. */
const committed = fs
  .readdirSync(MIGRATIONS_DIR, { withFileTypes: true })
  .filter((e) => e.isDirectory())
  .map((e) => e.name)
  .sort()
  .map((name) => {
    const bytes = fs.readFileSync(path.join(MIGRATIONS_DIR, name, 'migration.sql'));
    return { name, sql: bytes.toString('utf8'), checksum: crypto.createHash('sha256').update(bytes).digest('hex') };
  });
const committedNames = committed.map((m) => m.name);

before(async () => {
  testDb = await createTestDatabase();
});
after(async () => {
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  await testDb?.drop();
});

const target = (): Record<string, string> => (testDb.url ? { DATABASE_URL: testDb.url } : { DATA_DIR: testDb.dataDir });

async function withDatabase<T>(work: (db: Database) => Promise<T>): Promise<T> {
  const db = await openDatabase({ url: testDb.url, dataDir: testDb.dataDir, poolMax: 4 });
  try {
    return await work(db);
  } finally {
    await db.close();
  }
}

const query = <Row = Record<string, unknown>>(db: Database, text: string, params?: unknown[]) =>
  db.withSession((session) => session.query<Row>(text, params));

/** A migrations folder of the test's own: the committed migrations (unless `withCommitted` is false) plus `extra`. */
function migrationsFolder(extra: Record<string, string>, withCommitted = true): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-migrations-'));
  tempDirs.push(dir);
  if (withCommitted) fs.cpSync(MIGRATIONS_DIR, dir, { recursive: true });
  for (const [name, sql] of Object.entries(extra)) {
    fs.mkdirSync(path.join(dir, name), { recursive: true });
    fs.writeFileSync(path.join(dir, name, 'migration.sql'), sql);
  }
  return dir;
}

function serviceConfig() {
  return loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    MIGRATE_ON_START: 'false',
    SHUTDOWN_TIMEOUT_MS: '2000',
    ...target(),
  });
}

test('there are committed migrations to apply', () => {
  assert.ok(committed.length >= 1);
  assert.ok(
    committed.every((m) => /^\d{14}_\w+$/.test(m.name)),
    committedNames.join(', '),
  );
});

test('with MIGRATE_ON_START=false the service refuses an unmigrated database, naming `npm run db:migrate`', async () => {
  await assert.rejects(startApp(serviceConfig(), createLogger('silent')), (error: Error) => {
    assert.match(error.message, /npm run db:migrate/);
    assert.ok(error.message.includes(committedNames[0] as string), error.message);
    return true;
  });
  await withDatabase(async (db) => {
    const [row] = await query<{ present: boolean }>(db, `SELECT to_regclass('user_metrics') IS NOT NULL AS present`);
    assert.equal(row?.present, false, 'refusing migrated nothing');
  });
});

test('npm run db:status exits 1 and lists what is pending', async () => {
  const result = await runTsx('src/cli/migrate.ts', ['status'], { NODE_ENV: 'test', ...target() });
  assert.equal(result.code, 1, describeRun(result));
  for (const name of committedNames) assert.match(result.stdout, new RegExp(`pending\\s+${name}`), describeRun(result));
  assert.match(result.stdout, /npm run db:migrate/);
});

test('migrate applies every migration; a second run is a no-op', async () => {
  await withDatabase(async (db) => {
    assert.deepEqual((await migrationStatus(db, MIGRATIONS_DIR)).pending, committedNames);
    const first = await migrate(db, MIGRATIONS_DIR);
    assert.deepEqual(first.applied, committedNames);
    assert.deepEqual(first.status.pending, []);
    const rowsBefore = await query(db, 'SELECT * FROM "_prisma_migrations" ORDER BY migration_name');
    const second = await migrate(db, MIGRATIONS_DIR);
    assert.deepEqual(second.applied, []);
    assert.deepEqual(second.status.applied, committedNames);
    assert.deepEqual(
      await query(db, 'SELECT * FROM "_prisma_migrations" ORDER BY migration_name'),
      rowsBefore,
      'nothing rewritten',
    );
    assert.deepEqual(await migrationStatus(db, MIGRATIONS_DIR), {
      applied: committedNames,
      pending: [],
      modified: [],
      unknown: [],
      failed: [],
    });
  });
});

test("_prisma_migrations has Prisma's columns, the files' sha256 checksums and finished_at", async () => {
  await withDatabase(async (db) => {
    const columns = await query<{ column_name: string; data_type: string; max: number | null; is_nullable: string }>(
      db,
      `SELECT column_name, data_type, character_maximum_length AS max, is_nullable
       FROM information_schema.columns WHERE table_name = '_prisma_migrations' ORDER BY ordinal_position`,
    );
    assert.deepEqual(
      columns.map((c) => [c.column_name, c.data_type, c.max, c.is_nullable]),
      [
        ['id', 'character varying', 36, 'NO'],
        ['checksum', 'character varying', 64, 'NO'],
        ['finished_at', 'timestamp with time zone', null, 'YES'],
        ['migration_name', 'character varying', 255, 'NO'],
        ['logs', 'text', null, 'YES'],
        ['rolled_back_at', 'timestamp with time zone', null, 'YES'],
        ['started_at', 'timestamp with time zone', null, 'NO'],
        ['applied_steps_count', 'integer', null, 'NO'],
      ],
    );
    const rows = await query<{
      id: string;
      checksum: string;
      migration_name: string;
      ok: boolean;
      logs: string | null;
      rolled_back_at: Date | null;
      steps: number;
    }>(
      db,
      `SELECT id, checksum, migration_name, finished_at IS NOT NULL AND finished_at >= started_at AS ok, logs, rolled_back_at,
              applied_steps_count AS steps
       FROM "_prisma_migrations" ORDER BY migration_name`,
    );
    assert.deepEqual(
      rows.map((r) => r.migration_name),
      committedNames,
    );
    rows.forEach((row, i) => {
      assert.equal(row.checksum, committed[i]?.checksum, `${row.migration_name}: sha256 of migration.sql`);
      assert.match(row.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(row.ok, true, 'finished_at set, not before started_at');
      assert.equal(row.rolled_back_at, null);
      assert.equal(row.logs, null);
      assert.ok(row.steps >= 1);
    });
  });
});

test('the migrated user_metrics table has the columns and indexes the issue names', async () => {
  await withDatabase(async (db) => {
    const columns = await query<{ column_name: string; udt_name: string; max: number | null; is_nullable: string }>(
      db,
      `SELECT column_name, udt_name, character_maximum_length AS max, is_nullable
       FROM information_schema.columns WHERE table_name = 'user_metrics'`,
    );
    const byName = new Map(columns.map((c) => [c.column_name, [c.udt_name, c.max, c.is_nullable]]));
    assert.deepEqual(byName.get('id'), ['int8', null, 'NO']);
    assert.deepEqual(byName.get('user_id'), ['varchar', 255, 'NO']);
    assert.deepEqual(byName.get('session_id'), ['varchar', 255, 'NO']);
    assert.deepEqual(byName.get('timestamp'), ['int8', null, 'NO']);
    assert.deepEqual(byName.get('talked_time'), ['int4', null, 'NO']);
    assert.deepEqual(byName.get('microphone_used'), ['bool', null, 'NO']);
    assert.deepEqual(byName.get('speaker_used'), ['bool', null, 'NO']);
    assert.deepEqual(byName.get('voice_sentiment'), ['varchar', 50, 'YES']);
    assert.equal(byName.get('created_at')?.[0], 'timestamptz');
    assert.deepEqual(byName.get('event_id'), ['varchar', 255, 'YES']);
    const indexes = (
      await query<{ def: string }>(db, `SELECT indexdef AS def FROM pg_indexes WHERE tablename = 'user_metrics'`)
    ).map((r) => r.def);
    const has = (pattern: RegExp) =>
      assert.ok(
        indexes.some((d) => pattern.test(d)),
        `${pattern} in ${indexes.join('\n')}`,
      );
    has(/UNIQUE INDEX .* \(record_key, "timestamp"\)/);
    has(/UNIQUE INDEX user_metrics_pkey .* \(id, "timestamp"\)/);
    const [kind] = await query<{ relkind: string; key: string }>(
      db,
      `SELECT c.relkind, pg_get_partkeydef(c.oid) AS key FROM pg_class AS c WHERE c.relname = 'user_metrics'`,
    );
    assert.deepEqual(kind, { relkind: 'p', key: 'RANGE ("timestamp")' }, 'range-partitioned on the event time');
    has(/\(user_id( varchar_pattern_ops)?, "timestamp"\)/);
    has(/\(session_id( varchar_pattern_ops)?\)/);
    has(/INDEX \S+ ON (ONLY )?\S+ USING btree \("timestamp"\)/);
  });
});

test('npm run db:status exits 0 when up to date, and npm run db:migrate then has nothing to do', async () => {
  const status = await runTsx('src/cli/migrate.ts', ['status'], { NODE_ENV: 'test', ...target() });
  assert.equal(status.code, 0, describeRun(status));
  for (const name of committedNames) assert.match(status.stdout, new RegExp(`applied\\s+${name}`));
  assert.doesNotMatch(status.stdout, /pending/);
  const deploy = await runTsx('src/cli/migrate.ts', ['deploy'], { NODE_ENV: 'test', ...target() });
  assert.equal(deploy.code, 0, describeRun(deploy));
  assert.match(deploy.stdout, /nothing to do/);
});

test('with MIGRATE_ON_START=false the service starts on a migrated database and is ready', async () => {
  const app = await startApp(serviceConfig(), createLogger('silent'));
  try {
    const ready = await fetch(`${app.url}/ready`);
    assert.equal(ready.status, 200, await ready.text());
  } finally {
    await app.stop();
  }
});

test('a failing migration leaves nothing behind, is not recorded, and the error names it', async () => {
  const ok = '29990101000000_probe_ok';
  const broken = '29990102000000_probe_broken';
  const dir = migrationsFolder({
    [ok]: 'CREATE TABLE probe_ok (id int);\nINSERT INTO probe_ok VALUES (1);\n',
    [broken]: 'CREATE TABLE probe_broken (id int);\nINSERT INTO probe_broken VALUES (1);\nSELECT 1 / 0;\n',
  });
  await withDatabase(async (db) => {
    await assert.rejects(migrate(db, dir), (error: unknown) => {
      assert.ok(error instanceof MigrationError, String(error));
      assert.equal(error.migration, broken);
      assert.ok(error.message.includes(broken), error.message);
      assert.match(error.message, /division by zero/);
      return true;
    });
    const [tables] = await query<{ ok: boolean; broken: boolean }>(
      db,
      `SELECT to_regclass('probe_ok') IS NOT NULL AS ok, to_regclass('probe_broken') IS NOT NULL AS broken`,
    );
    assert.deepEqual(
      tables,
      { ok: true, broken: false },
      'the migration before it is applied; the failing one left no table',
    );
    const recorded = (
      await query<{ migration_name: string }>(db, 'SELECT migration_name FROM "_prisma_migrations" ORDER BY 1')
    ).map((r) => r.migration_name);
    assert.deepEqual(recorded, [...committedNames, ok], 'the failing migration is not recorded');
    assert.deepEqual((await migrationStatus(db, dir)).pending, [broken]);
    // Once fixed, it applies.
    fs.writeFileSync(path.join(dir, broken, 'migration.sql'), 'CREATE TABLE probe_broken (id int);\n');
    assert.deepEqual((await migrate(db, dir)).applied, [broken]);
    const [after] = await query<{ present: boolean }>(db, `SELECT to_regclass('probe_broken') IS NOT NULL AS present`);
    assert.equal(after?.present, true);
  });
});

test('a migration with $$-quoted bodies containing semicolons is applied as one script', async () => {
  const name = '29990103000000_probe_function';
  const dir = migrationsFolder({
    [name]: `CREATE FUNCTION probe_add(a int, b int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  a := a + 1;
  RETURN a + b - 1;
END;
$$;
CREATE TABLE probe_after_function (id int);
`,
  });
  await withDatabase(async (db) => {
    assert.deepEqual((await migrate(db, dir)).applied, [name]);
    const [row] = await query<{ sum: number }>(db, 'SELECT probe_add(2, 3) AS sum');
    assert.equal(row?.sum, 5);
  });
});

test('a migration changed after it was applied is refused; migrations the code lacks are reported', async () => {
  const first = committed[0];
  assert.ok(first);
  const dir = migrationsFolder({});
  fs.appendFileSync(path.join(dir, first.name, 'migration.sql'), '\n-- edited after it was applied\n');
  await withDatabase(async (db) => {
    const status = await migrationStatus(db, dir);
    assert.deepEqual(status.modified, [first.name]);
    await assert.rejects(migrate(db, dir), (error: Error) => {
      assert.ok(error.message.includes(first.name), error.message);
      assert.match(error.message, /changed/);
      return true;
    });
    const empty = migrationsFolder({}, false);
    const unknown = await migrationStatus(db, empty);
    assert.ok(
      committedNames.every((name) => unknown.unknown.includes(name)),
      JSON.stringify(unknown),
    );
  });
});

test('concurrent runs apply a migration once (PostgreSQL: the advisory lock)', {
  skip: !usingPostgres && 'one process holds an embedded database',
}, async () => {
  const name = '29990104000000_probe_concurrent';
  const dir = migrationsFolder({ [name]: 'CREATE TABLE probe_concurrent (id int);\nSELECT pg_sleep(0.2);\n' });
  const dbs = await Promise.all([0, 1, 2].map(() => openDatabase({ url: testDb.url, poolMax: 1 })));
  try {
    const results = await Promise.all(dbs.map((db) => migrate(db, dir)));
    assert.deepEqual(results.map((r) => r.applied).sort(), [[], [], [name]]);
    const [row] = await query<{ n: number }>(
      dbs[0] as Database,
      'SELECT count(*)::int AS n FROM "_prisma_migrations" WHERE migration_name = $1',
      [name],
    );
    assert.equal(row?.n, 1);
  } finally {
    await Promise.all(dbs.map((db) => db.close()));
  }
});
