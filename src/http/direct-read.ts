/**
 * Direct reads: a read a client repeats is answered without Yoga's request pipeline.
 *
 * A page of 100 records through Yoga cost ~2.9-3.1 x the same SQL run directly (bench/README.md); half of what the
 * service added to the SQL was Yoga's and whatwg-node's handling of the request and the response (a fetch Request and
 * Response per request, their header objects and streams, envelop's hooks, promise helpers) and the garbage it leaves.
 * So the Node listener answers a read itself when Yoga has already answered the same query text cleanly once:
 *
 * - What Yoga checked once and cannot change with the request, it is not asked again: the body's query text was parsed,
 *   validated (depth, aliases, tokens, directives, introspection) and run without any error by Yoga, as a `query` whose
 *   root fields all run compiled (src/http/execute.ts). Up to KNOWN_MAX such texts are remembered.
 * - What depends on the request is checked here exactly as Yoga's plugins check it, with their own functions: the API
 *   key (src/http/auth.ts `identify`, including its lookup on every request), the scopes and the cost of the operation
 *   with these variables (src/http/security.ts `executionChecks`), the depth of the variables.
 * - Only a clean answer is written here: status 200, the body and content type Yoga writes for the same result.
 *   Anything else goes to Yoga with the body already read, so every refusal and error is Yoga's, word for word: a body
 *   that is not a plain
 *   `{ query, variables, operationName }`, an unknown text, a missing, malformed or refused key (401), a missing scope
 *   (403), a cost past the limit, a result with errors (Yoga then answers with that result, masked, instead of running
 *   the operation a second time). Requests with an `Origin` (CORS), an `Accept` Yoga would not answer with JSON, or a
 *   chunked body always go to Yoga.
 *
 * Reads are not rate-limited (only ingestion is), and the request is counted and timed in /metrics as Yoga's are.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { type DocumentNode, type ExecutionArgs, type ExecutionResult, type GraphQLSchema, OperationTypeNode } from 'graphql';
import { type Plugin, isAsyncIterable } from 'graphql-yoga';
import type { RequestContext } from '../context.js';
import { variablesTooDeep } from '../input-guards.js';
import type { Logger } from '../logger.js';
import { observeRequest } from '../observability/metrics.js';
import type { Caller } from '../services/api-keys.js';
import type { Identified } from './auth.js';
import { executeOperation, isCompiledRead } from './execute.js';
import { findOperation } from './operation.js';
import { jsonPostLength, readBody } from './json-body.js';
import type { ExecutionCheck } from './security.js';

/** Query texts remembered; past this many, new ones are not (they keep going through Yoga). */
const KNOWN_MAX = 500;
/** Longer query texts are not remembered: bounds the memory the texts hold (500 x 16 KB at most). */
const QUERY_TEXT_MAX = 16_384;
/**
 * Larger bodies go to Yoga without being read here: a read's body is a query text and its variables (32 KiB still
 * holds a filter with a thousand ids), and an ingestion batch read here would only be parsed twice.
 */
const BODY_MAX = 32_768;

interface KnownRead {
  document: DocumentNode;
  /** The operation's own name, for /metrics. */
  name: string | undefined;
}

type Execution = ExecutionResult | Promise<ExecutionResult>;

/** A read under way: who asked, and its execution (null when a check refused it). */
interface Run {
  identified: Identified;
  execution: Execution | null;
}

interface ReadRequest {
  query: string;
  variables?: Record<string, unknown> | null;
  operationName?: string | null;
}

export interface DirectReadOptions {
  schema: GraphQLSchema;
  /** The caller an Authorization header names; throws where Yoga must answer (401). */
  identify(header: string | undefined): Promise<Identified>;
  /** The same, at once, for a key this process knows (its lookup started); else null. */
  identifyKnown(header: string | undefined): Identified | null;
  /** Database.together: the statements `work` sends leave in one write. */
  together<T>(work: () => T): T;
  /** What Yoga's plugins check before execution that depends on the caller or the variables (security.ts). */
  executionChecks: readonly ExecutionCheck[];
  /** The GraphQL context of a request, as Yoga's context factory makes it. */
  context(requestId: string, caller: Caller, params: ReadRequest): RequestContext;
  /** Hands a request to Yoga (its `body` set when it was read here). */
  toYoga(req: IncomingMessage, res: ServerResponse): void;
  logger: Logger;
}

const key = (query: string, operationName: string | null | undefined) => `${operationName ?? ''}\n${query}`;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The body as a read request, when it is exactly the plain shape (anything else is for Yoga to judge). */
function readRequest(body: Buffer): ReadRequest | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return null;
  }
  if (!isPlainObject(parsed) || typeof parsed.query !== 'string') return null;
  for (const name in parsed) if (name !== 'query' && name !== 'variables' && name !== 'operationName') return null;
  const { variables, operationName } = parsed;
  if (variables != null && !isPlainObject(variables)) return null;
  if (operationName != null && (typeof operationName !== 'string' || operationName === '')) return null;
  return parsed as unknown as ReadRequest;
}

/**
 * The media type Yoga answers a (non-streamed) result with for this Accept header, or null when that is not one of
 * its two JSON types. Yoga's choice (its use-result-processor.js): over the asked types from last to first, utf-8
 * only, the last one its JSON processor offers (`application/graphql-response+json`, then `application/json`) that
 * matches wins; without an Accept header, any type.
 */
