/** Live updates: the `metricIngested` subscription (server-sent events through Yoga; GraphiQL can run it). */

import { subscribeStored } from '../services/events.js';
import { filterToSql, matchesFilter } from '../services/metric-filter.js';
import { builder } from './builder.js';
import { MetricFilterInput, UserMetric } from './metric.js';

builder.subscriptionField('metricIngested', (t) =>
  t.field({
    type: UserMetric,
    description:
      'Stored records that match `where`, each once, in stream order: by the transaction that stored them, then by ' +
      'id (README: "`metricIngested`: live records"). Without `after`, from now on; with `after` (the `cursor` of ' +
      'the last record received), every matching record stored after that one, then on live: a client that ' +
      'reconnects with it misses nothing and receives nothing twice. Duplicates and rejected records are never ' +
      'sent. Every instance of the service delivers every record.',
    args: {
      where: t.arg({ type: MetricFilterInput }),
      after: t.arg.string({
        description: 'The `cursor` of the last record this client received, to resume right after it.',
      }),
    },
    subscribe: (_root, args) => {
      const where = args.where;
      // Checked as the metrics query checks it, so a bad filter is refused at once instead of matching nothing; the
      // same condition reads the records stored since `after`.
      const condition = filterToSql(where);
      return subscribeStored((record) => matchesFilter(record, where), { after: args.after, where: condition });
    },
    resolve: (record) => record,
  }),
);
