/**
 * Opening the configured database for a command-line tool (import, export, seed), with the service's migration
 * policy and messages that say what to do when the embedded database is busy.
 */
import type { Config } from '../config.js';
import { connectDatabase, type Database, disconnectDatabase } from '../db/client.js';
import { ensureSchema, MigrationError } from '../db/migrations.js';

/** An error the user can act on: printed as is, without a stack. */
export class ToolError extends Error {
  override readonly name = 'ToolError';
}

/** Where the data is, for messages: "PostgreSQL at postgres://..." or "the embedded database in ./.data". */
export function describeDatabase(db: Database): string {
  return db.kind === 'embedded' ? `the embedded database in ${db.location}` : `PostgreSQL at ${db.location}`;
}

/**
 * Connects the process's database (the `database()` singleton the services use). Pending migrations are applied when
 * MIGRATE_ON_START allows it (the default), as the service would; otherwise the tool refuses, naming the command.
 */
export async function connectForTool(config: Config, tool: string): Promise<Database> {
  let db: Database;
  try {
    db = await connectDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolMax: 4 });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (!config.databaseUrl && /in use by process/.test(message)) {
      throw new ToolError(
        `${message}\nThe embedded database serves one process at a time, so \`${tool}\` cannot run while the ` +
          'service does. Stop the service and run it again, or point both at PostgreSQL with DATABASE_URL.',
      );
    }
    throw new ToolError(
      `Cannot open the database (${config.databaseUrl ? 'DATABASE_URL' : `DATA_DIR=${config.dataDir}`}): ${message}`,
    );
  }
  try {
    await ensureSchema(db, config.migrateOnStart);
  } catch (error) {
    if (error instanceof MigrationError) throw new ToolError(`${describeDatabase(db)}: ${error.message}`);
    // The first statement is where a PostgreSQL database that does not exist, or refuses us, shows: one line, no stack.
    await disconnectDatabase().catch(() => {});
    throw new ToolError(
      `Cannot open ${describeDatabase(db)}: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  return db;
}
