/**
 * `npm run worker`: the ingest worker of the queued mode (INGEST_QUEUE). It stores the records ingestMetrics queued,
 * and those other producers published to the stream, in batches of INGEST_WORKER_BATCH_SIZE (src/worker.ts).
 * Stops cleanly on SIGTERM/SIGINT: the batch in hand is finished (or handed back) first.
 */
import { type Config, loadConfig } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { createLogger } from '../logger.js';
import { connectNatsQueue } from '../queue/nats.js';
import { startMetricEvents, stopMetricEvents } from '../services/events.js';
import { configurePartitions } from '../services/partitions.js';
import { createIngestWorker } from '../worker.js';
import { parseCommandLine } from './args.js';
import { connectForTool, describeDatabase, ToolError } from './connect.js';
import { runTool } from './support.js';

const USAGE = `usage: npm run worker

Stores the records of the ingest queue (INGEST_QUEUE, stream INGEST_QUEUE_STREAM) in DATABASE_URL, in batches of
INGEST_WORKER_BATCH_SIZE; records that can never be stored go to INGEST_QUEUE_DEAD_LETTER_STREAM with the reason.
Run as many as you like: they share the stream's one consumer (INGEST_QUEUE_CONSUMER). README: "Queued ingestion".`;

async function main(): Promise<number> {
  const { values } = parseCommandLine({
    args: process.argv.slice(2),
    allowPositionals: false,
    options: { help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const config: Config = loadConfig();
  const queueConfig = config.ingestQueue;
  if (!queueConfig) throw new ToolError('INGEST_QUEUE is not set: the worker stores what the ingest queue holds.');
  if (!config.databaseUrl) {
    throw new ToolError(
      'The worker needs PostgreSQL (DATABASE_URL): the embedded database serves one process at a time, the service.',
    );
  }
  const logger = createLogger(config.logLevel, { format: config.logFormat, nodeEnv: config.nodeEnv });
  const db = await connectForTool(config, 'npm run worker');
  configurePartitions({ widthSeconds: config.partitionHours * 3600, retentionDays: config.retentionDays });
  // Subscribers of metricIngested read stored records from the table (services/events.ts); with REDIS_URL the worker
  // also wakes the instances at once, without it they find its records at their next poll (LIVE_POLL_INTERVAL_MS).
  if (config.redisUrl)
    await startMetricEvents({ redisUrl: config.redisUrl, channelPrefix: config.redisChannelPrefix, logger });
  const queue = await connectNatsQueue(queueConfig);
  const worker = await createIngestWorker({
    queue,
    logger,
    batchSize: queueConfig.workerBatchSize,
    maxBackoffMs: queueConfig.workerMaxBackoffMs,
  });
  logger.info(
    { queue: queue.description, consumer: queueConfig.consumer },
    `Ingest worker: ${queue.description} into ${describeDatabase(db)}, batches of ${queueConfig.workerBatchSize}`,
  );
  const stop = (signal: NodeJS.Signals) => {
    logger.info(`${signal} received: finishing the batch in hand`);
    void worker.stop();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await worker.run();
  await queue.close();
  await stopMetricEvents();
  await disconnectDatabase();
  logger.info('Ingest worker stopped');
  return 0;
}

runTool(USAGE, main);
