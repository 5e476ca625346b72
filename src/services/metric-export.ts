/**
 * Reading every record that matches a filter, a batch at a time: keyset pagination on id through the same filterToSql
 * as the API, so memory holds one batch whatever the number of matches. Each batch is one indexed range read.
 */
import { Prisma } from '../generated/prisma/client.js';
import { filterToSql, type MetricFilter } from './metric-filter.js';
import { FIELD_SELECT_LIST, type StoredMetric } from './record.js';
import { runSql } from './sql.js';

/** A stored record as an export carries it: createdAt as ISO 8601 in UTC with microseconds, as stored. */
export interface ExportedMetric extends Omit<StoredMetric, 'createdAt'> {
  createdAt: string;
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
  let after = 0;
  for (;;) {
    // On the driver (int8 as numbers), like the API's reads; a time range in the filter reads only its partitions.
    const rows = await runSql<ExportedMetric>(Prisma.sql`
      SELECT id, ${Prisma.raw(FIELD_SELECT_LIST)},
             to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS "createdAt"
      FROM user_metrics
      WHERE ${condition} AND id > ${after}::int8
      ORDER BY id
      LIMIT ${batchSize}`);
    if (rows.length === 0) return;
    yield rows;
    after = (rows.at(-1) as ExportedMetric).id;
    if (rows.length < batchSize) return;
  }
}
