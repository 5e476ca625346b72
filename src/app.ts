/**
 * Start-up and shutdown of the whole service: database, migrations policy, HTTP listener.
 * main.ts runs it for real; tests run it on a port and a database of their own.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import type { Config } from './config.js';
import { connectDatabase, disconnectDatabase } from './db.js';
import type { Logger } from './logger.js';
import { migrate, migrationStatus } from './migrations.js';
import { createServer } from './server.js';

export interface App {
  /** Base URL, e.g. http://127.0.0.1:4000 */
  url: string;
  server: http.Server;
  /** Stops accepting, waits for requests in flight (up to the shutdown timeout), closes the database. */
  stop(): Promise<void>;
}

export class StartupError extends Error {
  override readonly name = 'StartupError';
}

export async function startApp(config: Config, logger: Logger): Promise<App> {
  const db = await connectDatabase({ url: config.databaseUrl, dataDir: config.dataDir, poolMax: config.dbPoolMax });
  let socketServer: PGLiteSocketServer | undefined;
  try {
    if (db.kind === 'embedded') {
      logger.info({ dataDir: db.location }, `Using the embedded PostgreSQL (PGlite) in ${db.location}; set DATABASE_URL to use a PostgreSQL server`);
    } else {
      logger.info({ database: db.location }, `Using PostgreSQL at ${db.location}`);
    }

    if (config.migrateOnStart) {
      const { applied, status } = await migrate(db);
      logger.info({ applied }, applied.length > 0 ? `Applied ${applied.length} migration(s): ${applied.join(', ')}` : 'Database schema is up to date');
      warnIfNewer(status.unknown, logger);
    } else {
      const status = await migrationStatus(db);
      if (status.pending.length > 0) {
        throw new StartupError(
          `The database is missing migrations ${status.pending.join(', ')} and MIGRATE_ON_START=false. ` +
            'Run `npm run db:migrate` (in Docker: `node dist/cli/migrate.js deploy`), or set MIGRATE_ON_START=true.',
        );
      }
      warnIfNewer(status.unknown, logger);
    }

    if (db.pglite && config.embeddedDbPort !== undefined) {
      socketServer = new PGLiteSocketServer({ db: db.pglite, host: '127.0.0.1', port: config.embeddedDbPort, maxConnections: 8 });
      await socketServer.start();
      logger.info(
        { port: config.embeddedDbPort },
        `The embedded database is served at postgresql://postgres@127.0.0.1:${config.embeddedDbPort}/postgres (for Prisma Studio, psql)`,
      );
    }

    const { handler } = createServer({ config, logger });
    const server = http.createServer(handler);
    server.requestTimeout = 120_000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(config.port, config.host, () => resolve());
    });
    const address = server.address() as AddressInfo;
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    const url = `http://${host === '0.0.0.0' || host === '[::]' ? 'localhost' : host}:${address.port}`;
    logger.info({ url }, `Listening on ${url}${config.graphiql ? ` (GraphiQL at ${url}/graphql)` : ''}`);

    let stopping: Promise<void> | undefined;
    const stop = () => {
      stopping ??= (async () => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        const timer = setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs);
        await closed;
        clearTimeout(timer);
        await socketServer?.stop();
        await disconnectDatabase();
      })();
      return stopping;
    };
    return { url, server, stop };
  } catch (error) {
    await socketServer?.stop().catch(() => {});
    await disconnectDatabase().catch(() => {});
    throw error;
  }
}

function warnIfNewer(unknown: string[], logger: Logger): void {
  if (unknown.length > 0) {
    logger.warn({ unknown }, `The database has migrations this code does not know (${unknown.join(', ')}): it was migrated by a newer version`);
  }
}
