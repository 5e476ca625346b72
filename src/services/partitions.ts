/**
 * The partitions of user_metrics (range-partitioned on "timestamp", prisma/migrations/*_partitioned_user_metrics):
 * made ahead of time, made on demand for a record whose time has none, and dropped past the retention horizon.
 *
 * - Ahead: every maintenance run makes the partitions from one width before now to two days after (a timestamp may be
 *   up to a day ahead of the server's clock), so live ingestion never waits for one.
 * - On demand: a write that meets a time without a partition (a late record, an import of old data) makes the
 *   partitions its batch needs and runs again; nothing valid is refused for want of one (`withPartitions`).
 * - Retention (`RETENTION_DAYS`): a partition whose whole range is older than the horizon is detached without
 *   blocking writers or readers (DETACH ... CONCURRENTLY on PostgreSQL) and dropped. One instance at a time does it
 *   (a session advisory lock; the others skip the run). Rollups keep what the dropped rows added up to: the slots'
 *   sketches are brought up to date first, and the new start of the raw rows is written to metric_retention before
 *   anything is detached, so a question that needs raw rows from before it is refused (`rawRowsFrom`), never answered
 *   from what is left.
 */
import { Counter, Gauge } from 'prom-client';
import { database, type SqlSession } from '../db/client.js';
import { registry } from '../observability/metrics.js';
import { refreshSketches } from './rollups.js';

export interface PartitionSettings {
  /** Width of a new partition, seconds: a whole number of hours (PARTITION_HOURS; default a day). */
  widthSeconds: number;
  /** Days of raw rows kept (RETENTION_DAYS); 0 keeps everything. */
  retentionDays: number;
}

let settings: PartitionSettings = { widthSeconds: 86_400, retentionDays: 0 };

/** Sets the width and retention the service runs with (app start-up). */
export function configurePartitions(next: PartitionSettings): void {
  settings = { ...next };
}

export function partitionSettings(): PartitionSettings {
  return settings;
}

const created = new Counter({
  name: 'metric_partitions_created_total',
  help: 'Partitions of user_metrics this process created (ahead of time or for a record that needed one)',
  registers: [registry],
});
const dropped = new Counter({
  name: 'metric_partitions_dropped_total',
  help: 'Partitions of user_metrics this process dropped past RETENTION_DAYS',
  registers: [registry],
});
const maintenanceFailures = new Counter({
  name: 'metric_partition_maintenance_failures_total',
  help: 'Partition maintenance runs that failed (retried at the next run)',
  registers: [registry],
});
const partitionCount = new Gauge({
  name: 'metric_partitions',
  help: 'Partitions of user_metrics at the last maintenance run',
  registers: [registry],
});

/** PostgreSQL's check_violation, which it also raises for a row no partition accepts. */
const CHECK_VIOLATION = '23514';

/** True for PostgreSQL's "no partition of relation ... found for row". */
export function isMissingPartition(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: string; message?: string };
  return code === CHECK_VIOLATION && typeof message === 'string' && message.startsWith('no partition of relation');
}

/** Every bound is a whole hour (the width is whole hours), so one time per hour tells which partitions are needed. */
function hoursOf(timestamps: Iterable<number>): number[] {
  const hours = new Set<number>();
  for (const t of timestamps) hours.add(t - (t % 3600));
  return [...hours];
}

/** Makes the partitions that records at these times need (none when all exist). Answers the names created. */
export async function ensurePartitions(timestamps: Iterable<number>, session?: SqlSession): Promise<string[]> {
  const params = [hoursOf(timestamps), settings.widthSeconds];
  const sql = 'SELECT name FROM metric_partitions_ensure($1::int8[], $2::int8) AS name';
  const rows = session
    ? await session.query<{ name: string }>(sql, params)
    : await database().queryDirect<{ name: string }>(sql, params, 'metric_partitions_ensure');
  if (rows.length > 0) created.inc(rows.length);
  return rows.map((row) => row.name);
}

/**
 * Runs a write; when it met a time without a partition, makes the partitions of `timestamps` and runs it once more.
 * The write must have stored nothing when it failed (one statement, or its own transaction), as every write path does.
 */
export async function withPartitions<T>(timestamps: () => Iterable<number>, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (!isMissingPartition(error)) throw error;
    await ensurePartitions(timestamps());
    return write();
  }
}

export interface PartitionInfo {
  name: string;
  /** [from, to): unix seconds. */
  from: number;
  to: number;
}

export async function listPartitions(): Promise<PartitionInfo[]> {
  const rows = await database().queryDirect<{ partition_name: string; from_ts: number; to_ts: number }>(
    'SELECT partition_name, from_ts, to_ts FROM metric_partitions()',
    [],
  );
  return rows.map((row) => ({ name: row.partition_name, from: Number(row.from_ts), to: Number(row.to_ts) }));
}

/** Session advisory lock held while one instance applies retention (ids of this project's locks: 72403150xx). */
const RETENTION_LOCK = 7240315003;

export interface MaintenanceResult {
  created: string[];
  dropped: string[];
  /** False when another instance was applying retention (this run made partitions ahead only). */
  retentionRan: boolean;
}

