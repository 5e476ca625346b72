/** Aggregates: `metricStats` (groups and time buckets) and `userSummary`, with their types. */
import { type FieldNode, type GraphQLResolveInfo, Kind, type SelectionSetNode } from 'graphql';
import { rawRowsFrom } from '../services/partitions.js';
import {
  DEFAULT_TIME_ZONE,
  type MetricDimension,
  type MetricFigures,
  type MetricGroup,
  metricStats,
  type SentimentCount,
  type StatsFigure,
  type TalkedTimeStats,
  type TimeBucket,
  type UserSummary,
  userSummary,
} from '../services/stats.js';
import { builder } from './builder.js';
import { MetricFilterInput } from './metric.js';

/** The figure behind each selectable field (of MetricFigures and its types, and of TalkedTimeStats). */
const FIGURE_FIELDS: Record<string, StatsFigure> = {
  count: 'count',
  distinctUsers: 'distinctUsers',
  distinctUsersApprox: 'distinctUsersApprox',
  distinctSessions: 'distinctSessions',
  sessionCount: 'distinctSessions',
  microphoneUsageRate: 'microphoneRate',
  speakerUsageRate: 'speakerRate',
  sentiments: 'sentiments',
  firstSeen: 'timestamps',
  lastSeen: 'timestamps',
};
const TALKED_TIME_FIELDS: Record<string, StatsFigure> = {
  sum: 'talkedSum',
  avg: 'talkedAvg',
  min: 'talkedMin',
  max: 'talkedMax',
  p50: 'talkedP50',
  p95: 'talkedP95',
  p50Approx: 'talkedP50Approx',
  p95Approx: 'talkedP95Approx',
};

/** The fields a selection set selects, through fragments (@skip and @include aside: at worst a figure too many). */
function selectedFields(
  selectionSet: SelectionSetNode | undefined,
  info: GraphQLResolveInfo,
  into: FieldNode[] = [],
): FieldNode[] {
  for (const selection of selectionSet?.selections ?? []) {
    if (selection.kind === Kind.FIELD) into.push(selection);
    else if (selection.kind === Kind.INLINE_FRAGMENT) selectedFields(selection.selectionSet, info, into);
    else selectedFields(info.fragments[selection.name.value]?.selectionSet, info, into);
  }
  return into;
}

/** The figures a metricStats or userSummary field selects: only those are computed. */
function selectedFigures(info: GraphQLResolveInfo): Set<StatsFigure> {
  const figures = new Set<StatsFigure>();
  for (const node of info.fieldNodes) {
    for (const field of selectedFields(node.selectionSet, info)) {
      const figure = FIGURE_FIELDS[field.name.value];
      if (figure) figures.add(figure);
      if (field.name.value !== 'talkedTime') continue;
      for (const sub of selectedFields(field.selectionSet, info)) {
        const talked = TALKED_TIME_FIELDS[sub.name.value];
        if (talked) figures.add(talked);
      }
    }
  }
  return figures;
}

/** Most sentiment values one set of figures lists: the bound the cost limit counts them at. */
const SENTIMENTS_MAX = 100;

const MetricDimensionEnum = builder.enumType('MetricDimension', {
  description: 'A field to group records by.',
  values: [
    'USER_ID',
    'SESSION_ID',
    'VOICE_SENTIMENT',
    'MICROPHONE_USED',
    'SPEAKER_USED',
  ] as const satisfies readonly MetricDimension[],
});

const TimeBucketUnitEnum = builder.enumType('TimeBucketUnit', {
  description: "Length of a time bucket, in the calendar of the bucket's time zone. Weeks start on Monday (ISO).",
  values: ['MINUTE', 'HOUR', 'DAY', 'WEEK', 'MONTH'] as const,
});

