/**
 * The dashboard (GET /dashboard) and GraphiQL in a real browser: Debian's Chromium, driven by playwright-core, against
 * the service on a seeded database of its own. What the page plots is read from its uPlot charts and compared with
 * metricStats answers the test asks for itself, with filters it writes itself (not the page's): same buckets, same
 * figures, in two zones. A record ingested by the test appears in the live feed; the key flow uses a real read key;
 * no page logs a console error. Every wait is for a condition, never a fixed time.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type BrowserContext, type ConsoleMessage, chromium, type Page } from 'playwright-core';
import { INGEST, nowSeconds, startTestService, type TestService } from './support/harness.js';
import { makeKey } from './support/security.js';

const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];
/** Generous: the machine is shared, and GraphiQL's first load is large. Waits end as soon as their condition holds. */
const WAIT_MS = 60_000;
/** The promise for the live feed. */
const LIVE_WITHIN_MS = 2_000;

// The seeded window: 26 March to 1 April 2026 (UTC), across Europe's change to summer time on 29 March.
const SEED_START = Date.UTC(2026, 2, 26) / 1000;
const SEED_END = Date.UTC(2026, 3, 1, 12) / 1000;
const SEED_RECORDS = 360;
const SENTIMENTS = ['positive', 'neutral', 'negative', null, 'positive', 'frustrated'];

// The page's range, 27..31 March, as instants the test computes itself: local midnights in each zone.
// Berlin: 27 March is still winter time (UTC+1), 1 April summer time (UTC+2).
const BERLIN = { zone: 'Europe/Berlin', gte: Date.UTC(2026, 2, 26, 23) / 1000, lt: Date.UTC(2026, 2, 31, 22) / 1000 };
// New York has been on summer time (UTC-4) since 8 March.
const NEW_YORK = { zone: 'America/New_York', gte: Date.UTC(2026, 2, 27, 4) / 1000, lt: Date.UTC(2026, 3, 1, 4) / 1000 };

/** A deterministic spread of records: 14 users, uneven hours, every sentiment (none included), both devices. */
function seedRecords(): Record<string, unknown>[] {
  let state = 16;
  const next = () => {
    state = (state * 1103515245 + 12345) % 2147483648;
    return state / 2147483648;
  };
  return Array.from({ length: SEED_RECORDS }, (_, i) => {
    const user = Math.floor(next() ** 2 * 14);
    return {
      eventId: `dash-${i}`,
      userId: `user-${String(user).padStart(2, '0')}`,
      sessionId: `session-${user}-${Math.floor(i / 3)}`,
      timestamp: SEED_START + Math.floor(next() * (SEED_END - SEED_START)),
      talkedTime: Math.floor(next() ** 3 * 900),
      microphoneUsed: next() < 0.85,
      speakerUsed: next() < 0.5,
      voiceSentiment: SENTIMENTS[Math.floor(next() * SENTIMENTS.length)],
    };
  });
}

interface SeriesGroup {
  bucketStart: string;
  count: number;
  talkedTime: { sum: number };
  microphoneUsageRate: number;
  speakerUsageRate: number;
}
interface UserGroup {
  userId: string;
  count: number;
  talkedTime: { sum: number };
}
interface Totals {
  count: number;
  distinctUsers: number;
  distinctSessions: number;
  talkedTime: { sum: number; p50: number };
  microphoneUsageRate: number;
  speakerUsageRate: number;
  sentiments: { value: string | null; count: number }[];
}

/** What the page shows, read from the page: the plotted arrays of each uPlot chart, the totals, the tables. */
interface Shown {
  charts: Record<string, number[][]>;
  totals: Record<string, number>;
  sentiments: { value: string; count: number }[];
  users: string[];
}

async function shown(page: Page): Promise<Shown> {
  return page.evaluate(() => {
    const w = window as Window & { dashboard?: { charts: Record<string, { data: ArrayLike<number>[] }> } };
    const charts: Record<string, number[][]> = {};
    for (const [id, chart] of Object.entries(w.dashboard?.charts ?? {}))
      charts[id] = chart.data.map((series) => Array.from(series));
    const totals: Record<string, number> = {};
    for (const element of document.querySelectorAll<HTMLElement>('#totals [data-figure]'))
      totals[element.dataset.figure!] = Number(element.dataset.value);
    const sentiments = [...document.querySelectorAll<HTMLElement>('#sentiments li[data-count]')].map((li) => ({
      value: li.dataset.sentiment!,
      count: Number(li.dataset.count),
    }));
    const users = [...document.querySelectorAll<HTMLElement>('#users-table tbody tr[data-user]')].map(
      (tr) => tr.dataset.user!,
    );
    return { charts, totals, sentiments, users };
  });
}

