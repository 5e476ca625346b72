/**
 * Large JSON request bodies (ingestion batches) parsed without ever holding the whole body as one string.
 *
 * Yoga reads a JSON body as one string (whatwg-node's `text()`) and `JSON.parse`s it. A batch of 1,000 records is
 * ~230 KB of JSON: over V8's regular object size (~128 KB), so each such string is given a large-object page of its
 * own, mapped for it and unmapped when it is collected (~0.9 ms of page faults per batch on a virtual machine), and
 * freed only by a full collection once a scavenge has promoted it. Together with the request's buffers, which Yoga's
 * request keeps alive while the batch is stored, that was ~150 MB of garbage waiting in a busy process (bench/README.md).
 *
 * So the listener reads such a body itself and `parseJsonBody` parses it from its bytes: objects member by member,
 * arrays in groups of elements of at most GROUP_BYTES, each group one `JSON.parse` of its text (a regular string).
 * Every value comes out of `JSON.parse`, so it is the value JSON.parse gives for the whole body. The parser only finds
 * where values begin and end; whatever it does not expect (invalid JSON, a `__proto__` key, a byte order mark) makes
 * it give up (undefined), and the body then goes to Yoga as it came, which answers it exactly as before.
 * Yoga gets the parsed body from `ParsedBodies.plugin()`, its request parser for these requests.
 * `useParseErrorsWithoutBody` keeps Yoga's own "invalid JSON" answers, for every request, from quoting the body back.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import type { Plugin } from 'graphql-yoga';
import { noteArrival, observeLargeBody } from '../observability/metrics.js';

/**
 * The most bytes of JSON one `JSON.parse` gets: its text is a regular V8 string (under ~128 KB even when every
 * character takes two bytes).
 */
export const GROUP_BYTES = 60_000;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

/** JSON's whitespace: space, tab, line feed, carriage return. */
function isSpace(byte: number | undefined): boolean {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09;
}

/** Two objects apart in an array, as JSON.stringify writes them. */
const OBJECTS_APART = Buffer.from('},{');

/** Thrown inside the parser where the body is not what it expects; parseJsonBody answers undefined. */
class GiveUp extends Error {}

class Parser {
  pos = 0;

  constructor(
    private readonly buf: Buffer,
    private readonly groupBytes: number,
  ) {}

  skipSpace(): void {
    while (isSpace(this.buf[this.pos])) this.pos++;
  }

  value(): unknown {
    const first = this.buf[this.pos];
    if (first === OPEN_OBJECT) return this.object();
    if (first === OPEN_ARRAY) return this.array();
    const end = this.valueEnd(this.pos);
    const value: unknown = JSON.parse(this.buf.toString('utf8', this.pos, end));
    this.pos = end;
    return value;
  }

  /** Steps past an opening bracket; true, past the closing one too, when nothing but spaces is between them. */
  empty(close: number): boolean {
    this.pos++;
    this.skipSpace();
    if (this.buf[this.pos] !== close) return false;
    this.pos++;
    return true;
  }

  object(): Record<string, unknown> {
    const buf = this.buf;
    const out: Record<string, unknown> = {};
    if (this.empty(CLOSE_OBJECT)) return out;
    for (;;) {
      this.skipSpace();
      if (buf[this.pos] !== QUOTE) throw new GiveUp();
      const keyEnd = this.stringEnd(this.pos);
      const key = JSON.parse(buf.toString('utf8', this.pos, keyEnd)) as string;
      // JSON.parse makes it an own property; an assignment would set the object's prototype.
      if (key === '__proto__') throw new GiveUp();
      this.pos = keyEnd;
      this.skipSpace();
      if (buf[this.pos] !== COLON) throw new GiveUp();
      this.pos++;
      this.skipSpace();
      out[key] = this.value();
      this.skipSpace();
      const next = buf[this.pos++];
      if (next === CLOSE_OBJECT) return out;
      if (next !== COMMA) throw new GiveUp();
    }
  }

