/** The metric: its object type, its inputs, and the fields that store and read it. */
import { GraphQLError } from 'graphql';
import { recordIngestResult } from '../observability/metrics.js';
import { type IngestResult, ingestMetrics, type RejectedRecord } from '../services/ingest.js';
import type { MetricFilter } from '../services/metric-filter.js';
import {
  findMetricById,
  findMetricPage,
  type MetricOrder,
  type MetricPage,
  type MetricRow,
  PAGE_LIMITS,
} from '../services/metric-query.js';
import { LIMITS, type StoredMetric } from '../services/record.js';
import { builder } from './builder.js';

export const UserMetric = builder.objectRef<StoredMetric & { cursor?: string }>('UserMetric').implement({
  description: "One report of how a user's session went.",
  fields: (t) => ({
    // Fields that read a property have no resolver: graphql-jit reads the property in place, where a resolver costs a
    // call and a resolve-info object per field of every row. ID serializes the number as its text.
    id: t.exposeID('id'),
    eventId: t.exposeString('eventId', {
      nullable: true,
      description: "The client's own id for the record, as sent; null when it sent none.",
    }),
    userId: t.exposeString('userId'),
    sessionId: t.exposeString('sessionId'),
    timestamp: t.expose('timestamp', { type: 'SafeInt', description: 'When the event happened, in unix seconds.' }),
    occurredAt: t.field({
      type: 'DateTime',
      description: 'When the event happened (`timestamp` as a date).',
      resolve: (m) => new Date(Number(m.timestamp) * 1000),
    }),
    talkedTime: t.exposeInt('talkedTime', { description: 'Seconds the user talked.' }),
    microphoneUsed: t.exposeBoolean('microphoneUsed'),
    speakerUsed: t.exposeBoolean('speakerUsed'),
    voiceSentiment: t.exposeString('voiceSentiment', { nullable: true }),
    createdAt: t.expose('createdAt', { type: 'DateTime', description: 'When the service stored the record.' }),
    cursor: t.exposeString('cursor', {
      nullable: true,
      description:
        "The record's place in the `metricIngested` stream, to resume after it (`after`); opaque. Null outside " +
        'that subscription.',
    }),
  }),
});

const UserMetricInput = builder.inputType('UserMetricInput', {
  description: 'One record to store. Rules are checked per record; see `RejectedRecord` for what a failure looks like.',
  fields: (t) => ({
    eventId: t.string({
      description:
        `Optional id the client gives the record (1..${LIMITS.eventIdMaxLength} characters). Records ` +
        `with the same eventId are one record: a resend is counted as a duplicate.`,
    }),
    userId: t.string({ required: true, description: `1..${LIMITS.idMaxLength} characters, not blank.` }),
    sessionId: t.string({ required: true, description: `1..${LIMITS.idMaxLength} characters, not blank.` }),
    timestamp: t.field({
      type: 'SafeInt',
      required: true,
      description: "Unix time of the event in seconds; from 2000-01-01 to 24 hours ahead of the server's clock.",
    }),
    talkedTime: t.int({ required: true, description: `Seconds the user talked, 0..${LIMITS.talkedTimeMax}.` }),
    microphoneUsed: t.boolean({ required: true }),
    speakerUsed: t.boolean({ required: true }),
    voiceSentiment: t.string({ description: `At most ${LIMITS.voiceSentimentMaxLength} characters.` }),
  }),
});

const RejectedRecordType = builder.objectRef<RejectedRecord>('RejectedRecord').implement({
  description: 'A record that was not stored, and why. A record with several problems has one entry per problem.',
  fields: (t) => ({
    index: t.exposeInt('index', { description: 'Position of the record in `records` (from 0).' }),
    eventId: t.exposeString('eventId', { nullable: true }),
    field: t.exposeString('field', { nullable: true, description: 'The input field at fault, e.g. `timestamp`.' }),
    code: t.exposeString('code', {
      description:
        'BLANK, TOO_LONG, INVALID_CHARACTER, TIMESTAMP_TOO_OLD, TIMESTAMP_PAST_RETENTION, TIMESTAMP_IN_FUTURE, ' +
        'TIMESTAMP_IN_MILLISECONDS ' +
        'or OUT_OF_RANGE.',
    }),
    message: t.exposeString('message', { description: 'What was wrong and what is allowed.' }),
  }),
});

