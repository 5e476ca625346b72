/**
 * The house rules Biome cannot check (scripts/check-imports.mjs): imports follow the layers, no import cycle, no line
 * over 120 characters in src/. Once on the real tree, and once on a small planted tree where every kind of wrong is
 * put in on purpose, so the check is seen to catch each one and to leave the allowed imports alone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';

const SCRIPT = path.join(import.meta.dirname, '..', 'scripts', 'check-imports.mjs');

function check(root?: string): { status: number | null; lines: string[]; output: string } {
  const result = spawnSync(process.execPath, [SCRIPT, ...(root ? [root] : [])], { encoding: 'utf8' });
  const output = `${result.stdout}${result.stderr}`;
  return { status: result.status, lines: result.stdout.split('\n').filter((line) => line !== ''), output };
}

const planted: string[] = [];
after(() => {
  for (const dir of planted) fs.rmSync(dir, { recursive: true, force: true });
});

/** A throwaway project with these files (path -> text) under its root. */
function plant(files: Record<string, string>): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'house-'));
  planted.push(root);
  for (const [name, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    fs.writeFileSync(path.join(root, name), text);
  }
  return root;
}

/** Imports the layers allow: downwards, within a folder, a package, and imports that are only words in a comment. */
const ALLOWED: Record<string, string> = {
  'src/main.ts': "import { start } from './app.js';\nimport process from 'node:process';\nstart(process.argv);\n",
  'src/cli/main.ts': "import { run } from './support.js';\nimport type { Config } from '../config.js';\nrun();\n",
  'src/cli/support.ts': 'export function run(): void {}\n',
  'src/app.ts':
    "import { server } from './server.js';\nexport function start(_argv: string[]): void {\n  server();\n}\n",
  'src/server.ts': "import { limits } from './plugins/limits.js';\nexport function server(): void {\n  limits();\n}\n",
  // A lower layer is allowed: plugins (L5) use services (L8).
  'src/plugins/limits.ts': "import { a } from '../services/a.js';\nexport function limits(): void {\n  a();\n}\n",
  'src/services/a.ts':
    "// import { server } from '../server.js' is only a comment here.\n" +
    'const text = "import(\'../app.js\')";\n' +
    'export function a(): string {\n  return text;\n}\n',
  'src/observability/metrics.ts': "import { Counter } from 'prom-client';\nexport const counter = Counter;\n",
  'src/config.ts': `export interface Config {\n  port: number;\n}\n// ${'x'.repeat(117)}\n`,
  // Generated code is not read for its imports nor held to the line length.
  'src/generated/client.ts': `import { server } from '../server.js';\n// ${'y'.repeat(200)}\nexport { server };\n`,
};

test('the real tree: imports follow the layers, no import cycle, no line over 120 characters in src/', () => {
  const { status, output } = check();
  assert.equal(status, 0, `scripts/check-imports.mjs found violations:\n${output}`);
});

test('a planted tree with only allowed imports passes', () => {
  const { status, output } = check(plant(ALLOWED));
  assert.equal(status, 0, output);
  assert.match(output, /no cycle/);
});

test('a planted tree: each wrong import, the cycle, the long line and the unplaced file are named', () => {
  const root = plant({
    ...ALLOWED,
    // A lower layer importing a higher one.
    'src/db/x.ts': "import { server } from '../server.js';\nexport const x = server;\n",
    // Type-only imports count, and observability imports nothing of ours, not even from a lower layer.
    'src/observability/metrics.ts': "import type { Config } from '../config.js';\nexport type Port = Config['port'];\n",
    // Siblings on one layer (L5).
    'src/plugins/wording.ts': "export { panel } from '../dashboard/panel.js';\n",
    'src/dashboard/panel.ts': 'export const panel = 1;\n',
    // A dynamic import with a literal, upwards (services L8 -> schema L6).
    'src/services/lazy.ts':
      "export async function load(): Promise<unknown> {\n  return import('../schema/index.js');\n}\n",
    'src/schema/index.ts': 'export const schema = {};\n',
    // Two services importing each other.
    'src/services/events.ts': "import { ingest } from './ingest.js';\nexport const events = () => ingest;\n",
    'src/services/ingest.ts':
      "import type { events } from './events.js';\nexport const ingest = (e: typeof events) => e;\n",
    // 121 characters.
    'src/services/long.ts': `// ${'z'.repeat(118)}\nexport {};\n`,
    // In no layer of the table.
    'src/stray.ts': 'export const stray = 1;\n',
  });
  const { status, lines, output } = check(root);
  assert.equal(status, 1, output);
  const violations = lines.filter((line) => !line.startsWith('check-imports:'));
  const expected: [string, RegExp][] = [
    ['src/db/x.ts:1', /'\.\.\/server\.js'.*src\/server\.ts: src\/db\/ \(L9\) may not import src\/server\.ts \(L3\)/],
    ['src/observability/metrics.ts:1', /import type .*src\/config\.ts: src\/observability\/ \(L10\) imports nothing/],
    ['src/plugins/wording.ts:1', /src\/plugins\/ and src\/dashboard\/ are siblings on L5/],
    [
      'src/services/lazy.ts:2',
      /import\('\.\.\/schema\/index\.js'\).*src\/services\/ \(L8\) may not import src\/schema\//,
    ],
    ['src/stray.ts:1', /in no layer/],
    [
      'src/services/events.ts:1',
      /import cycle: src\/services\/events\.ts -> src\/services\/ingest\.ts -\(type only\)->/,
    ],
    ['src/services/long.ts:1', /line of 121 characters, over 120/],
  ];
  for (const [where, why] of expected) {
    const line = violations.find((candidate) => candidate.startsWith(`${where}: `));
    assert.ok(line, `no violation reported at ${where}:\n${output}`);
    assert.match(line, why, `the line for ${where} does not say why:\n${output}`);
  }
  assert.equal(violations.length, expected.length, `violations beyond the planted ones:\n${output}`);
  assert.match(lines.at(-1) ?? '', /5 against the layers, 1 cycle\(s\), 1 line\(s\) too long/);
});

test('a root without src/ is refused, not passed', () => {
  const { status, output } = check(plant({ 'README.md': 'no src here\n' }));
  assert.equal(status, 2, output);
  assert.match(output, /has no src\/ folder/);
});
