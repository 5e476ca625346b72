/**
 * COPY in one write (src/db/copy.ts) against a real PostgreSQL: the statement, the data and CopyDone are sent before
 * PostgreSQL has answered anything, so what matters is what happens when it refuses them: the error reaches the
 * caller, nothing is stored, and the same connection goes on working.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { CopyText, copyInOneWrite } from '../src/db/copy.js';
import { createTestDatabase, type TestDatabase, usingPostgres } from './support/harness.js';

describe('COPY in one write', {
  skip: usingPostgres ? false : 'PostgreSQL only: the service copies this way only on a PostgreSQL server',
}, () => {
  let db: TestDatabase;
  let client: pg.Client;
  const rows = async () =>
    (await client.query<{ id: number; label: string }>('SELECT id, label FROM copied ORDER BY id')).rows;

  before(async () => {
    db = await createTestDatabase();
    // A read timeout, as the service's pool sets one: pg then wraps the query's callback, which must still settle.
    client = new pg.Client({ connectionString: db.url, query_timeout: 10_000 });
    await client.connect();
    await client.query('CREATE TABLE copied (id int PRIMARY KEY, label text NOT NULL)');
  });

  after(async () => {
    await client?.end();
    await db?.drop();
  });

  test('copies the rows, non-ASCII text included, and says how many', async () => {
    const copied = await copyInOneWrite(
      client,
      'COPY copied (id, label) FROM STDIN',
      '1\tplain\n2\tnaïve 🎧 \\t tab\n3\t\\\\x00\n',
    );
    assert.equal(copied, 3);
    assert.deepEqual(await rows(), [
      { id: 1, label: 'plain' },
      { id: 2, label: 'naïve 🎧 \t tab' },
      { id: 3, label: '\\x00' },
    ]);
  });

  test('a row that breaks a constraint: the error with its code, nothing of the batch stored, the connection usable', async () => {
    const before = await rows();
    await assert.rejects(
      copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', '10\tnew\n1\tclash\n11\tnew too\n'),
      (error: unknown) => {
        assert.equal((error as { code?: string }).code, '23505');
        return true;
      },
    );
    assert.deepEqual(await rows(), before);
    assert.equal(await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', '12\tafter\n'), 1);
  });

  test('a statement PostgreSQL refuses before copying: the error, and the data that followed it is not run as commands', async () => {
    // The data is SQL on purpose: were it read as a command after the failed COPY, the table would be gone.
    await assert.rejects(
      copyInOneWrite(client, 'COPY no_such_table (id) FROM STDIN', 'DROP TABLE copied;\n'),
      /no_such_table/,
    );
    await assert.rejects(
      copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', 'not a number\tx\n'),
      /invalid input syntax/,
    );
    assert.equal((await client.query('SELECT count(*)::int AS n FROM copied')).rows[0].n, (await rows()).length);
    assert.equal(await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', '13\tstill works\n'), 1);
  });

  test('data in parts is one stream of COPY text: parts may split a line anywhere; CopyText parts a large batch', async () => {
    assert.equal(
      await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', ['100\tspl', 'it ', 'naïve\n101', '\tnext\n']),
      2,
    );
    const text = new CopyText();
    for (let id = 1000; id < 3000; id++) text.add(`${id}\tlabel ${id} ${'é'.repeat(id % 7)}\n`);
    const parts = text.done();
    assert.ok(parts.length > 1, `${parts.length} part(s)`);
    assert.ok(parts.every((part) => part.length < 40_000));
    assert.equal(await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', parts), 2000);
    const stored = (
      await client.query<{ id: number; label: string }>(
        'SELECT id, label FROM copied WHERE id >= 100 AND id < 3000 ORDER BY id',
      )
    ).rows;
    assert.deepEqual(stored.slice(0, 2), [
      { id: 100, label: 'split naïve' },
      { id: 101, label: 'next' },
    ]);
    assert.equal(stored.length, 2002);
    assert.equal(stored.at(-1)?.label, `label 2999 ${'é'.repeat(2999 % 7)}`);
  });

  test('no data: nothing copied, no error', async () => {
    assert.equal(await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', ''), 0);
  });

  test('in a transaction, as the lookup path uses it: a failed COPY leaves the transaction to roll back', async () => {
    await client.query('BEGIN');
    assert.equal(await copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', '20\tin transaction\n'), 1);
    await assert.rejects(copyInOneWrite(client, 'COPY copied (id, label) FROM STDIN', '20\tagain\n'));
    await client.query('ROLLBACK');
    assert.equal(
      (await rows()).some((r) => r.id === 20),
      false,
    );
  });
});
