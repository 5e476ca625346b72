/**
 * `npm run db:migrate` (deploy) and `npm run db:status`: the migration runner for the configured database
 * (DATABASE_URL, or the embedded database in DATA_DIR). Exit codes: 0 up to date, 1 pending or failed, 2 bad usage.
 */
import { loadConfig } from '../config.js';
import { type Database, openDatabase } from '../db/client.js';
import { migrate, migrationStatus, readMigrations } from '../db/migrations.js';
import { parseCommandLine } from './args.js';
import { ToolError } from './connect.js';
import { runTool } from './support.js';

const USAGE = 'usage: migrate deploy | status';
const COMMANDS = `${USAGE}\n  deploy  apply pending migrations\n  status  list applied and pending migrations`;

async function deploy(db: Database, where: string): Promise<number> {
  const { applied, status } = await migrate(db);
  const total = readMigrations().length;
  if (applied.length === 0) console.log(`${where}: all ${total} migration(s) already applied; nothing to do.`);
  else console.log(`${where}: applied ${applied.length} migration(s):\n${applied.map((n) => `  ${n}`).join('\n')}`);
  if (status.unknown.length > 0) {
    console.log(`Note: the database also has migrations this code lacks: ${status.unknown.join(', ')}`);
  }
  return 0;
}

async function status(db: Database, where: string): Promise<number> {
  const status = await migrationStatus(db);
  console.log(`${where}:`);
  for (const name of status.applied) {
    console.log(`  applied   ${name}${status.modified.includes(name) ? '  (file changed since it was applied!)' : ''}`);
  }
  for (const name of status.pending) console.log(`  pending   ${name}`);
  for (const name of status.failed) console.log(`  failed    ${name}`);
  for (const name of status.unknown) console.log(`  unknown   ${name}  (applied by a newer version of the code)`);
  if (status.pending.length > 0) {
    console.log(
      `${status.pending.length} migration(s) pending: run \`npm run db:migrate\` ` +
        '(in the Docker image: `metrics-service migrate deploy`).',
    );
    return 1;
  }
  if (status.failed.length > 0 || status.modified.length > 0) return 1;
  console.log('Database schema is up to date.');
  return 0;
}

async function main(): Promise<number> {
  const { values, positionals } = parseCommandLine({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: { help: { type: 'boolean', short: 'h' } },
  });
  const [command] = positionals;
  if (values.help || positionals.length !== 1 || (command !== 'deploy' && command !== 'status')) {
    process.stderr.write(`${COMMANDS}\n`);
    return values.help ? 0 : 2;
  }
  const config = loadConfig();
  // A database that does not exist or refuses the connection is a one-line message, not a stack.
  const oneLine = (error: unknown) => new ToolError(error instanceof Error ? error.message : String(error));
  const db = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolMax: 1 }).catch((error) => {
    throw oneLine(error);
  });
  try {
    const where = db.kind === 'embedded' ? `the embedded database in ${db.location}` : db.location;
    return await (command === 'deploy' ? deploy(db, where) : status(db, where)).catch((error) => {
      throw oneLine(error);
    });
  } finally {
    await db.close();
  }
}

runTool(COMMANDS, main);
