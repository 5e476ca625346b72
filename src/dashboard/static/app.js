// The dashboard: every figure is asked of /graphql (metricStats, metricIngested) with the key kept for this tab, and
// drawn as it comes back. Plain browser JavaScript, no build step; uPlot is the global the vendor script defines.
(() => {
  'use strict';

  const KEY_STORAGE = 'metrics-dashboard-key';
  /** Entries the live feed keeps; older ones drop off the end. */
  const FEED_MAX = 50;
  /** Rows of the busiest-users table. */
  const TOP_USERS = 10;
  /** The live feed reconnects after a dropped stream, waiting longer each time up to this. */
  const MAX_RETRY_MS = 30_000;

  const FIGURES = `
    count distinctUsers distinctSessions talkedTime { sum p50 } microphoneUsageRate speakerUsageRate
    sentiments { value count }`;
  // Three requests, not one with aliases: each stays far inside the service's cost limit on its own.
  const TOTALS_QUERY = `query DashboardTotals($where: MetricFilter) { metricStats(where: $where) { ${FIGURES} } }`;
  // Only figures that add up, so the service may answer the buckets from its rollups (README, Rollups).
  const SERIES_QUERY = `query DashboardSeries($where: MetricFilter, $bucket: TimeBucketInput) {
    metricStats(where: $where, bucket: $bucket) { bucketStart count talkedTime { sum } microphoneUsageRate
      speakerUsageRate }
  }`;
  const USERS_QUERY = `query DashboardUsers($where: MetricFilter) {
    metricStats(where: $where, groupBy: [USER_ID]) { userId count distinctSessions talkedTime { sum avg } }
  }`;
  const LIVE_QUERY = `subscription DashboardLive($where: MetricFilter) {
    metricIngested(where: $where) { id userId sessionId timestamp talkedTime microphoneUsed speakerUsed voiceSentiment }
  }`;

  const COLORS = { talk: '#2563eb', records: '#0f766e', microphone: '#7c3aed', speaker: '#c2410c' };
  const UNIT_NAMES = { HOUR: 'hour', DAY: 'day', WEEK: 'week' };

  const $ = (id) => document.getElementById(id);
  const numberFormat = new Intl.NumberFormat();
  const percentFormat = new Intl.NumberFormat(undefined, { style: 'percent', maximumFractionDigits: 1 });

  /**
   * What the page drew, for tests and for anyone debugging it from the console: the charts (uPlot instances, whose
   * `data` is what is plotted) and the filters of the last completed load.
   */
  const dashboard = { charts: {}, loaded: null, loads: 0 };
  window.dashboard = dashboard;

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(message, code) {
      super(message);
      this.code = code;
    }
  }

  // ---- the key ------------------------------------------------------------------------------------------------

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || '';
    } catch {
      return ''; // storage refused (privacy settings): the page still works on an open service
    }
  }

  function authHeaders() {
    const key = storedKey();
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  function showKeyForm(open, reason) {
    $('key-form').hidden = !open;
    $('key-toggle').setAttribute('aria-expanded', String(open));
    if (reason) setStatus(reason);
    if (open) $('key').focus();
  }

  // ---- GraphQL over HTTP ----------------------------------------------------------------------------------------

  /** One operation as a JSON POST (CSRF prevention lets those through without a special header). */
  async function graphql(query, variables) {
    const response = await fetch('/graphql', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        ...authHeaders(),
      },
      body: JSON.stringify({ query, variables }),
    });
    let body;
    try {
      body = await response.json();
    } catch {
      throw new ApiError(`The service answered HTTP ${response.status} without a GraphQL result.`);
    }
    const errors = Array.isArray(body.errors) ? body.errors : [];
    if (response.status === 401 || errors.some((e) => e.extensions && e.extensions.code === 'UNAUTHENTICATED')) {
      throw new AuthError(errors[0] ? errors[0].message : 'This service needs an API key.');
    }
    if (errors.length > 0) {
      const first = errors[0];
      throw new ApiError(first.message, first.extensions?.code);
    }
    return body.data;
  }

  // ---- time zones and days ------------------------------------------------------------------------------------

  const partFormats = new Map();
  function partsIn(zone, ms) {
    let format = partFormats.get(zone);
    if (!format) {
      format = new Intl.DateTimeFormat('en-US', {
        timeZone: zone,
        hourCycle: 'h23',
        year: 'numeric',
        month: '2-digit',
        day: '2-digit',
        hour: '2-digit',
        minute: '2-digit',
        second: '2-digit',
      });
      partFormats.set(zone, format);
    }
    const parts = {};
    for (const part of format.formatToParts(new Date(ms))) parts[part.type] = Number(part.value);
    return parts;
  }

  /** The zone's offset from UTC at an instant, in milliseconds. */
  function offsetMs(zone, ms) {
    const p = partsIn(zone, ms);
    return Date.UTC(p.year, p.month - 1, p.day, p.hour % 24, p.minute, p.second) - Math.floor(ms / 1000) * 1000;
  }

  /** The instant (unix seconds) a local day ("2026-03-29") starts in the zone. */
  function dayStart(day, zone) {
    const [y, m, d] = day.split('-').map(Number);
    const wall = Date.UTC(y, m - 1, d);
    // Twice: the offset at the first guess may differ from the offset at the answer across a change.
    const guess = wall - offsetMs(zone, wall);
    return (wall - offsetMs(zone, guess)) / 1000;
  }

  function addDays(day, days) {
    const [y, m, d] = day.split('-').map(Number);
    return new Date(Date.UTC(y, m - 1, d + days)).toISOString().slice(0, 10);
  }

  function todayIn(zone) {
    const p = partsIn(zone, Date.now());
    return `${p.year}-${String(p.month).padStart(2, '0')}-${String(p.day).padStart(2, '0')}`;
  }

  function validZone(zone) {
    try {
      new Intl.DateTimeFormat('en-US', { timeZone: zone });
      return true;
    } catch {
      return false;
    }
  }

  function zoneList() {
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    return zones.includes('UTC') ? zones : ['UTC', ...zones];
  }

  // ---- formatting ---------------------------------------------------------------------------------------------

  function formatDuration(seconds) {
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
    const h = Math.floor(s / 3600);
    return `${numberFormat.format(h)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }

  /** Talk-time axis steps in whole seconds, minutes and hours (uPlot's decimal steps would give "17m, 33m"). */
  const DURATION_STEPS = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 432000, 864000,
  ];

  /** Axis labels for talk time: one unit for the whole axis, chosen by its largest value. */
  function durationTicks(splits) {
    const max = Math.max(0, ...splits.map(Math.abs));
    if (max >= 7200) return splits.map((v) => `${numberFormat.format(Math.round((v / 3600) * 10) / 10)}h`);
    if (max >= 120) return splits.map((v) => `${numberFormat.format(Math.round(v / 60))}m`);
    return splits.map((v) => `${numberFormat.format(v)}s`);
  }

  function bucketLabel(seconds, unit, zone) {
    const options =
      unit === 'HOUR'
        ? {
            weekday: 'short',
            day: 'numeric',
            month: 'short',
            hour: '2-digit',
            minute: '2-digit',
            timeZoneName: 'short',
          }
        : { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' };
    const text = new Intl.DateTimeFormat(undefined, { timeZone: zone, ...options }).format(new Date(seconds * 1000));
    return unit === 'WEEK' ? `week of ${text}` : text;
  }

  function timeLabel(seconds, zone) {
    return new Intl.DateTimeFormat(undefined, {
      timeZone: zone,
      day: 'numeric',
      month: 'short',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
    }).format(new Date(seconds * 1000));
  }

  // ---- filters ------------------------------------------------------------------------------------------------

  /** The filters as the URL carries them (so a view can be bookmarked), with defaults: the last 7 days here. */
  function filtersFromUrl() {
    const params = new URLSearchParams(location.search);
    const browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    const zone = params.get('zone') || browserZone;
    const to = params.get('to') || todayIn(validZone(zone) ? zone : 'UTC');
    const unit = UNIT_NAMES[params.get('unit')] ? params.get('unit') : 'HOUR';
    return { from: params.get('from') || addDays(to, -6), to, zone, unit, user: params.get('user') || '' };
  }

  function writeForm(filters) {
    $('from').value = filters.from;
    $('to').value = filters.to;
    $('zone').value = filters.zone;
    $('unit').value = filters.unit;
    $('user').value = filters.user;
  }

  function readForm() {
    return {
      from: $('from').value,
      to: $('to').value,
      zone: $('zone').value.trim(),
      unit: $('unit').value,
      user: $('user').value.trim(),
    };
  }

  /** The MetricFilter for the filters: the local days from..to in the zone (to included), and the user. */
  function whereOf(filters) {
    const where = {
      timestamp: { gte: dayStart(filters.from, filters.zone), lt: dayStart(addDays(filters.to, 1), filters.zone) },
    };
    if (filters.user) where.userId = { equals: filters.user };
    return where;
  }

  function problemWith(filters) {
    if (!/^\d{4}-\d{2}-\d{2}$/.test(filters.from) || !/^\d{4}-\d{2}-\d{2}$/.test(filters.to))
      return 'Choose both days of the range.';
    if (filters.from > filters.to)
      return 'The range ends before it starts: choose a "to" day on or after the "from" day.';
    if (!validZone(filters.zone))
      return `"${filters.zone}" is not a time zone this browser knows; use a tz-database name such as Europe/Berlin.`;
    return null;
  }

  // ---- status and errors --------------------------------------------------------------------------------------

  function setStatus(text) {
    $('status').textContent = text;
  }

  function showError(text) {
    $('error').textContent = text || '';
    $('error').hidden = !text;
  }

  // ---- charts -------------------------------------------------------------------------------------------------

  function chartWidth(element) {
    return Math.max(260, Math.floor(element.clientWidth));
  }

  function chartHeight() {
    return window.matchMedia('(max-width: 640px)').matches ? 200 : 240;
  }

  function makeChart(id, filters, series, data, yAxis) {
    const element = $(id);
    if (dashboard.charts[id]) dashboard.charts[id].destroy();
    element.textContent = '';
    const zone = filters.zone;
    const options = {
      width: chartWidth(element),
      height: chartHeight(),
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), zone),
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: yAxis.range ? { range: yAxis.range } : {} },
      series: [
        { label: 'Starts', value: (_u, v) => (v == null ? '–' : bucketLabel(v, filters.unit, zone)) },
        ...series,
      ],
      axes: [
        { stroke: '#475569', grid: { stroke: '#e2e8f0' }, ticks: { stroke: '#cbd5e1' } },
        {
          stroke: '#475569',
          grid: { stroke: '#e2e8f0' },
          ticks: { stroke: '#cbd5e1' },
          size: 56,
          values: (_u, splits) => yAxis.ticks(splits),
          ...(yAxis.incrs ? { incrs: yAxis.incrs } : {}),
        },
      ],
    };
    const chart = new uPlot(options, data, element);
    dashboard.charts[id] = chart;
    return chart;
  }

  function bars(label, color, format) {
    return {
      label,
      stroke: color,
      fill: `${color}cc`,
      width: 1,
      paths: uPlot.paths.bars({ size: [0.8, 64] }),
      points: { show: false },
      value: (_u, v) => (v == null ? '–' : format(v)),
    };
  }

  function line(label, color) {
    return {
      label,
      stroke: color,
      width: 2,
      points: { show: true, size: 5, fill: color },
      value: (_u, v) => (v == null ? '–' : percentFormat.format(v)),
    };
  }

  function drawCharts(filters, groups) {
    const x = groups.map((g) => Date.parse(g.bucketStart) / 1000);
    const percentTicks = (splits) => splits.map((v) => percentFormat.format(v));
    makeChart(
      'chart-talk',
      filters,
      [bars('Talk time', COLORS.talk, formatDuration)],
      [x, groups.map((g) => g.talkedTime.sum)],
      {
        ticks: durationTicks,
        incrs: DURATION_STEPS,
      },
    );
    makeChart(
      'chart-records',
      filters,
      [bars('Records', COLORS.records, (v) => numberFormat.format(v))],
      [x, groups.map((g) => g.count)],
      {
        ticks: (splits) => splits.map((v) => numberFormat.format(v)),
      },
    );
    makeChart(
      'chart-usage',
      filters,
      [line('Microphone', COLORS.microphone), line('Speaker', COLORS.speaker)],
      [x, groups.map((g) => g.microphoneUsageRate), groups.map((g) => g.speakerUsageRate)],
      { ticks: percentTicks, range: [0, 1] },
    );
    for (const name of document.querySelectorAll('.unit-name')) name.textContent = UNIT_NAMES[filters.unit];
  }

  // uPlot draws at a fixed size: follow the layout (a rotated phone, a resized window).
  const resizeObserver =
    typeof ResizeObserver === 'function'
      ? new ResizeObserver((entries) => {
          for (const entry of entries) {
            const chart = dashboard.charts[entry.target.id];
            if (chart) chart.setSize({ width: chartWidth(entry.target), height: chartHeight() });
          }
        })
      : null;

  // ---- the other panels ---------------------------------------------------------------------------------------

  function cell(row, text, header) {
    const element = document.createElement(header ? 'th' : 'td');
    if (header) element.scope = 'row';
    element.textContent = text;
    row.append(element);
    return element;
  }

  function drawTotals(total) {
    const values = total
      ? {
          count: [total.count, numberFormat.format(total.count)],
          talkedSum: [total.talkedTime.sum, formatDuration(total.talkedTime.sum)],
          distinctUsers: [total.distinctUsers, numberFormat.format(total.distinctUsers)],
          distinctSessions: [total.distinctSessions, numberFormat.format(total.distinctSessions)],
          talkedP50: [total.talkedTime.p50, formatDuration(total.talkedTime.p50)],
          microphoneUsageRate: [total.microphoneUsageRate, percentFormat.format(total.microphoneUsageRate)],
          speakerUsageRate: [total.speakerUsageRate, percentFormat.format(total.speakerUsageRate)],
        }
      : {};
    for (const element of document.querySelectorAll('#totals [data-figure]')) {
      const [raw, text] = values[element.dataset.figure] || [0, total ? '–' : '0'];
      element.dataset.value = String(raw);
      element.textContent = text;
    }
  }

  function drawSentiments(total) {
    const list = $('sentiments');
    list.textContent = '';
    const sentiments = total ? total.sentiments : [];
    if (sentiments.length === 0) {
      const empty = document.createElement('li');
      empty.className = 'empty';
      empty.textContent = 'No records in this range.';
      list.append(empty);
      return;
    }
    for (const { value, count } of sentiments) {
      const item = document.createElement('li');
      item.dataset.sentiment = value === null ? '' : value;
      item.dataset.count = String(count);
      const share = count / total.count;
      const label = document.createElement('span');
      label.className = 'label';
      label.textContent = value === null ? '(none)' : value;
      const bar = document.createElement('span');
      bar.className = 'bar';
      const fill = document.createElement('span');
      fill.className = `fill sentiment-${['positive', 'neutral', 'negative'].includes(value) ? value : 'other'}`;
      fill.style.width = `${(share * 100).toFixed(2)}%`;
      bar.append(fill);
      const figure = document.createElement('span');
      figure.className = 'figure';
      figure.textContent = `${percentFormat.format(share)} · ${numberFormat.format(count)}`;
      item.append(label, bar, figure);
      list.append(item);
    }
  }

  function drawSeriesTable(filters, groups) {
    const body = $('series-table').tBodies[0];
    body.textContent = '';
    for (const g of groups) {
      const row = document.createElement('tr');
      cell(row, bucketLabel(Date.parse(g.bucketStart) / 1000, filters.unit, filters.zone), true);
      cell(row, numberFormat.format(g.count));
      cell(row, formatDuration(g.talkedTime.sum));
      cell(row, percentFormat.format(g.microphoneUsageRate));
      cell(row, percentFormat.format(g.speakerUsageRate));
      body.append(row);
    }
  }

  /** The busiest users first: most talk time, then most records, then by id (a stable order for equal figures). */
  function busiest(groups) {
    return [...groups].sort(
      (a, b) =>
        b.talkedTime.sum - a.talkedTime.sum ||
        b.count - a.count ||
        (a.userId < b.userId ? -1 : a.userId > b.userId ? 1 : 0),
    );
  }

  function drawUsers(groups, filters) {
    const body = $('users-table').tBodies[0];
    body.textContent = '';
    const top = busiest(groups).slice(0, TOP_USERS);
    if (top.length === 0) {
      const row = document.createElement('tr');
      const empty = cell(row, 'No records in this range.');
      empty.colSpan = 6;
      body.append(row);
    }
    top.forEach((g, index) => {
      const row = document.createElement('tr');
      row.dataset.user = g.userId;
      row.dataset.talked = String(g.talkedTime.sum);
      row.dataset.count = String(g.count);
      cell(row, String(index + 1));
      const userCell = document.createElement('th');
      userCell.scope = 'row';
      const choose = document.createElement('button');
      choose.type = 'button';
      choose.className = 'link';
      choose.textContent = g.userId;
      choose.setAttribute('aria-label', filters.user === g.userId ? `${g.userId} (shown)` : `Show only ${g.userId}`);
      choose.addEventListener('click', () => {
        $('user').value = g.userId;
        apply();
      });
      userCell.append(choose);
      row.append(userCell);
      cell(row, formatDuration(g.talkedTime.sum));
      cell(row, numberFormat.format(g.count));
      cell(row, numberFormat.format(g.distinctSessions));
      cell(row, formatDuration(g.talkedTime.avg));
      body.append(row);
    });
    if (!filters.user) {
      // Offered as the user filter's suggestions: the users of the last unfiltered view.
      const list = $('users');
      list.textContent = '';
      for (const g of top) {
        const option = document.createElement('option');
        option.value = g.userId;
        list.append(option);
      }
    }
  }

  // ---- loading ------------------------------------------------------------------------------------------------

  let current = filtersFromUrl();
  let loadSequence = 0;

  async function load(filters) {
    const sequence = ++loadSequence;
    const where = whereOf(filters);
    const bucket = { unit: filters.unit, timeZone: filters.zone };
    document.body.setAttribute('aria-busy', 'true');
    setStatus('Loading…');
    try {
      const [totals, series, users] = await Promise.all([
        graphql(TOTALS_QUERY, { where }),
        graphql(SERIES_QUERY, { where, bucket }),
        graphql(USERS_QUERY, { where }),
      ]);
      if (sequence !== loadSequence) return; // a newer load started meanwhile
      showError('');
      const total = totals.metricStats[0] || null;
      drawTotals(total);
      drawCharts(filters, series.metricStats);
      drawSentiments(total);
      drawSeriesTable(filters, series.metricStats);
      drawUsers(users.metricStats, filters);
      dashboard.loaded = { filters: { ...filters }, where, bucket };
      dashboard.loads += 1;
      document.body.dataset.loads = String(dashboard.loads);
      setStatus(`Updated ${new Date().toLocaleTimeString()} · ${numberFormat.format(total ? total.count : 0)} records`);
    } catch (error) {
      if (sequence !== loadSequence) return;
      if (error instanceof AuthError) {
        showKeyForm(
          true,
          storedKey() ? 'That key was refused: enter another read key.' : 'This service needs a read key.',
        );
        showError(error.message);
      } else if (error instanceof ApiError && error.code === 'TOO_MANY_GROUPS') {
        showError(`${error.message} Choose a shorter range or a longer "per" (day or week).`);
        setStatus('Not updated');
      } else {
        showError(error.message || String(error));
        setStatus('Not updated');
      }
    } finally {
      if (sequence === loadSequence) document.body.removeAttribute('aria-busy');
    }
  }

  function apply() {
    const filters = readForm();
    const problem = problemWith(filters);
    if (problem) {
      showError(problem);
      return;
    }
    const userChanged = filters.user !== current.user;
    const zoneChanged = filters.zone !== current.zone;
    current = filters;
    const params = new URLSearchParams({ from: filters.from, to: filters.to, zone: filters.zone, unit: filters.unit });
    if (filters.user) params.set('user', filters.user);
    history.replaceState(null, '', `${location.pathname}?${params}`);
    void load(filters);
    if (userChanged || zoneChanged) restartLive();
  }

  // ---- the live feed --------------------------------------------------------------------------------------------

  const live = { generation: 0, controller: null, paused: false, retryMs: 1000, timer: null };

  function setLive(state, text) {
    const element = $('live-state');
    element.dataset.state = state;
    element.textContent = text || state;
  }

  function addToFeed(record) {
    const feed = $('feed');
    const item = document.createElement('li');
    item.dataset.id = record.id;
    item.dataset.session = record.sessionId;
    const when = document.createElement('time');
    when.dateTime = new Date(record.timestamp * 1000).toISOString();
    when.textContent = timeLabel(record.timestamp, current.zone);
    const who = document.createElement('strong');
    who.textContent = record.userId;
    const what = document.createElement('span');
    const devices =
      [record.microphoneUsed ? 'mic' : null, record.speakerUsed ? 'speaker' : null].filter(Boolean).join(' + ') ||
      'no devices';
    what.textContent =
      `${formatDuration(record.talkedTime)} · ${record.voiceSentiment ?? 'no sentiment'} · ` +
      `${devices} · session ${record.sessionId}`;
    item.append(when, who, what);
    feed.prepend(item);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function stopLive() {
    live.generation += 1;
    clearTimeout(live.timer);
    if (live.controller) live.controller.abort();
    live.controller = null;
  }

  function restartLive() {
    stopLive();
    if (!live.paused) void runLive(live.generation);
  }

  function retryLive(generation) {
    if (generation !== live.generation) return;
    setLive('retrying', `reconnecting in ${Math.round(live.retryMs / 1000)} s`);
    live.timer = setTimeout(() => {
      if (generation === live.generation) void runLive(generation);
    }, live.retryMs);
    live.retryMs = Math.min(live.retryMs * 2, MAX_RETRY_MS);
  }

  /** One subscription as server-sent events over a JSON POST: EventSource cannot send the Authorization header. */
  async function runLive(generation) {
    const controller = new AbortController();
    live.controller = controller;
    setLive('connecting');
    const where = current.user ? { userId: { equals: current.user } } : null;
    try {
      const response = await fetch('/graphql', {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'text/event-stream', ...authHeaders() },
        body: JSON.stringify({ query: LIVE_QUERY, variables: { where } }),
        signal: controller.signal,
      });
      if (generation !== live.generation) return;
      if (response.status === 401) {
        setLive('key', 'needs a key');
        return; // the key form is shown by the figures' load; a new key restarts the feed
      }
      if (
        !response.ok ||
        !(response.headers.get('content-type') || '').startsWith('text/event-stream') ||
        !response.body
      ) {
        throw new Error(`HTTP ${response.status}`);
      }
      // The answer's headers come once the subscription is in place: from here on no stored record is missed.
      setLive('live');
      live.retryMs = 1000;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const lines = block.split('\n');
          const event = (lines.find((l) => l.startsWith('event:')) || '').slice(6).trim();
          const data = lines
            .filter((l) => l.startsWith('data:'))
            .map((l) => l.slice(5).trimStart())
            .join('\n');
          if (event === 'complete') break;
          if (event !== 'next' || !data) continue;
          const payload = JSON.parse(data);
          if (payload.data?.metricIngested) addToFeed(payload.data.metricIngested);
          else if (payload.errors?.[0]) setLive('error', payload.errors[0].message);
        }
      }
    } catch (_error) {
      if (controller.signal.aborted || generation !== live.generation) return;
    }
    retryLive(generation);
  }

  // ---- wiring -------------------------------------------------------------------------------------------------

  function start() {
    const zones = $('zones');
    for (const zone of zoneList()) {
      const option = document.createElement('option');
      option.value = zone;
      zones.append(option);
    }
    writeForm(current);
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      apply();
    });
    $('key-toggle').addEventListener('click', () => showKeyForm($('key-form').hidden));
    $('key-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('key').value.trim();
      if (!key) return;
      try {
        sessionStorage.setItem(KEY_STORAGE, key);
      } catch {
        showError('This browser refused to keep the key (session storage is off).');
        return;
      }
      $('key').value = '';
      showKeyForm(false);
      showError('');
      void load(current);
      restartLive();
      $('key-toggle').focus();
    });
    $('key-forget').addEventListener('click', () => {
      try {
        sessionStorage.removeItem(KEY_STORAGE);
      } catch {
        // nothing was kept
      }
      $('key').value = '';
      setStatus('Key forgotten.');
      void load(current);
      restartLive();
    });
    $('live-toggle').addEventListener('click', () => {
      live.paused = !live.paused;
      $('live-toggle').setAttribute('aria-pressed', String(live.paused));
      $('live-toggle').textContent = live.paused ? 'Resume' : 'Pause';
      if (live.paused) {
        stopLive();
        setLive('paused');
      } else restartLive();
    });
    if (resizeObserver) for (const id of ['chart-talk', 'chart-records', 'chart-usage']) resizeObserver.observe($(id));
    const problem = problemWith(current);
    if (problem) {
      showError(problem);
      setStatus('Not loaded');
      return;
    }
    void load(current);
    restartLive();
  }

  start();
})();
