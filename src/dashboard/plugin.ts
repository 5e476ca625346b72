/**
 * `GET /dashboard`: a page that draws what `metricStats` and `metricIngested` answer (README, Dashboard). It is static
 * files only: every figure on it is fetched by the browser from /graphql with the caller's own key, so the page itself
 * needs no key and holds no data. Served by the service (uPlot from node_modules, no CDN), so it works offline.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';
import type { Plugin } from 'graphql-yoga';

/** Where the page lives; its assets are under it. */
export const DASHBOARD_PATH = '/dashboard';

interface Asset {
  body: Buffer;
  gzipped: Buffer;
  contentType: string;
  etag: string;
  /** Long-lived and immutable when the URL carries the content's hash (`?v=`); otherwise revalidated every time. */
  versioned: boolean;
}

/** The files the page is made of: the URL under /dashboard, the file, its content type. */
const FILES: Array<{ url: string; file: () => string; contentType: string }> = [
  { url: '/app.js', file: () => ownFile('app.js'), contentType: 'text/javascript; charset=utf-8' },
  { url: '/style.css', file: () => ownFile('style.css'), contentType: 'text/css; charset=utf-8' },
  {
    url: '/vendor/uPlot.iife.min.js',
    file: () => vendorFile('uplot/dist/uPlot.iife.min.js'),
    contentType: 'text/javascript; charset=utf-8',
  },
  {
    url: '/vendor/uPlot.min.css',
    file: () => vendorFile('uplot/dist/uPlot.min.css'),
    contentType: 'text/css; charset=utf-8',
  },
];

/**
 * The page may run only its own scripts and talk only to its own origin: a figure that reached the page through a
 * user id or a sentiment can never become code. Inline styles stay off as well (uPlot sets styles through the DOM).
 */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri " +
    "'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/**
 * The folder of index.html, app.js and style.css: beside this file (src/, or dist/ when the build copies it), else
 * src/.
 */
function staticDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const candidates = [path.join(here, 'static'), path.resolve(here, '../../src/dashboard/static')];
  return candidates.find((dir) => fs.existsSync(path.join(dir, 'index.html'))) ?? candidates[0]!;
}

function ownFile(name: string): string {
  return path.join(staticDir(), name);
}

function vendorFile(specifier: string): string {
  return createRequire(import.meta.url).resolve(specifier);
}

function asset(body: Buffer, contentType: string, versioned: boolean): Asset {
  const hash = crypto.createHash('sha256').update(body).digest('base64url').slice(0, 16);
  // Level 9: the files are compressed once per process, and uPlot shrinks from 51 KB to about 22 KB.
  return { body, gzipped: zlib.gzipSync(body, { level: 9 }), contentType, etag: `"${hash}"`, versioned };
}

/**
 * Loads every file once; index.html gets each asset's URL with its hash, so a new build is never mixed with a cached
 * old one.
 */
function loadAssets(): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  let html = fs.readFileSync(ownFile('index.html'), 'utf8');
  for (const { url, file, contentType } of FILES) {
    const loaded = asset(fs.readFileSync(file()), contentType, true);
    assets.set(url, loaded);
    html = html.replaceAll(`"${DASHBOARD_PATH}${url}"`, `"${DASHBOARD_PATH}${url}?v=${loaded.etag.slice(1, -1)}"`);
  }
  const page = asset(Buffer.from(html), 'text/html; charset=utf-8', false);
  assets.set('', page);
  assets.set('/', page);
  return assets;
}

/** Whether the client takes gzip (`Accept-Encoding: gzip` or `*`, without `q=0`). */
export function acceptsGzip(header: string | null): boolean {
  if (!header) return false;
  for (const part of header.split(',')) {
    const [name = '', ...params] = part.trim().toLowerCase().split(';');
    if (name.trim() !== 'gzip' && name.trim() !== '*') continue;
    const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
    return q === undefined || Number(q.slice(2)) > 0;
  }
  return false;
}

/**
 * Answers GET and HEAD for /dashboard and its assets before Yoga routes the request; anything else passes on. The
 * files are read when the plugin is made: a build without them answers 404 with the reason, and the service still runs.
 */
export function useDashboard(): Plugin {
  let assets: Map<string, Asset> | undefined;
  let missing: string | undefined;
  try {
    assets = loadAssets();
  } catch (error) {
    missing = `The dashboard's files are not in this build (${(error as Error).message}).`;
  }
  return {
    onRequest({ request, url, endResponse, fetchAPI }) {
      if (url.pathname !== DASHBOARD_PATH && !url.pathname.startsWith(`${DASHBOARD_PATH}/`)) return;
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        endResponse(
          new fetchAPI.Response('Only GET and HEAD are allowed here.\n', {
            status: 405,
            headers: { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' },
          }),
        );
        return;
      }
      const found = assets?.get(url.pathname.slice(DASHBOARD_PATH.length));
      if (!found) {
        endResponse(
          new fetchAPI.Response(`${missing ?? 'Not found.'}\n`, {
            status: 404,
            headers: { 'content-type': 'text/plain; charset=utf-8' },
          }),
        );
        return;
      }
      const versioned = found.versioned && url.searchParams.get('v') === found.etag.slice(1, -1);
      const gzip = acceptsGzip(request.headers.get('accept-encoding'));
      // Each encoding is its own representation, so each has its own strong ETag.
      const etag = gzip ? `${found.etag.slice(0, -1)}-gz"` : found.etag;
      const headers: Record<string, string> = {
        'content-type': found.contentType,
        etag,
        vary: 'accept-encoding',
        'cache-control': versioned ? 'public, max-age=31536000, immutable' : 'no-cache',
        ...SECURITY_HEADERS,
      };
      if ((request.headers.get('if-none-match') ?? '').split(',').some((tag) => tag.trim() === etag)) {
        endResponse(new fetchAPI.Response(null, { status: 304, headers }));
        return;
      }
      const body = gzip ? found.gzipped : found.body;
      if (gzip) headers['content-encoding'] = 'gzip';
      headers['content-length'] = String(body.length);
      endResponse(
        new fetchAPI.Response(request.method === 'HEAD' ? null : new Uint8Array(body), { status: 200, headers }),
      );
    },
  };
}
