/**
 * Rollups: what the records of each 15-minute slot add up to (`metric_rollups`, per sentiment and microphone/speaker
 * usage), appended as deltas by a statement-level trigger from the rows each INSERT or COPY stored and folded in once a
 * second (prisma/migrations/*_rollups, *_rollup_deltas_hourly_sketches), and mergeable sketches of each slot and hour
 * (`metric_rollup_sketches`, `metric_rollup_sketches_hourly`: a bitmap of hashed user ids, a log-bucketed histogram
 * of talked_time), built after the fact and used while they cover their slot. Here: when a metricStats question can
 * be answered from them, the fold, the sketches' refresh, and the rebuild.
 *
 * A question is answered from rollups only when the answer is the same as from raw rows: its filter names only the
 * kept dimensions and `timestamp`, it groups by kept dimensions and buckets of an hour or more, and it asks for figures
 * that add up. A quarter-hour slot lies inside one bucket of every tz-database zone since 2000 (offsets such as +05:30
 * and +05:45 included) except around a few zones' changes at 00:01 local time (Newfoundland and Labrador until 2011,
 * Moncton until 2006, Gaza and Hebron 2010-2011, Casey 2020-2022): a question whose range holds such a slot reads the
 * raw rows (`misalignedSlots`). A time range that cuts slots is answered from the whole slots inside it plus the raw
 * rows of the cut slots at its edges.
 */
import { Counter } from 'prom-client';
import { database } from '../db/client.js';
import { Prisma } from '../generated/prisma/client.js';
import { registry } from '../observability/metrics.js';
import { filterToSql, type MetricFilter, type NumberFilter } from './metric-filter.js';

/** Length of a slot, seconds. Every slot starts at a multiple of it (UTC-aligned). */
export const SLOT_SECONDS = 900;

/** Dimensions the rollups keep (and can group by). */
export const ROLLUP_DIMENSIONS = new Set(['VOICE_SENTIMENT', 'MICROPHONE_USED', 'SPEAKER_USED']);

/** How a question is answered from rollups. */
export interface RollupPlan {
  /** The condition on rollup rows, written over columns named as user_metrics' ("timestamp" is the slot's start). */
  rollupCondition: Prisma.Sql;
  /** The condition on raw rows to add (the cut slots at the range's edges); null when the range cuts no slot. */
  edgeCondition: Prisma.Sql | null;
  /** True when the filter names no dimension: the per-slot sketches (which keep none) can answer it. */
  dimensionFree: boolean;
  /** The slots the rollups are read for lie in [from, to); null ends are unbounded (or not known). */
  from: number | null;
  to: number | null;
  /** The earliest raw row the edges read (null: unbounded), or undefined when the answer reads no raw row. */
  rawFrom?: number | null;
}

const TIMESTAMP = Prisma.raw('"timestamp"');

/** Which fields a filter names anywhere in it. */
function fieldsOf(filter: MetricFilter, into = new Set<string>()): Set<string> {
  for (const [key, value] of Object.entries(filter)) {
    if (value === null || value === undefined) continue;
    if (key === 'AND' || key === 'OR') for (const sub of value as MetricFilter[]) fieldsOf(sub, into);
    else if (key === 'NOT') fieldsOf(value as MetricFilter, into);
    else into.add(key);
  }
  return into;
}

/** Every timestamp condition of the filter, wherever it is. */
function timestampFilters(filter: MetricFilter, into: NumberFilter[] = []): NumberFilter[] {
  if (filter.timestamp) into.push(filter.timestamp);
  for (const sub of [...(filter.AND ?? []), ...(filter.OR ?? []), ...(filter.NOT ? [filter.NOT] : [])])
    timestampFilters(sub, into);
  return into;
}

const onSlotEdge = (seconds: number) => Number.isSafeInteger(seconds) && seconds % SLOT_SECONDS === 0;

/**
 * True when the condition holds for a row exactly when it holds for its slot's start: `gte`/`lt` at a slot's start,
 * `gt`/`lte` one second before one; never `equals` or `in`.
 */
function slotAligned(f: NumberFilter): boolean {
  if (f.equals != null || f.in != null) return false;
  if (f.gte != null && !onSlotEdge(f.gte)) return false;
  if (f.lt != null && !onSlotEdge(f.lt)) return false;
  if (f.gt != null && !onSlotEdge(f.gt + 1)) return false;
  if (f.lte != null && !onSlotEdge(f.lte + 1)) return false;
  return true;
}

