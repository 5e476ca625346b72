/**
 * A Dockerfile as build stages, read with dockerfile-ast (the parser of the VS Code Docker language server). Only the
 * questions the checks ask are answered here: environment, working directory, copies, commands.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { DockerfileParser, Env, Healthcheck, type Instruction, ModifiableInstruction } from 'dockerfile-ast';

export interface Stage {
  name: string | undefined;
  /** The image, build arguments substituted. */
  image: string;
  instructions: Instruction[];
}

export interface CopyStep {
  /** The stage or image of `--from=`; undefined for the build context. */
  from: string | undefined;
  sources: string[];
  dest: string;
  /** The WORKDIR that `dest` is relative to. */
  workdir: string;
  line: number;
}

/** 1-based, as editors and `docker build` number lines. */
export const lineOf = (ins: Instruction): number => ins.getRange().start.line + 1;

export function parseDockerfile(text: string): Stage[] {
  const ast = DockerfileParser.parse(text);
  const froms = ast.getFROMs();
  assert.ok(froms.length > 0, 'Dockerfile has no FROM');
  const firstFrom = lineOf(froms[0] as Instruction);
  for (const ins of ast.getInstructions().filter((i) => lineOf(i) < firstFrom)) {
    assert.equal(ins.getKeyword(), 'ARG', `Dockerfile:${lineOf(ins)}: only ARG may come before the first FROM`);
  }
  return froms.map((from) => ({
    name: from.getBuildStage() ?? undefined,
    image: from.getExpandedArguments()[0]?.getValue() ?? '',
    instructions: ast.getContainingImage(from.getRange().start)?.getInstructions() ?? [],
  }));
}

export const instructionsOf = (stage: Stage, keyword: string): Instruction[] =>
  stage.instructions.filter((ins) => ins.getKeyword() === keyword);
export const lastOf = (stage: Stage, keyword: string): Instruction | undefined => instructionsOf(stage, keyword).at(-1);

/**
 * The arguments of the exec form `["a", "b"]`, or undefined for the shell form. Parsed as JSON, as Docker does:
 * dockerfile-ast 0.7.1's getJSONStrings() drops the spaces inside a string (`"npm run y"` becomes `npmruny`).
 */
export function execForm(ins: Instruction, content = ins.getArgumentsContent() ?? ''): string[] | undefined {
  if (!content.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(content);
  assert.ok(
    Array.isArray(parsed) && parsed.every((p) => typeof p === 'string'),
    `Dockerfile:${lineOf(ins)}: not a JSON array of strings`,
  );
  return parsed;
}

/** Exec-form arguments, or the shell form's words. */
export const wordsOf = (ins: Instruction): string[] => execForm(ins) ?? ins.getArguments().map((a) => a.getValue());

export const flagsOf = (ins: Instruction): Map<string, string> =>
  new Map(ins instanceof ModifiableInstruction ? ins.getFlags().map((f) => [f.getName(), f.getValue() ?? '']) : []);

export function envOf(stage: Stage): Map<string, string> {
  const env = new Map<string, string>();
  for (const ins of stage.instructions.filter((i) => i instanceof Env)) {
    for (const p of ins.getProperties()) env.set(p.getName(), p.getValue() ?? '');
  }
  return env;
}

export function workdirOf(stage: Stage, beforeLine = Infinity): string {
  return instructionsOf(stage, 'WORKDIR')
    .filter((ins) => lineOf(ins) < beforeLine)
    .reduce((dir, ins) => path.posix.resolve(dir, ins.getArgumentsContent() ?? ''), '/');
}

/** RUN instructions, their command line without flags such as `--mount`. */
export const runsOf = (stage: Stage): Array<{ line: number; command: string }> =>
  instructionsOf(stage, 'RUN').map((ins) => ({
    line: lineOf(ins),
    command: execForm(ins)?.join(' ') ?? ins.getArgumentsContent() ?? '',
  }));

export function copiesOf(stage: Stage): CopyStep[] {
  return stage.instructions
    .filter((ins) => ins.getKeyword() === 'COPY' || ins.getKeyword() === 'ADD')
    .map((ins) => {
      const parts = wordsOf(ins);
      assert.ok(parts.length >= 2, `Dockerfile:${lineOf(ins)}: COPY needs a source and a destination`);
      const from = flagsOf(ins).get('from');
      return {
        from,
        sources: parts.slice(0, -1),
        dest: parts.at(-1) ?? '',
        workdir: workdirOf(stage, lineOf(ins)),
        line: lineOf(ins),
      };
    });
}

/** The image's health check: its `--interval=`-style options and the exec-form command (undefined for shell form). */
export function healthcheckOf(stage: Stage): { flags: Map<string, string>; command: string[] | undefined } | undefined {
  const ins = lastOf(stage, 'HEALTHCHECK');
  if (!(ins instanceof Healthcheck)) return undefined;
  assert.equal(
    ins.getSubcommand()?.getValue().toUpperCase(),
    'CMD',
    'HEALTHCHECK must be HEALTHCHECK [options] CMD ...',
  );
  return { flags: flagsOf(ins), command: execForm(ins, (ins.getArgumentsContent() ?? '').replace(/^\S+\s*/, '')) };
}

const clean = (source: string): string => path.posix.normalize(source).replace(/\/$/, '');

/** Where a file or folder of the build context lands in the image through one COPY (Docker's rules for `dest`). */
function landing(copy: CopyStep, source: string, isDir: (file: string) => boolean): string {
  const s = clean(source);
  if (s === '.' || isDir(s)) return path.posix.resolve(copy.workdir, copy.dest);
  if (copy.dest.endsWith('/') || copy.sources.length > 1)
    return path.posix.resolve(copy.workdir, copy.dest, path.posix.basename(s));
  return path.posix.resolve(copy.workdir, copy.dest);
}

/** True when `file` of the build context is at WORKDIR/file in the image before line `beforeLine`. */
export function copiedInPlace(
  stage: Stage,
  file: string,
  beforeLine: number,
  isDir: (file: string) => boolean,
): boolean {
  const wanted = path.posix.normalize(file);
  return copiesOf(stage).some(
    (copy) =>
      copy.from === undefined &&
      copy.line < beforeLine &&
      copy.sources.some((source) => {
        const s = clean(source);
        const covers = s === '.' || s === wanted || wanted.startsWith(`${s}/`);
        return covers && landing(copy, source, isDir) === path.posix.resolve(copy.workdir, s);
      }),
  );
}

export interface Command {
  where: string;
  words: string[];
}

/** Every command line the stages run (RUN split at `&&`, `||`, `;` and heredoc lines; CMD; ENTRYPOINT; HEALTHCHECK). */
export function commandsOf(stages: Stage[]): Command[] {
  return stages.flatMap((stage) => {
    const runs = runsOf(stage).flatMap(({ line, command }) =>
      command.split(/&&|\|\||;|\n/).map((part) => ({ where: `Dockerfile:${line}`, words: part.trim().split(/\s+/) })),
    );
    const starts = [...instructionsOf(stage, 'CMD'), ...instructionsOf(stage, 'ENTRYPOINT')].map((ins) => ({
      where: `Dockerfile:${lineOf(ins)}`,
      words: wordsOf(ins),
    }));
    // The probe's script is not a command line; `node -e` is what it runs.
    const probe = healthcheckOf(stage)?.command?.slice(0, 2);
    return [...runs, ...starts, ...(probe ? [{ where: 'Dockerfile HEALTHCHECK', words: probe }] : [])];
  });
}
