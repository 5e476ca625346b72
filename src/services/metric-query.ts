/**
 * Reading stored metrics: a filtered, ordered page with keyset cursors, and the total count on request.
 */
import { Prisma } from '../generated/prisma/client.js';
import { InputError } from './errors.js';
import { filterToSql, type MetricFilter } from './metric-filter.js';
import { FIELD_SELECT_LIST, type StoredMetric } from './record.js';
import { runSql } from './sql.js';

export type OrderField = 'TIMESTAMP' | 'TALKED_TIME' | 'CREATED_AT';
export type OrderDirection = 'ASC' | 'DESC';
export interface MetricOrder {
  field: OrderField;
  direction: OrderDirection;
}

export const PAGE_LIMITS = { defaultFirst: 100, maxFirst: 1000 } as const;
export const DEFAULT_ORDER: readonly MetricOrder[] = [{ field: 'TIMESTAMP', direction: 'DESC' }];

/** A client mistake in paging arguments: a bad `first`, a foreign or damaged cursor, a repeated order field. */
export class PageArgumentError extends InputError {
  override readonly name = 'PageArgumentError';
}

const ORDER_COLUMNS: Record<OrderField, { column: string; cast: string }> = {
  TIMESTAMP: { column: '"timestamp"', cast: 'int8' },
  TALKED_TIME: { column: 'talked_time', cast: 'int4' },
  CREATED_AT: { column: 'created_at', cast: 'timestamptz' },
};

export interface MetricRow extends StoredMetric {
  /** created_at with its full microsecond precision, for cursors. */
  createdAtExact: string;
}

export interface MetricPage {
  rows: MetricRow[];
  /** The cursor after `row` (one of `rows`): made when asked for, since most clients read only `endCursor`. */
  cursorOf: (row: MetricRow) => string;
  hasNextPage: boolean;
  /** Runs the count only when called (the `totalCount` field). */
  totalCount: () => Promise<number>;
}

export interface PageArgs {
  where?: MetricFilter | null;
  orderBy?: readonly MetricOrder[] | null;
  first?: number | null;
  after?: string | null;
}

const SELECT_COLUMNS = Prisma.sql`id, ${Prisma.raw(FIELD_SELECT_LIST)}, created_at AS "createdAt",
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "createdAtExact"`;

function orderSignature(order: readonly MetricOrder[]): string {
  return order.map((o) => `${o.field}:${o.direction}`).join(',');
}

function cursorValue(row: MetricRow, field: OrderField): string | number {
  if (field === 'TIMESTAMP') return row.timestamp;
  if (field === 'TALKED_TIME') return row.talkedTime;
  return row.createdAtExact;
}

/** The largest value of each integer column a cursor can carry (the casts in afterCondition). */
const INT4_MAX = 2_147_483_647;
/** Ids are int8 (64-bit); those the service hands out stay below 2^53, where a JSON number is exact. */
const ID_MAX = Number.MAX_SAFE_INTEGER;

function isStoredInt(value: unknown, max: number): boolean {
  return Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max;
}

/** created_at as this service writes it into a cursor: a real UTC time with microseconds, years 1970 to 9999. */
const CREATED_AT_TEXT = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z$/;

function isCreatedAtText(value: unknown): boolean {
  if (typeof value !== 'string') return false;
  const match = CREATED_AT_TEXT.exec(value);
  if (!match) return false;
  const [year, month, day, hour, minute, second] = match.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const time = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Date.UTC rolls 2020-02-30 over to March: a date that does not round-trip does not exist.
  return (
    year >= 1970 &&
    time.getUTCFullYear() === year &&
    time.getUTCMonth() === month - 1 &&
    time.getUTCDate() === day &&
    time.getUTCHours() === hour &&
    time.getUTCMinutes() === minute &&
    time.getUTCSeconds() === second
  );
}

/**
 * What each order field's cursor value must be: a value its column can hold, so that a forged one never reaches SQL.
 */
const CURSOR_VALUE_CHECKS: Record<OrderField, (value: unknown) => boolean> = {
  TIMESTAMP: (value) => Number.isSafeInteger(value),
  TALKED_TIME: (value) => isStoredInt(value, INT4_MAX),
  CREATED_AT: isCreatedAtText,
};

function encodeCursor(order: readonly MetricOrder[], row: MetricRow): string {
  const payload = { o: orderSignature(order), v: [...order.map((o) => cursorValue(row, o.field)), row.id] };
  return Buffer.from(JSON.stringify(payload)).toString('base64url');
}

function decodeCursor(cursor: string, order: readonly MetricOrder[]): unknown[] {
  let payload: { o?: unknown; v?: unknown };
  try {
    payload = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as { o?: unknown; v?: unknown };
  } catch {
    throw new PageArgumentError('after is not a cursor this service issued', 'after');
  }
  if (payload?.o !== orderSignature(order)) {
    throw new PageArgumentError(
      `after is a cursor of another order (${String(payload?.o)}); it can only continue orderBy ` +
        `${orderSignature(order)}`,
      'after',
    );
  }
  const values = payload.v;
  const valid =
    Array.isArray(values) &&
    values.length === order.length + 1 &&
    order.every((o, i) => CURSOR_VALUE_CHECKS[o.field](values[i])) &&
    isStoredInt(values[order.length], ID_MAX);
  if (!valid) throw new PageArgumentError('after is not a cursor this service issued', 'after');
  return values;
}

