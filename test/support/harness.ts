/**
 * Test harness: a fresh, migrated database per test file and the real service on a port of its own.
 *
 * With TEST_DATABASE_URL (a PostgreSQL server URL whose user may CREATE DATABASE) every test file creates its own
 * database there and drops it afterwards; an unreachable URL fails loudly, never falls back. Without it, each test file
 * gets the embedded database in a temporary folder (a copy of a freshly initialised, empty one: see embeddedTemplate).
 */

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { type App, startApp } from '../../src/app.js';
import { type Config, loadConfig } from '../../src/config.js';
import { database, openDatabase } from '../../src/db/client.js';
import { migrate, readMigrations } from '../../src/db/migrations.js';
import { createLogger } from '../../src/logger.js';

export interface TestDatabase {
  /** A postgres:// URL, or undefined for the embedded database. */
  url: string | undefined;
  /** The embedded database's folder (embedded mode only). */
  dataDir: string;
  drop(): Promise<void>;
}

export const usingPostgres = Boolean(process.env.TEST_DATABASE_URL);

/**
 * An initialised embedded database folder that test databases are copied from: PGlite's initdb takes seconds, a copy a
 * fraction of one. `migrated` ones also hold the project's migrations (applied by its own runner), saving each service
 * start the ~2 s of applying them; their name carries a hash of the migration files, so a changed or added migration
 * gets a template of its own. Built once per machine, PGlite version and migration set (in the temp folder) by the first
 * test file that needs it; the rename that publishes it is atomic, so test files running at once never see half of one.
 */
/** A short hash of the migration files' names and checksums: a changed or added migration changes it. */
function migrationSetHash(): string {
  const set = readMigrations()
    .map((m) => `${m.name}:${m.checksum}`)
    .join('\n');
  return crypto.createHash('sha256').update(set).digest('hex').slice(0, 16);
}

async function embeddedTemplate(migrated: boolean): Promise<string> {
  const pgliteEntry = fileURLToPath(import.meta.resolve('@electric-sql/pglite'));
  const { version } = JSON.parse(
    fs.readFileSync(path.resolve(path.dirname(pgliteEntry), '../package.json'), 'utf8'),
  ) as { version: string };
  const migrations = migrated ? `-migrated-${migrationSetHash()}` : '';
  const template = path.join(os.tmpdir(), `metrics-test-template-pglite-${version}${migrations}`);
  if (fs.existsSync(template)) return template;
  const building = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-test-template-building-'));
  try {
    if (migrated) {
      fs.cpSync(await embeddedTemplate(false), building, { recursive: true });
      const db = await openDatabase({ dataDir: building });
      try {
        await migrate(db);
      } finally {
        await db.close();
      }
    } else {
      const { PGlite } = await import('@electric-sql/pglite');
      await (await PGlite.create(building)).close();
    }
  } catch (error) {
    fs.rmSync(building, { recursive: true, force: true }); // a half-built template is never published nor left behind
    throw error;
  }
  try {
    fs.renameSync(building, template);
  } catch {
    fs.rmSync(building, { recursive: true, force: true }); // another test file published one first
  }
  return template;
}

/**
 * A database of the test file's own: empty (as an operator's first run sees it), or with `migrated` already holding
 * the migrations, for tests of everything but migrating (on PostgreSQL, where applying them takes ~0.2 s, the service
 * still applies them itself).
 */
