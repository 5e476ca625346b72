#!/usr/bin/env node
// Runs the test suite with Node's test runner (TypeScript through tsx). Arguments narrow it to some files:
//   npm test                      every test/*.test.ts
//   npm test -- test/ingest.test.ts
// TEST_DATABASE_URL=postgres://... runs it against that PostgreSQL server (a database per test file) instead of
// the embedded database.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const requested = process.argv.slice(2);
const files =
  requested.length > 0
    ? requested
    : fs
        .readdirSync('test')
        .filter((name) => name.endsWith('.test.ts'))
        .sort()
        .map((name) => path.join('test', name));
const where = process.env.TEST_DATABASE_URL
  ? `PostgreSQL (${process.env.TEST_DATABASE_URL.replace(/:[^:@/]*@/, ':***@')})`
  : 'the embedded database';
console.log(`Running ${files.length} test file(s) against ${where}`);
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-timeout=300000', ...files],
  { stdio: 'inherit', env: { ...process.env, NODE_ENV: 'test' } },
);
process.exit(result.status ?? 1);
