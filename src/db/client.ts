/**
 * The database: PostgreSQL through @prisma/adapter-pg when a URL is configured, else the embedded PostgreSQL (PGlite)
 * in a data folder. Both give the same PrismaClient and a driver-level handle for the request paths (see queryDirect)
 * and what Prisma cannot do (COPY, multi-statement migration scripts, readiness probes).
 */
import fs from 'node:fs';
import path from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import { PrismaPg } from '@prisma/adapter-pg';
import pg from 'pg';
import { PrismaPGlite } from 'pglite-prisma-adapter';
import { Gauge } from 'prom-client';
import { redactUrl } from '../config.js';
import { PrismaClient } from '../generated/prisma/client.js';
import { registry } from '../observability/metrics.js';
import { copyInOneWrite } from './copy.js';
import { classifyDatabaseError } from './errors.js';

/** One connection, held for a unit of work (a migration run; a batch stored with COPY in one transaction). */
export interface SqlSession {
  /** One statement; with `name`, PostgreSQL parses and plans it once per connection (PGlite ignores the name). */
  query<Row = Record<string, unknown>>(text: string, params?: unknown[], name?: string): Promise<Row[]>;
  /** Runs a script of several statements in one call, so PostgreSQL runs it as a whole. */
  exec(script: string): Promise<void>;
  /** `COPY ... FROM STDIN` (the statement) fed with `data` in COPY's text format, in parts or not. PostgreSQL only. */
  copyFrom?(statement: string, data: string | readonly string[]): Promise<void>;
}

export interface Database {
  readonly kind: 'postgres' | 'embedded';
  /** Where the data lives, for logs: the URL without its password, or the data folder. */
  readonly location: string;
  readonly prisma: PrismaClient;
  /** Runs `work` on one connection of its own. */
  withSession<T>(work: (session: SqlSession) => Promise<T>): Promise<T>;
  /** The PGlite instance, for serving the embedded database over the wire protocol. */
  readonly pglite?: PGlite;
  /** The pg connection pool (PostgreSQL only): for COPY in bulk loading and for pool-usage metrics. */
  readonly pool?: pg.Pool;
  /**
   * Runs one statement on the driver itself, not through Prisma: for the request paths (ingestion's fallback insert,
   * the reads, the API-key lookup), where Prisma's handling of a raw query (argument conversion, its query interpreter,
   * result mapping) cost more than the statement did, and a process that never calls Prisma never loads its query
   * engine. With `name`, PostgreSQL parses and plans it once per connection (a
   * prepared statement); PGlite ignores the name.
   */
  queryDirect<Row>(text: string, params: unknown[], name?: string, options?: QueryOptions): Promise<Row[]>;
  close(): Promise<void>;
}

export interface QueryOptions {
  /**
   * timestamptz values as PostgreSQL's text instead of a Date (pg only; PGlite still gives Dates): for statements that
   * also read the time as exact ISO text and make their Date from that, cheaper than pg's date parser.
   */
  timestampsAsText?: boolean;
}

/** pg's type parsers, except timestamptz, left as text. */
const TIMESTAMPS_AS_TEXT = {
  getTypeParser: (oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.TIMESTAMPTZ ? String : pg.types.getTypeParser(oid, format),
} as pg.CustomTypesConfig;

export interface DatabaseOptions {
  /** A postgres:// URL; without one, the embedded database in `dataDir`. */
  url?: string | undefined;
  /** The embedded database's folder; `memory://` keeps it in memory. */
  dataDir?: string;
  /** PostgreSQL connections in the pool; default 10. */
  poolMax?: number;
  /** Longest one statement may run before PostgreSQL cancels it, in ms; default 0 (no limit: tools and migrations). */
  statementTimeoutMs?: number;
  /** Longest a transaction may stay open (interactive) or idle, in ms; default 0 (no limit). */
  transactionTimeoutMs?: number;
  /** Longest opening a PostgreSQL connection may take, in ms; default 10,000. */
  connectTimeoutMs?: number;
}

/**
 * Past the statement timeout, how much longer the client waits for PostgreSQL's own cancellation before it gives the
 * connection up as lost (a network that silently drops packets never delivers either).
 */
const CLIENT_TIMEOUT_GRACE_MS = 5_000;

// PostgreSQL returns int8 as text; our int8 values (unix seconds, counts) are within 2^53.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  return options.url ? openPostgres(options.url, options) : openEmbedded(options.dataDir ?? '.data', options);
}

