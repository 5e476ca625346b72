/**
 * `npm run import -- <file>`: loads metric records from NDJSON or CSV into the configured database (DATABASE_URL, or
 * the embedded database in DATA_DIR), with the API's validation and identities: re-running a file stores nothing new.
 * The file streams through (memory does not grow with its size); rejected lines go to a file with their reasons.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { CsvReader, type CsvRecord, csvField, LineSplitter } from '../bulk/csv.js';
import { BatchLoader } from '../bulk/loader.js';
import { formatBytes, formatCount, Progress } from '../bulk/progress.js';
import {
  CsvHeaderError,
  type CsvLayout,
  csvLayout,
  type LineProblem,
  recordFromCsv,
  recordFromJson,
} from '../bulk/records.js';
import { loadConfig } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { type BulkMethod, openBulkWriter } from '../services/bulk-import.js';
import { choiceOption, integerOption, PROGRESS_MODES, parseCommandLine, UsageError } from './args.js';
import { connectForTool, describeDatabase, ToolError } from './connect.js';
import { close, runTool } from './support.js';

const USAGE = `usage: npm run import -- <file> [options]

  <file>                  NDJSON (.ndjson, .jsonl) or CSV (.csv) of metric records; - reads standard input.
                          Column names: the seed's (user_id, session_id, timestamp, talked_time, microphone_used,
                          speaker_used, voice_sentiment, event_id) or the API's camelCase (userId, ...).
  --format csv|ndjson     the file's format (default: from the extension, else from its first character)
  --rejected <file>       where rejected lines go, one JSON object each with the line number and the reasons
                          (default: <file>.rejected.ndjson; replaced on every run, none written when nothing
                          is rejected)
  --batch-size <n>        records per database batch, 100..100000 (default 10000)
  --method copy|insert    copy: COPY into a temporary table, then one INSERT ... ON CONFLICT DO NOTHING (PostgreSQL);
                          insert: the API's multi-row INSERT. Default: copy on PostgreSQL, insert on the embedded
                          database
  --progress bar|lines|none  default: a bar on a terminal, a line every 5 s otherwise
  -h, --help

Database: DATABASE_URL=postgres://... or the embedded database in DATA_DIR (default ./.data). The embedded database
serves one process at a time: stop the service first. Re-running a file adds nothing (same identities as the API).`;

type Format = 'csv' | 'ndjson';

interface Options {
  file: string;
  format: Format | undefined;
  rejectedPath: string;
  batchSize: number;
  method: BulkMethod | undefined;
  progress: 'bar' | 'lines' | 'none' | undefined;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values, positionals } = parseCommandLine({
    args: argv,
    allowPositionals: true,
    options: {
      format: { type: 'string' },
      rejected: { type: 'string' },
      'batch-size': { type: 'string' },
      method: { type: 'string' },
      progress: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return undefined;
  if (positionals.length !== 1) {
    throw new UsageError(positionals.length === 0 ? 'Name the file to import.' : 'Import one file at a time.');
  }
  const file = positionals[0] as string;
  return {
    file,
    format: choiceOption('format', values.format, ['csv', 'ndjson'] as const),
    rejectedPath: values.rejected ?? (file === '-' ? 'stdin.rejected.ndjson' : `${file}.rejected.ndjson`),
    batchSize: integerOption('batch-size', values['batch-size'], 10_000, 100, 100_000),
    method: choiceOption('method', values.method, ['copy', 'insert'] as const),
    progress: choiceOption('progress', values.progress, PROGRESS_MODES),
  };
}

function formatFromName(file: string): Format | undefined {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.csv') return 'csv';
  if (ext === '.ndjson' || ext === '.jsonl') return 'ndjson';
  return undefined;
}

function formatFromContent(firstChunk: string): Format {
  const start = firstChunk.replace(/^\uFEFF/, '').trimStart();
  if (start.startsWith('[')) {
    throw new ToolError('The input starts with [: a JSON array. Give NDJSON instead, one record object per line.');
  }
  return start.startsWith('{') ? 'ndjson' : 'csv';
}

/** The rejected-lines file, opened at the first rejection. */
class RejectedLines {
  private stream: fs.WriteStream | undefined;
  count = 0;

