/**
 * `npm run studio`: Prisma Studio on the database the service uses.
 * - DATABASE_URL set: Studio on that PostgreSQL database.
 * - Embedded database, service running with EMBEDDED_DB_PORT: Studio through the service's PostgreSQL-protocol port.
 * - Embedded database, service stopped: this command opens the data folder itself and serves it to Studio.
 * Extra arguments go to `prisma studio` (e.g. `npm run studio -- --port 5556 --browser none`).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../config.js';
import { openDatabase } from '../db.js';
import { startEmbeddedWireServer } from '../embedded-wire.js';
import { migrate } from '../migrations.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const config = loadConfig();
const extraArgs = process.argv.slice(2);

function runStudio(url: string): Promise<number> {
  process.stderr.write(`Prisma Studio on ${url.replace(/:[^:@/]*@/, ':***@')}\n`);
  const child = spawn(process.execPath, [path.join(root, 'scripts/prisma.mjs'), 'studio', ...extraArgs], {
    stdio: 'inherit',
    cwd: root,
    env: { ...process.env, DATABASE_URL: url },
  });
  return new Promise((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
}

async function main(): Promise<number> {
  if (config.databaseUrl) return runStudio(config.databaseUrl);
  let db;
  try {
    db = await openDatabase({ dataDir: config.dataDir });
  } catch (error) {
    if (config.embeddedDbPort !== undefined) {
      // The service holds the data folder: go through the port it serves.
      return runStudio(`postgresql://postgres@127.0.0.1:${config.embeddedDbPort}/postgres`);
    }
    process.stderr.write(
      `${(error as Error).message}\nTo browse the embedded database while the service runs, start the service with ` +
        'EMBEDDED_DB_PORT=5433 and run `EMBEDDED_DB_PORT=5433 npm run studio`.\n',
    );
    return 1;
  }
  await migrate(db);
  const server = await startEmbeddedWireServer({ db: db.pglite!, port: config.embeddedDbPort ?? 0 });
  const code = await runStudio(server.url);
  await server.stop();
  await db.close();
  return code;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
