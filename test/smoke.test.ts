import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { INGEST, type TestService, record, startTestService } from './support/harness.js';

let service: TestService;
before(async () => {
  service = await startTestService();
});
after(async () => {
  await service?.stop();
});

test('a stored record can be read back', async () => {
  const result = await service.gql(INGEST, { records: [record({ eventId: 'smoke-1' })] });
  assert.deepEqual(result.ingestMetrics, { accepted: 1, duplicates: 0, rejected: [] });
  const read = await service.gql('{ metrics { totalCount edges { node { eventId userId } } } }');
  assert.deepEqual(read.metrics.edges, [{ node: { eventId: 'smoke-1', userId: 'user-1' } }]);
  const [row] = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics');
  assert.equal(row?.n, 1);
});