const TimeBucketInput = builder.inputRef<TimeBucket>('TimeBucketInput').implement({
  description:
    "Groups records by when they happened (their `timestamp`), in a time zone's calendar, " +
    'daylight-saving changes included: ' +
    'a day is a local day (23 or 25 hours on the change days), and the repeated autumn hour is two HOUR buckets.',
  fields: (t) => ({
    unit: t.field({ type: TimeBucketUnitEnum, required: true }),
    timeZone: t.string({
      defaultValue: DEFAULT_TIME_ZONE,
      description:
        'A tz-database name, e.g. "Europe/Berlin" or "America/New_York". ' +
        'Offsets and abbreviations (e.g. "+02") are refused.',
    }),
  }),
});

const TalkedTimeStatsType = builder.objectRef<TalkedTimeStats>('TalkedTimeStats').implement({
  description: 'Talk time of the records, in seconds.',
  fields: (t) => ({
    sum: t.field({ type: 'SafeInt', resolve: (s) => s.sum }),
    avg: t.exposeFloat('avg'),
    min: t.exposeInt('min'),
    max: t.exposeInt('max'),
    p50: t.exposeFloat('p50', { description: 'Median (continuous: interpolated between the two middle values).' }),
    p95: t.exposeFloat('p95', { description: "95th percentile (continuous, as PostgreSQL's percentile_cont)." }),
    p50Approx: t.exposeFloat('p50Approx', {
      description:
        'Approximate median: within 1% of p50 (from a histogram of talk times in buckets 2% wide). ' +
        'Cheap from the rollups ' +
        '(README: "Rollups"); p50 is exact and reads every record.',
    }),
    p95Approx: t.exposeFloat('p95Approx', {
      description: 'Approximate 95th percentile: within 1% of p95 (as p50Approx).',
    }),
  }),
});

const SentimentCountType = builder.objectRef<SentimentCount>('SentimentCount').implement({
  fields: (t) => ({
    value: t.exposeString('value', {
      nullable: true,
      description: 'The voiceSentiment; null for records that gave none.',
    }),
    count: t.field({ type: 'SafeInt', resolve: (s) => s.count }),
  }),
});

const MetricFiguresInterface = builder.interfaceRef<MetricFigures>('MetricFigures').implement({
  description: 'What a set of records adds up to. A set always has at least one record, so no figure is null.',
  fields: (t) => ({
    count: t.field({ type: 'SafeInt', description: 'Records.', resolve: (f) => f.count }),
    distinctUsers: t.field({ type: 'SafeInt', resolve: (f) => f.distinctUsers }),
    distinctUsersApprox: t.field({
      type: 'SafeInt',
      description:
        'Approximate distinctUsers: within 2% up to ~300,000 users per group ' +
        '(linear counting of hashed user ids in a ' +
        '65,536-bit bitmap; README: "Rollups"). Cheap from the rollups; distinctUsers is exact and reads every record.',
      resolve: (f) => f.distinctUsersApprox,
    }),
    distinctSessions: t.field({
      type: 'SafeInt',
      description: 'Distinct sessionId values.',
      resolve: (f) => f.distinctSessions,
    }),
    talkedTime: t.field({ type: TalkedTimeStatsType, resolve: (f) => f.talkedTime }),
    microphoneUsageRate: t.exposeFloat('microphoneUsageRate', {
      description: 'Share of records with microphoneUsed, 0..1.',
    }),
    speakerUsageRate: t.exposeFloat('speakerUsageRate', { description: 'Share of records with speakerUsed, 0..1.' }),
    sentiments: t.field({
      type: [SentimentCountType],
      description:
        'Every voiceSentiment present (null included), by count descending, then value; ' +
        'the counts add up to `count`. ' +
        `At most ${SENTIMENTS_MAX} values, the most frequent, are listed.`,
      extensions: { listMax: SENTIMENTS_MAX },
      resolve: (f) => (f.sentiments.length > SENTIMENTS_MAX ? f.sentiments.slice(0, SENTIMENTS_MAX) : f.sentiments),
    }),
  }),
});