export async function createTestDatabase({ migrated = false } = {}): Promise<TestDatabase> {
  const adminUrl = process.env.TEST_DATABASE_URL;
  if (!adminUrl) {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-test-'));
    fs.cpSync(await embeddedTemplate(migrated), dataDir, { recursive: true });
    return { url: undefined, dataDir, drop: async () => fs.rmSync(dataDir, { recursive: true, force: true }) };
  }
  const name = `metrics_test_${crypto.randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 5000 });
  try {
    await admin.connect();
  } catch (error) {
    throw new Error(
      `TEST_DATABASE_URL=${adminUrl} cannot be reached (${(error as Error).message}); the tests will not fall back to the embedded database.`,
    );
  }
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    dataDir: '',
    drop: async () => {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

// biome-ignore lint/suspicious/noExplicitAny: tests read answers by path; a wrong path fails the assertion.
export interface GraphQLResponse<T = Record<string, any>> {
  status: number;
  headers: Headers;
  data?: T | null;
  errors?: Array<{ message: string; path?: (string | number)[]; extensions?: Record<string, unknown> }>;
}

export interface TestService {
  app: App;
  url: string;
  config: Config;
  /** POSTs one GraphQL operation; returns status, headers and the parsed body. */
  // biome-ignore lint/suspicious/noExplicitAny: as GraphQLResponse.
  request<T = Record<string, any>>(
    query: string,
    variables?: Record<string, unknown>,
    headers?: Record<string, string>,
  ): Promise<GraphQLResponse<T>>;
  /** As `request`, but fails (with the whole response in the message) unless there is data and no error. */
  // biome-ignore lint/suspicious/noExplicitAny: as GraphQLResponse.
  gql<T = Record<string, any>>(
    query: string,
    variables?: Record<string, unknown>,
    headers?: Record<string, string>,
  ): Promise<T>;
  /** Runs SQL on the service's database through the driver, not through the service's code. */
  // biome-ignore lint/suspicious/noExplicitAny: rows are read by column name in assertions.
  sql<Row = Record<string, any>>(text: string, params?: unknown[]): Promise<Row[]>;
  stop(): Promise<void>;
}

/** Starts the service on a fresh database; `env` overrides configuration variables as the service reads them. */
export async function startTestService(env: Record<string, string> = {}): Promise<TestService> {
  const testDb = await createTestDatabase({ migrated: true });
  const config = loadConfig({
    NODE_ENV: 'test',
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'silent',
    ...(testDb.url ? { DATABASE_URL: testDb.url } : { DATA_DIR: testDb.dataDir }),
    SHUTDOWN_TIMEOUT_MS: '5000',
    ...env,
  });
  const app = await startApp(config, createLogger(config.logLevel));
  const request = async <T>(
    query: string,
    variables?: Record<string, unknown>,
    headers: Record<string, string> = {},
  ) => {
    const response = await fetch(`${app.url}/graphql`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        ...headers,
      },
      body: JSON.stringify({ query, variables }),
    });
    const text = await response.text();
    let body: { data?: T; errors?: GraphQLResponse['errors'] };
    try {
      body = JSON.parse(text) as typeof body;
    } catch {
      throw new Error(`Response ${response.status} is not JSON: ${text.slice(0, 500)}`);
    }
    return { status: response.status, headers: response.headers, ...body };
  };
  return {
    app,
    url: app.url,
    config,
    request,
    async gql<T>(query: string, variables?: Record<string, unknown>, headers?: Record<string, string>) {
      const response = await request<T>(query, variables, headers);
      if (response.errors?.length || !response.data) {
        throw new Error(
          `GraphQL request failed (HTTP ${response.status}): ${JSON.stringify({ data: response.data, errors: response.errors }).slice(0, 2000)}`,
        );
      }
      return response.data;
    },
    sql: <Row>(text: string, params?: unknown[]) =>
      database().withSession((session) => session.query<Row>(text, params)),
    async stop() {
      await app.stop();
      await testDb.drop();
    },
  };
}

/** Unix seconds now, for records that must pass the timestamp rules. */
export const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A valid record; override any field. */
export function record(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    userId: 'user-1',
    sessionId: 'session-1',
    timestamp: nowSeconds() - 3600,
    talkedTime: 60,
    microphoneUsed: true,
    speakerUsed: false,
    voiceSentiment: 'positive',
    ...overrides,
  };
}

export const INGEST = /* GraphQL */ `
  mutation Ingest($records: [UserMetricInput!]!, $atomic: Boolean) {
    ingestMetrics(records: $records, atomic: $atomic) {
      accepted
      duplicates
      rejected { index eventId field code message }
    }
  }`;
