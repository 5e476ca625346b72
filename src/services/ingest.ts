/**
 * Ingestion: validate a batch, give each record its identity, store the new ones atomically (see insertRows).
 */
import crypto from 'node:crypto';
import { database, type SqlSession } from '../db/client.js';
import { arrayElement, CopyText, copyBytea, copyField } from '../db/copy.js';
import type { IngestQueue } from '../queue/broker.js';
import { clipEcho } from './errors.js';
import { publishStored } from './events.js';
import { withPartitions } from './partitions.js';
import { type MetricRecordInput, RECORD_FIELD_NAMES, RECORD_FIELDS, STORED_COLUMNS } from './record.js';
import { type FieldProblem, validateRecord } from './validation.js';

/** Longest an ingest answer waits for live subscribers to be told that records were stored. */
const PUBLISH_WAIT_MS = 1000;

export interface RejectedRecord extends FieldProblem {
  /** Position of the record in the request's `records`. */
  index: number;
  eventId: string | null;
}

/** STORED: the valid records are in the database; QUEUED: they are in the ingest queue, for the worker to store. */
export type IngestStatus = 'STORED' | 'QUEUED';

export interface IngestResult {
  status: IngestStatus;
  /** Records newly stored (0 when QUEUED). */
  accepted: number;
  /** Records newly queued (0 when STORED). */
  queued: number;
  /**
   * Valid records whose identity was stored already, or repeated within the batch; when QUEUED, those repeated within
   * the batch or dropped by the broker as a resend within its duplicate window.
   */
  duplicates: number;
  rejected: RejectedRecord[];
  /** How the batch was written (see `insertRows`); null when nothing was to be written. */
  writePath: WritePath | null;
}

/**
 * `copy`: COPY straight away; `lookup_copy`: COPY of the identities not stored yet, after a lookup (a retried batch, or
 * while batches look up first); `insert`: one INSERT ... ON CONFLICT DO NOTHING (the embedded database, or a COPY that
 * lost a race to a concurrent batch).
 */
export type WritePath = 'copy' | 'lookup_copy' | 'insert';

export interface IngestOptions {
  /** When true, one rejected record means nothing is stored. Default false. */
  atomic?: boolean;
  /** The server's clock in unix seconds, for the timestamp rules. Default: now. */
  nowSeconds?: number;
}

/**
 * A record's identity: SHA-256 of its eventId when given, else of its content in a canonical form.
 * The two inputs carry different prefixes, so an eventId key can never equal a content key.
 *
 * NEVER CHANGE THIS FORM: stored keys were computed with it, and a retry hashed differently would be stored twice.
 *   event:   "event:" + eventId
 *   content: "content:v1:" + JSON.stringify([userId, sessionId, timestamp, talkedTime, microphoneUsed, speakerUsed,
 *   voiceSentiment])
 * with voiceSentiment null when absent, strings exactly as sent, numbers as JSON integers.
 */
export function recordKey(record: MetricRecordInput): Buffer {
  return Buffer.from(recordKeyHex(record), 'hex');
}

/**
 * `recordKey` as lower-case hex: what ingestion works with (hex strings sort in the order of the bytes they encode).
 */
export function recordKeyHex(record: MetricRecordInput): string {
  // crypto.hash: one call per record, without a Hash object: cheaper than createHash + digest + toString('hex').
  // "event:" and "content:v1:" are ASCII, so hashing the concatenation hashes the same bytes as two updates would.
  if (record.eventId !== undefined && record.eventId !== null)
    return crypto.hash('sha256', `event:${record.eventId}`, 'hex');
  return crypto.hash(
    'sha256',
    `content:v1:${JSON.stringify([
      record.userId,
      record.sessionId,
      record.timestamp,
      record.talkedTime,
      record.microphoneUsed,
      record.speakerUsed,
      record.voiceSentiment ?? null,
    ])}`,
    'hex',
  );
}

