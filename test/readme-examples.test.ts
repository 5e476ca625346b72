/**
 * README's shell examples, run as written against a service of their own (its own database and port), with what they
 * print compared to what README shows. Only marked blocks run, in README's order; a marker is an HTML comment on the
 * line before a fenced block:
 *   <!-- readme-test: run -->                  run the block with bash; it must exit 0
 *   <!-- readme-test: background -->           start it and keep it running (a subscription), until the end
 *   <!-- readme-test: output -->               what the last `run` block printed on stdout
 *   <!-- readme-test: stderr -->               what the last `run` block printed on stderr
 *   <!-- readme-test: output of background --> what the `background` block printed by then
 *   <!-- readme-test: run if PostgreSQL -->     as run, only when the tests use PostgreSQL (it names a server)
 * JSON is compared as values (README may break it over lines); text line by line. Ids, cursors, keys, times and rates
 * are normalised on both sides. `localhost:4000` becomes the test service's address; the tools get its database in
 * DATABASE_URL (on the embedded database, through EMBEDDED_DB_PORT, since the service holds the folder). Commands run
 * in a temporary folder that has the repository's package.json, scripts, examples and build, so files they write
 * (all.ndjson.gz) land there.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createTestDatabase, type TestDatabase, usingPostgres } from './support/harness.js';
import { freePort } from './support/pg-server.js';
import { PROJECT_ROOT } from './support/process.js';
import { type ServiceProcess, startServiceProcess } from './support/service-process.js';

/** README_FILE=<path> runs another copy (to see the test fail on a changed figure). */
const README = process.env.README_FILE ?? path.join(PROJECT_ROOT, 'README.md');

type Kind = 'run' | 'background' | 'output' | 'stderr' | 'output of background' | 'run if PostgreSQL';

interface Block {
  kind: Kind;
  /** README line of the opening fence, for messages. */
  line: number;
  lang: string;
  text: string;
}

const KINDS: Kind[] = ['run', 'background', 'output', 'stderr', 'output of background', 'run if PostgreSQL'];

/** The marked blocks of a Markdown text, in order. */
export function markedBlocks(markdown: string): Block[] {
  const lines = markdown.split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const marker = /^<!-- readme-test: (.+?) -->\s*$/.exec(lines[i] ?? '');
    if (!marker) continue;
    const kind = marker[1] as Kind;
    assert.ok(KINDS.includes(kind), `README.md:${i + 1}: unknown marker "${marker[1]}" (known: ${KINDS.join(', ')})`);
    const fence = /^```(\w*)\s*$/.exec(lines[i + 1] ?? '');
    assert.ok(fence, `README.md:${i + 1}: a readme-test marker must be right before a fenced block`);
    const end = lines.findIndex((l, j) => j > i + 1 && /^```\s*$/.test(l));
    assert.ok(end > 0, `README.md:${i + 2}: the block never closes`);
    blocks.push({ kind, line: i + 2, lang: fence[1] ?? '', text: lines.slice(i + 2, end).join('\n') });
    i = end;
  }
  return blocks;
}

/** What differs from one run to the next, replaced by placeholders (same on both sides). */
function normaliseText(text: string): string {
  return text
    .replace(/mk_[A-Za-z0-9_-]{43}/g, 'mk_<key>')
    .replace(/\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z/g, '<time>')
    .replace(/\b\d+(\.\d+)? s\b/g, '<seconds> s')
    .replace(/\b[\d,]+(\.\d+)? records\/s/g, '<rate> records/s')
    .replace(/^\d+,/gm, '<id>,')
    .replace(/[ \t]+$/gm, '')
    .trim();
}

const VOLATILE_KEYS: Record<string, string> = {
  id: '<id>',
  cursor: '<cursor>',
  endCursor: '<cursor>',
  createdAt: '<time>',
  requestId: '<request id>',
};

