/**
 * The real service as a child process (`node --import tsx src/main.ts`), the way it runs in production: signals,
 * exit codes and its own event loop are part of what the fault tests check.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import http from 'node:http';
import { freePort } from './pg-server.js';
import { PROJECT_ROOT, SCRUBBED as RUN_TSX_SCRUBBED } from './process.js';

export interface ServiceProcess {
  /** Base URL, e.g. http://127.0.0.1:43121 */
  url: string;
  port: number;
  child: ChildProcess;
  /** What the service printed so far (JSON log lines), for assertion messages. */
  output(): string;
  /** Resolves with the exit code and signal once the process has ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  /** Whether the process is still running. */
  alive(): boolean;
  /** SIGKILLs the process if it still runs and waits for it to end. */
  kill(): Promise<void>;
}

/** As runTsx's, and the runner's own database too: a service process gets only what the test gives it. */
const SCRUBBED = [...RUN_TSX_SCRUBBED, 'TEST_DATABASE_URL'];

function healthy(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const request = http.get(`${url}/health`, { timeout: 2000 }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(false));
  });
}

/** Starts the service with `env` on a free port and waits (up to `timeoutMs`) until /health answers. */
export async function startServiceProcess(env: Record<string, string>, timeoutMs = 60_000): Promise<ServiceProcess> {
  const base: Record<string, string | undefined> = { ...process.env };
  for (const name of SCRUBBED) delete base[name];
  const port = env.PORT ? Number(env.PORT) : await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: PROJECT_ROOT,
    env: { ...base, NODE_ENV: 'test', HOST: '127.0.0.1', LOG_LEVEL: 'info', ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  let running = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) => {
    child.on('exit', (code, signal) => {
      running = false;
      resolve({ code, signal, at: Date.now() });
    });
  });
  const onData = (chunk: string) => {
    output += chunk;
    if (output.length > 2_000_000) output = output.slice(-1_000_000);
  };
  child.stdout?.setEncoding('utf8').on('data', onData);
  child.stderr?.setEncoding('utf8').on('data', onData);
  const deadline = Date.now() + timeoutMs;
  while (!(await healthy(url))) {
    if (!running) {
      const { code, signal } = await exited;
      throw new Error(`The service exited (${code ?? signal}) before listening:\n${output.slice(-3000)}`);
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`The service did not start within ${timeoutMs} ms:\n${output.slice(-3000)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    url,
    port,
    child,
    output: () => output,
    exited,
    alive: () => running,
    async kill() {
      if (running) child.kill('SIGKILL');
      await exited;
    },
  };
}
