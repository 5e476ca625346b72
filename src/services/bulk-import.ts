/**
 * Bulk loading: many records at a time, with the API's rules and identities (validateRecord, recordKey), so a file
 * import accepts, rejects and de-duplicates exactly as `ingestMetrics` does.
 *
 * Two ways to write a batch:
 * - `copy` (PostgreSQL): the batch's new rows go in with COPY, PostgreSQL's fastest way in, straight into
 *   user_metrics. COPY cannot skip a row whose identity is stored already, so a batch that meets one (a re-run, an
 *   overlap with the API) is rolled back whole and stored again the careful way: COPY into a temporary table, then one
 *   INSERT ... SELECT ... ON CONFLICT (record_key, timestamp) DO NOTHING. After such a batch the next one goes the
 *   careful way directly, until a batch finds nothing stored already: a re-run costs one failed COPY, not one per
 *   batch.
 * - `insert` (any database, the embedded one included): the ingest service's own path, `ingestMetrics`, one
 *   multi-row INSERT per batch.
 * Both write a batch's rows in identity order, as ingestMetrics does, so they never deadlock with the API.
 *
 * A writer splits each batch into `prepare` (validation, identities, the COPY text: CPU only) and `write` (the
 * database), so a caller can prepare the next batch while the database stores the previous one.
 */
import type pg from 'pg';
import { database } from '../db/client.js';
import { CopyText, copyInOneWrite } from '../db/copy.js';
import { copyLine, recordKeyHex, rowIdentity, storeMetrics } from './ingest.js';
import { withPartitions } from './partitions.js';
import { type MetricRecordInput, STORED_COLUMNS } from './record.js';
import { type FieldProblem, validateRecord } from './validation.js';

export type BulkMethod = 'copy' | 'insert';

export interface BatchOutcome {
  /** Records newly stored. */
  accepted: number;
  /** Valid records whose identity was stored already, or repeated in the batch (as `ingestMetrics` counts them). */
  duplicates: number;
  /** The problems of each rejected record, by its position in the batch. */
  rejected: Map<number, FieldProblem[]>;
}

export interface PreparedBatch {
  readonly size: number;
}

export interface BulkWriter {
  readonly method: BulkMethod;
  /**
   * Checks the records and readies them for `write`. Touches no database. `nowSeconds` is the clock for the timestamp
   * rules.
   */
  prepare(records: readonly MetricRecordInput[], nowSeconds: number): PreparedBatch;
  /** Stores a prepared batch: one database round of statements. One write at a time per writer. */
  write(batch: PreparedBatch): Promise<BatchOutcome>;
  close(): Promise<void>;
}

/**
 * A writer for the connected database: `copy` on PostgreSQL unless `method` says otherwise; `insert` on the embedded
 * one.
 */
export async function openBulkWriter(method?: BulkMethod): Promise<BulkWriter> {
  const db = database();
  const chosen = method ?? (db.pool ? 'copy' : 'insert');
  if (chosen === 'insert') return new InsertWriter();
  if (!db.pool)
    throw new Error(
      'The COPY method needs PostgreSQL (DATABASE_URL); the embedded database loads with the insert method',
    );
  return new CopyWriter(await db.pool.connect());
}

// insert ----------------------------------------------------------------------------------------------------------

interface InsertBatch extends PreparedBatch {
  records: readonly MetricRecordInput[];
  nowSeconds: number;
}

class InsertWriter implements BulkWriter {
  readonly method = 'insert' as const;

  prepare(records: readonly MetricRecordInput[], nowSeconds: number): InsertBatch {
    return { size: records.length, records, nowSeconds };
  }

  async write(batch: PreparedBatch): Promise<BatchOutcome> {
    const { records, nowSeconds } = batch as InsertBatch;
    const result = await storeMetrics(records, { nowSeconds });
    const rejected = new Map<number, FieldProblem[]>();
    for (const { index, field, code, message } of result.rejected) {
      const problems = rejected.get(index) ?? [];
      problems.push({ field, code, message });
      rejected.set(index, problems);
    }
    return { accepted: result.accepted, duplicates: result.duplicates, rejected };
  }

  async close(): Promise<void> {}
}

// copy ------------------------------------------------------------------------------------------------------------

/** Session-private staging table for the careful path; ON COMMIT DELETE ROWS empties it at the end of each batch. */
const STAGING_TABLE = `
  CREATE TEMP TABLE IF NOT EXISTS bulk_import_staging (
    record_key bytea NOT NULL,
    event_id text,
    user_id text NOT NULL,
    session_id text NOT NULL,
    "timestamp" int8 NOT NULL,
    talked_time int4 NOT NULL,
    microphone_used bool NOT NULL,
    speaker_used bool NOT NULL,
    voice_sentiment text
  ) ON COMMIT DELETE ROWS`;

