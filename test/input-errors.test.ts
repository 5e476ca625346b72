/**
 * Every error a client can fix carries an `extensions.code` (README, Errors): variables of the wrong type, which
 * graphql-js refuses before anything runs, get BAD_USER_INPUT; a literal of the wrong type is a validation error.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { INGEST, record, startTestService, type TestService } from './support/harness.js';

let service: TestService;
before(async () => {
  service = await startTestService();
});
after(async () => {
  await service?.stop();
});

test('a string for an Int variable is BAD_USER_INPUT, with graphql-js words naming the variable', async () => {
  const response = await service.request('query Page($first: Int) { metrics(first: $first) { totalCount } }', {
    first: 'ten',
  });
  assert.equal(response.errors?.length, 1, JSON.stringify(response));
  assert.match(
    response.errors[0]!.message,
    /^Variable "\$first" got invalid value "ten"; Int cannot represent non-integer value/,
  );
  assert.equal(response.errors[0]!.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(response));
  assert.equal(response.data, undefined);
});

test('a type error inside a batch names the record and field, with BAD_USER_INPUT, and stores nothing', async () => {
  const response = await service.request(INGEST, { records: [record(), record({ timestamp: '1795000000' })] });
  assert.equal(response.errors?.length, 1, JSON.stringify(response));
  assert.match(response.errors[0]!.message, /at "records\[1\]\.timestamp"/);
  assert.equal(response.errors[0]!.extensions?.code, 'BAD_USER_INPUT');
  const rows = await service.sql<{ n: number }>('SELECT count(*)::int AS n FROM user_metrics');
  assert.equal(rows[0]!.n, 0);
});

test('a missing required variable is BAD_USER_INPUT', async () => {
  const response = await service.request('query One($id: ID!) { metric(id: $id) { id } }', {});
  assert.equal(response.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(response));
});

test('a literal of the wrong type is GRAPHQL_VALIDATION_FAILED', async () => {
  const response = await service.request('{ metrics(first: "ten") { totalCount } }');
  assert.equal(response.errors?.length, 1, JSON.stringify(response));
  assert.equal(response.errors[0]!.extensions?.code, 'GRAPHQL_VALIDATION_FAILED', JSON.stringify(response));
});

test('errors from execution keep their own codes', async () => {
  const response = await service.request('{ metrics(first: 5000) { totalCount } }');
  assert.equal(response.errors?.[0]?.extensions?.code, 'BAD_USER_INPUT', JSON.stringify(response));
  assert.ok(response.errors?.[0]?.extensions?.argument, JSON.stringify(response));
});
