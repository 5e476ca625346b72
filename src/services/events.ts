/**
 * Live updates (`metricIngested`) that lose nothing: every subscriber receives the matching stored records in one
 * order, the stream order, and can resume after the last one it saw. The table is the log; Redis (or, with one
 * instance, the process itself) only says "something was stored, look".
 *
 * The stream order: each row carries the id of the transaction that stored it (`txid`, a column default; transactions
 * are numbered as they begin to write), and its position is (txid, id). Ids are taken before commit, so ordering by
 * id alone would let a batch with smaller ids commit after a subscriber had moved past them. A position below the
 * oldest transaction of this database still running is final: no row can appear there later. Each instance has one
 * reader (the pump) that reads the rows between the last final position it reached and the current one, in order,
 * and hands them to its subscribers, each of which drops what it has seen and what its filter refuses.
 *
 * A subscriber that resumes (`after`) first catches up on its own from the table, a page at a time as its client
 * reads, filtered in SQL, until it reaches the pump's position; then it is handed the pump's rows. All of that runs
 * in the pump's one loop, so the handoff has no gap and no overlap. A new subscriber without `after` starts at the
 * snapshot of its subscription: what was committed before it is skipped, everything committed later is delivered.
 *
 * The pump reads when woken (a batch stored by this instance or, through Redis, another one; Redis reconnecting; a
 * client reading a caught-up page) and every `pollIntervalMs` while anyone subscribes, so a lost wake-up (Redis down,
 * a failed PUBLISH) delays records and loses none. A record is delivered once every transaction older than its own
 * has ended: a long transaction that writes anything holds delivery back until it ends.
 *
 * Why not graphql-yoga's createPubSub + @graphql-yoga/redis-event-target: records travelling through pub/sub are lost
 * whenever a connection is, and the order they arrive in is publish order, which is not commit order.
 */
import type { Redis } from 'ioredis';
import { redactUrl } from '../config.js';
import { database } from '../db/client.js';
import { Prisma } from '../generated/prisma/client.js';
import type { Logger } from '../logger.js';
import { InputError } from './errors.js';
import { FIELD_SELECT_LIST, type StoredMetric } from './record.js';
import { runSql } from './sql.js';

export interface MetricEventsOptions {
  /** A redis:// URL for wake-ups between instances; without one, only this instance's own batches wake the pump. */
  redisUrl?: string | undefined;
  /** Prefix of the Redis channel; instances that share records must share it. */
  channelPrefix: string;
  logger: Logger;
  /** Records a live subscriber may have waiting before it is dropped as too slow; default 10,000. */
  maxQueuedPerSubscriber?: number;
  /** How often the pump reads the table without being woken, while anyone subscribes; default 1,000 ms. */
  pollIntervalMs?: number;
  /** How long start-up waits for Redis; default 10,000 ms. */
  connectTimeoutMs?: number;
}

/** A stored record as the stream delivers it: with its position, as an opaque cursor to resume after. */
export interface LiveMetric extends StoredMetric {
  cursor: string;
}

export interface MetricEvents {
  readonly kind: 'in-process' | 'redis';
  /**
   * Tells every instance's pump that records were stored (call it after the commit); never throws. Resolves once the
   * wake-up is on its way (with Redis: once Redis has taken the PUBLISH).
   */
  publish(): Promise<void>;
  /** Whether a subscription is open on this instance. */
  listening(): boolean;
  /**
   * The stream of stored records for which `accept` is true, in stream order, ended by `return()`. With `after` (a
   * cursor the stream gave), it begins right after that record; without, at this moment: once the promise resolves,
   * every record committed later is delivered and none committed earlier.
   */
  subscribe(
    accept: (record: StoredMetric) => boolean,
    options?: { after?: string | null; where?: Prisma.Sql },
  ): Promise<AsyncIterableIterator<LiveMetric>>;
  /** Ends every subscription, then closes Redis connections. Publishing afterwards does nothing. */
  stop(): Promise<void>;
}

/**
 * A subscriber whose client reads slower than records arrive, dropped so that it cannot hold memory without bound.
 * The client is told (code SUBSCRIBER_TOO_SLOW) and can subscribe again after the last cursor it received.
 */
