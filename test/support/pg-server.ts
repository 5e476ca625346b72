/**
 * A PostgreSQL server of the test's own, to stop and restart at will (the shared one on 5432 is never touched):
 * initdb into a temporary folder, a free port on 127.0.0.1, run as the `postgres` OS user when the tests run as root.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

const run = promisify(execFile);

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';

/** Why this machine cannot run a PostgreSQL server of a test's own, or undefined when it can. */
export function ownPostgresUnavailable(): string | undefined {
  if (!fs.existsSync(path.join(PG_BIN, 'initdb')) || !fs.existsSync(path.join(PG_BIN, 'pg_ctl'))) {
    return `this test starts and kills a PostgreSQL server of its own and needs initdb and pg_ctl in ${PG_BIN} (set PG_BIN to another folder)`;
  }
  if (process.getuid?.() === 0 && !fs.existsSync('/usr/sbin/runuser') && !fs.existsSync('/sbin/runuser')) {
    return 'this test runs as root and needs runuser to start PostgreSQL as the postgres user';
  }
  return undefined;
}

/** A port nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Servers still running, stopped when this process exits however it ends (a failed test, a timeout), not left behind. */
const liveServers = new Set<PgServer>();
process.once('exit', () => {
  for (const server of liveServers) server.stopNow();
});

export class PgServer {
  private running = false;
  /** How many times the server was stopped and started again. */
  restarts = 0;

  private constructor(
    readonly dataDir: string,
    readonly port: number,
    private readonly asPostgres: boolean,
  ) {}

  /** initdb into a fresh temporary folder and start the server. */
  static async start(): Promise<PgServer> {
    const reason = ownPostgresUnavailable();
    if (reason) throw new Error(`Cannot start a PostgreSQL server: ${reason}`);
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-pg-'));
    const asPostgres = process.getuid?.() === 0;
    if (asPostgres) fs.chmodSync(root, 0o777);
    const server = new PgServer(path.join(root, 'data'), await freePort(), asPostgres);
    await server.pgRun('initdb', [
      '-D',
      server.dataDir,
      '-U',
      'postgres',
      '-A',
      'trust',
      '--no-sync',
      '-E',
      'UTF8',
      '--locale=C',
    ]);
    // fsync off: these servers are killed, never their machine, so written data survives an immediate stop all the same.
    fs.appendFileSync(
      path.join(server.dataDir, 'postgresql.conf'),
      [
        `port = ${server.port}`,
        "listen_addresses = '127.0.0.1'",
        `unix_socket_directories = '${root}'`,
        'fsync = off',
        'full_page_writes = off',
        'max_connections = 100',
        'shared_buffers = 32MB',
        "log_min_messages = 'fatal'",
        '',
      ].join('\n'),
    );
    await server.startServer();
    return server;
  }

  /** A URL for `database` (default `postgres`) straight to the server. */
  url(database = 'postgres'): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** Starts the stopped server and waits until it accepts connections (crash recovery included). */
  async startServer(): Promise<void> {
    await this.pgRun('pg_ctl', [
      '-D',
      this.dataDir,
      '-l',
      path.join(path.dirname(this.dataDir), 'server.log'),
      '-w',
      '-t',
      '60',
      'start',
    ]);
    this.running = true;
    liveServers.add(this);
  }

  /** Stops the server; `immediate` kills it without a checkpoint, as a crash would. */
  async stopServer(mode: 'immediate' | 'fast' = 'immediate'): Promise<void> {
    await this.pgRun('pg_ctl', ['-D', this.dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
    this.running = false;
    liveServers.delete(this);
  }

  /** `pg_ctl -m immediate stop`, a pause, then start again. */
  async restart(downMs = 0): Promise<void> {
    await this.stopServer('immediate');
    if (downMs > 0) await new Promise((resolve) => setTimeout(resolve, downMs));
    await this.startServer();
    this.restarts++;
  }

  /** Runs SQL on a connection of its own (not through the service or any proxy). */
  async sql<Row extends Record<string, unknown> = Record<string, unknown>>(
    text: string,
    params?: unknown[],
    database = 'postgres',
  ): Promise<Row[]> {
    const client = new pg.Client({ connectionString: this.url(database), connectionTimeoutMillis: 10_000 });
    await client.connect();
    try {
      return (await client.query<Row>(text, params)).rows;
    } finally {
      await client.end();
    }
  }

  /** Stops the server (if running) and deletes its folder. */
  async destroy(): Promise<void> {
    if (this.running) await this.stopServer('immediate').catch(() => {});
    fs.rmSync(path.dirname(this.dataDir), { recursive: true, force: true });
  }

  /** Synchronous immediate stop and removal, for process exit. */
  stopNow(): void {
    const args = ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop'];
    const binary = path.join(PG_BIN, 'pg_ctl');
    try {
      if (this.asPostgres)
        execFileSync('runuser', ['-u', 'postgres', '--', binary, ...args], { stdio: 'ignore', timeout: 30_000 });
      else execFileSync(binary, args, { stdio: 'ignore', timeout: 30_000 });
    } catch {
      // Already stopped.
    }
    fs.rmSync(path.dirname(this.dataDir), { recursive: true, force: true });
  }

  /** The server's own log, for assertion messages. */
  log(): string {
    try {
      return fs.readFileSync(path.join(path.dirname(this.dataDir), 'server.log'), 'utf8').slice(-3000);
    } catch {
      return '(no server log)';
    }
  }

  private async pgRun(tool: string, args: string[]): Promise<void> {
    const binary = path.join(PG_BIN, tool);
    const [command, commandArgs] = this.asPostgres
      ? ['runuser', ['-u', 'postgres', '--', binary, ...args]]
      : [binary, args];
    try {
      await run(command, commandArgs, { timeout: 90_000 });
    } catch (error) {
      const { stdout, stderr } = error as { stdout?: string; stderr?: string };
      throw new Error(
        `${tool} ${args.join(' ')} failed: ${(error as Error).message}\n${stdout ?? ''}\n${stderr ?? ''}\n${this.log()}`,
      );
    }
  }
}
