/**
 * GraphiQL, compressed and cached. @graphql-yoga/render-graphiql inlines everything into one ~9 MB page (the bundle,
 * Monaco's three workers, the stylesheet with 36 fonts as base64, a 150 KB icon), which no cache can keep and every
 * visit downloads whole. Here the page Yoga renders is a few KB and names its parts as files:
 *   <endpoint>/graphiql/<digest>.js    the bundle and the workers
 *   <endpoint>/graphiql/<digest>.css   the stylesheet, its fonts as files of their own: the browser fetches only the
 *                                      fonts (and unicode-range subsets) the page uses, not all 36
 *   <endpoint>/graphiql/<digest>.woff2 ...
 * Each file is named by the digest of its content, so it is cached for a year (`immutable`) and never goes stale; the
 * page itself is revalidated by ETag (304). Every body is compressed once, with brotli and gzip, and served as the
 * request's Accept-Encoding allows. Brotli at its best quality takes seconds for the bundle, so the build makes the
 * files' compressed copies once (`npm run build`: dist/graphiql/, see writeCompressedGraphiQL) and the compiled service
 * reads them; without them (tsx, tests) brotli runs on libuv's thread pool, and until it is ready gzip is served.
 *
 * Nothing is built until the first GraphiQL page is asked for: with GraphiQL off, the service never loads the bundle.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import type { GraphiQLOptions, Plugin } from 'graphql-yoga';

const brotli = promisify(zlib.brotliCompress);
const gzip = promisify(zlib.gzip);

type Encoding = 'br' | 'gzip';

/** Where the build keeps the files' compressed copies: dist/graphiql/, for the compiled module only. */
const COMPRESSED_DIR = import.meta.url.endsWith('.js')
  ? fileURLToPath(new URL('../graphiql/', import.meta.url))
  : undefined;
const EXTENSIONS: Record<Encoding, string> = { br: 'br', gzip: 'gz' };

/** One file's body, identity and compressed, and how it is served. */
class Asset {
  readonly etag: string;
  private readonly compressed = new Map<Encoding, Buffer>();
  private readonly pending = new Map<Encoding, Promise<Buffer>>();

  constructor(
    readonly body: Buffer,
    readonly contentType: string,
    readonly cacheControl: string,
    /** dist/graphiql/<digest>.br|.gz, when the build has made them. */
    private readonly storedAs?: (encoding: Encoding) => string,
  ) {
    this.etag = `"${digest(body)}"`;
    // Small bodies are compressed at once, big ones in the background; brotli at quality 11 with a 16 MB window
    // finds what the bundle and the workers share (about 0.2 MB of it).
    for (const encoding of ['gzip', 'br'] as const) {
      const stored = this.storedAs?.(encoding);
      if (stored && fs.existsSync(stored)) {
        this.compressed.set(encoding, fs.readFileSync(stored));
        continue;
      }
      const job =
        encoding === 'gzip'
          ? gzip(body, { level: 9 })
          : brotli(body, {
              params: {
                [zlib.constants.BROTLI_PARAM_QUALITY]: 11,
                [zlib.constants.BROTLI_PARAM_LGWIN]: 24,
                [zlib.constants.BROTLI_PARAM_SIZE_HINT]: body.length,
              },
            });
      this.pending.set(
        encoding,
        job.then((buffer) => {
          this.compressed.set(encoding, buffer);
          this.pending.delete(encoding);
          return buffer;
        }),
      );
    }
  }

  /** Writes the compressed copies where the compiled service looks for them (unless they are there); see the build. */
  async store(): Promise<number> {
    let written = 0;
    for (const encoding of ['gzip', 'br'] as const) {
      const file = this.storedAs?.(encoding);
      if (!file || fs.existsSync(file)) continue;
      const body = this.compressed.get(encoding) ?? (await this.pending.get(encoding));
      if (!body) continue;
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(`${file}.tmp`, body);
      fs.renameSync(`${file}.tmp`, file);
      written++;
    }
    return written;
  }

  /** The best body the client accepts: brotli when it is ready, else gzip (waited for if need be), else identity. */
  async respond(request: Request): Promise<Response> {
    const accepted = acceptedEncodings(request.headers.get('accept-encoding'));
    const headers: Record<string, string> = {
      'content-type': this.contentType,
      'cache-control': this.cacheControl,
      vary: 'Accept-Encoding',
    };
    let encoding: Encoding | undefined = (['br', 'gzip'] as const).find(
      (e) => accepted.has(e) && this.compressed.has(e),
    );
    if (!encoding) encoding = accepted.has('gzip') ? 'gzip' : accepted.has('br') ? 'br' : undefined;
    // Each encoding has its own validator: a cache must not answer a gzip request with a brotli body's 304.
    const etag = encoding ? `${this.etag.slice(0, -1)}-${encoding}"` : this.etag;
    headers.etag = etag;
    if (matches(request.headers.get('if-none-match'), etag)) return new Response(null, { status: 304, headers });
    if (!encoding) return new Response(bytes(this.body), { status: 200, headers });
    const body = this.compressed.get(encoding) ?? (await this.pending.get(encoding));
    headers['content-encoding'] = encoding;
    return new Response(bytes(body ?? this.body), { status: 200, headers });
  }
}

