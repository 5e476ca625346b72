/**
 * A docker-compose.yml read with `yaml`, and the Compose specification's short and long syntaxes (environment,
 * ports, volumes, depends_on, durations) brought to one shape, so that a check reads the same either way.
 */
import assert from 'node:assert/strict';
import { parse } from 'yaml';

export type Json = Record<string, unknown>;

export function asObject(value: unknown, what: string): Json {
  assert.ok(value !== null && typeof value === 'object' && !Array.isArray(value), `${what} must be a mapping`);
  return value as Json;
}

/** `<<:` merge keys are in the Compose specification, which YAML 1.2 alone does not have. */
export const parseCompose = (text: string): Json => asObject(parse(text, { merge: true }), 'docker-compose.yml');

export function environmentOf(service: Json): Map<string, string> {
  const raw = service.environment ?? {};
  if (Array.isArray(raw)) {
    return new Map(
      raw.map((item) => {
        const [key = '', ...value] = String(item).split('=');
        return [key, value.join('=')];
      }),
    );
  }
  return new Map(Object.entries(asObject(raw, 'environment')).map(([k, v]) => [k, v === null ? '' : String(v)]));
}

export function commandOf(value: unknown): string[] {
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) return value.map(String);
  return String(value).split(/\s+/).filter(Boolean);
}

/** Compose durations: `30s`, `1m30s`, `500ms`. */
export function durationMs(value: unknown): number {
  const text = String(value);
  const units: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(us|ms|s|m|h)/g)];
  assert.ok(parts.length > 0 && parts.map((m) => m[0]).join('') === text, `cannot parse duration ${text}`);
  return parts.reduce((total, m) => total + Number(m[1]) * (units[m[2] ?? ''] ?? Number.NaN), 0);
}

export interface PortMapping {
  host: string | undefined;
  hostIp: string | undefined;
  container: string;
}

export function portsOf(service: Json): PortMapping[] {
  return ((service.ports as unknown[] | undefined) ?? []).map((entry) => {
    if (typeof entry === 'object' && entry !== null) {
      const long = entry as Json;
      return { host: long.published?.toString(), hostIp: long.host_ip?.toString(), container: String(long.target) };
    }
    const parts = String(entry)
      .replace(/\/(tcp|udp)$/, '')
      .split(':');
    const container = parts.pop() ?? '';
    const host = parts.pop();
    return { host, hostIp: parts.pop(), container };
  });
}

/** Each service depended on, with its condition (`service_started` for the list form). */
export function dependsOn(service: Json): Map<string, string> {
  const raw = service.depends_on ?? {};
  if (Array.isArray(raw)) return new Map(raw.map((name) => [String(name), 'service_started']));
  return new Map(
    Object.entries(asObject(raw, 'depends_on')).map(([name, spec]) => [
      name,
      String(asObject(spec, name).condition ?? 'service_started'),
    ]),
  );
}

export interface Mount {
  source: string;
  target: string;
  readOnly: boolean;
}

/** Volumes in the short (`source:target[:mode]`) or long syntax. */
export function volumesOf(service: Json): Mount[] {
  return ((service.volumes as unknown[] | undefined) ?? []).map((entry) => {
    if (typeof entry === 'object' && entry !== null) {
      const long = entry as Json;
      return { source: String(long.source ?? ''), target: String(long.target), readOnly: long.read_only === true };
    }
    const [source = '', target = '', mode = ''] = String(entry).split(':');
    return { source, target, readOnly: mode.split(',').includes('ro') };
  });
}

/** Every service's `command` and `entrypoint`, as words. */
export function composeCommands(services: Json): Array<{ where: string; words: string[] }> {
  return Object.entries(services).flatMap(([name, service]) =>
    ['command', 'entrypoint']
      .map((key) => ({ where: `compose ${name}.${key}`, value: asObject(service, name)[key] }))
      .filter(({ value }) => value !== undefined)
      .map(({ where, value }) => ({ where, words: commandOf(value) })),
  );
}
