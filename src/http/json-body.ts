/**
 * The JSON request parser: a body is read chunk by chunk as it arrives, each chunk scanned once for its nesting depth
 * and its number of values, then parsed by one `JSON.parse`. The scan is linear and runs a chunk at a time, so no
 * request holds the event loop for long however it is shaped; what it bounds is what makes `JSON.parse` slow (millions
 * of tiny values; a deep nesting that graphql-js would then walk). A body past a bound is refused before it is parsed.
 */
import { GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { jsonSyntaxReason } from '../plugins/wording.js';

export interface JsonBodyLimits {
  /** Most values (objects, lists and their members) one body may hold. */
  maxValues: number;
  /** Deepest nesting of objects and lists one body may have. */
  maxDepth: number;
}

/**
 * The bounds for a service whose largest request is a batch of `maxBatchSize` records: a record is one object of
 * eight members, so 16 values a record leaves room, and 16,384 more hold any read's filter.
 */
export function jsonBodyLimitsFor(maxBatchSize: number): JsonBodyLimits {
  return { maxValues: maxBatchSize * 16 + 16_384, maxDepth: 256 };
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_OBJECT = 0x7b;
const OPEN_ARRAY = 0x5b;
const CLOSE_OBJECT = 0x7d;
const CLOSE_ARRAY = 0x5d;

function badRequest(message: string, extensions: Record<string, unknown> = {}): GraphQLError {
  return new GraphQLError(message, {
    extensions: { code: 'BAD_REQUEST', ...extensions, http: { status: 400, spec: true } },
  });
}

/** Counts values and tracks depth over chunks of JSON text; strings are skipped, escapes included. */
class ShapeScan {
  private inString = false;
  private escaped = false;
  private depth = 0;
  private values = 0;

  constructor(private readonly limits: JsonBodyLimits) {}

  /** Scans one chunk; throws the 400 as soon as a bound is passed. */
  scan(chunk: Uint8Array): void {
    const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const end = bytes.length;
    let { inString, escaped, depth, values } = this;
    let i = 0;
    while (i < end) {
      if (inString) {
        if (escaped) {
          escaped = false;
          i++;
          continue;
        }
        // Strings are most of a batch's bytes: skipped to their closing quote natively, not a byte at a time.
        const quote = bytes.indexOf(QUOTE, i);
        const stop = quote < 0 ? end : quote;
        let backslashes = 0;
        while (stop - 1 - backslashes >= i && bytes[stop - 1 - backslashes] === BACKSLASH) backslashes++;
        if (quote < 0) {
          escaped = backslashes % 2 === 1;
          i = end;
        } else {
          if (backslashes % 2 === 0) inString = false;
          i = quote + 1;
        }
        continue;
      }
      const byte = bytes[i++] as number;
      if (byte === QUOTE) inString = true;
      else if (byte === OPEN_OBJECT || byte === OPEN_ARRAY) {
        values++;
        if (++depth > this.limits.maxDepth) {
          throw badRequest(`The request body nests objects and lists more than ${this.limits.maxDepth} levels deep.`, {
            limit: this.limits.maxDepth,
          });
        }
      } else if (byte === CLOSE_OBJECT || byte === CLOSE_ARRAY) depth--;
      else if (byte === COMMA && ++values > this.limits.maxValues) {
        throw badRequest(
          `The request body holds more than ${this.limits.maxValues} JSON values, more than any request of this ` +
            `service needs. ` +
            'Send large batches in several requests.',
          { limit: this.limits.maxValues },
        );
      }
    }
    Object.assign(this, { inString, escaped, depth, values });
  }
}

async function discardRest(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
  try {
    while (!(await reader.read()).done) {
      // dropped
    }
  } catch {
    // the body limit or a closed connection ended it: nothing is left to read
  }
}

export async function parseJsonBody(request: Request, limits: JsonBodyLimits): Promise<unknown> {
  const chunks: Uint8Array[] = [];
  const shape = new ShapeScan(limits);
  if (request.body) {
    const reader = request.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        shape.scan(value);
        chunks.push(value);
      }
    } catch (error) {
      // The rest is read and dropped (within the body limit), not cancelled: cancelling would destroy the connection
      // while the client still sends, and it would see a reset instead of this answer.
      void discardRest(reader);
      throw error;
    }
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw badRequest(`The request body is not valid JSON: ${jsonSyntaxReason(String((error as Error).message))}.`);
  }
  if (body === null || typeof body !== 'object') {
    throw badRequest(
      `The request body must be a JSON object with \`query\`, not ${body === null ? 'null' : typeof body}.`,
    );
  }
  return body;
}

/** Whether Yoga reads the request as a JSON body (its media type is canonical by then: src/http/listener.ts). */
function isJsonPost(request: Request): boolean {
  if (request.method !== 'POST') return false;
  const type = request.headers.get('content-type')?.split(';')[0];
  return type === 'application/json' || type === 'application/graphql+json';
}

/** Every JSON body is parsed by parseJsonBody (Yoga's body limit wraps it: it runs after every user plugin). */
export function useJsonBodyParser(limits: JsonBodyLimits): Plugin {
  return {
    onRequestParse({ request, setRequestParser }) {
      if (isJsonPost(request))
        setRequestParser((req) => parseJsonBody(req, limits) as ReturnType<Parameters<typeof setRequestParser>[0]>);
    },
  };
}
