/**
 * What the command-line tools share: running a main function with clean exits, and writing to streams with
 * backpressure. Their arguments are read with ./args.ts.
 */
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { ConfigError } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { FilterError } from '../services/metric-filter.js';
import { UsageError } from './args.js';
import { ToolError } from './connect.js';

/**
 * Runs a tool's main function and exits with its code: 0 done, 1 failed, 2 bad usage. Expected failures print their
 * message alone; anything else prints its stack.
 */
export function runTool(usage: string, main: () => Promise<number>): void {
  main().then(
    (code) => finish(code),
    async (error: unknown) => {
      await disconnectDatabase().catch(() => {});
      if (error instanceof UsageError) {
        process.stderr.write(error.showUsage ? `${error.message}\n\n${usage}\n` : `${error.message}\n`);
        finish(2);
      } else if (error instanceof ToolError || error instanceof ConfigError || error instanceof FilterError) {
        process.stderr.write(`${error.message}\n`);
        finish(1);
      } else {
        process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
        finish(1);
      }
    },
  );
}

function finish(code: number): void {
  // Let stdout drain (a pipe may be slower than us) before exiting.
  if (process.stdout.writableNeedDrain) process.stdout.once('drain', () => process.exit(code));
  else process.exit(code);
}

/** Writes `text`, waiting when the stream's buffer is full so that memory stays bounded. */
export async function write(stream: Writable, text: string): Promise<void> {
  if (!stream.write(text)) await once(stream, 'drain');
}

/** Closes a stream opened for writing and waits until its data is on disk (or the pipe). */
export async function close(stream: Writable): Promise<void> {
  if (stream === process.stdout) return;
  await new Promise<void>((resolve, reject) => {
    stream.once('error', reject);
    stream.end(() => resolve());
  });
}
