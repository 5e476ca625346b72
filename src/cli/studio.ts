/**
 * `npm run studio`: Prisma Studio on the database the service uses.
 * - DATABASE_URL set: Studio on that PostgreSQL database.
 * - Embedded database, service running with EMBEDDED_DB_PORT: Studio through the service's PostgreSQL-protocol port.
 * - Embedded database, service stopped: this command opens the data folder itself and serves it to Studio.
 *
 * `--port N` (default 5555) chooses the port, on 127.0.0.1 only; other arguments go to `prisma studio`.
 * Studio asks for nothing outside this machine: Prisma's CLI is run with CHECKPOINT_DISABLE=1 (scripts/prisma.mjs:
 * no update check, the server forwards no telemetry), and the page, which checks in with checkpoint.prisma.io from the
 * browser unless `CHECKPOINT_DISABLE` is set in its own global scope, gets that set: Studio listens on a private port
 * behind a small proxy of ours that adds it to the page and answers the page's telemetry posts itself.
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../config.js';
import { type Database, openDatabase } from '../db/client.js';
import { startEmbeddedWireServer } from '../db/embedded-wire.js';
import { migrate } from '../db/migrations.js';
import { parseCommandLine, UsageError } from './args.js';
import { runTool } from './support.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const USAGE = `usage: npm run studio [-- options]

  -p, --port <n>    the port of Studio's page, on 127.0.0.1 only (default 5555)
  -h, --help
Other arguments go to \`prisma studio\` as they are; --browser is not passed on: the page is served by a proxy
of ours, which Studio is told not to open.`;

interface StudioArguments {
  port: number;
  /** The arguments that are not this command's, in their order, for `prisma studio`. */
  passThrough: string[];
}

/** This command's options; undefined for --help. Unknown options are allowed: they are Studio's. */
function parseArguments(args: string[]): StudioArguments | undefined {
  const { values, tokens } = parseCommandLine({
    args,
    strict: false,
    allowPositionals: true,
    tokens: true,
    options: {
      port: { type: 'string', short: 'p' },
      browser: { type: 'string', short: 'b' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) return undefined;
  const own = new Set<number>();
  for (const token of tokens) {
    if (token.kind !== 'option' || !['port', 'browser', 'help'].includes(token.name)) continue;
    own.add(token.index);
    if (token.value !== undefined && !token.inlineValue) own.add(token.index + 1);
  }
  const raw = values.port;
  const port = raw === undefined ? 5555 : Number(raw);
  if (typeof raw === 'boolean' || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`--port must be a port number (1-65535), got ${JSON.stringify(raw)}`, false);
  }
  return { port, passThrough: args.filter((_, index) => !own.has(index)) };
}

/** Set in the page's global scope, where Studio's browser code reads its environment. */
const PAGE_SETTINGS = '<script>window.CHECKPOINT_DISABLE = "1";</script>';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = server.address() as net.AddressInfo;
      server.close(() => resolve(free));
    });
    server.on('error', reject);
  });
}

/**
 * Studio's list of tables reads pg_class for ordinary tables and views only (`relkind in ('r', 'v')`), so a partitioned
 * table (relkind 'p': user_metrics) is missing and each of its partitions would be listed instead. Its one catalog
 * query is widened here to partitioned tables, with their partitions left out: user_metrics is browsed and edited as
 * one table, as Prisma models it. Any other query passes unchanged.
 */
const TABLE_KINDS = /"cls"\."relkind" in \((\$\d+), (\$\d+)\)/;

function widenTableList(body: string): string {
  let message: { procedure?: unknown; query?: { sql?: unknown; parameters?: unknown[] } };
  try {
    message = JSON.parse(body);
  } catch {
    return body;
  }
  const sql = message.query?.sql;
  const parameters = message.query?.parameters;
  if (message.procedure !== 'query' || typeof sql !== 'string' || !Array.isArray(parameters)) return body;
  const match = TABLE_KINDS.exec(sql);
  if (!match || !sql.includes('"pg_catalog"."pg_class" as "cls"')) return body;
  const kinds = [match[1], match[2]].map((placeholder) => parameters[Number(placeholder?.slice(1)) - 1]);
  if (kinds[0] !== 'r' || kinds[1] !== 'v') return body;
  const widened = sql.replace(
    TABLE_KINDS,
    (kindsCondition) => `((${kindsCondition} and not "cls"."relispartition") or "cls"."relkind" = 'p')`,
  );
  return JSON.stringify({ ...message, query: { ...message.query, sql: widened } });
}

/** Longest request body the proxy reads to rewrite (Studio's are a few KB; a row edit with large text may be more). */
const MAX_BFF_BODY = 16 * 2 ** 20;

/**
 * Forwards to Studio on `target`, adding PAGE_SETTINGS to HTML pages, widening the table list (widenTableList) and
 * answering telemetry posts with 200.
 */