function answerType(accept: string | undefined): string | null {
  const asked = (accept || '*/*').replace(/\s/g, '').toLowerCase().split(',').reverse();
  let chosen: string | null = null;
  for (const entry of asked) {
    const [type, ...params] = entry.split(';');
    if (type === undefined || (params.find((p) => p.includes('charset=')) ?? 'charset=utf-8') !== 'charset=utf-8') continue;
    const [askedMain, askedSub] = type.split('/');
    for (const offered of JSON_TYPES) {
      const [main, sub] = offered.split('/');
      if ((askedMain === '*' || askedMain === main) && (askedSub === '*' || askedSub === sub)) chosen = offered;
    }
  }
  return chosen;
}
const JSON_TYPES = ['application/graphql-response+json', 'application/json'];

export class DirectReads {
  private readonly known = new Map<string, KnownRead>();
  /** Bodies read here and results run here, for the Yoga requests they are handed over with. */
  private readonly handedOver = new WeakMap<IncomingMessage, ExecutionResult>();

  constructor(private readonly options: DirectReadOptions) {}

  /** Whether a request may be answered here, by its headers alone (the body decides the rest). */
  accepts(req: IncomingMessage): boolean {
    if (this.known.size === 0) return false;
    const length = jsonPostLength(req);
    return (
      length > 0 &&
      length <= BODY_MAX &&
      req.headers.origin === undefined &&
      answerType(req.headers.accept) !== null &&
      // Yoga would see repeated Authorization headers joined into one (refused as malformed); Node keeps the first.
      (req.headersDistinct.authorization?.length ?? 0) <= 1
    );
  }

  /** Answers the request, or hands it to Yoga. */
  serve(req: IncomingMessage, res: ServerResponse, requestId: string): void {
    const started = performance.now();
    readBody(req, (body) => {
      this.answer(req, res, requestId, started, body).catch((error: unknown) => {
        // Nothing here should throw (each failure is handed to Yoga); if something does, it is a bug: logged, and Yoga
        // answers.
        this.options.logger.error({ err: error, requestId }, 'Direct read failed; the request was handed to Yoga');
        this.handOver(req, res, body);
      });
    });
  }

  /** The Yoga plugin: remembers reads that ran cleanly, and answers a handed-over request with its result. */
  plugin(): Plugin {
    return {
      onExecute: ({ args, setExecuteFn }) => {
        const context = args.contextValue as RequestContext & { req?: IncomingMessage };
        const result = context.req && this.handedOver.get(context.req);
        if (result) {
          setExecuteFn(() => result);
          return;
        }
        const params = context.params;
        if (this.known.size >= KNOWN_MAX || typeof params?.query !== 'string' || params.query.length > QUERY_TEXT_MAX) return;
        if (this.known.has(key(params.query, params.operationName)) || !isCompiledRead(args)) return;
        return {
          onExecuteDone: ({ result }) => {
            if (isAsyncIterable(result) || (result.errors?.length ?? 0) > 0) return;
            const name = findOperation(args.document, args.operationName)?.name?.value ?? params.operationName ?? undefined;
            this.known.set(key(params.query as string, params.operationName), { document: args.document, name });
          },
        };
      },
    };
  }

  private async answer(req: IncomingMessage, res: ServerResponse, requestId: string, started: number, body: Buffer): Promise<void> {
    const request = readRequest(body);
    const known = request && this.known.get(key(request.query, request.operationName));
    if (!request || !known || variablesTooDeep(request.variables)) return this.handOver(req, res, body);
    const header = req.headers.authorization;
    // A key this process knows: its lookup and the read's first statement leave together (one write, one round trip).
    let run: Run | null = this.options.together(() => {
      const identified = this.options.identifyKnown(header);
      return identified && { identified, execution: this.start(identified, request, known, requestId) };
    });
    if (!run) {
      let identified: Identified;
      try {
        identified = await this.options.identify(header);
      } catch {
        return this.handOver(req, res, body);
      }
      run = { identified, execution: this.start(identified, request, known, requestId) };
    }
    const { identified: { caller, confirmation }, execution } = run;
    // Refused by a check Yoga's own plugins make: Yoga answers (this request's lookup is then not needed).
    if (!execution) return this.handOver(req, res, body);
    if (caller.keyId) this.options.logger.debug({ apiKey: caller.keyId, requestId }, 'Authenticated');
    const result = await execution;
    // The key's lookup decides first: a key no longer valid learns nothing of what ran, not even its errors.
    if (confirmation && !(await confirmation.catch(() => null))) return this.handOver(req, res, body);
    if ((result.errors?.length ?? 0) > 0) return this.handOver(req, res, body, result);
    const json = JSON.stringify(result);
    const type = answerType(req.headers.accept) as string;
    res.writeHead(200, { 'content-type': `${type}; charset=utf-8`, 'content-length': Buffer.byteLength(json) });
    res.end(json);
    observeRequest({ started, name: known.name, type: OperationTypeNode.QUERY }, false, true);
  }

  /** Runs the read for this caller, unless a check refuses it (null). */
  private start(identified: Identified, request: ReadRequest, known: KnownRead, requestId: string): Execution | null {
    const args: ExecutionArgs = {
      schema: this.options.schema,
      document: known.document,
      operationName: request.operationName ?? undefined,
      variableValues: request.variables ?? undefined,
      contextValue: this.options.context(requestId, identified.caller, request),
    };
    if (this.options.executionChecks.some((check) => check(args) !== null)) return null;
    return executeOperation(args);
  }

  private handOver(req: IncomingMessage, res: ServerResponse, body: Buffer, result?: ExecutionResult): void {
    if (res.headersSent || res.destroyed) return;
    if (result) this.handedOver.set(req, result);
    // whatwg-node reads a request's `body`, when set, in place of its (here already consumed) stream; as a stream,
    // not a Buffer, whose every index it would list.
    Object.assign(req, { body: Readable.from([body]) });
    this.options.toYoga(req, res);
  }
}