  /**
   * Elements parsed in groups: the text of consecutive elements (with their commas) is one JSON.parse of `[...]`.
   * Where elements are objects written without spaces between them (`},{`: what JSON.stringify and most clients
   * write), a group is cut at the last `},{` before GROUP_BYTES, unscanned: JSON.parse itself says whether the cut
   * fell between two elements (JSON's grammar is unambiguous: if the group parses, the cut was a boundary of this
   * array). The rest, or elements written otherwise, are delimited by scanning their bytes.
   */
  array(): unknown[] {
    const buf = this.buf;
    const out: unknown[] = [];
    if (this.empty(CLOSE_ARRAY)) return out;
    for (;;) {
      const start = this.pos;
      const found = buf.lastIndexOf(OBJECTS_APART, start + this.groupBytes - 1);
      if (found <= start) break;
      try {
        this.group(start, found + 1, out);
      } catch {
        break;
      }
      this.pos = found + 2;
    }
    let groupStart = -1;
    let groupEnd = -1;
    const flush = () => {
      if (groupStart < 0) return;
      this.group(groupStart, groupEnd, out);
      groupStart = -1;
    };
    for (;;) {
      this.skipSpace();
      const start = this.pos;
      const end = this.valueEnd(start);
      if (end - start > this.groupBytes) {
        // One element larger than a group: parsed on its own, member by member.
        flush();
        out.push(this.value());
      } else {
        if (groupStart >= 0 && end - groupStart > this.groupBytes) flush();
        if (groupStart < 0) groupStart = start;
        groupEnd = end;
        this.pos = end;
      }
      this.skipSpace();
      const next = buf[this.pos++];
      if (next === CLOSE_ARRAY) {
        flush();
        return out;
      }
      if (next !== COMMA) throw new GiveUp();
    }
  }

  /** Appends the elements written from `start` to `end` (with the commas between them): one JSON.parse, or it throws. */
  group(start: number, end: number, out: unknown[]): void {
    for (const item of JSON.parse(`[${this.buf.toString('utf8', start, end)}]`) as unknown[]) out.push(item);
  }

  /** Index after the string that opens at `start` (its closing quote). */
  stringEnd(start: number): number {
    const buf = this.buf;
    const length = buf.length;
    for (let i = start + 1; i < length; i++) {
      const byte = buf[i];
      if (byte === QUOTE) return i + 1;
      if (byte === BACKSLASH) i++;
    }
    throw new GiveUp();
  }

  /**
   * Index after the value that begins at `start`, found without parsing it: brackets counted outside strings, a
   * scalar up to the next delimiter. Whether it is valid is for JSON.parse to say.
   */
  valueEnd(start: number): number {
    const buf = this.buf;
    const length = buf.length;
    const first = buf[start];
    if (first === QUOTE) return this.stringEnd(start);
    if (first === OPEN_OBJECT || first === OPEN_ARRAY) {
      let depth = 0;
      let inString = false;
      for (let i = start; i < length; i++) {
        const byte = buf[i] as number;
        if (inString) {
          if (byte === QUOTE) inString = false;
          else if (byte === BACKSLASH) i++;
        } else if (byte === QUOTE) inString = true;
        else if (byte === OPEN_OBJECT || byte === OPEN_ARRAY) depth++;
        else if ((byte === CLOSE_OBJECT || byte === CLOSE_ARRAY) && --depth === 0) return i + 1;
      }
      throw new GiveUp();
    }
    let i = start;
    while (i < length) {
      const byte = buf[i];
      if (byte === COMMA || byte === CLOSE_OBJECT || byte === CLOSE_ARRAY || byte === COLON || isSpace(byte)) break;
      i++;
    }
    if (i === start) throw new GiveUp();
    return i;
  }
}

/**
 * The value JSON.parse gives for the body's UTF-8 text, or undefined where this parser gives up (the body is not
 * valid JSON, or is JSON it leaves to JSON.parse itself: a `__proto__` key, a byte order mark).
 */
export function parseJsonBody(body: Buffer, groupBytes = GROUP_BYTES): unknown {
  const parser = new Parser(body, groupBytes);
  try {
    parser.skipSpace();
    const value = parser.value();
    parser.skipSpace();
    return parser.pos === body.length ? value : undefined;
  } catch {
    // GiveUp, JSON.parse's SyntaxError, or a RangeError on nesting deeper than the stack: JSON.parse judges the body.
    return undefined;
  }
}

/** `application/json`, with no charset or utf-8 (what Yoga reads as JSON). */
function isJsonBody(contentType: string | undefined): boolean {
  if (contentType === undefined) return false;
  const value = contentType.replace(/\s/g, '').toLowerCase();
  return value === 'application/json' || value === 'application/json;charset=utf-8';
}

/**
 * The declared length of a POST of JSON (UTF-8) to /graphql with a Content-Length and no chunked body; NaN for any
 * other request. What the direct read path and ParsedBodies both take, by the length.
 */
export function jsonPostLength(req: IncomingMessage): number {
  if (req.method !== 'POST' || req.url !== '/graphql' || req.headers['transfer-encoding'] !== undefined) return Number.NaN;
  return isJsonBody(req.headers['content-type']) ? Number(req.headers['content-length']) : Number.NaN;
}

/** Bodies larger than this (smaller ones stay regular strings in Yoga's parse). */
export const PARSED_BODY_MIN = 65_536;

/**
 * Large JSON POST bodies for Yoga: read by the listener, parsed by parseJsonBody when Yoga asks for the request's
 * parameters (after the API key and CSRF checks, so a refused request is never parsed). `plugin()` is that parser; where
 * parseJsonBody gives up, Yoga's own parser reads the body as it came and answers it as it always has.
 */
