/**
 * Database.together (src/db.ts): the statements a unit of synchronous work sends go out together, on one connection
 * in one write, and each still gets its own rows or its own error; the connection goes back to the pool in its normal
 * state. On the embedded database they simply run one by one, with the same results.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { type Database, openDatabase } from '../src/db.js';
import { type TestDatabase, createTestDatabase, usingPostgres } from './support/harness.js';

let testDb: TestDatabase;
let db: Database;

before(async () => {
  testDb = await createTestDatabase();
  // One connection: everything below shares it, so a connection left in the wrong state would show.
  db = await openDatabase({ url: testDb.url, dataDir: testDb.dataDir, poolMax: 1, statementTimeoutMs: 10_000 });
});
after(async () => {
  await db?.close();
  await testDb?.drop();
});

test('each statement sent together gets its own rows or its own error', async () => {
  const [first, failing, named, last] = db.together(() => [
    db.queryDirect<{ a: number }>('SELECT 1 AS a', []),
    db.queryDirect('SELECT 1 / $1::int AS b', [0]),
    db.queryDirect<{ c: string }>('SELECT $1::text AS c', ['named'], 'together_named'),
    db.queryDirect<{ d: number }>('SELECT count(*)::int AS d FROM generate_series(1, $1::int)', [3]),
  ]);
  assert.deepEqual(await first, [{ a: 1 }]);
  await assert.rejects(failing as Promise<unknown>, (error: Error & { code?: string }) => error.code === '22012');
  assert.deepEqual(await named, [{ c: 'named' }]);
  assert.deepEqual(await last, [{ d: 3 }]);
});

test('the connection is back to normal afterwards: a transaction, a prepared statement again, the pool idle', async () => {
  await Promise.all(db.together(() => [db.queryDirect('SELECT 1', []), db.queryDirect('SELECT 2', [])]));
  assert.deepEqual(await db.queryDirect('SELECT $1::text AS c', ['again'], 'together_named'), [{ c: 'again' }]);
  const inTransaction = await db.withSession(async (session) => {
    await session.exec('BEGIN');
    const rows = await session.query<{ n: number }>('SELECT 41 + 1 AS n');
    await session.exec('COMMIT');
    return rows;
  });
  assert.deepEqual(inTransaction, [{ n: 42 }]);
  if (usingPostgres) {
    assert.equal(db.pool?.totalCount, 1);
    assert.equal(db.pool?.idleCount, 1);
  }
});

test('only what the work sends before it returns goes together; one statement, or none, is sent as usual', async () => {
  let later: Promise<unknown> | undefined;
  const alone = db.together(() => {
    later = Promise.resolve().then(() => db.queryDirect<{ x: number }>('SELECT 2 AS x', []));
    return db.queryDirect<{ x: number }>('SELECT 1 AS x', []);
  });
  assert.deepEqual(await alone, [{ x: 1 }]);
  assert.deepEqual(await later, [{ x: 2 }]);
  assert.equal(db.together(() => 'nothing sent'), 'nothing sent');
  // Work that throws still sends what it asked for first.
  let sent: Promise<unknown> | undefined;
  assert.throws(() =>
    db.together(() => {
      sent = db.queryDirect<{ y: number }>('SELECT 3 AS y', []);
      throw new Error('work failed');
    }),
  /work failed/);
  assert.deepEqual(await sent, [{ y: 3 }]);
});
