/**
 * The command line of every command: node's parseArgs, and the one error a misused command throws. Nothing here
 * opens a database or loads the service, so a command can check its arguments before anything heavy is loaded.
 */
import { type ParseArgsConfig, parseArgs } from 'node:util';

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

/** The command line parsed with node's parseArgs; an unknown or malformed option is a UsageError. */
export function parseCommandLine<T extends ParseArgsConfig>(config: T): ReturnType<typeof parseArgs<T>> {
  try {
    return parseArgs(config);
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/** An option that must be one of `allowed` (undefined when not given), or a UsageError naming the option. */
export function choiceOption<T extends string>(
  name: string,
  raw: string | undefined,
  allowed: readonly T[],
): T | undefined {
  if (raw === undefined) return undefined;
  const choice = allowed.find((value) => value === raw);
  if (choice === undefined) {
    const choices = allowed.length > 1 ? `${allowed.slice(0, -1).join(', ')} or ${allowed.at(-1)}` : allowed.join('');
    throw new UsageError(`--${name} must be ${choices} (got ${JSON.stringify(raw)})`);
  }
  return choice;
}

/** The progress display modes of the bulk tools. */
export const PROGRESS_MODES = ['bar', 'lines', 'none'] as const;

/** An integer option within bounds, or a UsageError naming the option. */
export function integerOption(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new UsageError(`--${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(raw)})`);
  }
  return Number(raw);
}
