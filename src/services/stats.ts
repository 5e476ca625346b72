/**
 * Aggregates over the stored metrics: one SQL statement per question, computed by PostgreSQL (GROUP BY, `date_trunc`
 * in a time zone, `count(DISTINCT ...)`, `percentile_cont`), never rows summed in JavaScript. The filter is the same
 * translation the `metrics` query uses (`filterToSql`).
 *
 * A question is answered from the rollups (src/services/rollups.ts) when they give the same answer as the raw rows,
 * else from the raw rows; either way only the figures asked for are computed. Approximate figures (`*Approx`) come
 * from mergeable sketches, computed the same way from the per-slot sketches or from the raw rows, so they too are the
 * same whichever answers.
 */
import { database } from '../db/client.js';
import { Prisma } from '../generated/prisma/client.js';
import { checkStorableText, InputError } from './errors.js';
import { filterToSql, type MetricFilter } from './metric-filter.js';
import { rawRowsFrom } from './partitions.js';
import {
  hourAligned,
  lowerBound,
  misalignedSlots,
  planRollups,
  type RollupPlan,
  rangeHoldsAny,
  refreshSketchesSoon,
  SLOT_SECONDS,
} from './rollups.js';
import { runSql } from './sql.js';

export type MetricDimension = 'USER_ID' | 'SESSION_ID' | 'VOICE_SENTIMENT' | 'MICROPHONE_USED' | 'SPEAKER_USED';
export type TimeBucketUnit = 'MINUTE' | 'HOUR' | 'DAY' | 'WEEK' | 'MONTH';

export interface TimeBucket {
  unit: TimeBucketUnit;
  /** A tz-database name; default `UTC`. */
  timeZone?: string | null;
}

/** A figure a question can ask for; a statement computes only those asked for. */
export type StatsFigure =
  | 'count'
  | 'distinctUsers'
  | 'distinctUsersApprox'
  | 'distinctSessions'
  | 'talkedSum'
  | 'talkedAvg'
  | 'talkedMin'
  | 'talkedMax'
  | 'talkedP50'
  | 'talkedP95'
  | 'talkedP50Approx'
  | 'talkedP95Approx'
  | 'microphoneRate'
  | 'speakerRate'
  | 'sentiments'
  | 'timestamps';

/** Every exact figure: the default when a caller does not say. */
export const EXACT_FIGURES: ReadonlySet<StatsFigure> = new Set<StatsFigure>([
  'count',
  'distinctUsers',
  'distinctSessions',
  'talkedSum',
  'talkedAvg',
  'talkedMin',
  'talkedMax',
  'talkedP50',
  'talkedP95',
  'microphoneRate',
  'speakerRate',
  'sentiments',
  'timestamps',
]);

/** Figures the rollups hold exactly (the ones that add up), and those their per-slot sketches give. */
const ROLLUP_FIGURES = new Set<StatsFigure>([
  'count',
  'talkedSum',
  'talkedAvg',
  'talkedMin',
  'talkedMax',
  'microphoneRate',
  'speakerRate',
  'sentiments',
  'timestamps',
]);
const SKETCH_FIGURES = new Set<StatsFigure>(['distinctUsersApprox', 'talkedP50Approx', 'talkedP95Approx']);

export interface StatsArgs {
  where?: MetricFilter | null;
  groupBy?: readonly MetricDimension[] | null;
  bucket?: TimeBucket | null;
  /** The figures to compute. Default: EXACT_FIGURES. */
  figures?: ReadonlySet<StatsFigure> | null;
}

export interface SentimentCount {
  value: string | null;
  count: number;
}

/** Figures not asked for are NaN (and `sentiments` empty): a resolver never reads them. */
export interface TalkedTimeStats {
  sum: number;
  avg: number;
  min: number;
  max: number;
  p50: number;
  p95: number;
  /** From the log-bucketed histogram: within 1% of p50. */
  p50Approx: number;
  p95Approx: number;
}

/** The figures every group (and a user's summary) has; none is ever null, a group has at least one record. */
export interface MetricFigures {
  count: number;
  distinctUsers: number;
  /** From a 65,536-bit linear-counting bitmap (README: "Rollups"). */
  distinctUsersApprox: number;
  distinctSessions: number;
  talkedTime: TalkedTimeStats;
  microphoneUsageRate: number;
  speakerUsageRate: number;
  /** Every sentiment present (null included), by count descending, then value; the counts add up to `count`. */
  sentiments: SentimentCount[];
  /** Earliest and latest event time in the group, unix seconds. */
  firstTimestamp: number;
  lastTimestamp: number;
}

export interface MetricGroup extends MetricFigures {
  userId: string | null;
  sessionId: string | null;
  voiceSentiment: string | null;
  microphoneUsed: boolean | null;
  speakerUsed: boolean | null;
  bucketStart: Date | null;
}

export interface UserSummary extends MetricFigures {
  userId: string;
  firstSeen: Date;
  lastSeen: Date;
}

/** A client mistake in the aggregate's arguments: an unknown time zone, a repeated dimension. */
export class StatsArgumentError extends InputError {
  override readonly name = 'StatsArgumentError';
}

/** More groups than MAX_STAT_GROUPS allows. */
export class TooManyGroupsError extends InputError {
  override readonly name = 'TooManyGroupsError';
  override readonly code = 'TOO_MANY_GROUPS';
}