function startProxy(target: number, port: number): Promise<http.Server> {
  const server = http.createServer((request, response) => {
    if (request.method === 'POST' && request.url === '/telemetry') {
      request.resume();
      response.writeHead(200).end();
      return;
    }
    // Studio refuses requests whose Origin is not its own address.
    const headers = { ...request.headers, host: `127.0.0.1:${target}` };
    if (headers.origin) headers.origin = `http://127.0.0.1:${target}`;
    delete headers['accept-encoding']; // pages are rewritten: have them plain
    const upstream = http.request(
      { host: '127.0.0.1', port: target, method: request.method, path: request.url, headers },
      (answer) => {
        if (!(answer.headers['content-type'] ?? '').startsWith('text/html')) {
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
          return;
        }
        const chunks: Buffer[] = [];
        answer.on('data', (chunk: Buffer) => chunks.push(chunk));
        answer.on('end', () => {
          const html = Buffer.concat(chunks)
            .toString('utf8')
            .replace(/<head[^>]*>/i, (head) => `${head}${PAGE_SETTINGS}`);
          const { 'content-length': _, ...rest } = answer.headers;
          response
            .writeHead(answer.statusCode ?? 200, { ...rest, 'content-length': Buffer.byteLength(html) })
            .end(html);
        });
      },
    );
    upstream.on('error', (error) => {
      if (!response.headersSent) response.writeHead(502, { 'content-type': 'text/plain' });
      response.end(`Prisma Studio is not answering: ${error.message}`);
    });
    if (request.method !== 'POST' || request.url !== '/bff') {
      request.pipe(upstream);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BFF_BODY) {
        request.destroy();
        upstream.destroy();
        if (!response.headersSent) response.writeHead(413, { 'content-type': 'text/plain' });
        response.end(`A Studio request over ${MAX_BFF_BODY} bytes`);
        return;
      }
      chunks.push(chunk);
    });
    request.on('end', () => {
      const body = widenTableList(Buffer.concat(chunks).toString('utf8'));
      upstream.setHeader('content-length', Buffer.byteLength(body));
      upstream.removeHeader('transfer-encoding');
      upstream.end(body);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

async function studioAnswers(target: number, deadline: number): Promise<boolean> {
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(target, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (ok) return true;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  return false;
}

async function runStudio(url: string, { port, passThrough }: StudioArguments): Promise<number> {
  process.stderr.write(`Prisma Studio on ${url.replace(/:[^:@/]*@/, ':***@')}\n`);
  const target = await freePort();
  const child = spawn(
    process.execPath,
    [path.join(root, 'scripts/prisma.mjs'), 'studio', '--port', String(target), '--browser', 'none', ...passThrough],
    {
      stdio: ['ignore', 'ignore', 'inherit'], // its "running at" line names the private port
      cwd: root,
      env: { ...process.env, DATABASE_URL: url, CHECKPOINT_DISABLE: '1' },
      // A process group of its own: scripts/prisma.mjs runs Studio as its child in turn, so a signal goes to the
      // group (a SIGTERM to this process alone once left Studio running, holding its port).
      detached: true,
    },
  );
  const stop = (signal: NodeJS.Signals = 'SIGTERM') => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal);
    } catch {
      // The group has ended already.
    }
  };
  const exited = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  const started = await Promise.race([studioAnswers(target, Date.now() + 60_000), exited.then(() => false)]);
  if (!started) {
    stop();
    process.stderr.write('Prisma Studio did not start.\n');
    return exited;
  }
  let proxy: http.Server;
  try {
    proxy = await startProxy(target, port);
  } catch (error) {
    stop();
    process.stderr.write(
      `Cannot listen on 127.0.0.1:${port} (${(error as Error).message}): choose another with --port.\n`,
    );
    await exited;
    return 1;
  }
  process.stderr.write(`Prisma Studio is running at http://localhost:${port} (Ctrl-C stops it)\n`);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => stop(signal));
  const code = await exited;
  stop();
  proxy.close();
  return code;
}

async function main(): Promise<number> {
  const args = parseArguments(process.argv.slice(2));
  if (args === undefined) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const config = loadConfig();
  if (config.databaseUrl) return runStudio(config.databaseUrl, args);
  let db: Database;
  try {
    db = await openDatabase({ dataDir: config.dataDir });
  } catch (error) {
    if (config.embeddedDbPort !== undefined) {
      // The service holds the data folder: go through the port it serves.
      return runStudio(`postgresql://postgres@127.0.0.1:${config.embeddedDbPort}/postgres`, args);
    }
    process.stderr.write(
      `${(error as Error).message}\nTo browse the embedded database while the service runs, start the service with ` +
        'EMBEDDED_DB_PORT=5433 and run `EMBEDDED_DB_PORT=5433 npm run studio`.\n',
    );
    return 1;
  }
  await migrate(db);
  const server = await startEmbeddedWireServer({ db: db.pglite!, port: config.embeddedDbPort ?? 0 });
  const code = await runStudio(server.url, args);
  await server.stop();
  await db.close();
  return code;
}

runTool(USAGE, main);
