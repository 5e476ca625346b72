/**
 * Helpers for the security tests: API keys made with the service's own code (as `npm run keys` does), and a trap that
 * proves a refusal happened before any SQL of the operation ran.
 */
import assert from 'node:assert/strict';
import { createApiKey } from '../../src/services/api-keys.js';
import type { GraphQLResponse, TestService } from './harness.js';

/** Creates a key in the running service's database; returns the key and the Authorization header carrying it. */
export async function makeKey(scopes: string[], name = `test ${scopes.join('+')}`) {
  const { key, info } = await createApiKey({ name, scopes });
  return { key, id: info.id, headers: { authorization: `Bearer ${key}` } };
}

/**
 * Runs `work` while the user_metrics table is renamed away, so that any SQL an operation sends to it fails (and the
 * client sees a masked INTERNAL_SERVER_ERROR instead of the refusal the test expects). The first call checks that the
 * trap works: a plain read fails while it is set.
 */
export async function withoutUserMetrics<T>(service: TestService, work: () => Promise<T>): Promise<T> {
  await service.sql('ALTER TABLE user_metrics RENAME TO user_metrics_hidden_by_test');
  try {
    return await work();
  } finally {
    await service.sql('ALTER TABLE user_metrics_hidden_by_test RENAME TO user_metrics');
  }
}

/** Asserts the response is an error with this code and HTTP status, and no data; returns the error. */
export function assertRefused(response: GraphQLResponse, code: string, status: number) {
  const summary = JSON.stringify({ status: response.status, data: response.data, errors: response.errors }).slice(
    0,
    1500,
  );
  assert.equal(response.status, status, summary);
  assert.ok(response.data == null, `expected no data: ${summary}`);
  const error = response.errors?.find((e) => e.extensions?.code === code);
  assert.ok(error, `expected an error with code ${code}: ${summary}`);
  return error;
}
