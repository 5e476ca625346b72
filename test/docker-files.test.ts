/**
 * Keeps Dockerfile, .dockerignore, docker-compose.yml and docker/pgadmin/ consistent with the project they package:
 * the npm scripts and compiled entry points they call exist, the files the build needs are copied in time and not
 * excluded, the environment they set is configuration src/config.ts reads, ports, paths and credentials agree, and
 * what runs in the image needs production dependencies only. No Docker engine is needed: the files are parsed
 * (dockerfile-ast, yaml; test/support/docker/), and the health check is run as Docker would run it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import {
  asObject,
  commandOf,
  composeCommands,
  dependsOn,
  durationMs,
  environmentOf,
  type Json,
  parseCompose,
  portsOf,
  volumesOf,
} from './support/docker/compose.js';
import {
  commandsOf,
  copiedInPlace,
  copiesOf,
  envOf,
  execForm,
  healthcheckOf,
  instructionsOf,
  lastOf,
  lineOf,
  parseDockerfile,
  runsOf,
  type Stage,
  wordsOf,
  workdirOf,
} from './support/docker/dockerfile.js';
import { dockerIgnored, ignorePatterns } from './support/docker/dockerignore.js';
import { admitsMajor } from './support/docker/engines.js';
import { packagesImportedBy } from './support/docker/imports.js';
import {
  configFor,
  exists,
  expandScript,
  filesNamedIn,
  isDir,
  OUT_DIR,
  type PackageJson,
  pkg,
  prismaInputs,
  ROOT,
  ROOT_DIR,
  read,
  sourceOf,
  tsconfigChain,
} from './support/docker/project.js';

const stages = parseDockerfile(read('Dockerfile'));
const runtime = stages.at(-1) as Stage;
const runtimeEnv = envOf(runtime);
const runtimeWorkdir = workdirOf(runtime);
const inPlace = (stage: Stage, file: string, beforeLine = Infinity) => copiedInPlace(stage, file, beforeLine, isDir);
const healthcheck = healthcheckOf(runtime);
assert.ok(healthcheck, 'the runtime stage has no HEALTHCHECK');
const defaults = configFor('no environment', {});

const compose = parseCompose(read('docker-compose.yml'));
const services = asObject(compose.services, 'services');
const service = (name: string): Json => asObject(services[name], `service ${name}`);
/** A service that runs this image sees the image's ENV, then its own environment. */
const serviceConfig = (name: string) =>
  configFor(`compose ${name}`, {
    ...Object.fromEntries(runtimeEnv),
    ...Object.fromEntries(environmentOf(service(name))),
  });

/** The services that run this project's image. */
const appImage = String(service('app').image ?? '');
const ownServices = Object.entries(services)
  .filter(([name, svc]) => {
    const s = asObject(svc, name);
    return s.build !== undefined || (appImage !== '' && s.image === appImage);
  })
  .map(([name]) => name);

const allCommands = [...commandsOf(stages), ...composeCommands(services)];
/** The compiled scripts those commands start with node. */
const nodeScripts = allCommands
  .filter(({ words }) => words[0] === 'node')
  .map(({ where, words }) => ({ where, words, script: words.slice(1).find((w) => !w.startsWith('-')) ?? '' }))
  .filter(({ script }) => script.startsWith(`${OUT_DIR}/`));

// ---------------------------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------------------------

test('src/config.ts reads the variables this test relies on', () => {
  const { reads } = defaults;
  for (const name of [
    'DATABASE_URL',
    'PORT',
    'HOST',
    'NODE_ENV',
    'MIGRATE_ON_START',
    'GRAPHIQL',
    'SHUTDOWN_TIMEOUT_MS',
    'DATA_DIR',
  ]) {
    assert.ok(reads.has(name), `src/config.ts no longer reads ${name} (or this test cannot see it)`);
  }
});