/** Node's Buffers (from Buffer.from and zlib) are backed by an ArrayBuffer, never a SharedArrayBuffer. */
function bytes(buffer: Buffer): Uint8Array<ArrayBuffer> {
  return buffer as Uint8Array<ArrayBuffer>;
}

function digest(data: string | Buffer): string {
  return crypto.createHash('sha256').update(data).digest('base64url').slice(0, 16);
}

/** Encodings the client accepts (q=0 refuses one). */
function acceptedEncodings(header: string | null): Set<string> {
  const accepted = new Set<string>();
  for (const part of (header ?? '').split(',')) {
    const [name = '', ...params] = part.trim().toLowerCase().split(';');
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    if (name && !(q && Number(q.slice(2)) === 0)) accepted.add(name === '*' ? 'gzip' : name);
  }
  return accepted;
}

function matches(ifNoneMatch: string | null, etag: string): boolean {
  if (!ifNoneMatch) return false;
  return ifNoneMatch.trim() === '*' || ifNoneMatch.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag);
}

const IMMUTABLE = 'public, max-age=31536000, immutable';
const FONT_TYPES: Record<string, string> = { woff2: 'font/woff2', woff: 'font/woff', ttf: 'font/ttf' };
/** A small icon instead of the bundle's 150 KB one. */
const FAVICON =
  'data:image/svg+xml,' +
  encodeURIComponent(
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#e535ab"/></svg>',
  );

interface Bundle {
  /** By file name (`<digest>.<ext>`). */
  files: Map<string, Asset>;
  script: string;
  stylesheet: string;
}

let bundle: Promise<Bundle> | undefined;
/** Pages rendered so far, by their HTML (one per distinct set of options: in practice one). */
const pages = new Map<string, Asset>();

