/**
 * The read benchmarks: each the same question asked through GraphQL over HTTP and as SQL run directly with `pg`.
 * The SQL is the statement the service runs for that GraphQL request, so the ratio is the service's own overhead.
 */
import type { BenchSql } from './databases.js';
import { userName } from './data.js';
import type { HttpClient } from './service.js';

export interface QueryCase {
  key: string;
  label: string;
  /** The most GraphQL p50 may be, as a multiple of the raw SQL p50. */
  targetRatio: number;
  sqlText: string;
  params(rand: () => number): QueryParams;
  raw(params: QueryParams): Promise<unknown[]>;
  graphql?: (params: QueryParams) => Promise<unknown[]>;
  /** Throws unless both paths answered the same. */
  check(raw: unknown[], api: unknown[]): void;
}

interface QueryParams {
  userId: string;
  from: number;
  to: number;
}

interface Context {
  sql: BenchSql;
  client: HttpClient;
  users: number;
  days: number;
  endSeconds: number;
}

interface GraphQLBody<T> {
  data?: T | null;
  errors?: Array<{ message: string }>;
}

async function gql<T>(client: HttpClient, query: string, variables: Record<string, unknown>): Promise<T> {
  const body = (await client.post(JSON.stringify({ query, variables }))) as GraphQLBody<T>;
  if (!body.data || body.errors) throw new Error(`GraphQL error: ${JSON.stringify(body).slice(0, 1000)}`);
  return body.data;
}

/** Does the schema have this Query field? (The aggregates arrive with the analytics work.) */
async function hasQueryField(client: HttpClient, name: string): Promise<boolean> {
  try {
    const data = await gql<{ __type: { fields: Array<{ name: string }> } | null }>(
      client,
      '{ __type(name: "Query") { fields { name } } }',
      {},
    );
    return data.__type?.fields.some((f) => f.name === name) ?? false;
  } catch {
    return false;
  }
}

function sameJson(what: string, raw: unknown, api: unknown): void {
  const a = JSON.stringify(raw);
  const b = JSON.stringify(api);
  if (a !== b) throw new Error(`${what}: GraphQL and raw SQL disagree\n raw: ${a.slice(0, 600)}\n api: ${b.slice(0, 600)}`);
}

// The filtered, ordered page ---------------------------------------------------------------------------------------------

/** What findMetricPage (src/services/metric-query.ts) runs for `where: { userId: { equals }, timestamp: { gte, lt } }`, newest first. */
const PAGE_SQL = `SELECT id, event_id AS "eventId", user_id AS "userId", session_id AS "sessionId",
  "timestamp", talked_time AS "talkedTime", microphone_used AS "microphoneUsed", speaker_used AS "speakerUsed",
  voice_sentiment AS "voiceSentiment", created_at AS "createdAt",
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "createdAtExact" FROM user_metrics
    WHERE (user_id = $1 AND "timestamp" >= $2::int8 AND "timestamp" < $3::int8)
    ORDER BY "timestamp" DESC, id DESC
    LIMIT $4`;

const PAGE_QUERY = /* GraphQL */ `
  query Page($where: MetricFilter!, $first: Int!) {
    metrics(where: $where, orderBy: [{ field: TIMESTAMP, direction: DESC }], first: $first) {
      edges { node { id eventId userId sessionId timestamp talkedTime microphoneUsed speakerUsed voiceSentiment createdAt } }
      pageInfo { hasNextPage endCursor }
    }
  }`;

const PAGE_SIZE = 100;

function weekIn(ctx: Context, rand: () => number): QueryParams {
  const firstDay = Math.floor(ctx.endSeconds / 86_400) - ctx.days;
  const from = (firstDay + Math.floor(rand() * Math.max(1, ctx.days - 7))) * 86_400;
  return { userId: userName(1 + Math.floor(rand() * ctx.users)), from, to: from + 7 * 86_400 };
}

function pageCase(ctx: Context): QueryCase {
  return {
    key: 'page',
    label: `page of ${PAGE_SIZE}, 1 user, 7 days, newest first`,
    targetRatio: 2.5,
    sqlText: PAGE_SQL,
    params: (rand) => weekIn(ctx, rand),
    raw: async (p) => {
      const rows = await ctx.sql.query<{ id: number }>(PAGE_SQL, [p.userId, p.from, p.to, PAGE_SIZE + 1]);
      return rows.slice(0, PAGE_SIZE).map((r) => String(r.id));
    },
    graphql: async (p) => {
      const data = await gql<{ metrics: { edges: Array<{ node: { id: string } }> } }>(ctx.client, PAGE_QUERY, {
        where: { userId: { equals: p.userId }, timestamp: { gte: p.from, lt: p.to } },
        first: PAGE_SIZE,
      });
      return data.metrics.edges.map((e) => e.node.id);
    },
    check: (raw, api) => {
      if (raw.length === 0) throw new Error('the page is empty: the query table has no rows for this user and week');
      sameJson('filtered page ids', raw, api);
    },
  };
}