const MERGE_STAGED = `
  INSERT INTO user_metrics (${STORED_COLUMNS})
  SELECT ${STORED_COLUMNS} FROM bulk_import_staging
  ORDER BY record_key, "timestamp"
  ON CONFLICT (record_key, "timestamp") DO NOTHING`;

/** PostgreSQL's unique_violation: a row of the batch has an identity that is stored already. */
const UNIQUE_VIOLATION = '23505';

interface CopyBatch extends PreparedBatch {
  /** The batch's distinct valid records in COPY's text format, in identity order (in parts: CopyText). */
  text: string[];
  /** Distinct valid records (the rows in `text`). */
  rows: number;
  /** Valid records repeating an identity earlier in the batch. */
  repeats: number;
  /** The distinct records' timestamps: the partitions the batch needs. */
  timestamps: number[];
  rejected: Map<number, FieldProblem[]>;
}

class CopyWriter implements BulkWriter {
  readonly method = 'copy' as const;
  /** Whether the next batch goes the careful way (the last one met identities stored already). */
  private careful = false;
  private stagingReady = false;

  constructor(private readonly client: pg.PoolClient) {}

  prepare(records: readonly MetricRecordInput[], nowSeconds: number): CopyBatch {
    const rejected = new Map<number, FieldProblem[]>();
    const rows = new Map<string, { keyHex: string; record: MetricRecordInput }>();
    let repeats = 0;
    records.forEach((record, index) => {
      const problems = validateRecord(record, nowSeconds);
      if (problems.length > 0) {
        rejected.set(index, problems);
        return;
      }
      const keyHex = recordKeyHex(record);
      const identity = rowIdentity(keyHex, record.timestamp);
      if (rows.has(identity)) repeats++;
      else rows.set(identity, { keyHex, record });
    });
    const identities = [...rows.keys()].sort();
    const text = new CopyText();
    const timestamps: number[] = [];
    for (const identity of identities) {
      const { keyHex, record } = rows.get(identity) as { keyHex: string; record: MetricRecordInput };
      text.add(`${copyLine(keyHex, record)}\n`);
      timestamps.push(record.timestamp);
    }
    return { size: records.length, text: text.done(), rows: identities.length, repeats, timestamps, rejected };
  }

  async write(batch: PreparedBatch): Promise<BatchOutcome> {
    const { rows, repeats, rejected, timestamps } = batch as CopyBatch;
    if (rows === 0) return { accepted: 0, duplicates: repeats, rejected };
    // Old records may need partitions made: each attempt below is its own transaction, rolled back whole on failure.
    return withPartitions(
      () => timestamps,
      () => this.writeRows(batch as CopyBatch),
    );
  }

  private async writeRows(batch: CopyBatch): Promise<BatchOutcome> {
    const { text, rows, repeats, rejected } = batch;
    if (!this.careful) {
      try {
        await this.transaction(async () => this.copy('user_metrics', text));
        return { accepted: rows, duplicates: repeats, rejected };
      } catch (error) {
        if ((error as { code?: string }).code !== UNIQUE_VIOLATION) throw error;
        this.careful = true;
      }
    }
    const accepted = await this.transaction(async () => {
      if (!this.stagingReady) {
        await this.client.query(STAGING_TABLE);
        this.stagingReady = true;
      }
      await this.copy('bulk_import_staging', text);
      return (await this.client.query(MERGE_STAGED)).rowCount ?? 0;
    });
    // Back to plain COPY once a batch holds nothing stored already.
    this.careful = accepted < rows;
    return { accepted, duplicates: repeats + rows - accepted, rejected };
  }

  private async copy(table: string, text: readonly string[]): Promise<void> {
    await copyInOneWrite(this.client, `COPY ${table} (${STORED_COLUMNS}) FROM STDIN`, text);
  }

  private async transaction<T>(work: () => Promise<T>): Promise<T> {
    await this.client.query('BEGIN');
    try {
      const result = await work();
      await this.client.query('COMMIT');
      return result;
    } catch (error) {
      await this.client.query('ROLLBACK').catch(() => {});
      throw error;
    }
  }

  async close(): Promise<void> {
    if (this.stagingReady) await this.client.query('DROP TABLE IF EXISTS bulk_import_staging').catch(() => {});
    this.client.release();
  }
}