/**
 * A question whose answer needs raw rows from before those retention kept (metric_retention): answered from what is
 * left it would be wrong, so it is refused, with what would be answered.
 */
export class RawRowsDroppedError extends InputError {
  override readonly name = 'RawRowsDroppedError';
  override readonly code = 'RAW_ROWS_DROPPED';
}

/** Refuses a raw read from `from` (null: unbounded) that reaches before the raw rows kept. */
async function checkRawRowsKept(field: string, from: number | null | undefined): Promise<void> {
  if (from === undefined) return;
  const kept = await rawRowsFrom();
  if (kept === null || (from !== null && from >= kept)) return;
  const since = `${new Date(kept * 1000).toISOString()} (${kept})`;
  throw new RawRowsDroppedError(
    `${field} needs the records' rows ${from === null ? 'from the start' : `from ${from}`}, but retention ` +
      `(RETENTION_DAYS) dropped the rows before ${since}; their rollups are kept. Set where.timestamp.gte to ${kept} ` +
      'or later, or ask a question the rollups answer (README: "Rollups": figures that add up and the *Approx ones, ' +
      'filters and groups on timestamp, voiceSentiment, microphoneUsed and speakerUsed only, ' +
      'buckets of an hour or more)',
    'where.timestamp',
  );
}

export const DEFAULT_TIME_ZONE = 'UTC';

/** Output column (and key) of each dimension. The columns are NOT NULL except voice_sentiment. */
const DIMENSION_COLUMNS: Record<MetricDimension, string> = {
  USER_ID: 'user_id',
  SESSION_ID: 'session_id',
  VOICE_SENTIMENT: 'voice_sentiment',
  MICROPHONE_USED: 'microphone_used',
  SPEAKER_USED: 'speaker_used',
};
const TEXT_DIMENSIONS = new Set<MetricDimension>(['USER_ID', 'SESSION_ID', 'VOICE_SENTIMENT']);

const UNITS: Record<TimeBucketUnit, string> = {
  MINUTE: 'minute',
  HOUR: 'hour',
  DAY: 'day',
  WEEK: 'week',
  MONTH: 'month',
};

export interface StatsSqlOptions extends StatsArgs {
  /** The most groups wanted; the statement returns up to one more, so that a caller can tell there were too many. */
  maxGroups: number;
  /** Conditions ANDed with `where` (already SQL), e.g. the user of a summary. */
  extraConditions?: readonly Prisma.Sql[];
}

/** Rows of the statement built by `buildStatsSql`, as the drivers return them; figures not asked for are absent. */
export interface StatsRow {
  user_id?: string;
  session_id?: string;
  voice_sentiment?: string | null;
  microphone_used?: boolean;
  speaker_used?: boolean;
  bucket_start?: Date;
  count: number | bigint | string;
  distinct_users?: number | bigint;
  distinct_users_approx?: number | bigint | string;
  distinct_sessions?: number | bigint;
  talked_sum?: number | bigint | string;
  talked_avg?: number;
  talked_min?: number;
  talked_max?: number;
  talked_p50?: number;
  talked_p95?: number;
  talked_p50_approx?: number;
  talked_p95_approx?: number;
  microphone_rate?: number;
  speaker_rate?: number;
  first_timestamp?: number | bigint | string;
  last_timestamp?: number | bigint | string;
  sentiments?: SentimentCount[] | string;
}

function checkGroupBy(groupBy: readonly MetricDimension[]): void {
  const seen = new Set<MetricDimension>();
  for (const dimension of groupBy) {
    if (seen.has(dimension)) throw new StatsArgumentError(`groupBy names ${dimension} more than once`, 'groupBy');
    seen.add(dimension);
  }
}

interface Key {
  alias: string;
  expression: Prisma.Sql;
  /** Only voice_sentiment: its key is joined with IS NOT DISTINCT FROM. */
  nullable: boolean;
}

/**
 * The group keys, over a relation whose time column is `timeColumn` ("timestamp" of a row, or the slot_start of a
 * rollup: a slot lies inside one bucket, so bucketing its start buckets each of its rows).
 */
function groupKeys(options: StatsSqlOptions, timeColumn: string): Key[] {
  const keys: Key[] = [];
  if (options.bucket) {
    const zone = options.bucket.timeZone ?? DEFAULT_TIME_ZONE;
    // The three-argument date_trunc truncates in the zone's calendar and returns the instant the local bucket
    // starts; below a day it keeps each instant's own offset, so the repeated autumn hour stays two buckets.
    const unit = Prisma.raw(`'${UNITS[options.bucket.unit]}'`);
    const time = Prisma.raw(timeColumn);
    keys.push({
      alias: 'bucket_start',
      expression: Prisma.sql`date_trunc(${unit}, to_timestamp(${time}), ${zone}::text)`,
      nullable: false,
    });
  }
  for (const dimension of options.groupBy ?? []) {
    const column = DIMENSION_COLUMNS[dimension];
    // Text keys group and sort in byte order ("C"): the same on every server and the embedded database, whatever their
    // default collation, and faster than a locale's rules. The groups are the same (all these collations are
    // deterministic).
    const expression = Prisma.raw(TEXT_DIMENSIONS.has(dimension) ? `${column} COLLATE "C"` : column);
    keys.push({ alias: column, expression, nullable: dimension === 'VOICE_SENTIMENT' });
  }
  return keys;
}

