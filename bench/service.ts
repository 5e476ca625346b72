/**
 * The real service as a child process (the built `dist/main.js`, or the sources through tsx), its HTTP client, and
 * its memory read from /proc.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

export interface ServiceOptions {
  /** Run `src/main.ts` through tsx instead of `dist/main.js`. */
  fromSource: boolean;
  env: Record<string, string>;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** Where the service's output also goes (appended), besides the tail kept for error messages. */
  logFile?: string | undefined;
  cwd: string;
}

export interface RunningService {
  url: string;
  /** Headers every request needs (the benchmark's API key, when the service requires one). */
  headers: Record<string, string>;
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

/**
 * Creates an API key (scopes ingest and read) with the service's own CLI, on the database the service will use, before it
 * starts (the CLI migrates a fresh database as the service would). Undefined for a version of the service without keys.
 */
export function createApiKey(options: Omit<ServiceOptions, 'nodeFlags'>): string | undefined {
  const cli = options.fromSource ? ['--import', 'tsx', 'src/cli/keys.ts'] : ['dist/cli/keys.js'];
  if (!fs.existsSync(`${options.cwd}/${cli.at(-1)}`)) return undefined;
  const out = execFileSync(process.execPath, [...cli, 'create', '--scope', 'ingest,read', '--name', 'bench'], {
    cwd: options.cwd,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...options.env },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const key = out.trim().split('\n').pop();
  if (!key) throw new Error(`npm run keys -- create printed no key: ${out}`);
  return key;
}

export async function startService(options: ServiceOptions & { apiKey?: string | undefined }): Promise<RunningService> {
  const port = await freePort();
  const entry = options.fromSource ? ['--import', 'tsx', 'src/main.ts'] : ['dist/main.js'];
  const child = spawn(process.execPath, [...(options.nodeFlags ?? []), ...entry], {
    cwd: options.cwd,
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      ...options.env,
      PORT: String(port),
      HOST: '127.0.0.1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  if (options.logFile) {
    const file = fs.createWriteStream(options.logFile, { flags: 'a' });
    child.stdout?.pipe(file);
    child.stderr?.pipe(file);
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;

  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`The service exited during start-up (code ${child.exitCode}):\n${tail}`);
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
    headers: options.apiKey ? { authorization: `Bearer ${options.apiKey}` } : {},
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

  /** `headers`: sent with every request (the API key). */
  constructor(
    baseUrl: string,
    private readonly headers: Record<string, string> = {},
  ) {
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
          headers: {
            ...this.headers,
            'content-type': 'application/json',
            'content-length': payload.length,
            accept: 'application/json',
          },
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

/** CPU time (user + system) a process has used so far, in ms; NaN where /proc is absent. */
export function cpuTimeOf(pid: number): number {
  try {
    // Fields after the command name (which is in parentheses and may contain spaces): utime and stime are the 12th and 13th.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** The kernel's clock ticks per second for /proc times (USER_HZ: 100 on Linux). */
const CLOCK_TICKS = 100;

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