/** Waits until the page has finished its `count`-th load of figures. */
async function loaded(page: Page, count: number): Promise<void> {
  await page.waitForFunction((n) => document.body.dataset.loads === String(n), count, { timeout: WAIT_MS });
}

describe('dashboard in a browser', () => {
  let service: TestService;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  /** Console errors and uncaught exceptions of every page, as they happen. */
  const problems: string[] = [];
  const watch = (p: Page) => {
    p.on('console', (message: ConsoleMessage) => {
      if (message.type() === 'error') problems.push(`${p.url()}: console error: ${message.text()}`);
    });
    p.on('pageerror', (error) => problems.push(`${p.url()}: uncaught: ${error.message}`));
  };

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)`);
    service = await startTestService();
    const result = await service.gql(INGEST, { records: seedRecords() });
    assert.equal(result.ingestMetrics.accepted, SEED_RECORDS, JSON.stringify(result));
    profile = fs.mkdtempSync(path.join(os.tmpdir(), 'metrics-dashboard-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timezoneId: 'UTC',
    });
    page = context.pages()[0] ?? (await context.newPage());
    watch(page);
  });

  after(async () => {
    await context?.close();
    if (profile) fs.rmSync(profile, { recursive: true, force: true });
    await service?.stop();
  });

  /** The test's own requests: no key until the key test makes one. */
  let headers: Record<string, string> = {};
  const stats = <T>(where: Record<string, unknown>, extra: string, fields: string) =>
    service
      .gql<{ metricStats: T[] }>(
        `query ($where: MetricFilter) { metricStats(where: $where${extra}) { ${fields} } }`,
        { where },
        headers,
      )
      .then((d) => d.metricStats);
  const series = (range: typeof BERLIN, unit: string, userId?: string) =>
    stats<SeriesGroup>(
      { timestamp: { gte: range.gte, lt: range.lt }, ...(userId ? { userId: { equals: userId } } : {}) },
      `, bucket: { unit: ${unit}, timeZone: ${JSON.stringify(range.zone)} }`,
      'bucketStart count talkedTime { sum } microphoneUsageRate speakerUsageRate',
    );

  /** The page's charts hold exactly the API's groups, bucket for bucket. */
  function assertPlotted(plotted: Shown, expected: SeriesGroup[], what: string) {
    assert.ok(expected.length > 0, `${what}: the API has groups`);
    const x = expected.map((g) => Date.parse(g.bucketStart) / 1000);
    assert.deepEqual(plotted.charts['chart-talk'], [x, expected.map((g) => g.talkedTime.sum)], `${what}: talk time`);
    assert.deepEqual(plotted.charts['chart-records'], [x, expected.map((g) => g.count)], `${what}: records`);
    assert.deepEqual(
      plotted.charts['chart-usage'],
      [x, expected.map((g) => g.microphoneUsageRate), expected.map((g) => g.speakerUsageRate)],
      `${what}: microphone and speaker`,
    );
  }

  test('GraphiQL runs its example operations, Ingest then Recent, through its own UI', async () => {
    const run = async (operation: string) => {
      const answer = page.waitForResponse(
        (response) =>
          response.url().endsWith('/graphql') &&
          response.request().method() === 'POST' &&
          (response.request().postData() ?? '').includes(`"operationName":"${operation}"`),
        { timeout: WAIT_MS },
      );
      await page.click('.graphiql-execute-button');
      await page.getByRole('menuitem', { name: operation, exact: true }).click();
      const response = await answer;
      assert.equal(response.status(), 200);
      // biome-ignore lint/suspicious/noExplicitAny: answers are read by path; a wrong path fails the assertion.
      return (await response.json()) as { data?: Record<string, any>; errors?: unknown[] };
    };
    await page.goto(`${service.url}/graphql`);
    await page.waitForSelector('.graphiql-execute-button', { timeout: WAIT_MS });

    const ingest = await run('Ingest');
    assert.equal(ingest.errors, undefined, JSON.stringify(ingest));
    assert.deepEqual(ingest.data, { ingestMetrics: { accepted: 2, duplicates: 0, rejected: [] } });
    await page.waitForFunction(
      () => /"accepted":\s*2/.test(document.querySelector('.result-window')?.textContent ?? ''),
      null,
      { timeout: WAIT_MS },
    );

    const recent = await run('Recent');
    assert.equal(recent.errors, undefined, JSON.stringify(recent));
    assert.equal(recent.data?.metrics.totalCount, 2);
    assert.deepEqual(
      recent.data?.metrics.edges.map((e: { node: { userId: string; sessionId: string; talkedTime: number } }) => [
        e.node.userId,
        e.node.sessionId,
        e.node.talkedTime,
      ]),
      [
        ['bob', 's-2', 45],
        ['alice', 's-1', 120],
      ],
    );
    await page.waitForFunction(
      () => /"totalCount":\s*2/.test(document.querySelector('.result-window')?.textContent ?? ''),
      null,
      { timeout: WAIT_MS },
    );
    assert.deepEqual(problems, []);
  });

  test('the page is served compressed and cached, from the service alone', async () => {
    const html = await fetch(`${service.url}/dashboard`, { headers: { 'accept-encoding': 'gzip' } });
    assert.equal(html.status, 200);
    assert.equal(html.headers.get('content-type'), 'text/html; charset=utf-8');
    assert.equal(html.headers.get('cache-control'), 'no-cache');
    const text = await html.text();
    const assets = [...text.matchAll(/(?:src|href)="(\/dashboard\/[^"]+)"/g)].map((m) => m[1]!);
    assert.equal(assets.length, 4, text);
    for (const asset of assets) {
      assert.match(asset, /\?v=[\w-]{16}$/);
      const response = await fetch(`${service.url}${asset}`, { headers: { 'accept-encoding': 'gzip, deflate' } });
      assert.equal(response.status, 200, asset);
      assert.equal(response.headers.get('content-encoding'), 'gzip', asset);
      assert.equal(response.headers.get('cache-control'), 'public, max-age=31536000, immutable', asset);
      const again = await fetch(`${service.url}${asset}`, {
        headers: { 'accept-encoding': 'gzip', 'if-none-match': response.headers.get('etag')! },
      });
      assert.equal(again.status, 304, asset);
    }
    assert.equal((await fetch(`${service.url}/dashboard/nothing.js`)).status, 404);
    // No address outside the service: the page works offline.
    assert.doesNotMatch(text, /https?:\/\//);
  });

  test('the charts plot what metricStats answers for the same filters; a new zone re-buckets as the API does', async () => {
    await page.goto(`${service.url}/dashboard?from=2026-03-27&to=2026-03-31&zone=Europe/Berlin&unit=HOUR`);
    await loaded(page, 1);
    const where = { timestamp: { gte: BERLIN.gte, lt: BERLIN.lt } };
    const hours = await series(BERLIN, 'HOUR');
    const first = await shown(page);
    assertPlotted(first, hours, 'Berlin, per hour');

    const [totals] = await stats<Totals>(
      where,
      '',
      'count distinctUsers distinctSessions talkedTime { sum p50 } microphoneUsageRate speakerUsageRate sentiments { value count }',
    );
    assert.ok(totals && totals.count < SEED_RECORDS, 'the range leaves some seeded records out');
    assert.deepEqual(first.totals, {
      count: totals.count,
      talkedSum: totals.talkedTime.sum,
      distinctUsers: totals.distinctUsers,
      distinctSessions: totals.distinctSessions,
      talkedP50: totals.talkedTime.p50,
      microphoneUsageRate: totals.microphoneUsageRate,
      speakerUsageRate: totals.speakerUsageRate,
    });
    assert.deepEqual(
      first.sentiments,
      totals.sentiments.map((s) => ({ value: s.value ?? '', count: s.count })),
    );
    const users = await stats<UserGroup>(where, ', groupBy: [USER_ID]', 'userId count talkedTime { sum }');
    const busiest = [...users].sort(
      (a, b) => b.talkedTime.sum - a.talkedTime.sum || b.count - a.count || (a.userId < b.userId ? -1 : 1),
    );
    assert.deepEqual(
      first.users,
      busiest.slice(0, 10).map((u) => u.userId),
    );

    // The filters in their focus order, then changed with the keyboard: per day, then the zone.
    // (A date field takes a Tab for each of its parts: only the changes of element count.)
    await page.focus('#from');
    const order = ['from'];
    for (let i = 0; i < 20 && order.at(-1) !== 'apply'; i++) {
      await page.keyboard.press('Tab');
      const id = await page.evaluate(() => document.activeElement?.id ?? '');
      if (id !== order.at(-1)) order.push(id);
    }
    assert.deepEqual(order, ['from', 'to', 'zone', 'unit', 'user', 'apply']);
    await page.selectOption('#unit', 'DAY');
    await page.focus('#apply');
    await page.keyboard.press('Enter');
    await loaded(page, 2);
    const berlinDays = await series(BERLIN, 'DAY');
    const second = await shown(page);
    assertPlotted(second, berlinDays, 'Berlin, per day');
    // 29 March is a 23-hour day in Berlin: its bucket starts at 23:00 UTC, the next one at 22:00 UTC.
    assert.ok(second.charts['chart-talk']![0]!.includes(Date.UTC(2026, 2, 29, 22) / 1000));

    await page.fill('#zone', NEW_YORK.zone);
    await page.focus('#zone');
    await page.keyboard.press('Enter');
    await loaded(page, 3);
    const third = await shown(page);
    assertPlotted(third, await series(NEW_YORK, 'DAY'), 'New York, per day');
    assert.notDeepEqual(
      third.charts['chart-talk']![0],
      second.charts['chart-talk']![0],
      'the buckets moved with the zone',
    );
    assert.match(page.url(), /zone=America%2FNew_York/);

    // Choosing a user in the table filters every figure by them; clearing the field shows everyone again.
    const chosen = third.users[0]!;
    await page.getByRole('button', { name: `Show only ${chosen}` }).press('Enter');
    await loaded(page, 4);
    const own = await shown(page);
    assertPlotted(own, await series(NEW_YORK, 'DAY', chosen), `New York, per day, ${chosen} only`);
    assert.deepEqual(own.users, [chosen]);
    await page.fill('#user', '');
    await page.focus('#user');
    await page.keyboard.press('Enter');
    await loaded(page, 5);
    assertPlotted(await shown(page), await series(NEW_YORK, 'DAY'), 'New York, per day, everyone again');
    assert.deepEqual(problems, []);
  });

  test('a record ingested by another client appears in the live feed within 2 s', async () => {
    await page.waitForFunction(() => document.getElementById('live-state')?.dataset.state === 'live', null, {
      timeout: WAIT_MS,
    });
    const sessionId = `live-${Date.now()}`;
    const result = await service.gql(INGEST, {
      records: [
        {
          userId: 'live-caller',
          sessionId,
          timestamp: nowSeconds() - 30,
          talkedTime: 75,
          microphoneUsed: true,
          speakerUsed: false,
          voiceSentiment: 'positive',
        },
      ],
    });
    assert.equal(result.ingestMetrics.accepted, 1);
    const stored = Date.now();
    const item = await page.waitForSelector(`#feed li[data-session="${sessionId}"]`, { timeout: WAIT_MS });
    const elapsed = Date.now() - stored;
    assert.ok(elapsed <= LIVE_WITHIN_MS, `the record appeared ${elapsed} ms after it was stored`);
    const text = (await item.textContent()) ?? '';
    assert.match(text, /live-caller/);
    assert.match(text, /1m 15s · positive · mic/);
    assert.deepEqual(problems, []);
  });

  test("with keys required, a read key entered once is used for this tab's requests", async () => {
    // The first key turns authentication on (AUTH=auto): from now on the page needs one.
    const { key, headers: keyHeaders } = await makeKey(['read'], 'dashboard test');
    headers = keyHeaders;
    await page.reload();
    await page.waitForSelector('#key-form:not([hidden])', { timeout: WAIT_MS });
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'key', 'the key field has the focus');
    // The browser itself reports each refused request; nothing else may be logged.
    const refused = problems.splice(0);
    assert.ok(refused.length > 0 && refused.every((p) => /status of 401/.test(p)), refused.join('\n'));

    await page.keyboard.type(key);
    await page.keyboard.press('Enter');
    await loaded(page, 1);
    await page.waitForFunction(() => document.getElementById('live-state')?.dataset.state === 'live', null, {
      timeout: WAIT_MS,
    });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('metrics-dashboard-key')), key);
    assertPlotted(await shown(page), await series(NEW_YORK, 'DAY'), 'New York, per day, with the key');

    // Kept for the tab's session: a reload needs no key again.
    await page.reload();
    await loaded(page, 1);
    assert.equal(await page.isHidden('#key-form'), true);
    assert.deepEqual(problems, []);
  });
});