/**
 * The identity a row is stored under: its record key together with its event time, the partition key (a unique key
 * of a partitioned table must hold it; README: "Record identity"). One string that sorts as (record_key, timestamp):
 * the key's hex, then the timestamp in 12 digits (validation keeps it positive and below 10^12).
 */
export function rowIdentity(keyHex: string, timestamp: number): string {
  return keyHex + String(timestamp).padStart(12, '0');
}

interface PendingRow {
  keyHex: string;
  record: MetricRecordInput;
}

/** What the insert stored: for each new row, its position in the rows sent, in id order. */
interface Inserted {
  positions: number[];
  path: WritePath;
}

/** The queue of the queued mode (INGEST_QUEUE), or undefined: records are stored directly. */
let ingestQueue: IngestQueue | undefined;

/** Switches ingestMetrics to the queued mode (a queue) or back to storing directly (undefined). */
export function configureIngestQueue(queue: IngestQueue | undefined): void {
  ingestQueue = queue;
}

/** The subject token the API's records are published under (`<INGEST_QUEUE_SUBJECT>.api`). */
export const API_SOURCE = 'api';

/**
 * The API's ingestion: the records are checked, then stored, or in the queued mode published to the ingest queue
 * (answered once the broker has them; the worker stores them with storeMetrics).
 */
export function ingestMetrics(
  records: readonly MetricRecordInput[],
  options: IngestOptions = {},
): Promise<IngestResult> {
  return ingest(records, options, ingestQueue);
}

/**
 * Checks and stores the records, whatever the mode: what the worker calls for each batch it takes from the queue, so
 * that queued records meet the same rules and get the same identities as records stored directly.
 */
export function storeMetrics(
  records: readonly MetricRecordInput[],
  options: IngestOptions = {},
): Promise<IngestResult> {
  return ingest(records, options, undefined);
}

async function ingest(
  records: readonly MetricRecordInput[],
  options: IngestOptions,
  queue: IngestQueue | undefined,
): Promise<IngestResult> {
  const status: IngestStatus = queue ? 'QUEUED' : 'STORED';
  const nowSeconds = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const rejected: RejectedRecord[] = [];
  const unique = new Map<string, PendingRow>();
  let repeatsInBatch = 0;

  for (let index = 0; index < records.length; index++) {
    const record = records[index] as MetricRecordInput;
    const problems = validateRecord(record, nowSeconds);
    if (problems.length > 0) {
      for (const problem of problems)
        rejected.push({ index, eventId: record.eventId == null ? null : clipEcho(record.eventId), ...problem });
      continue;
    }
    const keyHex = recordKeyHex(record);
    const identity = rowIdentity(keyHex, record.timestamp);
    if (unique.has(identity)) repeatsInBatch++;
    else unique.set(identity, { keyHex, record });
  }

  if (unique.size === 0 || (options.atomic && rejected.length > 0)) {
    return {
      status,
      accepted: 0,
      queued: 0,
      duplicates: options.atomic && rejected.length > 0 ? 0 : repeatsInBatch,
      rejected,
      writePath: null,
    };
  }

  if (queue) {
    // The message id is the row's identity: the broker drops a resend within its duplicate window, and one that comes
    // later is a duplicate for the store.
    const outgoing = [...unique.entries()].map(([identity, row]) => ({
      id: identity,
      payload: JSON.stringify(row.record),
    }));
    const { duplicates } = await queue.publish(API_SOURCE, outgoing);
    return {
      status,
      accepted: 0,
      queued: outgoing.length - duplicates,
      duplicates: repeatsInBatch + duplicates,
      rejected,
      writePath: null,
    };
  }

  // Rows go in in identity order: concurrent batches that overlap then take their row locks in the same order and
  // never deadlock. (The default sort compares the strings without a call per comparison; see rowIdentity.)
  const rows = [...unique.keys()].sort().map((identity) => unique.get(identity) as PendingRow);
  // A record whose time has no partition yet (a late one, an old import) gets it made, and the batch runs again.
  const inserted = await withPartitions(
    () => rows.map((row) => row.record.timestamp),
    () => insertRows(rows),
  );
  const accepted = inserted.positions.length;
  // Live subscribers (metricIngested) read what was stored from the table (services/events.ts): they are told to look.
  // The answer waits for the announcement, bounded so that Redis trouble cannot hold ingestion (the subscribers' poll
  // finds the records anyway).
  if (accepted > 0) {
    let bound: NodeJS.Timeout | undefined;
    await Promise.race([publishStored(), new Promise((resolve) => (bound = setTimeout(resolve, PUBLISH_WAIT_MS)))]);
    clearTimeout(bound);
  }
  return {
    status,
    accepted,
    queued: 0,
    duplicates: repeatsInBatch + (rows.length - accepted),
    rejected,
    writePath: inserted.path,
  };
}

