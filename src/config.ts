/**
 * The service's configuration: the only module that reads `process.env`.
 * Every variable is parsed and validated once; a bad value stops start-up with a message that names it.
 */
import path from 'node:path';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export interface Config {
  /** `NODE_ENV`; default `development`. */
  nodeEnv: 'development' | 'production' | 'test';
  /** `PORT`: the HTTP port; default 4000. */
  port: number;
  /** `HOST`: the interface to listen on; default `127.0.0.1` (the Docker image sets `0.0.0.0`). */
  host: string;
  /** `DATABASE_URL`: a `postgres://` URL; unset means the embedded database. */
  databaseUrl: string | undefined;
  /** `DATA_DIR`: the embedded database's folder; default `./.data`. Ignored with `DATABASE_URL`. */
  dataDir: string;
  /**
   * `EMBEDDED_DB_PORT`: when set, the embedded database is also served over the PostgreSQL protocol on 127.0.0.1:PORT
   * (Prisma Studio, psql).
   */
  embeddedDbPort: number | undefined;
  /**
   * `MIGRATE_ON_START`: apply pending migrations at start-up; default true. When false, start-up refuses a database
   * with pending migrations.
   */
  migrateOnStart: boolean;
  /** `DB_POOL_MAX`: PostgreSQL connections in the pool; default 10. */
  dbPoolMax: number;
  /** `MAX_BATCH_SIZE`: most records one `ingestMetrics` call accepts; default 5,000. */
  maxBatchSize: number;
  /**
   * `MAX_BODY_BYTES`: largest request body; default: what a full batch at every field's maximum length needs (see
   * `bodyLimitFor`).
   */
  maxBodyBytes: number;
  /** `LOG_LEVEL`: one of fatal, error, warn, info, debug, trace, silent; default `info` (`warn` under test). */
  logLevel: LogLevel;
  /**
   * `LOG_FORMAT`: `json` (one JSON object per line), `pretty` (colored, human-readable; pino-pretty) or `auto`
   * (default: pretty when NODE_ENV=development and stdout is a terminal, JSON otherwise).
   */
  logFormat: 'json' | 'pretty' | 'auto';
  /** `GRAPHIQL`: serve GraphiQL at /graphql; default true, except in production. */
  graphiql: boolean;
  /** `SHUTDOWN_TIMEOUT_MS`: how long SIGTERM/SIGINT waits for requests in flight; default 25,000. */
  shutdownTimeoutMs: number;
  /**
   * `DB_STATEMENT_TIMEOUT_MS`: PostgreSQL cancels any one statement that runs longer (its work is rolled back) and the
   * client gets QUERY_TIMEOUT; 0 = no limit; default 30,000. The embedded database (PGlite) does not enforce it.
   */
  dbStatementTimeoutMs: number;
  /**
   * `DB_TRANSACTION_TIMEOUT_MS`: longest a transaction may stay open: Prisma's interactive-transaction timeout, and
   * PostgreSQL's idle_in_transaction_session_timeout (a transaction left idle that long is rolled back); 0 = no limit;
   * default 60,000.
   */
  dbTransactionTimeoutMs: number;
  /**
   * `DB_CONNECT_TIMEOUT_MS`: how long opening a PostgreSQL connection may take before the request fails with
   * UNAVAILABLE; default 5,000.
   */
  dbConnectTimeoutMs: number;
  /**
   * `MAX_STAT_GROUPS`: most groups one `metricStats` answer may have; default 1,000. A query with more fails with an
   * error naming this variable.
   */
  maxStatGroups: number;
  /**
   * `ROLLUP_FOLD_INTERVAL_MS`: how often the service moves the rollup deltas into metric_rollups; default 1,000; 0
   * never (answers stay right, stats read more rows).
   */
  rollupFoldIntervalMs: number;
  /**
   * `PARTITION_HOURS`: width of a new partition of user_metrics, in hours; default 24 (a partition per UTC day). A
   * change applies to partitions made from then on (README: "Storage").
   */
  partitionHours: number;
  /** `RETENTION_DAYS`: days of raw rows kept; older partitions are dropped; default 0: keep everything. */
  retentionDays: number;
  /**
   * `PARTITION_MAINTENANCE_INTERVAL_MS`: how often partitions are made ahead and retention applied; default 3,600,000
   * (an hour); 0 never (records still get a partition on demand).
   */
  partitionMaintenanceIntervalMs: number;
  /**
   * `REDIS_URL`: a `redis://` or `rediss://` URL. When set, the `metricIngested` subscription goes through Redis
   * pub/sub, so every instance sharing it sees every record, and the ingest rate limits are counted in Redis, so they
   * hold across instances; unset means in-process delivery and counting (one instance).
   */
  redisUrl: string | undefined;
  /**
   * `REDIS_CHANNEL_PREFIX`: prefix of the Redis pub/sub channel and of the rate-limit keys; default
   * `metrics-service:`. Instances that should see each other's records and share rate limits must use the same one.
   */
  redisChannelPrefix: string;
  /**
   * `LIVE_POLL_INTERVAL_MS`: how often each instance reads newly stored records for its `metricIngested` subscribers
   * when nothing woke it (a wake-up lost with Redis, a transaction that held delivery back); default 1,000.
   */
  livePollIntervalMs: number;
  /**
   * `AUTH`: whether requests need an API key. `auto` (default): required with NODE_ENV=production, otherwise from the
   * moment any key exists; `on`: always; `off`: never (refused with NODE_ENV=production).
   */
  auth: AuthSetting;
  /** `INTROSPECTION`: answer `__schema` / `__type` queries; default true, except in production. */
  introspection: boolean;
  /** `FIELD_SUGGESTIONS`: keep "Did you mean ...?" hints in error messages; default true, except in production. */
  fieldSuggestions: boolean;
  /** `MAX_DEPTH`: deepest selection nesting an operation may have; default 6. */
  maxDepth: number;
  /** `MAX_ALIASES`: most aliased fields in one operation; default 15. */
  maxAliases: number;
  /** `MAX_TOKENS`: most lexical tokens in the query text (variables not counted); default 1,000. */
  maxTokens: number;
  /** `MAX_DIRECTIVES`: most directives in one operation; default 50. */
  maxDirectives: number;
  /**
   * `MAX_COST`: most objects an operation's answer may hold, a page counting `first` times (README: "Security");
   * default 5,000.
   */
  maxCost: number;
  /**
   * `INGEST_RATE_REQUESTS`: `ingestMetrics` requests per second per API key (a fixed 1 s window); 0 = unlimited;
   * default 100.
   */
  ingestRequestsPerSecond: number;
  /**
   * `INGEST_RATE_RECORDS`: records per second per API key (a fixed window of whole seconds holding at least
   * MAX_BATCH_SIZE); 0 = unlimited; default 50,000.
   */
  ingestRecordsPerSecond: number;
  /** The queued mode of `ingestMetrics` (README: "Queued ingestion"); undefined means records are stored directly. */
  ingestQueue: IngestQueueConfig | undefined;
  /**
   * `API_KEY_OUTAGE_GRACE_MS`: while the database is unreachable, a key verified within this time is still accepted
   * (so the queued mode keeps taking records); 0 = never; default 300,000. With the database up every request is
   * checked against it, so a revocation holds from the next request.
   */
  apiKeyOutageGraceMs: number;
}

