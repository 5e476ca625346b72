/**
 * The queued mode's backlog as Prometheus gauges on the service's registry, read from the broker at each scrape:
 *
 *   ingest_queue_pending        records queued and not yet stored (or set aside) by the worker
 *   ingest_queue_lag            of those, records not yet handed to the worker
 *   ingest_queue_dead_letters   records in the dead-letter stream
 *
 * Registered once the service runs in the queued mode; a scrape while the broker is down leaves them unchanged.
 */
import { Gauge } from 'prom-client';
import type { Logger } from '../logger.js';
import { registry } from '../observability/metrics.js';
import type { IngestQueue, QueueBacklog } from './broker.js';

let watched: { queue: IngestQueue; logger: Logger } | undefined;
let registered = false;

/** A scrape's one look at the broker, shared by the three gauges. */
let reading: Promise<QueueBacklog | undefined> | undefined;

function read(): Promise<QueueBacklog | undefined> {
  if (!watched) return Promise.resolve(undefined);
  const { queue, logger } = watched;
  reading ??= queue
    .backlog()
    .catch((error: unknown) => {
      logger.warn({ err: error }, 'Could not read the ingest queue backlog for /metrics');
      return undefined;
    })
    .finally(() => {
      reading = undefined;
    });
  return reading;
}

function gauge(name: string, help: string, field: keyof QueueBacklog): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    async collect() {
      const backlog = await read();
      if (backlog) this.set(backlog[field]);
    },
  });
}

/** Reports `queue`'s backlog at /metrics from now on (the last queue given, when called again). */
export function watchQueueBacklog(queue: IngestQueue | undefined, logger: Logger): void {
  watched = queue ? { queue, logger } : undefined;
  if (!queue || registered) return;
  registered = true;
  gauge('ingest_queue_pending', 'Records in the ingest queue not yet stored (or set aside) by the worker.', 'pending');
  gauge('ingest_queue_lag', 'Records in the ingest queue not yet handed to the worker (its consumer lag).', 'lag');
  gauge(
    'ingest_queue_dead_letters',
    'Records in the dead-letter stream: never storable, kept with the reason.',
    'deadLetters',
  );
}