/** SQL pieces every statement shape uses. */
function keySql(keys: readonly Key[]) {
  const select = keys.map((k) => Prisma.sql`${k.expression} AS ${Prisma.raw(k.alias)}`);
  const aliases = keys.map((k) => Prisma.raw(k.alias));
  const orderBy = (prefix: string) => Prisma.join(keys.map((k) => Prisma.raw(`${prefix}${k.alias} ASC NULLS LAST`)));
  const join = (left: string, right: string) =>
    keys.length > 0
      ? Prisma.join(
          keys.map((k) =>
            Prisma.raw(`${right}.${k.alias} ${k.nullable ? 'IS NOT DISTINCT FROM' : '='} ${left}.${k.alias}`),
          ),
          ' AND ',
        )
      : Prisma.sql`TRUE`;
  return {
    select,
    aliases,
    /** "k1, k2, " or nothing, to put before more columns. */
    selectPrefix: keys.length > 0 ? Prisma.sql`${Prisma.join(select)},` : Prisma.empty,
    aliasPrefix: keys.length > 0 ? Prisma.sql`${Prisma.join(aliases)},` : Prisma.empty,
    groupBy: keys.length > 0 ? Prisma.sql`GROUP BY ${Prisma.join(aliases)}` : Prisma.empty,
    partition: keys.length > 0 ? Prisma.sql`PARTITION BY ${Prisma.join(aliases)}` : Prisma.empty,
    order: keys.length > 0 ? Prisma.sql`ORDER BY ${orderBy('')}` : Prisma.empty,
    finalOrder: keys.length > 0 ? Prisma.sql`ORDER BY ${orderBy('g.')}` : Prisma.empty,
    join,
  };
}

const sentimentEntry = (value: Prisma.Sql, count: Prisma.Sql) =>
  Prisma.sql`jsonb_build_object('value', ${value}, 'count', ${count})`;

/**
 * Approximate percentiles from a histogram relation `hist(keys..., k, c)` (k a metric_talked_bucket, c its records),
 * as percentile_cont interpolates: between the values of the buckets holding ranks floor(q(n-1)) and ceil(q(n-1)).
 * Each bucket's value is within 0.99% of every value in it, so the interpolation is within 0.99% of percentile_cont's.
 * Defines `cum` and `pct(keys..., n, v50lo, v50hi, v95lo, v95hi)`; the final select interpolates (approxPercentile).
 */
function percentileCtes(k: ReturnType<typeof keySql>): Prisma.Sql {
  const rankBucket = (q: string, side: 'floor' | 'ceil') =>
    Prisma.raw(`metric_talked_value(min(k) FILTER (WHERE upto > ${side}(${q}::float8 * (n - 1))))`);
  return Prisma.sql`cum AS (
      SELECT ${k.aliasPrefix} k, sum(c) OVER (${k.partition} ORDER BY k) AS upto, sum(c) OVER (${k.partition}) AS n
      FROM hist
    ),
    pct AS (
      SELECT ${k.aliasPrefix} max(n)::float8 AS n,
        ${rankBucket('0.5', 'floor')} AS v50lo, ${rankBucket('0.5', 'ceil')} AS v50hi,
        ${rankBucket('0.95', 'floor')} AS v95lo, ${rankBucket('0.95', 'ceil')} AS v95hi
      FROM cum ${k.groupBy}
    )`;
}

/** Histogram buckets per coarse bucket (metric_histogram_coarse). */
const COARSE = 16;

/**
 * percentileCtes' `pct`, from the sketches' histograms without unnesting them whole: the ranks' coarse buckets from
 * the coarse histograms, then only those 16 elements of each slot's histogram. The same buckets, so the same figures.
 */
