/**
 * The metric record's fields, defined once: the order in which they are stored, copied, exported and imported, their
 * columns and types. Types, validation, the COPY and INSERT column lists and the export columns derive from them.
 */

/** Limits of the record's values; the text limits are the columns' lengths. */
export const LIMITS = {
  idMaxLength: 255,
  eventIdMaxLength: 255,
  voiceSentimentMaxLength: 50,
  talkedTimeMax: 86_400,
  /** 2000-01-01T00:00:00Z. */
  timestampMin: 946_684_800,
  /** How far past the server's clock a timestamp may be, in seconds. */
  timestampFutureSkew: 86_400,
} as const;

type Kind = 'text' | 'integer' | 'boolean';

interface FieldDefinition {
  readonly name: string;
  /** The column in user_metrics, quoted where SQL needs it. */
  readonly column: string;
  readonly kind: Kind;
  /** PostgreSQL's type of the column (the element type of the INSERT's arrays). */
  readonly sqlType: 'varchar' | 'int8' | 'int4' | 'bool';
  /** A client may leave it out (stored as NULL). */
  readonly optional: boolean;
  /** Text only: most characters (code points); whether only whitespace is refused. */
  readonly maxLength?: number;
  readonly blankRefused?: boolean;
}

/** The client's fields of a record, in storage order. */
export const RECORD_FIELDS = [
  {
    name: 'eventId',
    column: 'event_id',
    kind: 'text',
    sqlType: 'varchar',
    optional: true,
    maxLength: LIMITS.eventIdMaxLength,
    blankRefused: true,
  },
  {
    name: 'userId',
    column: 'user_id',
    kind: 'text',
    sqlType: 'varchar',
    optional: false,
    maxLength: LIMITS.idMaxLength,
    blankRefused: true,
  },
  {
    name: 'sessionId',
    column: 'session_id',
    kind: 'text',
    sqlType: 'varchar',
    optional: false,
    maxLength: LIMITS.idMaxLength,
    blankRefused: true,
  },
  { name: 'timestamp', column: '"timestamp"', kind: 'integer', sqlType: 'int8', optional: false },
  { name: 'talkedTime', column: 'talked_time', kind: 'integer', sqlType: 'int4', optional: false },
  { name: 'microphoneUsed', column: 'microphone_used', kind: 'boolean', sqlType: 'bool', optional: false },
  { name: 'speakerUsed', column: 'speaker_used', kind: 'boolean', sqlType: 'bool', optional: false },
  {
    name: 'voiceSentiment',
    column: 'voice_sentiment',
    kind: 'text',
    sqlType: 'varchar',
    optional: true,
    maxLength: LIMITS.voiceSentimentMaxLength,
    blankRefused: false,
  },
] as const satisfies readonly FieldDefinition[];

type Field = (typeof RECORD_FIELDS)[number];
type ValueOf<K extends Kind> = K extends 'text' ? string : K extends 'integer' ? number : boolean;
type Simplify<T> = { [K in keyof T]: T[K] };

/**
 * A record as a client sends it (GraphQL has already checked the types). `timestamp` is unix time in seconds,
 * `talkedTime` seconds.
 */
export type MetricRecordInput = Simplify<
  { [F in Field as F['optional'] extends true ? never : F['name']]: ValueOf<F['kind']> } & {
    [F in Field as F['optional'] extends true ? F['name'] : never]?: ValueOf<F['kind']> | null;
  }
>;

export type RecordFieldName = Field['name'];

/** A stored row as the service returns it: every field present (NULL as null), with its id and time of storage. */
export type StoredMetric = Simplify<
  { id: number } & { [F in Field as F['name']]: ValueOf<F['kind']> | (F['optional'] extends true ? null : never) } & {
    createdAt: Date;
  }
>;

/** The record's field names, in storage order. */
export const RECORD_FIELD_NAMES: readonly RecordFieldName[] = RECORD_FIELDS.map((field) => field.name);

/** The columns a batch writes: the identity, then the fields in storage order. */
export const STORED_COLUMNS = ['record_key', ...RECORD_FIELDS.map((field) => field.column)].join(', ');

/** The fields' columns selected under their API names, in storage order (`"timestamp"` is int8: a bigint). */
export const FIELD_SELECT_LIST = RECORD_FIELDS.map(({ name, column }: FieldDefinition) =>
  column === `"${name}"` ? column : `${column} AS "${name}"`,
).join(', ');
