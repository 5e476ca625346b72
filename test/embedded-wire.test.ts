/**
 * The embedded database served over the PostgreSQL protocol (EMBEDDED_DB_PORT; src/db/embedded-wire.ts): many clients
 * at once on PGlite's single session, as Prisma Studio (postgres.js), psql and pgAdmin use it, while the service
 * keeps working. Only meaningful on the embedded database.
 */
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import postgres from 'postgres';
import { database } from '../src/db/client.js';
import { type EmbeddedWireServer, startEmbeddedWireServer } from '../src/db/embedded-wire.js';
import { INGEST, nowSeconds, record, startTestService, type TestService, usingPostgres } from './support/harness.js';

const skip = usingPostgres
  ? 'serves the embedded database only; TEST_DATABASE_URL points the service at PostgreSQL'
  : false;

async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** Resolves to what the promise settled with, or 'pending' if it had not settled after `ms`. */
async function stateAfter<T>(promise: Promise<T>, ms: number): Promise<'pending' | 'settled'> {
  let settled = false;
  promise.then(
    () => (settled = true),
    () => (settled = true),
  );
  await sleep(ms);
  return settled ? 'settled' : 'pending';
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>(
    (_, reject) => (timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)),
  );
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

describe('the embedded database over the PostgreSQL protocol, shared with the running service', { skip }, () => {
  let service: TestService;
  let url: string;
  const clients: pg.Client[] = [];

  const connect = async () => {
    const client = new pg.Client({ connectionString: url });
    client.on('error', () => {});
    await client.connect();
    clients.push(client);
    return client;
  };
  const count = async (owner: string) => {
    const [row] = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM wire_items WHERE owner = $1', [
      owner,
    ]);
    return row!.n;
  };

  before(async () => {
    const port = await freePort();
    service = await startTestService({ EMBEDDED_DB_PORT: String(port) });
    url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
    const admin = await connect();
    await admin.query('CREATE TABLE wire_items (id serial PRIMARY KEY, owner text NOT NULL, n int NOT NULL)');
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.end().catch(() => {})));
    await service?.stop();
  });

  test('concurrent pg and postgres.js clients each get their own answers, named statements included', async () => {
    const pgClients = await Promise.all(Array.from({ length: 5 }, () => connect()));
    // Studio's pattern: postgres.js, several connections, unnamed statements described first (Parse/Describe/Flush,
    // then Bind/Execute/Sync) next to simple queries from the other connections.
    const sql = postgres(url, { max: 4, onnotice: () => {} });
    const expectedRows = new Map<string, number>();
    try {
      const pgWork = pgClients.map(async (client, c) => {
        const owner = `pg-${c}`;
        for (let i = 0; i < 24; i++) {
          // The same statement name in every client: each connection's "echo" is its own.
          const named = await client.query({
            name: 'echo',
            text: 'SELECT $1::int * 2 AS doubled, $2::text AS tag',
            values: [i, owner],
          });
          assert.deepEqual(named.rows, [{ doubled: 2 * i, tag: owner }]);
          const unnamed = await client.query("SELECT $1::text || '/' || $2::text AS joined", [owner, String(i)]);
          assert.equal(unnamed.rows[0].joined, `${owner}/${i}`);
          const simple = await client.query("SELECT current_setting('timezone') AS tz");
          assert.equal(typeof simple.rows[0].tz, 'string');
          if (i % 6 === 5) {
            await client.query('BEGIN');
            await client.query('INSERT INTO wire_items (owner, n) SELECT $1, g FROM generate_series(1, 3) g', [owner]);
            const inside = await client.query('SELECT count(*)::int AS n FROM wire_items WHERE owner = $1', [owner]);
            expectedRows.set(owner, (expectedRows.get(owner) ?? 0) + 3);
            assert.equal(
              inside.rows[0].n,
              expectedRows.get(owner),
              `${owner} sees its own rows inside its transaction`,
            );
            await client.query('COMMIT');
          }
        }
      });
      const postgresWork = Array.from({ length: 60 }, async (_, i) => {
        const owner = `pjs-${i % 3}`;
        if (i % 10 === 9) {
          await sql.begin(async (tx) => {
            await tx`INSERT INTO wire_items (owner, n) VALUES (${owner}, ${i})`;
            await tx`INSERT INTO wire_items (owner, n) VALUES (${owner}, ${i + 1000})`;
          });
          expectedRows.set(owner, (expectedRows.get(owner) ?? 0) + 2);
          return;
        }
        const [prepared] = await sql`SELECT ${i}::int * 3 AS tripled, ${owner}::text AS tag`;
        assert.deepEqual({ ...prepared }, { tripled: 3 * i, tag: owner });
        const [described] = await sql.unsafe('SELECT $1::int + 1 AS next, $2::text AS tag', [i, owner], {
          prepare: false,
        });
        assert.deepEqual({ ...described }, { next: i + 1, tag: owner });
        const [zone] = await sql.unsafe("SELECT current_setting('timezone') AS tz");
        assert.equal(typeof zone!.tz, 'string');
      });
      await withTimeout(Promise.all([...pgWork, ...postgresWork]), 60_000, 'the concurrent clients');
      // postgres.js really used several connections, and each named statement lives under its connection's prefix.
      const statements = await service.sql<{ name: string }>(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'w%\\_%'",
      );
      assert.equal(
        statements.filter((s) => s.name.endsWith('_echo')).length,
        pgClients.length,
        JSON.stringify(statements),
      );
      const postgresJsConnections = new Set(
        statements.filter((s) => !s.name.endsWith('_echo')).map((s) => s.name.split('_')[0]),
      );
      assert.ok(postgresJsConnections.size >= 2, `postgres.js used ${postgresJsConnections.size} connection(s)`);
    } finally {
      await sql.end({ timeout: 5 });
    }
    for (const [owner, rows] of expectedRows) assert.equal(await count(owner), rows, owner);
    // Ended connections leave no prepared statements behind.
    await Promise.all(pgClients.map((client) => client.end()));
    const left = await service.sql<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE 'w%\\_%'",
    );
    assert.equal(left[0]!.n, 0);
  });

  test("a transaction in one connection holds off other connections' queries and the service's", async () => {
    const a = await connect();
    const b = await connect();
    await a.query('BEGIN');
    await a.query("INSERT INTO wire_items (owner, n) VALUES ('iso-a', 1)");
    const fromB = b.query("INSERT INTO wire_items (owner, n) VALUES ('iso-b', 1)");
    const fromService = service.sql("INSERT INTO wire_items (owner, n) VALUES ('iso-service', 1)");
    const eventId = `iso-${Date.now()}`;
    const ingest = service.gql(INGEST, { records: [record({ eventId })] });
    // Run inside A's transaction, they would finish now and vanish with its rollback.
    assert.equal(await stateAfter(fromB, 300), 'pending');
    assert.equal(await stateAfter(fromService, 0), 'pending');
    assert.equal(await stateAfter(ingest, 0), 'pending');
    await a.query('ROLLBACK');
    await withTimeout(Promise.all([fromB, fromService, ingest]), 10_000, 'the queries held off by the transaction');
    assert.equal(await count('iso-a'), 0);
    assert.equal(await count('iso-b'), 1);
    assert.equal(await count('iso-service'), 1);
    const stored = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics WHERE event_id = $1', [
      eventId,
    ]);
    assert.equal(stored[0]!.n, 1);
  });

  test("the service's own transaction is not joined by wire queries", async () => {
    const wire = await connect();
    const pglite = database().pglite!;
    let wireInsert: Promise<unknown> | undefined;
    // PGlite's transaction() is what the Prisma adapter uses for interactive transactions.
    await pglite.transaction(async (tx) => {
      await tx.query("INSERT INTO wire_items (owner, n) VALUES ('service-tx', 1)");
      wireInsert = wire.query("INSERT INTO wire_items (owner, n) VALUES ('wire-during-service-tx', 1)");
      assert.equal(await stateAfter(wireInsert, 300), 'pending');
      await tx.rollback();
    });
    await withTimeout(wireInsert!, 10_000, 'the wire insert');
    assert.equal(await count('service-tx'), 0);
    assert.equal(await count('wire-during-service-tx'), 1);
  });

  test('a connection dropped mid-transaction leaves no open transaction and no prepared statement', async () => {
    const a = await connect();
    await a.query({ name: 'leftover', text: 'SELECT 1 AS one' });
    await a.query('BEGIN');
    await a.query("INSERT INTO wire_items (owner, n) VALUES ('dropped', 1)");
    a.connection.stream.destroy();

    const b = await connect();
    const notices: string[] = [];
    b.on('notice', (notice) => notices.push(notice.message ?? ''));
    await withTimeout(b.query('BEGIN'), 10_000, 'BEGIN after the dropped connection');
    await b.query('ROLLBACK');
    assert.deepEqual(notices, [], 'BEGIN found no transaction in progress');
    assert.equal(await withTimeout(count('dropped'), 10_000, "the service's query"), 0);
    assert.equal(database().pglite!.isInTransaction(), false);
    const statements = await service.sql<{ n: number }>(
      "SELECT count(*)::int AS n FROM pg_prepared_statements WHERE name LIKE '%leftover'",
    );
    assert.equal(statements[0]!.n, 0);
  });

  test('COPY FROM STDIN works as a simple query of its own and is refused elsewhere, without harm', async () => {
    const client = await connect();
    await new Promise<void>((resolve, reject) => {
      const stream = client.query(copyFrom('COPY wire_items (owner, n) FROM STDIN'));
      stream.on('finish', resolve);
      stream.on('error', reject);
      stream.end(Array.from({ length: 50 }, (_, i) => `copied\t${i}\n`).join(''));
    });
    assert.equal(await count('copied'), 50);
    await assert.rejects(client.query('SELECT 1; COPY wire_items (owner, n) FROM STDIN'), { code: '0A000' });
    await assert.rejects(client.query({ name: 'copy', text: 'COPY wire_items (owner, n) FROM STDIN' }), {
      code: '0A000',
    });
    assert.deepEqual((await client.query('SELECT 2 AS two')).rows, [{ two: 2 }]);
  });

  test('GraphQL ingestion keeps working while wire clients hammer the database', async () => {
    const hammers = await Promise.all(Array.from({ length: 4 }, () => connect()));
    const sql = postgres(url, { max: 3, onnotice: () => {} });
    let running = true;
    let wireOperations = 0;
    const hammering = [
      ...hammers.map(async (client, c) => {
        for (let i = 0; running; i++) {
          // Each round starts with no rows of its owner: a rollback that did not happen would show up as a 2.
          await client.query('BEGIN');
          await client.query('INSERT INTO wire_items (owner, n) VALUES ($1, $2)', [`hammer-${c}`, i]);
          const { rows } = await client.query('SELECT count(*)::int AS n FROM wire_items WHERE owner = $1', [
            `hammer-${c}`,
          ]);
          assert.equal(rows[0].n, 1);
          await client.query(i % 2 === 0 ? 'COMMIT' : 'ROLLBACK');
          if (i % 2 === 0) await client.query('DELETE FROM wire_items WHERE owner = $1', [`hammer-${c}`]);
          wireOperations++;
        }
      }),
      (async () => {
        for (let i = 0; running; i++) {
          const rows = await sql`SELECT count(*)::int AS n FROM user_metrics WHERE user_id = ${`hammer-user-${i % 5}`}`;
          assert.equal(typeof rows[0]!.n, 'number');
          wireOperations++;
        }
      })(),
    ];
    // A failing hammer stops the others; its error is reported after the ingestion.
    const hammered = Promise.all(
      hammering.map((work) =>
        work.catch((error: unknown) => {
          running = false;
          return Promise.reject(error);
        }),
      ),
    );
    hammered.catch(() => {});
    const batches = 12;
    const perBatch = 40;
    try {
      const start = nowSeconds() - 7200;
      for (let b = 0; b < batches; b++) {
        const records = Array.from({ length: perBatch }, (_, i) =>
          record({ eventId: `hammer-${b}-${i}`, userId: `hammer-user-${i % 5}`, timestamp: start + b * perBatch + i }),
        );
        const result = await withTimeout(service.gql(INGEST, { records }), 30_000, `ingestion batch ${b}`);
        assert.deepEqual(result.ingestMetrics, { accepted: perBatch, duplicates: 0, rejected: [] });
      }
    } finally {
      running = false;
      await hammered;
      await sql.end({ timeout: 5 });
    }
    assert.ok(wireOperations > batches, `the wire clients ran alongside (${wireOperations} operations)`);
    const left = await service.sql<{ n: number }>(
      "SELECT count(*)::int AS n FROM wire_items WHERE owner LIKE 'hammer-%'",
    );
    assert.equal(left[0]!.n, 0);
    const stored = await service.sql<{ n: number }>(
      "SELECT count(*)::int AS n FROM user_metrics WHERE event_id LIKE 'hammer-%'",
    );
    assert.equal(stored[0]!.n, batches * perBatch);
    const read = await service.gql('{ metrics(first: 1) { totalCount } }');
    assert.ok(read.metrics.totalCount >= batches * perBatch);
  });

  describe('limits (a second server with small ones, on the same database)', () => {
    let small: EmbeddedWireServer;
    before(async () => {
      small = await startEmbeddedWireServer({
        db: database().pglite!,
        port: 0,
        maxConnections: 2,
        idleInTransactionTimeoutMs: 400,
        maxCopyBytes: 4096,
      });
    });
    after(async () => {
      await small?.stop();
    });

    test('listens on 127.0.0.1 only', () => {
      assert.equal(small.host, '127.0.0.1');
      assert.match(small.url, /^postgresql:\/\/postgres@127\.0\.0\.1:\d+\/postgres$/);
    });

    test('a client idle inside a transaction past the limit is ended and its work rolled back', async () => {
      const idle = new pg.Client({ connectionString: small.url });
      const errors: Array<Error & { code?: string }> = [];
      idle.on('error', (error) => errors.push(error));
      await idle.connect();
      await idle.query('BEGIN');
      await idle.query("INSERT INTO wire_items (owner, n) VALUES ('idle', 1)");
      // Meanwhile the service waits: the session is the idle client's.
      const fromService = service.sql("INSERT INTO wire_items (owner, n) VALUES ('after-idle', 1)");
      await sleep(900);
      assert.equal(errors[0]?.code, '25P03', JSON.stringify(errors.map((e) => e.message)));
      await withTimeout(fromService, 10_000, "the service's insert");
      assert.equal(await count('idle'), 0);
      assert.equal(await count('after-idle'), 1);
      await idle.end().catch(() => {});
    });

    test('a COPY with more data than the limit fails with its reason, and the connection goes on', async () => {
      for (let waited = 0; small.connectionCount() > 0 && waited < 5000; waited += 20) await sleep(20);
      const client = new pg.Client({ connectionString: small.url });
      await client.connect();
      try {
        const copy = (rows: number) =>
          new Promise<void>((resolve, reject) => {
            const stream = client.query(copyFrom('COPY wire_items (owner, n) FROM STDIN'));
            stream.on('finish', resolve);
            stream.on('error', reject);
            for (let i = 0; i < rows; i++) stream.write(`big-copy\t${i}\n`);
            stream.end();
          });
        await assert.rejects(copy(1000), { code: '57014', message: /more than 4096 bytes of COPY data/ });
        assert.equal(await count('big-copy'), 0);
        await copy(10);
        assert.equal(await count('big-copy'), 10);
      } finally {
        await client.end();
      }
    });

    test('connections over the limit are refused with "too many clients"', async () => {
      for (let waited = 0; small.connectionCount() > 0 && waited < 5000; waited += 20) await sleep(20);
      const open = [new pg.Client({ connectionString: small.url }), new pg.Client({ connectionString: small.url })];
      await Promise.all(open.map((client) => client.connect()));
      const extra = new pg.Client({ connectionString: small.url });
      extra.on('error', () => {});
      try {
        await assert.rejects(extra.connect(), { code: '53300' });
      } finally {
        await Promise.all(open.map((client) => client.end()));
      }
      for (let waited = 0; small.connectionCount() > 0 && waited < 5000; waited += 20) await sleep(20);
      const later = new pg.Client({ connectionString: small.url });
      await later.connect();
      assert.deepEqual((await later.query('SELECT 1 AS one')).rows, [{ one: 1 }]);
      await later.end();
    });
  });
});
