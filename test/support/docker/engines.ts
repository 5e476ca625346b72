/**
 * Whether an `engines.node` range admits a Node major. No semver library is a dependency of this project, and the
 * ranges npm packages use for engines are few: comparators, `^`, `~`, `x`, `*` and `||`.
 */

/** Judged on the newest release of `major`, since the image tracks the newest minor. */
export function admitsMajor(range: string, major: number): boolean {
  const version: [number, number, number] = [major, 999, 999];
  const cmp = (a: number[], b: number[]) =>
    (a[0] ?? 0) - (b[0] ?? 0) || (a[1] ?? 0) - (b[1] ?? 0) || (a[2] ?? 0) - (b[2] ?? 0);
  return range.split('||').some((alternative) => {
    const comparators = alternative
      .trim()
      .replace(/([<>=^~]+)\s+/g, '$1')
      .split(/\s+/)
      .filter(Boolean);
    return comparators.every((comparator) => {
      const [, op = '', raw = ''] = /^(>=|<=|>|<|\^|~|=)?(.*)$/.exec(comparator) ?? [];
      const parts = raw
        .replace(/^v/, '')
        .split('.')
        .map((p) => (p === 'x' || p === '*' ? Number.NaN : Number(p)));
      if (Number.isNaN(parts[0])) return true; // `*`
      const low = [0, 1, 2].map((i) => (Number.isNaN(parts[i]) ? 0 : (parts[i] ?? 0)));
      switch (op) {
        case '>=':
          return cmp(version, low) >= 0;
        case '>':
          return cmp(version, low) > 0;
        case '<':
          return cmp(version, low) < 0;
        case '<=':
          return cmp(version, low) <= 0;
        case '^':
          return version[0] === low[0] && cmp(version, low) >= 0;
        case '~':
          return version[0] === low[0] && (parts[1] === undefined || Number.isNaN(parts[1]) || version[1] === low[1]);
        default:
          return version[0] === low[0];
      }
    });
  });
}
