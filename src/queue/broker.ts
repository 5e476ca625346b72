/**
 * The queue behind the queued mode of ingestMetrics, as the service and the worker see it: publish records, consume
 * them in batches, set aside the ones that can never be stored. NATS JetStream implements it (./nats.ts); another
 * broker (Kafka) would implement the same three parts.
 */

/** One record on its way to the queue: its identity (the broker drops a resend within its window) and its JSON. */
export interface OutgoingRecord {
  id: string;
  payload: string;
}

/** What the queue holds and how far the worker is behind. */
export interface QueueBacklog {
  /** Records queued and not yet acknowledged by the worker (stored or set aside). */
  pending: number;
  /** Records the worker has not even been handed yet. */
  lag: number;
  /** Records in the dead-letter stream. */
  deadLetters: number;
}

/** A record the worker was handed. */
export interface IncomingRecord {
  /** The subject it was published to: `<prefix>.<source>`. */
  readonly subject: string;
  /** Its message id, when the producer gave one. */
  readonly id: string | undefined;
  readonly data: Uint8Array;
  /** How many times it was handed out (1 the first time). */
  readonly deliveries: number;
  /** Done with it: stored, or found stored already. Resolves once the broker confirmed it. */
  ack(): Promise<void>;
  /** Hand it out again after `delayMs` (the database is down: not the record's fault). */
  retryLater(delayMs: number): void;
}

/** Why a record was set aside, as the dead-letter entry carries it. */
export interface DeadLetterReason {
  /** NOT_JSON, INVALID_RECORD (a field problem, see `problems`) or STORE_FAILED (the database refused it). */
  code: 'NOT_JSON' | 'INVALID_RECORD' | 'STORE_FAILED';
  message: string;
  problems?: readonly { field: string | null; code: string; message: string }[];
}

export interface QueueConsumer {
  /** Up to `max` records, waiting at most `waitMs` for the first; fewer (or none) when there are fewer. */
  fetch(max: number, waitMs: number): Promise<IncomingRecord[]>;
  /** Moves the record to the dead-letter stream with its reason, then acknowledges it. */
  deadLetter(record: IncomingRecord, reason: DeadLetterReason): Promise<void>;
  close(): Promise<void>;
}

export interface IngestQueue {
  /** The broker, for logs: `nats://127.0.0.1:4222 stream METRICS_INGEST`. */
  readonly description: string;
  /**
   * Publishes the records to `<prefix>.<source>` and resolves once the broker stored every one, with the number it
   * dropped as resends. Throws QueueFullError when the stream is at its limit, QueueUnavailableError when the broker
   * cannot be reached; some records may then be queued already (a retry is dropped as a resend).
   */
  publish(source: string, records: readonly OutgoingRecord[]): Promise<{ duplicates: number }>;
  backlog(): Promise<QueueBacklog>;
  /** The worker's side: its durable consumer. */
  consumer(): Promise<QueueConsumer>;
  close(): Promise<void>;
}

/** The broker refused records because the stream is full: the client retries after a while (HTTP 503). */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
}

/** The broker cannot be reached or did not answer in time (HTTP 503). */
export class QueueUnavailableError extends Error {
  override readonly name = 'QueueUnavailableError';
}