/** The range [from, to) a top-level timestamp condition (without equals/in) allows; null ends are unbounded. */
function rangeOf(f: NumberFilter): { from: number | null; to: number | null } | null {
  if (f.equals != null || f.in != null) return null;
  const bounds = [f.gte, f.gt, f.lt, f.lte].filter((b) => b != null);
  if (!bounds.every((b) => Number.isSafeInteger(b))) return null;
  const lows = [f.gte, f.gt == null ? null : f.gt + 1].filter((b): b is number => b != null);
  const highs = [f.lt, f.lte == null ? null : f.lte + 1].filter((b): b is number => b != null);
  return { from: lows.length > 0 ? Math.max(...lows) : null, to: highs.length > 0 ? Math.min(...highs) : null };
}

/**
 * The earliest time a record matching the filter can have, or null when the filter does not bound it from below:
 * from its top-level `timestamp` and those of its `AND` parts (an OR or NOT bounds nothing for certain).
 */
export function lowerBound(filter: MetricFilter | null | undefined): number | null {
  if (!filter) return null;
  const lows: number[] = [];
  const f = filter.timestamp;
  if (f?.equals != null) lows.push(f.equals);
  else if (f?.in != null && f.in.length > 0) lows.push(Math.min(...f.in));
  else if (f) {
    const range = rangeOf(f);
    if (range?.from != null) lows.push(range.from);
  }
  for (const part of filter.AND ?? []) {
    const low = lowerBound(part);
    if (low !== null) lows.push(low);
  }
  return lows.length > 0 ? Math.max(...lows) : null;
}

const between = (from: number | null, to: number | null): Prisma.Sql =>
  Prisma.join(
    [
      ...(from === null ? [] : [Prisma.sql`${TIMESTAMP} >= ${from}::int8`]),
      ...(to === null ? [] : [Prisma.sql`${TIMESTAMP} < ${to}::int8`]),
      Prisma.sql`TRUE`,
    ],
    ' AND ',
  );

/**
 * How rollups answer a question with this filter and grouping, or null when they cannot answer it exactly. The
 * filter must have been checked with filterToSql already (its errors are the same on both paths).
 */
export function planRollups(
  where: MetricFilter | null | undefined,
  groupBy: readonly string[],
  bucketUnit: string | null,
): RollupPlan | null {
  if (bucketUnit === 'MINUTE') return null;
  if (!groupBy.every((dimension) => ROLLUP_DIMENSIONS.has(dimension))) return null;
  const filter = where ?? {};
  const fields = fieldsOf(filter);
  if (
    ![...fields].every(
      (field) =>
        field === 'timestamp' || field === 'voiceSentiment' || field === 'microphoneUsed' || field === 'speakerUsed',
    )
  ) {
    return null;
  }
  const dimensionFree = groupBy.length === 0 && [...fields].every((field) => field === 'timestamp');
  const conditions = timestampFilters(filter);
  if (conditions.every(slotAligned)) {
    const range = conditions.length === 1 && filter.timestamp ? rangeOf(filter.timestamp) : null;
    return {
      rollupCondition: filterToSql(filter),
      edgeCondition: null,
      dimensionFree,
      from: range?.from ?? null,
      to: range?.to ?? null,
    };
  }

  // A range that cuts slots: only one at the top of the filter, so that the cut is the same for every row.
  if (conditions.length !== 1 || !filter.timestamp) return null;
  const range = rangeOf(filter.timestamp);
  if (!range) return null;
  const wholeFrom = range.from === null ? null : Math.ceil(range.from / SLOT_SECONDS) * SLOT_SECONDS;
  const wholeTo = range.to === null ? null : Math.floor(range.to / SLOT_SECONDS) * SLOT_SECONDS;
  if (wholeFrom !== null && wholeTo !== null && wholeFrom >= wholeTo) return null; // no whole slot: raw rows are few
  const rest = filterToSql({ ...filter, timestamp: null });
  const edges: Prisma.Sql[] = [];
  if (range.from !== null && wholeFrom !== null && range.from < wholeFrom) edges.push(between(range.from, wholeFrom));
  if (range.to !== null && wholeTo !== null && wholeTo < range.to) edges.push(between(wholeTo, range.to));
  return {
    rollupCondition: Prisma.sql`${rest} AND ${between(wholeFrom, wholeTo)}`,
    edgeCondition: edges.length > 0 ? Prisma.sql`${rest} AND (${Prisma.join(edges, ' OR ')})` : null,
    dimensionFree,
    from: wholeFrom,
    to: wholeTo,
    ...(edges.length === 0
      ? {}
      : { rawFrom: range.from !== null && wholeFrom !== null && range.from < wholeFrom ? range.from : wholeTo }),
  };
}

