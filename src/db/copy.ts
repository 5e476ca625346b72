/**
 * `COPY ... FROM STDIN` of data held in memory, in one round trip.
 *
 * pg-copy-streams sends the COPY statement, waits for PostgreSQL's CopyInResponse, and only then sends the data: two
 * round trips, and between them the connection waits for this process's event loop, which under concurrent ingestion
 * is busy with other batches, so PostgreSQL's backends spend their time waiting on the client.
 * Here the statement, the data and the end of the data go out in one write. The protocol allows it: PostgreSQL reads
 * the data once it has started the COPY, and if the statement fails before or during the COPY, it drops the CopyData
 * and CopyDone messages that follow ("any subsequent CopyData, CopyDone, or CopyFail messages issued by the frontend
 * will simply be dropped", Frontend/Backend Protocol, COPY Operations), so the connection stays usable.
 */
import type pg from 'pg';

/** The parts of pg's connection a query object uses. */
interface PgConnection {
  stream: { cork(): void; uncork(): void; write(data: Buffer | string, encoding?: BufferEncoding): boolean };
}

/** CopyDone: 'c', length 4. */
const COPY_DONE = Buffer.from([0x63, 0, 0, 0, 4]);

/** A query object for pg's client (the same interface pg-copy-streams implements), on a connection not pipelined. */
class CopyInOneWrite {
  rowCount = 0;
  /** The Query message and the CopyData header; the data itself is written as the strings it is. */
  private readonly head: Buffer;
  private readonly data: readonly string[];

  constructor(statement: string, data: string | readonly string[], settle: (error: Error | null) => void) {
    this.data = typeof data === 'string' ? [data] : data;
    // pg wraps `callback` with its read timeout (query_timeout) when one is configured: calling it clears the timer.
    this.callback = settle;
    const statementBytes = Buffer.byteLength(statement);
    const head = Buffer.allocUnsafe(1 + 4 + statementBytes + 1 + 1 + 4);
    // Query: 'Q', length (itself included), the statement, a NUL.
    let at = head.writeUInt8(0x51, 0);
    at = head.writeUInt32BE(4 + statementBytes + 1, at);
    at += head.write(statement, at, 'utf8');
    at = head.writeUInt8(0, at);
    // CopyData: 'd', length, then the bytes.
    at = head.writeUInt8(0x64, at);
    let bytes = 0;
    for (const part of this.data) bytes += Buffer.byteLength(part);
    head.writeUInt32BE(4 + bytes, at);
    this.head = head;
  }

  callback: (error: Error | null) => void;

  submit(connection: PgConnection): void {
    // One write (corked: a single writev). The data goes as a string: the socket copies it into memory it frees at
    // once, where a Buffer of it would be garbage-collected memory waiting for the next collection.
    const stream = connection.stream;
    stream.cork();
    stream.write(this.head);
    for (const part of this.data) if (part.length > 0) stream.write(part, 'utf8');
    stream.write(COPY_DONE);
    stream.uncork();
  }

  /** The data went out with the statement: nothing to do when PostgreSQL says it is ready for it. */
  handleCopyInResponse(): void {}

  handleCommandComplete(message: { text?: string }): void {
    const match = /^COPY (\d+)/.exec(message.text ?? '');
    if (match) this.rowCount = Number(match[1]);
  }

  handleReadyForQuery(): void {
    this.callback(null);
  }

  /** PostgreSQL's error (pg then no longer treats this query as active), or the connection's. */
  handleError(error: Error): void {
    this.callback(error);
  }
}

/**
 * COPY text built line by line into strings of at most ~64 KB: V8 gives a string over 128 KB a page of its own, mapped
 * and unmapped around it, and those page faults cost more than building the text.
 */
export class CopyText {
  private readonly parts: string[] = [];
  private current = '';

  add(line: string): void {
    this.current += line;
    if (this.current.length >= COPY_TEXT_PART) {
      this.parts.push(this.current);
      this.current = '';
    }
  }

  /** The parts, for copyInOneWrite. */
  done(): string[] {
    if (this.current.length > 0) this.parts.push(this.current);
    this.current = '';
    return this.parts;
  }
}
/** Characters per part: with the line that passes it, still far below V8's 128 KB (UTF-16 code units count double). */
const COPY_TEXT_PART = 32_768;

/**
 * Runs `statement` (a `COPY ... FROM STDIN`) with `data` in COPY's text format, as one string or in parts (CopyText);
 * resolves with the rows copied.
 */
export function copyInOneWrite(
  client: pg.ClientBase,
  statement: string,
  data: string | readonly string[],
): Promise<number> {
  return new Promise((resolve, reject) => {
    const query = new CopyInOneWrite(statement, data, (error) => (error ? reject(error) : resolve(query.rowCount)));
    // A query object with `submit` is what pg documents for custom queries (pg.Submittable).
    client.query(query);
  });
}

const COPY_ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' };
const NEEDS_COPY_ESCAPE = /[\\\t\n\r]/;

/** A value in COPY's text format (`\N` is null). Text must hold no NUL: COPY cannot carry it. */
export function copyField(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return '\\N';
  if (typeof value === 'string') {
    return NEEDS_COPY_ESCAPE.test(value) ? value.replace(/[\\\t\n\r]/g, (c) => COPY_ESCAPES[c] as string) : value;
  }
  if (typeof value === 'boolean') return value ? 't' : 'f';
  return `${value}`;
}

/** bytea in COPY's text format: a doubled backslash, which COPY reads as one, then bytea's hex input. */
export function copyBytea(hex: string): string {
  return `\\\\x${hex}`;
}

/** Characters that must be backslash-escaped inside a quoted element of an array literal. */
const ARRAY_ESCAPES = /["\\]/g;

/**
 * One element of a PostgreSQL array literal: text always quoted (so spaces, commas, braces and "NULL" stay text), or
 * NULL. Text must hold no NUL and no unpaired surrogate.
 */
export function arrayElement(value: string | number | boolean | null | undefined): string {
  if (value === null || value === undefined) return 'NULL';
  if (typeof value === 'boolean') return value ? 't' : 'f';
  if (typeof value === 'number') return `${value}`;
  ARRAY_ESCAPES.lastIndex = 0;
  return ARRAY_ESCAPES.test(value) ? `"${value.replace(ARRAY_ESCAPES, '\\$&')}"` : `"${value}"`;
}
