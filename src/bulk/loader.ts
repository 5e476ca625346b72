/**
 * Feeds records to a BulkWriter in batches, one batch in the database while the next is read and prepared, and keeps
 * the counts. Memory stays at about two batches whatever the input's size.
 */
import type { BatchOutcome, BulkWriter, PreparedBatch } from '../services/bulk-import.js';
import type { MetricRecordInput } from '../services/validation.js';
import type { LineProblem } from './records.js';

export interface LoadTotals {
  /** Records read (valid or not). */
  read: number;
  accepted: number;
  duplicates: number;
  /** Records not stored, each counted once whatever the number of its problems. */
  rejected: number;
}

/** Receives each rejected record: its line, why, and what it came from (for the rejected-lines file). */
export type RejectionSink = (line: number, problems: readonly LineProblem[], source: unknown) => void;

interface Pending {
  records: MetricRecordInput[];
  lines: number[];
  sources: unknown[];
}

export class BatchLoader {
  readonly totals: LoadTotals = { read: 0, accepted: 0, duplicates: 0, rejected: 0 };
  private current: Pending = BatchLoader.empty();
  private readonly ready: Pending[] = [];
  private inFlight: Promise<void> | undefined;

  constructor(
    private readonly writer: BulkWriter,
    private readonly batchSize: number,
    private readonly onRejected: RejectionSink,
  ) {}

  private static empty(): Pending {
    return { records: [], lines: [], sources: [] };
  }

  /** A record that has the right types; the writer's validation decides whether it is stored. */
  add(line: number, record: MetricRecordInput, source: unknown): void {
    this.totals.read++;
    const batch = this.current;
    batch.records.push(record);
    batch.lines.push(line);
    batch.sources.push(source);
    if (batch.records.length >= this.batchSize) {
      this.ready.push(batch);
      this.current = BatchLoader.empty();
    }
  }

  /** A record that could not even be read (bad JSON, wrong types). */
  reject(line: number, problems: readonly LineProblem[], source: unknown): void {
    this.totals.read++;
    this.totals.rejected++;
    this.onRejected(line, problems, source);
  }

  /** True when full batches wait: call `drain` before reading more. */
  get hasFullBatches(): boolean {
    return this.ready.length > 0;
  }

  /** Sends the full batches, each after the previous one is stored. */
  async drain(): Promise<void> {
    for (let batch = this.ready.shift(); batch; batch = this.ready.shift()) await this.send(batch);
  }

  /** Sends what is left and waits until everything is stored. */
  async finish(): Promise<LoadTotals> {
    await this.drain();
    if (this.current.records.length > 0) {
      const last = this.current;
      this.current = BatchLoader.empty();
      await this.send(last);
    }
    await this.inFlight;
    this.inFlight = undefined;
    return this.totals;
  }

  private async send(batch: Pending): Promise<void> {
    // Prepared while the previous batch is still in the database.
    const prepared: PreparedBatch = this.writer.prepare(batch.records, Math.floor(Date.now() / 1000));
    await this.inFlight;
    const write = this.writer.write(prepared).then((outcome) => this.count(batch, outcome));
    // The failure is reported by the next `send` or by `finish`, which await it; until then it is not "unhandled".
    write.catch(() => {});
    this.inFlight = write;
  }

  private count(batch: Pending, outcome: BatchOutcome): void {
    this.totals.accepted += outcome.accepted;
    this.totals.duplicates += outcome.duplicates;
    this.totals.rejected += outcome.rejected.size;
    const indexes = [...outcome.rejected.keys()].sort((a, b) => a - b);
    for (const index of indexes) {
      this.onRejected(batch.lines[index] as number, outcome.rejected.get(index) as LineProblem[], batch.sources[index]);
    }
  }
}
