/**
 * The real service as a child process (the built `dist/main.js`, or the sources through tsx), its HTTP client, and
 * its memory read from /proc.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

export interface ServiceOptions {
  /** Run `src/main.ts` through tsx instead of `dist/main.js`. */
  fromSource: boolean;
  env: Record<string, string>;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeFlags?: string[];
  cwd: string;
}

export interface RunningService {
  url: string;
  pid: number;
  child: ChildProcess;
  /** The last lines the service printed, for error messages. */
  output(): string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address() as net.AddressInfo;
      server.close(() => resolve(address.port));
    });
  });
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function startService(options: ServiceOptions): Promise<RunningService> {
  const port = await freePort();
  const entry = options.fromSource ? ['--import', 'tsx', 'src/main.ts'] : ['dist/main.js'];
  const child = spawn(process.execPath, [...(options.nodeFlags ?? []), ...entry], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.env, PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;

  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`The service exited during start-up (code ${child.exitCode}):\n${tail}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`The service did not become ready within 120 s:\n${tail}`);
    }
    const status = await getStatus(`${url}/ready`).catch(() => 0);
    if (status === 200) break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }

  return {
    url,
    pid: child.pid as number,
    child,
    output: () => tail,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        await exited;
        clearTimeout(timer);
      }
      running.delete(child);
    },
  };
}

function getStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.setTimeout(2000, () => req.destroy(new Error('timeout')));
  });
}

/** One keep-alive connection per client, as a real client keeps. */
export class HttpClient {
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  private readonly target: URL;

  constructor(baseUrl: string) {
    this.target = new URL('/graphql', baseUrl);
  }

  /** POSTs a JSON body; resolves with the parsed response, rejects on a transport error or a non-200 status. */
  post(body: Buffer | string): Promise<unknown> {
    const payload = typeof body === 'string' ? Buffer.from(body) : body;
    return new Promise((resolve, reject) => {
      const req = http.request(
        {
          host: this.target.hostname,
          port: this.target.port,
          path: this.target.pathname,
          method: 'POST',
          agent: this.agent,
          headers: { 'content-type': 'application/json', 'content-length': payload.length, accept: 'application/json' },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (res.statusCode !== 200) {
              reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 500)}`));
              return;
            }
            try {
              resolve(JSON.parse(text));
            } catch (error) {
              reject(error);
            }
          });
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.setTimeout(120_000, () => req.destroy(new Error('request timed out after 120 s')));
      req.end(payload);
    });
  }

  close(): void {
    this.agent.destroy();
  }
}

/** Resident memory of a process in bytes: current (VmRSS) and peak (VmHWM), from /proc; undefined where /proc is absent. */
export function memoryOf(pid: number): { rss: number; hwm: number } | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
    return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
  } catch {
    return undefined;
  }
}

/** Polls a process's RSS every `intervalMs` until stopped; reports the largest value seen and the kernel's peak. */
export function watchMemory(pid: number, intervalMs = 50): { stop(): { peakRss: number; hwm: number } } {
  let peakRss = 0;
  const timer = setInterval(() => {
    const m = memoryOf(pid);
    if (m && m.rss > peakRss) peakRss = m.rss;
  }, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      const m = memoryOf(pid);
      if (m && m.rss > peakRss) peakRss = m.rss;
      return { peakRss, hwm: m?.hwm ?? NaN };
    },
  };
}
