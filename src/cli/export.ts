/**
 * `npm run export -- [--where JSON] [--format csv|ndjson] [--out file]`: streams the records matching a filter (the
 * GraphQL MetricFilter, as JSON) to a file or stdout, a batch at a time. The output imports back with `npm run import`.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { coerceInputValue, type GraphQLInputType, isInputType } from 'graphql';
import { formatCount, Progress } from '../bulk/progress.js';
import { CSV_HEADER, csvLine, ndjsonLine } from '../bulk/records.js';
import { loadConfig } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { schema } from '../schema/index.js';
import { exportMetrics } from '../services/metric-export.js';
import type { MetricFilter } from '../services/metric-filter.js';
import { choiceOption, integerOption, PROGRESS_MODES, parseCommandLine, UsageError } from './args.js';
import { connectForTool, describeDatabase } from './connect.js';
import { close, runTool, write } from './support.js';

const USAGE = `usage: npm run export -- [options]

  --where <json>          which records: the GraphQL MetricFilter as JSON, e.g.
                          '{"userId":{"in":["user-0001"]},"voiceSentiment":{"isNull":false}}'
  --format csv|ndjson     default: from --out's extension, else csv. CSV has the seed's column names
                          (id,event_id,user_id,...,created_at); NDJSON the API's camelCase names
  --out <file>            default: standard output
  --batch-size <n>        records per query, 100..50000 (default 5000)
  --progress bar|lines|none  (only with --out; default: a bar on a terminal, a line every 5 s otherwise)
  -h, --help

Reads DATABASE_URL, or the embedded database in DATA_DIR (stop the service first: it holds that folder).
The output imports back with npm run import (id and created_at are read past; the database assigns them).`;

/** The --where JSON checked and converted exactly as the API's `where` argument (types, names, DateTime values). */
function parseWhere(json: string): MetricFilter {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (error) {
    throw new UsageError(`--where is not valid JSON: ${(error as Error).message}`, false);
  }
  const type = schema.getType('MetricFilter');
  if (!type || !isInputType(type)) throw new Error('The schema has no MetricFilter input type');
  const problems: string[] = [];
  const coerced = coerceInputValue(value, type as GraphQLInputType, (pathTo, _invalid, error) => {
    const where = pathTo.length > 0 ? `where.${pathTo.join('.')}` : 'where';
    problems.push(`${where}: ${error.message}`);
  });
  if (problems.length > 0) {
    throw new UsageError(`--where is not a valid MetricFilter:\n  ${problems.join('\n  ')}`, false);
  }
  return coerced as MetricFilter;
}

async function main(): Promise<number> {
  const { values } = parseCommandLine({
    args: process.argv.slice(2),
    options: {
      where: { type: 'string' },
      format: { type: 'string' },
      out: { type: 'string' },
      'batch-size': { type: 'string' },
      progress: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const filter = values.where === undefined ? undefined : parseWhere(values.where);
  const extension = values.out ? path.extname(values.out).toLowerCase() : '';
  const format =
    choiceOption('format', values.format, ['csv', 'ndjson'] as const) ??
    (extension === '.ndjson' || extension === '.jsonl' ? 'ndjson' : 'csv');
  const batchSize = integerOption('batch-size', values['batch-size'], 5000, 100, 50_000);
  const progressMode = choiceOption('progress', values.progress, PROGRESS_MODES);

  const config = loadConfig();
  const db = await connectForTool(config, 'npm run export');
  const out: Writable = values.out ? fs.createWriteStream(values.out) : process.stdout;
  // `npm run export | head` closes the pipe early: that is the reader being done, not a failure.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    if (error.code === 'EPIPE') process.exit(0);
    throw error;
  });
  let rows = 0;
  const progress = new Progress({
    label: 'export',
    // On stdout the data is the output: progress would only go to a terminal's stderr, and only when asked.
    mode: progressMode ?? (values.out ? undefined : 'none'),
    sample: () => ({ rows }),
  });
  const started = performance.now();
  progress.start();
  try {
    if (format === 'csv') await write(out, `${CSV_HEADER.join(',')}\n`);
    for await (const batch of exportMetrics(filter, batchSize)) {
      let text = '';
      for (const row of batch) text += format === 'csv' ? csvLine(row) : ndjsonLine(row);
      rows += batch.length;
      await write(out, text);
    }
    await close(out);
  } finally {
    progress.stop();
    await disconnectDatabase();
  }
  const seconds = (performance.now() - started) / 1000;
  const rate = formatCount(rows / Math.max(seconds, 0.001));
  process.stderr.write(
    `Exported ${formatCount(rows)} records from ${describeDatabase(db)} as ${format === 'csv' ? 'CSV' : 'NDJSON'}` +
      `${values.out ? ` to ${values.out}` : ''} in ${seconds.toFixed(1)} s (${rate} records/s)\n`,
  );
  return 0;
}

runTool(USAGE, main);