/**
 * The batch's identities as rows `batch (position, record_key, ts)`, from $1, one bytea of 32-byte keys (sent in
 * binary: no hex to encode or decode), $2, their number, and $3, their timestamps.
 */
const BATCH_IDENTITIES = `batch AS (
      SELECT g AS position, substring($1::bytea FROM (g - 1) * 32 + 1 FOR 32) AS record_key,
        ($3::int8[])[g] AS ts FROM generate_series(1, $2::int) AS g
    )`;

/**
 * The stored row of the identity (batch.record_key, batch.ts), one index probe each, in the one partition of its
 * time (pruned as the probe runs): LATERAL ... LIMIT 1 keeps PostgreSQL from making a join of it.
 */
const STORED_ROW_OF_BATCH_KEY = `SELECT id FROM user_metrics
      WHERE user_metrics.record_key = batch.record_key AND user_metrics."timestamp" = batch.ts LIMIT 1`;

/**
 * How a batch is stored. On PostgreSQL, COPY: its cheapest way in. COPY cannot skip a row whose identity is stored
 * already (the unique index refuses it and the COPY stores nothing), so a batch is first copied as it is; when that
 * fails on a stored identity (a retry), it goes again with a lookup first, and the batches after it look up first
 * until one finds nothing stored. A batch that races a concurrent one between lookup and COPY, and every batch on the
 * embedded database, is one INSERT ... ON CONFLICT DO NOTHING. All of them write in identity order, so concurrent
 * batches never deadlock. The first COPY leaves ids, created_at and txid to the columns' defaults (copyWithDefaults).
 * No transaction around that COPY: it is one statement, all or nothing.
 */
async function insertRows(rows: PendingRow[]): Promise<Inserted> {
  const db = database();
  if (db.kind === 'postgres') {
    if (!lookUpFirst) {
      const copied = await db.withSession((session) => copyWithDefaults(session, rows));
      if (copied) return copied;
      lookUpFirst = true;
    }
    const copied = await db.withSession((session) => copyRows(session, rows));
    if (copied) {
      if (copied.positions.length === rows.length) lookUpFirst = false;
      return copied;
    }
  }
  return insertRowsWithStatement(rows);
}

/** Whether batches look up their identities before COPY: since a batch met identities stored already (see above). */
let lookUpFirst = false;

/**
 * Which identities of the batch are stored already, and ids for the others. Each
 * identity is looked up with its own index probe (STORED_ROW_OF_BATCH_KEY; `enable_seqscan = off` keeps PostgreSQL
 * from scanning the table when its statistics say it is small, as after a TRUNCATE).
 */
const LOOK_UP_AND_RESERVE_SQL = `
    WITH ${BATCH_IDENTITIES}, stored AS (
      SELECT position FROM batch CROSS JOIN LATERAL (${STORED_ROW_OF_BATCH_KEY}) AS hit
    )
    SELECT (SELECT string_agg((position - 1)::text, ',') FROM stored) AS stored,
           (SELECT string_agg(id::text, ',' ORDER BY id) FROM (
              SELECT nextval('user_metrics_id_seq') AS id FROM generate_series(1, $2::int - (SELECT
                count(*)::int FROM stored))
            ) AS reserved) AS ids`;

