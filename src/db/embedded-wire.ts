/**
 * The embedded database (PGlite) served over the PostgreSQL wire protocol on 127.0.0.1, for Prisma Studio, psql and
 * pgAdmin (EMBEDDED_DB_PORT, `npm run studio`).
 *
 * PGlite is one PostgreSQL session: every client connection and the service's own queries share it. pglite-socket's
 * server runs single protocol messages from all connections in arrival order, so one client's Parse/Describe/Flush
 * and its Bind/Execute/Sync can have another client's messages between them; Prisma Studio (postgres.js, several
 * connections) got "unnamed prepared statement does not exist" that way. It also took only PGlite's query lock, which
 * an in-process transaction releases between its statements, so wire queries could run inside the service's
 * transactions and the service's queries inside a wire client's. This server instead:
 * - runs a connection's messages in groups that end where the client waits for an answer (Sync, a simple Query,
 *   FunctionCall, Flush, CopyDone/CopyFail), each group whole and alone on the session;
 * - keeps the session for one connection from the moment its answers leave the session busy (inside a transaction,
 *   after a Flush before the Sync, in COPY) until the last ReadyForQuery says idle; while it does, other connections
 *   and the service's own queries wait. The hold is PGlite's transaction lock, which PGlite's query(), exec() and
 *   transaction() take, so wire and in-process transactions cannot interleave either;
 * - renames the named prepared statements and portals of each connection (prefix `w<connection>_`), so two clients
 *   both preparing "s1" do not collide, and closes them when the connection ends;
 * - rolls back what a closing connection left open, and ends a connection idle inside a transaction for too long
 *   (it would hold up the whole service);
 * - takes a COPY FROM STDIN's data before handing the COPY to PGlite: asked for a COPY without its data in the same
 *   call, PGlite ends the whole process. Such a COPY anywhere but in a simple query of its own is refused.
 * Not isolated: session settings (SET without LOCAL, DISCARD/DEALLOCATE ALL in SQL) are shared with the service, and
 * LISTEN/NOTIFY between connections does not work (there is one backend).
 */
import net from 'node:net';
import type { PGlite } from '@electric-sql/pglite';
import type { Logger } from '../logger.js';

export interface EmbeddedWireOptions {
  db: PGlite;
  /** TCP port on 127.0.0.1; 0 picks a free one. */
  port: number;
  /** Most client connections at once; default 16 (Prisma Studio alone opens up to 10). */
  maxConnections?: number;
  /**
   * How long a connection may hold the session without sending anything (inside a transaction, or between a Flush and
   * its Sync) before it is ended and its transaction rolled back, in milliseconds; 0 = no limit; default 30,000.
   * The service's own queries wait while a wire client holds the session.
   */
  idleInTransactionTimeoutMs?: number;
  /**
   * Most COPY FROM STDIN data held for one COPY, in bytes (PGlite takes a COPY's data in one piece, so it is held in
   * memory until the client ends it); a bigger COPY fails. Default 256 MiB.
   */
  maxCopyBytes?: number;
  /** Where connection problems are logged; default: nowhere. */
  logger?: Logger;
}

export interface EmbeddedWireServer {
  readonly host: string;
  readonly port: number;
  /** postgresql://postgres@127.0.0.1:PORT/postgres */
  readonly url: string;
  /** Client connections open now. */
  connectionCount(): number;
  /** Stops listening, ends every connection (rolling back what it left open) and waits for that to finish. */
  stop(): Promise<void>;
}

const HOST = '127.0.0.1';
const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const CANCEL_REQUEST = 80877102;
/** Largest startup-phase packet accepted (PostgreSQL's own limit is 10,000 bytes). */
const MAX_STARTUP_PACKET = 10_000;

const code = (letter: string) => letter.charCodeAt(0);
const MSG = {
  parse: code('P'),
  bind: code('B'),
  describe: code('D'),
  close: code('C'),
  execute: code('E'),
  sync: code('S'),
  flush: code('H'),
  query: code('Q'),
  functionCall: code('F'),
  copyDone: code('c'),
  copyFail: code('f'),
  terminate: code('X'),
  // Replies from the backend.
  readyForQuery: code('Z'),
  copyInResponse: code('G'),
  copyBothResponse: code('W'),
  notice: code('N'),
  notification: code('A'),
  parameterStatus: code('S'),
} as const;