/** Once per zone and process: a failed lookup is forgotten, so the next question tries again. */
function perZone<T>(lookup: (zone: string) => Promise<T>): (zone: string) => Promise<T> {
  const byZone = new Map<string, Promise<T>>();
  return (zone) => {
    let found = byZone.get(zone);
    if (!found) {
      found = lookup(zone);
      found.catch(() => byZone.delete(zone));
      byZone.set(zone, found);
    }
    return found;
  };
}

/** Every day from 2000 to 2038 with the zone's ($1) UTC offset at its start and at its end. */
const ZONE_DAYS = `
    days AS (
      SELECT d, (d AT TIME ZONE $1) - (d AT TIME ZONE 'UTC') AS offset_now,
             ((d + interval '1 day') AT TIME ZONE $1) - ((d + interval '1 day') AT TIME ZONE 'UTC') AS offset_next
      FROM generate_series('2000-01-01T00:00:00Z'::timestamptz, '2038-01-01T00:00:00Z', interval '1 day') AS d
    )`;

const MISALIGNED_SLOTS_SQL = `
    WITH ${ZONE_DAYS}, suspect AS (
      SELECT d FROM days WHERE offset_now <> offset_next OR extract(epoch FROM offset_now)::int % ${SLOT_SECONDS} <> 0
    )
    SELECT DISTINCT extract(epoch FROM s)::int8 AS slot
    FROM suspect CROSS JOIN LATERAL generate_series(d, d + interval '1 day', interval '${SLOT_SECONDS} seconds') AS s
    WHERE (s AT TIME ZONE $1) - (s AT TIME ZONE 'UTC')
          <> ((s + interval '${SLOT_SECONDS - 1} seconds') AT TIME ZONE $1) - ((s + interval '${SLOT_SECONDS - 1}
            seconds') AT TIME ZONE 'UTC')
       OR extract(epoch FROM (s AT TIME ZONE $1) - (s AT TIME ZONE 'UTC'))::int % ${SLOT_SECONDS} <> 0
    ORDER BY slot`;

/**
 * The slots (their starts) between 2000 and 2038 during which the zone's UTC offset changes, or whose offset is not a
 * whole number of quarter hours: their records may fall in two buckets of that zone. Found by PostgreSQL's own zone
 * rules (the days whose offset changes, then their slots), once per zone and process (a few milliseconds).
 */
export const misalignedSlots = perZone((zone) =>
  database()
    .queryDirect<{ slot: number | string }>(MISALIGNED_SLOTS_SQL, [zone])
    .then((rows) => rows.map((row) => Number(row.slot))),
);

const HOUR_ALIGNED_SQL = `
    WITH ${ZONE_DAYS}
    SELECT NOT EXISTS (SELECT FROM days WHERE extract(epoch FROM offset_now)::int % 3600 <> 0)
       AND NOT EXISTS (
         SELECT FROM days CROSS JOIN LATERAL generate_series(d, d + interval '1 day', interval '1 hour') AS h
         WHERE offset_now <> offset_next
           AND (h AT TIME ZONE $1) - (h AT TIME ZONE 'UTC')
               <> ((h + interval '3599 seconds') AT TIME ZONE $1) - ((h + interval '3599 seconds') AT TIME ZONE 'UTC')
       ) AS aligned`;

/**
 * True when the zone's UTC offset is a whole number of hours from 2000 to 2038 and changes only on whole UTC hours:
 * then every hour lies inside one bucket of the zone, and the hourly sketches can stand for their four slots. Found by
 * PostgreSQL's own zone rules, once per zone and process.
 */
export const hourAligned = perZone((zone) =>
  database()
    .queryDirect<{ aligned: boolean }>(HOUR_ALIGNED_SQL, [zone])
    .then((rows) => rows[0]?.aligned === true),
);

/** True when a slot of `slots` lies in the plan's range: then rollups would bucket some record differently. */
export function rangeHoldsAny(plan: RollupPlan, slots: readonly number[]): boolean {
  return slots.some((slot) => (plan.from === null || slot >= plan.from) && (plan.to === null || slot < plan.to));
}

/** The slot a unix time falls in (its start). */
export const slotOf = (seconds: number) => Math.floor(seconds / SLOT_SECONDS) * SLOT_SECONDS;

/**
 * Builds the missing or stale sketches of the slots in [from, to) (null: unbounded) from their raw rows: one
 * statement (metric_rollup_sketches_refresh). Answers how many were built.
 */