/** Splits render-graphiql's parts into files under `base` (loaded on first use). */
function loadBundle(base: string): Promise<Bundle> {
  bundle ??= import('@graphql-yoga/render-graphiql/graphiql').then((parts) => {
    const workers = minifiedWorkers(parts) ?? parts;
    const files = new Map<string, Asset>();
    const add = (body: Buffer, ext: string, contentType: string) => {
      const name = `${digest(body)}.${ext}`;
      const storedAs = COMPRESSED_DIR
        ? (encoding: Encoding) => path.join(COMPRESSED_DIR, `${name}.${EXTENSIONS[encoding]}`)
        : undefined;
      if (!files.has(name)) files.set(name, new Asset(body, contentType, IMMUTABLE, storedAs));
      return `${base}/${name}`;
    };
    const css = parts.css.replace(
      /url\(\s*["']?data:font\/(woff2|woff|ttf);base64,([A-Za-z0-9+/=]+)["']?\s*\)/g,
      (_, ext: string, data: string) => {
        return `url(${add(Buffer.from(data, 'base64'), ext, FONT_TYPES[ext] ?? 'application/octet-stream')})`;
      },
    );
    // The same code render-graphiql puts inline: each worker is started from a Blob of its source.
    const js = `function prepareBlob(workerContent) {
  const blob = new Blob([workerContent], { type: 'application/javascript' });
  return URL.createObjectURL(blob);
}
const workers = {
  editorWorkerService: prepareBlob(${JSON.stringify(workers.editorWorkerService)}),
  json: prepareBlob(${JSON.stringify(workers.jsonWorker)}),
  graphql: prepareBlob(${JSON.stringify(workers.graphqlWorker)}),
};
self['MonacoEnvironment'] = {
  globalAPI: false,
  getWorkerUrl: function (moduleId, label) {
    return workers[label];
  },
};
${parts.js};
`;
    return {
      files,
      stylesheet: add(Buffer.from(css), 'css', 'text/css; charset=utf-8'),
      script: add(Buffer.from(js), 'js', 'text/javascript; charset=utf-8'),
    };
  });
  return bundle;
}

interface Workers {
  editorWorkerService: string;
  jsonWorker: string;
  graphqlWorker: string;
}
const WORKER_NAMES = ['editorWorkerService', 'jsonWorker', 'graphqlWorker'] as const;

/** dist/graphiql/workers-<digest of the package's worker sources>.json: the build's minified copies. */
function workersFile(parts: Workers): string | undefined {
  if (!COMPRESSED_DIR) return undefined;
  return path.join(COMPRESSED_DIR, `workers-${digest(WORKER_NAMES.map((name) => parts[name]).join('\0'))}.json`);
}

/**
 * render-graphiql ships Monaco's three workers unminified; the build minifies them once (esbuild), which makes the
 * compressed script smaller. Used when the build made them for these very sources.
 */
function minifiedWorkers(parts: Workers): Workers | undefined {
  const file = workersFile(parts);
  if (!file || !fs.existsSync(file)) return undefined;
  return JSON.parse(fs.readFileSync(file, 'utf8')) as Workers;
}

/**
 * The build's part of this module (scripts/build.mjs runs it after compiling; nothing outside the compiled module):
 * the workers minified with `minify` when given, and the compressed copies of GraphiQL's files in dist/graphiql/, so
 * that the compiled service serves brotli from its first request. Files there already are kept. Returns how many it
 * wrote.
 */
export async function writeCompressedGraphiQL(endpoint: string, minify?: (code: string) => string): Promise<number> {
  if (!COMPRESSED_DIR) return 0;
  let written = 0;
  if (minify && !bundle) {
    const parts = await import('@graphql-yoga/render-graphiql/graphiql');
    const file = workersFile(parts);
    if (file && !fs.existsSync(file)) {
      const minified = Object.fromEntries(WORKER_NAMES.map((name) => [name, minify(parts[name])]));
      fs.mkdirSync(path.dirname(file), { recursive: true });
      fs.writeFileSync(file, JSON.stringify(minified));
      written++;
    }
  }
  const { files } = await loadBundle(`${endpoint}/graphiql`);
  for (const file of files.values()) written += await file.store();
  return written;
}

/** JSON inside a <script>: `</script>` or `<!--` in a default query must not end or change the script. */
function scriptJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * Yoga's `renderGraphiQL`: the page for `options`, naming the bundle's files under `<endpoint>/graphiql`. Rendered
 * once per distinct options; useCompressedGraphiQL serves it compressed.
 */
export async function renderGraphiQLPage(options: GraphiQLOptions, endpoint: string): Promise<string> {
  const { script, stylesheet } = await loadBundle(`${endpoint}/graphiql`);
  const html = `<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8" />
    <title>${escapeHtml(options.title || 'Yoga GraphiQL')}</title>
    <link rel="icon" href="${escapeHtml(options.favicon || FAVICON)}" />
    <link rel="stylesheet" href="${stylesheet}" />
  </head>
  <body id="body" class="no-focus-outline">
    <noscript>You need to enable JavaScript to run this app.</noscript>
    <div id="root"></div>
    <script src="${script}"></script>
    <script>
      YogaGraphiQL.renderYogaGraphiQL(window.document.querySelector('#root'), ${scriptJson(options)});
    </script>
  </body>
</html>
`;
  if (!pages.has(html)) pages.set(html, new Asset(Buffer.from(html), 'text/html; charset=utf-8', 'no-cache'));
  return html;
}

/**
 * Serves GraphiQL's files (`GET <endpoint>/graphiql/<name>`) and gives the page Yoga rendered with renderGraphiQLPage
 * its compressed body, ETag and Cache-Control. Put it first: the files need no key, as the page needs none.
 */
export function useCompressedGraphiQL({ endpoint }: { endpoint: string }): Plugin {
  const prefix = `${endpoint}/graphiql/`;
  return {
    onRequest({ request, url, endResponse }) {
      if (request.method !== 'GET' || !url.pathname.startsWith(prefix) || !bundle) return;
      const name = url.pathname.slice(prefix.length);
      return bundle.then(async ({ files }) => {
        const file = files.get(name);
        endResponse(
          file
            ? await file.respond(request)
            : new Response('Not found', { status: 404, headers: { 'content-type': 'text/plain' } }),
        );
      });
    },
    onResponse({ request, response, setResponse }) {
      if (
        request.method !== 'GET' ||
        pages.size === 0 ||
        !response.headers.get('content-type')?.startsWith('text/html')
      )
        return;
      const { pathname } = new URL(request.url);
      if (pathname !== endpoint && pathname !== `${endpoint}/`) return;
      return response
        .clone()
        .text()
        .then(async (html) => {
          const page = pages.get(html);
          if (!page) return;
          const served = await page.respond(request);
          // Headers other plugins set on Yoga's answer (security headers) stay.
          response.headers.forEach((value, name) => {
            if (!served.headers.has(name) && name !== 'content-length') served.headers.set(name, value);
          });
          setResponse(served);
        });
    },
  };
}
