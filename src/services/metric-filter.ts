/**
 * `MetricFilter` translated to one SQL condition. The `metrics` query, the aggregates and the subscription filter all
 * use this translation (and `matchesFilter`, its twin over one stored record), so a filter means the same everywhere.
 *
 * Semantics follow SQL: a null voiceSentiment is matched only by `isNull: true`; `notIn` and `NOT` do not match nulls.
 * String filters are case-sensitive; `startsWith` and `contains` take `%` and `_` literally.
 */
import { Prisma } from '../generated/prisma/client.js';
import { InputError } from './errors.js';

export class FilterError extends InputError {
  override readonly name = 'FilterError';
}

export interface StringFilter {
  equals?: string | null;
  in?: readonly string[] | null;
  notIn?: readonly string[] | null;
  startsWith?: string | null;
  contains?: string | null;
}

export interface NullableStringFilter extends StringFilter {
  isNull?: boolean | null;
}

export interface NumberFilter {
  equals?: number | null;
  in?: readonly number[] | null;
  gt?: number | null;
  gte?: number | null;
  lt?: number | null;
  lte?: number | null;
}

export interface DateTimeFilter {
  gt?: Date | null;
  gte?: Date | null;
  lt?: Date | null;
  lte?: Date | null;
}

export interface MetricFilter {
  userId?: StringFilter | null;
  sessionId?: StringFilter | null;
  voiceSentiment?: NullableStringFilter | null;
  timestamp?: NumberFilter | null;
  talkedTime?: NumberFilter | null;
  createdAt?: DateTimeFilter | null;
  microphoneUsed?: boolean | null;
  speakerUsed?: boolean | null;
  AND?: readonly MetricFilter[] | null;
  OR?: readonly MetricFilter[] | null;
  NOT?: MetricFilter | null;
}

/** A record as the filter sees it (a stored row). */
export interface FilterableMetric {
  userId: string;
  sessionId: string;
  voiceSentiment: string | null;
  timestamp: number;
  talkedTime: number;
  createdAt: Date;
  microphoneUsed: boolean;
  speakerUsed: boolean;
}

/** Limits that keep one filter from becoming an expensive statement. */
export const FILTER_LIMITS = { maxListValues: 1000, maxDepth: 8, maxConditions: 100 } as const;

const COLUMNS = {
  userId: Prisma.raw('user_id'),
  sessionId: Prisma.raw('session_id'),
  voiceSentiment: Prisma.raw('voice_sentiment'),
  timestamp: Prisma.raw('"timestamp"'),
  talkedTime: Prisma.raw('talked_time'),
  createdAt: Prisma.raw('created_at'),
  microphoneUsed: Prisma.raw('microphone_used'),
  speakerUsed: Prisma.raw('speaker_used'),
} as const;

const NUMBER_CASTS = { timestamp: Prisma.raw('int8'), talkedTime: Prisma.raw('int4') } as const;

/** Escapes LIKE's wildcards so the text matches literally (with the default escape character, backslash). */
export function escapeLike(text: string): string {
  return text.replace(/[\\%_]/g, (c) => `\\${c}`);
}

const TRUE = Prisma.sql`TRUE`;
const FALSE = Prisma.sql`FALSE`;

function and(parts: Prisma.Sql[]): Prisma.Sql {
  if (parts.length === 0) return TRUE;
  if (parts.length === 1) return parts[0] as Prisma.Sql;
  return Prisma.sql`(${Prisma.join(parts, ' AND ')})`;
}

function or(parts: Prisma.Sql[]): Prisma.Sql {
  if (parts.length === 0) return FALSE;
  if (parts.length === 1) return parts[0] as Prisma.Sql;
  return Prisma.sql`(${Prisma.join(parts, ' OR ')})`;
}

function checkList(list: readonly unknown[], path: string): void {
  if (list.length > FILTER_LIMITS.maxListValues) {
    throw new FilterError(
      `${path} has ${list.length} values; at most ${FILTER_LIMITS.maxListValues} are allowed`,
      path,
    );
  }
}

function checkText(value: string, path: string): void {
  if (value.includes('\0') || !value.isWellFormed()) {
    throw new FilterError(`${path} contains a NUL character or invalid Unicode, which no stored value can match`, path);
  }
}

