/**
 * Keeps Dockerfile, .dockerignore, docker-compose.yml and docker/pgadmin/ consistent with the project they package:
 * the npm scripts and compiled entry points they call exist, the files the build needs are copied in time and not
 * excluded, the environment they set is configuration src/config.ts reads, ports, paths and credentials agree, and
 * what runs in the image needs production dependencies only. No Docker engine is needed: the files are parsed.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { parse as parseYaml } from 'yaml';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const read = (file: string): string => fs.readFileSync(path.join(ROOT, file), 'utf8');
const exists = (file: string): boolean => fs.existsSync(path.join(ROOT, file));
const isDir = (file: string): boolean => exists(file) && fs.statSync(path.join(ROOT, file)).isDirectory();

type Json = Record<string, unknown>;
const asObject = (value: unknown, what: string): Json => {
  assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), `${what} must be a mapping`);
  return value as Json;
};

// ---------------------------------------------------------------------------------------------------------------
// Dockerfile parsing (the subset of the syntax a Dockerfile may use; an unknown form fails loudly)
// ---------------------------------------------------------------------------------------------------------------

interface Instruction {
  keyword: string;
  /** Text after the keyword, continuation lines joined. */
  args: string;
  line: number;
}

interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

interface Dockerfile {
  globalArgs: Map<string, string>;
  stages: Stage[];
}