/** Messages after which a client waits for the answer: the group so far runs now. */
const GROUP_ENDS = new Set<number>([MSG.sync, MSG.query, MSG.functionCall, MSG.flush, MSG.copyDone, MSG.copyFail]);
/** Replies that may follow ReadyForQuery without starting anything. */
const ASYNC_REPLIES = new Set<number>([MSG.notice, MSG.notification, MSG.parameterStatus]);

export async function startEmbeddedWireServer(options: EmbeddedWireOptions): Promise<EmbeddedWireServer> {
  const session = new SessionLease(options.db);
  const connections = new Set<WireConnection>();
  const maxConnections = options.maxConnections ?? 16;
  const idleTimeoutMs = options.idleInTransactionTimeoutMs ?? 30_000;
  let nextId = 1;
  let stopping = false;

  const server = net.createServer((socket) => {
    if (stopping) {
      socket.destroy();
      return;
    }
    const connection = new WireConnection(nextId++, socket, options.db, session, {
      idleTimeoutMs,
      maxCopyBytes: options.maxCopyBytes ?? 256 * 2 ** 20,
      logger: options.logger,
      tooMany: connections.size >= maxConnections,
      onFinished: () => connections.delete(connection),
    });
    connections.add(connection);
  });
  await options.db.waitReady;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, HOST, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (error) => options.logger?.error({ err: error }, 'The embedded database port failed'));
  const port = (server.address() as net.AddressInfo).port;

  return {
    host: HOST,
    port,
    url: `postgresql://postgres@${HOST}:${port}/postgres`,
    connectionCount: () => connections.size,
    async stop() {
      stopping = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all([...connections].map((connection) => connection.end()));
      await closed;
    },
  };
}

/**
 * The right to use the PGlite session, held by one wire connection at a time. It is PGlite's transaction lock: PGlite's
 * query(), exec() and transaction() take it for their whole duration, while runExclusive() (the query lock alone) does
 * not keep an in-process transaction out between its statements.
 */
class SessionLease {
  private holder: WireConnection | undefined;
  private release: (() => void) | undefined;

  constructor(private readonly db: PGlite) {}

  isHeldBy(connection: WireConnection): boolean {
    return this.holder === connection;
  }

  async acquire(connection: WireConnection): Promise<void> {
    if (this.holder === connection) return;
    await new Promise<void>((acquired, failed) => {
      this.db
        ._runExclusiveTransaction(
          () =>
            new Promise<void>((release) => {
              this.holder = connection;
              this.release = release;
              acquired();
            }),
        )
        .catch(failed);
    });
  }

  releaseFrom(connection: WireConnection): void {
    if (this.holder !== connection) return;
    const release = this.release;
    this.holder = undefined;
    this.release = undefined;
    release?.();
  }
}

/** Follows the backend's reply stream across chunks: where it ended and what the last ReadyForQuery said. */
class ReplyScanner {
  private readonly header = Buffer.alloc(5);
  private headerBytes = 0;
  private bodyLeft = 0;
  private bodyType = 0;
  /** Type of the last reply that was not an asynchronous one. */
  lastType: number | undefined;
  /** Status byte of the last ReadyForQuery: I (idle), T (in a transaction), E (in a failed transaction). */
  status: number | undefined;

  feed(chunk: Uint8Array): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.bodyLeft > 0) {
        if (this.bodyType === MSG.readyForQuery) this.status = chunk[at];
        const take = Math.min(this.bodyLeft, chunk.length - at);
        at += take;
        this.bodyLeft -= take;
        continue;
      }
      this.header[this.headerBytes++] = chunk[at++]!;
      if (this.headerBytes === 5) {
        this.headerBytes = 0;
        this.bodyType = this.header[0]!;
        this.bodyLeft = this.header.readInt32BE(1) - 4;
        if (!ASYNC_REPLIES.has(this.bodyType) || this.lastType !== MSG.readyForQuery) this.lastType = this.bodyType;
      }
    }
  }

  /** The session is idle: the reply ended with ReadyForQuery 'I', so another connection may have it. */
  get idle(): boolean {
    return (
      this.lastType === MSG.readyForQuery && this.status === code('I') && this.headerBytes === 0 && this.bodyLeft === 0
    );
  }

  /** The backend waits for COPY data from this connection. */
  get inCopy(): boolean {
    return this.lastType === MSG.copyInResponse || this.lastType === MSG.copyBothResponse;
  }
}