/** Rows strictly after the cursor in the given order (id breaks ties in the direction of the first order). */
function afterCondition(order: readonly MetricOrder[], values: unknown[]): Prisma.Sql {
  const keys = [
    ...order.map((o, i) => ({ ...ORDER_COLUMNS[o.field], direction: o.direction, value: values[i] })),
    { column: 'id', cast: 'int8', direction: order[0]?.direction ?? 'DESC', value: values[order.length] },
  ];
  const term = (k: (typeof keys)[number], op: string) =>
    Prisma.sql`${Prisma.raw(k.column)} ${Prisma.raw(op)} ${k.value}::${Prisma.raw(k.cast)}`;
  if (keys.every((k) => k.direction === keys[0]?.direction)) {
    // One row comparison: PostgreSQL can walk an index with it.
    const op = keys[0]?.direction === 'ASC' ? '>' : '<';
    return Prisma.sql`(${Prisma.join(keys.map((k) => Prisma.raw(k.column)))}) ${Prisma.raw(op)} (${Prisma.join(
      keys.map((k) => Prisma.sql`${k.value}::${Prisma.raw(k.cast)}`),
    )})`;
  }
  const alternatives = keys.map((key, i) => {
    const equalBefore = keys.slice(0, i).map((k) => term(k, '='));
    return Prisma.sql`(${Prisma.join([...equalBefore, term(key, key.direction === 'ASC' ? '>' : '<')], ' AND ')})`;
  });
  return Prisma.sql`(${Prisma.join(alternatives, ' OR ')})`;
}

export function normalizeOrder(orderBy: readonly MetricOrder[] | null | undefined): readonly MetricOrder[] {
  if (!orderBy || orderBy.length === 0) return DEFAULT_ORDER;
  const seen = new Set<OrderField>();
  for (const o of orderBy) {
    if (seen.has(o.field)) throw new PageArgumentError(`orderBy names ${o.field} more than once`, 'orderBy');
    seen.add(o.field);
  }
  return orderBy;
}

export function checkFirst(first: number | null | undefined): number {
  const n = first ?? PAGE_LIMITS.defaultFirst;
  if (!Number.isInteger(n) || n < 1 || n > PAGE_LIMITS.maxFirst) {
    throw new PageArgumentError(`first must be between 1 and ${PAGE_LIMITS.maxFirst} (got ${n})`, 'first');
  }
  return n;
}

export async function findMetricPage(args: PageArgs): Promise<MetricPage> {
  const first = checkFirst(args.first);
  const order = normalizeOrder(args.orderBy);
  const filter = filterToSql(args.where);
  const conditions = [filter];
  if (args.after != null) conditions.push(afterCondition(order, decodeCursor(args.after, order)));
  const idDirection = Prisma.raw(order[0]?.direction ?? 'DESC');
  const orderSql = Prisma.join([
    ...order.map((o) => Prisma.sql`${Prisma.raw(ORDER_COLUMNS[o.field].column)} ${Prisma.raw(o.direction)}`),
    Prisma.sql`id ${idDirection}`,
  ]);
  const fetched = await runSql<MetricRow>(
    Prisma.sql`
    SELECT ${SELECT_COLUMNS} FROM user_metrics
    WHERE ${Prisma.join(conditions, ' AND ')}
    ORDER BY ${orderSql}
    LIMIT ${first + 1}`,
    undefined,
    CREATED_AT_FROM_TEXT,
  );
  const rows = fetched.slice(0, first).map(normalizeRow);
  return {
    rows,
    cursorOf: (row) => encodeCursor(order, row),
    hasNextPage: fetched.length > first,
    totalCount: async () => {
      const [result] = await runSql<{ count: number }>(
        Prisma.sql`SELECT count(*) AS count FROM user_metrics WHERE ${filter}`,
      );
      return Number(result?.count ?? 0);
    },
  };
}

/**
 * int8 comes as a number from both drivers today; normalised anyway, the service speaks numbers (unix seconds fit in
 * 2^53). created_at is read as text on pg (CREATED_AT_FROM_TEXT) and made from the exact ISO text, which V8 parses
 * faster than pg's date parser does; to the millisecond, as a Date from either.
 */
function normalizeRow(row: MetricRow): MetricRow {
  if (typeof row.timestamp !== 'number') row.timestamp = Number(row.timestamp);
  if (!(row.createdAt instanceof Date)) row.createdAt = new Date(row.createdAtExact);
  return row;
}

/** The reads below take created_at from createdAtExact (normalizeRow): pg need not parse it. */
const CREATED_AT_FROM_TEXT = { timestampsAsText: true } as const;

export async function findMetricById(id: number): Promise<MetricRow | null> {
  const [row] = await runSql<MetricRow>(
    Prisma.sql`SELECT ${SELECT_COLUMNS} FROM user_metrics WHERE id = ${id}`,
    undefined,
    CREATED_AT_FROM_TEXT,
  );
  return row ? normalizeRow(row) : null;
}
