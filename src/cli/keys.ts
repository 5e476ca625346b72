/**
 * `npm run keys -- <command>`: API keys of the configured database (DATABASE_URL, or the embedded database in
 * DATA_DIR).
 *
 *   create --scope <ingest|read|admin>[,...] [--scope ...] --name <name>   prints the new key on stdout, once
 *          [--if-none]                    only if the database has no key yet (the first admin key of a new install)
 *   list [--json]                                                          every key, revoked ones included
 *   revoke <id>                                                            refused from the next request on
 *
 * Exit codes: 0 done, 1 failed (no such key, database problem), 2 bad usage.
 */
import { loadConfig } from '../config.js';
import { connectDatabase, database, disconnectDatabase } from '../db/client.js';
import { ensureSchema } from '../db/migrations.js';
import { type ApiKeyInfo, createApiKey, listApiKeys, revokeApiKey, SCOPES } from '../services/api-keys.js';
import { InputError } from '../services/errors.js';
import { parseCommandLine, UsageError } from './args.js';
import { ToolError } from './connect.js';
import { runTool } from './support.js';

const USAGE = `usage: npm run -s keys -- <command>   (in the Docker image: metrics-service keys <command>)
  create --scope <${SCOPES.join('|')}>[,...] --name <name>   create a key; it is printed once, on stdout
         [--if-none]                                       only if no key exists yet (revoked ones count); else exit 0
  list [--json]                                            list keys (never their secrets)
  revoke <id>                                              revoke a key (its id is in \`list\`, e.g. mk_Ab3dE9xQ)
The database is DATABASE_URL, or the embedded database in DATA_DIR (default ./.data).`;

const messageOf = (error: unknown) => (error instanceof Error ? error.message : String(error));

/** Opens the database; what can go wrong there (a busy folder, a refused connection, a migration) is one line. */
async function openConfiguredDatabase(): Promise<string> {
  const config = loadConfig();
  try {
    await connectDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolMax: 1 });
  } catch (error) {
    if (!config.databaseUrl && /in use by process/.test(messageOf(error))) {
      throw new ToolError(
        `${messageOf(error)}\nThe running service holds the embedded database. Either stop it, run \`npm run keys\`, ` +
          'and start it again; or, with an admin key, use the GraphQL mutations createApiKey / revokeApiKey and the ' +
          'apiKeys query.',
      );
    }
    throw new ToolError(messageOf(error));
  }
  const db = database();
  // As the service does at start-up (MIGRATE_ON_START), so a key can be made before the first start.
  let applied: string[];
  try {
    ({ applied } = await ensureSchema(db, config.migrateOnStart));
  } catch (error) {
    throw new ToolError(messageOf(error));
  }
  if (applied.length > 0) {
    process.stderr.write(`Applied ${applied.length} pending migration(s): ${applied.join(', ')}\n`);
  }
  return db.kind === 'embedded' ? `the embedded database in ${db.location}` : db.location;
}

function formatDate(date: Date | null): string {
  return date ? date.toISOString().replace(/\.\d{3}Z$/, 'Z') : '-';
}

function printTable(keys: ApiKeyInfo[]): void {
  const rows = [
    ['ID', 'NAME', 'SCOPES', 'CREATED', 'LAST USED', 'STATUS'],
    ...keys.map((k) => [
      k.id,
      k.name,
      k.scopes.join(','),
      formatDate(k.createdAt),
      formatDate(k.lastUsedAt),
      k.revokedAt ? `revoked ${formatDate(k.revokedAt)}` : 'active',
    ]),
  ];
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  for (const row of rows) {
    const line = row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ');
    process.stdout.write(`${line.trimEnd()}\n`);
  }
}

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stderr.write(`${USAGE}\n`);
    return command === undefined ? 2 : 0;
  }
  if (command === 'create') {
    const { values } = parseCommandLine({
      args: rest,
      options: { scope: { type: 'string', multiple: true }, name: { type: 'string' }, 'if-none': { type: 'boolean' } },
    });
    const scopes = (values.scope ?? [])
      .flatMap((s) => s.split(','))
      .map((s) => s.trim())
      .filter(Boolean);
    if (scopes.length === 0) throw new UsageError(`create needs --scope (${SCOPES.join(', ')})`);
    if (values.name === undefined) throw new UsageError('create needs --name (what the key is for)');
    const where = await openConfiguredDatabase();
    if (values['if-none']) {
      const existing = await listApiKeys();
      if (existing.length > 0) {
        process.stderr.write(
          `${where} has ${existing.length} API key(s) already, so none was created (--if-none). See \`keys list\`.\n`,
        );
        return 0;
      }
    }
    const { key, info } = await createApiKey({ name: values.name, scopes }).catch((error: unknown) => {
      // A scope or name the service refuses: the message says which and what is allowed.
      throw error instanceof InputError ? new UsageError(error.message, false) : error;
    });
    process.stderr.write(
      `Created API key ${info.id} "${info.name}" with scope(s) ${info.scopes.join(', ')} in ${where}.\n` +
        'The key is printed below, this once: it is stored only as a hash and cannot be shown again.\n' +
        'Send it as the header: Authorization: Bearer <key>\n',
    );
    process.stdout.write(`${key}\n`);
    return 0;
  }
  if (command === 'list') {
    const { values } = parseCommandLine({ args: rest, options: { json: { type: 'boolean' } } });
    await openConfiguredDatabase();
    const keys = await listApiKeys();
    if (values.json) {
      process.stdout.write(`${JSON.stringify(keys, null, 2)}\n`);
    } else if (keys.length === 0) {
      process.stderr.write('No API keys. Create one with `npm run keys -- create --scope read --name <name>`.\n');
    } else {
      printTable(keys);
    }
    return 0;
  }
  if (command === 'revoke') {
    const { positionals } = parseCommandLine({ args: rest, allowPositionals: true, options: {} });
    if (positionals.length !== 1 || !positionals[0]) {
      throw new UsageError('revoke needs exactly one key id (see `list`)');
    }
    await openConfiguredDatabase();
    const result = await revokeApiKey(positionals[0]);
    if (!result) {
      process.stderr.write(`No API key has the id ${positionals[0]} (see \`npm run keys -- list\`).\n`);
      return 1;
    }
    process.stdout.write(
      result.revokedNow
        ? `Revoked ${result.info.id} "${result.info.name}": it is refused from the next request on.\n`
        : `${result.info.id} "${result.info.name}" was already revoked at ${formatDate(result.info.revokedAt)}.\n`,
    );
    return 0;
  }
  throw new UsageError(`unknown command ${JSON.stringify(command)}`);
}

async function main(): Promise<number> {
  try {
    return await run(process.argv.slice(2));
  } finally {
    await disconnectDatabase().catch(() => {});
  }
}

runTool(USAGE, main);