async function openPostgres(url: string, options: DatabaseOptions): Promise<Database> {
  const statementTimeout = options.statementTimeoutMs ?? 0;
  const transactionTimeout = options.transactionTimeoutMs ?? 0;
  const pool = new pg.Pool({
    connectionString: url,
    max: options.poolMax ?? 10,
    // Short, so that requests fail fast (UNAVAILABLE) while the server is down or the network drops packets.
    connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
    // Keepalives let the kernel notice a peer that vanished without a FIN (a killed VM, a dropped route).
    keepAlive: true,
    // Sent in the start-up packet: every connection of the pool has the limits from its first statement on.
    ...(statementTimeout > 0
      ? { statement_timeout: statementTimeout, query_timeout: statementTimeout + CLIENT_TIMEOUT_GRACE_MS }
      : {}),
    ...(transactionTimeout > 0 ? { idle_in_transaction_session_timeout: transactionTimeout } : {}),
  });
  // An idle client losing its connection (database restart) must not crash the process; the pool replaces it. A client
  // that fails during a query is released with the error by pg's pool.query (adapter-pg uses it), which discards it:
  // no dead connection is handed out again.
  pool.on('error', () => {});
  const prisma = new PrismaClient({
    adapter: new PrismaPg(pool),
    ...(transactionTimeout > 0 ? { transactionOptions: { timeout: transactionTimeout } } : {}),
  });
  return {
    kind: 'postgres',
    location: redactUrl(url),
    prisma,
    pool,
    async queryDirect<Row>(text: string, params: unknown[], name?: string, queryOptions?: QueryOptions) {
      const config = {
        text,
        values: params,
        name,
        types: queryOptions?.timestampsAsText ? TIMESTAMPS_AS_TEXT : undefined,
      };
      return (await pool.query(config)).rows as Row[];
    },
    async withSession(work) {
      const client = await pool.connect();
      let broken: Error | undefined;
      // A checked-out client reports a lost connection as an 'error' event (besides failing its query): unheard, that
      // event would end the process. The client is then discarded on release.
      const onError = (error: Error) => {
        broken = error;
      };
      client.on('error', onError);
      try {
        return await work({
          query: async (text, params, name) => (await client.query({ text, values: params, name })).rows,
          exec: async (script) => {
            await client.query(script);
          },
          copyFrom: async (statement, data) => {
            await copyInOneWrite(client, statement, data);
          },
        });
      } catch (error) {
        // A connection that broke or timed out mid-query is discarded, not returned to the pool.
        if (classifyDatabaseError(error)?.kind === 'unavailable') broken = error as Error;
        throw error;
      } finally {
        client.off('error', onError);
        client.release(broken);
      }
    },
    async close() {
      await prisma.$disconnect();
      await pool.end();
    },
  };
}

