/**
 * Aggregates over the stored metrics: one SQL statement per question, computed by PostgreSQL (GROUP BY, `date_trunc`
 * in a time zone, `count(DISTINCT ...)`, `percentile_cont`), never rows summed in JavaScript. The filter is the same
 * translation the `metrics` query uses (`filterToSql`).
 */
import { database } from '../db.js';
import { Prisma } from '../generated/prisma/client.js';
import { InputError } from './errors.js';
import { type MetricFilter, filterToSql } from './metric-filter.js';
import { runSql } from './sql.js';

export type MetricDimension = 'USER_ID' | 'SESSION_ID' | 'VOICE_SENTIMENT' | 'MICROPHONE_USED' | 'SPEAKER_USED';
export type TimeBucketUnit = 'MINUTE' | 'HOUR' | 'DAY' | 'WEEK' | 'MONTH';

export interface TimeBucket {
  unit: TimeBucketUnit;
  /** A tz-database name; default `UTC`. */
  timeZone?: string | null;
}

export interface StatsArgs {
  where?: MetricFilter | null;
  groupBy?: readonly MetricDimension[] | null;
  bucket?: TimeBucket | null;
}

export interface SentimentCount {
  value: string | null;
  count: number;
}

export interface TalkedTimeStats {
  sum: number;
  avg: number;
  min: number;
  max: number;
  p50: number;
  p95: number;
}

/** The figures every group (and a user's summary) has; none is ever null, a group has at least one record. */
export interface MetricFigures {
  count: number;
  distinctUsers: number;
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

const UNITS: Record<TimeBucketUnit, string> = { MINUTE: 'minute', HOUR: 'hour', DAY: 'day', WEEK: 'week', MONTH: 'month' };

export interface StatsSqlOptions extends StatsArgs {
  /** The most groups wanted; the statement returns up to one more, so that a caller can tell there were too many. */
  maxGroups: number;
  /** Conditions ANDed with `where` (already SQL), e.g. the user of a summary. */
  extraConditions?: readonly Prisma.Sql[];
}

/** Rows of the statement built by `buildStatsSql`, as the drivers return them. */
export interface StatsRow {
  user_id?: string;
  session_id?: string;
  voice_sentiment?: string | null;
  microphone_used?: boolean;
  speaker_used?: boolean;
  bucket_start?: Date;
  count: number | bigint;
  distinct_users: number | bigint;
  distinct_sessions: number | bigint;
  talked_sum: number | bigint;
  talked_avg: number;
  talked_min: number;
  talked_max: number;
  talked_p50: number;
  talked_p95: number;
  microphone_rate: number;
  speaker_rate: number;
  first_timestamp: number | bigint;
  last_timestamp: number | bigint;
  sentiments: SentimentCount[] | string;
}

function checkGroupBy(groupBy: readonly MetricDimension[]): void {
  const seen = new Set<MetricDimension>();
  for (const dimension of groupBy) {
    if (seen.has(dimension)) throw new StatsArgumentError(`groupBy names ${dimension} more than once`, 'groupBy');
    seen.add(dimension);
  }
}

/**
 * The one statement behind `metricStats` and `userSummary`, exported so that the benchmark runs exactly this SQL
 * (`.text` and `.values` of the result). `bucket.timeZone` must already be a valid zone name
 * (`resolveTimeZone`); PostgreSQL would accept offsets and abbreviations too, which the API does not.
 *
 * Shape: `groups` aggregates the filtered rows per key and keeps the first maxGroups + 1 in the answer's order;
 * `sentiment_split` counts the same rows per key and sentiment (a second pass over the same index ranges: cheaper than
 * materialising every filtered row for both); the final join is on keys that cannot be null, because grouping by
 * VOICE_SENTIMENT (the one nullable key) makes the split trivial and skips that pass.
 */
export function buildStatsSql(options: StatsSqlOptions): Prisma.Sql {
  const groupBy = options.groupBy ?? [];
  checkGroupBy(groupBy);
  const where = Prisma.join([filterToSql(options.where), ...(options.extraConditions ?? [])], ' AND ');

  const keys: { alias: string; expression: Prisma.Sql; text: boolean }[] = [];
  if (options.bucket) {
    const zone = options.bucket.timeZone ?? DEFAULT_TIME_ZONE;
    // The three-argument date_trunc truncates in the zone's calendar and returns the instant the local bucket
    // starts; below a day it keeps each instant's own offset, so the repeated autumn hour stays two buckets.
    keys.push({
      alias: 'bucket_start',
      expression: Prisma.sql`date_trunc(${Prisma.raw(`'${UNITS[options.bucket.unit]}'`)}, to_timestamp("timestamp"), ${zone}::text)`,
      text: false,
    });
  }
  for (const dimension of groupBy) {
    const column = DIMENSION_COLUMNS[dimension];
    const text = TEXT_DIMENSIONS.has(dimension);
    // Text keys group and sort in byte order ("C"): the same on every server and the embedded database, whatever their
    // default collation, and faster than a locale's rules. The groups are the same (all these collations are deterministic).
    keys.push({ alias: column, expression: Prisma.raw(text ? `${column} COLLATE "C"` : column), text });
  }

  const keySelect = keys.map((k) => Prisma.sql`${k.expression} AS ${Prisma.raw(k.alias)}`);
  const keyAliases = keys.map((k) => Prisma.raw(k.alias));
  const orderBy = (prefix: string) => Prisma.join(keys.map((k) => Prisma.raw(`${prefix}${k.alias} ASC NULLS LAST`)));
  const groupClause = keys.length > 0 ? Prisma.sql`GROUP BY ${Prisma.join(keyAliases)}` : Prisma.sql`HAVING count(*) > 0`;
  const orderClause = keys.length > 0 ? Prisma.sql`ORDER BY ${orderBy('')}` : Prisma.empty;
  const finalOrder = keys.length > 0 ? Prisma.sql`ORDER BY ${orderBy('g.')}` : Prisma.empty;

  const groups = Prisma.sql`
    SELECT ${Prisma.join([
      ...keySelect,
      Prisma.sql`count(*) AS count,
        count(DISTINCT user_id COLLATE "C") AS distinct_users,
        count(DISTINCT session_id COLLATE "C") AS distinct_sessions,
        sum(talked_time) AS talked_sum,
        avg(talked_time)::float8 AS talked_avg,
        min(talked_time) AS talked_min,
        max(talked_time) AS talked_max,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY talked_time) AS talked_p50,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY talked_time) AS talked_p95,
        avg(microphone_used::int)::float8 AS microphone_rate,
        avg(speaker_used::int)::float8 AS speaker_rate,
        min("timestamp") AS first_timestamp,
        max("timestamp") AS last_timestamp`,
    ])}
    FROM user_metrics
    WHERE ${where}
    ${groupClause}
    ${orderClause}
    LIMIT ${options.maxGroups + 1}`;

  const sentimentEntry = (value: Prisma.Sql, count: Prisma.Sql) =>
    Prisma.sql`jsonb_build_object('value', ${value}, 'count', ${count})`;

  if (groupBy.includes('VOICE_SENTIMENT')) {
    return Prisma.sql`
      WITH groups AS (${groups})
      SELECT g.*, jsonb_build_array(${sentimentEntry(Prisma.raw('g.voice_sentiment'), Prisma.raw('g.count'))}) AS sentiments
      FROM groups g
      ${finalOrder}`;
  }

  const splitKeys = keys.length > 0 ? Prisma.sql`${Prisma.join(keySelect)},` : Prisma.empty;
  const splitGroup = keys.length > 0 ? Prisma.sql`${Prisma.join(keyAliases)},` : Prisma.empty;
  const splitOuterKeys = keys.length > 0 ? Prisma.sql`${Prisma.join(keyAliases)},` : Prisma.empty;
  const splitOuterGroup = keys.length > 0 ? Prisma.sql`GROUP BY ${Prisma.join(keyAliases)}` : Prisma.empty;
  const joinOn =
    keys.length > 0 ? Prisma.join(keys.map((k) => Prisma.raw(`s.${k.alias} = g.${k.alias}`)), ' AND ') : Prisma.sql`TRUE`;
  return Prisma.sql`
    WITH groups AS (${groups}),
    sentiment_split AS (
      SELECT ${splitOuterKeys}
        jsonb_agg(${sentimentEntry(Prisma.raw('value'), Prisma.raw('n'))} ORDER BY n DESC, value COLLATE "C" ASC NULLS LAST) AS sentiments
      FROM (
        SELECT ${splitKeys} voice_sentiment AS value, count(*) AS n
        FROM user_metrics
        WHERE ${where}
        GROUP BY ${splitGroup} voice_sentiment
      ) per_value
      ${splitOuterGroup}
    )
    SELECT g.*, s.sentiments
    FROM groups g JOIN sentiment_split s ON ${joinOn}
    ${finalOrder}`;
}