export class SubscriberTooSlowError extends InputError {
  override readonly name = 'SubscriberTooSlowError';
  override readonly code = 'SUBSCRIBER_TOO_SLOW';
}

const CHANNEL = 'metric-ingested';
/** Rows one read takes: the pump's, and a catching-up subscriber's page. */
const PAGE_SIZE = 500;
/** First delay before the pump reads again when a transaction holds back what it was woken for; doubles from here. */
const HELD_BACK_RETRY_MS = 20;

/** A place in the stream: after every row whose (txid, id) is at most this. */
interface Position {
  txid: bigint;
  id: number;
}

function compare(a: Position, b: Position): number {
  if (a.txid !== b.txid) return a.txid < b.txid ? -1 : 1;
  return a.id - b.id;
}

/** Before every row of transaction `txid` and later ones (ids are at least 1). */
const before = (txid: bigint): Position => ({ txid, id: 0 });

const CURSOR_PREFIX = 'm1:';

/** The opaque cursor of a position: base64url of a versioned text, so that clients do not come to depend on it. */
export function encodeStreamCursor(position: Position): string {
  return Buffer.from(`${CURSOR_PREFIX}${position.txid}:${position.id}`).toString('base64url');
}

/** The position of a cursor this service gave; a clear error (argument `after`) for anything else. */
export function decodeStreamCursor(cursor: string): Position {
  const refuse = () =>
    new InputError(
      `after is not a cursor of metricIngested (give the \`cursor\` of the last record received, as it came)`,
      'after',
    );
  if (cursor.length > 64 || !/^[A-Za-z0-9_-]+$/.test(cursor)) throw refuse();
  const match = /^m1:(\d{1,20}):(\d{1,16})$/.exec(Buffer.from(cursor, 'base64url').toString('latin1'));
  if (!match) throw refuse();
  const txid = BigInt(match[1] as string);
  const id = Number(match[2]);
  if (txid >= 2n ** 64n || !Number.isSafeInteger(id) || id < 1) throw refuse();
  return { txid, id };
}

/** What is left out of a subscription begun without `after`: the rows its starting snapshot could see. */
interface Visible {
  /** Transactions from this one on were not begun. */
  xmax: bigint;
  /** Transactions below xmax still running at the snapshot: their rows are new. */
  running: ReadonlySet<bigint>;
}

interface StreamRow extends StoredMetric {
  txid: bigint;
}

/** One subscriber's queue: an async iterator that is registered when created, not on its first read. */
class Subscription implements AsyncIterableIterator<LiveMetric> {
  private readonly queue: LiveMetric[] = [];
  private waiting: ((result: IteratorResult<LiveMetric>) => void) | undefined;
  private ended = false;
  private error: Error | undefined;
  /** Until the subscriber reaches the pump's position, it reads the table itself. */
  catchingUp = true;

  constructor(
    /** Every row up to here was seen (delivered or refused). */
    public position: Position,
    private readonly visible: Visible | undefined,
    private readonly accept: (record: StoredMetric) => boolean,
    /** The filter in SQL, for catching up. */
    readonly where: Prisma.Sql | undefined,
    private readonly maxQueued: number,
    private readonly onRead: () => void,
    private readonly onEnd: (subscription: Subscription) => void,
  ) {}

  get open(): boolean {
    return !this.ended;
  }

  /** Whether a catching-up page fits: it waits for the client to read what it has. */
  wantsPage(): boolean {
    return !this.ended && this.queue.length === 0;
  }