function sketchPercentileCtes(k: ReturnType<typeof keySql>, keys: readonly Key[]): Prisma.Sql {
  const qualified = (table: string) =>
    keys.length > 0 ? Prisma.raw(`${keys.map((key) => `${table}.${key.alias}`).join(', ')},`) : Prisma.empty;
  const coarse = Prisma.raw(String(COARSE));
  const rank = (q: string, side: 'floor' | 'ceil') => Prisma.raw(`${side}(${q}::float8 * (t.total - 1))`);
  const value = (q: string, side: string) =>
    Prisma.raw(`metric_talked_value(max(k) FILTER (WHERE q = '${q}' AND side = '${side}')) AS v${q}${side}`);
  return Prisma.sql`keyed_sketches AS (
      SELECT ${k.selectPrefix} talked_histogram, talked_coarse FROM sketch_parts
    ),
    coarse AS (
      SELECT ${k.aliasPrefix} h.i::int - 1 AS cb, sum(h.n)::int8 AS n
      FROM keyed_sketches CROSS JOIN LATERAL unnest(talked_coarse) WITH ORDINALITY AS h(n, i)
      WHERE h.n > 0
      GROUP BY ${k.aliasPrefix} h.i
    ),
    ccum AS (
      SELECT ${k.aliasPrefix} cb, n, sum(n) OVER (${k.partition} ORDER BY cb) AS upto,
        sum(n) OVER (${k.partition}) AS total
      FROM coarse
    ),
    ranks AS (
      SELECT ${qualified('t')} t.total, r.q, r.side, r.rank
      FROM (SELECT DISTINCT ${k.aliasPrefix} total FROM ccum) AS t
      CROSS JOIN LATERAL (
        VALUES ('50', 'lo', ${rank('0.5', 'floor')}), ('50', 'hi', ${rank('0.5', 'ceil')}),
               ('95', 'lo', ${rank('0.95', 'floor')}), ('95', 'hi', ${rank('0.95', 'ceil')})
      ) AS r(q, side, rank)
    ),
    located AS (
      SELECT ranks.*, loc.cb, loc.before
      FROM ranks CROSS JOIN LATERAL (
        SELECT c.cb, c.upto - c.n AS before FROM ccum c
        WHERE ${k.join('ranks', 'c')} AND c.upto > ranks.rank
        ORDER BY c.cb LIMIT 1
      ) AS loc
    ),
    needed AS (
      SELECT DISTINCT ${k.aliasPrefix} cb FROM located
    ),
    fine AS (
      SELECT ${qualified('ks')} needed.cb, needed.cb * ${coarse} + h.i::int AS k, sum(h.n)::int8 AS n
      FROM keyed_sketches ks JOIN needed ON ${k.join('ks', 'needed')}
      CROSS JOIN LATERAL unnest(ks.talked_histogram[needed.cb * ${coarse} + 1 : (needed.cb + 1) * ${coarse}])
        WITH ORDINALITY AS h(n, i)
      WHERE h.n > 0
      GROUP BY ${qualified('ks')} needed.cb, h.i
    ),
    fcum AS (
      SELECT ${k.aliasPrefix} cb, k, sum(n) OVER (PARTITION BY ${k.aliasPrefix} cb ORDER BY k) AS upto FROM fine
    ),
    picked AS (
      SELECT ${qualified('l')} l.total, l.q, l.side, (
        SELECT f.k FROM fcum f
        WHERE ${k.join('l', 'f')} AND f.cb = l.cb AND f.upto > l.rank - l.before
        ORDER BY f.k LIMIT 1
      ) AS k
      FROM located l
    ),
    pct AS (
      SELECT ${k.aliasPrefix} max(total)::float8 AS n,
        ${value('50', 'lo')}, ${value('50', 'hi')}, ${value('95', 'lo')}, ${value('95', 'hi')}
      FROM picked ${k.groupBy}
    )`;
}

/** The interpolated percentile of `pct p`, kept within the group's exact min and max (which only brings it closer). */
function approxPercentile(q: string, name: string): Prisma.Sql {
  const rank = `${q}::float8 * (p.n - 1)`;
  const interpolated = `p.v${name}lo + (${rank} - floor(${rank})) * (p.v${name}hi - p.v${name}lo)`;
  return Prisma.raw(`least(greatest(${interpolated}, g.talked_min), g.talked_max) AS talked_p${name}_approx`);
}

/**
 * What to compute, with what an asked figure needs besides (the approximate percentiles are clamped to min and max).
 */
function wantedFigures(figures: ReadonlySet<StatsFigure> | null | undefined): ReadonlySet<StatsFigure> {
  const wanted = new Set(figures ?? EXACT_FIGURES);
  if (wanted.has('talkedP50Approx') || wanted.has('talkedP95Approx')) {
    wanted.add('talkedMin');
    wanted.add('talkedMax');
  }
  return wanted;
}

/**
 * The statement behind `metricStats` and `userSummary` over the raw rows, exported so that the benchmark runs exactly
 * this SQL (`.text` and `.values` of the result). `bucket.timeZone` must already be a valid zone name
 * (`resolveTimeZone`); PostgreSQL would accept offsets and abbreviations too, which the API does not.
 *
 * Shape: `groups` aggregates the filtered rows per key and keeps the first maxGroups + 1 in the answer's order;
 * `sentiment_split` counts the same rows per key and sentiment (a second pass over the same index ranges: cheaper than
 * materialising every filtered row for both), only when sentiments are asked for; grouping by VOICE_SENTIMENT (the
 * one nullable key) makes the split trivial and skips that pass. `hist` (approximate percentiles only) is a pass per
 * key and talked_time bucket.
 */
