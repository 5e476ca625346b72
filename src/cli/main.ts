#!/usr/bin/env node
/**
 * `metrics-service <command> [arguments]`: the one entry point of the service and its tools, compiled to
 * dist/cli/main.js. The npm scripts (`npm run keys -- ...`) go through it in a checkout (scripts/cli.mjs), and the
 * Docker image links it as `metrics-service`, so the commands README and the logs name are the same everywhere.
 *
 * Each command is a module that reads its arguments from process.argv, as when it is run on its own: the dispatcher
 * removes its own name from argv and imports the module.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface Command {
  /** The module, relative to this file. */
  module: string;
  /** Arguments put before the user's (`migrate deploy` for db:migrate). */
  prefix?: string[];
  summary: string;
}

const COMMANDS: Record<string, Command> = {
  serve: { module: '../main.js', summary: 'start the service (the same as `npm start`)' },
  keys: { module: './keys.js', summary: 'create | list | revoke API keys' },
  migrate: { module: './migrate.js', summary: 'deploy | status: apply or list migrations' },
  'db:migrate': { module: './migrate.js', prefix: ['deploy'], summary: 'apply pending migrations (migrate deploy)' },
  'db:status': {
    module: './migrate.js',
    prefix: ['status'],
    summary: 'list applied and pending migrations (migrate status)',
  },
  import: { module: './import.js', summary: 'load records from a CSV or NDJSON file' },
  export: { module: './export.js', summary: 'write records as CSV or NDJSON' },
  seed: { module: './seed.js', summary: 'load realistic demo data' },
  worker: { module: './worker.js', summary: 'store the records of the ingest queue (INGEST_QUEUE)' },
  rollups: { module: './rollups.js', summary: 'rebuild the 15-minute rollups of a time range' },
  studio: {
    module: './studio.js',
    summary: 'Prisma Studio on the database (needs the dev dependencies: not in the image)',
  },
  'schema:export': { module: './export-schema.js', summary: 'write schema.graphql from the code' },
  'db:diff': {
    module: './migration-diff.js',
    summary: 'author a migration (needs the dev dependencies: not in the image)',
  },
};

const USAGE = `usage: metrics-service <command> [arguments]   (in a checkout: npm run -s <command> -- [arguments])

${Object.entries(COMMANDS)
  .map(([name, command]) => `  ${name.padEnd(14)} ${command.summary}`)
  .join('\n')}

Each command has its own --help. The database is DATABASE_URL, or the embedded database in DATA_DIR (default ./.data).`;

const [name, ...rest] = process.argv.slice(2);
const command = name === undefined ? undefined : COMMANDS[name];
if (command === undefined) {
  const help = name === '--help' || name === '-h' || name === 'help';
  process.stderr.write(`${help || name === undefined ? '' : `unknown command ${JSON.stringify(name)}\n\n`}${USAGE}\n`);
  process.exit(help ? 0 : 2);
}
const modulePath = fileURLToPath(new URL(command.module, import.meta.url));
// argv[1] is the module itself: modules that run only as a command (schema:export) check it.
process.argv = [process.argv[0] ?? process.execPath, path.resolve(modulePath), ...(command.prefix ?? []), ...rest];
await import(command.module);
