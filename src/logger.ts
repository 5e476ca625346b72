/** The service's one logger: JSON lines on stdout (pino). */
import { pino } from 'pino';
import type { LogLevel } from './config.js';

export type Logger = pino.Logger;

export function createLogger(level: LogLevel): Logger {
  return pino({ level, base: { service: 'metrics-service' }, timestamp: pino.stdTimeFunctions.isoTime });
}
