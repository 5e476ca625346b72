/** Running the project's own entry points (src/main.ts, src/cli/*.ts) as child processes, the way npm scripts do. */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface ProcessResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Variables the child must not inherit from the test runner (they would point it at another database). */
export const SCRUBBED = [
  'DATABASE_URL',
  'DATA_DIR',
  'PORT',
  'MIGRATE_ON_START',
  'MAX_BATCH_SIZE',
  'MAX_BODY_BYTES',
  'EMBEDDED_DB_PORT',
];

/**
 * Runs `node --import tsx <script> ...args` in the project folder with `env` on top of a scrubbed copy of this
 * process's environment; kills it after `timeoutMs` (the result then has a signal, and the test fails on the code).
 */
export function runTsx(
  script: string,
  args: string[],
  env: Record<string, string>,
  timeoutMs = 60_000,
): Promise<ProcessResult> {
  const base: Record<string, string | undefined> = { ...process.env };
  for (const name of SCRUBBED) delete base[name];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
      cwd: PROJECT_ROOT,
      env: { ...base, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** For assertion messages: what the child printed. */
export function describeRun(result: ProcessResult): string {
  return `exit ${result.code}${result.signal ? ` (${result.signal})` : ''}\n--- stdout\n${result.stdout.slice(-3000)}\n--- stderr\n${result.stderr.slice(-3000)}`;
}
