/**
 * The committed migrations must build exactly what prisma/schema.prisma describes: `npm run db:diff -- --check` exits 0.
 * When this fails, author the missing migration with `npm run db:diff -- --name <snake_name>` (README, "Authoring a
 * migration"). Needs a PostgreSQL role with CREATEDB: SHADOW_DATABASE_URL, else TEST_DATABASE_URL, else DATABASE_URL's
 * server, else postgres@127.0.0.1:5432.
 *
 *   node --import tsx --test test/migration-diff.test.ts
 */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// The check needs a PostgreSQL server for its temporary database; `npm test` on the embedded database must pass on a
// machine without one, so it runs when a server is named (CI's PostgreSQL run names one).
const SERVER = process.env.SHADOW_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
const skip = SERVER ? false : 'needs a PostgreSQL server: set TEST_DATABASE_URL or SHADOW_DATABASE_URL';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCheck(cwd: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/migration-diff.ts', '--check'], {
      cwd,
      // Under `npm test`, TEST_DATABASE_URL names the PostgreSQL server the suite may create databases on.
      env: { ...process.env, SHADOW_DATABASE_URL: process.env.SHADOW_DATABASE_URL ?? process.env.TEST_DATABASE_URL },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('prisma/schema.prisma and prisma/migrations agree (db:diff --check exits 0)', {
  timeout: 20_000,
  skip,
}, async () => {
  const run = await runCheck(ROOT);
  assert.equal(
    run.code,
    0,
    `db:diff --check exited ${run.code}: the model and the committed migrations disagree, or the check failed.\n` +
      `stdout:\n${run.stdout}\nstderr:\n${run.stderr}`,
  );
});

test('db:diff --check reports a model change the migrations lack (exit 1, ALTER TABLE)', {
  timeout: 20_000,
  skip,
}, async (t) => {
  // A copy of what the command reads, with one field added to the model: guards against a check that always passes.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'migration-diff-test-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(path.join(ROOT, 'prisma'), path.join(dir, 'prisma'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'src/cli'), path.join(dir, 'src/cli'), { recursive: true });
  fs.cpSync(path.join(ROOT, 'src/db'), path.join(dir, 'src/db'), { recursive: true });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'), 'dir');

  const schemaPath = path.join(dir, 'prisma/schema.prisma');
  const schema = fs.readFileSync(schemaPath, 'utf8');
  const changed = schema.replace(/(model UserMetric \{\n)/, '$1  driftProbe Int? @map("drift_probe")\n');
  assert.notEqual(changed, schema, 'could not find `model UserMetric {` in prisma/schema.prisma to add a field to');
  fs.writeFileSync(schemaPath, changed);

  const run = await runCheck(dir);
  assert.equal(
    run.code,
    1,
    `expected exit 1 (drift), got ${run.code}.\nstdout:\n${run.stdout}\nstderr:\n${run.stderr}`,
  );
  assert.match(run.stdout, /ALTER TABLE "user_metrics" ADD COLUMN\s+"drift_probe" INTEGER/);
});
