/**
 * Live updates: every batch of newly stored records goes to every `metricIngested` subscriber, once, in the order the
 * batches were stored. With one instance this stays in the process; with REDIS_URL every instance publishes to one
 * Redis pub/sub channel and delivers to its own subscribers only what comes back from that channel, so each subscriber
 * of each instance sees every record exactly once (its own instance's records included, never twice).
 *
 * Delivery is live only: a subscriber gets what is stored after it subscribed, and records published while an instance
 * has lost its Redis connection are not delivered to that instance's subscribers (Redis pub/sub keeps nothing).
 *
 * Why not graphql-yoga's createPubSub + @graphql-yoga/redis-event-target: its subscriber attaches lazily (on the
 * first read of the stream, and Redis SUBSCRIBE is sent without waiting for its confirmation), so records stored right
 * after a client subscribed could be missed; and its publish leaves Redis' promise unhandled, which ends the process
 * when Redis is unreachable. Here the channel is subscribed (and confirmed) at start-up, a subscriber is registered the
 * moment it subscribes, and a failed publish is logged.
 */
import type { Redis } from 'ioredis';
import { redactUrl } from '../config.js';
import type { Logger } from '../logger.js';
import { InputError } from './errors.js';
import type { StoredMetric } from './record.js';

export interface MetricEventsOptions {
  /** A redis:// URL; without one, delivery is in-process. */
  redisUrl?: string | undefined;
  /** Prefix of the Redis channel; instances that share records must share it. */
  channelPrefix: string;
  logger: Logger;
  /** Records a subscriber may have waiting before it is dropped as too slow; default 10,000. */
  maxQueuedPerSubscriber?: number;
  /** How long start-up waits for Redis; default 10,000 ms. */
  connectTimeoutMs?: number;
}

export interface MetricEvents {
  readonly kind: 'in-process' | 'redis';
  /**
   * Sends a batch of stored records (in id order) to every subscriber; never throws. Resolves once the records are
   * on their way to every instance (with Redis: once Redis has taken the PUBLISH), so that a record acknowledged to its
   * client is never delivered to a subscription that began after the acknowledgement.
   */
  publish(records: readonly StoredMetric[]): Promise<void>;
  /**
   * Whether records published now could reach anyone: with Redis always (other instances' subscribers); in-process,
   * while a subscription is open. Asked after a batch is stored, so a subscription that began before the store is seen.
   */
  listening(): boolean;
  /**
   * A stream of stored records for which `accept` is true, ended by `return()`. Resolves once registered: every record
   * published after that is delivered, none published before (with Redis, a PING on the subscribing connection marks
   * the point: messages Redis sent before its reply are not this subscription's).
   */
  subscribe(accept: (record: StoredMetric) => boolean): Promise<AsyncIterableIterator<StoredMetric>>;
  /** Ends every subscription, then closes Redis connections. Publishing afterwards does nothing. */
  stop(): Promise<void>;
}

/**
 * A subscriber whose client reads slower than records arrive, dropped so that it cannot hold memory without bound.
 * The client is told (code SUBSCRIBER_TOO_SLOW) and can subscribe again, with a narrower filter if need be.
 */
export class SubscriberTooSlowError extends InputError {
  override readonly name = 'SubscriberTooSlowError';
  override readonly code = 'SUBSCRIBER_TOO_SLOW';
}

/** Records as they travel through Redis (JSON): createdAt as an ISO string. */
interface WireRecord extends Omit<StoredMetric, 'createdAt'> {
  createdAt: string;
}

const CHANNEL = 'metric-ingested';

/** One subscriber's queue: an async iterator that is registered when created, not on its first read. */
class Subscription implements AsyncIterableIterator<StoredMetric> {
  private readonly queue: StoredMetric[] = [];
  private waiting: ((result: IteratorResult<StoredMetric>) => void) | undefined;
  private ended = false;
  private error: Error | undefined;

  constructor(
    private readonly accept: (record: StoredMetric) => boolean,
    private readonly maxQueued: number,
    private readonly onEnd: (subscription: Subscription) => void,
  ) {}

  deliver(records: readonly StoredMetric[]): void {
    if (this.ended) return;
    for (const record of records) {
      let accepted: boolean;
      try {
        accepted = this.accept(record);
      } catch {
        accepted = false;
      }
      if (!accepted) continue;
      if (this.waiting) {
        const resolve = this.waiting;
        this.waiting = undefined;
        resolve({ value: record, done: false });
      } else if (this.queue.length >= this.maxQueued) {
        // Nobody is waiting here (a waiting reader means an empty queue): the error is the reader's next result.
        this.queue.length = 0;
        this.error = new SubscriberTooSlowError(
          `This subscription fell more than ${this.maxQueued} records behind (the client read too slowly) and ` +
            `was ended; subscribe again`,
          'metricIngested',
        );
        this.finish();
        return;
      } else {
        this.queue.push(record);
      }
    }
  }