export function buildStatsSql(options: StatsSqlOptions): Prisma.Sql {
  const groupBy = options.groupBy ?? [];
  checkGroupBy(groupBy);
  const where = Prisma.join([filterToSql(options.where), ...(options.extraConditions ?? [])], ' AND ');
  const wanted = wantedFigures(options.figures);
  const keys = groupKeys(options, '"timestamp"');
  const k = keySql(keys);

  const aggregates: Prisma.Sql[] = [Prisma.sql`count(*) AS count`];
  const add = (figure: StatsFigure, sql: string) => {
    if (wanted.has(figure)) aggregates.push(Prisma.raw(sql));
  };
  add('distinctUsers', 'count(DISTINCT user_id COLLATE "C") AS distinct_users');
  add(
    'distinctUsersApprox',
    'metric_distinct_estimate(metric_user_bits(array_agg(metric_user_position(user_id)))) AS distinct_users_approx',
  );
  add('distinctSessions', 'count(DISTINCT session_id COLLATE "C") AS distinct_sessions');
  add('talkedSum', 'sum(talked_time) AS talked_sum');
  add('talkedAvg', 'avg(talked_time)::float8 AS talked_avg');
  add('talkedMin', 'min(talked_time) AS talked_min');
  add('talkedMax', 'max(talked_time) AS talked_max');
  add('talkedP50', 'percentile_cont(0.5) WITHIN GROUP (ORDER BY talked_time) AS talked_p50');
  add('talkedP95', 'percentile_cont(0.95) WITHIN GROUP (ORDER BY talked_time) AS talked_p95');
  add('microphoneRate', 'avg(microphone_used::int)::float8 AS microphone_rate');
  add('speakerRate', 'avg(speaker_used::int)::float8 AS speaker_rate');
  add('timestamps', 'min("timestamp") AS first_timestamp, max("timestamp") AS last_timestamp');

  const ctes: Prisma.Sql[] = [
    Prisma.sql`groups AS (
    SELECT ${Prisma.join([...k.select, ...aggregates])}
    FROM user_metrics
    WHERE ${where}
    ${keys.length > 0 ? k.groupBy : Prisma.sql`HAVING count(*) > 0`}
    ${k.order}
    LIMIT ${options.maxGroups + 1})`,
  ];
  const columns: Prisma.Sql[] = [Prisma.sql`g.*`];
  const joins: Prisma.Sql[] = [];

  if (wanted.has('sentiments')) {
    if (groupBy.includes('VOICE_SENTIMENT')) {
      const entry = sentimentEntry(Prisma.raw('g.voice_sentiment'), Prisma.raw('g.count'));
      columns.push(Prisma.sql`jsonb_build_array(${entry}) AS sentiments`);
    } else {
      ctes.push(Prisma.sql`sentiment_split AS (
      SELECT ${k.aliasPrefix}
        jsonb_agg(${sentimentEntry(Prisma.raw('value'), Prisma.raw('n'))}
          ORDER BY n DESC, value COLLATE "C" ASC NULLS LAST) AS sentiments
      FROM (
        SELECT ${k.selectPrefix} voice_sentiment AS value, count(*) AS n
        FROM user_metrics
        WHERE ${where}
        GROUP BY ${k.aliasPrefix} voice_sentiment
      ) per_value
      ${k.groupBy}
    )`);
      columns.push(Prisma.sql`s.sentiments`);
      joins.push(Prisma.sql`JOIN sentiment_split s ON ${k.join('g', 's')}`);
    }
  }
  if (wanted.has('talkedP50Approx') || wanted.has('talkedP95Approx')) {
    ctes.push(Prisma.sql`hist AS (
      SELECT ${k.selectPrefix} metric_talked_bucket(talked_time) AS k, count(*) AS c
      FROM user_metrics
      WHERE ${where}
      GROUP BY ${k.aliasPrefix} k
    ),
    ${percentileCtes(k)}`);
    columns.push(approxPercentile('0.5', '50'), approxPercentile('0.95', '95'));
    joins.push(Prisma.sql`JOIN pct p ON ${k.join('g', 'p')}`);
  }
  return assembled(ctes, columns, joins, k);
}

/** The statement from its parts: the CTEs, the figures selected from `groups g` and the joins that bring them. */
function assembled(
  ctes: Prisma.Sql[],
  columns: Prisma.Sql[],
  joins: Prisma.Sql[],
  k: { finalOrder: Prisma.Sql },
): Prisma.Sql {
  return Prisma.sql`
    WITH ${Prisma.join(ctes, ',\n    ')}
    SELECT ${Prisma.join(columns)}
    FROM groups g ${joins.length > 0 ? Prisma.join(joins, ' ') : Prisma.empty}
    ${k.finalOrder}`;
}

/**
 * The rollup rows: metric_rollups and the deltas not folded into it yet (prisma/migrations/*_rollup_deltas), which
 * readers add up alike. A fold moves rows from one to the other in one transaction, so a reader counts each once.
 */
const ROLLUP_ROWS = Prisma.raw(`(
          SELECT slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count, talked_sum,
                 talked_min, talked_max, first_timestamp, last_timestamp FROM metric_rollups
          UNION ALL
          SELECT slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count, talked_sum,
                 talked_min, talked_max, first_timestamp, last_timestamp FROM metric_rollup_deltas
        ) AS rollup_rows`);

/** True when the rollups can answer these figures for this plan (the sketches keep no dimension). */
function rollupsHold(wanted: ReadonlySet<StatsFigure>, plan: RollupPlan): boolean {
  for (const figure of wanted) {
    if (ROLLUP_FIGURES.has(figure)) continue;
    if (SKETCH_FIGURES.has(figure) && plan.dimensionFree) continue;
    return false;
  }
  return true;
}

/**
 * The same answer as buildStatsSql, from the rollups: `parts` are the rollup rows of the whole slots the filter
 * allows plus, when the range cuts slots at its edges, the raw rows there (each a part of one record). `keyed` adds
 * them up per key and sentiment (sentiments, and the usage counts, come from there), `groups` per key. Sums are added
 * as numeric and divided as avg() divides (numeric), so averages and rates are the raw statement's to the last bit.
 */