let zoneNames: Promise<Map<string, string>> | undefined;

/**
 * The tz-database names the database knows, by lower-cased name. Read once per process: pg_timezone_names reads
 * every zone file (~20-30 ms). Directory artifacts of the operating system's zone folder (`posix/...`, `right/...`,
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
      `${path} ${JSON.stringify(name)} is not a time zone of the tz database; use a name such as "Europe/Berlin", "America/New_York" or "UTC" (offsets and abbreviations are not accepted)`,
      path,
    );
  }
  return known;
}

const toNumber = (value: number | bigint): number => Number(value);

function figures(row: StatsRow): MetricFigures {
  const sentiments = typeof row.sentiments === 'string' ? (JSON.parse(row.sentiments) as SentimentCount[]) : row.sentiments;
  return {
    count: toNumber(row.count),
    distinctUsers: toNumber(row.distinct_users),
    distinctSessions: toNumber(row.distinct_sessions),
    talkedTime: {
      sum: toNumber(row.talked_sum),
      avg: row.talked_avg,
      min: row.talked_min,
      max: row.talked_max,
      p50: row.talked_p50,
      p95: row.talked_p95,
    },
    microphoneUsageRate: row.microphone_rate,
    speakerUsageRate: row.speaker_rate,
    sentiments: sentiments.map((s) => ({ value: s.value, count: Number(s.count) })),
    firstTimestamp: toNumber(row.first_timestamp),
    lastTimestamp: toNumber(row.last_timestamp),
  };
}

export interface StatsLimits {
  /** MAX_STAT_GROUPS. */
  maxGroups: number;
}

/** Groups of the records matching `where`, in the answer's order. Throws TooManyGroupsError past `maxGroups`. */
export async function metricStats(args: StatsArgs, limits: StatsLimits): Promise<MetricGroup[]> {
  const bucket = args.bucket ? { unit: args.bucket.unit, timeZone: await resolveTimeZone(args.bucket.timeZone) } : null;
  const sql = buildStatsSql({ ...args, bucket, maxGroups: limits.maxGroups });
  const rows = await runSql<StatsRow>(sql);
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
export async function userSummary(userId: string, where: MetricFilter | null | undefined): Promise<UserSummary | null> {
  // No stored id contains NUL or broken Unicode (ingestion refuses them), and PostgreSQL would reject them as a parameter.
  if (userId.includes('\0') || !userId.isWellFormed()) return null;
  const sql = buildStatsSql({ where, groupBy: ['USER_ID'], maxGroups: 1, extraConditions: [Prisma.sql`user_id = ${userId}`] });
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
