/**
 * Prisma Studio (`npm run studio`) in a real browser shows user_metrics, the partitioned table Prisma models, as one
 * table with its rows, and not its partitions: Studio itself lists ordinary tables and views only (src/cli/studio.ts).
 * Every wait is for a condition, never a fixed time.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { openDatabase } from '../src/db/client.js';
import { migrate } from '../src/db/migrations.js';
import { createTestDatabase, nowSeconds, type TestDatabase } from './support/harness.js';
import { PROJECT_ROOT, SCRUBBED } from './support/process.js';

const WAIT_MS = 60_000;
const DAY = 86_400;
let target: TestDatabase;
let studio: ChildProcess | undefined;
let studioUrl = '';

before(async () => {
  target = await createTestDatabase();
  const db = await openDatabase({ url: target.url, dataDir: target.dataDir, poolMax: 1 });
  try {
    await migrate(db);
    // Two records in two partitions (days apart), written as plain SQL writes them: partitions first.
    const now = nowSeconds();
    await db.queryDirect('SELECT metric_partitions_ensure($1::int8[], 86400::int8)', [[now - 60, now - 3 * DAY]]);
    await db.queryDirect(
      `INSERT INTO user_metrics (record_key, user_id, session_id, "timestamp", talked_time, microphone_used,
         speaker_used, voice_sentiment)
       VALUES ('\\x01', 'studio-user', 'studio-session-today', $1, 42, true, false, 'positive'),
              ('\\x02', 'studio-user', 'studio-session-earlier', $2, 7, false, true, NULL)`,
      [now - 60, now - 3 * DAY],
    );
  } finally {
    await db.close();
  }
  const env: Record<string, string | undefined> = { ...process.env };
  for (const name of SCRUBBED) delete env[name];
  if (target.url) env.DATABASE_URL = target.url;
  else env.DATA_DIR = target.dataDir;
  const port = await new Promise<number>((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port: free } = server.address() as net.AddressInfo;
      server.close(() => resolve(free));
    });
    server.on('error', reject);
  });
  studio = spawn(process.execPath, ['--import', 'tsx', 'src/cli/studio.ts', '--port', String(port)], {
    cwd: PROJECT_ROOT,
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  studioUrl = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Studio did not start:\n${stderr}`)), WAIT_MS);
    studio?.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
      const running = /running at (http:\/\/\S+)/.exec(stderr);
      if (running?.[1]) {
        clearTimeout(timer);
        resolve(running[1]);
      }
    });
    studio?.on('exit', (code) => reject(new Error(`Studio exited (${code}):\n${stderr}`)));
  });
});

after(async () => {
  if (studio && studio.exitCode === null) {
    const exited = new Promise((resolve) => studio?.once('exit', resolve));
    studio.kill('SIGTERM');
    await exited;
  }
  await target?.drop();
});

test('Studio lists user_metrics as one table, not its partitions, and shows its rows', async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(studioUrl);
    const table = page.getByText('user_metrics', { exact: true });
    await table.first().waitFor({ timeout: WAIT_MS });
    const listed = await page.getByText(/^user_metrics_p\d{8}/).count();
    assert.equal(listed, 0, 'no partition is listed');
    await table.first().click();
    // Both rows, from both partitions, in the one table.
    await page.getByText('studio-session-today').first().waitFor({ timeout: WAIT_MS });
    await page.getByText('studio-session-earlier').first().waitFor({ timeout: WAIT_MS });
    await page.screenshot({ path: path.join(os.tmpdir(), 'metrics-studio.png') });
  } finally {
    await browser.close();
  }
});
