/** The batch limit, configured small (MAX_BATCH_SIZE=10): a larger batch is refused whole with an error naming it. */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { INGEST, record, startTestService, type TestService } from './support/harness.js';

const LIMIT = 10;
let service: TestService;
before(async () => {
  service = await startTestService({ MAX_BATCH_SIZE: String(LIMIT) });
});
after(async () => {
  await service?.stop();
});

const storedIn = async (sessionId: string) =>
  (
    await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics WHERE session_id = $1', [sessionId])
  )[0]?.n;

test('a batch of exactly the limit is stored', async () => {
  const records = Array.from({ length: LIMIT }, (_, i) => record({ sessionId: 'at-limit', talkedTime: i }));
  const data = await service.gql(INGEST, { records });
  assert.deepEqual(data.ingestMetrics, { accepted: LIMIT, duplicates: 0, rejected: [] });
  assert.equal(await storedIn('at-limit'), LIMIT);
});

test('a batch over the limit is refused whole: a GraphQL error naming the limit, code BATCH_TOO_LARGE, nothing stored', async () => {
  for (const atomic of [false, true]) {
    const sessionId = `over-limit-${atomic}`;
    const records = Array.from({ length: LIMIT + 1 }, (_, i) => record({ sessionId, talkedTime: i }));
    const response = await service.request(INGEST, { records, atomic });
    assert.ok(response.data == null || response.data.ingestMetrics == null, JSON.stringify(response));
    const [error] = response.errors ?? [];
    assert.ok(error, 'an error');
    assert.equal(error.extensions?.code, 'BATCH_TOO_LARGE', 'not masked as an internal error');
    assert.equal(error.extensions?.limit, LIMIT);
    assert.match(error.message, new RegExp(`at most ${LIMIT} records.*has ${LIMIT + 1}`));
    assert.deepEqual(error.path, ['ingestMetrics']);
    assert.equal(await storedIn(sessionId), 0);
  }
});

test('the default body limit follows the batch limit and still fits a full batch', () => {
  // 10 records of at most ~3.5 kB each: the limit is far below the default for 5,000.
  assert.ok(service.config.maxBodyBytes >= LIMIT * 4 * 815, String(service.config.maxBodyBytes));
  assert.ok(service.config.maxBodyBytes < 5000 * 4 * 815, String(service.config.maxBodyBytes));
});