function normaliseJson(value: unknown, key?: string): unknown {
  if (key !== undefined && key in VOLATILE_KEYS && value !== null) return VOLATILE_KEYS[key];
  if (Array.isArray(value)) return value.map((v) => normaliseJson(v));
  if (value && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, normaliseJson(v, k)]));
  return value;
}

/** Server-sent events as README shows them: `event:`/`data:` lines (keep-alive comments and blank lines dropped). */
function events(text: string): string[] {
  return text.split('\n').filter((l) => /^(event|data):/.test(l));
}

function compare(block: Block, actual: string, what: string): void {
  const where = `README.md:${block.line} (${what})`;
  if (block.lang === 'json') {
    let got: unknown;
    try {
      got = JSON.parse(actual);
    } catch {
      assert.fail(`${where}: README shows JSON, the command printed:\n${actual.slice(0, 3000)}`);
    }
    assert.deepEqual(
      normaliseJson(got),
      normaliseJson(JSON.parse(block.text)),
      `${where}: printed\n${actual.slice(0, 3000)}`,
    );
    return;
  }
  if (events(block.text).length > 0) {
    const expected = events(block.text).map((line) =>
      line.startsWith('data: {') ? `data: ${JSON.stringify(normaliseJson(JSON.parse(line.slice(6))))}` : line,
    );
    const got = events(actual).map((line) =>
      line.startsWith('data: {') ? `data: ${JSON.stringify(normaliseJson(JSON.parse(line.slice(6))))}` : line,
    );
    assert.deepEqual(got, expected, `${where}: printed\n${actual.slice(0, 3000)}`);
    return;
  }
  assert.equal(normaliseText(actual), normaliseText(block.text), `${where}: printed\n${actual.slice(0, 3000)}`);
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let workdir: string;
let database: TestDatabase;
let service: ServiceProcess;
let env: Record<string, string>;
const background: Array<{ child: ChildProcess; output: () => string; errors: () => string; block: Block }> = [];

function command(text: string): string {
  return text.replace(/\blocalhost:4000\b/g, service.url.replace(/^http:\/\//, ''));
}

function bash(text: string, timeoutMs = 120_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-e', '-o', 'pipefail', '-c', command(text)], {
      cwd: workdir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function startBackground(block: Block): void {
  const child = spawn('bash', ['-c', command(block.text)], {
    cwd: workdir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  // stdout only: what a reader sees of the stream. curl's progress meter (stderr, when its output is not a terminal)
  // interleaved with it would land in the middle of an event line, as it did once in CI.
  let output = '';
  let errors = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (errors += chunk));
  background.push({ child, output: () => output, errors: () => errors, block });
}

before(async () => {
  workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-readme-'));
  for (const name of [
    'package.json',
    'scripts',
    'examples',
    'node_modules',
    'dist',
    'src',
    'prisma',
    'prisma.config.ts',
    'tsconfig.json',
    'tsconfig.build.json',
    'package-lock.json',
  ]) {
    if (fs.existsSync(path.join(PROJECT_ROOT, name)))
      fs.symlinkSync(path.join(PROJECT_ROOT, name), path.join(workdir, name));
  }
  database = await createTestDatabase();
  const wirePort = usingPostgres ? undefined : await freePort();
  service = await startServiceProcess(
    database.url
      ? { DATABASE_URL: database.url, LOG_LEVEL: 'warn' }
      : { DATA_DIR: database.dataDir, EMBEDDED_DB_PORT: String(wirePort), LOG_LEVEL: 'warn' },
  );
  const base: Record<string, string> = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (
      value !== undefined &&
      !['DATABASE_URL', 'DATA_DIR', 'PORT', 'EMBEDDED_DB_PORT', 'TEST_DATABASE_URL', 'NODE_OPTIONS'].includes(name) &&
      !name.startsWith('npm_')
    )
      base[name] = value;
  }
  env = {
    ...base,
    NODE_ENV: 'test',
    DATABASE_URL: database.url ?? `postgresql://postgres@127.0.0.1:${wirePort}/postgres`,
    PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`,
  };
});

after(async () => {
  for (const { child } of background) if (child.pid && child.exitCode === null) process.kill(-child.pid, 'SIGKILL');
  await service?.kill();
  await database?.drop();
  if (workdir) fs.rmSync(workdir, { recursive: true, force: true });
});

test('README marks the examples it shows output for, and every marked block is where a reader meets it', () => {
  const blocks = markedBlocks(fs.readFileSync(README, 'utf8'));
  assert.ok(blocks.filter((b) => b.kind === 'run').length >= 8, 'expected at least 8 examples that run');
  assert.ok(
    blocks.some((b) => b.kind === 'output of background'),
    'the subscription example is checked',
  );
  for (const [i, block] of blocks.entries()) {
    if (block.kind === 'output' || block.kind === 'stderr') {
      assert.ok(
        blocks.slice(0, i).some((b) => b.kind.startsWith('run')),
        `README.md:${block.line}: output before any run block`,
      );
    }
  }
});

test("README's shell examples print what README shows", { timeout: 600_000 }, async (t) => {
  const blocks = markedBlocks(fs.readFileSync(README, 'utf8'));
  let last: { block: Block; run: Run } | undefined;
  let skipping = false;
  let compared = 0;
  for (const block of blocks) {
    if (block.kind === 'run' || block.kind === 'run if PostgreSQL') {
      skipping = block.kind === 'run if PostgreSQL' && !usingPostgres;
      if (skipping) {
        t.diagnostic(`README.md:${block.line}: skipped (needs TEST_DATABASE_URL)`);
        continue;
      }
      const run = await bash(block.text);
      last = { block, run };
      const expectsFailure = blocks[blocks.indexOf(block) + 1]?.kind === 'stderr';
      if (!expectsFailure)
        assert.equal(
          run.code,
          0,
          `README.md:${block.line} exited ${run.code}:\n${command(block.text)}\n--- stdout\n${run.stdout.slice(-2000)}\n--- stderr\n${run.stderr.slice(-2000)}`,
        );
      else assert.notEqual(run.code, 0, `README.md:${block.line} was expected to fail`);
      if (/^\s*\{/.test(run.stdout))
        assert.doesNotMatch(
          run.stdout,
          /"errors"/,
          `README.md:${block.line} answered with errors: ${run.stdout.slice(0, 2000)}`,
        );
    } else if (block.kind === 'background') {
      startBackground(block);
      // Subscribed when the stream has opened (Yoga's first keep-alive), or after a second.
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && background.at(-1)!.output() === '' && background.at(-1)!.errors() === '')
        await new Promise((resolve) => setTimeout(resolve, 50));
      await new Promise((resolve) => setTimeout(resolve, 300));
    } else if (block.kind === 'output' || block.kind === 'stderr') {
      if (skipping) continue;
      assert.ok(last, `README.md:${block.line}: no command ran before it`);
      compare(
        block,
        block.kind === 'output' ? last.run.stdout : last.run.stderr,
        `output of README.md:${last.block.line}`,
      );
      compared++;
    } else {
      const listener = background.at(-1);
      assert.ok(listener, `README.md:${block.line}: no background command before it`);
      const wanted = events(block.text).length;
      const deadline = Date.now() + 2000;
      while (Date.now() < deadline && events(listener.output()).length < wanted)
        await new Promise((resolve) => setTimeout(resolve, 50));
      compare(
        block,
        listener.output(),
        `output of README.md:${listener.block.line} (its stderr: ${listener.errors().slice(-500)})`,
      );
      compared++;
    }
  }
  t.diagnostic(`${blocks.length} marked blocks, ${compared} outputs compared`);
  assert.ok(compared >= 8, `only ${compared} outputs compared`);
});