/** Bytes for PGlite, and what to leave out of its answer. */
interface RunJob {
  bytes: Buffer;
  /** The client already has a CopyInResponse from this server. */
  dropCopyInResponse?: boolean;
  /** The client's Sync is still to come (the group ended with Flush). */
  dropReadyForQuery?: boolean;
}
/** Bytes this server answers itself, in order with the connection's other answers. */
type Job = RunJob | { reply: Buffer };

interface ConnectionOptions {
  idleTimeoutMs: number;
  maxCopyBytes: number;
  logger: Logger | undefined;
  tooMany: boolean;
  onFinished: () => void;
}

class WireConnection {
  private readonly namePrefix: Buffer;
  /** Received bytes not yet split into messages. */
  private input: Buffer[] = [];
  private inputLength = 0;
  private started = false;
  /** Messages of the group being collected. */
  private pending: Buffer[] = [];
  /** The pending group asks for something PGlite cannot do (COPY FROM STDIN outside a lone simple query). */
  private pendingRefused = false;
  /** After a refused group that ended with Flush: messages are dropped until the client's Sync. */
  private skipUntilSync = false;
  /** A COPY FROM STDIN being received: its Query and data, sent to PGlite together once the client ends it. */
  private copyUpload: Buffer[] | undefined;
  private copyUploadBytes = 0;
  /** Work waiting for the session, in order. */
  private readonly jobs: Job[] = [];
  /** This connection's (renamed) prepared statements, to close when it ends. */
  private readonly statements = new Set<string>();
  private pumping = false;
  private closed = false;
  private cleanedUp = false;
  private inCopy = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly finished: Promise<void>;
  private resolveFinished!: () => void;

