/**
 * The JSON request parser (src/http/json-body.ts) against JSON.parse: the same value for any body cut into any
 * chunks, escapes and quotes split across chunk boundaries included; the depth and value bounds exact to one.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseJsonBody } from '../src/http/json-body.js';

/** A request whose body arrives in the given pieces. */
function requestOf(pieces: Uint8Array[]): Request {
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const piece of pieces) controller.enqueue(piece);
      controller.close();
    },
  });
  return new Request('http://service.test/graphql', { method: 'POST', body, duplex: 'half' } as RequestInit);
}

function cut(bytes: Buffer, at: number[]): Uint8Array[] {
  const points = [...new Set(at.map((n) => n % (bytes.length + 1)))].sort((a, b) => a - b);
  const pieces: Uint8Array[] = [];
  let from = 0;
  for (const point of [...points, bytes.length]) {
    if (point > from) pieces.push(bytes.subarray(from, point));
    from = point;
  }
  return pieces;
}

const LOOSE = { maxValues: 1_000_000, maxDepth: 1_000 };

test('any JSON object body, cut anywhere, parses to what JSON.parse gives', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.dictionary(fc.string(), fc.jsonValue({ maxDepth: 6 })),
      fc.boolean(),
      fc.array(fc.nat(), { maxLength: 12 }),
      async (value, pretty, at) => {
        const text = pretty ? JSON.stringify(value, null, 2) : JSON.stringify(value);
        assert.deepEqual(await parseJsonBody(requestOf(cut(Buffer.from(text), at)), LOOSE), JSON.parse(text));
      },
    ),
    { numRuns: 2_000, seed: 20261202 },
  );
});

test('quotes and backslashes split across chunks at every position', async () => {
  const text = JSON.stringify({ a: 'x\\', b: '\\"', c: '\\\\"{[', d: ['"', '\\'], e: '\u00e9\ud83d\ude00' });
  const bytes = Buffer.from(text);
  for (let i = 0; i <= bytes.length; i++) {
    for (let j = i; j <= bytes.length; j += 3) {
      assert.deepEqual(
        await parseJsonBody(requestOf(cut(bytes, [i, j])), { maxValues: 12, maxDepth: 2 }),
        JSON.parse(text),
        `cut at ${i}, ${j}`,
      );
    }
  }
});

test('the bounds hold exactly: depth and values at the limit pass, one more is refused', async () => {
  const nested = (n: number) => Buffer.from(`{"v":${'['.repeat(n - 1)}${']'.repeat(n - 1)}}`);
  assert.ok(await parseJsonBody(requestOf([nested(10)]), { maxValues: 100, maxDepth: 10 }));
  await assert.rejects(
    parseJsonBody(requestOf([nested(11)]), { maxValues: 100, maxDepth: 10 }),
    /more than 10 levels deep/,
  );
  // {} counts 1; each of the n - 1 commas between n members counts 1: n values at most for n members.
  const members = (n: number) => Buffer.from(`{${Array.from({ length: n }, (_, i) => `"k${i}":1`).join(',')}}`);
  assert.ok(await parseJsonBody(requestOf([members(100)]), { maxValues: 100, maxDepth: 10 }));
  await assert.rejects(
    parseJsonBody(requestOf([members(101)]), { maxValues: 100, maxDepth: 10 }),
    /more than 100 JSON values/,
  );
  // Brackets and commas inside strings are text, not structure.
  const inString = Buffer.from(JSON.stringify({ s: '[[[[[[[[[[[[,,,,,,,,,,,,{{{{{{{{' }));
  assert.ok(await parseJsonBody(requestOf([inString]), { maxValues: 2, maxDepth: 1 }));
});

test('invalid JSON is refused with the reason and position, never the text', async () => {
  for (const text of [
    '{"query":"{ __typename }"}SECRETTAIL',
    '{"a":SECRET}',
    '{"a":"SECRET',
    'SECRET',
    '"SECRET"',
    'null',
  ]) {
    const error = await parseJsonBody(requestOf([Buffer.from(text)]), LOOSE).then(
      () => assert.fail(`accepted ${text}`),
      (e: Error) => e,
    );
    assert.doesNotMatch(error.message, /SECRET/, text);
    assert.equal((error as { extensions?: { code?: string } }).extensions?.code, 'BAD_REQUEST');
  }
});