async function openEmbedded(dataDir: string, options: DatabaseOptions): Promise<Database> {
  const inMemory = dataDir.startsWith('memory://');
  let releaseLock = () => {};
  if (!inMemory) {
    fs.mkdirSync(dataDir, { recursive: true });
    releaseLock = lockDataDir(dataDir);
  }
  let pglite: PGlite;
  try {
    pglite = await PGlite.create(inMemory ? undefined : dataDir);
  } catch (error) {
    releaseLock();
    throw error;
  }
  // PGlite has one session, so SET holds for every later query. PGlite 0.5 runs queries on the JavaScript thread
  // without timers and does not enforce statement_timeout (measured); it is set so that SHOW reports the limit.
  // idle_in_transaction_session_timeout is left alone: enforced, it would end the only session there is.
  if (options.statementTimeoutMs)
    await pglite.exec(`SET statement_timeout = ${Math.floor(options.statementTimeoutMs)}`);
  const prisma = new PrismaClient({
    adapter: new PrismaPGlite(pglite),
    ...(options.transactionTimeoutMs ? { transactionOptions: { timeout: options.transactionTimeoutMs } } : {}),
  });
  return {
    kind: 'embedded',
    location: inMemory ? 'memory' : dataDir,
    prisma,
    pglite,
    async queryDirect<Row>(text: string, params: unknown[]) {
      return (await pglite.query<Row>(text, params)).rows;
    },
    async withSession(work) {
      return work({
        query: async (text, params) => (await pglite.query(text, params)).rows as never[],
        exec: async (script) => {
          await pglite.exec(script);
        },
      });
    },
    async close() {
      await prisma.$disconnect();
      await pglite.close();
      releaseLock();
    },
  };
}

/**
 * PGlite's data folder must have one process at a time: two would corrupt it. A lock file holds the owner's pid;
 * a lock left by a process that no longer runs is taken over.
 */
function lockDataDir(dataDir: string): () => void {
  const lockFile = path.join(dataDir, 'service.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(lockFile, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(lockFile, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = Number(fs.readFileSync(lockFile, 'utf8'));
      if (Number.isInteger(owner) && owner > 0 && owner !== process.pid && isRunning(owner)) {
        throw new Error(
          `The embedded database in ${dataDir} is in use by process ${owner}. Stop it, or set DATA_DIR to ` +
            `another folder.`,
        );
      }
      fs.rmSync(lockFile, { force: true });
    }
  }
  throw new Error(`Could not lock the embedded database folder ${dataDir}`);
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let active: Database | undefined;

/** Opens the service's one database; every service function uses it through `database()`. */
export async function connectDatabase(options: DatabaseOptions): Promise<Database> {
  if (active) throw new Error('The database is already connected');
  active = await openDatabase(options);
  if (active.pool) registerPoolGauges();
  return active;
}

/**
 * The pool gauges, registered once a PostgreSQL pool exists: on the embedded database they would only ever say 0,
 * which reads like an exhausted pool. They read whichever database is connected when scraped.
 */
function registerPoolGauges(): void {
  if (registry.getSingleMetric('db_pool_connections')) return;
  const pool = () => active?.pool;
  new Gauge({
    name: 'db_pool_connections',
    help: 'PostgreSQL pool connections: open (total), idle, and in use (checked out by a query or transaction).',
    labelNames: ['state'] as const,
    registers: [registry],
    collect() {
      const current = pool();
      if (!current) return;
      this.set({ state: 'total' }, current.totalCount);
      this.set({ state: 'idle' }, current.idleCount);
      this.set({ state: 'in_use' }, current.totalCount - current.idleCount);
    },
  });
  new Gauge({
    name: 'db_pool_waiting_clients',
    help: 'Queries waiting for a free PostgreSQL pool connection (the pool is exhausted while this is above 0).',
    registers: [registry],
    collect() {
      this.set(pool()?.waitingCount ?? 0);
    },
  });
  new Gauge({
    name: 'db_pool_max_connections',
    help: 'Most connections the PostgreSQL pool opens (DB_POOL_MAX).',
    registers: [registry],
    collect() {
      this.set(pool()?.options.max ?? 0);
    },
  });
}

/** The connected database (the module's singleton). */
export function database(): Database {
  if (!active) throw new Error('The database is not connected: call connectDatabase() first');
  return active;
}

export async function disconnectDatabase(): Promise<void> {
  const current = active;
  active = undefined;
  await current?.close();
}
