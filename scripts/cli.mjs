#!/usr/bin/env node
// What the npm scripts of the tools run (`npm run keys -- list` = `node scripts/cli.mjs keys list`): the compiled
// entry point dist/cli/main.js when it is built from the current sources (and always in the Docker image, which has
// no sources); in a checkout whose sources changed since the last build, the same entry point from src/ through tsx,
// so that a tool never waits for a build. Either way the command runs in this process: signals and exit codes are its own.
import { distIsCurrent } from './build.mjs';

const tsx = distIsCurrent() ? undefined : await import('tsx/esm/api').catch(() => undefined);
if (tsx) {
  tsx.register();
  await import('../src/cli/main.ts');
} else {
  await import('../dist/cli/main.js');
}