/** One maintenance run: the partitions ahead, then retention. `nowSeconds` is the clock (tests move it). */
export async function maintainPartitions(nowSeconds = Math.floor(Date.now() / 1000)): Promise<MaintenanceResult> {
  const width = settings.widthSeconds;
  const ahead: number[] = [];
  for (let t = nowSeconds - width; t <= nowSeconds + 2 * 86_400 + width; t += 3600) ahead.push(t);
  const made = await ensurePartitions(ahead);
  let removed: string[] = [];
  let retentionRan = true;
  if (settings.retentionDays > 0) {
    const horizon = nowSeconds - settings.retentionDays * 86_400;
    const outcome = await applyRetention(horizon);
    removed = outcome.dropped;
    retentionRan = outcome.ran;
  }
  partitionCount.set((await listPartitions()).length);
  return { created: made, dropped: removed, retentionRan };
}

/** How long an instance trusts the raw horizon it read; retention waits twice as long before it detaches. */
const HORIZON_CACHE_MS = 1000;
let rawHorizon: { at: number; value: Promise<number | null> } | undefined;

/**
 * Unix seconds from which raw rows are all kept (null: none ever dropped). Read from metric_retention at most once a
 * second per process, so that asking costs a question nothing; an instance learns of a new horizon before any row
 * behind it is gone.
 */
export function rawRowsFrom(now = performance.now()): Promise<number | null> {
  if (rawHorizon && now - rawHorizon.at < HORIZON_CACHE_MS) return rawHorizon.value;
  const value = database()
    .queryDirect<{ raw_rows_from: string | number }>(
      "SELECT raw_rows_from FROM metric_retention WHERE relation = 'user_metrics'",
      [],
      'metric_retention',
    )
    .then(([row]) => (row ? Number(row.raw_rows_from) : null));
  value.catch(() => {
    if (rawHorizon?.value === value) rawHorizon = undefined;
  });
  rawHorizon = { at: now, value };
  return value;
}

const quoted = (name: string) => `"${name.replaceAll('"', '""')}"`;

/**
 * Detaches and drops every partition whose range ends at or before `horizon`. On PostgreSQL, DETACH ... CONCURRENTLY
 * takes only a SHARE UPDATE EXCLUSIVE lock on user_metrics (writers and readers go on) and waits for the queries that
 * may still read the partition; a detach an earlier run left half done is finished first (FINALIZE). The embedded
 * database has one connection, so nothing waits: its partitions are dropped directly.
 */
async function applyRetention(horizon: number): Promise<{ ran: boolean; dropped: string[] }> {
  const db = database();
  return db.withSession(async (session) => {
    const [lock] = await session.query<{ locked: boolean }>('SELECT pg_try_advisory_lock($1) AS locked', [
      RETENTION_LOCK,
    ]);
    if (!lock?.locked) return { ran: false, dropped: [] };
    try {
      const old = await session.query<{ partition_name: string; detaching: boolean; from_ts: number; to_ts: number }>(
        'SELECT partition_name, detaching, from_ts, to_ts FROM metric_partitions() WHERE to_ts <= $1::int8',
        [horizon],
      );
      const names: string[] = [];
      if (old.length === 0) return { ran: true, dropped: names };
      const rawFrom = Math.max(...old.map((p) => Number(p.to_ts)));
      // The sketches of the slots about to lose their rows are built now: afterwards nothing could build them.
      await refreshSketches(Math.min(...old.map((p) => Number(p.from_ts))), rawFrom);
      await session.query(
        `INSERT INTO metric_retention (relation, raw_rows_from) VALUES ('user_metrics', $1::int8)
        ON CONFLICT (relation) DO UPDATE
          SET raw_rows_from = GREATEST(metric_retention.raw_rows_from, excluded.raw_rows_from), updated_at = now()`,
        [rawFrom],
      );
      rawHorizon = undefined;
      // Other instances read the horizon at most HORIZON_CACHE_MS ago: once this has passed, all of them know it.
      if (db.kind === 'postgres') await new Promise((resolve) => setTimeout(resolve, 2 * HORIZON_CACHE_MS));
      for (const { partition_name: name, detaching } of old) {
        if (db.kind === 'postgres') {
          await session.exec(
            `ALTER TABLE user_metrics DETACH PARTITION ${quoted(name)} ${detaching ? 'FINALIZE' : 'CONCURRENTLY'}`,
          );
        }
        await session.exec(`DROP TABLE ${quoted(name)}`);
        dropped.inc();
        names.push(name);
      }
      return { ran: true, dropped: names };
    } finally {
      await session.query('SELECT pg_advisory_unlock($1)', [RETENTION_LOCK]);
    }
  });
}

export interface PartitionMaintenance {
  stop(): Promise<void>;
}

/** Runs maintainPartitions now and every `intervalMs` (0: never, not even now). Failures are logged and retried. */
export function startPartitionMaintenance(
  intervalMs: number,
  logger: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void },
): PartitionMaintenance {
  if (intervalMs <= 0) return { stop: async () => {} };
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let stopped = false;
  const tick = () => {
    running = maintainPartitions()
      .then((result) => {
        if (result.created.length > 0 || result.dropped.length > 0)
          logger.info({ created: result.created, dropped: result.dropped }, 'Partitions of user_metrics maintained');
      })
      .catch((error: unknown) => {
        maintenanceFailures.inc();
        logger.warn({ err: error }, 'Partition maintenance failed; retrying at the next run');
      })
      .finally(() => {
        running = undefined;
        if (!stopped) {
          timer = setTimeout(tick, intervalMs);
          timer.unref();
        }
      });
  };
  tick();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