/** The queued mode's settings: the INGEST_QUEUE* and INGEST_WORKER_* variables. */
export interface IngestQueueConfig {
  /** `INGEST_QUEUE`: the broker, a `nats://` URL (NATS with JetStream). */
  url: string;
  /** `INGEST_QUEUE_STREAM`: the JetStream stream that holds queued records; default `METRICS_INGEST`. */
  stream: string;
  /**
   * `INGEST_QUEUE_SUBJECT`: the subject prefix; records go to `<prefix>.<source>` (the API publishes to
   * `<prefix>.api`); default `metrics.ingest`.
   */
  subject: string;
  /** `INGEST_QUEUE_DEAD_LETTER_STREAM`: records that can never be stored, with the reason; default `<stream>_DEAD`. */
  deadLetterStream: string;
  /** `INGEST_QUEUE_DEAD_LETTER_SUBJECT`: the dead-letter subject prefix; default `metrics.dead`. */
  deadLetterSubject: string;
  /** `INGEST_QUEUE_MAX_BYTES`: the stream's size limit; when reached, clients get 503 QUEUE_FULL; default 1 GiB. */
  maxBytes: number;
  /** `INGEST_QUEUE_MAX_MESSAGES`: the stream's record limit, as maxBytes; default 10,000,000. */
  maxMessages: number;
  /** `INGEST_QUEUE_DUPLICATE_WINDOW_MS`: how long the broker drops a resent record id; default 120,000. */
  duplicateWindowMs: number;
  /** `INGEST_QUEUE_CONSUMER`: the worker's durable consumer name; default `ingest-worker`. */
  consumer: string;
  /**
   * `INGEST_QUEUE_ACK_WAIT_MS`: how long a worker has to acknowledge a record before it is handed out again (a worker
   * that died mid-batch); default 60,000. Longer than a batch's store takes, or batches are stored twice over
   * (harmless, wasted).
   */
  ackWaitMs: number;
  /** `INGEST_WORKER_BATCH_SIZE`: records the worker stores per batch; default 1,000. */
  workerBatchSize: number;
  /** `INGEST_WORKER_MAX_BACKOFF_MS`: longest wait between the worker's retries while the database is down; 10,000. */
  workerMaxBackoffMs: number;
  /**
   * `INGEST_WORKER_IN_PROCESS`: the service runs a worker itself (the way to use the queued mode with the embedded
   * database, which only the service's process can open); default false: `npm run worker` stores the records.
   */
  workerInProcess: boolean;
}

