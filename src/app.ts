/**
 * Start-up and shutdown of the whole service: database, migrations policy, HTTP listener.
 * main.ts runs it for real; tests run it on a port and a database of their own.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import { type Config, redactUrl } from './config.js';
import { connectDatabase, disconnectDatabase } from './db/client.js';
import { type EmbeddedWireServer, startEmbeddedWireServer } from './db/embedded-wire.js';
import { ensureSchema } from './db/migrations.js';
import type { Logger } from './logger.js';
import { connectRateLimitRedis } from './plugins/rate-limit.js';
import type { IngestQueue } from './queue/broker.js';
import { watchQueueBacklog } from './queue/metrics.js';
import { connectNatsQueue } from './queue/nats.js';
import { createServer } from './server.js';
import { configureApiKeyOutageGrace } from './services/api-keys.js';
import { startMetricEvents, stopMetricEvents } from './services/events.js';
import { configureIngestQueue } from './services/ingest.js';
import { configurePartitions, type PartitionMaintenance, startPartitionMaintenance } from './services/partitions.js';
import { type RollupFolding, startRollupFolding } from './services/rollups.js';
import { createIngestWorker, type IngestWorker } from './worker.js';

export interface App {
  /** Base URL, e.g. http://127.0.0.1:4000 */
  url: string;
  server: http.Server;
  /** Stops accepting, waits for requests in flight (up to the shutdown timeout), closes the database. */
  stop(): Promise<void>;
}

/**
 * How long after SIGTERM an idle keep-alive connection may still bring a request (answered 503) before it is closed.
 */
const IDLE_CONNECTION_GRACE_MS = 250;