export function buildRollupStatsSql(options: StatsSqlOptions, plan: RollupPlan, hourlySketches = false): Prisma.Sql {
  checkGroupBy(options.groupBy ?? []);
  const wanted = wantedFigures(options.figures);
  const keys = groupKeys(options, 'slot_start');
  const k = keySql(keys);
  const slotOfRow = Prisma.raw(`"timestamp" - "timestamp" % ${SLOT_SECONDS}`);
  const edgeParts = plan.edgeCondition
    ? Prisma.sql`UNION ALL
      SELECT ${slotOfRow}, voice_sentiment, microphone_used, speaker_used,
        1::int8, talked_time::int8, talked_time, talked_time, "timestamp", "timestamp"
      FROM user_metrics WHERE ${plan.edgeCondition}`
    : Prisma.empty;

  const aggregates: Prisma.Sql[] = [Prisma.sql`sum(n)::int8 AS count`];
  const add = (figure: StatsFigure, sql: string) => {
    if (wanted.has(figure)) aggregates.push(Prisma.raw(sql));
  };
  add('talkedSum', 'sum(talked_sum)::int8 AS talked_sum');
  add('talkedAvg', '(sum(talked_sum) / sum(n))::float8 AS talked_avg');
  add('talkedMin', 'min(talked_min) AS talked_min');
  add('talkedMax', 'max(talked_max) AS talked_max');
  add('microphoneRate', '(sum(microphone_n) / sum(n))::float8 AS microphone_rate');
  add('speakerRate', '(sum(speaker_n) / sum(n))::float8 AS speaker_rate');
  add('timestamps', 'min(first_timestamp) AS first_timestamp, max(last_timestamp) AS last_timestamp');
  const sentimentValue = sentimentEntry(Prisma.raw('sentiment_value'), Prisma.raw('n::int8')).text;
  add(
    'sentiments',
    `jsonb_agg(${sentimentValue} ORDER BY n DESC, sentiment_value COLLATE "C" ASC NULLS LAST) AS sentiments`,
  );

  const ctes: Prisma.Sql[] = [
    Prisma.sql`parts AS (
      SELECT slot_start, voice_sentiment, microphone_used, speaker_used, count,
             talked_sum, talked_min, talked_max, first_timestamp, last_timestamp
      FROM (
        SELECT slot_start, slot_start AS "timestamp",
               CASE WHEN has_sentiment THEN voice_sentiment END AS voice_sentiment,
               microphone_used, speaker_used, count, talked_sum, talked_min, talked_max, first_timestamp, last_timestamp
        FROM ${ROLLUP_ROWS}
      ) AS r
      WHERE ${plan.rollupCondition}
      ${edgeParts}
    )`,
    Prisma.sql`keyed AS (
      SELECT ${k.selectPrefix} voice_sentiment AS sentiment_value, sum(count) AS n, sum(talked_sum) AS talked_sum,
             min(talked_min) AS talked_min, max(talked_max) AS talked_max,
             coalesce(sum(count) FILTER (WHERE microphone_used), 0) AS microphone_n,
             coalesce(sum(count) FILTER (WHERE speaker_used), 0) AS speaker_n,
             min(first_timestamp) AS first_timestamp, max(last_timestamp) AS last_timestamp
      FROM parts
      GROUP BY ${k.aliasPrefix} sentiment_value
    )`,
    Prisma.sql`groups AS (
      SELECT ${Prisma.join([...k.aliases, ...aggregates])}
      FROM keyed
      ${keys.length > 0 ? k.groupBy : Prisma.sql`HAVING sum(n) > 0`}
      ${k.order}
      LIMIT ${options.maxGroups + 1}
    )`,
  ];
  const columns: Prisma.Sql[] = [Prisma.sql`g.*`];
  const joins: Prisma.Sql[] = [];
  const approxUsers = wanted.has('distinctUsersApprox');
  const approxPercentiles = wanted.has('talkedP50Approx') || wanted.has('talkedP95Approx');
  if (approxUsers || approxPercentiles) {
    const edgeSketches = plan.edgeCondition
      ? Prisma.sql`UNION ALL
        SELECT slot_start, metric_user_bits(array_agg(metric_user_position(user_id))),
               metric_talked_histogram(array_agg(metric_talked_bucket(talked_time)))
        FROM (
          SELECT ${slotOfRow} AS slot_start, user_id, talked_time FROM user_metrics WHERE ${plan.edgeCondition}
        ) AS e
        GROUP BY slot_start`
      : Prisma.empty;
    // A slot's sketch answers while it covers the slot's records (its count is the rollup's), else the slot's rows do.
    ctes.push(Prisma.sql`slot_counts AS (
      SELECT slot_start, sum(count) AS n
      FROM (SELECT slot_start, slot_start AS "timestamp", count FROM ${ROLLUP_ROWS}) AS r
      WHERE ${plan.rollupCondition}
      GROUP BY slot_start
    ),
    ${
      hourlySketches
        ? Prisma.sql`whole_hours AS (
      SELECT x.hour_start, x.user_bits, x.talked_histogram, x.talked_coarse
      FROM (SELECT slot_start - slot_start % 3600 AS hour_start, sum(n) AS n FROM slot_counts GROUP BY 1) AS hc
      JOIN metric_rollup_sketches_hourly x ON x.hour_start = hc.hour_start AND x.count = hc.n
    ),
    quarter_counts AS (
      SELECT c.slot_start, c.n FROM slot_counts c
      WHERE NOT EXISTS (SELECT FROM whole_hours w WHERE w.hour_start = c.slot_start - c.slot_start % 3600)
    ),`
        : Prisma.sql`quarter_counts AS (SELECT slot_start, n FROM slot_counts),`
    }
    sketch_parts AS (
      ${
        hourlySketches
          ? Prisma.sql`SELECT hour_start AS slot_start, user_bits, talked_histogram, talked_coarse FROM whole_hours
      UNION ALL`
          : Prisma.empty
      }
      SELECT c.slot_start, s.user_bits, s.talked_histogram, s.talked_coarse
      FROM quarter_counts c JOIN metric_rollup_sketches s ON s.slot_start = c.slot_start AND s.count = c.n
      UNION ALL
      SELECT slot_start, user_bits, talked_histogram, metric_histogram_coarse(talked_histogram)
      FROM (
        SELECT stale.slot_start, metric_user_bits(array_agg(metric_user_position(m.user_id))) AS user_bits,
               metric_talked_histogram(array_agg(metric_talked_bucket(m.talked_time))) AS talked_histogram
        -- As an array: the planner then expects a few stale slots (as there are), not every slot's rows (which made
        -- PostgreSQL JIT-compile the statement for seconds).
        FROM unnest((
          SELECT coalesce(array_agg(c.slot_start), '{}')
          FROM quarter_counts c LEFT JOIN metric_rollup_sketches s ON s.slot_start = c.slot_start
          WHERE s.count IS DISTINCT FROM c.n
        )) AS stale(slot_start)
        JOIN user_metrics m
          ON m."timestamp" >= stale.slot_start
          AND m."timestamp" < stale.slot_start + ${Prisma.raw(String(SLOT_SECONDS))}
        GROUP BY stale.slot_start
        ${edgeSketches}
      ) AS built
    )`);
  }
  if (approxUsers) {
    ctes.push(Prisma.sql`users_approx AS (
      SELECT ${k.selectPrefix} metric_distinct_estimate(bit_or(user_bits)) AS distinct_users_approx
      FROM sketch_parts ${k.groupBy}
    )`);
    columns.push(Prisma.sql`u.distinct_users_approx`);
    joins.push(Prisma.sql`JOIN users_approx u ON ${k.join('g', 'u')}`);
  }
  if (approxPercentiles) {
    ctes.push(sketchPercentileCtes(k, keys));
    columns.push(approxPercentile('0.5', '50'), approxPercentile('0.95', '95'));
    joins.push(Prisma.sql`JOIN pct p ON ${k.join('g', 'p')}`);
  }
  return assembled(ctes, columns, joins, k);
}