/** See `Config.auth`. */
export type AuthSetting = 'auto' | 'on' | 'off';

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/**
 * Bytes one record can take in a JSON request body with every string at its maximum length: 6 bytes a character, the
 * most any JSON encoder writing UTF-8 needs (a control character is written `\u001f`; a 4-byte character as itself).
 */
const MAX_RECORD_JSON_BYTES =
  6 * (255 /* eventId */ + 255 /* userId */ + 255 /* sessionId */ + 50) /* voiceSentiment */ +
  256; /* keys, numbers, punctuation */

/** The default body limit: a full batch at maximum field lengths plus the query text, rounded up to a whole MiB. */
export function bodyLimitFor(maxBatchSize: number): number {
  const mib = 1024 * 1024;
  return Math.ceil((maxBatchSize * MAX_RECORD_JSON_BYTES + 64 * 1024) / mib) * mib;
}

type Env = Record<string, string | undefined>;

export function loadConfig(env: Env = process.env): Config {
  const problems: string[] = [];
  const read = (name: string): string | undefined => {
    const value = env[name];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  };
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = read(name);
    if (raw === undefined) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      problems.push(`${name}=${JSON.stringify(raw)} must be an integer from ${min} to ${max}`);
      return fallback;
    }
    return Number(raw);
  };
  const boolean = (name: string, fallback: boolean): boolean => {
    const raw = read(name)?.toLowerCase();
    if (raw === undefined) return fallback;
    if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
    if (['0', 'false', 'no', 'off'].includes(raw)) return false;
    problems.push(`${name}=${JSON.stringify(env[name])} must be true or false`);
    return fallback;
  };

  const nodeEnvRaw = read('NODE_ENV') ?? 'development';
  let nodeEnv: Config['nodeEnv'] = 'development';
  if (nodeEnvRaw === 'development' || nodeEnvRaw === 'production' || nodeEnvRaw === 'test') nodeEnv = nodeEnvRaw;
  else problems.push(`NODE_ENV=${JSON.stringify(nodeEnvRaw)} must be development, production or test`);

  const databaseUrl = read('DATABASE_URL');
  if (databaseUrl !== undefined) {
    let ok = false;
    try {
      const url = new URL(databaseUrl);
      ok = url.protocol === 'postgres:' || url.protocol === 'postgresql:';
    } catch {
      ok = false;
    }
    if (!ok)
      problems.push('DATABASE_URL must be a postgres:// or postgresql:// URL (unset it to use the embedded database)');
  }

  const logLevelRaw = (read('LOG_LEVEL') ?? (nodeEnv === 'test' ? 'warn' : 'info')).toLowerCase();
  let logLevel: LogLevel = 'info';
  if ((LOG_LEVELS as string[]).includes(logLevelRaw)) logLevel = logLevelRaw as LogLevel;
  else problems.push(`LOG_LEVEL=${JSON.stringify(logLevelRaw)} must be one of ${LOG_LEVELS.join(', ')}`);

  const logFormatRaw = (read('LOG_FORMAT') ?? 'auto').toLowerCase();
  let logFormat: Config['logFormat'] = 'auto';
  if (logFormatRaw === 'json' || logFormatRaw === 'pretty' || logFormatRaw === 'auto') logFormat = logFormatRaw;
  else problems.push(`LOG_FORMAT=${JSON.stringify(env.LOG_FORMAT)} must be json, pretty or auto`);

  const embeddedDbPortRaw = read('EMBEDDED_DB_PORT');
  const embeddedDbPort = embeddedDbPortRaw === undefined ? undefined : integer('EMBEDDED_DB_PORT', 0, 1, 65535);
  const maxBatchSize = integer('MAX_BATCH_SIZE', 5000, 1, 100_000);

  const redisUrl = read('REDIS_URL');
  if (redisUrl !== undefined) {
    let ok = false;
    try {
      const url = new URL(redisUrl);
      ok = url.protocol === 'redis:' || url.protocol === 'rediss:';
    } catch {
      ok = false;
    }
    if (!ok) problems.push('REDIS_URL must be a redis:// or rediss:// URL (unset it for in-process subscriptions)');
  }

  const authRaw = (read('AUTH') ?? 'auto').toLowerCase();
  let auth: AuthSetting = 'auto';
  if (authRaw === 'auto' || authRaw === 'on' || authRaw === 'off') auth = authRaw;
  else problems.push(`AUTH=${JSON.stringify(env.AUTH)} must be auto, on or off`);
  if (auth === 'off' && nodeEnv === 'production') {
    // A production service open to anyone is never what was meant; a gateway in front can still send a key.
    problems.push(
      'AUTH=off is refused with NODE_ENV=production: create a key with `npm run keys -- create --scope ingest ' +
        '--name <name>` ' +
        'and send it as `Authorization: Bearer <key>` (or leave NODE_ENV unset for local development)',
    );
  }

  const ingestQueue = readIngestQueue(read, integer, boolean, problems);

  const config: Config = {
    nodeEnv,
    port: integer('PORT', 4000, 0, 65535),
    host: read('HOST') ?? '127.0.0.1',
    databaseUrl,
    dataDir: path.resolve(read('DATA_DIR') ?? '.data'),
    embeddedDbPort,
    migrateOnStart: boolean('MIGRATE_ON_START', true),
    dbPoolMax: integer('DB_POOL_MAX', 10, 1, 1000),
    maxBatchSize,
    maxBodyBytes: integer('MAX_BODY_BYTES', bodyLimitFor(maxBatchSize), 1024, 1024 * 1024 * 1024),
    logLevel,
    logFormat,
    graphiql: boolean('GRAPHIQL', nodeEnv !== 'production'),
    shutdownTimeoutMs: integer('SHUTDOWN_TIMEOUT_MS', 25_000, 0, 600_000),
    dbStatementTimeoutMs: integer('DB_STATEMENT_TIMEOUT_MS', 30_000, 0, 86_400_000),
    dbTransactionTimeoutMs: integer('DB_TRANSACTION_TIMEOUT_MS', 60_000, 0, 86_400_000),
    dbConnectTimeoutMs: integer('DB_CONNECT_TIMEOUT_MS', 5_000, 100, 600_000),
    maxStatGroups: integer('MAX_STAT_GROUPS', 1000, 1, 1_000_000),
    rollupFoldIntervalMs: integer('ROLLUP_FOLD_INTERVAL_MS', 1000, 0, 3_600_000),
    partitionHours: integer('PARTITION_HOURS', 24, 1, 24 * 366),
    retentionDays: integer('RETENTION_DAYS', 0, 0, 36_500),
    partitionMaintenanceIntervalMs: integer('PARTITION_MAINTENANCE_INTERVAL_MS', 3_600_000, 0, 86_400_000),
    redisUrl,
    redisChannelPrefix: read('REDIS_CHANNEL_PREFIX') ?? 'metrics-service:',
    livePollIntervalMs: integer('LIVE_POLL_INTERVAL_MS', 1000, 10, 600_000),
    auth,
    introspection: boolean('INTROSPECTION', nodeEnv !== 'production'),
    fieldSuggestions: boolean('FIELD_SUGGESTIONS', nodeEnv !== 'production'),
    maxDepth: integer('MAX_DEPTH', 6, 1, 1000),
    maxAliases: integer('MAX_ALIASES', 15, 0, 10_000),
    maxTokens: integer('MAX_TOKENS', 1000, 10, 1_000_000),
    maxDirectives: integer('MAX_DIRECTIVES', 50, 0, 10_000),
    maxCost: integer('MAX_COST', 5000, 1, 100_000_000),
    ingestRequestsPerSecond: integer('INGEST_RATE_REQUESTS', 100, 0, 1_000_000),
    ingestRecordsPerSecond: integer('INGEST_RATE_RECORDS', 50_000, 0, 100_000_000),
    ingestQueue,
    apiKeyOutageGraceMs: integer('API_KEY_OUTAGE_GRACE_MS', 300_000, 0, 86_400_000),
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return config;
}