export async function startApp(config: Config, logger: Logger): Promise<App> {
  const db = await connectDatabase({
    url: config.databaseUrl,
    dataDir: config.dataDir,
    poolMax: config.dbPoolMax,
    statementTimeoutMs: config.dbStatementTimeoutMs,
    transactionTimeoutMs: config.dbTransactionTimeoutMs,
    connectTimeoutMs: config.dbConnectTimeoutMs,
  });
  let socketServer: EmbeddedWireServer | undefined;
  let folding: RollupFolding | undefined;
  let partitions: PartitionMaintenance | undefined;
  let rateLimitRedis: Redis | undefined;
  let queue: IngestQueue | undefined;
  let worker: IngestWorker | undefined;
  try {
    if (db.kind === 'embedded') {
      logger.info(
        { dataDir: db.location },
        `Using the embedded PostgreSQL (PGlite) in ${db.location}; set DATABASE_URL to use a PostgreSQL server`,
      );
    } else {
      logger.info({ database: db.location }, `Using PostgreSQL at ${db.location}`);
    }

    const { applied, status } = await ensureSchema(db, config.migrateOnStart);
    if (config.migrateOnStart) {
      logger.info(
        { applied },
        applied.length > 0
          ? `Applied ${applied.length} migration(s): ${applied.join(', ')}`
          : 'Database schema is up to date',
      );
    }
    warnIfNewer(status.unknown, logger);

    if (db.pglite && config.embeddedDbPort !== undefined) {
      socketServer = await startEmbeddedWireServer({ db: db.pglite, port: config.embeddedDbPort, logger });
      logger.info(
        { port: config.embeddedDbPort },
        `The embedded database is served at postgresql://postgres@127.0.0.1:${config.embeddedDbPort}/postgres ` +
          `(for Prisma Studio, psql)`,
      );
    }

    folding = startRollupFolding(config.rollupFoldIntervalMs, logger);
    configurePartitions({ widthSeconds: config.partitionHours * 3600, retentionDays: config.retentionDays });
    partitions = startPartitionMaintenance(config.partitionMaintenanceIntervalMs, logger);

    const events = await startMetricEvents({
      redisUrl: config.redisUrl,
      channelPrefix: config.redisChannelPrefix,
      pollIntervalMs: config.livePollIntervalMs,
      logger,
    });
    logger.info(
      { liveUpdates: events.kind },
      events.kind === 'redis'
        ? `Live updates (metricIngested) go through Redis at ${redactUrl(config.redisUrl ?? '')}, channel prefix ` +
            `${config.redisChannelPrefix}`
        : 'Live updates (metricIngested) are in-process; set REDIS_URL to share them between instances',
    );

    // Ingest rate limits are shared through Redis when there is one (src/plugins/rate-limit.ts).
    if (config.redisUrl) rateLimitRedis = await connectRateLimitRedis(config.redisUrl, logger);
    logger.info(
      { rateLimits: rateLimitRedis ? 'redis' : 'in-process' },
      rateLimitRedis
        ? `Ingest rate limits are shared through Redis (keys ${config.redisChannelPrefix}rate-limit:*)`
        : 'Ingest rate limits are counted in this process; set REDIS_URL to share them between instances',
    );
    configureApiKeyOutageGrace(config.apiKeyOutageGraceMs);
    if (config.ingestQueue) {
      queue = await connectNatsQueue(config.ingestQueue);
      logger.info(
        { queue: queue.description },
        `ingestMetrics queues records to ${queue.description} (subject ${config.ingestQueue.subject}.api); ` +
          '`npm run worker` stores them',
      );
    }
    configureIngestQueue(queue);
    watchQueueBacklog(queue, logger);
    if (queue && config.ingestQueue?.workerInProcess) {
      worker = await createIngestWorker({
        queue,
        logger,
        batchSize: config.ingestQueue.workerBatchSize,
        maxBackoffMs: config.ingestQueue.workerMaxBackoffMs,
      });
      void worker.run();
      logger.info('The ingest worker runs in the service (INGEST_WORKER_IN_PROCESS=true)');
    } else if (queue && db.kind === 'embedded') {
      logger.warn(
        'Queued records wait until a worker stores them, and `npm run worker` cannot open the embedded database: ' +
          'set INGEST_WORKER_IN_PROCESS=true (or use PostgreSQL)',
      );
    }

    const { handler, authPolicy } = createServer({ config, logger, queue, redis: rateLimitRedis });
    const auth = await authPolicy.describe();
    logger[auth.level]({ auth: auth.mode }, auth.message);
    // Requests being answered, so that shutdown can tell their clients not to reuse the connection.
    const inFlight = new Set<http.ServerResponse>();
    let draining = false;
    const server = http.createServer((req, res) => {
      // After SIGTERM the listener accepts no connection, but a keep-alive connection can still carry a request: it is
      // answered 503 (retry elsewhere) and closed, so that draining ends.
      if (draining) {
        refuseWhileStopping(req, res);
        return;
      }
      inFlight.add(res);
      res.once('close', () => inFlight.delete(res));
      handler(req, res);
    });
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
        const startedAt = Date.now();
        draining = true;
        // Answers still to come close their connection after them.
        for (const res of inFlight) if (!res.headersSent) res.setHeader('connection', 'close');
        // net.Server's close, not http.Server's: that one would also close idle keep-alive connections at once, and a
        // client sending its next request at that moment would see a reset instead of an answer.
        const closed = new Promise<void>((resolve) => net.Server.prototype.close.call(server, () => resolve()));
        // Open subscriptions end here, so their streams finish instead of holding the shutdown to its timeout.
        await stopMetricEvents();
        // Idle keep-alive connections (finished subscription streams' too) are closed after a moment: one a client is
        // busy on carries its next request in that moment and is answered 503 with Connection: close.
        const sweep = setInterval(() => server.closeIdleConnections(), IDLE_CONNECTION_GRACE_MS);
        // The whole shutdown fits in SHUTDOWN_TIMEOUT_MS: requests get all of it but a reserve for closing the
        // database.
        const reserve = Math.min(2_000, Math.floor(config.shutdownTimeoutMs / 5));
        const timer = setTimeout(
          () => {
            logger.warn(
              { inFlight: inFlight.size },
              `${inFlight.size} request(s) still running after ${config.shutdownTimeoutMs - reserve} ms: closing ` +
                `their connections. ` +
                'A batch cut off here is stored whole or not at all (one statement); its client saw no reply and ' +
                'retries.',
            );
            server.closeAllConnections();
          },
          config.shutdownTimeoutMs - reserve - (Date.now() - startedAt),
        );
        await closed;
        clearTimeout(timer);
        clearInterval(sweep);
        await quitRedis(rateLimitRedis);
        await folding?.stop();
        await partitions?.stop();
        await socketServer?.stop();
        configureIngestQueue(undefined);
        watchQueueBacklog(undefined, logger);
        await worker?.stop();
        await queue?.close();
        // A statement still running (its request was cut off) would hold pool.end(): the database gets what is left.
        const left = Math.max(100, config.shutdownTimeoutMs - (Date.now() - startedAt));
        let bound: NodeJS.Timeout | undefined;
        const gaveUp = await Promise.race([
          disconnectDatabase().then(() => false),
          new Promise<boolean>((resolve) => (bound = setTimeout(() => resolve(true), left))),
        ]);
        clearTimeout(bound);
        if (gaveUp)
          logger.warn(`The database connections did not close within ${left} ms; leaving them to the process exit`);
      })();
      return stopping;
    };
    return { url, server, stop };
  } catch (error) {
    await folding?.stop().catch(() => {});
    await partitions?.stop().catch(() => {});
    await stopMetricEvents().catch(() => {});
    rateLimitRedis?.disconnect();
    await socketServer?.stop().catch(() => {});
    configureIngestQueue(undefined);
    await worker?.stop().catch(() => {});
    await queue?.close().catch(() => {});
    await disconnectDatabase().catch(() => {});
    throw error;
  }
}

/** Closes a Redis connection politely, or at once when Redis does not answer within 2 s. */
async function quitRedis(redis: Redis | undefined): Promise<void> {
  if (!redis) return;
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      redis.quit(),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('timeout')), 2000))),
    ]);
  } catch {
    redis.disconnect();
  } finally {
    clearTimeout(timer);
  }
}

/** 503 UNAVAILABLE with Retry-After and Connection: close, once the request's body has arrived (so it is not reset). */
function refuseWhileStopping(req: http.IncomingMessage, res: http.ServerResponse): void {
  const send = () => {
    if (res.headersSent) return;
    const body = JSON.stringify({
      errors: [
        {
          message:
            'The service is shutting down and did not run this request. Retry it (another instance will answer).',
          extensions: { code: 'UNAVAILABLE' },
        },
      ],
    });
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1', connection: 'close' });
    res.end(body);
  };
  req.once('end', send);
  req.once('error', () => res.destroy());
  req.resume();
}

function warnIfNewer(unknown: string[], logger: Logger): void {
  if (unknown.length > 0) {
    logger.warn(
      { unknown },
      `The database has migrations this code does not know (${unknown.join(', ')}): it was migrated by a newer version`,
    );
  }
}
