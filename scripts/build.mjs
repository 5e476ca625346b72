#!/usr/bin/env node
// Builds dist/ (the Prisma client generated into src/generated, then tsc -p tsconfig.build.json) and records a
// digest of what the build was made from in dist/.build-inputs.
//   node scripts/build.mjs             build (npm run build)
//   node scripts/build.mjs --if-stale  build only when the inputs' digest differs from the recorded one (npm prestart)
// A digest of contents, not mtimes: `npm test` regenerates src/generated and checkouts touch files without changing
// them, and neither should cost a rebuild. Without src/ (the Docker image) dist/ is all there is: nothing to build.
// The tools' own output goes to stderr, so that `npm run -s export | gzip` and `$(npm run -s keys ...)` stay clean.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const STAMP = path.join(root, 'dist/.build-inputs');
/** Files outside src/ that change what the build makes. src/generated is left out: it is made from these. */
const EXTRA_INPUTS = [
  'prisma/schema.prisma',
  'prisma.config.ts',
  'tsconfig.json',
  'tsconfig.build.json',
  'package-lock.json',
];

function listFiles(dir, out) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      if (full !== path.join(root, 'src/generated')) listFiles(full, out);
    } else if (entry.isFile()) out.push(full);
  }
  return out;
}

/** sha256 over the relative names and contents of every build input; undefined when there are no sources. */
export function inputsDigest() {
  if (!fs.existsSync(path.join(root, 'src'))) return undefined;
  const files = listFiles(path.join(root, 'src'), []);
  for (const name of EXTRA_INPUTS) if (fs.existsSync(path.join(root, name))) files.push(path.join(root, name));
  const hash = crypto.createHash('sha256');
  for (const file of files.sort()) {
    hash.update(`${path.relative(root, file)}\0`);
    hash.update(fs.readFileSync(file));
    hash.update('\0');
  }
  return hash.digest('hex');
}

/** Whether dist/ was built from the sources as they are now (always true without sources). */
export function distIsCurrent() {
  const digest = inputsDigest();
  if (digest === undefined) return true;
  if (!fs.existsSync(path.join(root, 'dist/main.js')) || !fs.existsSync(path.join(root, 'src/generated'))) return false;
  try {
    return fs.readFileSync(STAMP, 'utf8').trim() === digest;
  } catch {
    return false;
  }
}

function run(args) {
  const result = spawnSync(process.execPath, args, { cwd: root, stdio: ['ignore', process.stderr, 'inherit'] });
  return result.status ?? 1;
}

/** Generates the Prisma client and compiles; records the digest only when both succeeded. Returns an exit code. */
export function build() {
  const digest = inputsDigest();
  const started = Date.now();
  const code =
    run([path.join(root, 'scripts/prisma.mjs'), 'generate']) ||
    run([path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json']) ||
    // GraphiQL's workers minified (esbuild) and its files compressed once, for the compiled service
    // (src/plugins/graphiql.ts): ~15 s the first time, then only when @graphql-yoga/render-graphiql changes.
    run([
      '--input-type=module',
      '-e',
      "const { writeCompressedGraphiQL } = await import('./dist/plugins/graphiql.js'); const { transformSync } = await import('esbuild'); " +
        "const n = await writeCompressedGraphiQL('/graphql', (code) => transformSync(code, { minify: true }).code); " +
        'if (n > 0) console.error(`Wrote ${n} GraphiQL file(s) into dist/graphiql/`);',
    ]);
  if (code !== 0) return code;
  // The dashboard's page, script and styles are served from beside the compiled plugin (src/dashboard/plugin.ts).
  fs.cpSync(path.join(root, 'src/dashboard/static'), path.join(root, 'dist/dashboard/static'), { recursive: true });
  if (digest !== undefined) fs.writeFileSync(STAMP, `${digest}\n`);
  process.stderr.write(`Built dist/ in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const ifStale = process.argv.includes('--if-stale');
  if (ifStale && distIsCurrent()) process.exit(0);
  if (ifStale) process.stderr.write('Sources changed since the last build: building dist/ first\n');
  process.exit(build());
}