const MetricGroupType = builder.objectRef<MetricGroup>('MetricGroup').implement({
  description: 'One group of `metricStats`: its key (each part null when not grouped by it) and its figures.',
  interfaces: [MetricFiguresInterface],
  fields: (t) => ({
    userId: t.exposeString('userId', { nullable: true }),
    sessionId: t.exposeString('sessionId', { nullable: true }),
    voiceSentiment: t.exposeString('voiceSentiment', {
      nullable: true,
      description: 'Null when not grouped by VOICE_SENTIMENT, or for the group of records without a sentiment.',
    }),
    microphoneUsed: t.exposeBoolean('microphoneUsed', { nullable: true }),
    speakerUsed: t.exposeBoolean('speakerUsed', { nullable: true }),
    bucketStart: t.field({
      type: 'DateTime',
      nullable: true,
      description: 'The instant the bucket starts (local midnight, local hour...), as UTC; null without `bucket`.',
      resolve: (g) => g.bucketStart,
    }),
  }),
});

const UserSummaryType = builder.objectRef<UserSummary>('UserSummary').implement({
  description: "The figures of one user's records.",
  interfaces: [MetricFiguresInterface],
  fields: (t) => ({
    userId: t.exposeString('userId'),
    firstSeen: t.field({
      type: 'DateTime',
      description: 'The earliest event time (`timestamp`).',
      resolve: (s) => s.firstSeen,
    }),
    lastSeen: t.field({
      type: 'DateTime',
      description: 'The latest event time (`timestamp`).',
      resolve: (s) => s.lastSeen,
    }),
    sessionCount: t.field({
      type: 'SafeInt',
      description: 'Distinct sessions of the user.',
      resolve: (s) => s.distinctSessions,
    }),
  }),
});

builder.queryFields((t) => ({
  metricStats: t.field({
    type: [MetricGroupType],
    description:
      'Figures of the records matching `where`, per group: ' +
      'one group per combination of the `groupBy` dimensions and the ' +
      '`bucket` (one group for all records without either). ' +
      'Ordered by bucketStart, then the dimensions in the order given, ' +
      'nulls last. No matching record: an empty list. ' +
      "More groups than the server's limit (MAX_STAT_GROUPS, default 1,000): " +
      'an error, code TOO_MANY_GROUPS. Time before `rawRowsFrom` (retention dropped its rows) is answered from ' +
      'the rollups; a question that needs its rows is refused, code RAW_ROWS_DROPPED.',
    // The cost limit counts the groups at their most (src/plugins/limits.ts).
    extensions: { listMax: 'maxStatGroups' },
    args: {
      where: t.arg({ type: MetricFilterInput }),
      groupBy: t.arg({
        type: [MetricDimensionEnum],
        description: 'Dimensions, each at most once; their order orders the groups.',
      }),
      bucket: t.arg({ type: TimeBucketInput }),
    },
    resolve: (_root, args, ctx, info) =>
      metricStats(
        { where: args.where, groupBy: args.groupBy, bucket: args.bucket, figures: selectedFigures(info) },
        { maxGroups: ctx.limits.maxStatGroups },
      ),
  }),
  userSummary: t.field({
    type: UserSummaryType,
    nullable: true,
    description:
      "Figures of one user's records (those matching `where`, when given); null when there are none. Reads rows: " +
      'once retention dropped some (`rawRowsFrom`), `where.timestamp` must start at or after it (else code ' +
      'RAW_ROWS_DROPPED).',
    args: {
      userId: t.arg.string({ required: true }),
      where: t.arg({ type: MetricFilterInput }),
    },
    resolve: (_root, args, _ctx, info) => userSummary(args.userId, args.where, selectedFigures(info)),
  }),
  rawRowsFrom: t.field({
    type: 'DateTime',
    nullable: true,
    description:
      'The instant from which every stored record is kept as a row; null while retention (RETENTION_DAYS) has ' +
      'dropped none. Older records are gone from `metrics` and exports, and stay counted in `metricStats` answered ' +
      'from the rollups.',
    resolve: async () => {
      const from = await rawRowsFrom();
      return from === null ? null : new Date(from * 1000);
    },
  }),
}));
