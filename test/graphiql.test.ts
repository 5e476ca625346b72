/**
 * GraphiQL served compressed and cached (src/plugins/graphiql.ts): a small page that names its parts as files, each
 * compressed as Accept-Encoding allows, the page revalidated by ETag, the files cached as immutable.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import zlib from 'node:zlib';
import { startTestService, type TestService } from './support/harness.js';

let service: TestService;
before(async () => {
  service = await startTestService({ GRAPHIQL: 'true' });
});
after(async () => {
  await service?.stop();
});

interface Answer {
  status: number;
  headers: { get(name: string): string | null };
  /** The body as sent (fetch would decompress it). */
  body: Buffer;
}

function get(path: string, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    http
      .get(`${service.url}${path}`, { headers }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          const value = (name: string) => {
            const header = response.headers[name.toLowerCase()];
            return header === undefined ? null : Array.isArray(header) ? header.join(', ') : String(header);
          };
          resolve({ status: response.statusCode ?? 0, headers: { get: value }, body: Buffer.concat(chunks) });
        });
      })
      .on('error', reject);
  });
}
const decode = (encoding: string | null, body: Buffer) =>
  encoding === 'br' ? zlib.brotliDecompressSync(body) : encoding === 'gzip' ? zlib.gunzipSync(body) : body;

async function page() {
  const response = await get('/graphql', { accept: 'text/html', 'accept-encoding': 'gzip, br' });
  const html = decode(response.headers.get('content-encoding'), response.body).toString();
  return { response, html };
}

test('the page is small, compressed, revalidated by ETag, and names its parts under /graphql/graphiql/', async () => {
  const { response, html } = await page();
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/html/);
  assert.ok(
    ['gzip', 'br'].includes(response.headers.get('content-encoding') ?? ''),
    `content-encoding ${response.headers.get('content-encoding')}`,
  );
  assert.equal(response.headers.get('cache-control'), 'no-cache');
  assert.match(response.headers.get('vary') ?? '', /Accept-Encoding/i);
  assert.ok(html.length < 20_000, `page of ${html.length} bytes`);
  assert.match(html, /<title>Metrics service<\/title>/);
  assert.match(html, /renderYogaGraphiQL/);
  // The example operations, with "</script>"-safe JSON.
  assert.match(html, /mutation Ingest/);
  const etag = response.headers.get('etag');
  assert.ok(etag);
  const again = await get('/graphql', {
    accept: 'text/html',
    'accept-encoding': response.headers.get('content-encoding')!,
    'if-none-match': etag,
  });
  assert.equal(again.status, 304);
  assert.equal(again.body.length, 0);
  // Without Accept-Encoding: the page as it is.
  const plain = await get('/graphql', { accept: 'text/html', 'accept-encoding': 'identity' });
  assert.equal(plain.headers.get('content-encoding'), null);
  assert.equal(plain.body.toString(), html);
});

test('the script and stylesheet are compressed and cached for a year; fonts are files of their own', async () => {
  const { html } = await page();
  const script = html.match(/<script src="(\/graphql\/graphiql\/[\w-]+\.js)"/)?.[1];
  const stylesheet = html.match(/<link rel="stylesheet" href="(\/graphql\/graphiql\/[\w-]+\.css)"/)?.[1];
  assert.ok(script && stylesheet, html);
  const js = await get(script, { 'accept-encoding': 'gzip' });
  assert.equal(js.status, 200);
  assert.equal(js.headers.get('content-encoding'), 'gzip');
  assert.equal(js.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  const code = decode('gzip', js.body).toString();
  assert.match(code, /MonacoEnvironment/);
  assert.match(code, /YogaGraphiQL/);
  const etag = js.headers.get('etag')!;
  assert.equal((await get(script, { 'accept-encoding': 'gzip', 'if-none-match': etag })).status, 304);

  const css = await get(stylesheet, { 'accept-encoding': 'gzip' });
  const text = decode(css.headers.get('content-encoding'), css.body).toString();
  assert.doesNotMatch(text, /data:font\//, 'no font inlined');
  const font = text.match(/url\((\/graphql\/graphiql\/[\w-]+\.woff2)\)/)?.[1];
  assert.ok(font);
  const fontResponse = await get(font);
  assert.equal(fontResponse.status, 200);
  assert.equal(fontResponse.headers.get('content-type'), 'font/woff2');
  assert.equal((await get('/graphql/graphiql/nothing.js')).status, 404);
});

test('with brotli, the page and its script and stylesheet come to less than 1.5 MB', async () => {
  const { html } = await page();
  const parts = ['/graphql', ...[...html.matchAll(/(?:src|href)="(\/graphql\/graphiql\/[^"]+)"/g)].map((m) => m[1]!)];
  // Brotli at its best quality is made in the background; gzip is served until it is ready.
  const deadline = Date.now() + 120_000;
  let total = 0;
  for (const part of parts) {
    for (;;) {
      const response = await get(part, { accept: 'text/html', 'accept-encoding': 'br, gzip' });
      if (response.headers.get('content-encoding') === 'br' || Date.now() > deadline) {
        assert.equal(response.headers.get('content-encoding'), 'br', `${part} still not in brotli`);
        total += response.body.length;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }
  assert.ok(total < 1_500_000, `${total} bytes`);
});
