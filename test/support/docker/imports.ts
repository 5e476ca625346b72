/**
 * The npm packages a program's modules import, following its relative imports from the entry points. Each module
 * is transpiled as tsc would, so that imports used only as types (gone from the compiled code) do not count.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import ts from 'typescript';

/** Each package imported, with one module that imports it. `entries` and the result are relative to `root`. */
export function packagesImportedBy(root: string, entries: string[]): Map<string, string> {
  const exists = (file: string) => fs.existsSync(path.join(root, file));
  const packages = new Map<string, string>();
  const seen = new Set<string>();
  const queue = [...entries];
  for (let file = queue.pop(); file !== undefined; file = queue.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    const js = ts.transpileModule(fs.readFileSync(path.join(root, file), 'utf8'), {
      fileName: file,
      compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, isolatedModules: true },
    }).outputText;
    for (const { fileName: spec } of ts.preProcessFile(js, true, true).importedFiles) {
      if (spec.startsWith('.')) {
        const base = path.posix.join(path.posix.dirname(file), spec).replace(/\.(m|c)?js$/, '');
        const target = ['.ts', '.mts', '.tsx', '.js', '.mjs'].map((ext) => base + ext).find(exists);
        assert.ok(
          target,
          `${file} imports ${spec}, which does not exist (is the Prisma client generated? npm run generate)`,
        );
        queue.push(target);
      } else if (!isBuiltin(spec)) {
        const [scope = '', name = ''] = spec.split('/');
        packages.set(scope.startsWith('@') ? `${scope}/${name}` : scope, file);
      }
    }
  }
  return packages;
}