const COPY_SQL = `COPY user_metrics (id, ${STORED_COLUMNS}) FROM STDIN`;
const COPY_WITH_DEFAULTS_SQL = `COPY user_metrics (${STORED_COLUMNS}) FROM STDIN`;

/** PostgreSQL's unique_violation. */
const UNIQUE_VIOLATION = '23505';

/**
 * The batch through COPY, with its identities looked up first (in a transaction, so that its planner settings hold);
 * undefined when the COPY met an identity stored meanwhile (it stored nothing).
 */
async function copyRows(session: SqlSession, rows: PendingRow[]): Promise<Inserted | undefined> {
  let keys = '';
  const timestamps: number[] = [];
  for (let i = 0; i < rows.length; i++) {
    const { keyHex, record } = rows[i] as PendingRow;
    keys += keyHex;
    timestamps.push(record.timestamp);
  }
  // Sent at once (the driver queues them on the connection); the rows' COPY lines are built while PostgreSQL works.
  // The planner settings are for the lookup (see LOOK_UP_AND_RESERVE_SQL).
  const begun = session.exec('BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off');
  const reserving = session.query<{ stored: string | null; ids: string | null }>(
    LOOK_UP_AND_RESERVE_SQL,
    [Buffer.from(keys, 'hex'), rows.length, timestamps],
    'ingest_metrics_look_up_and_reserve',
  );
  try {
    const lines = new Array<string>(rows.length);
    for (let position = 0; position < rows.length; position++) {
      const { keyHex, record } = rows[position] as PendingRow;
      lines[position] = copyLine(keyHex, record);
    }
    const [, [reserved]] = await Promise.all([begun, reserving]);
    if (!reserved) throw new Error('The identity lookup answered no row');
    const storedAlready = new Uint8Array(rows.length);
    if (reserved.stored) for (const position of reserved.stored.split(',')) storedAlready[Number(position)] = 1;
    // Ids as text: a 64-bit int8[] would come as strings; each id is below 2^53.
    const ids = reserved.ids ? reserved.ids.split(',').map(Number) : [];
    const positions: number[] = [];
    const data = new CopyText();
    for (let position = 0; position < rows.length; position++) {
      if (storedAlready[position]) continue;
      data.add(`${ids[positions.length]}\t${lines[position]}\n`);
      positions.push(position);
    }
    if (positions.length !== ids.length) throw new Error(`Reserved ${ids.length} ids for ${positions.length} new rows`);
    const inserted: Inserted = { positions, path: 'lookup_copy' };
    if (positions.length > 0) await copyIn(session, COPY_SQL, data.done());
    await session.exec('COMMIT');
    return inserted;
  } catch (error) {
    await Promise.allSettled([begun, reserving]);
    await session.exec('ROLLBACK').catch(() => {});
    if ((error as { code?: string }).code === UNIQUE_VIOLATION) return undefined;
    throw error;
  }
}

/**
 * The batch through one COPY that leaves id, created_at and txid to the columns' defaults: the same work for
 * PostgreSQL as a plain COPY of these rows, one round trip (live subscribers read the rows from the table, so nothing
 * here needs their ids). Undefined when the COPY met an identity stored already.
 */
async function copyWithDefaults(session: SqlSession, rows: PendingRow[]): Promise<Inserted | undefined> {
  const data = new CopyText();
  const positions = new Array<number>(rows.length);
  for (let position = 0; position < rows.length; position++) {
    const { keyHex, record } = rows[position] as PendingRow;
    data.add(`${copyLine(keyHex, record)}\n`);
    positions[position] = position;
  }
  try {
    await copyIn(session, COPY_WITH_DEFAULTS_SQL, data.done());
  } catch (error) {
    if ((error as { code?: string }).code === UNIQUE_VIOLATION) return undefined;
    throw error;
  }
  return { positions, path: 'copy' };
}