  /** Ends the stream after what is queued (shutdown). */
  finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.onEnd(this);
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = undefined;
      resolve({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<StoredMetric>> {
    const record = this.queue.shift();
    if (record) return Promise.resolve({ value: record, done: false });
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

  return(): Promise<IteratorResult<StoredMetric>> {
    this.queue.length = 0;
    this.finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<StoredMetric> {
    return this;
  }
}

export async function createMetricEvents(options: MetricEventsOptions): Promise<MetricEvents> {
  const { logger } = options;
  const maxQueued = options.maxQueuedPerSubscriber ?? 10_000;
  const subscriptions = new Set<Subscription>();
  let stopped = false;

  const deliver = (records: readonly StoredMetric[]) => {
    for (const subscription of subscriptions) subscription.deliver(records);
  };
  const subscribe = (accept: (record: StoredMetric) => boolean) => {
    const subscription = new Subscription(accept, maxQueued, (s) => subscriptions.delete(s));
    if (stopped) subscription.finish();
    else subscriptions.add(subscription);
    return subscription;
  };
  const endSubscriptions = () => {
    for (const subscription of [...subscriptions]) subscription.finish();
  };

  if (!options.redisUrl) {
    return {
      kind: 'in-process',
      async publish(records) {
        if (!stopped && records.length > 0) deliver(records);
      },
      listening: () => !stopped && subscriptions.size > 0,
      subscribe: async (accept) => subscribe(accept),
      async stop() {
        stopped = true;
        endSubscriptions();
      },
    };
  }

  const channel = `${options.channelPrefix}${CHANNEL}`;
  const clientOptions = {
    lazyConnect: true,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    // Publishes wait out a short reconnect in the offline queue (keeping their order), then fail and are logged.
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
        `Redis connection problem (live updates across instances are interrupted): ${error.message}`,
      );
    }
  };
  publisher.on('error', onError);
  subscriber.on('error', onError);
  subscriber.on('message', (from: string, message: string) => {
    if (from !== channel || stopped) return;
    let records: StoredMetric[];
    try {
      const wire = JSON.parse(message) as WireRecord[];
      if (!Array.isArray(wire)) throw new Error('not an array');
      records = wire.map((r) => ({ ...r, createdAt: new Date(r.createdAt) }));
    } catch (error) {
      logger.warn(
        { err: error, channel },
        'Ignored a message on the live-update channel that is not a batch of records',
      );
      return;
    }
    deliver(records);
  });

  try {
    await Promise.all([publisher.connect(), subscriber.connect()]);
    // Confirmed before the service listens: from then on, nothing published is missed by this instance.
    await subscriber.subscribe(channel);
  } catch (error) {
    publisher.disconnect();
    subscriber.disconnect();
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
    listening: () => !stopped,
    async publish(records) {
      if (stopped || records.length === 0) return;
      const wire: WireRecord[] = records.map((r) => ({ ...r, createdAt: r.createdAt.toISOString() }));
      await publisher.publish(channel, JSON.stringify(wire)).then(
        () => undefined,
        (error: unknown) => {
          logger.error(
            { err: error, channel, records: records.length, firstId: records[0]?.id },
            'Could not publish stored records to Redis: live subscribers will not see them (they are stored)',
          );
        },
      );
    },
    async subscribe(accept) {
      // Replies on the subscribing connection come in order with the messages Redis pushes on it: once the PING is
      // answered, every message published before the subscription began has been handed to the other subscriptions.
      await subscriber.ping();
      return subscribe(accept);
    },
    async stop() {
      stopped = true;
      endSubscriptions();
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

/** Whether newly stored records have anyone to go to (see MetricEvents.listening); false when not started. */
export function liveUpdatesListening(): boolean {
  return active?.listening() ?? false;
}

/** Publishes newly stored records; does nothing when live updates are not started (e.g. in a command-line tool). */
export async function publishStored(records: readonly StoredMetric[]): Promise<void> {
  await active?.publish(records);
}

/** Subscribes to newly stored records for which `accept` is true. */
export function subscribeStored(
  accept: (record: StoredMetric) => boolean,
): Promise<AsyncIterableIterator<StoredMetric>> {
  if (!active) throw new Error('Live updates are not started: call startMetricEvents() first');
  return active.subscribe(accept);
}

export async function stopMetricEvents(): Promise<void> {
  const current = active;
  active = undefined;
  await current?.stop();
}
