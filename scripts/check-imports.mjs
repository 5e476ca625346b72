#!/usr/bin/env node
// The house rules Biome cannot check: which file may import which (the layers below), no import cycles, and no line
// over 120 characters in src/ (the formatter wraps code, but not comments or strings).
//
//   node scripts/check-imports.mjs          checks this project
//   node scripts/check-imports.mjs DIR      checks the project in DIR (its src/), as test/house.test.ts does
//
// Prints one line per violation (file:line, the import, why) and exits 1 if there is any, 0 if there is none.
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/**
 * The layers, top to bottom: data flows downwards. A file may import a file of its own entry (the same folder, or
 * itself), or an entry of a LOWER layer; never a higher layer, and never another entry on its own layer. A path ending
 * in `/` is a folder with everything under it. Every file under src/ must be in one entry: a new room is placed here.
 */
const LAYERS = [
  { layer: 1, paths: ['src/main.ts', 'src/cli/'] },
  { layer: 2, paths: ['src/app.ts'] },
  { layer: 3, paths: ['src/server.ts', 'src/worker.ts'] },
  { layer: 4, paths: ['src/http/'] },
  { layer: 5, paths: ['src/plugins/', 'src/dashboard/'] },
  { layer: 6, paths: ['src/schema/'] },
  { layer: 7, paths: ['src/context.ts', 'src/bulk/'] },
  { layer: 8, paths: ['src/services/'] },
  { layer: 9, paths: ['src/db/', 'src/queue/'] },
  // The metrics registry is imported from every layer, so it depends on nothing of ours: not even the logger.
  { layer: 10, paths: ['src/observability/'], importsNothingOfOurs: true },
  { layer: 11, paths: ['src/logger.ts'] },
  { layer: 12, paths: ['src/config.ts', 'src/generated/'] },
];

/** Generated code is neither read for its imports nor held to the line length; it may still be imported. */
const GENERATED = 'src/generated/';
const MAX_LINE = 120;
const SOURCE = /\.(?:[cm]?ts|tsx|[cm]?js|jsx)$/;
/** What the line-length check reads: the files Biome formats (HTML it does not). */
const LINE_CHECKED = /\.(?:[cm]?ts|tsx|[cm]?js|jsx|css)$/;

const root = path.resolve(process.argv[2] ?? path.join(import.meta.dirname, '..'));
if (!fs.existsSync(path.join(root, 'src'))) {
  console.error(`check-imports: ${root} has no src/ folder`);
  process.exit(2);
}

/** The project-relative path with forward slashes: how the table and every message name a file. */
const rel = (file) => path.relative(root, file).split(path.sep).join('/');

function entryOf(file) {
  const name = rel(file);
  for (const row of LAYERS) {
    for (const entry of row.paths) {
      if (entry.endsWith('/') ? name.startsWith(entry) : name === entry) return { ...row, entry };
    }
  }
  return undefined;
}

const describe = (e) => `${e.entry} (L${e.layer})`;

function walk(dir) {
  const out = [];
  for (const item of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, item.name);
    if (item.isDirectory()) {
      if (item.name !== 'node_modules') out.push(...walk(full));
    } else if (item.isFile()) out.push(full);
  }
  return out;
}

const files = walk(path.join(root, 'src'))
  .filter((file) => !rel(file).startsWith(GENERATED))
  .sort();

/**
 * Every module a file names, static or dynamic, type-only or not: import and export declarations, `import x =
 * require()`, `import('...')` and `require('...')` with a literal, and `import('...')` types.
 */
