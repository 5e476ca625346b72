#!/usr/bin/env node
// The heavy versions of the fault tests (npm run test:stress): a bigger set check (8 clients x 25,000 records, four
// PostgreSQL restarts), fuzzing with ten times the runs, and the fault tests. Each size can be overridden by setting
// its variable (see the head of each test file). Arguments narrow it to some files, as with npm test.
import { spawnSync } from 'node:child_process';

const defaults = {
  SET_CHECK_CLIENTS: '8',
  SET_CHECK_RECORDS: '25000',
  SET_CHECK_BATCH: '500',
  SET_CHECK_RESTARTS: '4',
  SET_CHECK_PACE_MS: '0',
  SET_CHECK_DEADLINE_MS: '600000',
  FUZZ_SCALE: '10',
  FUZZ_RANDOM: '1',
};
const env = { ...process.env };
for (const [name, value] of Object.entries(defaults)) env[name] ??= value;
const requested = process.argv.slice(2);
const files = requested.length > 0 ? requested : ['test/set-check.test.ts', 'test/faults.test.ts', 'test/fuzz.test.ts'];
console.log(
  `Stress run: ${Object.keys(defaults)
    .map((name) => `${name}=${env[name]}`)
    .join(' ')}`,
);
const result = spawnSync(process.execPath, ['scripts/run-tests.mjs', ...files], { stdio: 'inherit', env });
process.exit(result.status ?? 1);
