/**
 * The facts about this repository that the Docker files must agree with: package.json, the build's tsconfig,
 * prisma.config.ts and src/config.ts, each read the way its own tool reads it.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import prismaConfig from '../../../prisma.config.js';
import { type Config, loadConfig } from '../../../src/config.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const read = (file: string): string => fs.readFileSync(path.join(ROOT, file), 'utf8');
export const exists = (file: string): boolean => fs.existsSync(path.join(ROOT, file));
export const isDir = (file: string): boolean => exists(file) && fs.statSync(path.join(ROOT, file)).isDirectory();
/** A path relative to the repository, with forward slashes, as the Dockerfile writes it. */
const repoPath = (file: string | undefined) =>
  path
    .relative(ROOT, file ?? ROOT)
    .split(path.sep)
    .join('/') || '.';

export interface PackageJson {
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  engines?: { node?: string };
  bin?: Record<string, string>;
}
export const pkg = JSON.parse(read('package.json')) as PackageJson;

/** A tsconfig file as tsc reads it, `extends` followed. */
function tsconfig(file: string): ts.ParsedCommandLine {
  const parsed = ts.getParsedCommandLineOfConfigFile(
    path.join(ROOT, file),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) =>
        assert.fail(`${file}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`),
    },
  );
  assert.ok(parsed, `cannot read ${file}`);
  return parsed;
}
const buildTsconfig = tsconfig('tsconfig.build.json');
/** Where the build compiles from and to (`src`, `dist`). */
export const ROOT_DIR = repoPath(buildTsconfig.options.rootDir);
export const OUT_DIR = repoPath(buildTsconfig.options.outDir);

/** A tsconfig file and the ones it extends. */
export function tsconfigChain(file: string): string[] {
  const source = tsconfig(file).options.configFile as ts.TsConfigSourceFile | undefined;
  return [file, ...(source?.extendedSourceFiles ?? []).map(repoPath)];
}

/** `dist/cli/migrate.js` -> `src/cli/migrate.ts` (whichever source extension exists), or undefined. */
export function sourceOf(distFile: string): string | undefined {
  const rel = path.posix.relative(OUT_DIR, path.posix.normalize(distFile));
  if (rel.startsWith('..')) return undefined;
  const base = path.posix.join(ROOT_DIR, rel).replace(/\.(m|c)?js$/, '');
  return ['.ts', '.mts', '.cts', '.tsx', '.js', '.mjs'].map((ext) => base + ext).find(exists);
}

/** The text of an npm script with `npm run X` expanded recursively. */
export function expandScript(name: string, depth = 0): string {
  const text = pkg.scripts[name];
  assert.ok(text !== undefined, `package.json has no ${name} script`);
  assert.ok(depth < 10, 'npm scripts call each other in a loop');
  return text.replace(/\bnpm run (\S+)/g, (_, inner: string) => expandScript(inner, depth + 1));
}

/** Repository files named in a command line (`scripts/prisma.mjs`, `tsconfig.build.json`). */
export function filesNamedIn(text: string): string[] {
  return [...new Set(text.split(/\s+/).filter((w) => /[./]/.test(w) && !w.startsWith('-') && exists(w) && !isDir(w)))];
}

/** prisma.config.ts and the schema it names, as the Prisma CLI reads them. */
export function prismaInputs(): string[] {
  const schema = prismaConfig.schema;
  assert.ok(schema && exists(schema), 'prisma.config.ts names no schema file that exists');
  return ['prisma.config.ts', schema];
}

/**
 * What src/config.ts makes of an environment, and the variables it reads doing so: the service's own reading, so
 * that a value it would refuse fails here with its message.
 */
export function configFor(where: string, env: Record<string, string>): { config: Config; reads: Set<string> } {
  const reads = new Set<string>();
  const watched = new Proxy(env, {
    get(target, key) {
      if (typeof key !== 'string') return undefined;
      reads.add(key);
      return target[key];
    },
  });
  try {
    return { config: loadConfig(watched), reads };
  } catch (error) {
    return assert.fail(`${where}: src/config.ts refuses this environment: ${(error as Error).message}`);
  }
}