// Grouped aggregates -----------------------------------------------------------------------------------------------------

/**
 * Every MetricGroup figure for the rows matching `filter`, grouped by `groupKey`, in one statement.
 * A stand-in until src/services/stats.ts exports the SQL the service runs.
 */
function aggregateSql(groupKey: string, filter: string): string {
  return `WITH f AS (
      SELECT ${groupKey} AS g, user_id, session_id, talked_time, microphone_used, speaker_used, voice_sentiment
      FROM user_metrics WHERE ${filter}
    ), s AS (
      SELECT g, json_agg(json_build_object('value', v, 'count', c) ORDER BY c DESC, v NULLS LAST) AS sentiments
      FROM (SELECT g, voice_sentiment AS v, count(*)::int AS c FROM f GROUP BY g, voice_sentiment) x GROUP BY g
    )
    SELECT a.*, s.sentiments FROM (
      SELECT g, count(*)::int AS count, count(DISTINCT user_id)::int AS "distinctUsers",
        count(DISTINCT session_id)::int AS "distinctSessions", sum(talked_time)::float8 AS sum, avg(talked_time)::float8 AS avg,
        min(talked_time) AS min, max(talked_time) AS max,
        percentile_cont(0.5) WITHIN GROUP (ORDER BY talked_time) AS p50,
        percentile_cont(0.95) WITHIN GROUP (ORDER BY talked_time) AS p95,
        avg(microphone_used::int)::float8 AS "microphoneUsageRate", avg(speaker_used::int)::float8 AS "speakerUsageRate"
      FROM f GROUP BY g
    ) a JOIN s ON s.g IS NOT DISTINCT FROM a.g
    ORDER BY a.g NULLS LAST`;
}

const GROUP_FIELDS = 'count distinctUsers distinctSessions talkedTime { sum avg min max p50 p95 } microphoneUsageRate speakerUsageRate sentiments { value count }';

interface Group {
  count: number;
  talkedTime?: { sum: number };
  sum?: number;
}

/** Compares what both sides must agree on exactly: the number of groups, their counts and sums. */
function checkGroups(raw: unknown[], api: unknown[]): void {
  const key = (g: Group) => [g.count, g.talkedTime?.sum ?? g.sum];
  sameJson('aggregate groups (count, sum)', (raw as Group[]).map(key), (api as Group[]).map(key));
}

function perDayCase(ctx: Context, withGraphql: boolean): QueryCase {
  const sql = aggregateSql(`date_trunc('day', to_timestamp("timestamp"), 'UTC')`, 'user_id = $1');
  const query = /* GraphQL */ `
    query PerDay($where: MetricFilter) {
      metricStats(where: $where, bucket: { unit: DAY, timeZone: "UTC" }) { bucketStart ${GROUP_FIELDS} }
    }`;
  return {
    key: 'statsPerDay',
    label: 'stats per day, 1 user, 30 days',
    targetRatio: 2,
    sqlText: sql,
    params: (rand) => ({ userId: userName(1 + Math.floor(rand() * ctx.users)), from: 0, to: 0 }),
    raw: (p) => ctx.sql.query(sql, [p.userId]),
    graphql: withGraphql
      ? async (p) => (await gql<{ metricStats: unknown[] }>(ctx.client, query, { where: { userId: { equals: p.userId } } })).metricStats
      : undefined,
    check: checkGroups,
  };
}

function perSentimentCase(ctx: Context, withGraphql: boolean): QueryCase {
  const sql = aggregateSql('voice_sentiment', 'user_id = $1 AND "timestamp" >= $2::int8 AND "timestamp" < $3::int8');
  const query = /* GraphQL */ `
    query PerSentiment($where: MetricFilter) {
      metricStats(where: $where, groupBy: [VOICE_SENTIMENT]) { voiceSentiment ${GROUP_FIELDS} }
    }`;
  return {
    key: 'statsPerSentiment',
    label: 'stats per sentiment, 1 user, 7 days',
    targetRatio: 2,
    sqlText: sql,
    params: (rand) => weekIn(ctx, rand),
    raw: (p) => ctx.sql.query(sql, [p.userId, p.from, p.to]),
    graphql: withGraphql
      ? async (p) =>
          (
            await gql<{ metricStats: unknown[] }>(ctx.client, query, {
              where: { userId: { equals: p.userId }, timestamp: { gte: p.from, lt: p.to } },
            })
          ).metricStats
      : undefined,
    check: checkGroups,
  };
}

export async function queryCases(ctx: Context): Promise<QueryCase[]> {
  const stats = await hasQueryField(ctx.client, 'metricStats');
  return [pageCase(ctx), perDayCase(ctx, stats), perSentimentCase(ctx, stats)];
}
