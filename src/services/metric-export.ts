/**
 * Reading every record that matches a filter, a batch at a time: keyset pagination on id through the same filterToSql
 * as the API, so memory holds one batch whatever the number of matches. Each batch is one indexed range read.
 */
import { database } from '../db/client.js';
import { Prisma } from '../generated/prisma/client.js';
import { filterToSql, type MetricFilter } from './metric-filter.js';
import { FIELD_SELECT_LIST, type StoredMetric } from './record.js';

/** A stored record as an export carries it: createdAt as ISO 8601 in UTC with microseconds, as stored. */
export interface ExportedMetric extends Omit<StoredMetric, 'createdAt'> {
  createdAt: string;
}

interface RawRow extends Omit<ExportedMetric, 'timestamp'> {
  /** int8: a bigint through Prisma. */
  timestamp: number | bigint;
}

/**
 * The records matching `filter` in id order, `batchSize` per query. Rows stored while the export runs are included
 * when their ids come after the current position (each batch is its own snapshot).
 */
export async function* exportMetrics(
  filter: MetricFilter | null | undefined,
  batchSize = 5000,
): AsyncGenerator<ExportedMetric[]> {
  const condition = filterToSql(filter);
  const prisma = database().prisma;
  let after = 0;
  for (;;) {
    const rows = await prisma.$queryRaw<RawRow[]>`
      SELECT id, ${Prisma.raw(FIELD_SELECT_LIST)},
             to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "createdAt"
      FROM user_metrics
      WHERE ${condition} AND id > ${after}::int4
      ORDER BY id
      LIMIT ${batchSize}`;
    if (rows.length === 0) return;
    yield rows.map((row) => ({ ...row, timestamp: Number(row.timestamp) }));
    after = (rows.at(-1) as RawRow).id;
    if (rows.length < batchSize) return;
  }
}