/** Where a question is answered from: `auto` (rollups when they give the same answer), or always the raw rows. */
export type StatsSource = 'auto' | 'raw';

/**
 * The statement for a question (its zone resolved) and whether it reads rollups. `misaligned`: the slots of the
 * bucket's zone that straddle two of its buckets (misalignedSlots). Throws the filter's and the arguments' errors
 * first, the same whichever answers.
 */
export function planStatsSql(
  options: StatsSqlOptions,
  source: StatsSource = 'auto',
  misaligned: readonly number[] = [],
  hourAlignedZone = false,
): { sql: Prisma.Sql; rollups: boolean; sketches: RollupPlan | null; rawFrom: number | null | undefined } {
  const raw = buildStatsSql(options);
  const rawFrom = lowerBound(options.where);
  if (source === 'raw' || (options.extraConditions?.length ?? 0) > 0)
    return { sql: raw, rollups: false, sketches: null, rawFrom };
  const plan = planRollups(options.where, options.groupBy ?? [], options.bucket?.unit ?? null);
  const wanted = wantedFigures(options.figures);
  if (!plan || !rollupsHold(wanted, plan) || rangeHoldsAny(plan, misaligned))
    return { sql: raw, rollups: false, sketches: null, rawFrom };
  const sketches = [...wanted].some((figure) => SKETCH_FIGURES.has(figure)) ? plan : null;
  // Hourly sketches stand for their four slots when every hour lies in one bucket: no bucket, or a whole-hour zone.
  const hourly = sketches !== null && (!options.bucket || hourAlignedZone);
  return { sql: buildRollupStatsSql(options, plan, hourly), rollups: true, sketches, rawFrom: plan.rawFrom };
}

let zoneNames: Promise<Map<string, string>> | undefined;

/**
 * The tz-database names the database knows, by lower-cased name. Read once per process: pg_timezone_names reads
 * every zone file. Directory artifacts of the operating system's zone folder (`posix/...`, `right/...`,
 * `localtime`, `posixrules`) are left out, so that a PostgreSQL server and the embedded database accept the same names.
 */
function knownZones(): Promise<Map<string, string>> {
  zoneNames ??= database()
    .queryDirect<{ name: string }>(
      `SELECT name FROM pg_timezone_names
      WHERE name !~ '^(posix|right)/' AND name NOT IN ('localtime', 'posixrules')`,
      [],
    )
    .then((rows) => new Map(rows.map((row) => [row.name.toLowerCase(), row.name])))
    .catch((error: unknown) => {
      zoneNames = undefined;
      throw error;
    });
  return zoneNames;
}

/** The zone's canonical spelling, or a StatsArgumentError for anything that is not a tz-database name. */
export async function resolveTimeZone(timeZone: string | null | undefined, path = 'bucket.timeZone'): Promise<string> {
  const name = timeZone ?? DEFAULT_TIME_ZONE;
  const known = (await knownZones()).get(name.toLowerCase());
  if (!known) {
    throw new StatsArgumentError(
      `${path} ${JSON.stringify(name)} is not a time zone of the tz database; ` +
        'use a name such as "Europe/Berlin", "America/New_York" or "UTC" (offsets and abbreviations are not accepted)',
      path,
    );
  }
  return known;
}

