/** The service's one logger (pino): JSON lines on stdout, or pretty lines for a developer at a terminal. */
import { createRequire } from 'node:module';
import { pino } from 'pino';
import type { Config, LogLevel } from './config.js';

export type Logger = pino.Logger;

export interface LoggerOptions {
  /**
   * `json`, `pretty`, or `auto`: pretty only when `nodeEnv` is development and stdout is a terminal. Default `json`.
   */
  format?: Config['logFormat'];
  nodeEnv?: Config['nodeEnv'];
}

/** Whether logs are written for people: only on request, or for a developer watching a terminal. */
export function usePrettyLogs(options: LoggerOptions, stdoutIsTerminal = Boolean(process.stdout.isTTY)): boolean {
  if (options.format === 'pretty') return true;
  if (options.format === 'auto') return options.nodeEnv === 'development' && stdoutIsTerminal;
  return false;
}

export function createLogger(level: LogLevel, options: LoggerOptions = {}): Logger {
  const settings = { level, base: { service: 'metrics-service' }, timestamp: pino.stdTimeFunctions.isoTime };
  if (!usePrettyLogs(options)) return pino(settings);
  // In-process and synchronous: a developer's terminal needs no worker thread, and no line is lost at exit.
  // Loaded only for pretty logs: production (JSON lines) does not carry it.
  const { PinoPretty } = createRequire(import.meta.url)('pino-pretty') as typeof import('pino-pretty');
  const pretty = PinoPretty({
    colorize: Boolean(process.stdout.isTTY),
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname,service',
    sync: true,
  });
  return pino(settings, pretty);
}
