/**
 * Metric records as files carry them: NDJSON objects and CSV rows, with the seed's snake_case column names
 * (`user_id`, `talked_time`, ...) or the API's camelCase names (`userId`, `talkedTime`, ...).
 *
 * This module only turns text into typed `MetricRecordInput`s (or says why it cannot); the rules a record must meet
 * to be stored are validateRecord's, applied by the ingestion services exactly as for the API.
 */
import type { MetricRecordInput } from '../services/validation.js';
import { csvField } from './csv.js';

/** Why a line was not stored. `field` is the API's field name, or null for a problem with the whole line. */
export interface LineProblem {
  field: string | null;
  code: string;
  message: string;
}

/** The record's fields whose values are of type T (null aside). */
type FieldsOf<T> = {
  [K in keyof MetricRecordInput]-?: NonNullable<MetricRecordInput[K]> extends T ? K : never;
}[keyof MetricRecordInput];

/** A field, its file column and its type; the name's type follows the kind, so a value of that kind can be set. */
type FieldSpec = { column: string; required: boolean } & (
  | { name: FieldsOf<string>; kind: 'text' }
  | { name: FieldsOf<number>; kind: 'integer' }
  | { name: FieldsOf<boolean>; kind: 'boolean' }
);

/** The record fields in the order of the seed's table, with the column names files use for them. */
export const FIELDS: readonly FieldSpec[] = [
  { name: 'eventId', column: 'event_id', kind: 'text', required: false },
  { name: 'userId', column: 'user_id', kind: 'text', required: true },
  { name: 'sessionId', column: 'session_id', kind: 'text', required: true },
  { name: 'timestamp', column: 'timestamp', kind: 'integer', required: true },
  { name: 'talkedTime', column: 'talked_time', kind: 'integer', required: true },
  { name: 'microphoneUsed', column: 'microphone_used', kind: 'boolean', required: true },
  { name: 'speakerUsed', column: 'speaker_used', kind: 'boolean', required: true },
  { name: 'voiceSentiment', column: 'voice_sentiment', kind: 'text', required: false },
];

/** Columns an export carries besides the record's fields; an import reads past them (the database assigns both). */
export const INFORMATIONAL_COLUMNS = ['id', 'created_at', 'createdAt', 'occurred_at', 'occurredAt'] as const;

/** The export's CSV header: the seed's column names. */
export const CSV_HEADER = ['id', ...FIELDS.map((f) => f.column), 'created_at'] as const;

const BY_KEY = new Map<string, FieldSpec>();
for (const spec of FIELDS) {
  BY_KEY.set(spec.name, spec);
  BY_KEY.set(spec.column, spec);
}

/** The field a file key or column name stands for (either naming style), or undefined. */
export function fieldFor(key: string): FieldSpec | undefined {
  return BY_KEY.get(key);
}

const INTEGER = /^[+-]?\d{1,16}$/;
const BOOLEAN_TEXT = new Map<string, boolean>([
  ['true', true],
  ['t', true],
  ['1', true],
  ['false', false],
  ['f', false],
  ['0', false],
]);

function missing(spec: FieldSpec): LineProblem {
  return { field: spec.name, code: 'MISSING', message: `${spec.name} (${spec.column}) is required` };
}

function wrongType(spec: FieldSpec, shown: string): LineProblem {
  const expected =
    spec.kind === 'integer'
      ? 'an integer'
      : spec.kind === 'boolean'
        ? 'true or false'
        : spec.required
          ? 'a string'
          : 'a string or null';
  return {
    field: spec.name,
    code: 'WRONG_TYPE',
    message: `${spec.name} must be ${expected}${spec.name === 'timestamp' ? ' (unix seconds)' : ''}; got ${shown}`,
  };
}

function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/**
 * The record a conversion fills in: optional fields null until a file gives them. One object shape for every record
 * (and no per-key iteration): this runs for every line of large files.
 */
function emptyRecord(): MetricRecordInput {
  return {
    eventId: null,
    userId: '',
    sessionId: '',
    timestamp: 0,
    talkedTime: 0,
    microphoneUsed: false,
    speakerUsed: false,
    voiceSentiment: null,
  };
}

export type Conversion =
  | { record: MetricRecordInput; problems?: undefined }
  | { record?: undefined; problems: LineProblem[] };

/**
 * A JSON value (one NDJSON line, parsed) as a record. Types are JSON's own, as the API takes them: numbers for
 * integers, true/false for booleans, strings or null for text. Keys the importer does not know are ignored.
 */
export function recordFromJson(value: unknown): Conversion {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return {
      problems: [{ field: null, code: 'NOT_AN_OBJECT', message: `the line must be a JSON object; got ${show(value)}` }],
    };
  }
  const source = value as Record<string, unknown>;
  const out = emptyRecord();
  const problems: LineProblem[] = [];
  for (const spec of FIELDS) {
    const camel = Object.hasOwn(source, spec.name) ? source[spec.name] : undefined;
    const snake = spec.column !== spec.name && Object.hasOwn(source, spec.column) ? source[spec.column] : undefined;
    if (camel !== undefined && snake !== undefined) {
      const message = `${spec.name} is given twice (as ${spec.name} and ${spec.column})`;
      problems.push({ field: spec.name, code: 'REPEATED', message });
      continue;
    }
    const raw = camel !== undefined ? camel : snake;
    if (raw === null || raw === undefined) {
      if (spec.required) problems.push(missing(spec));
    } else if (spec.kind === 'text' && typeof raw === 'string') {
      out[spec.name] = raw;
    } else if (spec.kind === 'integer' && typeof raw === 'number' && Number.isSafeInteger(raw)) {
      out[spec.name] = raw;
    } else if (spec.kind === 'boolean' && typeof raw === 'boolean') {
      out[spec.name] = raw;
    } else {
      problems.push(wrongType(spec, show(raw)));
    }
  }
  return problems.length > 0 ? { problems } : { record: out };
}

