/**
 * Prisma's schema engine compiled to WebAssembly (`@prisma/schema-engine-wasm`), driven through @prisma/adapter-pg on a
 * database this process created itself. Used by `npm run db:diff` (src/cli/migration-diff.ts) where Prisma's native
 * schema engine cannot be downloaded (see README, "Authoring a migration").
 *
 * Three faults of the stock pieces are worked around here:
 * - adapter-pg's `connectToShadowDb()` creates its shadow database but, given a connection string, connects to the main
 *   database instead (pg lets `connectionString` win over `database`). Our factory's connections, main and shadow, all
 *   go to the one temporary database we created, so nothing else on the server is read or written.
 * - adapter-pg's `executeScript` splits the script on `;` (breaking `$$` bodies and string literals). Ours sends the
 *   whole migration in one simple-protocol query, as the native engine does.
 * - adapter-pg cannot read PostgreSQL's internal `"char"` type (pg_constraint.contype, confdeltype, ...), which the
 *   engine's introspection selects. Ours reports such columns as text.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { PrismaPg } from '@prisma/adapter-pg';
import {
  bindMigrationAwareSqlAdapterFactory,
  type SqlDriverAdapter,
  type SqlMigrationAwareDriverAdapterFactory,
} from '@prisma/driver-adapter-utils';
import type { SchemaEngine } from '@prisma/schema-engine-wasm/schema_engine_bg';
import pg from 'pg';

export type { SchemaEngine };

type SchemaEngineModule = typeof import('@prisma/schema-engine-wasm/schema_engine_bg');

const require = createRequire(import.meta.url);

/** PostgreSQL's internal one-byte `"char"` type, and `text`. */
const CHAR_OID = 18;
const TEXT_OID = 25;

let modulePromise: Promise<SchemaEngineModule> | undefined;

/**
 * Loads the engine the way prisma-pglite does: the package's entry point imports the .wasm as an ES module (which Node
 * cannot do without experimental flags), so we import the JS glue (`schema_engine_bg`), instantiate the .wasm
 * ourselves and hand its exports to the glue.
 */
export function loadSchemaEngineModule(): Promise<SchemaEngineModule> {
  modulePromise ??= (async () => {
    const gluePath = require.resolve('@prisma/schema-engine-wasm/schema_engine_bg');
    const runtime: SchemaEngineModule = await import('@prisma/schema-engine-wasm/schema_engine_bg');
    const wasmPath = path.join(path.dirname(gluePath), 'schema_engine_bg.wasm');
    const module = new WebAssembly.Module(await fs.promises.readFile(wasmPath));
    // The .wasm imports the glue's exported functions; a plain object of them is what WebAssembly takes.
    const instance = new WebAssembly.Instance(module, { './schema_engine_bg.js': { ...runtime } });
    runtime.__wbg_set_wasm(instance.exports);
    const start = instance.exports.__wbindgen_start;
    if (typeof start !== 'function') {
      throw new Error('@prisma/schema-engine-wasm: the module exports no __wbindgen_start');
    }
    start();
    return runtime;
  })();
  return modulePromise;
}

/** The shape of adapter-pg 7.10.x internals we rely on (pinned versions; checked at run time). */
interface PgQueryableInternals {
  performIO(query: unknown): Promise<pg.QueryResult>;
  onError(error: unknown): never;
}

function internals(target: object): PgQueryableInternals {
  const candidate = target as Partial<PgQueryableInternals>;
  if (typeof candidate.performIO !== 'function' || typeof candidate.onError !== 'function') {
    throw new Error(
      '@prisma/adapter-pg no longer has the internals src/cli/schema-engine.ts patches (performIO, onError): ' +
        'check that file against the installed @prisma/adapter-pg version.',
    );
  }
  return candidate as PgQueryableInternals;
}

/** Reports `"char"` result columns as `text` (same string values), which adapter-pg can map. */
function readCharAsText<T extends object>(queryable: T): T {
  const inner = internals(queryable);
  const performIO = inner.performIO.bind(queryable);
  inner.performIO = async (query) => {
    const result = await performIO(query);
    if (result.fields.some((field) => field.dataTypeID === CHAR_OID)) {
      result.fields = result.fields.map((field) =>
        field.dataTypeID === CHAR_OID ? { ...field, dataTypeID: TEXT_OID } : field,
      );
    }
    return result;
  };
  return queryable;
}

async function connectAdapter(pool: pg.Pool): Promise<SqlDriverAdapter> {
  const adapter = readCharAsText(await new PrismaPg(pool).connect());
  const { onError } = internals(adapter);
  const startTransaction = adapter.startTransaction.bind(adapter);
  adapter.startTransaction = async (isolationLevel) => readCharAsText(await startTransaction(isolationLevel));
  // The whole script in one query: PostgreSQL runs a multi-statement simple query as one implicit transaction.
  adapter.executeScript = async (script: string) => {
    try {
      await pool.query(script);
    } catch (error) {
      onError.call(adapter, error);
    }
  };
  return adapter;
}

export interface TempDatabaseFactory {
  factory: SqlMigrationAwareDriverAdapterFactory;
  /** Ends every pool the engine was given. */
  close(): Promise<void>;
}

/**
 * A migration-aware adapter factory whose main and shadow connections are all to `databaseUrl`, a database this
 * process created and will drop: the engine never sees any other database.
 */
export function tempDatabaseFactory(databaseUrl: string): TempDatabaseFactory {
  const pools: pg.Pool[] = [];
  const open = async (): Promise<SqlDriverAdapter> => {
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 2, connectionTimeoutMillis: 10_000 });
    // The temp database is dropped WITH (FORCE) at the end; its idle connections being terminated is expected.
    pool.on('error', () => {});
    pools.push(pool);
    return connectAdapter(pool);
  };
  const factory: SqlMigrationAwareDriverAdapterFactory = {
    provider: 'postgres',
    adapterName: '@prisma/adapter-pg',
    connect: open,
    connectToShadowDb: open,
  };
  return {
    factory,
    async close() {
      const all = pools.splice(0);
      await Promise.allSettled(all.map((pool) => pool.end()));
    },
  };
}

export interface StartedEngine {
  engine: SchemaEngine;
  /** The message of an engine error, with the JavaScript error behind an "External error id#N" filled in. */
  explain(error: unknown): string;
}

/** Starts an engine on the factory. `onLog` receives the engine's JSON log lines. */
export async function startSchemaEngine(
  factory: SqlMigrationAwareDriverAdapterFactory,
  onLog: (line: string) => void = () => {},
): Promise<StartedEngine> {
  const runtime = await loadSchemaEngineModule();
  const bound = bindMigrationAwareSqlAdapterFactory(factory);
  const engine = await runtime.SchemaEngine.new({ datamodels: undefined }, onLog, bound);
  return {
    engine,
    explain(error) {
      // Engine errors carry a Rust span trace after the message ("   0: sql_schema_connector::..."): keep the message.
      let message = (error instanceof Error ? error.message : String(error)).split(/\n\s+0: /)[0]!.trim();
      message = message.replace(/External error id#(\d+)/g, (text, id: string) => {
        const cause = bound.errorRegistry.consumeError(Number(id))?.error;
        return cause instanceof Error
          ? `${text}: ${cause.message}`
          : cause === undefined
            ? text
            : `${text}: ${String(cause)}`;
      });
      return message;
    },
  };
}
