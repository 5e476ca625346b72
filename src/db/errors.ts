/**
 * Which database errors are faults of the moment rather than of the request: the one place that knows how pg,
 * PostgreSQL, Prisma's driver adapters and PGlite say "the database is not there" or "that took too long".
 *
 * Prisma 7 wraps what the driver threw: a `$queryRaw` failure is a PrismaClientKnownRequestError P2010 whatever the
 * cause, with the adapter's DriverAdapterError in `meta.driverAdapterError` and its `cause` ({ kind, originalCode });
 * model queries give P1001 (DatabaseNotReachable), P1017 (ConnectionClosed) and so on; errors the adapter does not
 * recognise ("Connection terminated unexpectedly", pool connect timeouts) come through as they are. So the whole
 * chain is searched.
 */

export type DatabaseFault =
  /**
   * The database cannot be reached or dropped the connection: nothing was done, or a commit's reply was lost. Retry.
   */
  | { kind: 'unavailable'; reason: string }
  /** The statement or transaction ran past its time limit and was cancelled (rolled back). */
  | { kind: 'timeout'; reason: string };

/** Socket-level errors of a connection that failed or broke. */
const SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/**
 * Prisma's error codes for a database out of reach (P1001 unreachable, P1002 timed out, P1008 socket timeout, P1017
 * closed, P2037 too many connections).
 */
const PRISMA_UNAVAILABLE_CODES = new Set(['P1001', 'P1002', 'P1008', 'P1017', 'P2037']);

/** Prisma driver-adapter error kinds for the same. */
const ADAPTER_UNAVAILABLE_KINDS = new Set([
  'DatabaseNotReachable',
  'ConnectionClosed',
  'SocketTimeout',
  'TooManyConnections',
]);

/**
 * Messages of errors that carry no code: pg's client and pool, PGlite after close. Matched on the start of the
 * message (Prisma puts the original message after its own text, hence also searched within).
 */
const UNAVAILABLE_MESSAGES = [
  /Connection terminated/i,
  /timeout exceeded when trying to connect/i,
  /Client has encountered a connection error and is not queryable/i,
  /Client was closed and is not queryable/i,
  /Cannot use a pool after calling end on the pool/i,
  /Query read timeout/i,
  /PGlite is closed/i,
  /Can't reach database server/i,
  /Server has closed the connection/i,
];

/**
 * SQLSTATEs that mean "not now": class 08 (connection exception), 53 (insufficient resources: too many connections,
 * disk full, out of memory), 57P01..57P03 and 57P05 (server shutting down, crash recovery, starting, idle session
 * closed), 40001/40P01 (serialization failure, deadlock: the transaction was rolled back and a retry normally passes).
 */
function sqlStateFault(code: string): DatabaseFault | undefined {
  if (code === '57014') return { kind: 'timeout', reason: `${code} statement cancelled` };
  if (code === '25P03') return { kind: 'timeout', reason: `${code} idle-in-transaction timeout` };
  if (
    code.startsWith('08') ||
    code.startsWith('53') ||
    ['57P01', '57P02', '57P03', '57P05', '40001', '40P01'].includes(code)
  ) {
    return { kind: 'unavailable', reason: code };
  }
  return undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

function faultOf(node: Record<string, unknown>): DatabaseFault | undefined {
  const { code, kind, originalCode, message } = node;
  for (const candidate of [originalCode, code]) {
    if (typeof candidate !== 'string') continue;
    if (/^[0-9A-Z]{5}$/.test(candidate)) {
      const fault = sqlStateFault(candidate);
      if (fault) return fault;
    }
    if (SOCKET_CODES.has(candidate)) return { kind: 'unavailable', reason: candidate };
    if (PRISMA_UNAVAILABLE_CODES.has(candidate)) return { kind: 'unavailable', reason: `prisma ${candidate}` };
  }
  if (typeof kind === 'string') {
    if (ADAPTER_UNAVAILABLE_KINDS.has(kind)) return { kind: 'unavailable', reason: kind };
    // The adapter's own kind for other server errors carries the SQLSTATE in `code`, handled above.
  }
  if (typeof message === 'string') {
    const pattern = UNAVAILABLE_MESSAGES.find((p) => p.test(message));
    if (pattern) return { kind: 'unavailable', reason: message.slice(0, 200) };
  }
  return undefined;
}

/**
 * Classifies an error thrown by a database call. Returns undefined for everything else (a bug, a constraint the code
 * should have prevented): those stay unexpected errors.
 */
export function classifyDatabaseError(error: unknown): DatabaseFault | undefined {
  const seen = new Set<unknown>();
  const queue: unknown[] = [error];
  // Breadth-first over the wrappers: cause, originalError (GraphQL), meta.driverAdapterError (Prisma), errors
  // (AggregateError).
  while (queue.length > 0 && seen.size < 32) {
    const node = queue.shift();
    if (!isObject(node) || seen.has(node)) continue;
    seen.add(node);
    const fault = faultOf(node);
    if (fault) return fault;
    queue.push(node.cause, node.originalError);
    if (isObject(node.meta)) queue.push(node.meta.driverAdapterError);
    if (Array.isArray(node.errors)) queue.push(...node.errors);
  }
  return undefined;
}