/** Where each record field sits in a CSV row, from the header. */
export interface CsvLayout {
  columns: readonly string[];
  /** Per field of FIELDS, the column index, or -1 when the file has no such column. */
  positions: readonly number[];
  /** Header names the importer does not know (they are read past). */
  ignored: readonly string[];
}

export class CsvHeaderError extends Error {
  override readonly name = 'CsvHeaderError';
}

/** Reads the header row. Throws CsvHeaderError when a required column is missing or named twice. */
export function csvLayout(header: readonly (string | null)[]): CsvLayout {
  const columns = header.map((h, i) => (i === 0 ? (h ?? '').replace(/^\uFEFF/, '') : (h ?? '')).trim());
  const positions = FIELDS.map(() => -1);
  const ignored: string[] = [];
  columns.forEach((name, index) => {
    const spec = BY_KEY.get(name);
    if (!spec) {
      if (!(INFORMATIONAL_COLUMNS as readonly string[]).includes(name)) {
        ignored.push(name === '' ? `(unnamed column ${index + 1})` : name);
      }
      return;
    }
    const at = FIELDS.indexOf(spec);
    if (positions[at] !== -1) throw new CsvHeaderError(`the header names ${spec.column} (${spec.name}) twice`);
    positions[at] = index;
  });
  const absent = FIELDS.filter((spec, i) => spec.required && positions[i] === -1);
  if (absent.length > 0) {
    const expected = FIELDS.map((f) => f.column).join(',');
    const camelCase = FIELDS.map((f) => f.name).join(',');
    throw new CsvHeaderError(
      `the header lacks ${absent.map((s) => s.column).join(', ')}. ` +
        `Expected columns: ${expected} (or the camelCase names ${camelCase}); got: ${columns.join(',')}`,
    );
  }
  return { columns, positions, ignored };
}

/**
 * A CSV row as a record. An unquoted empty field is null (an absent eventId or voiceSentiment); `""` is the empty
 * string. Integers are decimal digits; booleans are true/false, t/f or 1/0 in any case.
 */
export function recordFromCsv(fields: readonly (string | null)[], layout: CsvLayout): Conversion {
  if (fields.length !== layout.columns.length) {
    return {
      problems: [
        {
          field: null,
          code: 'WRONG_COLUMN_COUNT',
          message: `the row has ${fields.length} fields; the header has ${layout.columns.length}`,
        },
      ],
    };
  }
  const out = emptyRecord();
  const problems: LineProblem[] = [];
  FIELDS.forEach((spec, i) => {
    const position = layout.positions[i] ?? -1;
    const raw = position === -1 ? null : (fields[position] ?? null);
    if (raw === null) {
      if (spec.required) problems.push(missing(spec));
    } else if (spec.kind === 'text') {
      out[spec.name] = raw;
    } else if (spec.kind === 'integer') {
      const text = raw.trim();
      const value = INTEGER.test(text) ? Number(text) : Number.NaN;
      if (Number.isSafeInteger(value)) out[spec.name] = value;
      else problems.push(wrongType(spec, show(raw)));
    } else {
      const value = BOOLEAN_TEXT.get(raw.trim().toLowerCase());
      if (value === undefined) problems.push(wrongType(spec, show(raw)));
      else out[spec.name] = value;
    }
  });
  return problems.length > 0 ? { problems } : { record: out };
}

/** A record as files carry it out: the record's fields, plus the stored row's id and created_at when it has them. */
export interface FileRow extends MetricRecordInput {
  id?: number | null;
  /** ISO 8601, UTC. */
  createdAt?: string | null;
}

/** One CSV line under CSV_HEADER (null as an empty field, the empty string as ""). */
export function csvLine(row: FileRow): string {
  const fields = [
    row.id ?? null,
    row.eventId ?? null,
    row.userId,
    row.sessionId,
    row.timestamp,
    row.talkedTime,
    row.microphoneUsed,
    row.speakerUsed,
    row.voiceSentiment ?? null,
    row.createdAt ?? null,
  ];
  return `${fields.map(csvField).join(',')}\n`;
}

/** One NDJSON line with the API's camelCase names. */
export function ndjsonLine(row: FileRow): string {
  const object = {
    ...(row.id != null ? { id: row.id } : {}),
    eventId: row.eventId ?? null,
    userId: row.userId,
    sessionId: row.sessionId,
    timestamp: row.timestamp,
    talkedTime: row.talkedTime,
    microphoneUsed: row.microphoneUsed,
    speakerUsed: row.speakerUsed,
    voiceSentiment: row.voiceSentiment ?? null,
    ...(row.createdAt != null ? { createdAt: row.createdAt } : {}),
  };
  return `${JSON.stringify(object)}\n`;
}