const IngestStatusEnum = builder.enumType('IngestStatus', {
  description: 'What happened to the valid records of an ingestMetrics batch.',
  values: {
    STORED: { description: 'They are in the database: readable now.' },
    QUEUED: {
      description:
        'They are in the ingest queue (the queued mode, INGEST_QUEUE): the worker stores them, readable once it has.',
    },
  } as const,
});

const IngestMetricsResult = builder.objectRef<IngestResult>('IngestMetricsResult').implement({
  fields: (t) => ({
    status: t.field({ type: IngestStatusEnum, resolve: (r) => r.status }),
    accepted: t.exposeInt('accepted', { description: 'Records newly stored (0 when QUEUED).' }),
    queued: t.exposeInt('queued', {
      description: 'Records newly queued, for the worker to store (0 when STORED).',
    }),
    duplicates: t.exposeInt('duplicates', {
      description:
        'Valid records already stored (or repeated within this batch): not stored again. When QUEUED: repeated ' +
        "within this batch, or resent within the queue's duplicate window.",
    }),
    rejected: t.field({
      type: [RejectedRecordType],
      /* its length follows the request's own records: counted once */ extensions: { listMax: 1 },
      resolve: (r) => r.rejected,
    }),
  }),
});

builder.mutationField('ingestMetrics', (t) =>
  t.field({
    type: IngestMetricsResult,
    description:
      'Stores a batch of metric records. Valid records are stored even when others are rejected, unless `atomic` ' +
      'is true. ' +
      'Retrying a batch is safe: records already stored are counted as duplicates, never stored twice.',
    extensions: { requiredScope: 'ingest' },
    args: {
      records: t.arg({ type: [UserMetricInput], required: true }),
      atomic: t.arg.boolean({
        defaultValue: false,
        description: 'When true, a single rejected record means nothing is stored.',
      }),
    },
    resolve: async (_root, args, ctx) => {
      const limit = ctx.limits.maxBatchSize;
      if (args.records.length > limit) {
        throw new GraphQLError(
          `ingestMetrics accepts at most ${limit} records per request; this one has ${args.records.length}. ` +
            `Nothing was stored: split it into batches of at most ${limit}.`,
          { extensions: { code: 'BATCH_TOO_LARGE', limit, received: args.records.length } },
        );
      }
      const result = await ingestMetrics(args.records, { atomic: args.atomic ?? false });
      recordIngestResult(result);
      return result;
    },
  }),
);

// Filters ---------------------------------------------------------------------------------------------------------

const StringFilter = builder.inputType('StringFilter', {
  description: 'Case-sensitive conditions on a text field; all given conditions must hold. `%` and `_` are literal.',
  fields: (t) => ({
    equals: t.string(),
    in: t.stringList({ description: 'Any of these values (an empty list matches nothing).' }),
    notIn: t.stringList({ description: 'None of these values.' }),
    startsWith: t.string(),
    contains: t.string(),
  }),
});

const NullableStringFilter = builder.inputType('NullableStringFilter', {
  description: 'As StringFilter, for a field that may be null. Only `isNull: true` matches a null value.',
  fields: (t) => ({
    equals: t.string(),
    in: t.stringList(),
    notIn: t.stringList(),
    startsWith: t.string(),
    contains: t.string(),
    isNull: t.boolean(),
  }),
});

const IntFilter = builder.inputType('IntFilter', {
  fields: (t) => ({
    equals: t.int(),
    in: t.intList(),
    gt: t.int(),
    gte: t.int(),
    lt: t.int(),
    lte: t.int(),
  }),
});

const TimestampFilter = builder.inputType('TimestampFilter', {
  description: 'Conditions on a unix time in seconds.',
  fields: (t) => ({
    equals: t.field({ type: 'SafeInt' }),
    in: t.field({ type: ['SafeInt'] }),
    gt: t.field({ type: 'SafeInt' }),
    gte: t.field({ type: 'SafeInt' }),
    lt: t.field({ type: 'SafeInt' }),
    lte: t.field({ type: 'SafeInt' }),
  }),
});

const DateTimeFilter = builder.inputType('DateTimeFilter', {
  fields: (t) => ({
    gt: t.field({ type: 'DateTime' }),
    gte: t.field({ type: 'DateTime' }),
    lt: t.field({ type: 'DateTime' }),
    lte: t.field({ type: 'DateTime' }),
  }),
});

