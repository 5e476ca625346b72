/**
 * `npm run rollups -- rebuild [--from <time>] [--to <time>]`: recomputes the rollups of a time range from the raw rows
 * (after a bug, or rows written past the trigger). Ingestion and imports keep rollups right without it: a trigger on
 * user_metrics adds every stored row (README: "Rollups").
 */
import { loadConfig } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { rebuildRollups, SLOT_SECONDS } from '../services/rollups.js';
import { parseCommandLine, UsageError } from './args.js';
import { connectForTool, describeDatabase } from './connect.js';
import { runTool } from './support.js';

const USAGE = `usage: npm run rollups -- rebuild [--from <time>] [--to <time>]

  rebuild               recompute the rollups of [from, to) from the raw rows, widened to whole 15-minute slots;
                        slots whose raw rows are gone (retention) keep their rollups
  --from <time>         ISO 8601 (a date is its UTC midnight) or unix seconds; default: the earliest record
  --to <time>           the same; default: the latest record
  -h, --help

Runs on DATABASE_URL, or the embedded database in DATA_DIR (stop the service first: it holds that folder).
Inserts wait while a range is rebuilt.`;

/** A time option as unix seconds, or a UsageError naming it. */
function timeOption(name: string, raw: string | undefined): number | null {
  if (raw === undefined) return null;
  const seconds = /^\d+$/.test(raw) ? Number(raw) : Date.parse(raw) / 1000;
  if (!Number.isFinite(seconds)) {
    throw new UsageError(`--${name} must be an ISO 8601 time or unix seconds (got ${JSON.stringify(raw)})`);
  }
  return Math.floor(seconds);
}

const iso = (seconds: number) => new Date(seconds * 1000).toISOString();

async function main(): Promise<number> {
  const { values, positionals } = parseCommandLine({
    args: process.argv.slice(2),
    allowPositionals: true,
    options: {
      from: { type: 'string' },
      to: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] !== 'rebuild') {
    throw new UsageError(
      positionals.length === 0 ? 'name a command: rebuild' : `unknown command ${JSON.stringify(positionals.join(' '))}`,
    );
  }
  const from = timeOption('from', values.from);
  const to = timeOption('to', values.to);
  if (from !== null && to !== null && from >= to) throw new UsageError('--from must be before --to', false);

  const db = await connectForTool(loadConfig(), 'npm run rollups');
  const started = performance.now();
  try {
    const slots = await rebuildRollups(from, to);
    const start = from === null ? 'the start' : iso(Math.floor(from / SLOT_SECONDS) * SLOT_SECONDS);
    const end = to === null ? 'the end' : iso(Math.ceil(to / SLOT_SECONDS) * SLOT_SECONDS);
    const range = from === null && to === null ? 'every slot' : `${start} .. ${end}`;
    process.stdout.write(
      `Rebuilt the rollups of ${range} in ${describeDatabase(db)}: ${slots} slot(s) with raw rows, ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s\n`,
    );
  } finally {
    await disconnectDatabase();
  }
  return 0;
}

runTool(USAGE, main);