function stringCondition(column: Prisma.Sql, filter: NullableStringFilter, path: string): Prisma.Sql[] {
  const parts: Prisma.Sql[] = [];
  if (filter.equals != null) {
    checkText(filter.equals, `${path}.equals`);
    parts.push(Prisma.sql`${column} = ${filter.equals}`);
  }
  if (filter.in != null) {
    checkList(filter.in, `${path}.in`);
    for (const [i, v] of filter.in.entries()) checkText(v, `${path}.in[${i}]`);
    // An empty list is false for a value and unknown for a null (`col <> col`), so that NOT of it still skips nulls.
    parts.push(
      filter.in.length === 0
        ? Prisma.sql`${column} <> ${column}`
        : Prisma.sql`${column} = ANY(${[...filter.in]}::text[])`,
    );
  }
  if (filter.notIn != null) {
    checkList(filter.notIn, `${path}.notIn`);
    for (const [i, v] of filter.notIn.entries()) checkText(v, `${path}.notIn[${i}]`);
    parts.push(
      filter.notIn.length === 0
        ? Prisma.sql`${column} = ${column}` // true for a value, unknown for a null: nulls match neither it nor its NOT
        : Prisma.sql`${column} <> ALL(${[...filter.notIn]}::text[])`,
    );
  }
  if (filter.startsWith != null) {
    checkText(filter.startsWith, `${path}.startsWith`);
    parts.push(Prisma.sql`${column} LIKE ${`${escapeLike(filter.startsWith)}%`}`);
  }
  if (filter.contains != null) {
    checkText(filter.contains, `${path}.contains`);
    parts.push(Prisma.sql`${column} LIKE ${`%${escapeLike(filter.contains)}%`}`);
  }
  if (filter.isNull != null)
    parts.push(filter.isNull ? Prisma.sql`${column} IS NULL` : Prisma.sql`${column} IS NOT NULL`);
  return parts;
}

function numberCondition(column: Prisma.Sql, cast: Prisma.Sql, filter: NumberFilter, path: string): Prisma.Sql[] {
  const parts: Prisma.Sql[] = [];
  if (filter.equals != null) parts.push(Prisma.sql`${column} = ${filter.equals}::${cast}`);
  if (filter.in != null) {
    checkList(filter.in, `${path}.in`);
    parts.push(filter.in.length === 0 ? FALSE : Prisma.sql`${column} = ANY(${[...filter.in]}::${cast}[])`);
  }
  if (filter.gt != null) parts.push(Prisma.sql`${column} > ${filter.gt}::${cast}`);
  if (filter.gte != null) parts.push(Prisma.sql`${column} >= ${filter.gte}::${cast}`);
  if (filter.lt != null) parts.push(Prisma.sql`${column} < ${filter.lt}::${cast}`);
  if (filter.lte != null) parts.push(Prisma.sql`${column} <= ${filter.lte}::${cast}`);
  return parts;
}

function dateCondition(column: Prisma.Sql, filter: DateTimeFilter): Prisma.Sql[] {
  const parts: Prisma.Sql[] = [];
  const iso = (d: Date) => d.toISOString();
  if (filter.gt != null) parts.push(Prisma.sql`${column} > ${iso(filter.gt)}::timestamptz`);
  if (filter.gte != null) parts.push(Prisma.sql`${column} >= ${iso(filter.gte)}::timestamptz`);
  if (filter.lt != null) parts.push(Prisma.sql`${column} < ${iso(filter.lt)}::timestamptz`);
  if (filter.lte != null) parts.push(Prisma.sql`${column} <= ${iso(filter.lte)}::timestamptz`);
  return parts;
}

/** The SQL condition for `filter` (TRUE when there is none). Throws FilterError naming the offending path. */
export function filterToSql(filter: MetricFilter | null | undefined): Prisma.Sql {
  if (!filter) return TRUE;
  let conditions = 0;
  const walk = (f: MetricFilter, path: string, depth: number): Prisma.Sql => {
    if (depth > FILTER_LIMITS.maxDepth) {
      throw new FilterError(`${path} nests AND/OR/NOT more than ${FILTER_LIMITS.maxDepth} levels deep`, path);
    }
    const parts: Prisma.Sql[] = [];
    if (f.userId) parts.push(...stringCondition(COLUMNS.userId, f.userId, `${path}.userId`));
    if (f.sessionId) parts.push(...stringCondition(COLUMNS.sessionId, f.sessionId, `${path}.sessionId`));
    if (f.voiceSentiment)
      parts.push(...stringCondition(COLUMNS.voiceSentiment, f.voiceSentiment, `${path}.voiceSentiment`));
    if (f.timestamp)
      parts.push(...numberCondition(COLUMNS.timestamp, NUMBER_CASTS.timestamp, f.timestamp, `${path}.timestamp`));
    if (f.talkedTime)
      parts.push(...numberCondition(COLUMNS.talkedTime, NUMBER_CASTS.talkedTime, f.talkedTime, `${path}.talkedTime`));
    if (f.createdAt) parts.push(...dateCondition(COLUMNS.createdAt, f.createdAt));
    if (f.microphoneUsed != null) parts.push(Prisma.sql`${COLUMNS.microphoneUsed} = ${f.microphoneUsed}`);
    if (f.speakerUsed != null) parts.push(Prisma.sql`${COLUMNS.speakerUsed} = ${f.speakerUsed}`);
    if (f.AND) parts.push(and(f.AND.map((sub, i) => walk(sub, `${path}.AND[${i}]`, depth + 1))));
    if (f.OR) parts.push(or(f.OR.map((sub, i) => walk(sub, `${path}.OR[${i}]`, depth + 1))));
    if (f.NOT) parts.push(Prisma.sql`NOT ${walk(f.NOT, `${path}.NOT`, depth + 1)}`);
    conditions += parts.length;
    if (conditions > FILTER_LIMITS.maxConditions) {
      throw new FilterError(`the filter has more than ${FILTER_LIMITS.maxConditions} conditions`, path);
    }
    return and(parts);
  };
  return walk(filter, 'where', 0);
}