/** COPY on the session: the COPY paths run on PostgreSQL sessions only, which have it. */
function copyIn(session: SqlSession, statement: string, data: readonly string[]): Promise<void> {
  if (!session.copyFrom) throw new Error('COPY FROM STDIN needs a PostgreSQL session');
  return session.copyFrom(statement, data);
}

/** A record as a line of COPY's text format (without its line end), in the order of STORED_COLUMNS. */
export function copyLine(keyHex: string, record: MetricRecordInput): string {
  let line = copyBytea(keyHex);
  for (let i = 0; i < RECORD_FIELD_NAMES.length; i++)
    line += `\t${copyField(record[RECORD_FIELD_NAMES[i] as keyof MetricRecordInput])}`;
  return line;
}

/**
 * The batch insert: one INSERT ... SELECT FROM unnest(column arrays), one statement and one round trip whatever the
 * batch size, prepared once per connection. Rows go in in the order sent (`ORDER BY position`: key order, see above).
 * It answers with one row: the position of each stored row, instead of a row per record with its 64-character key and
 * a timestamp to parse.
 * It runs on the driver directly (`queryDirect`), not through Prisma, whose raw-query path costs more CPU than the
 * statement. Each column goes as one array literal in a text parameter (cast to its array type by PostgreSQL), built
 * in one pass over the rows, where pg's own encoder would walk and escape each array separately.
 */
const TIMESTAMP_INPUT = `f${RECORD_FIELDS.findIndex((field) => field.name === 'timestamp')}`;
const INSERT_ROWS_SQL = `
    WITH input AS (
      SELECT decode(k, 'hex') AS record_key, ${RECORD_FIELDS.map((_, i) => `f${i}`).join(', ')}, position
      FROM unnest($1::text::text[],
        ${RECORD_FIELDS.map((field, i) => `$${i + 2}::text::${field.sqlType}[]`).join(', ')})
           WITH ORDINALITY AS r(k, ${RECORD_FIELDS.map((_, i) => `f${i}`).join(', ')}, position)
    ), inserted AS (
      INSERT INTO user_metrics (${STORED_COLUMNS})
      SELECT record_key, ${RECORD_FIELDS.map((_, i) => `f${i}`).join(', ')} FROM input ORDER BY position
      ON CONFLICT (record_key, "timestamp") DO NOTHING
      RETURNING id, record_key, "timestamp"
    )
    SELECT string_agg((input.position - 1)::text, ',' ORDER BY inserted.id) AS stored
    FROM inserted JOIN input
      ON input.record_key = inserted.record_key AND input.${TIMESTAMP_INPUT} = inserted."timestamp"`;

async function insertRowsWithStatement(rows: PendingRow[]): Promise<Inserted> {
  // Validation has refused NUL characters and unpaired surrogates, the two things an array literal cannot carry.
  let keys = '{';
  const columns = RECORD_FIELD_NAMES.map(() => '{');
  for (let i = 0; i < rows.length; i++) {
    const { keyHex, record } = rows[i] as PendingRow;
    const comma = i === 0 ? '' : ',';
    keys += `${comma}${keyHex}`;
    for (let f = 0; f < columns.length; f++) {
      columns[f] += `${comma}${arrayElement(record[RECORD_FIELD_NAMES[f] as keyof MetricRecordInput])}`;
    }
  }
  const [result] = await database().queryDirect<{ stored: string | null }>(
    INSERT_ROWS_SQL,
    [keys, ...columns].map((literal) => `${literal}}`),
    'ingest_metrics_insert',
  );
  const positions = result?.stored ? result.stored.split(',').map(Number) : [];
  return { positions, path: 'insert' };
}