  constructor(
    readonly id: number,
    private readonly socket: net.Socket,
    private readonly db: PGlite,
    private readonly session: SessionLease,
    private readonly options: ConnectionOptions,
  ) {
    this.namePrefix = Buffer.from(`w${id}_`);
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.receive(chunk));
    socket.on('error', (error) =>
      options.logger?.debug({ err: error, connection: id }, 'Embedded database client connection failed'),
    );
    socket.on('close', () => this.onClose());
  }

  /** Ends the connection from the server side and waits until its session state is cleaned up. */
  async end(): Promise<void> {
    this.socket.destroy();
    this.onClose();
    await this.finished;
  }

  private receive(chunk: Buffer): void {
    if (this.closed) return;
    this.input.push(chunk);
    this.inputLength += chunk.length;
    try {
      this.splitMessages();
    } catch (error) {
      this.fail('08P01', (error as Error).message);
    }
    if (this.idleTimer) {
      // Still sending (e.g. a long COPY inside a transaction): not idle.
      this.stopIdleTimer();
      this.startIdleTimer();
    }
    if (this.jobs.length > 0) void this.pump();
  }

  /** Takes every complete message off the input; a message still arriving stays there, unjoined, until it is whole. */
  private splitMessages(): void {
    for (;;) {
      const headerSize = this.started ? 5 : 8;
      if (this.inputLength < headerSize) return;
      const head = this.peek(headerSize);
      const size = this.started ? 1 + head.readInt32BE(1) : head.readInt32BE(0);
      if (this.started ? size < 5 : size < 8 || size > MAX_STARTUP_PACKET)
        throw new Error(`invalid message length ${size}`);
      if (this.inputLength < size) return;
      const message = this.take(size);
      if (this.started) this.onMessage(message);
      else this.onStartupPacket(message);
      if (this.closed) return;
    }
  }

  private peek(size: number): Buffer {
    if (this.input[0]!.length < size) this.input = [Buffer.concat(this.input)];
    return this.input[0]!;
  }

  private take(size: number): Buffer {
    const first = this.peek(size);
    const message = first.subarray(0, size);
    if (first.length === size) this.input.shift();
    else this.input[0] = first.subarray(size);
    this.inputLength -= size;
    return message;
  }

  private onStartupPacket(packet: Buffer): void {
    const requestCode = packet.readInt32BE(4);
    if (requestCode === SSL_REQUEST || requestCode === GSSENC_REQUEST) {
      // No encryption on a loopback-only port: 'N' tells the client to go on in plain text.
      this.write(Buffer.from('N'));
      return;
    }
    if (requestCode === CANCEL_REQUEST) {
      // A query runs to its end inside PGlite and cannot be interrupted; PostgreSQL, too, answers nothing.
      this.socket.end();
      this.onClose();
      return;
    }
    if (requestCode >> 16 !== 3) {
      this.fail(
        '0A000',
        `unsupported frontend protocol ${requestCode >> 16}.${requestCode & 0xffff}: the server supports 3.0`,
      );
      return;
    }
    if (this.options.tooMany) {
      this.fail('53300', 'sorry, too many clients already');
      return;
    }
    this.started = true;
    // PGlite answers the startup packet itself (AuthenticationOk, parameters, ReadyForQuery); it must be alone in its
    // call.
    this.jobs.push({ bytes: packet });
  }

  private onMessage(message: Buffer): void {
    const type = message[0]!;
    if (type === MSG.terminate) {
      // Messages after the last Sync would be rolled back by PostgreSQL at exit; dropping them is the same.
      this.pending = [];
      this.socket.end();
      this.onClose();
      return;
    }
    if (this.copyUpload) {
      this.copyUploadBytes += message.length;
      if (this.copyUploadBytes > this.options.maxCopyBytes) {
        // Keep only the COPY itself; PGlite answers the CopyFail below with the error the client sees.
        this.copyUpload.length = 1;
      } else {
        this.copyUpload.push(message);
      }
      if (type === MSG.copyDone || type === MSG.copyFail) {
        if (this.copyUploadBytes > this.options.maxCopyBytes) {
          this.copyUpload.push(
            copyFail(
              `more than ${this.options.maxCopyBytes} bytes of COPY data on the embedded database port (npm run ` +
                `import loads big files)`,
            ),
          );
        }
        this.jobs.push({ bytes: Buffer.concat(this.copyUpload), dropCopyInResponse: true });
        this.copyUpload = undefined;
      }
      return;
    }
    if (this.skipUntilSync) {
      if (type === MSG.sync) {
        this.skipUntilSync = false;
        this.jobs.push({ bytes: message });
      }
      return;
    }
    if (type === MSG.query && this.pending.length === 0) {
      const sql = cString(message, 5);
      if (COPY_FROM_STDIN.test(withoutComments(sql))) {
        if (/^\s*copy\b/i.test(withoutComments(sql))) {
          // PGlite needs a COPY's data in the same call as the COPY (asked for alone, it ends the whole process):
          // the client gets CopyInResponse from here, and the COPY runs once its data is complete.
          this.jobs.push({ reply: copyInResponse(/\bbinary\b/i.test(withoutComments(sql)) ? 1 : 0) });
          this.copyUpload = [message];
          this.copyUploadBytes = 0;
        } else {
          this.jobs.push({ bytes: REFUSE_COPY });
        }
        return;
      }
    }
    if (type === MSG.parse || type === MSG.query) {
      const sql = cString(message, type === MSG.parse ? message.indexOf(0, 5) + 1 : 5);
      if (COPY_FROM_STDIN.test(withoutComments(sql))) this.pendingRefused = true;
    }
    this.pending.push(this.renameStatements(message));
    if (GROUP_ENDS.has(type)) {
      if (this.pendingRefused) {
        // The refusal runs on the session, so an open transaction fails as it would in PostgreSQL.
        const flushed = type === MSG.flush;
        this.jobs.push({ bytes: REFUSE_COPY, dropReadyForQuery: flushed });
        this.skipUntilSync = flushed;
        this.pendingRefused = false;
        for (const pending of this.pending) if (pending[0] === MSG.parse) this.forgetStatement(pending);
      } else {
        this.jobs.push({ bytes: this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending) });
      }
      this.pending = [];
    }
  }

  private forgetStatement(parse: Buffer): void {
    const [name] = splitCString(parse, 5);
    this.statements.delete(name.toString('latin1'));
  }

  /**
   * Prefixes the names of prepared statements and portals with this connection's own; unnamed ones ('') are left
   * alone, since a group runs whole and the session is held across Flush. Records statements to close at the end.
   */
  private renameStatements(message: Buffer): Buffer {
    const type = message[0]!;
    switch (type) {
      case MSG.parse: {
        const [name, rest] = splitCString(message, 5);
        if (name.length === 0) return message;
        const renamed = Buffer.concat([this.namePrefix, name]);
        this.statements.add(renamed.toString('latin1'));
        return buildMessage(type, [renamed, Buffer.from([0]), message.subarray(rest)]);
      }
      case MSG.bind: {
        const [portal, afterPortal] = splitCString(message, 5);
        const [statement, rest] = splitCString(message, afterPortal);
        if (portal.length === 0 && statement.length === 0) return message;
        return buildMessage(type, [
          this.rename(portal),
          Buffer.from([0]),
          this.rename(statement),
          Buffer.from([0]),
          message.subarray(rest),
        ]);
      }
      case MSG.describe:
      case MSG.close: {
        const kind = message[5]!;
        const [name, rest] = splitCString(message, 6);
        if (name.length === 0) return message;
        const renamed = this.rename(name);
        if (type === MSG.close && kind === code('S')) this.statements.delete(renamed.toString('latin1'));
        return buildMessage(type, [Buffer.from([kind]), renamed, Buffer.from([0]), message.subarray(rest)]);
      }
      case MSG.execute: {
        const [portal, rest] = splitCString(message, 5);
        if (portal.length === 0) return message;
        return buildMessage(type, [this.rename(portal), Buffer.from([0]), message.subarray(rest)]);
      }
      default:
        return message;
    }
  }

  private rename(name: Buffer): Buffer {
    return name.length === 0 ? name : Buffer.concat([this.namePrefix, name]);
  }

  /** Runs this connection's waiting jobs in order, each with the session held; then cleans up if it closed. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    this.stopIdleTimer();
    try {
      while (this.jobs.length > 0 && !this.closed) {
        const job = this.jobs.shift()!;
        if ('reply' in job) {
          this.write(job.reply);
          continue;
        }
        await this.session.acquire(this);
        if (this.closed) break;
        const reply = await this.run(job);
        if (reply === undefined) break;
        this.inCopy = reply.inCopy;
        if (reply.idle) this.session.releaseFrom(this);
      }
      if (this.closed) await this.cleanUp();
      else if (this.session.isHeldBy(this)) this.startIdleTimer();
    } finally {
      this.pumping = false;
    }
  }

  /** One group on the session, its answer sent to the client; undefined when PGlite failed (the connection ends). */
  private async run(job: RunJob): Promise<ReplyScanner | undefined> {
    const reply = new ReplyScanner();
    const filtered = job.dropCopyInResponse || job.dropReadyForQuery;
    const held: Buffer[] = [];
    try {
      await this.db.runExclusive(() =>
        this.db.execProtocolRawStream(job.bytes, {
          onRawData: (chunk) => {
            reply.feed(chunk);
            // PGlite reuses the memory behind the chunk: copy it before it is queued on the socket.
            if (filtered) held.push(Buffer.from(chunk));
            else this.write(Buffer.from(chunk));
          },
        }),
      );
    } catch (error) {
      this.options.logger?.warn(
        { err: error, connection: this.id },
        'The embedded database failed a client request; closing that connection',
      );
      this.fail('XX000', `embedded database error: ${(error as Error).message}`);
      return undefined;
    }
    if (filtered) {
      const dropped = new Set<number>();
      if (job.dropCopyInResponse) dropped.add(MSG.copyInResponse);
      if (job.dropReadyForQuery) dropped.add(MSG.readyForQuery);
      this.write(Buffer.concat(splitReplies(Buffer.concat(held)).filter((message) => !dropped.has(message[0]!))));
    }
    return reply;
  }

  /** Leaves the session as if this connection had never been: no open COPY, transaction or prepared statement. */
  private async cleanUp(): Promise<void> {
    if (this.cleanedUp) return;
    this.cleanedUp = true;
    this.jobs.length = 0;
    this.copyUpload = undefined;
    this.stopIdleTimer();
    try {
      if ((this.session.isHeldBy(this) || this.statements.size > 0) && !this.db.closed) {
        await this.session.acquire(this);
        await this.db.runExclusive(async () => {
          const discard = { onRawData: () => {} };
          // A CopyFail ends a COPY; a Sync ends a half-sent extended query (and is answered harmlessly otherwise).
          await this.db.execProtocolRawStream(
            Buffer.concat([...(this.inCopy ? [copyFail('client connection closed')] : []), SYNC]),
            discard,
          );
          if (this.db.isInTransaction()) await this.db.execProtocolRawStream(simpleQuery('ROLLBACK'), discard);
          if (this.statements.size > 0) {
            const closes = [...this.statements].map((name) =>
              buildMessage(MSG.close, [Buffer.from('S'), Buffer.from(name, 'latin1'), Buffer.from([0])]),
            );
            await this.db.execProtocolRawStream(Buffer.concat([...closes, SYNC]), discard);
          }
        });
      }
    } catch (error) {
      this.options.logger?.warn(
        { err: error, connection: this.id },
        'Could not clean up after an embedded database client',
      );
    } finally {
      this.session.releaseFrom(this);
      this.statements.clear();
      this.options.onFinished();
      this.resolveFinished();
    }
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending = [];
    this.copyUpload = undefined;
    this.input = [];
    this.inputLength = 0;
    void this.pump();
  }

  private startIdleTimer(): void {
    if (this.options.idleTimeoutMs <= 0) return;
    this.idleTimer = setTimeout(() => {
      this.options.logger?.warn(
        { connection: this.id, idleMs: this.options.idleTimeoutMs },
        'Ended an embedded database client that held the database idle inside a transaction (the service waits ' +
          'meanwhile)',
      );
      this.fail(
        '25P03',
        'terminating connection due to idle-in-transaction timeout (the embedded database is shared with the service)',
      );
    }, this.options.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private stopIdleTimer(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** Sends a FATAL error and ends the connection, as PostgreSQL does. */
  private fail(sqlState: string, message: string): void {
    this.write(errorResponse(sqlState, message));
    this.socket.end();
    this.onClose();
  }

  private write(data: Buffer): void {
    if (!this.socket.destroyed && this.socket.writable) this.socket.write(data);
  }
}

const SYNC = buildMessage(MSG.sync, []);

const COPY_FROM_STDIN = /\bcopy\b[\s\S]*\bfrom\s+stdin\b/i;
const REFUSE_COPY = simpleQuery(
  "DO $$BEGIN RAISE EXCEPTION 'COPY FROM STDIN works on the embedded database port only as a simple query of its " +
    "own' " +
    "USING ERRCODE = 'feature_not_supported'; END$$",
);

/**
 * SQL without its comments, for the COPY check (a string literal that looks like a comment is not worth the parser).
 */
function withoutComments(sql: string): string {
  return sql.replace(/--[^\n]*/g, ' ').replace(/\/\*[\s\S]*?\*\//g, ' ');
}

function cString(message: Buffer, start: number): string {
  return splitCString(message, start)[0].toString('utf8');
}

/** Whole backend messages of a complete reply. */
function splitReplies(reply: Buffer): Buffer[] {
  const messages: Buffer[] = [];
  for (let at = 0; at + 5 <= reply.length; ) {
    const end = at + 1 + reply.readInt32BE(at + 1);
    messages.push(reply.subarray(at, end));
    at = end;
  }
  return messages;
}

function copyInResponse(format: 0 | 1): Buffer {
  // No column count: it is known only once PGlite runs the COPY, and clients send the data without it.
  return buildMessage(code('G'), [Buffer.from([format, 0, 0])]);
}

/** The bytes up to the next NUL from `start`, and the position after that NUL. */
function splitCString(message: Buffer, start: number): [Buffer, number] {
  const end = message.indexOf(0, start);
  if (end < 0) throw new Error('malformed message: unterminated string');
  return [message.subarray(start, end), end + 1];
}

function buildMessage(type: number, parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const message = Buffer.allocUnsafe(5 + body.length);
  message[0] = type;
  message.writeInt32BE(4 + body.length, 1);
  body.copy(message, 5);
  return message;
}

function simpleQuery(sql: string): Buffer {
  return buildMessage(MSG.query, [Buffer.from(sql), Buffer.from([0])]);
}

function copyFail(reason: string): Buffer {
  return buildMessage(MSG.copyFail, [Buffer.from(reason), Buffer.from([0])]);
}

function errorResponse(sqlState: string, message: string): Buffer {
  const field = (key: string, value: string) => Buffer.concat([Buffer.from(key), Buffer.from(value), Buffer.from([0])]);
  return buildMessage(code('E'), [
    field('S', 'FATAL'),
    field('V', 'FATAL'),
    field('C', sqlState),
    field('M', message),
    Buffer.from([0]),
  ]);
}