/** A JetStream stream or consumer name: the characters NATS allows in one (no dots, spaces or wildcards). */
const STREAM_NAME = /^[A-Za-z0-9_-]{1,200}$/;
/** A subject prefix: dot-separated tokens of the same characters (no wildcards). */
const SUBJECT_PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;

function readIngestQueue(
  read: (name: string) => string | undefined,
  integer: (name: string, fallback: number, min: number, max: number) => number,
  boolean: (name: string, fallback: boolean) => boolean,
  problems: string[],
): IngestQueueConfig | undefined {
  const url = read('INGEST_QUEUE');
  const settings = [
    'INGEST_QUEUE_STREAM',
    'INGEST_QUEUE_SUBJECT',
    'INGEST_QUEUE_DEAD_LETTER_STREAM',
    'INGEST_QUEUE_DEAD_LETTER_SUBJECT',
    'INGEST_QUEUE_MAX_BYTES',
    'INGEST_QUEUE_MAX_MESSAGES',
    'INGEST_QUEUE_DUPLICATE_WINDOW_MS',
    'INGEST_QUEUE_CONSUMER',
    'INGEST_QUEUE_ACK_WAIT_MS',
    'INGEST_WORKER_BATCH_SIZE',
    'INGEST_WORKER_MAX_BACKOFF_MS',
    'INGEST_WORKER_IN_PROCESS',
  ];
  if (url === undefined) {
    // A queue setting without the queue is a mistake (a typo in INGEST_QUEUE, or a variable left behind).
    const stray = settings.filter((name) => read(name) !== undefined);
    if (stray.length > 0) problems.push(`${stray.join(', ')} set without INGEST_QUEUE (the queued mode is off)`);
    return undefined;
  }
  let ok = false;
  try {
    ok = new URL(url).protocol === 'nats:';
  } catch {
    ok = false;
  }
  if (!ok)
    problems.push('INGEST_QUEUE must be a nats:// URL (NATS with JetStream; unset it to store records directly)');
  const name = (variable: string, fallback: string): string => {
    const value = read(variable) ?? fallback;
    if (!STREAM_NAME.test(value))
      problems.push(`${variable}=${JSON.stringify(value)} must be 1 to 200 letters, digits, _ or -`);
    return value;
  };
  const subjectPrefix = (variable: string, fallback: string): string => {
    const value = read(variable) ?? fallback;
    if (!SUBJECT_PREFIX.test(value))
      problems.push(
        `${variable}=${JSON.stringify(value)} must be dot-separated tokens of letters, digits, _ or - ` +
          '(no wildcards), e.g. metrics.ingest',
      );
    return value;
  };
  const stream = name('INGEST_QUEUE_STREAM', 'METRICS_INGEST');
  const subject = subjectPrefix('INGEST_QUEUE_SUBJECT', 'metrics.ingest');
  const deadLetterStream = name('INGEST_QUEUE_DEAD_LETTER_STREAM', `${stream}_DEAD`);
  const deadLetterSubject = subjectPrefix('INGEST_QUEUE_DEAD_LETTER_SUBJECT', 'metrics.dead');
  if (deadLetterStream === stream)
    problems.push('INGEST_QUEUE_DEAD_LETTER_STREAM must differ from INGEST_QUEUE_STREAM');
  const overlaps = (a: string, b: string) => a === b || a.startsWith(`${b}.`) || b.startsWith(`${a}.`);
  if (overlaps(subject, deadLetterSubject))
    problems.push(
      `INGEST_QUEUE_DEAD_LETTER_SUBJECT=${deadLetterSubject} must not overlap INGEST_QUEUE_SUBJECT=${subject} ` +
        '(the dead letters would be consumed again)',
    );
  return {
    url,
    stream,
    subject,
    deadLetterStream,
    deadLetterSubject,
    maxBytes: integer('INGEST_QUEUE_MAX_BYTES', 1024 ** 3, 1024, 2 ** 50),
    maxMessages: integer('INGEST_QUEUE_MAX_MESSAGES', 10_000_000, 1, 2 ** 50),
    duplicateWindowMs: integer('INGEST_QUEUE_DUPLICATE_WINDOW_MS', 120_000, 1000, 7 * 86_400_000),
    consumer: name('INGEST_QUEUE_CONSUMER', 'ingest-worker'),
    ackWaitMs: integer('INGEST_QUEUE_ACK_WAIT_MS', 60_000, 1000, 3_600_000),
    workerBatchSize: integer('INGEST_WORKER_BATCH_SIZE', 1000, 1, 100_000),
    workerMaxBackoffMs: integer('INGEST_WORKER_MAX_BACKOFF_MS', 10_000, 10, 600_000),
    workerInProcess: boolean('INGEST_WORKER_IN_PROCESS', false),
  };
}

/** A URL as logs and errors may show it: its password masked. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(unparseable URL)';
  }
}
