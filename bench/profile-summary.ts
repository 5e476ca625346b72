/**
 * Summarises a V8 CPU profile (node --cpu-prof, or `npm run bench -- --profile`): where the service's time goes, by
 * package and by function, self and total (inclusive) time.
 *
 *   npx tsx bench/profile-summary.ts bench-results/profiles/CPU.*.cpuprofile [--top 40] [--match text] [--skip-seconds 5]
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    top: { type: 'string', default: '35' },
    match: { type: 'string', multiple: true },
    /** Leave out the first seconds of the profile (the service's start-up: module loading, migrations). */
    'skip-seconds': { type: 'string', default: '0' },
  },
});
if (positionals.length === 0) {
  process.stderr.write('usage: tsx bench/profile-summary.ts <file.cpuprofile> [--top N] [--match text]...\n');
  process.exit(2);
}

function packageOf(url: string): string {
  if (url === '') return '(native/V8)';
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? url);
  }
  if (url.startsWith('node:')) return url;
  const src = url.indexOf('/dist/');
  if (src >= 0) return `service ${url.slice(src + 1)}`;
  const s = url.indexOf('/src/');
  return s >= 0 ? `service ${url.slice(s + 1)}` : url;
}

for (const file of positionals) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
  // Samples of the skipped start-up count as zero time.
  const skipUs = Number(values['skip-seconds']) * 1e6;
  let clock = 0;
  profile.timeDeltas = profile.timeDeltas.map((delta) => {
    clock += delta;
    return clock <= skipUs ? 0 : delta;
  });
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Self time per node from the samples and their time deltas (microseconds).
  const self = new Map<number, number>();
  for (const [i, id] of profile.samples.entries()) self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const idle = profile.nodes
    .filter((n) => n.callFrame.functionName === '(idle)')
    .reduce((a, n) => a + (self.get(n.id) ?? 0), 0);
  const busy = total - idle;

  const selfBy = (key: (n: ProfileNode) => string) => {
    const acc = new Map<string, number>();
    for (const [id, us] of self) {
      const n = byId.get(id) as ProfileNode;
      if (n.callFrame.functionName === '(idle)') continue;
      const k = key(n);
      acc.set(k, (acc.get(k) ?? 0) + us);
    }
    return [...acc.entries()].sort((a, b) => b[1] - a[1]);
  };
  // Inclusive time per function: each sample counts once for every distinct function on its stack.
  const inclusive = new Map<string, number>();
  profile.samples.forEach((id, i) => {
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur) as ProfileNode;
      const k = `${n.callFrame.functionName || '(anonymous)'}  ${packageOf(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
      if (!seen.has(k)) {
        seen.add(k);
        inclusive.set(k, (inclusive.get(k) ?? 0) + (profile.timeDeltas[i] ?? 0));
      }
    }
  });

  const pct = (us: number) => `${((us / busy) * 100).toFixed(1).padStart(5)}%`;
  const top = Number(values.top);
  process.stdout.write(
    `\n${file}\n  wall ${(total / 1e6).toFixed(1)} s, busy (not idle) ${(busy / 1e6).toFixed(1)} s; percentages are of busy time\n`,
  );
  process.stdout.write('\n  self time by package\n');
  for (const [k, us] of selfBy((n) => packageOf(n.callFrame.url)).slice(0, 20))
    process.stdout.write(`  ${pct(us)}  ${k}\n`);
  process.stdout.write('\n  self time by function\n');
  for (const [k, us] of selfBy(
    (n) => `${n.callFrame.functionName || '(anonymous)'}  ${packageOf(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`,
  ).slice(0, top)) {
    process.stdout.write(`  ${pct(us)}  ${k}\n`);
  }
  const matches = values.match ?? [];
  const inclusiveRows = [...inclusive.entries()]
    .filter(([k]) => (matches.length === 0 ? true : matches.some((m) => k.includes(m))))
    .sort((a, b) => b[1] - a[1])
    .slice(0, top);
  process.stdout.write(
    `\n  total (inclusive) time${matches.length ? ` of functions matching ${matches.join(', ')}` : ''}\n`,
  );
  for (const [k, us] of inclusiveRows) process.stdout.write(`  ${pct(us)}  ${k}\n`);
}
