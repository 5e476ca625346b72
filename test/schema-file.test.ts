/**
 * schema.graphql is the committed record of the API: this test fails when the code's schema and the file disagree,
 * so an API change cannot land without the file changing with it (and showing up in review).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { buildSchema, type GraphQLSchema } from 'graphql';
import { SCHEMA_FILE, schemaText } from '../src/cli/export-schema.js';
import { schema } from '../src/schema/index.js';

function firstDifference(expected: string, actual: string): string {
  const a = expected.split('\n');
  const b = actual.split('\n');
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if (a[i] !== b[i])
      return `line ${i + 1}: the code gives ${JSON.stringify(a[i] ?? '(end of file)')}, the file has ${JSON.stringify(b[i] ?? '(end of file)')}`;
  }
  return 'no difference';
}

test('schema.graphql matches the schema the code builds (run `npm run schema:export` after changing the API)', () => {
  assert.ok(fs.existsSync(SCHEMA_FILE), 'schema.graphql is missing: run `npm run schema:export` and commit it');
  const committed = fs.readFileSync(SCHEMA_FILE, 'utf8');
  const generated = schemaText();
  assert.ok(
    committed === generated,
    `schema.graphql is out of date (${firstDifference(generated, committed)}). Run \`npm run schema:export\` and commit schema.graphql.`,
  );
});

test('the file is a valid schema with the same types as the code', () => {
  const fromFile = buildSchema(fs.readFileSync(SCHEMA_FILE, 'utf8'));
  const names = (s: GraphQLSchema) =>
    Object.keys(s.getTypeMap())
      .filter((n) => !n.startsWith('__'))
      .sort();
  assert.deepEqual(names(fromFile), names(schema));
  assert.equal(fromFile.getMutationType()?.getFields().ingestMetrics?.type.toString(), 'IngestMetricsResult!');
});

test('schema:export --check passes on the committed file and fails on a stale one', () => {
  const check = (file: string) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/export-schema.ts', '--check', '--file', file], {
      encoding: 'utf8',
    });
  const current = check(SCHEMA_FILE);
  assert.equal(current.status, 0, `${current.stdout}${current.stderr}`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'schema-file-'));
  try {
    const stale = path.join(dir, 'schema.graphql');
    // The file as it would be if someone changed the API without regenerating it.
    fs.writeFileSync(stale, schemaText().replace('  userId: String!\n', '  userId: String\n'));
    const run = check(stale);
    assert.equal(run.status, 1, `${run.stdout}${run.stderr}`);
    assert.match(run.stderr, /differs from the code's schema: run `npm run schema:export`/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