export class ParsedBodies {
  /** Bodies read here, until Yoga's request parser takes them. */
  private readonly bodies = new WeakMap<IncomingMessage, { body: Buffer | null }>();

  constructor(private readonly toYoga: (req: IncomingMessage, res: ServerResponse) => void) {}

  /** A POST of JSON (UTF-8) to /graphql with a Content-Length over PARSED_BODY_MIN. */
  accepts(req: IncomingMessage): boolean {
    return jsonPostLength(req) > PARSED_BODY_MIN;
  }

  serve(req: IncomingMessage, res: ServerResponse): void {
    // graphql_request_duration_seconds counts from here, as it does for the requests Yoga reads itself.
    noteArrival(req);
    readBody(req, (body) => {
      const held = { body: body as Buffer | null };
      this.bodies.set(req, held);
      // whatwg-node reads a request's `body`, when set, in place of its (here consumed) stream. It hands out the
      // bytes only if Yoga's own parser reads it; once parsed here they are let go, not kept by the request while
      // the batch is stored.
      const stream = new Readable({
        read() {
          if (held.body) this.push(held.body);
          held.body = null;
          this.push(null);
        },
      });
      Object.assign(req, { body: stream });
      this.toYoga(req, res);
    });
  }

  /** Yoga's request parser for the bodies read here (user plugins come after Yoga's own parsers and checks). */
  plugin(): Plugin {
    return {
      onRequestParse: ({ serverContext, requestParser: yogaParser, setRequestParser }) => {
        const req = (serverContext as { req?: IncomingMessage } | undefined)?.req;
        const held = req && this.bodies.get(req);
        if (!held || !yogaParser) return;
        this.bodies.delete(req);
        setRequestParser((request) => {
          const value = held.body && parseJsonBody(held.body);
          // Yoga answers anything but a non-empty object (a batch of operations, a wrong shape) from the body itself.
          if (typeof value !== 'object' || value === null || Array.isArray(value) || Object.keys(value).length === 0) {
            observeLargeBody('yoga');
            return yogaParser(request);
          }
          observeLargeBody('listener');
          held.body = null;
          return value as Record<string, unknown>;
        });
      },
    };
  }
}

/** Yoga's request parser type (not exported by graphql-yoga). */
type RequestParser = NonNullable<Parameters<NonNullable<Plugin['onRequestParse']>>[0]['requestParser']>;

/** Longest `originalError.message` answered as it is when it is none of JSON.parse's two forms. */
const PARSE_MESSAGE_MAX = 200;
const NOT_JSON = ' is not valid JSON';

/**
 * Yoga's "POST body sent invalid JSON." answers without the body: whatwg-node appends the whole body text to
 * JSON.parse's message (`, "<body>" is not valid JSON`), and Yoga answers that message in `extensions.originalError`,
 * so a damaged 1 MB batch came back as a 1 MB error. JSON.parse's own words, with the position, are kept. Registered
 * after every plugin that sets a request parser: it wraps whichever one a request ends up with.
 */
export function useParseErrorsWithoutBody(): Plugin {
  return {
    onRequestParse: ({ requestParser, setRequestParser }) => {
      if (requestParser) setRequestParser(withoutQuotedBody(requestParser));
    },
  };
}

function withoutQuotedBody(parse: RequestParser): RequestParser {
  const shorten = (error: unknown): never => {
    const original = (error as { extensions?: { originalError?: { message?: unknown } } } | null)?.extensions?.originalError;
    const message = original?.message;
    if (original && typeof message === 'string') {
      // JSON.parse's message: "... in JSON at position N", or "Unexpected token ..., "<excerpt>" is not valid JSON".
      const position = /^.*? in JSON at position \d+(?: \(line \d+ column \d+\))?/s.exec(message);
      const excerptEnd = message.indexOf(`${NOT_JSON}, "`);
      if (position) original.message = position[0];
      else if (excerptEnd >= 0) original.message = message.slice(0, excerptEnd + NOT_JSON.length);
      else if (message.length > PARSE_MESSAGE_MAX) original.message = `${message.slice(0, PARSE_MESSAGE_MAX)}…`;
    }
    throw error;
  };
  return (request) => {
    try {
      const parsed = parse(request);
      return isThenable(parsed) ? (Promise.resolve(parsed).catch(shorten) as ReturnType<RequestParser>) : parsed;
    } catch (error) {
      return shorten(error);
    }
  };
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null)?.then === 'function';
}

/**
 * Calls `done` with the request's whole body once it has arrived; a client that goes away mid-body leaves nothing to
 * answer (its socket is already closed).
 */
export function readBody(req: IncomingMessage, done: (body: Buffer) => void): void {
  const chunks: Buffer[] = [];
  req.on('data', (chunk: Buffer) => chunks.push(chunk));
  req.on('error', () => {});
  req.on('end', () => done(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
}