  constructor(private readonly file: string) {
    // A file left by an earlier run would describe lines this run may have stored: it is this command's output,
    // replace it.
    fs.rmSync(file, { force: true });
  }

  add(line: number, reasons: readonly LineProblem[], text: string): void {
    this.stream ??= fs.createWriteStream(this.file);
    this.count++;
    const entry = { line, reasons: reasons.map(({ field, code, message }) => ({ field, code, message })), text };
    this.stream.write(`${JSON.stringify(entry)}\n`);
  }

  get writable(): Writable | undefined {
    return this.stream;
  }

  async close(): Promise<void> {
    if (this.stream) await close(this.stream);
  }
}

/**
 * Reads the file's first 64 kB to settle its format and, for CSV, check the header, before the database is opened:
 * a wrong file fails at once, not after the embedded database's start-up.
 */
function checkFileStart(file: string, format: Format | undefined): Format | undefined {
  const buffer = Buffer.alloc(64 * 1024);
  const fd = fs.openSync(file, 'r');
  let head: string;
  try {
    head = buffer.toString('utf8', 0, fs.readSync(fd, buffer, 0, buffer.length, 0));
  } finally {
    fs.closeSync(fd);
  }
  if (head.trim() === '') return format;
  const detected = format ?? formatFromContent(head);
  if (detected !== 'csv') return detected;
  let header: (string | null)[] | undefined;
  const reader = new CsvReader();
  const keepHeader = (record: CsvRecord) => {
    header ??= record.fields;
  };
  new LineSplitter().push(head, (raw, line) => {
    if (!header) reader.line(raw, line, keepHeader, () => {});
  });
  if (header) {
    try {
      csvLayout(header);
    } catch (error) {
      if (error instanceof CsvHeaderError) {
        throw new ToolError(`${file}: the first line is not a usable CSV header: ${error.message}`);
      }
      throw error;
    }
  }
  return detected;
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  if (!options) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const config = loadConfig();
  let size: number | undefined;
  let input: Readable;
  if (options.file === '-') {
    input = process.stdin;
    process.stdin.setEncoding('utf8');
  } else {
    let stat: fs.Stats;
    try {
      stat = fs.statSync(options.file);
    } catch {
      throw new ToolError(`Cannot read ${options.file}: no such file`);
    }
    if (!stat.isFile()) throw new ToolError(`${options.file} is not a file`);
    size = stat.size;
    input = fs.createReadStream(options.file, { encoding: 'utf8', highWaterMark: 256 * 1024 });
  }
  let format = options.format ?? (options.file === '-' ? undefined : formatFromName(options.file));
  if (options.file !== '-') format = checkFileStart(options.file, format);

  const db = await connectForTool(config, 'npm run import');
  const writer = await openBulkWriter(options.method);
  const rejected = new RejectedLines(options.rejectedPath);
  const loader = new BatchLoader(writer, options.batchSize, (line, problems, source) => {
    rejected.add(
      line,
      problems,
      typeof source === 'string' ? source : (source as (string | null)[]).map(csvField).join(','),
    );
  });
  let bytesRead = 0;
  const progress = new Progress({
    label: 'import',
    mode: options.progress,
    sample: () => ({
      rows: loader.totals.read,
      fraction: size ? Math.min(1, bytesRead / size) : undefined,
      detail: size ? `${formatBytes(bytesRead)} of ${formatBytes(size)}` : formatBytes(bytesRead),
    }),
  });
  const source = options.file === '-' ? 'standard input' : options.file;
  process.stderr.write(`Importing ${source} into ${describeDatabase(db)} (${writer.method} method)\n`);

  const started = performance.now();
  let layout: CsvLayout | undefined;
  const splitter = new LineSplitter();
  const csv = new CsvReader();
  const onCsvError = (error: { line: number; message: string; text: string }) => {
    loader.reject(error.line, [{ field: null, code: 'CSV_SYNTAX', message: error.message }], error.text);
  };
  const onCsvRecord = ({ line, fields }: { line: number; fields: (string | null)[] }) => {
    if (!layout) {
      try {
        layout = csvLayout(fields);
      } catch (error) {
        if (error instanceof CsvHeaderError) {
          throw new ToolError(`${options.file}: line ${line} is not a usable CSV header: ${error.message}`);
        }
        throw error;
      }
      if (layout.ignored.length > 0) {
        process.stderr.write(`Ignoring columns the importer does not know: ${layout.ignored.join(', ')}\n`);
      }
      return;
    }
    const converted = recordFromCsv(fields, layout);
    if (converted.record) loader.add(line, converted.record, fields);
    else loader.reject(line, converted.problems, fields);
  };
  const onJsonLine = (raw: string, line: number) => {
    const text = line === 1 ? raw.replace(/^\uFEFF/, '') : raw;
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      loader.reject(
        line,
        [{ field: null, code: 'INVALID_JSON', message: `the line is not JSON: ${(error as Error).message}` }],
        raw,
      );
      return;
    }
    const converted = recordFromJson(value);
    if (converted.record) loader.add(line, converted.record, raw);
    else loader.reject(line, converted.problems, raw);
  };
  const onCsvLine = (raw: string, line: number) => csv.line(raw, line, onCsvRecord, onCsvError);

  progress.start();
  try {
    let onLine: ((raw: string, line: number) => void) | undefined;
    for await (const chunk of input as AsyncIterable<string>) {
      if (!onLine) {
        format ??= formatFromContent(chunk);
        onLine = format === 'csv' ? onCsvLine : onJsonLine;
      }
      bytesRead += Buffer.byteLength(chunk);
      splitter.push(chunk, onLine);
      if (loader.hasFullBatches) await loader.drain();
      const out = rejected.writable;
      if (out?.writableNeedDrain) await once(out, 'drain');
    }
    if (onLine) splitter.end(onLine);
    if (format === 'csv') csv.end(onCsvError);
    await loader.finish();
  } catch (error) {
    progress.stop();
    const t = loader.totals;
    if (t.read > 0) {
      process.stderr.write(
        `The import stopped after ${formatCount(t.read)} records (stored so far: ${formatCount(t.accepted)}). ` +
          'Running it again is safe: records already stored count as duplicates.\n',
      );
    }
    throw error;
  } finally {
    progress.stop();
    await writer.close().catch(() => {});
    await rejected.close();
    await disconnectDatabase();
  }

  const seconds = (performance.now() - started) / 1000;
  const t = loader.totals;
  if (format === 'csv' && !layout) throw new ToolError(`${options.file} is empty: a CSV file starts with a header row`);
  const width = formatCount(t.read).length;
  const row = (label: string, n: number, note = '') =>
    `  ${label.padEnd(11)}${formatCount(n).padStart(width)}${note}\n`;
  const rate = formatCount(t.read / Math.max(seconds, 0.001));
  process.stdout.write(
    `Imported ${source} (${format === 'csv' ? 'CSV' : 'NDJSON'})\n` +
      row('records', t.read) +
      row('accepted', t.accepted) +
      row('duplicates', t.duplicates, '  (stored already, or repeated in the file)') +
      row('rejected', t.rejected, t.rejected > 0 ? `  -> ${options.rejectedPath}` : '') +
      `  ${seconds.toFixed(1)} s, ${rate} records/s (${writer.method}, batches of ${formatCount(options.batchSize)})\n`,
  );
  return 0;
}

runTool(USAGE, main);