test('every npm script the Docker files run exists in package.json', () => {
  let seen = 0;
  for (const { where, words } of allCommands) {
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
  for (const { where, words, script } of nodeScripts) {
    const source = sourceOf(script);
    assert.ok(
      source,
      `${where}: node ${script}, but no ${ROOT_DIR}/ source compiles to it ` +
        `(tsconfig.build.json: ${ROOT_DIR} -> ${OUT_DIR})`,
    );
    // A subcommand given to a CLI must be one it knows: a quoted name ('deploy'), or a command table's key
    // (`keys: { module: ... }` in src/cli/main.ts).
    const sub = words[words.indexOf(script) + 1];
    if (sub !== undefined && /^[a-z][\w-]*$/.test(sub)) {
      const known = read(source).includes(`'${sub}'`) || new RegExp(`^\\s*'?${sub}'?: \\{`, 'm').test(read(source));
      assert.ok(known, `${where}: ${script} ${sub}, but ${source} does not mention '${sub}'`);
    }
  }
  const scripts = nodeScripts.map(({ script }) => script);
  assert.ok(scripts.includes(`${OUT_DIR}/main.js`), 'the image must start dist/main.js');
  assert.ok(
    scripts.some((f) => f.includes('migrate')),
    'compose must run the migration runner',
  );
});

test('the Node image is one LTS major >= 22 that package.json and the runtime dependencies accept', () => {
  const majors = stages.map((stage) => {
    const match = /^(?:docker\.io\/)?(?:library\/)?node:(\d+)(?:[.-]|$)/.exec(stage.image);
    assert.ok(
      match,
      `stage ${stage.name ?? stage.image}: expected an official node:<major>... image, got ${stage.image}`,
    );
    return Number(match[1]);
  });
  const major = majors[0] ?? 0;
  assert.ok(
    majors.every((m) => m === major),
    `all stages must use the same Node major (got ${majors.join(', ')})`,
  );
  assert.ok(major >= 22 && major % 2 === 0, `Node ${major} is not an LTS line >= 22 (LTS lines are the even majors)`);

  const ranges: Array<[string, string]> = pkg.engines?.node ? [['package.json', pkg.engines.node]] : [];
  for (const dep of Object.keys(pkg.dependencies)) {
    const file = `node_modules/${dep}/package.json`;
    const engines = exists(file) ? (JSON.parse(read(file)) as PackageJson).engines?.node : undefined;
    if (engines) ranges.push([dep, engines]);
  }
  for (const [who, range] of ranges)
    assert.ok(admitsMajor(range, major), `${who} requires node ${range}, which excludes Node ${major}`);
});

test('the build stage installs with npm ci, then builds, with every file those scripts read copied in first', () => {
  const build = stages.find((stage) => runsOf(stage).some((r) => /\bnpm run build\b/.test(r.command)));
  assert.ok(build, 'no stage runs `npm run build`');
  assert.notEqual(build, runtime, 'build in a separate stage: the runtime stage must not carry devDependencies');
  const install = runsOf(build).find((r) => /\bnpm ci\b/.test(r.command));
  const buildRun = runsOf(build).find((r) => /\bnpm run build\b/.test(r.command));
  assert.ok(
    install && buildRun && install.line < buildRun.line,
    'the build stage must run `npm ci` before `npm run build`',
  );
  assert.doesNotMatch(
    install.command,
    /--omit[= ]dev|--production|--ignore-scripts/,
    'the build needs devDependencies and the root postinstall',
  );
  assert.notEqual(
    envOf(build).get('NODE_ENV'),
    'production',
    'NODE_ENV=production in the build stage would make npm ci skip devDependencies',
  );

  const needs = (line: number, files: string[], why: string) => {
    for (const file of files)
      assert.ok(
        inPlace(build, file, line),
        `Dockerfile:${line} (${why}) needs ${file} copied to WORKDIR/${file} before it`,
      );
  };
  needs(install.line, ['package.json', 'package-lock.json'], 'npm ci');

  // The lifecycle scripts npm ci runs, and what they read.
  const lifecycle = ['preinstall', 'install', 'postinstall', 'prepare'].map((s) => pkg.scripts[s] ?? '').join(' ');
  needs(install.line, filesNamedIn(lifecycle), 'the root install scripts');
  if (/prisma/.test(lifecycle)) needs(install.line, prismaInputs(), 'prisma generate');

  // What `npm run build` runs, scripts expanded.
  const buildText = expandScript('build');
  needs(buildRun.line, filesNamedIn(buildText), 'npm run build');
  for (const [, project = ''] of buildText.matchAll(/(?:-p|--project)\s+(\S+)/g)) {
    needs(buildRun.line, [...tsconfigChain(project), ROOT_DIR], `tsc -p ${project}`);
  }
  if (/prisma/.test(buildText)) needs(buildRun.line, prismaInputs(), 'prisma generate');
});

test('the runtime stage: production dependencies only, dist/ and the migrations where the code looks for them', () => {
  const install = runsOf(runtime).find((r) => /\bnpm ci\b/.test(r.command));
  assert.ok(install, 'the runtime stage must install its dependencies with npm ci');
  assert.match(install.command, /--omit[= ]dev\b/, 'runtime npm ci must omit devDependencies');
  assert.match(
    install.command,
    /--ignore-scripts\b/,
    'runtime npm ci must skip the root postinstall (it runs the Prisma CLI, a devDependency)',
  );
  assert.ok(
    inPlace(runtime, 'package-lock.json', install.line) && inPlace(runtime, 'package.json', install.line),
    'package.json and package-lock.json must be copied before npm ci',
  );

  // dist/ comes from the build stage's WORKDIR/<outDir>.
  const distCopy = copiesOf(runtime).find(
    (c) => c.from !== undefined && c.sources.some((s) => s.replace(/\/$/, '').endsWith(`/${OUT_DIR}`)),
  );
  assert.ok(distCopy?.from, `the runtime stage must copy ${OUT_DIR}/ from the build stage`);
  const buildStage = stages.find((s) => s.name === distCopy.from);
  assert.ok(buildStage, `COPY --from=${distCopy.from}: no such stage`);
  assert.equal(
    path.posix.normalize(distCopy.sources[0] ?? '').replace(/\/$/, ''),
    path.posix.resolve(workdirOf(buildStage), OUT_DIR),
    'the copied folder is not where the build writes dist/',
  );
  const distInImage = path.posix.resolve(distCopy.workdir, distCopy.dest);
  assert.equal(
    distInImage,
    path.posix.resolve(runtimeWorkdir, OUT_DIR),
    `dist must land at WORKDIR/${OUT_DIR}, where CMD looks`,
  );

  // src/db/migrations.ts looks for ../../prisma/migrations relative to the compiled module (dist/db/), i.e. next to
  // dist/.
  assert.match(
    read('src/db/migrations.ts'),
    /'\.\.\/\.\.\/prisma\/migrations'/,
    'src/db/migrations.ts no longer resolves ../../prisma/migrations: update this test and the Dockerfile',
  );
  assert.ok(
    inPlace(runtime, 'prisma/migrations'),
    'the runtime stage must copy prisma/migrations to WORKDIR/prisma/migrations',
  );
  assert.equal(
    path.posix.resolve(distInImage, '..', 'prisma/migrations'),
    path.posix.resolve(runtimeWorkdir, 'prisma/migrations'),
  );
  const migrations = fs
    .readdirSync(path.join(ROOT, 'prisma/migrations'))
    .filter((d) => exists(`prisma/migrations/${d}/migration.sql`));
  assert.ok(migrations.length > 0, 'prisma/migrations has no migration');
});

test('what the image runs imports production dependencies only (the generated client included)', () => {
  const entries = nodeScripts.map(({ script }) => sourceOf(script)).filter((s): s is string => s !== undefined);
  assert.ok(entries.length >= 2, 'expected the server and the migration runner as entry points');
  const packages = packagesImportedBy(ROOT, entries);
  assert.ok(packages.has('@prisma/client'), 'expected the generated client to import @prisma/client/runtime');
  for (const [name, file] of packages) {
    const kind = pkg.devDependencies[name] ? 'only a devDependency' : 'not a dependency';
    assert.ok(
      pkg.dependencies[name],
      `${file} (run by the image) imports ${name}, which is ${kind}: the runtime image installs dependencies only`,
    );
  }
});

test('optional dependencies the runtime install omits are known to be unneeded', () => {
  const install = runsOf(runtime).find((r) => /\bnpm ci\b/.test(r.command));
  if (!/--omit[= ]optional\b/.test(install?.command ?? '')) return;
  // --omit=optional drops optional peers such as prisma and typescript (wanted) but also every optional dependency
  // of a production package. Each one dropped must be known not to be needed on linux at run time.
  const unneeded = new Map([
    ['pg-cloudflare', 'a socket for Cloudflare Workers; pg loads it only there'],
    [
      '@escape.tech/graphql-armor-types',
      'TypeScript types; the graphql-armor plugins refer to it from .d.ts files only',
    ],
  ]);
  type LockEntry = { optional?: boolean; dev?: boolean; devOptional?: boolean };
  const lock = JSON.parse(read('package-lock.json')) as { packages: Record<string, LockEntry> };
  const dropped = Object.entries(lock.packages)
    .filter(([key, meta]) => key !== '' && meta.optional === true && !meta.dev && !meta.devOptional)
    .map(([key]) => key.replace(/^.*node_modules\//, ''));
  const unknown = dropped.filter((name) => !unneeded.has(name));
  assert.deepEqual(
    unknown,
    [],
    `the runtime npm ci --omit=optional would leave out these production optional dependencies: ` +
      `${unknown.join(', ')}. Check each is not needed in the image and list it in this test, or drop --omit=optional`,
  );
});

test('the runtime stage runs as a non-root user with a writable, declared data volume', () => {
  const userIns = lastOf(runtime, 'USER');
  const user = userIns?.getArguments()[0]?.getValue().split(':')[0];
  assert.ok(userIns && user, 'the runtime stage must set USER');
  assert.ok(!['root', '0'].includes(user), `the runtime stage runs as ${user}`);

  // The image's DATA_DIR, or src/config.ts's default, which is relative to the working directory.
  const dataDirSetting = runtimeEnv.get('DATA_DIR') ?? path.relative(process.cwd(), defaults.config.dataDir);
  const dataDir = path.posix.resolve(runtimeWorkdir, dataDirSetting.split(path.sep).join('/'));
  assert.notEqual(dataDir, runtimeWorkdir, 'cannot work out DATA_DIR');
  const volumes = instructionsOf(runtime, 'VOLUME').flatMap((ins) =>
    wordsOf(ins).map((v) => ({ line: lineOf(ins), dir: path.posix.resolve(runtimeWorkdir, v) })),
  );
  const volume = volumes.find((v) => v.dir === dataDir);
  assert.ok(volume, `VOLUME must declare the embedded database folder ${dataDir} (DATA_DIR)`);
  const chown = new RegExp(
    `chown\\s+(?:-R\\s+)?${user}(?::\\S+)?\\s+(?:\\S+\\s+)*${dataDir.replace(/\./g, '\\.')}(?:\\s|$)`,
  );
  assert.ok(
    runsOf(runtime).some((r) => chown.test(r.command) && r.line < volume.line),
    `a RUN must create ${dataDir} owned by ${user}, before VOLUME`,
  );
});

test('the image sets production defaults with configuration variables src/config.ts reads', () => {
  const { config, reads } = configFor('Dockerfile', Object.fromEntries(runtimeEnv));
  assert.equal(config.nodeEnv, 'production');
  assert.equal(config.host, '0.0.0.0', 'in a container the service must listen on every interface');
  for (const name of runtimeEnv.keys())
    assert.ok(reads.has(name), `Dockerfile sets ${name}, which src/config.ts does not read`);
  assert.equal(
    Number(runtimeEnv.get('PORT')),
    defaults.config.port,
    'the image PORT should equal the service default PORT',
  );
  const exposed = instructionsOf(runtime, 'EXPOSE')
    .flatMap(wordsOf)
    .map((p) => p.replace(/\/tcp$/, ''));
  assert.ok(exposed.includes(String(config.port)), `EXPOSE ${exposed.join(' ')} does not include PORT ${config.port}`);
});

test('CMD starts the server with node as PID 1, and the server handles SIGTERM itself', () => {
  const cmd = lastOf(runtime, 'CMD');
  assert.deepEqual(
    cmd && (execForm(cmd) ?? String(cmd)),
    ['node', `${OUT_DIR}/main.js`],
    'CMD must be the exec form ["node", "dist/main.js"] so that signals reach node directly',
  );
  assert.equal(lastOf(runtime, 'ENTRYPOINT')?.toString(), undefined, 'no ENTRYPOINT: node is PID 1');
  const main = read(sourceOf(`${OUT_DIR}/main.js`) ?? 'src/main.ts');
  // Node as PID 1 gets no default signal handling: without a handler, SIGTERM would be ignored until Docker's SIGKILL.
  assert.match(
    main,
    /process\.on\(\s*'SIGTERM'/,
    'src/main.ts must handle SIGTERM (or the image needs an init such as tini)',
  );
});

test('HEALTHCHECK probes GET /health on PORT with node (healthy on 2xx only, bounded in time)', async () => {
  const command = healthcheck.command;
  assert.ok(
    command && command[0] === 'node' && command[1] === '-e' && command[2],
    'HEALTHCHECK must be CMD ["node", "-e", "<script>"] (no curl in slim images)',
  );
  const script = command[2];
  assert.match(script, /\/health['"`]/, 'the health check must request /health');
  const sources = fs
    .readdirSync(path.join(ROOT, 'src'), { recursive: true, encoding: 'utf8' })
    .filter((f) => /\.(m|c)?tsx?$/.test(f));
  assert.ok(
    sources.some((f) => !f.startsWith('generated') && /['"]\/health['"]/.test(read(`src/${f}`))),
    'the service (src/) no longer serves /health',
  );
  const abortMs = Number(/AbortSignal\.timeout\((\d+)\)/.exec(script)?.[1]);
  assert.ok(
    abortMs > 0 && abortMs < durationMs(healthcheck.flags.get('timeout') ?? '30s'),
    'the probe must give up (AbortSignal.timeout) before HEALTHCHECK --timeout',
  );

  // Run the probe exactly as Docker would, against servers in this process.
  const probe = (port: number) =>
    new Promise<number | null>((resolve, reject) => {
      const child = spawn(process.execPath, ['-e', script], {
        env: { ...process.env, PORT: String(port) },
        stdio: 'ignore',
      });
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

test('.dockerignore keeps host builds and secrets out, and keeps what the Dockerfile copies', () => {
  const patterns = ignorePatterns(read('.dockerignore'));
  const secretsAndBuilds = [
    'node_modules',
    'node_modules/prisma/package.json',
    'src/node_modules/x',
    'dist/main.js',
    '.git/HEAD',
    '.env',
    'src/generated/prisma/client.ts',
    '.data/PG_VERSION',
  ];
  for (const p of secretsAndBuilds) assert.ok(dockerIgnored(patterns, p), `.dockerignore must exclude ${p}`);
  for (const copy of stages.flatMap(copiesOf).filter((c) => c.from === undefined)) {
    for (const source of copy.sources) {
      const s = path.posix.normalize(source).replace(/\/$/, '');
      assert.ok(exists(s), `Dockerfile:${copy.line} copies ${s}, which does not exist`);
      assert.ok(!dockerIgnored(patterns, s), `Dockerfile:${copy.line} copies ${s}, which .dockerignore excludes`);
    }
  }
  assert.ok(!dockerIgnored(patterns, 'src/main.ts') && !dockerIgnored(patterns, 'prisma/migrations/x/migration.sql'));
});

// ---------------------------------------------------------------------------------------------------------------
// The compose stack
// ---------------------------------------------------------------------------------------------------------------

test('compose: the Compose specification format, and every service it names exists', () => {
  assert.equal(compose.version, undefined, 'no `version:` key (obsolete in the Compose specification)');
  for (const name of ['db', 'migrate', 'app', 'pgadmin']) assert.ok(services[name], `compose has no ${name} service`);
  const declaredVolumes = Object.keys(asObject(compose.volumes ?? {}, 'volumes'));
  for (const name of Object.keys(services)) {
    for (const dep of dependsOn(service(name)).keys())
      assert.ok(services[dep], `${name} depends on ${dep}, which is not a service`);
    for (const { source } of volumesOf(service(name))) {
      if (source.startsWith('.') || source.startsWith('/'))
        assert.ok(exists(source), `${name} mounts ${source}, which does not exist`);
      else if (source !== '')
        assert.ok(declaredVolumes.includes(source), `${name} uses volume ${source}, not declared under volumes:`);
    }
  }
});

test('compose app and migrate: this image, variables src/config.ts reads, ports that agree with PORT', () => {
  const app = service('app');
  const build = app.build;
  const context =
    typeof build === 'string' ? build : build === undefined ? undefined : asObject(build, 'app.build').context;
  assert.equal(context, '.', 'app must build this repository (build: .)');
  assert.ok(appImage, 'app must name its image, so that migrate runs the same one');
  const migrate = service('migrate');
  assert.equal(migrate.image, appImage, 'migrate must run the image app builds');
  assert.equal(migrate.build, undefined, 'only app builds: two services building one tag can collide');
  assert.deepEqual(ownServices.sort(), ['app', 'app-2', 'first-key', 'migrate', 'worker']);

  for (const name of ownServices) {
    const { reads } = serviceConfig(name);
    for (const key of environmentOf(service(name)).keys()) {
      assert.ok(
        reads.has(key),
        `compose ${name} sets ${key}, which src/config.ts does not read (known: ${[...reads].join(', ')})`,
      );
    }
  }
  const { config } = serviceConfig('app');
  assert.equal(config.migrateOnStart, false, 'app must not migrate itself: the migrate service does');
  assert.equal(config.graphiql, true, 'GraphiQL on, so that a compose user can explore');

  const ports = portsOf(app);
  assert.ok(ports.length > 0, 'app publishes no port');
  for (const { container } of ports)
    assert.equal(
      Number(container),
      config.port,
      `app publishes container port ${container}, but the service listens on PORT ${config.port}`,
    );
  assert.ok(
    ports.some((m) => Number(m.host) === config.port),
    `app should publish PORT ${config.port} on the same host port, as the README says`,
  );
});

test('compose queued mode: app and worker share INGEST_QUEUE on the nats service, which runs JetStream', () => {
  const nats = service('nats');
  const args = commandOf(nats.command);
  assert.ok(args.includes('-js') || args.includes('--jetstream'), 'nats must run with JetStream (-js)');
  const storeDir = args[args.indexOf('-sd') + 1];
  assert.ok(
    volumesOf(nats).some((v) => v.target.replace(/\/$/, '') === storeDir && !v.source.startsWith('.')),
    `nats must keep its streams (-sd ${storeDir}) in a named volume`,
  );
  const app = serviceConfig('app').config.ingestQueue;
  const worker = serviceConfig('worker').config.ingestQueue;
  assert.ok(app && worker, 'app and worker both set INGEST_QUEUE');
  assert.deepEqual(worker, app, 'app and worker must agree on every queue setting');
  assert.equal(new URL(app.url).hostname, 'nats', 'INGEST_QUEUE must point at the nats service');
  assert.equal(new URL(app.url).port || '4222', '4222');
  assert.equal(dependsOn(service('app')).get('nats'), 'service_healthy');
  const workerService = service('worker');
  assert.equal(dependsOn(workerService).get('nats'), 'service_healthy');
  assert.equal(dependsOn(workerService).get('migrate'), 'service_completed_successfully');
  assert.deepEqual(commandOf(workerService.command), ['node', `${OUT_DIR}/cli/main.js`, 'worker']);
  assert.equal(workerService.restart, 'unless-stopped');
  assert.equal(serviceConfig('worker').config.migrateOnStart, false, 'the migrate service migrates');
  assert.equal(
    asObject(workerService.healthcheck ?? {}, 'worker.healthcheck').disable,
    true,
    'the worker runs no HTTP server: the image health check must be off',
  );
});

test('compose two instances: app and app-2 are one service on one database, queue and Redis', () => {
  const second = service('app-2');
  assert.equal(second.build, undefined, 'only app builds: two services building one tag can collide');
  assert.equal(second.image, appImage, 'app-2 runs the image app builds');
  const first = serviceConfig('app').config;
  const other = serviceConfig('app-2').config;
  for (const key of ['databaseUrl', 'ingestQueue', 'redisUrl', 'redisChannelPrefix', 'migrateOnStart', 'port'] as const)
    assert.deepEqual(other[key], first[key], `app-2 and app must agree on ${key}`);
  assert.equal(new URL(first.redisUrl ?? '').hostname, 'redis', 'REDIS_URL must point at the redis service');
  assert.equal(serviceConfig('worker').config.redisUrl, first.redisUrl, 'the worker wakes the instances through Redis');
  for (const name of ['app', 'app-2', 'worker']) assert.equal(dependsOn(service(name)).get('redis'), 'service_healthy');
  const hostPorts = [...portsOf(service('app')), ...portsOf(second)].map((p) => Number(p.host));
  assert.equal(new Set(hostPorts).size, hostPorts.length, 'the instances publish different host ports');
  assert.deepEqual(commandOf(service('redis').command).slice(0, 1), ['redis-server']);
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
  assert.equal(
    asObject(migrate.healthcheck ?? {}, 'migrate.healthcheck').disable,
    true,
    'migrate must disable the image health check',
  );

  const shutdownMs = serviceConfig('app').config.shutdownTimeoutMs;
  const graceMs = app.stop_grace_period === undefined ? 10_000 : durationMs(app.stop_grace_period);
  assert.ok(
    graceMs > shutdownMs,
    `app stop_grace_period (${graceMs} ms) must exceed SHUTDOWN_TIMEOUT_MS (${shutdownMs} ms), ` +
      'or Docker kills the service mid-drain',
  );
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
    assert.equal(
      decodeURIComponent(url.username),
      dbEnv.get('POSTGRES_USER'),
      `${name}: user differs from POSTGRES_USER`,
    );
    assert.equal(
      decodeURIComponent(url.password),
      dbEnv.get('POSTGRES_PASSWORD'),
      `${name}: password differs from POSTGRES_PASSWORD`,
    );
    assert.equal(url.pathname.slice(1), dbEnv.get('POSTGRES_DB'), `${name}: database differs from POSTGRES_DB`);
  }
  assert.equal(dbEnv.get('POSTGRES_DB'), 'metrics');

  const check = commandOf(asObject(db.healthcheck, 'db.healthcheck').test);
  assert.ok(
    check.some((w) => w.includes('pg_isready')),
    'db healthcheck must use pg_isready',
  );
  const flag = (f: string) => check[check.indexOf(f) + 1];
  if (check.includes('-U')) assert.equal(flag('-U'), dbEnv.get('POSTGRES_USER'));
  if (check.includes('-d')) assert.equal(flag('-d'), dbEnv.get('POSTGRES_DB'));

  // postgres:18 and later keep data under /var/lib/postgresql/<major>/docker and want the volume on
  // /var/lib/postgresql.
  const dataPath = major >= 18 ? '/var/lib/postgresql' : '/var/lib/postgresql/data';
  const volume = volumesOf(db).find((v) => v.target.replace(/\/$/, '') === dataPath);
  assert.ok(
    volume && !volume.source.startsWith('.'),
    `db must keep its data in a named volume on ${dataPath} (postgres:${major})`,
  );
});

test('pgAdmin: desktop mode, the compose database pre-registered, its password from a pgpass file it accepts', () => {
  const pgadmin = service('pgadmin');
  assert.match(String(pgadmin.image), /^(?:docker\.io\/)?dpage\/pgadmin4(?::|$)/);
  const env = environmentOf(pgadmin);
  // Written verbatim into pgAdmin's Python config, and compared with "False" by the image's entrypoint.
  assert.equal(env.get('PGADMIN_CONFIG_SERVER_MODE'), 'False');
  assert.equal(env.get('PGADMIN_CONFIG_MASTER_PASSWORD_REQUIRED'), 'False');
  const email = env.get('PGADMIN_DEFAULT_EMAIL') ?? '';
  assert.match(
    email,
    /^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i,
    'PGADMIN_DEFAULT_EMAIL is required by the image and must look like an address',
  );
  assert.ok(
    !/\.(local|localhost|test|invalid|arpa|onion)$/i.test(email),
    `pgAdmin refuses special-use domains: ${email}`,
  );
  assert.ok(env.get('PGADMIN_DEFAULT_PASSWORD'), 'PGADMIN_DEFAULT_PASSWORD is required by the image');
  const listenPort = env.get('PGADMIN_LISTEN_PORT') ?? '80';
  assert.ok(
    portsOf(pgadmin).some((p) => p.host === '5050' && p.container === listenPort),
    'pgAdmin on host port 5050',
  );

  const mounts = volumesOf(pgadmin);
  const mountedReadOnly = (file: string, target: string) =>
    mounts.some((m) => m.target === target && m.readOnly && m.source.replace(/^\.\//, '') === file);
  const serversFile = env.get('PGADMIN_SERVER_JSON_FILE') ?? '/pgadmin4/servers.json';
  assert.ok(
    mountedReadOnly('docker/pgadmin/servers.json', serversFile),
    `docker/pgadmin/servers.json must be mounted read-only at ${serversFile}`,
  );
  const pgpassFile = env.get('PGPASS_FILE');
  assert.ok(
    pgpassFile,
    'PGPASS_FILE: the image copies it to a 0600 file libpq accepts (a bind mount keeps the host mode)',
  );
  assert.ok(
    mountedReadOnly('docker/pgadmin/pgpass', pgpassFile),
    `docker/pgadmin/pgpass must be mounted read-only at ${pgpassFile}`,
  );
  assert.ok(
    mounts.some((m) => m.target === '/var/lib/pgadmin' && !m.source.startsWith('.')),
    'pgAdmin state in a named volume',
  );

  const db = service('db');
  const dbEnv = environmentOf(db);
  const servers = Object.values(
    asObject(asObject(JSON.parse(read('docker/pgadmin/servers.json')), 'servers.json').Servers, 'Servers'),
  );
  assert.equal(servers.length, 1);
  const server = asObject(servers[0], 'server');
  for (const key of ['Name', 'Group', 'Port', 'Username', 'MaintenanceDB', 'Host'])
    assert.ok(server[key] !== undefined, `servers.json needs ${key}`);
  assert.ok(services[String(server.Host)] === db, `servers.json Host ${server.Host} must be the compose db service`);
  assert.equal(server.Port, 5432, 'servers.json Port must be an integer: the port db listens on');
  assert.equal(server.MaintenanceDB, dbEnv.get('POSTGRES_DB'));
  assert.equal(server.Username, dbEnv.get('POSTGRES_USER'));
  // In desktop mode the entrypoint copies PGPASS_FILE to /var/lib/pgadmin/.pgpass, and PassFile paths are absolute.
  const params = asObject(server.ConnectionParameters ?? {}, 'ConnectionParameters');
  assert.equal(params.passfile ?? server.PassFile, '/var/lib/pgadmin/.pgpass');

  // libpq's pgpass format: host:port:database:user:password, `*` matching anything.
  const entries = read('docker/pgadmin/pgpass')
    .split('\n')
    .filter((l) => l.trim() !== '' && !l.startsWith('#'))
    .map((l) => l.split(':'));
  const fits = (field: string | undefined, value: unknown) => field === '*' || field === String(value);
  const matching = entries.find(
    ([host, port, database, user]) =>
      fits(host, server.Host) &&
      fits(port, server.Port) &&
      fits(database, server.MaintenanceDB) &&
      fits(user, server.Username),
  );
  assert.ok(matching, 'docker/pgadmin/pgpass has no line for the registered server');
  assert.equal(
    matching.slice(4).join(':'),
    dbEnv.get('POSTGRES_PASSWORD'),
    'the pgpass password differs from POSTGRES_PASSWORD',
  );
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
  assert.equal(serviceConfig('first-key').config.migrateOnStart, false);
});

test('compose app: introspection on where GraphiQL is on (its docs pane and completion need it)', () => {
  const { config } = serviceConfig('app');
  assert.equal(config.graphiql, true);
  assert.equal(config.introspection, true, 'GraphiQL without introspection has empty docs');
});

test('the image has the tools on PATH as metrics-service, and their npm scripts run without sources', () => {
  const text = runtime.instructions.map(String).join('\n');
  assert.match(text, /ln -s \/app\/dist\/cli\/main\.js \/usr\/local\/bin\/metrics-service/);
  assert.equal(pkg.bin?.['metrics-service'], `${OUT_DIR}/cli/main.js`);
  assert.match(
    read('src/cli/main.ts'),
    /^#!\/usr\/bin\/env node/,
    'the entry point needs its shebang to run as metrics-service',
  );
  for (const [name, script] of Object.entries(pkg.scripts)) {
    if (!/^node scripts\/cli\.mjs /.test(script)) continue;
    assert.ok(
      inPlace(runtime, 'scripts/cli.mjs') && inPlace(runtime, 'scripts/build.mjs'),
      `npm run ${name} needs scripts/cli.mjs and scripts/build.mjs in the image`,
    );
  }
  assert.doesNotMatch(text, /\btsx\b/, 'no tsx at run time');
});
