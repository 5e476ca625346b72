/** What the bulk command-line tools share: running a main function with clean exits, and writing to streams with backpressure. */
import { once } from 'node:events';
import type { Writable } from 'node:stream';
import { type ParseArgsConfig, parseArgs } from 'node:util';
import { ConfigError } from '../config.js';
import { disconnectDatabase } from '../db/client.js';
import { FilterError } from '../services/metric-filter.js';
import { ToolError } from './connect.js';

/** A mistake in the command line: the message and the usage are printed, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    message: string,
    /** False when the message says all there is to say (a bad option value, not a misused command). */
    readonly showUsage = true,
  ) {
    super(message);
  }
}

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

/** The command line parsed with node's parseArgs; an unknown or malformed option is a UsageError. */
export function parseCommandLine<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

/** An option that must be one of `allowed` (undefined when not given), or a UsageError naming the option. */
export function choiceOption<T extends string>(name: string, raw: string | undefined, allowed: readonly T[]): T | undefined {
  if (raw === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(raw)) {
    const choices = allowed.length > 1 ? `${allowed.slice(0, -1).join(', ')} or ${allowed.at(-1)}` : allowed.join('');
    throw new UsageError(`--${name} must be ${choices} (got ${JSON.stringify(raw)})`);
  }
  return raw as T;
}

/** The progress display modes of the bulk tools. */
export const PROGRESS_MODES = ['bar', 'lines', 'none'] as const;

/** An integer option within bounds, or a UsageError naming the option. */
export function integerOption(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(raw)})`);
  }
  return Number(raw);
}
