/**
 * Docker's reading of .dockerignore (moby/patternmatcher): `*`, `?` and `**` globs, `!` exceptions, the last
 * matching pattern wins, and a pattern that matches a folder matches everything inside it.
 */
import path from 'node:path';

export const ignorePatterns = (text: string): string[] =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));

function globToRegExp(pattern: string): RegExp {
  let source = '';
  for (let i = 0; i < pattern.length; ) {
    if (pattern.startsWith('**/', i)) [source, i] = [`${source}(?:.*/)?`, i + 3];
    else if (pattern.startsWith('**', i)) [source, i] = [`${source}.*`, i + 2];
    else if (pattern[i] === '*') [source, i] = [`${source}[^/]*`, i + 1];
    else if (pattern[i] === '?') [source, i] = [`${source}[^/]`, i + 1];
    else [source, i] = [source + (pattern[i] ?? '').replace(/[.+^${}()|[\]\\]/g, '\\$&'), i + 1];
  }
  return new RegExp(`^${source}$`);
}

export function dockerIgnored(patterns: string[], file: string): boolean {
  const segments = file.split('/');
  let ignored = false;
  for (const raw of patterns) {
    const negate = raw.startsWith('!');
    const regex = globToRegExp(path.posix.normalize((negate ? raw.slice(1) : raw).replace(/^\//, '')));
    if (segments.some((_, i) => regex.test(segments.slice(0, i + 1).join('/')))) ignored = !negate;
  }
  return ignored;
}
