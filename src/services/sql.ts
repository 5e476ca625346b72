/**
 * Read statements built with `Prisma.sql` (the filter translation composes them safely, every value a parameter), run
 * on the driver itself: the pg pool or PGlite (`Database.queryDirect`).
 *
 * Not through `$queryRaw`: for the statements a read request runs, Prisma's raw-query path (argument conversion, its
 * query interpreter, per-value result mapping) takes more CPU than the driver does. Rows come as the driver parses
 * them, the same from both: int4, int8 (parsed as numbers, src/db/client.ts), float8 and counts as numbers, numeric
 * as a string, timestamptz as a Date (as text on pg with `timestampsAsText`), json/jsonb parsed, text[] as an array.
 */
import { database, type QueryOptions } from '../db/client.js';
import type { Prisma } from '../generated/prisma/client.js';

/**
 * Runs one statement. Without `name` it is parsed and planned on each run, like `$queryRaw`: statements whose text
 * depends on the request's filter must not be named, or every filter shape would stay prepared on every connection.
 */
export async function runSql<Row>(sql: Prisma.Sql, name?: string, options?: QueryOptions): Promise<Row[]> {
  return database().queryDirect<Row>(sql.text, sql.values, name, options);
}
