/**
 * The ingest worker: takes records from the queue in batches and stores each batch through storeMetrics, the store
 * path (rules, identities, partitions, rollups) ingestMetrics uses when it stores directly. A record is acknowledged
 * only after the batch holding it is committed; a redelivered one is a duplicate for its identity, never stored twice.
 *
 * - A record that is not JSON, not a record, or breaks a rule goes to the dead-letter stream with its reason.
 * - A batch the database refuses for another reason than being unreachable is halved until the record it refuses is
 *   alone: that one goes to the dead letters, the rest are stored.
 * - While the database is unreachable (or times out), the batch is handed back and retried with a growing wait:
 *   an outage is never a reason to set a record aside.
 */
import { recordFromJson } from './bulk/records.js';
import { classifyDatabaseError } from './db/errors.js';
import type { Logger } from './logger.js';
import type { DeadLetterReason, IncomingRecord, IngestQueue, QueueConsumer } from './queue/broker.js';
import { storeMetrics } from './services/ingest.js';
import type { MetricRecordInput } from './services/record.js';

export interface WorkerOptions {
  queue: IngestQueue;
  logger: Logger;
  /** Records per batch (INGEST_WORKER_BATCH_SIZE). */
  batchSize: number;
  /** Longest wait between retries while the database is down (INGEST_WORKER_MAX_BACKOFF_MS). */
  maxBackoffMs: number;
  /** How long one fetch waits for a full batch (at least 1,000 ms, the broker's minimum); default 1,000 ms. */
  fetchWaitMs?: number;
}

/** What one batch came to. */
export interface BatchReport {
  /** Records handed to the worker. */
  received: number;
  stored: number;
  duplicates: number;
  deadLettered: number;
  /** True when the database was unreachable and the batch was handed back, to come again. */
  retried: boolean;
}

export interface IngestWorker {
  /** Takes one batch (waiting up to the fetch wait for it) and stores it; what the loop does over and over. */
  runOnce(): Promise<BatchReport>;
  /** Runs batches until stop(); resolves when it has stopped. */
  run(): Promise<void>;
  /** Ends the loop after the batch in hand (its records are acknowledged or handed back first). */
  stop(): Promise<void>;
}

/** The first wait after the database failed a batch; it doubles each time, up to maxBackoffMs. */
const FIRST_BACKOFF_MS = 100;

interface Entry {
  message: IncomingRecord;
  record: MetricRecordInput;
}

/** The database was out of reach: the batch goes back to the queue. */
class DatabaseDown extends Error {}

export async function createIngestWorker(options: WorkerOptions): Promise<IngestWorker> {
  const { queue, logger, batchSize, maxBackoffMs } = options;
  const fetchWaitMs = options.fetchWaitMs ?? 1_000;
  const consumer: QueueConsumer = await queue.consumer();
  let backoffMs = 0;
  let stopping = false;
  let running: Promise<void> | undefined;
  let wake: (() => void) | undefined;

  const deadLetter = async (message: IncomingRecord, reason: DeadLetterReason, report: BatchReport) => {
    await consumer.deadLetter(message, reason);
    report.deadLettered++;
    logger.warn({ subject: message.subject, id: message.id, code: reason.code }, `Dead letter: ${reason.message}`);
  };

  /** Stores the entries; halves them on a refusal that is not an outage, until the refused record is alone. */
  const store = async (entries: Entry[], report: BatchReport): Promise<void> => {
    if (entries.length === 0) return;
    let result: Awaited<ReturnType<typeof storeMetrics>>;
    try {
      result = await storeMetrics(entries.map((entry) => entry.record));
    } catch (error) {
      if (classifyDatabaseError(error)) throw new DatabaseDown((error as Error).message, { cause: error });
      if (entries.length === 1) {
        const only = entries[0] as Entry;
        await deadLetter(
          only.message,
          { code: 'STORE_FAILED', message: `the database refused the record: ${(error as Error).message}` },
          report,
        );
        return;
      }
      const half = Math.ceil(entries.length / 2);
      await store(entries.slice(0, half), report);
      await store(entries.slice(half), report);
      return;
    }
    report.stored += result.accepted;
    report.duplicates += result.duplicates;
    const problems = new Map<number, DeadLetterReason['problems'] & object[]>();
    for (const { index, field, code, message } of result.rejected)
      problems.set(index, [...(problems.get(index) ?? []), { field, code, message }]);
    // Committed: every record of the batch is done with (stored, stored already, or refused by a rule).
    await Promise.all(
      entries.map((entry, index) => {
        const refused = problems.get(index);
        if (!refused) return entry.message.ack();
        return deadLetter(
          entry.message,
          { code: 'INVALID_RECORD', message: refused.map((p) => p.message).join('; '), problems: refused },
          report,
        );
      }),
    );
  };

  const runOnce = async (): Promise<BatchReport> => {
    const messages = await consumer.fetch(batchSize, fetchWaitMs);
    const report: BatchReport = {
      received: messages.length,
      stored: 0,
      duplicates: 0,
      deadLettered: 0,
      retried: false,
    };
    const entries: Entry[] = [];
    for (const message of messages) {
      const parsed = parseRecord(message.data);
      if ('record' in parsed) entries.push({ message, record: parsed.record });
      else await deadLetter(message, parsed.reason, report);
    }
    try {
      await store(entries, report);
      backoffMs = 0;
    } catch (error) {
      if (!(error instanceof DatabaseDown)) throw error;
      backoffMs = Math.min(maxBackoffMs, backoffMs === 0 ? FIRST_BACKOFF_MS : backoffMs * 2);
      // Records stored before the outage (an earlier half) are acknowledged already; handing them back is harmless.
      for (const entry of entries) entry.message.retryLater(backoffMs);
      report.retried = true;
      logger.warn(
        { records: entries.length, retryInMs: backoffMs, reason: error.message },
        'The database is unreachable: the batch goes back to the queue and is retried',
      );
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, backoffMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
    if (report.received > 0)
      logger.debug(
        { ...report },
        `Batch of ${report.received}: ${report.stored} stored, ${report.deadLettered} set aside`,
      );
    return report;
  };

  const loop = async () => {
    while (!stopping) {
      try {
        await runOnce();
      } catch (error) {
        // A broker hiccup (the batch comes again after its ack wait): wait a moment rather than spin.
        logger.error({ err: error }, `Ingest worker batch failed: ${(error as Error).message}`);
        if (!stopping) await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    }
  };

  return {
    runOnce,
    run() {
      running ??= loop();
      return running;
    },
    async stop() {
      stopping = true;
      wake?.();
      await running;
      await consumer.close();
    },
  };
}

/** A message as a record, or why it is not one (the same conversion as an NDJSON import line). */
function parseRecord(data: Uint8Array): { record: MetricRecordInput } | { reason: DeadLetterReason } {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data));
  } catch (error) {
    return { reason: { code: 'NOT_JSON', message: `the message is not UTF-8 JSON: ${(error as Error).message}` } };
  }
  const conversion = recordFromJson(value);
  if (conversion.record) return { record: conversion.record };
  return {
    reason: {
      code: 'INVALID_RECORD',
      message: conversion.problems.map((p) => p.message).join('; '),
      problems: conversion.problems,
    },
  };
}