function importsOf(file) {
  const text = fs.readFileSync(file, 'utf8');
  const kind = /\.[cm]?js$|\.jsx$/.test(file) ? ts.ScriptKind.JS : ts.ScriptKind.TS;
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, kind);
  const found = [];
  const add = (node, specifier, typeOnly) => {
    const line = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
    const source = node.getText(sf).replace(/\s+/g, ' ');
    found.push({ line, specifier, typeOnly, source: source.length > 100 ? `${source.slice(0, 97)}...` : source });
  };
  const visit = (node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier) {
      if (ts.isStringLiteral(node.moduleSpecifier)) {
        const typeOnly = ts.isImportDeclaration(node) ? Boolean(node.importClause?.isTypeOnly) : node.isTypeOnly;
        add(node, node.moduleSpecifier.text, typeOnly);
      }
    } else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      const expression = node.moduleReference.expression;
      if (ts.isStringLiteral(expression)) add(node, expression.text, node.isTypeOnly);
    } else if (ts.isCallExpression(node)) {
      const isImport = node.expression.kind === ts.SyntaxKind.ImportKeyword;
      const isRequire = ts.isIdentifier(node.expression) && node.expression.text === 'require';
      const [first] = node.arguments;
      if ((isImport || isRequire) && first && ts.isStringLiteralLike(first)) add(node, first.text, false);
    } else if (ts.isImportTypeNode(node)) {
      const argument = node.argument;
      if (ts.isLiteralTypeNode(argument) && ts.isStringLiteral(argument.literal))
        add(node, argument.literal.text, true);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/**
 * The file a relative specifier names, as Node's ESM resolution with TypeScript sources finds it: `./x.js` is
 * `./x.ts` on disk. Bare specifiers (packages, `node:` modules) are not ours: undefined.
 */
function resolve(from, specifier) {
  if (!specifier.startsWith('./') && !specifier.startsWith('../')) return undefined;
  const base = path.resolve(path.dirname(from), specifier);
  const swapped = base
    .replace(/\.js$/, '.ts')
    .replace(/\.mjs$/, '.mts')
    .replace(/\.cjs$/, '.cts')
    .replace(/\.jsx$/, '.tsx');
  const candidates = [
    base,
    swapped,
    `${base}.ts`,
    `${base}.tsx`,
    path.join(base, 'index.ts'),
    path.join(base, 'index.js'),
  ];
  const existing = candidates.find((candidate) => fs.existsSync(candidate) && fs.statSync(candidate).isFile());
  return { file: existing ?? swapped, exists: existing !== undefined };
}

/** Each kind printed together, in this order: a long line is less news than an arrow against the flow. */
const violations = { layer: [], cycle: [], line: [] };
const report = (kind, file, line, message) => violations[kind].push(`${rel(file)}:${line}: ${message}`);
/** src file -> the src files it imports, with whether every import of that pair is type-only (for the cycle report). */
const graph = new Map();

for (const file of files) {
  const own = entryOf(file);
  const against = (line, why) => report('layer', file, line, why);
  if (!own) against(1, `${rel(file)} is in no layer: add it to the table at the top of scripts/check-imports.mjs`);
  const edges = new Map();
  graph.set(file, edges);
  if (!SOURCE.test(file)) continue;
  for (const found of importsOf(file)) {
    const target = resolve(file, found.specifier);
    const targetName = target && rel(target.file);
    if (!targetName?.startsWith('src/')) continue;
    if (target.exists && targetName !== rel(file)) {
      edges.set(target.file, (edges.get(target.file) ?? true) && found.typeOnly);
    }
    const theirs = entryOf(target.file);
    const at = `${found.source} -> ${targetName}`;
    if (!own || theirs?.entry === own.entry) {
      // An unplaced file is reported once, above; its own folder (or file) is always allowed.
    } else if (!theirs) {
      against(found.line, `${at}: ${targetName} is in no layer of the table`);
    } else if (own.importsNothingOfOurs) {
      against(found.line, `${at}: ${describe(own)} imports nothing of ours (it is imported from every layer)`);
    } else if (theirs.layer < own.layer) {
      against(found.line, `${at}: ${describe(own)} may not import ${describe(theirs)}, a higher layer`);
    } else if (theirs.layer === own.layer) {
      against(
        found.line,
        `${at}: ${own.entry} and ${theirs.entry} are siblings on L${own.layer}: neither imports the other`,
      );
    }
  }
}

for (const file of files) {
  if (!LINE_CHECKED.test(file)) continue;
  const lines = fs.readFileSync(file, 'utf8').split(/\r?\n/);
  lines.forEach((line, index) => {
    const length = [...line].length;
    if (length > MAX_LINE) {
      report(
        'line',
        file,
        index + 1,
        `line of ${length} characters, over ${MAX_LINE} (the formatter wraps code, not comments or strings)`,
      );
    }
  });
}

// Import cycles: the strongly connected components of the graph (Tarjan), each printed as one cycle through it.
const cycles = [];
{
  let counter = 0;
  const index = new Map();
  const low = new Map();
  const stack = [];
  const onStack = new Set();
  const strongConnect = (node) => {
    index.set(node, counter);
    low.set(node, counter);
    counter += 1;
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node)?.keys() ?? []) {
      if (!graph.has(next)) continue;
      if (!index.has(next)) {
        strongConnect(next);
        low.set(node, Math.min(low.get(node), low.get(next)));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node), index.get(next)));
      }
    }
    if (low.get(node) === index.get(node)) {
      const component = [];
      let member;
      do {
        member = stack.pop();
        onStack.delete(member);
        component.push(member);
      } while (member !== node);
      if (component.length > 1) cycles.push(component.sort());
    }
  };
  for (const file of files) if (!index.has(file)) strongConnect(file);
}

/** The shortest way back to `start` inside its component (breadth first), as a list of files from start to start. */
function cycleThrough(start, members) {
  const inside = new Set(members);
  const previous = new Map([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const node = queue.shift();
    for (const next of graph.get(node).keys()) {
      if (next === start) {
        const chain = [start];
        for (let at = node; at !== start; at = previous.get(at)) chain.splice(1, 0, at);
        return [...chain, start];
      }
      if (inside.has(next) && !previous.has(next)) {
        previous.set(next, node);
        queue.push(next);
      }
    }
  }
  return [start, start];
}

for (const members of cycles) {
  const chain = cycleThrough(members[0], members);
  const shown = chain
    .map((file, i) => (i === 0 ? '' : graph.get(chain[i - 1]).get(file) ? ' -(type only)-> ' : ' -> ') + rel(file))
    .join('');
  const rest = members.filter((file) => !chain.includes(file)).map(rel);
  const also = rest.length > 0 ? `; the same knot also holds ${rest.join(', ')}` : '';
  report('cycle', members[0], 1, `import cycle: ${shown}${also}`);
}

const all = [...violations.layer, ...violations.cycle, ...violations.line];
for (const line of all) console.log(line);
if (all.length > 0) {
  const { layer, cycle, line } = violations;
  const counts = `${layer.length} against the layers, ${cycle.length} cycle(s), ${line.length} line(s) too long`;
  console.log(`check-imports: ${counts} in ${files.length} files`);
  process.exit(1);
}
console.log(`check-imports: ${files.length} files, imports follow the layers, no cycle, no line over ${MAX_LINE}`);
