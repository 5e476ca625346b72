/**
 * A small HTTP client for the fault tests, on node:http so that what happened on the wire stays visible: a refused
 * connection, a reset before any answer, an answer cut off half-way, or a whole answer.
 */
import http from 'node:http';

export type Outcome =
  /** A whole response (status line, headers and the complete body). */
  | { kind: 'response'; status: number; headers: http.IncomingHttpHeaders; body: string; ms: number }
  /** The connection was refused: the request never reached the service. */
  | { kind: 'refused'; ms: number }
  /** Anything else: reset, hang-up, timeout; `partial` when some of the response had arrived. */
  | { kind: 'network'; code: string; partial: boolean; ms: number };

export interface PostOptions {
  agent?: http.Agent;
  timeoutMs?: number;
  headers?: Record<string, string>;
}

/** POSTs `payload` (JSON) to `url` and reports what happened; never throws. */
export function postJson(url: string, payload: unknown, options: PostOptions = {}): Promise<Outcome> {
  const started = Date.now();
  const body = Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload));
  return new Promise<Outcome>((resolve) => {
    let settled = false;
    let partial = false;
    const done = (outcome: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const fail = (error: NodeJS.ErrnoException) => {
      const code = error.code ?? error.message;
      done(
        code === 'ECONNREFUSED'
          ? { kind: 'refused', ms: Date.now() - started }
          : { kind: 'network', code, partial, ms: Date.now() - started },
      );
    };
    const request = http.request(url, {
      method: 'POST',
      agent: options.agent ?? false,
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        'content-length': String(body.length),
        ...options.headers,
      },
    });
    const timer = setTimeout(() => {
      request.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' }));
    }, options.timeoutMs ?? 30_000);
    request.on('error', fail);
    request.on('response', (response) => {
      partial = true;
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', fail);
      response.on('aborted', () => fail(Object.assign(new Error('response aborted'), { code: 'ABORTED' })));
      response.on('end', () => {
        if (!response.complete) {
          fail(Object.assign(new Error('response incomplete'), { code: 'INCOMPLETE' }));
          return;
        }
        done({
          kind: 'response',
          status: response.statusCode ?? 0,
          headers: response.headers,
          body: Buffer.concat(chunks).toString('utf8'),
          ms: Date.now() - started,
        });
      });
    });
    request.end(body);
  });
}

/** GET `url`; the same outcomes. */
export function get(url: string, options: PostOptions = {}): Promise<Outcome> {
  const started = Date.now();
  return new Promise<Outcome>((resolve) => {
    const request = http.get(
      url,
      { agent: options.agent ?? false, timeout: options.timeoutMs ?? 30_000 },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', (error: NodeJS.ErrnoException) =>
          resolve({ kind: 'network', code: error.code ?? error.message, partial: true, ms: Date.now() - started }),
        );
        response.on('end', () =>
          resolve({
            kind: 'response',
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks).toString('utf8'),
            ms: Date.now() - started,
          }),
        );
      },
    );
    request.on('timeout', () =>
      request.destroy(Object.assign(new Error('client timeout'), { code: 'CLIENT_TIMEOUT' })),
    );
    request.on('error', (error: NodeJS.ErrnoException) =>
      resolve(
        error.code === 'ECONNREFUSED'
          ? { kind: 'refused', ms: Date.now() - started }
          : { kind: 'network', code: error.code ?? error.message, partial: false, ms: Date.now() - started },
      ),
    );
  });
}

export interface GraphQLBody {
  data?: Record<string, unknown> | null;
  errors?: Array<{ message: string; extensions?: Record<string, unknown> }>;
}

/** The parsed GraphQL body of a whole response, or undefined when it is not JSON. */
export function graphQLBody(outcome: Outcome): GraphQLBody | undefined {
  if (outcome.kind !== 'response') return undefined;
  try {
    return JSON.parse(outcome.body) as GraphQLBody;
  } catch {
    return undefined;
  }
}

/** The GraphQL error codes in a whole response. */
export function errorCodes(outcome: Outcome): string[] {
  return (graphQLBody(outcome)?.errors ?? []).map((error) => String(error.extensions?.code ?? 'NONE'));
}

export const INGEST_MUTATION = /* GraphQL */ `
  mutation Ingest($records: [UserMetricInput!]!) {
    ingestMetrics(records: $records) { accepted duplicates rejected { index code message } }
  }`;

/** `count` valid records whose eventIds are `${prefix}${i}`. */
export function makeBatch(
  prefix: string,
  count: number,
  nowSeconds = Math.floor(Date.now() / 1000),
): Array<Record<string, unknown>> {
  return Array.from({ length: count }, (_, i) => ({
    eventId: `${prefix}${i}`,
    userId: `user-${i % 7}`,
    sessionId: `${prefix}session`,
    timestamp: nowSeconds - 60 - (i % 3600),
    talkedTime: i % 600,
    microphoneUsed: i % 2 === 0,
    speakerUsed: i % 3 === 0,
    voiceSentiment: i % 5 === 0 ? null : 'neutral',
  }));
}

/** Whether an outcome acknowledges an ingest batch of `size` records: stored (accepted) or already there (duplicates). */
export function acknowledged(outcome: Outcome, size: number): { accepted: number; duplicates: number } | undefined {
  const body = graphQLBody(outcome);
  const result = body?.data?.ingestMetrics as { accepted: number; duplicates: number; rejected: unknown[] } | undefined;
  if (outcome.kind !== 'response' || outcome.status !== 200 || body?.errors?.length || !result) return undefined;
  if (result.rejected.length > 0 || result.accepted + result.duplicates !== size) return undefined;
  return { accepted: result.accepted, duplicates: result.duplicates };
}

/**
 * The events of a server-sent-events body as they arrive: each block's `event:` type and its `data:` lines joined.
 * Ends when the body ends; throws what reading it throws (an abort, say).
 */
export async function* sseEvents(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<{ type: string | undefined; data: string }> {
  const decoder = new TextDecoder();
  let buffer = '';
  const reader = body.getReader();
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
    buffer += decoder.decode(chunk.value, { stream: true });
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const lines = buffer.slice(0, end).split('\n');
      buffer = buffer.slice(end + 2);
      const type = lines
        .find((l) => l.startsWith('event:'))
        ?.slice(6)
        .trim();
      const data = lines
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      yield { type, data };
    }
  }
}
