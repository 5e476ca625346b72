/**
 * The read benchmarks: each the same question asked through GraphQL over HTTP and as SQL run directly with `pg`.
 * The SQL is the statement the service runs for that GraphQL request, so the ratio is the service's own overhead.
 */
import type { StatsArgs, StatsFigure } from '../src/services/stats.js';
import { userName } from './data.js';
import type { BenchSql } from './databases.js';
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
  /** Requests per method and round, and before measuring, when not the run's (questions over every user take seconds raw). */
  requests?: number;
  warmUp?: number;
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

/** Does the schema have this Query field? Asked by querying it: production services answer no introspection. */
async function hasQueryField(client: HttpClient, name: string, selection: string): Promise<boolean> {
  const body = (await client.post(JSON.stringify({ query: `{ ${name} ${selection} }` }))) as GraphQLBody<unknown>;
  if (body.errors?.some((e) => /Cannot query field/.test(e.message))) return false;
  if (body.errors) throw new Error(`${name}: ${JSON.stringify(body.errors).slice(0, 500)}`);
  return true;
}

function sameJson(what: string, raw: unknown, api: unknown): void {
  const a = JSON.stringify(raw);
  const b = JSON.stringify(api);
  if (a !== b)
    throw new Error(`${what}: GraphQL and raw SQL disagree\n raw: ${a.slice(0, 600)}\n api: ${b.slice(0, 600)}`);
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
 * The statement metricStats runs (src/services/stats.ts exports its builder so that this runs exactly that SQL), as
 * text and parameters for pg. MAX_STAT_GROUPS at its default.
 */
async function statsSql(args: StatsArgs): Promise<{ text: string; values: unknown[] }> {
  const { buildStatsSql } = await import('../src/services/stats.js');
  const sql = buildStatsSql({ ...args, maxGroups: 1000 });
  return { text: sql.text, values: sql.values };
}

// Questions about every user (issue 15) --------------------------------------------------------------------------------

/** Figures that add up (the rollups hold them), and the first question's figures in their fast form. */
const ADDING_FIELDS =
  'count talkedTime { sum avg min max } microphoneUsageRate speakerUsageRate sentiments { value count }';
const FAST_FIELDS = `${ADDING_FIELDS} distinctUsersApprox talkedTime { p95Approx }`;
const ADDING_FIGURES: StatsFigure[] = [
  'count',
  'talkedSum',
  'talkedAvg',
  'talkedMin',
  'talkedMax',
  'microphoneRate',
  'speakerRate',
  'sentiments',
];
/** The raw GROUP BY beside the fast form: the same question with exact distinct users and p95, as the issue measured it. */
const EXACT_FAST_FIGURES: StatsFigure[] = [...ADDING_FIGURES, 'distinctUsers', 'talkedP95'];

interface ApiFastGroup extends ApiGroup {
  distinctUsersApprox: number;
  talkedTime: { sum: number; p95Approx: number };
}

/** As checkGroups, and the fast figures within their documented bounds of the raw statement's exact ones. */
function checkFastGroups(raw: unknown[], api: unknown[]): void {
  checkGroups(raw, api);
  const exact = raw as Array<{ distinct_users: number | string; talked_p95: number }>;
  (api as ApiFastGroup[]).forEach((group, i) => {
    const users = Number(exact[i]?.distinct_users);
    const p95 = Number(exact[i]?.talked_p95);
    if (
      Math.abs(group.distinctUsersApprox - users) > 0.02 * users ||
      Math.abs(group.talkedTime.p95Approx - p95) > 0.01 * p95
    ) {
      throw new Error(
        `group ${i}: distinctUsersApprox ${group.distinctUsersApprox} for ${users}, p95Approx ${group.talkedTime.p95Approx} for ${p95}`,
      );
    }
  });
}

interface CrossUserQuestion {
  key: string;
  label: string;
  fields: string;
  figures: StatsFigure[];
  args(ctx: Context): Pick<StatsArgs, 'where' | 'groupBy' | 'bucket'>;
  check(raw: unknown[], api: unknown[]): void;
}

const lastDays = (ctx: Context, days: number) => ({
  timestamp: { gte: ctx.endSeconds - days * 86_400, lt: ctx.endSeconds + 1 },
});

const CROSS_USER_QUESTIONS: CrossUserQuestion[] = [
  {
    key: 'allPerDay',
    label: 'all users, per day, 30 days, Europe/Berlin, figures that add up',
    fields: ADDING_FIELDS,
    figures: ADDING_FIGURES,
    args: (ctx) => ({ where: lastDays(ctx, 30), bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' } }),
    check: checkGroups,
  },
  {
    key: 'allPerDayFast',
    label: 'all users, per day, 30 days, Europe/Berlin, + distinctUsersApprox, p95Approx (raw: exact distinct, p95)',
    fields: FAST_FIELDS,
    figures: EXACT_FAST_FIGURES,
    args: (ctx) => ({ where: lastDays(ctx, 30), bucket: { unit: 'DAY', timeZone: 'Europe/Berlin' } }),
    check: checkFastGroups,
  },
  {
    key: 'allPerSentiment',
    label: 'all users, per sentiment, last 7 days, figures that add up',
    fields: ADDING_FIELDS,
    figures: ADDING_FIGURES,
    args: (ctx) => ({ where: lastDays(ctx, 7), groupBy: ['VOICE_SENTIMENT'] }),
    check: checkGroups,
  },
  {
    key: 'allPerHour',
    label: 'all users, per hour, last 7 days, count and talkedTime { sum }',
    fields: 'count talkedTime { sum }',
    figures: ['count', 'talkedSum'],
    args: (ctx) => ({ where: lastDays(ctx, 7), bucket: { unit: 'HOUR', timeZone: 'UTC' } }),
    check: checkGroups,
  },
];

/** A question about every user: GraphQL (rollups, where they answer it) beside the raw GROUP BY over user_metrics. */
async function crossUserCase(ctx: Context, question: CrossUserQuestion, withGraphql: boolean): Promise<QueryCase> {
  const args = question.args(ctx);
  const sql = await statsSql({ ...args, figures: new Set(question.figures) });
  const query = /* GraphQL */ `
    query AllUsers($where: MetricFilter, $groupBy: [MetricDimension!], $bucket: TimeBucketInput) {
      metricStats(where: $where, groupBy: $groupBy, bucket: $bucket) { bucketStart voiceSentiment ${question.fields} }
    }`;
  return {
    key: question.key,
    label: question.label,
    targetRatio: 1,
    sqlText: sql.text,
    params: () => ({ userId: '', from: 0, to: 0 }),
    raw: () => ctx.sql.query(sql.text, sql.values),
    graphql: withGraphql
      ? async () =>
          (
            await gql<{ metricStats: unknown[] }>(ctx.client, query, {
              where: args.where,
              groupBy: args.groupBy,
              bucket: args.bucket,
            })
          ).metricStats
      : undefined,
    check: question.check,
    requests: 5,
    warmUp: 2,
  };
}

const GROUP_FIELDS =
  'count distinctUsers distinctSessions talkedTime { sum avg min max p50 p95 } microphoneUsageRate speakerUsageRate sentiments { value count }';

interface RawGroup {
  count: number | string;
  talked_sum: number | string;
}
interface ApiGroup {
  count: number;
  talkedTime: { sum: number };
}

/** Compares what both sides must agree on exactly: the number of groups, their counts and sums. */
function checkGroups(raw: unknown[], api: unknown[]): void {
  sameJson(
    'aggregate groups (count, sum)',
    (raw as RawGroup[]).map((g) => [Number(g.count), Number(g.talked_sum)]),
    (api as ApiGroup[]).map((g) => [g.count, g.talkedTime.sum]),
  );
}

async function perDayCase(ctx: Context, withGraphql: boolean): Promise<QueryCase> {
  const args = (p: QueryParams): StatsArgs => ({
    where: { userId: { equals: p.userId } },
    bucket: { unit: 'DAY', timeZone: 'UTC' },
  });
  const query = /* GraphQL */ `
    query PerDay($where: MetricFilter) {
      metricStats(where: $where, bucket: { unit: DAY, timeZone: "UTC" }) { bucketStart ${GROUP_FIELDS} }
    }`;
  const sample = await statsSql(args({ userId: userName(1), from: 0, to: 0 }));
  return {
    key: 'statsPerDay',
    label: 'stats per day, 1 user, 30 days',
    targetRatio: 1.5,
    sqlText: sample.text,
    params: (rand) => ({ userId: userName(1 + Math.floor(rand() * ctx.users)), from: 0, to: 0 }),
    raw: async (p) => {
      const sql = await statsSql(args(p));
      return ctx.sql.query(sql.text, sql.values);
    },
    graphql: withGraphql
      ? async (p) => (await gql<{ metricStats: unknown[] }>(ctx.client, query, { where: args(p).where })).metricStats
      : undefined,
    check: checkGroups,
  };
}

async function perSentimentCase(ctx: Context, withGraphql: boolean): Promise<QueryCase> {
  const args = (p: QueryParams): StatsArgs => ({
    where: { userId: { equals: p.userId }, timestamp: { gte: p.from, lt: p.to } },
    groupBy: ['VOICE_SENTIMENT'],
  });
  const query = /* GraphQL */ `
    query PerSentiment($where: MetricFilter) {
      metricStats(where: $where, groupBy: [VOICE_SENTIMENT]) { voiceSentiment ${GROUP_FIELDS} }
    }`;
  const sample = await statsSql(args({ userId: userName(1), from: 0, to: 1 }));
  return {
    key: 'statsPerSentiment',
    label: 'stats per sentiment, 1 user, 7 days',
    targetRatio: 1.5,
    sqlText: sample.text,
    params: (rand) => weekIn(ctx, rand),
    raw: async (p) => {
      const sql = await statsSql(args(p));
      return ctx.sql.query(sql.text, sql.values);
    },
    graphql: withGraphql
      ? async (p) => (await gql<{ metricStats: unknown[] }>(ctx.client, query, { where: args(p).where })).metricStats
      : undefined,
    check: checkGroups,
  };
}

export async function queryCases(ctx: Context): Promise<QueryCase[]> {
  const stats = await hasQueryField(ctx.client, 'metricStats', '{ count }');
  // A service built before the rollups has no approximate fields: its cross-user cases are raw SQL only.
  const rollups = stats && (await hasQueryField(ctx.client, 'metricStats', '{ distinctUsersApprox }'));
  const crossUser = await Promise.all(CROSS_USER_QUESTIONS.map((q) => crossUserCase(ctx, q, rollups)));
  return [pageCase(ctx), await perDayCase(ctx, stats), await perSentimentCase(ctx, stats), ...crossUser];
}
