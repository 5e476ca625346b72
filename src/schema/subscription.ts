/** Live updates: the `metricIngested` subscription (server-sent events through Yoga; GraphiQL can run it). */

import { subscribeStored } from '../services/events.js';
import { filterToSql, matchesFilter } from '../services/metric-filter.js';
import { builder } from './builder.js';
import { MetricFilterInput, UserMetric } from './metric.js';

builder.subscriptionField('metricIngested', (t) =>
  t.field({
    type: UserMetric,
    description:
      'Records stored from now on that match `where`, each once, in the order stored. Duplicates and rejected ' +
      'records ' +
      'are never sent. Every instance of the service delivers every record when they share Redis (REDIS_URL).',
    args: { where: t.arg({ type: MetricFilterInput }) },
    subscribe: (_root, args) => {
      const where = args.where;
      // Checked as the metrics query checks it, so a bad filter is refused at once instead of matching nothing.
      filterToSql(where);
      return subscribeStored((record) => matchesFilter(record, where));
    },
    resolve: (record) => record,
  }),
);