function parseDockerfile(text: string): Dockerfile {
  const instructions: Instruction[] = [];
  const lines = text.split('\n');
  let current: { text: string; line: number } | undefined;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    const trimmed = raw.trim();
    if (trimmed.startsWith('#') || (trimmed === '' && current === undefined)) continue; // comments (inside continuations too)
    const continued = /\\\s*$/.test(raw);
    const piece = continued ? raw.replace(/\\\s*$/, '') : raw;
    if (current) current.text += ` ${piece.trim()}`;
    else current = { text: piece.trim(), line: i + 1 };
    if (!continued) {
      const match = /^(\S+)\s*(.*)$/s.exec(current.text);
      assert.ok(match, `Dockerfile line ${current.line}: cannot parse`);
      instructions.push({ keyword: (match[1] ?? '').toUpperCase(), args: (match[2] ?? '').trim(), line: current.line });
      current = undefined;
    }
  }
  assert.equal(current, undefined, 'Dockerfile ends inside a line continuation');

  const globalArgs = new Map<string, string>();
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const parts = ins.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      const image = substitute(parts[0] ?? '', globalArgs);
      const name = parts[1]?.toUpperCase() === 'AS' ? parts[2] : undefined;
      stages.push({ image, name, instructions: [] });
    } else if (stages.length === 0) {
      assert.equal(ins.keyword, 'ARG', `Dockerfile line ${ins.line}: only ARG may come before the first FROM`);
      const [key, value] = splitOnce(ins.args, '=');
      globalArgs.set(key, unquote(value ?? ''));
    } else {
      stages.at(-1)?.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

function splitOnce(text: string, separator: string): [string, string | undefined] {
  const at = text.indexOf(separator);
  return at < 0 ? [text, undefined] : [text.slice(0, at), text.slice(at + separator.length)];
}

function unquote(value: string): string {
  return /^(["']).*\1$/s.test(value) ? value.slice(1, -1) : value;
}

function substitute(text: string, vars: Map<string, string>): string {
  return text.replace(/\$\{(\w+)\}|\$(\w+)/g, (whole, braced?: string, bare?: string) => vars.get(braced ?? bare ?? '') ?? whole);
}

/** `["a", "b"]` (exec form) or undefined for shell form. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(args);
  assert.ok(Array.isArray(parsed) && parsed.every((p) => typeof p === 'string'), `not a JSON array of strings: ${args}`);
  return parsed;
}

/** Splits leading `--flag=value` options from the rest. */
function splitFlags(args: string): { flags: Map<string, string>; rest: string } {
  const flags = new Map<string, string>();
  let rest = args;
  for (;;) {
    const match = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest);
    if (!match) break;
    flags.set(match[1] ?? '', match[2] ?? '');
    rest = rest.slice(match[0].length);
  }
  return { flags, rest: rest.trim() };
}

function parseEnv(args: string): Map<string, string> {
  const env = new Map<string, string>();
  const tokens = args.match(/(?:[^\s"']+|"[^"]*"|'[^']*')+/g) ?? [];
  if (tokens.length >= 1 && !(tokens[0] ?? '').includes('=')) {
    env.set(tokens[0] ?? '', tokens.slice(1).join(' ')); // legacy `ENV KEY value`
    return env;
  }
  for (const token of tokens) {
    const [key, value] = splitOnce(token, '=');
    assert.notEqual(value, undefined, `ENV ${args}: cannot parse ${token}`);
    env.set(key, unquote(value ?? ''));
  }
  return env;
}

function stageEnv(stage: Stage): Map<string, string> {
  const env = new Map<string, string>();
  for (const ins of stage.instructions) if (ins.keyword === 'ENV') for (const [k, v] of parseEnv(ins.args)) env.set(k, v);
  return env;
}

function workdirOf(stage: Stage, before = Infinity): string {
  let dir = '/';
  for (const ins of stage.instructions) {
    if (ins.line >= before) break;
    if (ins.keyword === 'WORKDIR') dir = path.posix.resolve(dir, ins.args);
  }
  return dir;
}

interface Copy {
  from: string | undefined;
  sources: string[];
  dest: string;
  line: number;
}

function copiesOf(stage: Stage): Copy[] {
  return stage.instructions
    .filter((ins) => ins.keyword === 'COPY' || ins.keyword === 'ADD')
    .map((ins) => {
      const { flags, rest } = splitFlags(ins.args);
      const parts = execForm(rest) ?? rest.split(/\s+/);
      assert.ok(parts.length >= 2, `Dockerfile line ${ins.line}: COPY needs a source and a destination`);
      return { from: flags.get('from'), sources: parts.slice(0, -1), dest: parts.at(-1) ?? '', line: ins.line };
    });
}

/** Where a file or folder of the build context lands in the image through one COPY. */
function landing(copy: Copy, source: string, workdir: string): string {
  const normalized = path.posix.normalize(source).replace(/\/$/, '');
  if (isDir(normalized) || normalized === '.') return path.posix.resolve(workdir, copy.dest);
  if (copy.dest.endsWith('/') || copy.sources.length > 1) return path.posix.resolve(workdir, copy.dest, path.posix.basename(normalized));
  return path.posix.resolve(workdir, copy.dest);
}

/** True when `file` (relative to the repository) is in the image at WORKDIR/file by the time of line `before`. */
function copiedInPlace(stage: Stage, file: string, before: number): boolean {
  const wanted = path.posix.normalize(file);
  return copiesOf(stage).some(
    (copy) =>
      copy.from === undefined &&
      copy.line < before &&
      copy.sources.some((source) => {
        const s = path.posix.normalize(source).replace(/\/$/, '');
        const covers = s === '.' || s === wanted || wanted.startsWith(`${s}/`);
        return covers && landing(copy, source, workdirOf(stage, copy.line + 1)) === path.posix.resolve(workdirOf(stage, copy.line + 1), s);
      }),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// Project facts
// ---------------------------------------------------------------------------------------------------------------

interface PackageJson {
  scripts: Record<string, string>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  engines?: { node?: string };
  bin?: Record<string, string>;
}
const pkg = JSON.parse(read('package.json')) as PackageJson;

const configSource = read('src/config.ts');
/** Every environment variable src/config.ts reads, with the literal default where it has one. */
const configVars = new Map<string, string | undefined>();
for (const match of configSource.matchAll(/\b(read|integer|boolean)\(\s*'([A-Z][A-Z0-9_]*)'\s*(?:,\s*([^,)]+))?/g)) {
  const name = match[2] ?? '';
  const fallback = match[1] === 'read' ? undefined : match[3]?.trim();
  if (!configVars.has(name) || configVars.get(name) === undefined) configVars.set(name, fallback);
}
const numericDefault = (name: string): number => {
  const raw = configVars.get(name);
  assert.ok(raw !== undefined && /^[\d_]+$/.test(raw), `src/config.ts: ${name} has no literal numeric default (found ${raw})`);
  return Number(raw.replaceAll('_', ''));
};

const buildTsconfig = JSON.parse(read('tsconfig.build.json')) as { extends?: string; compilerOptions?: { rootDir?: string; outDir?: string } };
const ROOT_DIR = path.posix.normalize(buildTsconfig.compilerOptions?.rootDir ?? '.');
const OUT_DIR = path.posix.normalize(buildTsconfig.compilerOptions?.outDir ?? '.');

/** `dist/cli/migrate.js` -> `src/cli/migrate.ts` (whichever source extension exists), or undefined. */
function sourceOf(distFile: string): string | undefined {
  const rel = path.posix.relative(OUT_DIR, path.posix.normalize(distFile));
  if (rel.startsWith('..')) return undefined;
  const base = path.posix.join(ROOT_DIR, rel).replace(/\.(m|c)?js$/, '');
  return ['.ts', '.mts', '.cts', '.tsx', '.js', '.mjs'].map((ext) => base + ext).find(exists);
}

const dockerfile = parseDockerfile(read('Dockerfile'));
const finalStage = dockerfile.stages.at(-1);
assert.ok(finalStage, 'Dockerfile has no FROM');
const runtime: Stage = finalStage;
const runtimeEnv = stageEnv(runtime);
const runtimeWorkdir = workdirOf(runtime);
const stageByName = (name: string): Stage | undefined => dockerfile.stages.find((s) => s.name === name);
const runs = (stage: Stage) => stage.instructions.filter((ins) => ins.keyword === 'RUN').map((ins) => ({ ...ins, args: splitFlags(ins.args).rest }));

function lastOf(stage: Stage, keyword: string): Instruction | undefined {
  return stage.instructions.filter((ins) => ins.keyword === keyword).at(-1);
}
const cmd = execForm(lastOf(runtime, 'CMD')?.args ?? '') ?? [];
const healthcheck = (() => {
  const ins = lastOf(runtime, 'HEALTHCHECK');
  assert.ok(ins, 'the runtime stage has no HEALTHCHECK');
  const { flags, rest } = splitFlags(ins.args);
  assert.match(rest, /^CMD\s/, 'HEALTHCHECK must be HEALTHCHECK [options] CMD ...');
  return { flags, command: execForm(rest.replace(/^CMD\s+/, '')) };
})();

const compose = asObject(parseYaml(read('docker-compose.yml')), 'docker-compose.yml');
const services = asObject(compose.services, 'services');
const service = (name: string): Json => asObject(services[name], `service ${name}`);

function environmentOf(svc: Json): Map<string, string> {
  const env = new Map<string, string>();
  const raw = svc.environment;
  if (raw === undefined) return env;
  if (Array.isArray(raw)) {
    for (const item of raw) {
      const [k, v] = splitOnce(String(item), '=');
      env.set(k, v ?? '');
    }
  } else {
    for (const [k, v] of Object.entries(asObject(raw, 'environment'))) env.set(k, v === null ? '' : String(v));
  }
  return env;
}

function commandOf(value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) return value.map(String);
  return String(value).split(/\s+/).filter(Boolean);
}

/** Compose durations: `30s`, `1m30s`, `500ms`. */
function durationMs(value: unknown): number {
  const text = String(value);
  const units: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  let total = 0;
  let rest = text;
  while (rest.length > 0) {
    const match = /^(\d+(?:\.\d+)?)(us|ms|s|m|h)/.exec(rest);
    assert.ok(match, `cannot parse duration ${text}`);
    total += Number(match[1]) * (units[match[2] ?? ''] ?? NaN);
    rest = rest.slice(match[0].length);
  }
  return total;
}

interface PortMapping {
  host: string | undefined;
  hostIp: string | undefined;
  container: string;
}
function portsOf(svc: Json): PortMapping[] {
  return ((svc.ports as unknown[] | undefined) ?? []).map((entry) => {
    if (typeof entry === 'object' && entry !== null) {
      const long = entry as Json;
      return { host: long.published?.toString(), hostIp: long.host_ip?.toString(), container: String(long.target) };
    }
    const parts = String(entry).replace(/\/(tcp|udp)$/, '').split(':');
    const container = parts.pop() ?? '';
    const host = parts.pop();
    return { host, hostIp: parts.pop(), container };
  });
}

function dependsOn(svc: Json): Map<string, string> {
  const deps = new Map<string, string>();
  const raw = svc.depends_on;
  if (Array.isArray(raw)) for (const name of raw) deps.set(String(name), 'service_started');
  else if (raw) for (const [name, spec] of Object.entries(asObject(raw, 'depends_on'))) deps.set(name, String(asObject(spec, name).condition ?? 'service_started'));
  return deps;
}

/** Compose volume entries in short syntax: `source:target[:mode]`. */
function volumesOf(svc: Json): Array<{ source: string; target: string; readOnly: boolean }> {
  return ((svc.volumes as unknown[] | undefined) ?? []).map((entry) => {
    if (typeof entry === 'object' && entry !== null) {
      const long = entry as Json;
      return { source: String(long.source ?? ''), target: String(long.target), readOnly: long.read_only === true };
    }
    const [source = '', target = '', mode = ''] = String(entry).split(':');
    return { source, target, readOnly: mode.split(',').includes('ro') };
  });
}

/** The same reading of booleans as src/config.ts. */
function configBoolean(value: string | undefined): boolean | undefined {
  const raw = value?.trim().toLowerCase();
  if (raw === undefined || raw === '') return undefined;
  if (['1', 'true', 'yes', 'on'].includes(raw)) return true;
  if (['0', 'false', 'no', 'off'].includes(raw)) return false;
  assert.fail(`${value} is not a boolean src/config.ts accepts`);
}

/** The services that run this project's image. */
const appImage = String(service('app').image ?? '');
const ownServices = Object.entries(services)
  .filter(([, svc]) => {
    const s = asObject(svc, 'service');
    return s.build !== undefined || (appImage !== '' && s.image === appImage);
  })
  .map(([name]) => name);

/** Every command line the Dockerfile and compose file run, as words. */
function allCommands(): Array<{ where: string; words: string[] }> {
  const commands: Array<{ where: string; words: string[] }> = [];
  for (const stage of dockerfile.stages) {
    for (const ins of stage.instructions) {
      if (ins.keyword === 'RUN') {
        const rest = splitFlags(ins.args).rest;
        for (const part of (execForm(rest) ?? [rest]).join(' ').split(/&&|\|\||;/)) commands.push({ where: `Dockerfile:${ins.line}`, words: part.trim().split(/\s+/) });
      }
      if (ins.keyword === 'CMD' || ins.keyword === 'ENTRYPOINT') commands.push({ where: `Dockerfile:${ins.line}`, words: execForm(ins.args) ?? ins.args.split(/\s+/) });
    }
  }
  if (healthcheck.command) commands.push({ where: 'Dockerfile HEALTHCHECK', words: healthcheck.command.slice(0, 2) });
  for (const [name, svc] of Object.entries(services)) {
    const s = asObject(svc, name);
    for (const key of ['command', 'entrypoint']) if (s[key] !== undefined) commands.push({ where: `compose ${name}.${key}`, words: commandOf(s[key]) });
  }
  return commands;
}

// ---------------------------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------------------------

test('src/config.ts parsing finds the variables this test relies on', () => {
  for (const name of ['DATABASE_URL', 'PORT', 'HOST', 'NODE_ENV', 'MIGRATE_ON_START', 'GRAPHIQL', 'SHUTDOWN_TIMEOUT_MS', 'DATA_DIR']) {
    assert.ok(configVars.has(name), `src/config.ts no longer reads ${name} (or this test cannot see it)`);
  }
});

test('every npm script the Docker files run exists in package.json', () => {
  let seen = 0;
  for (const { where, words } of allCommands()) {
    for (let i = 0; i < words.length - 1; i++) {
      if (words[i] !== 'npm') continue;
      const verb = words[i + 1] ?? '';
      if (verb === 'run' || verb === 'run-script') {
        const script = words[i + 2] ?? '';
        assert.ok(pkg.scripts[script], `${where}: npm run ${script}, but package.json has no such script`);
        seen++;
      } else if (['start', 'test', 'stop', 'restart'].includes(verb)) {
        assert.ok(pkg.scripts[verb], `${where}: npm ${verb}, but package.json has no ${verb} script`);
        seen++;
      }
    }
  }
  assert.ok(seen > 0, 'expected the build to run at least one npm script');
});

test('every `node dist/...` the Docker files run compiles from a source file in src/', () => {
  const found: string[] = [];
  for (const { where, words } of allCommands()) {
    if (words[0] !== 'node') continue;
    const script = words.slice(1).find((w) => !w.startsWith('-'));
    if (script === undefined || !script.startsWith(`${OUT_DIR}/`)) continue;
    const source = sourceOf(script);
    assert.ok(source, `${where}: node ${script}, but no ${ROOT_DIR}/ source compiles to it (tsconfig.build.json: ${ROOT_DIR} -> ${OUT_DIR})`);
    found.push(script);
    // A subcommand given to a CLI must be one it knows.
    const sub = words[words.indexOf(script) + 1];
    if (sub !== undefined && /^[a-z][\w-]*$/.test(sub)) {
      // A quoted name ('deploy'), or a command table's key (`keys: { module: ... }` in src/cli/main.ts).
      const known = read(source).includes(`'${sub}'`) || new RegExp(`^\\s*'?${sub}'?: \\{`, 'm').test(read(source));
      assert.ok(known, `${where}: ${script} ${sub}, but ${source} does not mention '${sub}'`);
    }
  }
  assert.ok(found.includes(`${OUT_DIR}/main.js`), 'the image must start dist/main.js');
  assert.ok(found.some((f) => f.includes('migrate')), 'compose must run the migration runner');
});

test('the Node image is one LTS major >= 22 that package.json and the runtime dependencies accept', () => {
  const majors = dockerfile.stages.map((stage) => {
    const match = /^(?:docker\.io\/)?(?:library\/)?node:(\d+)(?:[.-]|$)/.exec(stage.image);
    assert.ok(match, `stage ${stage.name ?? stage.image}: expected an official node:<major>... image, got ${stage.image}`);
    return Number(match[1]);
  });
  const major = majors[0] ?? 0;
  assert.ok(majors.every((m) => m === major), `all stages must use the same Node major (got ${majors.join(', ')})`);
  assert.ok(major >= 22 && major % 2 === 0, `Node ${major} is not an LTS line >= 22 (LTS lines are the even majors)`);

  const ranges: Array<[string, string]> = [];
  if (pkg.engines?.node) ranges.push(['package.json', pkg.engines.node]);
  for (const dep of Object.keys(pkg.dependencies)) {
    const file = path.join(ROOT, 'node_modules', dep, 'package.json');
    if (!fs.existsSync(file)) continue;
    const engines = (JSON.parse(fs.readFileSync(file, 'utf8')) as PackageJson).engines?.node;
    if (engines) ranges.push([dep, engines]);
  }
  for (const [who, range] of ranges) assert.ok(admitsMajor(range, major), `${who} requires node ${range}, which excludes Node ${major}`);
});

/** Whether the newest release of `major` satisfies an engines range (the image tracks the newest minor). */
function admitsMajor(range: string, major: number): boolean {
  const version: [number, number, number] = [major, 999, 999];
  const cmp = (a: number[], b: number[]) => (a[0]! - b[0]! || a[1]! - b[1]! || a[2]! - b[2]!);
  const parts = (v: string) => {
    const nums = v.replace(/^v/, '').split('.').map((p) => (p === 'x' || p === '*' ? NaN : Number(p)));
    return [nums[0] ?? NaN, nums[1] ?? NaN, nums[2] ?? NaN];
  };
  return range.split('||').some((alternative) => {
    const comparators = alternative.trim().replace(/([<>=^~]+)\s+/g, '$1').split(/\s+/).filter(Boolean);
    return comparators.every((c) => {
      const match = /^(>=|<=|>|<|\^|~|=)?(.*)$/.exec(c);
      const op = match?.[1] ?? '';
      const raw = parts(match?.[2] ?? '');
      if (Number.isNaN(raw[0]!)) return true; // `*`
      const low = raw.map((n) => (Number.isNaN(n) ? 0 : n));
      switch (op) {
        case '>=': return cmp(version, low) >= 0;
        case '>': return cmp(version, low) > 0;
        case '<': return cmp(version, low) < 0;
        case '<=': return cmp(version, low) <= 0;
        case '^': return version[0] === low[0] && cmp(version, low) >= 0;
        case '~': return version[0] === low[0] && (Number.isNaN(raw[1]!) || version[1] === low[1]);
        default: return version[0] === low[0];
      }
    });
  });
}

test('the build stage installs with npm ci, then builds, with every file those scripts read copied in first', () => {
  const build = dockerfile.stages.find((stage) => runs(stage).some((r) => /\bnpm run build\b/.test(r.args)));
  assert.ok(build, 'no stage runs `npm run build`');
  assert.notEqual(build, runtime, 'build in a separate stage: the runtime stage must not carry devDependencies');
  const install = runs(build).find((r) => /\bnpm ci\b/.test(r.args));
  const buildRun = runs(build).find((r) => /\bnpm run build\b/.test(r.args));
  assert.ok(install && buildRun && install.line < buildRun.line, 'the build stage must run `npm ci` before `npm run build`');
  assert.doesNotMatch(install.args, /--omit[= ]dev|--production|--ignore-scripts/, 'the build needs devDependencies and the root postinstall');
  assert.notEqual(stageEnv(build).get('NODE_ENV'), 'production', 'NODE_ENV=production in the build stage would make npm ci skip devDependencies');

  const needs = (line: number, files: string[], why: string) => {
    for (const file of files) assert.ok(copiedInPlace(build, file, line), `Dockerfile:${line} (${why}) needs ${file} copied to WORKDIR/${file} before it`);
  };
  needs(install.line, ['package.json', 'package-lock.json'], 'npm ci');

  // The lifecycle scripts npm ci runs, and what they read.
  const lifecycle = ['preinstall', 'install', 'postinstall', 'prepare'].map((s) => pkg.scripts[s]).filter((s): s is string => !!s);
  needs(install.line, filesNamedIn(lifecycle.join(' ')), 'the root install scripts');
  if (/prisma/.test(lifecycle.join(' '))) needs(install.line, prismaInputs(), 'prisma generate');

  // What `npm run build` runs, scripts expanded.
  const buildText = expandScript('build');
  needs(buildRun.line, filesNamedIn(buildText), 'npm run build');
  for (const project of [...buildText.matchAll(/(?:-p|--project)\s+(\S+)/g)].map((m) => m[1] ?? '')) {
    needs(buildRun.line, tsconfigChain(project), `tsc -p ${project}`);
    needs(buildRun.line, [ROOT_DIR], `tsc -p ${project}`);
  }
  if (/prisma/.test(buildText)) needs(buildRun.line, prismaInputs(), 'prisma generate');
});

/** The text of an npm script with `npm run X` expanded recursively. */
function expandScript(name: string, depth = 0): string {
  const text = pkg.scripts[name];
  assert.ok(text !== undefined, `package.json has no ${name} script`);
  assert.ok(depth < 10, 'npm scripts call each other in a loop');
  return text.replace(/\bnpm run (\S+)/g, (_, inner: string) => expandScript(inner, depth + 1));
}

/** Repository files named in a command line (`scripts/prisma.mjs`, `tsconfig.build.json`). */
function filesNamedIn(text: string): string[] {
  return [...new Set(text.split(/\s+/).filter((w) => /[./]/.test(w) && !w.startsWith('-') && exists(w) && !isDir(w)))];
}

/** prisma.config.ts and the schema it names. */
function prismaInputs(): string[] {
  const config = read('prisma.config.ts');
  const schema = /schema:\s*'([^']+)'/.exec(config)?.[1];
  assert.ok(schema && exists(schema), 'prisma.config.ts names no schema file that exists');
  return ['prisma.config.ts', schema];
}

function tsconfigChain(file: string): string[] {
  const chain = [file];
  const config = JSON.parse(read(file)) as { extends?: string };
  if (config.extends?.startsWith('.')) chain.push(...tsconfigChain(path.posix.join(path.posix.dirname(file), config.extends)));
  return chain;
}

test('the runtime stage: production dependencies only, dist/ and the migrations where the code looks for them', () => {
  const install = runs(runtime).find((r) => /\bnpm ci\b/.test(r.args));
  assert.ok(install, 'the runtime stage must install its dependencies with npm ci');
  assert.match(install.args, /--omit[= ]dev\b/, 'runtime npm ci must omit devDependencies');
  assert.match(install.args, /--ignore-scripts\b/, 'runtime npm ci must skip the root postinstall (it runs the Prisma CLI, a devDependency)');
  assert.ok(copiedInPlace(runtime, 'package-lock.json', install.line) && copiedInPlace(runtime, 'package.json', install.line), 'package.json and package-lock.json must be copied before npm ci');

  // dist/ comes from the build stage's WORKDIR/<outDir>.
  const distCopy = copiesOf(runtime).find((c) => c.from !== undefined && c.sources.some((s) => s.replace(/\/$/, '').endsWith(`/${OUT_DIR}`)));
  assert.ok(distCopy?.from, `the runtime stage must copy ${OUT_DIR}/ from the build stage`);
  const buildStage = stageByName(distCopy.from);
  assert.ok(buildStage, `COPY --from=${distCopy.from}: no such stage`);
  assert.equal(path.posix.normalize(distCopy.sources[0] ?? '').replace(/\/$/, ''), path.posix.resolve(workdirOf(buildStage), OUT_DIR), 'the copied folder is not where the build writes dist/');
  const distInImage = path.posix.resolve(runtimeWorkdir, distCopy.dest);
  assert.equal(distInImage, path.posix.resolve(runtimeWorkdir, OUT_DIR), `dist must land at WORKDIR/${OUT_DIR}, where CMD looks`);

  // src/db/migrations.ts looks for ../../prisma/migrations relative to the compiled module (dist/db/), i.e. next to dist/.
  assert.match(read('src/db/migrations.ts'), /'\.\.\/\.\.\/prisma\/migrations'/, 'src/db/migrations.ts no longer resolves ../../prisma/migrations: update this test and the Dockerfile');
  assert.ok(copiedInPlace(runtime, 'prisma/migrations', Infinity), 'the runtime stage must copy prisma/migrations to WORKDIR/prisma/migrations');
  assert.equal(path.posix.resolve(distInImage, '..', 'prisma/migrations'), path.posix.resolve(runtimeWorkdir, 'prisma/migrations'));
  const migrations = fs.readdirSync(path.join(ROOT, 'prisma/migrations')).filter((d) => exists(`prisma/migrations/${d}/migration.sql`));
  assert.ok(migrations.length > 0, 'prisma/migrations has no migration');
});

test('what the image runs imports production dependencies only (the generated client included)', () => {
  const entries = allCommands()
    .filter(({ words }) => words[0] === 'node')
    .map(({ words }) => words.slice(1).find((w) => !w.startsWith('-')))
    .filter((s): s is string => s !== undefined && s.startsWith(`${OUT_DIR}/`))
    .map((s) => sourceOf(s))
    .filter((s): s is string => s !== undefined);
  assert.ok(entries.length >= 2, 'expected the server and the migration runner as entry points');

  const seen = new Set<string>();
  const packages = new Map<string, string>();
  const queue = [...entries];
  while (queue.length > 0) {
    const file = queue.pop() ?? '';
    if (seen.has(file)) continue;
    seen.add(file);
    // Transpile like tsc does, so that imports used only as types are dropped.
    const js = ts.transpileModule(read(file), {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, isolatedModules: true, verbatimModuleSyntax: false, removeComments: true },
    }).outputText;
    const specifiers = [
      ...js.matchAll(/\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g),
      ...js.matchAll(/\bimport\s*['"]([^'"]+)['"]/g),
      ...js.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g),
      ...js.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g),
    ].map((m) => m[1] ?? '');
    for (const spec of specifiers) {
      if (spec.startsWith('.')) {
        const base = path.posix.join(path.posix.dirname(file), spec).replace(/\.(m|c)?js$/, '');
        const target = ['.ts', '.mts', '.tsx', '.js', '.mjs'].map((ext) => base + ext).find(exists);
        assert.ok(target, `${file} imports ${spec}, which does not exist (is the Prisma client generated? npm run generate)`);
        queue.push(target);
      } else if (!spec.startsWith('node:') && !builtinModules.includes(spec.split('/')[0] ?? '')) {
        const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : (spec.split('/')[0] ?? '');
        packages.set(name, file);
      }
    }
  }
  assert.ok(packages.has('@prisma/client'), 'expected the generated client to import @prisma/client/runtime');
  for (const [name, file] of packages) {
    assert.ok(
      pkg.dependencies[name],
      `${file} (run by the image) imports ${name}, which is ${pkg.devDependencies[name] ? 'only a devDependency' : 'not a dependency'}: the runtime image installs dependencies only`,
    );
  }
});

test('optional dependencies the runtime install omits are known to be unneeded', () => {
  const install = runs(runtime).find((r) => /\bnpm ci\b/.test(r.args));
  if (!/--omit[= ]optional\b/.test(install?.args ?? '')) return;
  // --omit=optional drops optional peers such as prisma and typescript (wanted) but also every optional dependency
  // of a production package. Each one dropped must be known not to be needed on linux at run time.
  const unneeded = new Map([
    ['pg-cloudflare', 'a socket for Cloudflare Workers; pg loads it only there'],
    ['@escape.tech/graphql-armor-types', 'TypeScript types; the graphql-armor plugins refer to it from .d.ts files only'],
  ]);
  const lock = JSON.parse(read('package-lock.json')) as { packages: Record<string, { optional?: boolean; dev?: boolean; devOptional?: boolean }> };
  const dropped = Object.entries(lock.packages)
    .filter(([key, meta]) => key !== '' && meta.optional === true && !meta.dev && !meta.devOptional)
    .map(([key]) => key.replace(/^.*node_modules\//, ''));
  const unknown = dropped.filter((name) => !unneeded.has(name));
  assert.deepEqual(unknown, [], `the runtime npm ci --omit=optional would leave out these production optional dependencies: ${unknown.join(', ')}. Check each is not needed in the image and list it in this test, or drop --omit=optional`);
});

test('the runtime stage runs as a non-root user with a writable, declared data volume', () => {
  const user = lastOf(runtime, 'USER')?.args.split(':')[0];
  assert.ok(user, 'the runtime stage must set USER');
  assert.ok(!['root', '0'].includes(user), `the runtime stage runs as ${user}`);
  const userLine = lastOf(runtime, 'USER')?.line ?? 0;
  assert.ok(!runtime.instructions.some((ins) => ins.line > userLine && ins.keyword === 'USER'), 'USER must not switch back');

  const defaultDataDir = /read\('DATA_DIR'\)\s*\?\?\s*'([^']+)'/.exec(configSource)?.[1];
  assert.ok(defaultDataDir, "cannot find DATA_DIR's default in src/config.ts");
  const dataDir = path.posix.resolve(runtimeWorkdir, runtimeEnv.get('DATA_DIR') ?? defaultDataDir);
  assert.notEqual(dataDir, runtimeWorkdir, 'cannot work out DATA_DIR');
  const volumes = runtime.instructions
    .filter((ins) => ins.keyword === 'VOLUME')
    .flatMap((ins) => execForm(ins.args) ?? ins.args.split(/\s+/))
    .map((v) => path.posix.resolve(runtimeWorkdir, v));
  assert.ok(volumes.includes(dataDir), `VOLUME must declare the embedded database folder ${dataDir} (DATA_DIR)`);
  const chowned = runs(runtime).some((r) => new RegExp(`chown\\s+(?:-R\\s+)?${user}(?::\\S+)?\\s+(?:\\S+\\s+)*${dataDir.replace(/\./g, '\\.')}(?:\\s|$)`).test(r.args));
  assert.ok(chowned, `a RUN must create ${dataDir} owned by ${user}, before VOLUME`);
});

test('the image sets production defaults with configuration variables src/config.ts reads', () => {
  assert.equal(runtimeEnv.get('NODE_ENV'), 'production');
  assert.equal(runtimeEnv.get('HOST'), '0.0.0.0', 'in a container the service must listen on every interface');
  for (const name of runtimeEnv.keys()) assert.ok(configVars.has(name), `Dockerfile sets ${name}, which src/config.ts does not read`);
  const port = runtimeEnv.get('PORT');
  assert.equal(Number(port), numericDefault('PORT'), 'the image PORT should equal the service default PORT');
  const exposed = runtime.instructions.filter((ins) => ins.keyword === 'EXPOSE').flatMap((ins) => ins.args.split(/\s+/)).map((p) => p.replace(/\/tcp$/, ''));
  assert.ok(exposed.includes(String(port)), `EXPOSE ${exposed.join(' ')} does not include PORT ${port}`);
});

test('CMD starts the server with node as PID 1, and the server handles SIGTERM itself', () => {
  assert.deepEqual(cmd, ['node', `${OUT_DIR}/main.js`], 'CMD must be the exec form ["node", "dist/main.js"] so that signals reach node directly');
  assert.equal(lastOf(runtime, 'ENTRYPOINT'), undefined, 'no ENTRYPOINT: node is PID 1');
  const main = read(sourceOf(`${OUT_DIR}/main.js`) ?? 'src/main.ts');
  // Node as PID 1 gets no default signal handling: without a handler, SIGTERM would be ignored until Docker's SIGKILL.
  assert.match(main, /process\.on\(\s*'SIGTERM'/, 'src/main.ts must handle SIGTERM (or the image needs an init such as tini)');
});

test('HEALTHCHECK probes GET /health on PORT with node (healthy on 2xx only, bounded in time)', async () => {
  const command = healthcheck.command;
  assert.ok(command && command[0] === 'node' && command[1] === '-e' && command[2], 'HEALTHCHECK must be CMD ["node", "-e", "<script>"] (no curl in slim images)');
  const script = command[2];
  assert.match(script, /\/health['"`]/, 'the health check must request /health');
  assert.ok(sourceFiles('src').some((f) => /['"]\/health['"]/.test(read(f))), 'the service (src/) no longer serves /health');
  const abortMs = Number(/AbortSignal\.timeout\((\d+)\)/.exec(script)?.[1]);
  assert.ok(abortMs > 0 && abortMs < durationMs(healthcheck.flags.get('timeout') ?? '30s'), 'the probe must give up (AbortSignal.timeout) before HEALTHCHECK --timeout');

  // Run the probe exactly as Docker would, against servers in this process.
  const probe = (port: number) =>
    new Promise<number | null>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, PORT: String(port) }, stdio: 'ignore' });
      child.on('error', reject);
      child.on('exit', (code) => resolve(code));
    });
  const serve = async (status: (url: string | undefined) => number) => {
    const requests: string[] = [];
    const server = http.createServer((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      res.statusCode = status(req.url);
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return { server, requests, port: (server.address() as AddressInfo).port };
  };
  const healthy = await serve((url) => (url === '/health' ? 200 : 404));
  const unhealthy = await serve(() => 503);
  try {
    assert.equal(await probe(healthy.port), 0, 'the health check fails against a server whose /health answers 200');
    assert.deepEqual(healthy.requests, ['GET /health']);
    assert.notEqual(await probe(unhealthy.port), 0, 'the health check passes although /health answers 503');
    assert.deepEqual(unhealthy.requests, ['GET /health']);
    const closedPort = healthy.port;
    await new Promise((resolve) => healthy.server.close(resolve));
    assert.notEqual(await probe(closedPort), 0, 'the health check passes with nothing listening');
  } finally {
    healthy.server.close();
    unhealthy.server.close();
  }
});

/** The TypeScript files under a folder, generated code excluded. */
function sourceFiles(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true }).flatMap((entry) => {
    const rel = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'generated' || entry.name === 'node_modules' ? [] : sourceFiles(rel);
    return /\.(m|c)?tsx?$/.test(entry.name) ? [rel] : [];
  });
}

test('.dockerignore keeps host builds and secrets out, and keeps what the Dockerfile copies', () => {
  const patterns = read('.dockerignore')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
  for (const p of ['node_modules', 'node_modules/prisma/package.json', 'src/node_modules/x', 'dist/main.js', '.git/HEAD', '.env', 'src/generated/prisma/client.ts', '.data/PG_VERSION']) {
    assert.ok(dockerIgnored(patterns, p), `.dockerignore must exclude ${p}`);
  }
  for (const stage of dockerfile.stages) {
    for (const copy of copiesOf(stage)) {
      if (copy.from !== undefined) continue;
      for (const source of copy.sources) {
        const s = path.posix.normalize(source).replace(/\/$/, '');
        assert.ok(exists(s), `Dockerfile:${copy.line} copies ${s}, which does not exist`);
        assert.ok(!dockerIgnored(patterns, s), `Dockerfile:${copy.line} copies ${s}, which .dockerignore excludes`);
      }
    }
  }
  assert.ok(!dockerIgnored(patterns, 'src/main.ts') && !dockerIgnored(patterns, 'prisma/migrations/x/migration.sql'));
});

/** Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches what is inside it. */
function dockerIgnored(patterns: string[], file: string): boolean {
  let ignored = false;
  const segments = file.split('/');
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const pattern = path.posix.normalize((negate ? raw.slice(1) : raw).replace(/^\//, ''));
    let source = '';
    for (let i = 0; i < pattern.length; ) {
      if (pattern.startsWith('**/', i)) [source, i] = [`${source}(?:.*/)?`, i + 3];
      else if (pattern.startsWith('**', i)) [source, i] = [`${source}.*`, i + 2];
      else if (pattern[i] === '*') [source, i] = [`${source}[^/]*`, i + 1];
      else if (pattern[i] === '?') [source, i] = [`${source}[^/]`, i + 1];
      else [source, i] = [source + (pattern[i] ?? '').replace(/[.+^${}()|[\]\\]/g, '\\$&'), i + 1];
    }
    const regex = new RegExp(`^${source}$`);
    if (segments.some((_, i) => regex.test(segments.slice(0, i + 1).join('/')))) ignored = !negate;
  }
  return ignored;
}

test('compose: the Compose specification format, and every service it names exists', () => {
  assert.equal(compose.version, undefined, 'no `version:` key (obsolete in the Compose specification)');
  for (const name of ['db', 'migrate', 'app', 'pgadmin']) assert.ok(services[name], `compose has no ${name} service`);
  const declaredVolumes = Object.keys(asObject(compose.volumes ?? {}, 'volumes'));
  for (const [name, svc] of Object.entries(services)) {
    const s = asObject(svc, name);
    for (const dep of dependsOn(s).keys()) assert.ok(services[dep], `${name} depends on ${dep}, which is not a service`);
    for (const volume of volumesOf(s)) {
      if (volume.source.startsWith('.') || volume.source.startsWith('/')) assert.ok(exists(volume.source), `${name} mounts ${volume.source}, which does not exist`);
      else if (volume.source !== '') assert.ok(declaredVolumes.includes(volume.source), `${name} uses volume ${volume.source}, not declared under volumes:`);
    }
  }
});

test('compose app and migrate: this image, configuration variables src/config.ts reads, ports that agree with PORT', () => {
  const app = service('app');
  const build = app.build;
  const context = typeof build === 'string' ? build : build === undefined ? undefined : asObject(build, 'app.build').context;
  assert.equal(context, '.', 'app must build this repository (build: .)');
  assert.ok(appImage, 'app must name its image, so that migrate runs the same one');
  const migrate = service('migrate');
  assert.equal(migrate.image, appImage, 'migrate must run the image app builds');
  assert.equal(migrate.build, undefined, 'only app builds: two services building one tag can collide');
  assert.deepEqual(ownServices.sort(), ['app', 'first-key', 'migrate']);

  for (const name of ownServices) {
    for (const key of environmentOf(service(name)).keys()) {
      assert.ok(configVars.has(key), `compose ${name} sets ${key}, which src/config.ts does not read (known: ${[...configVars.keys()].join(', ')})`);
    }
  }
  const env = environmentOf(app);
  assert.equal(configBoolean(env.get('MIGRATE_ON_START')), false, 'app must not migrate itself: the migrate service does');
  assert.equal(configBoolean(env.get('GRAPHIQL')), true, 'GraphiQL on, so that a compose user can explore');

  const port = Number(env.get('PORT') ?? runtimeEnv.get('PORT') ?? numericDefault('PORT'));
  const ports = portsOf(app);
  assert.ok(ports.length > 0, 'app publishes no port');
  for (const mapping of ports) assert.equal(Number(mapping.container), port, `app publishes container port ${mapping.container}, but the service listens on PORT ${port}`);
  assert.ok(ports.some((m) => Number(m.host) === port), `app should publish PORT ${port} on the same host port, as the README says`);
});

test('compose startup order: db healthy, then migrate to completion, then app; restarts and stop grace', () => {
  const app = service('app');
  const migrate = service('migrate');
  assert.equal(dependsOn(migrate).get('db'), 'service_healthy');
  assert.equal(dependsOn(app).get('db'), 'service_healthy');
  assert.equal(dependsOn(app).get('migrate'), 'service_completed_successfully');
  assert.equal(migrate.restart, 'no', 'migrate is one-shot (quote "no": restart must be the string "no")');
  assert.equal(app.restart, 'unless-stopped');
  const words = commandOf(migrate.command);
  assert.deepEqual(words.slice(0, 2), ['node', `${OUT_DIR}/cli/migrate.js`]);
  assert.equal(words[2], 'deploy');
  // The image's HEALTHCHECK probes the HTTP server, which the migration container does not run.
  assert.equal(asObject(migrate.healthcheck ?? {}, 'migrate.healthcheck').disable, true, 'migrate must disable the image health check');

  const env = environmentOf(app);
  const shutdownMs = Number(env.get('SHUTDOWN_TIMEOUT_MS') ?? numericDefault('SHUTDOWN_TIMEOUT_MS'));
  const graceMs = app.stop_grace_period === undefined ? 10_000 : durationMs(app.stop_grace_period);
  assert.ok(graceMs > shutdownMs, `app stop_grace_period (${graceMs} ms) must exceed SHUTDOWN_TIMEOUT_MS (${shutdownMs} ms), or Docker kills the service mid-drain`);
});

test('compose database: DATABASE_URL points at the db service and its credentials, healthcheck, data volume', () => {
  const db = service('db');
  const dbEnv = environmentOf(db);
  const image = /^(?:docker\.io\/)?(?:library\/)?postgres:(\d+)/.exec(String(db.image));
  assert.ok(image, `db must be an official postgres:<major> image, got ${db.image}`);
  const major = Number(image[1]);
  assert.ok(major >= 15, `PostgreSQL ${major} is older than this project supports`);

  for (const name of ownServices) {
    const raw = environmentOf(service(name)).get('DATABASE_URL');
    assert.ok(raw, `${name} has no DATABASE_URL`);
    const url = new URL(raw);
    assert.ok(['postgres:', 'postgresql:'].includes(url.protocol));
    assert.equal(url.hostname, 'db', `${name}: DATABASE_URL must point at the db service`);
    assert.equal(url.port || '5432', '5432');
    assert.equal(decodeURIComponent(url.username), dbEnv.get('POSTGRES_USER'), `${name}: user differs from POSTGRES_USER`);
    assert.equal(decodeURIComponent(url.password), dbEnv.get('POSTGRES_PASSWORD'), `${name}: password differs from POSTGRES_PASSWORD`);
    assert.equal(url.pathname.slice(1), dbEnv.get('POSTGRES_DB'), `${name}: database differs from POSTGRES_DB`);
  }
  assert.equal(dbEnv.get('POSTGRES_DB'), 'metrics');

  const check = commandOf(asObject(db.healthcheck, 'db.healthcheck').test);
  assert.ok(check.some((w) => w.includes('pg_isready')), 'db healthcheck must use pg_isready');
  const flag = (f: string) => check[check.indexOf(f) + 1];
  if (check.includes('-U')) assert.equal(flag('-U'), dbEnv.get('POSTGRES_USER'));
  if (check.includes('-d')) assert.equal(flag('-d'), dbEnv.get('POSTGRES_DB'));

  // postgres:18 and later keep data under /var/lib/postgresql/<major>/docker and want the volume on /var/lib/postgresql.
  const dataPath = major >= 18 ? '/var/lib/postgresql' : '/var/lib/postgresql/data';
  const volume = volumesOf(db).find((v) => v.target.replace(/\/$/, '') === dataPath);
  assert.ok(volume && !volume.source.startsWith('.'), `db must keep its data in a named volume on ${dataPath} (postgres:${major})`);
});

test('pgAdmin: desktop mode, the compose database pre-registered, its password from a pgpass file pgAdmin accepts', () => {
  const pgadmin = service('pgadmin');
  assert.match(String(pgadmin.image), /^(?:docker\.io\/)?dpage\/pgadmin4(?::|$)/);
  const env = environmentOf(pgadmin);
  // Written verbatim into pgAdmin's Python config, and compared with "False" by the image's entrypoint.
  assert.equal(env.get('PGADMIN_CONFIG_SERVER_MODE'), 'False');
  assert.equal(env.get('PGADMIN_CONFIG_MASTER_PASSWORD_REQUIRED'), 'False');
  const email = env.get('PGADMIN_DEFAULT_EMAIL') ?? '';
  assert.match(email, /^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i, 'PGADMIN_DEFAULT_EMAIL is required by the image and must look like an address');
  assert.ok(!/\.(local|localhost|test|invalid|arpa|onion)$/i.test(email), `pgAdmin refuses special-use domains: ${email}`);
  assert.ok(env.get('PGADMIN_DEFAULT_PASSWORD'), 'PGADMIN_DEFAULT_PASSWORD is required by the image');
  assert.ok(portsOf(pgadmin).some((p) => p.host === '5050' && p.container === (env.get('PGADMIN_LISTEN_PORT') ?? '80')), 'pgAdmin on host port 5050');

  const mounts = volumesOf(pgadmin);
  const mountOf = (target: string) => mounts.find((m) => m.target === target);
  const serversFile = env.get('PGADMIN_SERVER_JSON_FILE') ?? '/pgadmin4/servers.json';
  const serversMount = mountOf(serversFile);
  assert.ok(serversMount?.readOnly && serversMount.source.replace(/^\.\//, '') === 'docker/pgadmin/servers.json', `docker/pgadmin/servers.json must be mounted read-only at ${serversFile}`);
  const pgpassFile = env.get('PGPASS_FILE');
  assert.ok(pgpassFile, 'PGPASS_FILE: the image copies it to a 0600 file libpq accepts (a bind mount keeps the host mode)');
  const pgpassMount = mountOf(pgpassFile);
  assert.ok(pgpassMount?.readOnly && pgpassMount.source.replace(/^\.\//, '') === 'docker/pgadmin/pgpass', `docker/pgadmin/pgpass must be mounted read-only at ${pgpassFile}`);
  assert.ok(mounts.some((m) => m.target === '/var/lib/pgadmin' && !m.source.startsWith('.')), 'pgAdmin state in a named volume');

  const db = service('db');
  const dbEnv = environmentOf(db);
  const servers = Object.values(asObject(asObject(JSON.parse(read('docker/pgadmin/servers.json')), 'servers.json').Servers, 'Servers'));
  assert.equal(servers.length, 1);
  const server = asObject(servers[0], 'server');
  for (const key of ['Name', 'Group', 'Port', 'Username', 'MaintenanceDB', 'Host']) assert.ok(server[key] !== undefined, `servers.json needs ${key}`);
  assert.ok(services[String(server.Host)] === db, `servers.json Host ${server.Host} must be the compose db service`);
  assert.equal(server.Port, 5432, 'servers.json Port must be an integer: the port db listens on');
  assert.equal(server.MaintenanceDB, dbEnv.get('POSTGRES_DB'));
  assert.equal(server.Username, dbEnv.get('POSTGRES_USER'));
  // In desktop mode the entrypoint copies PGPASS_FILE to /var/lib/pgadmin/.pgpass, and PassFile paths are absolute.
  const params = asObject(server.ConnectionParameters ?? {}, 'ConnectionParameters');
  assert.equal(params.passfile ?? server.PassFile, '/var/lib/pgadmin/.pgpass');

  const entries = read('docker/pgadmin/pgpass')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.split(':'));
  const matching = entries.find(([host, port, database, user]) =>
    [server.Host, '*'].includes(host) && [String(server.Port), '*'].includes(port ?? '') && [server.MaintenanceDB, '*'].includes(database) && [server.Username, '*'].includes(user),
  );
  assert.ok(matching, 'docker/pgadmin/pgpass has no line for the registered server');
  assert.equal(matching.slice(4).join(':'), dbEnv.get('POSTGRES_PASSWORD'), 'the pgpass password differs from POSTGRES_PASSWORD');
});

test('compose first-key: one-shot after migrate, creates an admin key only when none exists, before app starts', () => {
  const firstKey = service('first-key');
  const words = commandOf(firstKey.command);
  assert.deepEqual(words.slice(0, 5), ['node', `${OUT_DIR}/cli/main.js`, 'keys', 'create', '--scope']);
  assert.ok(words.includes('--if-none'), 'without --if-none every `up` would add a key');
  assert.equal(words[words.indexOf('--scope') + 1], 'admin');
  assert.ok(words.includes('--name'));
  assert.match(read('src/cli/keys.ts'), /'if-none'/, 'src/cli/keys.ts no longer knows --if-none');
  assert.equal(dependsOn(firstKey).get('migrate'), 'service_completed_successfully');
  assert.equal(dependsOn(service('app')).get('first-key'), 'service_completed_successfully');
  assert.equal(firstKey.restart, 'no');
  assert.equal(asObject(firstKey.healthcheck ?? {}, 'first-key.healthcheck').disable, true);
  assert.equal(configBoolean(environmentOf(firstKey).get('MIGRATE_ON_START')), false);
});

test('compose app: introspection on where GraphiQL is on (its docs pane and completion need it)', () => {
  const env = environmentOf(service('app'));
  assert.equal(configBoolean(env.get('GRAPHIQL')), true);
  assert.equal(configBoolean(env.get('INTROSPECTION')), true, 'GraphiQL without introspection has empty docs');
});

test('the image puts the tools on PATH as metrics-service, and the npm scripts of the tools run without sources', () => {
  const text = runtime.instructions.map((ins) => `${ins.keyword} ${ins.args}`).join('\n');
  assert.match(text, /ln -s \/app\/dist\/cli\/main\.js \/usr\/local\/bin\/metrics-service/);
  assert.equal(pkg.bin?.['metrics-service'], `${OUT_DIR}/cli/main.js`);
  assert.match(read('src/cli/main.ts'), /^#!\/usr\/bin\/env node/, 'the entry point needs its shebang to run as metrics-service');
  for (const [name, script] of Object.entries(pkg.scripts)) {
    if (!/^node scripts\/cli\.mjs /.test(script)) continue;
    assert.ok(copiedInPlace(runtime, 'scripts/cli.mjs', Infinity) && copiedInPlace(runtime, 'scripts/build.mjs', Infinity), `npm run ${name} needs scripts/cli.mjs and scripts/build.mjs in the image`);
  }
  assert.doesNotMatch(text, /\btsx\b/, 'no tsx at run time');
});