export const MetricFilterInput = builder.inputRef<MetricFilter>('MetricFilter').implement({
  description: 'Which records to include. All given conditions must hold; combine with AND, OR and NOT.',
  fields: (t) => ({
    userId: t.field({ type: StringFilter }),
    sessionId: t.field({ type: StringFilter }),
    voiceSentiment: t.field({ type: NullableStringFilter }),
    timestamp: t.field({ type: TimestampFilter }),
    talkedTime: t.field({ type: IntFilter }),
    createdAt: t.field({ type: DateTimeFilter }),
    microphoneUsed: t.boolean(),
    speakerUsed: t.boolean(),
    AND: t.field({ type: [MetricFilterInput], description: 'All of these (an empty list matches everything).' }),
    OR: t.field({ type: [MetricFilterInput], description: 'Any of these (an empty list matches nothing).' }),
    NOT: t.field({ type: MetricFilterInput, description: 'Not this filter (SQL semantics: nulls match neither).' }),
  }),
});

// Reading ---------------------------------------------------------------------------------------------------------

const MetricOrderField = builder.enumType('MetricOrderField', {
  values: ['TIMESTAMP', 'TALKED_TIME', 'CREATED_AT'] as const,
});
const OrderDirection = builder.enumType('OrderDirection', { values: ['ASC', 'DESC'] as const });

const MetricOrderInput = builder.inputRef<MetricOrder>('MetricOrder').implement({
  fields: (t) => ({
    field: t.field({ type: MetricOrderField, required: true }),
    direction: t.field({ type: OrderDirection, required: true, defaultValue: 'ASC' }),
  }),
});

const PageInfo = builder.objectRef<{ hasNextPage: boolean; endCursor: string | null }>('PageInfo').implement({
  fields: (t) => ({
    hasNextPage: t.exposeBoolean('hasNextPage', { description: 'True only when another row exists after this page.' }),
    endCursor: t.exposeString('endCursor', { nullable: true, description: 'Pass as `after` for the next page.' }),
  }),
});

interface Edge {
  node: MetricRow;
  page: MetricPage;
}
const UserMetricEdge = builder.objectRef<Edge>('UserMetricEdge').implement({
  fields: (t) => ({
    cursor: t.string({ resolve: (e) => e.page.cursorOf(e.node) }),
    node: t.expose('node', { type: UserMetric }),
  }),
});

interface Connection {
  edges: Edge[];
  pageInfo: { hasNextPage: boolean; endCursor: string | null };
  totalCount: () => Promise<number>;
}
const UserMetricConnection = builder.objectRef<Connection>('UserMetricConnection').implement({
  fields: (t) => ({
    // The page's `first` counts its edges (src/plugins/limits.ts).
    edges: t.expose('edges', { type: [UserMetricEdge], extensions: { listMax: 1 } }),
    pageInfo: t.expose('pageInfo', { type: PageInfo }),
    totalCount: t.int({
      description: 'Records matching `where` (counted only when asked for).',
      resolve: (c) => c.totalCount(),
    }),
  }),
});

builder.queryFields((t) => ({
  metrics: t.field({
    type: UserMetricConnection,
    description:
      `Stored records matching \`where\`, a page at a time. Default order: newest timestamp first; ` +
      `ties broken by id.`,
    // The cost limit counts a page at the size asked for, or at this default (src/plugins/limits.ts).
    extensions: { page: PAGE_LIMITS },
    args: {
      where: t.arg({ type: MetricFilterInput }),
      orderBy: t.arg({ type: [MetricOrderInput], description: 'Sort keys in order of priority; id breaks ties.' }),
      first: t.arg.int({ description: `Page size, 1..${PAGE_LIMITS.maxFirst}; default ${PAGE_LIMITS.defaultFirst}.` }),
      after: t.arg.string({ description: 'A cursor from a previous page of the same `orderBy`.' }),
    },
    resolve: async (_root, args) => {
      const page = await findMetricPage(args);
      const last = page.rows.at(-1);
      return {
        edges: page.rows.map((node) => ({ node, page })),
        pageInfo: { hasNextPage: page.hasNextPage, endCursor: last ? page.cursorOf(last) : null },
        totalCount: page.totalCount,
      };
    },
  }),
  metric: t.field({
    type: UserMetric,
    nullable: true,
    description: 'One stored record by id; null when there is none.',
    args: { id: t.arg.id({ required: true }) },
    resolve: async (_root, args) => {
      const id = String(args.id);
      // Ids are 64-bit; the ones handed out stay below 2^53 (a JSON number), so a larger one names no record.
      if (!/^\d{1,16}$/.test(id) || Number(id) > Number.MAX_SAFE_INTEGER) return null;
      return findMetricById(Number(id));
    },
  }),
}));