export async function refreshSketches(from: number | null, to: number | null): Promise<number> {
  const [row] = await database().queryDirect<{ built: number | string }>(
    'SELECT metric_rollup_sketches_refresh($1::int8, $2::int8) AS built',
    [from === null ? null : slotOf(from), to === null ? null : Math.ceil(to / SLOT_SECONDS) * SLOT_SECONDS],
  );
  return Number(row?.built ?? 0);
}

let refreshing: Promise<unknown> | undefined;

/**
 * After a question answered with sketches: builds the stale ones of its range in the background, one refresh at a
 * time per process, so that the next question finds them. A failed refresh only leaves slots to their raw rows.
 */
export function refreshSketchesSoon(plan: RollupPlan): void {
  if (refreshing) return;
  refreshing = refreshSketches(plan.from, plan.to)
    .catch(() => undefined)
    .finally(() => {
      refreshing = undefined;
    });
}

/**
 * Recomputes the rollups of the slots in [from, to) from the raw rows (`from` rounded down and `to` up to slot
 * boundaries; null: unbounded), in one statement: inserts wait meanwhile, so none is counted twice or lost. Slots with
 * no raw rows left are kept as they are (rollups outlive raw rows). Answers how many slots were rebuilt.
 */
export async function rebuildRollups(from: number | null, to: number | null): Promise<number> {
  const fromSlot = from === null ? null : slotOf(from);
  const toSlot = to === null ? null : Math.ceil(to / SLOT_SECONDS) * SLOT_SECONDS;
  const [row] = await database().queryDirect<{ rebuilt: number | string }>(
    'SELECT metric_rollups_rebuild($1::int8, $2::int8) AS rebuilt',
    [fromSlot, toSlot],
  );
  return Number(row?.rebuilt ?? 0);
}

/**
 * Moves the rollup deltas committed so far into metric_rollups (metric_rollups_fold: one statement, so readers see
 * each delta once, before or after). With `wait` false, a fold another session is running makes this one answer -1 at
 * once instead of waiting for it. Answers how many delta rows were folded.
 */
export async function foldRollups(wait = true): Promise<number> {
  const [row] = await database().queryDirect<{ folded: number | string }>(
    'SELECT metric_rollups_fold($1) AS folded',
    [wait],
    'metric_rollups_fold',
  );
  return Number(row?.folded ?? 0);
}

const foldedDeltas = new Counter({
  name: 'rollup_deltas_folded_total',
  help: 'Rollup delta rows this process folded into metric_rollups',
  registers: [registry],
});
const failedFolds = new Counter({
  name: 'rollup_fold_failures_total',
  help: 'Folds of the rollup deltas that failed (the deltas wait for the next fold)',
  registers: [registry],
});

/** Folds between two vacuums of the deltas on the embedded database (a minute at the default interval). */
const VACUUM_EVERY_TICKS = 60;

export interface RollupFolding {
  /** Stops the schedule and waits for a fold in flight. */
  stop(): Promise<void>;
}

/**
 * Folds the deltas every `intervalMs` (0: never; readers are right either way, they only read more rows). A failed
 * fold (the database down) is logged once per run of failures and retried on the next tick: the deltas wait, durable.
 */
export function startRollupFolding(
  intervalMs: number,
  logger: { warn(obj: object, msg: string): void; info(msg: string): void },
): RollupFolding {
  if (intervalMs <= 0) return { stop: async () => {} };
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> | undefined;
  let failing = false;
  let stopped = false;
  let ticks = 0;
  const tick = () => {
    ticks++;
    running = foldRollups(false)
      .then(async (folded) => {
        if (folded > 0) foldedDeltas.inc(folded);
        // The embedded database runs no autovacuum: without one, every fold's deleted rows would stay in the table's
        // pages and each reader's scan of the deltas would grow. PostgreSQL's autovacuum does it there.
        if (ticks % VACUUM_EVERY_TICKS === 0 && database().kind === 'embedded') {
          await database().queryDirect('VACUUM metric_rollup_deltas', []);
        }
        if (failing) logger.info('Rollup deltas are folded again');
        failing = false;
      })
      .catch((error: unknown) => {
        failedFolds.inc();
        if (!failing) logger.warn({ err: error }, 'Folding the rollup deltas failed; retrying every tick');
        failing = true;
      })
      .finally(() => {
        running = undefined;
        if (!stopped) schedule();
      });
  };
  const schedule = () => {
    timer = setTimeout(tick, intervalMs);
    timer.unref();
  };
  schedule();
  return {
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}