/**
 * SQL's three-valued logic over one record: `true`, `false` or `null` (unknown). A record matches when this is `true`.
 * Mirrors `filterToSql` exactly, for filtering records in memory (the subscription).
 */
export function matchesFilter(record: FilterableMetric, filter: MetricFilter | null | undefined): boolean {
  return evaluate(record, filter ?? {}) === true;
}

type Tri = boolean | null;

function all(values: Tri[]): Tri {
  if (values.some((v) => v === false)) return false;
  return values.some((v) => v === null) ? null : true;
}

function any(values: Tri[]): Tri {
  if (values.some((v) => v === true)) return true;
  return values.some((v) => v === null) ? null : false;
}

function likePrefix(value: string, prefix: string): boolean {
  return value.startsWith(prefix);
}

function stringTri(value: string | null, f: NullableStringFilter): Tri[] {
  const out: Tri[] = [];
  const known = value !== null;
  if (f.equals != null) out.push(known ? value === f.equals : null);
  if (f.in != null) out.push(known ? f.in.includes(value) : null);
  if (f.notIn != null) out.push(known ? !f.notIn.includes(value) : null);
  if (f.startsWith != null) out.push(known ? likePrefix(value, f.startsWith) : null);
  if (f.contains != null) out.push(known ? value.includes(f.contains) : null);
  if (f.isNull != null) out.push(f.isNull ? !known : known);
  return out;
}

function numberTri(value: number, f: NumberFilter): Tri[] {
  const out: Tri[] = [];
  if (f.equals != null) out.push(value === f.equals);
  if (f.in != null) out.push(f.in.includes(value));
  if (f.gt != null) out.push(value > f.gt);
  if (f.gte != null) out.push(value >= f.gte);
  if (f.lt != null) out.push(value < f.lt);
  if (f.lte != null) out.push(value <= f.lte);
  return out;
}

function evaluate(r: FilterableMetric, f: MetricFilter): Tri {
  const parts: Tri[] = [];
  if (f.userId) parts.push(...stringTri(r.userId, f.userId));
  if (f.sessionId) parts.push(...stringTri(r.sessionId, f.sessionId));
  if (f.voiceSentiment) parts.push(...stringTri(r.voiceSentiment, f.voiceSentiment));
  if (f.timestamp) parts.push(...numberTri(r.timestamp, f.timestamp));
  if (f.talkedTime) parts.push(...numberTri(r.talkedTime, f.talkedTime));
  if (f.createdAt) {
    const t = r.createdAt.getTime();
    const c = f.createdAt;
    if (c.gt != null) parts.push(t > c.gt.getTime());
    if (c.gte != null) parts.push(t >= c.gte.getTime());
    if (c.lt != null) parts.push(t < c.lt.getTime());
    if (c.lte != null) parts.push(t <= c.lte.getTime());
  }
  if (f.microphoneUsed != null) parts.push(r.microphoneUsed === f.microphoneUsed);
  if (f.speakerUsed != null) parts.push(r.speakerUsed === f.speakerUsed);
  if (f.AND) parts.push(all(f.AND.map((sub) => evaluate(r, sub))));
  if (f.OR) parts.push(any(f.OR.map((sub) => evaluate(r, sub))));
  if (f.NOT) {
    const inner = evaluate(r, f.NOT);
    parts.push(inner === null ? null : !inner);
  }
  return all(parts);
}