  /** Rows in stream order; those at or before `position` are dropped, so a row is never delivered twice. */
  deliver(rows: readonly StreamRow[], live: boolean): void {
    for (const row of rows) {
      if (this.ended) return;
      const at = { txid: row.txid, id: row.id };
      if (compare(at, this.position) <= 0) continue;
      this.position = at;
      if (this.visible && row.txid < this.visible.xmax && !this.visible.running.has(row.txid)) continue;
      let accepted: boolean;
      try {
        accepted = this.accept(row);
      } catch {
        accepted = false;
      }
      if (!accepted) continue;
      const { txid: _, ...record } = row;
      const metric: LiveMetric = { ...record, cursor: encodeStreamCursor(at) };
      if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = undefined;
        resolve({ value: metric, done: false });
      } else if (live && this.queue.length >= this.maxQueued) {
        // Nobody is waiting here (a waiting reader means an empty queue): the error is the reader's next result.
        this.queue.length = 0;
        this.error = new SubscriberTooSlowError(
          `This subscription fell more than ${this.maxQueued} records behind (the client read too slowly) and ` +
            `was ended; subscribe again with after: the cursor of the last record received`,
          'metricIngested',
        );
        this.finish();
        return;
      } else {
        this.queue.push(metric);
      }
    }
  }

  /** Ends the stream after what is queued (shutdown, or a read that failed). */
  finish(error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    if (error) this.error = error;
    this.onEnd(this);
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<LiveMetric>> {
    const record = this.queue.shift();
    if (record) {
      if (this.catchingUp && this.queue.length === 0) this.onRead();
      return Promise.resolve({ value: record, done: false });
    }
    if (this.error) {
      const error = this.error;
      this.error = undefined;
      return Promise.reject(error);
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }

  return(): Promise<IteratorResult<LiveMetric>> {
    this.queue.length = 0;
    this.finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<LiveMetric> {
    return this;
  }
}

const ROW_COLUMNS = `txid::text AS txid, id, ${FIELD_SELECT_LIST}, created_at AS "createdAt"`;

interface RawRow extends Omit<StoredMetric, 'id' | 'timestamp'> {
  txid: string | null;
  id: number | string | null;
  timestamp: number | string;
}

function streamRow(raw: RawRow): StreamRow {
  return {
    ...raw,
    txid: BigInt(raw.txid as string),
    id: Number(raw.id),
    timestamp: Number(raw.timestamp),
    createdAt: raw.createdAt instanceof Date ? raw.createdAt : new Date(raw.createdAt),
  };
}

/**
 * The oldest transaction of snapshot `s` that may still store rows here: the oldest one running (pg_snapshot_xip),
 * leaving out those that pg_stat_activity shows are of another database of the server (they cannot write this table,
 * and would otherwise hold delivery back for as long as they run); the snapshot's xmax when none. A transaction that
 * has ended since the snapshot, or that this role may not see, is not left out: the bound is only ever too early.
 */
const BOUND_OF_SNAPSHOT = `coalesce((
    SELECT min(x) FROM pg_snapshot_xip(s) AS x
    WHERE NOT EXISTS (SELECT FROM pg_stat_activity AS a
                      WHERE a.backend_xid = x::xid AND a.datname <> current_database())
  ), pg_snapshot_xmax(s))`;

/**
 * The final position now (see BOUND_OF_SNAPSHOT; `xmax` too, to tell what a wake-up was for) and the rows from
 * `from` up to it, in stream order, at most `limit`. One statement, so the rows are read in the snapshot the bound
 * comes from: every transaction of this database below it has ended, and its rows, if committed, are visible.
 */
async function readFinal(from: Position, limit: number): Promise<{ bound: bigint; xmax: bigint; rows: StreamRow[] }> {
  const found = await database().queryDirect<RawRow & { bound: string; xmax: string }>(
    `WITH snapshot AS (
       SELECT ${BOUND_OF_SNAPSHOT} AS bound, pg_snapshot_xmax(s) AS xmax FROM pg_current_snapshot() AS s
     )
     SELECT snapshot.bound::text AS bound, snapshot.xmax::text AS xmax, m.* FROM snapshot
     LEFT JOIN LATERAL (
       SELECT ${ROW_COLUMNS} FROM user_metrics
       WHERE (txid, id) > ($1::text::xid8, $2::int8) AND txid < snapshot.bound
       ORDER BY txid, id LIMIT $3::int
     ) AS m ON true`,
    [String(from.txid), from.id, limit],
    'live_stream_read_final',
  );
  const first = found[0];
  if (!first) throw new Error('The live stream read answered no row');
  return {
    bound: BigInt(first.bound),
    xmax: BigInt(first.xmax),
    rows: first.txid === null ? [] : found.map(streamRow),
  };
}

/** A subscriber's page between its position and the pump's, filtered in SQL. */
async function readPage(from: Position, upTo: Position, where: Prisma.Sql | undefined): Promise<StreamRow[]> {
  const raw = await runSql<RawRow>(Prisma.sql`
    SELECT ${Prisma.raw(ROW_COLUMNS)} FROM user_metrics
    WHERE (txid, id) > (${String(from.txid)}::text::xid8, ${from.id}::int8)
      AND (txid, id) <= (${String(upTo.txid)}::text::xid8, ${upTo.id}::int8)
      AND ${where ?? Prisma.sql`true`}
    ORDER BY txid, id LIMIT ${PAGE_SIZE}::int`);
  return raw.map(streamRow);
}

/** Where a new subscription begins: the current snapshot (its rows below the bound are all visible in it). */
async function currentSnapshot(): Promise<{ start: Position; visible: Visible }> {
  const [row] = await database().queryDirect<{ bound: string; xmax: string; running: string[] | null }>(
    `SELECT (${BOUND_OF_SNAPSHOT})::text AS bound, pg_snapshot_xmax(s)::text AS xmax,
            array(SELECT pg_snapshot_xip(s)::text) AS running
     FROM pg_current_snapshot() AS s`,
    [],
    'live_stream_snapshot',
  );
  if (!row) throw new Error('The snapshot query answered no row');
  return {
    start: before(BigInt(row.bound)),
    visible: { xmax: BigInt(row.xmax), running: new Set((row.running ?? []).map((x) => BigInt(x))) },
  };
}

/**
 * The instance's one reader of the stream. Its steps never overlap: each lets catching-up subscribers read a page
 * (handing those that arrive at its position over to live delivery), then reads what became final and delivers it.
 */
class Pump {
  /** Every final row up to here has been delivered to the live subscribers. */
  private position: Position | undefined;
  private readonly live = new Set<Subscription>();
  private readonly catchingUp = new Set<Subscription>();
  private running = false;
  private again = false;
  /** A wake-up came since the last read: the next read's xmax is what it was for. */
  private woken = false;
  /** Transactions below this were announced (stored something); reads are repeated soon until the bound passes it. */
  private target = 0n;
  private retryMs = HELD_BACK_RETRY_MS;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastFailureLog = 0;
  private current: Promise<void> | undefined;

  constructor(
    private readonly pollIntervalMs: number,
    private readonly logger: Logger,
  ) {}

  get subscriberCount(): number {
    return this.live.size + this.catchingUp.size;
  }

  async start(): Promise<void> {
    this.position = before((await readFinal(before(0n), 0)).bound);
  }

  add(subscription: Subscription): void {
    if (this.stopped) {
      subscription.finish();
      return;
    }
    this.catchingUp.add(subscription);
    this.wake(false);
  }

  remove(subscription: Subscription): void {
    this.live.delete(subscription);
    this.catchingUp.delete(subscription);
  }

  /** Runs a step now (or right after the one running); `stored` when records were stored somewhere. */
  wake(stored = true): void {
    // Nobody to deliver to: the next subscriber's first step moves the position on (see step).
    if (this.stopped || this.subscriberCount === 0) return;
    if (stored) this.woken = true;
    if (this.running) {
      this.again = true;
      return;
    }
    void this.run();
  }

  /** Stops stepping; answers the open subscriptions, and a promise of the end of the step under way. */
  stop(): { subscriptions: Subscription[]; idle: Promise<void> } {
    this.stopped = true;
    clearTimeout(this.timer);
    return { subscriptions: [...this.live, ...this.catchingUp], idle: this.current ?? Promise.resolve() };
  }

  private run(): Promise<void> {
    this.current = this.runSteps();
    return this.current;
  }

  private async runSteps(): Promise<void> {
    this.running = true;
    clearTimeout(this.timer);
    let delay = this.pollIntervalMs;
    try {
      do {
        this.again = false;
        delay = await this.step();
      } while (this.again && !this.stopped);
    } catch (error) {
      // The database is unreachable or the statement failed: nothing was delivered past what was read; retry later.
      if (Date.now() - this.lastFailureLog > 10_000) {
        this.lastFailureLog = Date.now();
        this.logger.warn(
          { err: error },
          `Live updates could not read stored records (retrying): ${(error as Error).message}`,
        );
      }
      delay = this.pollIntervalMs;
    } finally {
      this.running = false;
    }
    if (this.stopped || this.subscriberCount === 0) return;
    this.timer = setTimeout(() => this.wake(false), delay);
    this.timer.unref();
  }

  /**
   * Forward only: a bound can come out earlier than the one before (a transaction of another database that
   * pg_stat_activity showed once and not the next time), and the rows up to the earlier one were delivered already.
   */
  private moveTo(next: Position): void {
    if (!this.position || compare(next, this.position) > 0) this.position = next;
  }

  /** One step; answers how long to wait before the next one unless woken. */
  private async step(): Promise<number> {
    if (!this.position) throw new Error('The live stream pump was not started');
    // With no live subscriber the rows behind the bound are nobody's: the position moves on without reading them, so
    // that a pump idle for a while does not read all that was stored meanwhile.
    if (this.live.size === 0) this.moveTo(before((await readFinal(this.position, 0)).bound));
    const position = this.position;
    for (const subscription of [...this.catchingUp]) {
      if (!subscription.open) continue;
      if (compare(subscription.position, position) < 0) {
        if (!subscription.wantsPage()) continue;
        let rows: StreamRow[];
        try {
          rows = await readPage(subscription.position, position, subscription.where);
        } catch (error) {
          subscription.finish(error as Error);
          continue;
        }
        subscription.deliver(rows, false);
        if (rows.length === PAGE_SIZE) continue;
        // Nothing between the subscriber and the pump that it has not seen: it is where the pump is.
        if (compare(subscription.position, position) < 0) subscription.position = position;
      }
      // At or past the pump's position (a cursor from an instance further on): live from here, nothing missed.
      this.catchingUp.delete(subscription);
      if (subscription.open) {
        subscription.catchingUp = false;
        this.live.add(subscription);
      }
    }

    const wasWoken = this.woken;
    this.woken = false;
    // Without live subscribers there is nobody to read rows for: only the bound moves on.
    const read = await readFinal(position, this.live.size > 0 ? PAGE_SIZE : 0);
    if (this.stopped) return this.pollIntervalMs;
    if (wasWoken && read.xmax > this.target) this.target = read.xmax;
    for (const subscription of this.live) subscription.deliver(read.rows, true);
    const last = read.rows.at(-1);
    if (read.rows.length === PAGE_SIZE && last) {
      this.position = { txid: last.txid, id: last.id };
      this.again = true;
      return 0;
    }
    this.moveTo(before(read.bound));
    if (this.catchingUp.size > 0 && [...this.catchingUp].some((s) => s.wantsPage())) this.again = true;
    if (read.bound < this.target) {
      // What a wake-up announced is held back by an older transaction still running: look again soon.
      const delay = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, this.pollIntervalMs);
      return delay;
    }
    this.retryMs = HELD_BACK_RETRY_MS;
    return this.pollIntervalMs;
  }
}

export async function createMetricEvents(options: MetricEventsOptions): Promise<MetricEvents> {
  const { logger } = options;
  const maxQueued = options.maxQueuedPerSubscriber ?? 10_000;
  const pump = new Pump(options.pollIntervalMs ?? 1000, logger);
  await pump.start();
  let stopped = false;

  const subscribe = async (
    accept: (record: StoredMetric) => boolean,
    subscribeOptions: { after?: string | null; where?: Prisma.Sql } = {},
  ): Promise<AsyncIterableIterator<LiveMetric>> => {
    const after = subscribeOptions.after;
    const begin = after != null ? { start: decodeStreamCursor(after), visible: undefined } : await currentSnapshot();
    const subscription = new Subscription(
      begin.start,
      begin.visible,
      accept,
      subscribeOptions.where,
      maxQueued,
      () => pump.wake(false),
      (s) => pump.remove(s),
    );
    pump.add(subscription);
    return subscription;
  };
  const endSubscriptions = async () => {
    const { subscriptions, idle } = pump.stop();
    for (const subscription of subscriptions) subscription.finish();
    // The read under way is awaited, so that it does not outlive the database connection.
    await idle;
  };

  if (!options.redisUrl) {
    return {
      kind: 'in-process',
      async publish() {
        if (!stopped) pump.wake();
      },
      listening: () => !stopped && pump.subscriberCount > 0,
      subscribe,
      async stop() {
        stopped = true;
        await endSubscriptions();
      },
    };
  }

  const channel = `${options.channelPrefix}${CHANNEL}`;
  const clientOptions = {
    lazyConnect: true,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    // Publishes wait out a short reconnect in the offline queue, then fail and are logged (the poll still finds them).
    maxRetriesPerRequest: 5,
  };
  // Loaded only with REDIS_URL: a single instance does not carry the client's ~20 MB.
  const { Redis: RedisClient } = await import('ioredis');
  const publisher = new RedisClient(options.redisUrl, { ...clientOptions, connectionName: 'metrics-publish' });
  const subscriber = new RedisClient(options.redisUrl, { ...clientOptions, connectionName: 'metrics-subscribe' });
  let lastErrorLog = 0;
  let lastError: Error | undefined;
  const onError = (error: Error) => {
    lastError = error;
    // ioredis reports every failed reconnect; one line every 10 s is enough to see the outage.
    if (Date.now() - lastErrorLog > 10_000) {
      lastErrorLog = Date.now();
      logger.warn(
        { err: error },
        `Redis connection problem (live updates wait for the poll, records are not lost): ${error.message}`,
      );
    }
  };
  publisher.on('error', onError);
  subscriber.on('error', onError);
  // A server that goes away may close the connection without an error (and come back before a reconnect fails).
  const onClose = () => {
    if (!stopped && connected) onError(new Error('the connection was closed'));
  };
  publisher.on('close', onClose);
  subscriber.on('close', onClose);
  // Any message is a wake-up: what it says does not matter (older instances sent the records themselves).
  subscriber.on('message', (from: string) => {
    if (from === channel && !stopped) pump.wake();
  });
  let connected = false;
  // Back after an outage (ioredis subscribes again by itself): whatever was announced meanwhile is read now.
  subscriber.on('ready', () => {
    if (connected && !stopped) pump.wake();
  });

  try {
    await Promise.all([publisher.connect(), subscriber.connect()]);
    await subscriber.subscribe(channel);
    connected = true;
  } catch (error) {
    publisher.disconnect();
    subscriber.disconnect();
    pump.stop();
    const reason =
      lastError && lastError !== error
        ? `${lastError.message} (${(error as Error).message})`
        : (error as Error).message;
    throw new Error(`Cannot use Redis at ${redactUrl(options.redisUrl)} (REDIS_URL) for live updates: ${reason}`);
  }

  const quit = async (client: Redis) => {
    try {
      await Promise.race([
        client.quit(),
        new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 2000).unref()),
      ]);
    } catch {
      client.disconnect();
    }
  };

  return {
    kind: 'redis',
    listening: () => !stopped && pump.subscriberCount > 0,
    async publish() {
      if (stopped) return;
      // This instance's own subscribers need not wait for the round trip through Redis.
      pump.wake();
      await publisher.publish(channel, 'stored').then(
        () => undefined,
        (error: unknown) => {
          logger.warn(
            { err: error, channel },
            'Could not tell other instances through Redis that records were stored: they find them at their next poll',
          );
        },
      );
    },
    subscribe,
    async stop() {
      stopped = true;
      await endSubscriptions();
      await Promise.all([quit(publisher), quit(subscriber)]);
    },
  };
}

let active: MetricEvents | undefined;

/** Starts the service's live updates; `publishStored` and `subscribeStored` use them. */
export async function startMetricEvents(options: MetricEventsOptions): Promise<MetricEvents> {
  if (active) throw new Error('Live updates are already started');
  active = await createMetricEvents(options);
  return active;
}

/** Whether a subscription is open on this instance; false when live updates are not started. */
export function liveUpdatesListening(): boolean {
  return active?.listening() ?? false;
}

/** Announces that records were stored; does nothing when live updates are not started (e.g. a command-line tool). */
export async function publishStored(): Promise<void> {
  await active?.publish();
}

/** Subscribes to stored records for which `accept` is true (see MetricEvents.subscribe). */
export function subscribeStored(
  accept: (record: StoredMetric) => boolean,
  options?: { after?: string | null; where?: Prisma.Sql },
): Promise<AsyncIterableIterator<LiveMetric>> {
  if (!active) throw new Error('Live updates are not started: call startMetricEvents() first');
  return active.subscribe(accept, options);
}

export async function stopMetricEvents(): Promise<void> {
  const current = active;
  active = undefined;
  await current?.stop();
}
