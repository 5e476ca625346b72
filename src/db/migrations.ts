/**
 * Applies prisma/migrations without Prisma's native schema engine, keeping `_prisma_migrations` exactly as
 * `prisma migrate deploy` keeps it (same table, sha256 checksums, same advisory lock), so that `prisma migrate status`
 * and `deploy` on a machine with Prisma's engines agree with what ran here.
 *
 * Each migration runs in one transaction together with its `_prisma_migrations` row: a failing migration leaves
 * nothing behind and is not recorded. A second run applies nothing.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Database, SqlSession } from './client.js';

/** The folder of committed migrations. */
export const MIGRATIONS_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../prisma/migrations');

/** The advisory lock `prisma migrate` takes, so that our runner and Prisma's never run at once. */
const PRISMA_MIGRATE_LOCK = 72707369;

const CREATE_MIGRATIONS_TABLE = `
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0
)`;

export interface LocalMigration {
  name: string;
  sql: string;
  checksum: string;
}

export interface MigrationStatus {
  /** Migrations recorded as applied, in order. */
  applied: string[];
  /** Local migrations not applied yet, in the order they will run. */
  pending: string[];
  /** Applied migrations whose file changed since (checksum differs). */
  modified: string[];
  /** Migrations the database records but this code does not have (the database is newer than the code). */
  unknown: string[];
  /** Migrations Prisma recorded as started and never finished (a failed `prisma migrate deploy`). */
  failed: string[];
}

export class MigrationError extends Error {
  constructor(
    message: string,
    readonly migration?: string,
  ) {
    super(message);
    this.name = 'MigrationError';
  }
}

export function readMigrations(dir: string = MIGRATIONS_DIR): LocalMigration[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && fs.existsSync(path.join(dir, entry.name, 'migration.sql')))
    .map((entry) => entry.name)
    .sort()
    .map((name) => {
      const bytes = fs.readFileSync(path.join(dir, name, 'migration.sql'));
      return { name, sql: bytes.toString('utf8'), checksum: crypto.createHash('sha256').update(bytes).digest('hex') };
    });
}

interface AppliedRow {
  migration_name: string;
  checksum: string;
  finished_at: Date | null;
  rolled_back_at: Date | null;
}

async function readApplied(session: SqlSession): Promise<AppliedRow[] | undefined> {
  const [exists] = await session.query<{ present: boolean }>(
    `SELECT to_regclass('_prisma_migrations') IS NOT NULL AS present`,
  );
  if (!exists?.present) return undefined;
  return session.query<AppliedRow>(
    `SELECT migration_name, checksum, finished_at, rolled_back_at FROM "_prisma_migrations"
     ORDER BY started_at, migration_name`,
  );
}

function compare(local: LocalMigration[], rows: AppliedRow[]): MigrationStatus {
  const live = rows.filter((row) => row.rolled_back_at === null);
  const finished = new Map(live.filter((row) => row.finished_at !== null).map((row) => [row.migration_name, row]));
  const localNames = new Set(local.map((m) => m.name));
  return {
    applied: local.filter((m) => finished.has(m.name)).map((m) => m.name),
    pending: local.filter((m) => !finished.has(m.name)).map((m) => m.name),
    modified: local
      .filter((m) => finished.has(m.name) && finished.get(m.name)?.checksum !== m.checksum)
      .map((m) => m.name),
    unknown: [...finished.keys()].filter((name) => !localNames.has(name)),
    failed: live.filter((row) => row.finished_at === null).map((row) => row.migration_name),
  };
}

export async function migrationStatus(db: Database, dir: string = MIGRATIONS_DIR): Promise<MigrationStatus> {
  const local = readMigrations(dir);
  return db.withSession(async (session) => compare(local, (await readApplied(session)) ?? []));
}

export interface MigrateResult {
  applied: string[];
  status: MigrationStatus;
}

/** Applies every pending migration, in order, each atomically. Returns the names it applied. */
export async function migrate(db: Database, dir: string = MIGRATIONS_DIR): Promise<MigrateResult> {
  const local = readMigrations(dir);
  return db.withSession(async (session) => {
    await session.query('SELECT pg_advisory_lock($1)', [PRISMA_MIGRATE_LOCK]);
    try {
      await session.exec(CREATE_MIGRATIONS_TABLE);
      const before = compare(local, (await readApplied(session)) ?? []);
      if (before.failed.length > 0) {
        throw new MigrationError(
          `Migration ${before.failed.join(', ')} is recorded as failed by \`prisma migrate deploy\`. ` +
            'Inspect the database, then mark it with `prisma migrate resolve --rolled-back <name>` (or `--applied`).',
          before.failed[0],
        );
      }
      if (before.modified.length > 0) {
        throw new MigrationError(
          `Migration ${before.modified.join(', ')} was changed after it was applied (its checksum differs). ` +
            'Restore the committed file and add a new migration for the change.',
          before.modified[0],
        );
      }
      const applied: string[] = [];
      for (const migration of local.filter((m) => before.pending.includes(m.name))) {
        await applyOne(session, migration);
        applied.push(migration.name);
      }
      const status = compare(local, (await readApplied(session)) ?? []);
      return { applied, status };
    } finally {
      await session.query('SELECT pg_advisory_unlock($1)', [PRISMA_MIGRATE_LOCK]);
    }
  });
}

async function applyOne(session: SqlSession, migration: LocalMigration): Promise<void> {
  await session.exec('BEGIN');
  try {
    const [started] = await session.query<{ now: Date }>('SELECT clock_timestamp() AS now');
    await session.exec(migration.sql);
    await session.query(
      `INSERT INTO "_prisma_migrations"
         (id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count)
       VALUES ($1, $2, clock_timestamp(), $3, NULL, NULL, $4, 1)`,
      [crypto.randomUUID(), migration.checksum, migration.name, started?.now],
    );
    await session.exec('COMMIT');
  } catch (error) {
    await session.exec('ROLLBACK').catch(() => {});
    const reason = error instanceof Error ? error.message : String(error);
    throw new MigrationError(
      `Migration ${migration.name} failed and was rolled back (nothing of it was applied): ${reason}`,
      migration.name,
    );
  }
}

/**
 * The schema policy every process that serves or writes data follows: with `migrateOnStart`, apply what is pending;
 * without, refuse (MigrationError naming the command) while anything is pending. Never serve an older schema silently.
 */
export async function ensureSchema(
  db: Database,
  migrateOnStart: boolean,
  dir: string = MIGRATIONS_DIR,
): Promise<MigrateResult> {
  if (migrateOnStart) return migrate(db, dir);
  const status = await migrationStatus(db, dir);
  if (status.pending.length > 0) {
    throw new MigrationError(
      `The database is missing migrations ${status.pending.join(', ')} and MIGRATE_ON_START=false. ` +
        'Run `npm run db:migrate` (in Docker: `node dist/cli/migrate.js deploy`), or set MIGRATE_ON_START=true.',
      status.pending[0],
    );
  }
  return { applied: [], status };
}
