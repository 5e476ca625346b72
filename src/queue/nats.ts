/**
 * The ingest queue on NATS JetStream (@nats-io/jetstream): a work-queue stream of records (a record leaves it when
 * the worker acknowledges it, so its limits bound the backlog), a durable pull consumer for the worker, and a
 * dead-letter stream that keeps what could never be stored, with the reason.
 */
import {
  AckPolicy,
  DiscardPolicy,
  JetStreamApiError,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from '@nats-io/jetstream';
import { connect, type NatsConnection, headers as natsHeaders } from '@nats-io/transport-node';
import { type IngestQueueConfig, redactUrl } from '../config.js';
import {
  type DeadLetterReason,
  type IncomingRecord,
  type IngestQueue,
  type OutgoingRecord,
  type QueueBacklog,
  type QueueConsumer,
  QueueFullError,
  QueueUnavailableError,
} from './broker.js';

/** JetStream's "store failed" error; with a "maximum ... exceeded" description it is a full stream (DiscardNew). */
const STORE_FAILED = 10077;
const CONSUMER_NOT_FOUND = 10014;
/** Publishes in flight at once for one batch: enough to keep the connection busy, not a whole batch's promises. */
const PUBLISH_CONCURRENCY = 256;
/** How long one publish may wait for the broker's acknowledgement. */
const PUBLISH_TIMEOUT_MS = 5_000;

const ms = (millis: number) => millis * 1_000_000;

export async function connectNatsQueue(config: IngestQueueConfig): Promise<IngestQueue> {
  const url = new URL(config.url);
  let nc: NatsConnection;
  try {
    nc = await connect({
      servers: `${url.hostname}:${url.port || '4222'}`,
      ...(url.username ? { user: decodeURIComponent(url.username), pass: decodeURIComponent(url.password) } : {}),
      name: 'metrics-service',
      // A broker restart is ridden out: the client reconnects for as long as the process lives.
      maxReconnectAttempts: -1,
      timeout: PUBLISH_TIMEOUT_MS,
    });
  } catch (error) {
    throw new QueueUnavailableError(
      `Cannot connect to the ingest queue at ${redactUrl(config.url)} (INGEST_QUEUE): ${(error as Error).message}`,
      { cause: error },
    );
  }
  try {
    const jsm = await jetstreamManager(nc, { timeout: PUBLISH_TIMEOUT_MS });
    await ensureStreams(jsm, config);
    return new NatsQueue(nc, jsm, jetstream(nc, { timeout: PUBLISH_TIMEOUT_MS }), config);
  } catch (error) {
    await nc.close().catch(() => {});
    throw error;
  }
}

/**
 * The record stream, its dead-letter stream and the worker's consumer: made when missing; an existing stream gets
 * the configured limits (so changing INGEST_QUEUE_MAX_BYTES takes effect at the next start).
 */
async function ensureStreams(jsm: JetStreamManager, config: IngestQueueConfig): Promise<void> {
  const limits = {
    max_bytes: config.maxBytes,
    max_msgs: config.maxMessages,
    duplicate_window: ms(config.duplicateWindowMs),
    discard: DiscardPolicy.New,
  };
  const subjects = [`${config.subject}.>`];
  const existing = await jsm.streams.info(config.stream).catch((error: unknown) => {
    if (error instanceof JetStreamApiError && error.code === 10059) return undefined;
    throw error;
  });
  if (!existing) {
    await jsm.streams.add({
      name: config.stream,
      subjects,
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      ...limits,
    });
  } else {
    await jsm.streams.update(config.stream, { ...existing.config, ...limits, subjects });
  }
  await jsm.streams.info(config.deadLetterStream).catch(async (error: unknown) => {
    if (!(error instanceof JetStreamApiError && error.code === 10059)) throw error;
    await jsm.streams.add({
      name: config.deadLetterStream,
      subjects: [`${config.deadLetterSubject}.>`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
    });
  });
  const consumer = await jsm.consumers.info(config.stream, config.consumer).catch(async (error: unknown) => {
    if (!(error instanceof JetStreamApiError && error.code === CONSUMER_NOT_FOUND)) throw error;
    return undefined;
  });
  // The ack wait is the one setting an operator changes on a running consumer (INGEST_QUEUE_ACK_WAIT_MS).
  if (consumer && consumer.config.ack_wait !== ms(config.ackWaitMs))
    await jsm.consumers.update(config.stream, config.consumer, { ack_wait: ms(config.ackWaitMs) });
  if (!consumer)
    await jsm.consumers.add(config.stream, {
      durable_name: config.consumer,
      ack_policy: AckPolicy.Explicit,
      ack_wait: ms(config.ackWaitMs),
      // Never give up on a record: a database outage redelivers it as often as it takes.
      max_deliver: -1,
      filter_subject: `${config.subject}.>`,
    });
}

/** A publish failure in the queue's terms. */
function publishError(error: unknown, config: IngestQueueConfig): Error {
  if (error instanceof JetStreamApiError) {
    if (error.code === STORE_FAILED && /maximum (messages|bytes)/i.test(error.message)) {
      return new QueueFullError(
        `The ingest queue (stream ${config.stream}) is full: ${error.message} (INGEST_QUEUE_MAX_BYTES, ` +
          'INGEST_QUEUE_MAX_MESSAGES)',
        { cause: error },
      );
    }
    return error;
  }
  return new QueueUnavailableError(`The ingest queue did not take the records: ${(error as Error).message}`, {
    cause: error,
  });
}

class NatsQueue implements IngestQueue {
  readonly description: string;
  constructor(
    private readonly nc: NatsConnection,
    private readonly jsm: JetStreamManager,
    private readonly js: JetStreamClient,
    private readonly config: IngestQueueConfig,
  ) {
    this.description = `${redactUrl(config.url)} stream ${config.stream}`;
  }

  async publish(source: string, records: readonly OutgoingRecord[]): Promise<{ duplicates: number }> {
    const subject = `${this.config.subject}.${source}`;
    let duplicates = 0;
    let failure: Error | undefined;
    let next = 0;
    const lane = async () => {
      while (next < records.length && !failure) {
        const record = records[next++] as OutgoingRecord;
        try {
          const ack = await this.js.publish(subject, record.payload, { msgID: record.id, timeout: PUBLISH_TIMEOUT_MS });
          if (ack.duplicate) duplicates++;
        } catch (error) {
          failure ??= publishError(error, this.config);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PUBLISH_CONCURRENCY, records.length) }, lane));
    if (failure) throw failure;
    return { duplicates };
  }

  async backlog(): Promise<QueueBacklog> {
    try {
      const [stream, dead, consumer] = await Promise.all([
        this.jsm.streams.info(this.config.stream),
        this.jsm.streams.info(this.config.deadLetterStream),
        this.jsm.consumers.info(this.config.stream, this.config.consumer),
      ]);
      return { pending: stream.state.messages, lag: consumer.num_pending, deadLetters: dead.state.messages };
    } catch (error) {
      throw new QueueUnavailableError(`The ingest queue did not answer: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  async consumer(): Promise<QueueConsumer> {
    const consumer = await this.js.consumers.get(this.config.stream, this.config.consumer);
    const { deadLetterSubject, subject: prefix } = this.config;
    const js = this.js;
    return {
      async fetch(max, waitMs) {
        const messages = await consumer.fetch({ max_messages: max, expires: Math.max(1000, waitMs) });
        const out: IncomingRecord[] = [];
        // Read to its end (max records, or the expiry): a pull left early would leave records delivered to this
        // client unread, and the broker would hand them out again only after the ack wait.
        for await (const message of messages) out.push(incoming(message));
        return out;
      },
      async deadLetter(record, reason) {
        const source = record.subject.startsWith(`${prefix}.`) ? record.subject.slice(prefix.length + 1) : 'unknown';
        const entry = {
          reason,
          subject: record.subject,
          id: record.id ?? null,
          deliveries: record.deliveries,
          setAsideAt: new Date().toISOString(),
          record: new TextDecoder().decode(record.data),
        };
        const headers = natsHeaders();
        headers.set('Ingest-Dead-Letter-Code', reason.code);
        // The dead letter keeps the record's id: one written twice (a crash before the ack) is kept once.
        await js.publish(`${deadLetterSubject}.${source}`, JSON.stringify(entry), {
          headers,
          ...(record.id ? { msgID: record.id } : {}),
          timeout: PUBLISH_TIMEOUT_MS,
        });
        await record.ack();
      },
      async close() {},
    };
  }

  async close(): Promise<void> {
    await this.nc.drain().catch(() => this.nc.close());
  }
}

function incoming(message: JsMsg): IncomingRecord {
  return {
    subject: message.subject,
    id: message.headers?.get('Nats-Msg-Id') || undefined,
    data: message.data,
    deliveries: message.info.deliveryCount,
    async ack() {
      await message.ackAck();
    },
    retryLater(delayMs) {
      message.nak(delayMs);
    },
  };
}