const toNumber = (value: number | bigint | string | undefined): number =>
  value === undefined ? Number.NaN : Number(value);

function figures(row: StatsRow): MetricFigures {
  const sentiments =
    typeof row.sentiments === 'string' ? (JSON.parse(row.sentiments) as SentimentCount[]) : (row.sentiments ?? []);
  return {
    count: toNumber(row.count),
    distinctUsers: toNumber(row.distinct_users),
    distinctUsersApprox: toNumber(row.distinct_users_approx),
    distinctSessions: toNumber(row.distinct_sessions),
    talkedTime: {
      sum: toNumber(row.talked_sum),
      avg: row.talked_avg ?? Number.NaN,
      min: row.talked_min ?? Number.NaN,
      max: row.talked_max ?? Number.NaN,
      p50: row.talked_p50 ?? Number.NaN,
      p95: row.talked_p95 ?? Number.NaN,
      p50Approx: row.talked_p50_approx ?? Number.NaN,
      p95Approx: row.talked_p95_approx ?? Number.NaN,
    },
    microphoneUsageRate: row.microphone_rate ?? Number.NaN,
    speakerUsageRate: row.speaker_rate ?? Number.NaN,
    sentiments: sentiments.map((s) => ({ value: s.value, count: Number(s.count) })),
    firstTimestamp: toNumber(row.first_timestamp),
    lastTimestamp: toNumber(row.last_timestamp),
  };
}

export interface StatsLimits {
  /** MAX_STAT_GROUPS. */
  maxGroups: number;
}

/**
 * A statement over the sketches, with PostgreSQL's JIT off: its many small CTEs over a few thousand rows are estimated
 * dear enough to be compiled, and compiling them takes longer than running them.
 */
async function withoutJit<Row>(sql: Prisma.Sql): Promise<Row[]> {
  const db = database();
  if (db.kind !== 'postgres') return runSql<Row>(sql);
  return db.withSession(async (session) => {
    await session.exec('BEGIN; SET LOCAL jit = off');
    try {
      const rows = await session.query<Row>(sql.text, sql.values);
      await session.exec('COMMIT');
      return rows;
    } catch (error) {
      await session.exec('ROLLBACK').catch(() => {});
      throw error;
    }
  });
}

/**
 * Groups of the records matching `where`, in the answer's order. Throws TooManyGroupsError past `maxGroups`.
 * `source: 'raw'` never reads rollups (the tests compare both).
 */
export async function metricStats(
  args: StatsArgs,
  limits: StatsLimits,
  source: StatsSource = 'auto',
): Promise<MetricGroup[]> {
  const bucket = args.bucket ? { unit: args.bucket.unit, timeZone: await resolveTimeZone(args.bucket.timeZone) } : null;
  const misaligned = bucket && source === 'auto' ? await misalignedSlots(bucket.timeZone) : [];
  const aligned = bucket && source === 'auto' ? await hourAligned(bucket.timeZone) : false;
  const plan = planStatsSql({ ...args, bucket, maxGroups: limits.maxGroups }, source, misaligned, aligned);
  const { sql, sketches } = plan;
  await checkRawRowsKept('metricStats', plan.rawFrom);
  const rows = sketches ? await withoutJit<StatsRow>(sql) : await runSql<StatsRow>(sql);
  if (sketches) refreshSketchesSoon(sketches);
  if (rows.length > limits.maxGroups) {
    throw new TooManyGroupsError(
      `metricStats would return more than ${limits.maxGroups} groups, the limit set by MAX_STAT_GROUPS. ` +
        'Narrow `where`, use a coarser bucket unit, or group by fewer dimensions.',
      'groupBy',
    );
  }
  return rows.map((row) => ({
    ...figures(row),
    userId: row.user_id ?? null,
    sessionId: row.session_id ?? null,
    voiceSentiment: row.voice_sentiment ?? null,
    microphoneUsed: row.microphone_used ?? null,
    speakerUsed: row.speaker_used ?? null,
    bucketStart: row.bucket_start ?? null,
  }));
}

/** The figures of one user's records matching `where`; null when there are none. */
export async function userSummary(
  userId: string,
  where: MetricFilter | null | undefined,
  wanted: ReadonlySet<StatsFigure> = EXACT_FIGURES,
): Promise<UserSummary | null> {
  // PostgreSQL would reject NUL or broken Unicode as a parameter (and ingestion never stores them).
  checkStorableText(userId, 'userId');
  const sql = buildStatsSql({
    where,
    groupBy: ['USER_ID'],
    maxGroups: 1,
    extraConditions: [Prisma.sql`user_id = ${userId}`],
    figures: new Set([...wanted, 'timestamps']),
  });
  await checkRawRowsKept('userSummary', lowerBound(where));
  const [row] = await runSql<StatsRow>(sql);
  if (!row) return null;
  const result = figures(row);
  return {
    ...result,
    userId,
    firstSeen: new Date(result.firstTimestamp * 1000),
    lastSeen: new Date(result.lastTimestamp * 1000),
  };
}
