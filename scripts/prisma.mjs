#!/usr/bin/env node
// Runs the Prisma CLI for the commands that do not need Prisma's native schema engine (generate, validate, format,
// studio, version). The CLI insists on downloading that engine first; where it cannot (no internet), pointing
// PRISMA_SCHEMA_ENGINE_BINARY at any existing file lets these commands run. The variable is set for this one child
// process only, and only when the engine is neither configured nor already downloaded, so `prisma migrate` elsewhere
// keeps working with the real engine.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(import.meta.url);
const args = process.argv.slice(2);
const allowed = new Set(['generate', 'validate', 'format', 'studio', 'version']);
if (!allowed.has(args[0] ?? '')) {
  console.error(`scripts/prisma.mjs runs only: ${[...allowed].join(', ')} (got ${args[0] ?? 'nothing'})`);
  process.exit(2);
}

const env = { ...process.env };
if (!env.PRISMA_SCHEMA_ENGINE_BINARY) {
  const enginesDir = path.dirname(require.resolve('@prisma/engines/package.json'));
  const downloaded = fs.readdirSync(enginesDir).some((name) => name.startsWith('schema-engine'));
  if (!downloaded) env.PRISMA_SCHEMA_ENGINE_BINARY = path.resolve('package.json');
}
env.PRISMA_HIDE_UPDATE_MESSAGE ??= '1';
env.CHECKPOINT_DISABLE ??= '1';
// Generators such as prisma-pothos-types are found on PATH, as under `npm run`.
env.PATH = [path.resolve('node_modules/.bin'), env.PATH].filter(Boolean).join(path.delimiter);

const cli = require.resolve('prisma/build/index.js');
const result = spawnSync(process.execPath, [cli, ...args], { stdio: 'inherit', env });
process.exit(result.status ?? 1);
