/**
 * API keys: creation (the key is returned once and never stored), listing, revocation, and the lookup that
 * authenticates a request.
 *
 * A key is `mk_` followed by 43 base64url characters (32 random bytes). The database keeps only its SHA-256: a key of
 * 256 random bits cannot be guessed from its hash, so no slow password hash is needed, and a lookup is one index probe.
 * The public id is the prefix and the first 8 characters of the secret (`mk_Ab3dE9xQ`): enough for a person to tell
 * which of their keys a listing means, far too little to help guess the rest.
 */
import crypto from 'node:crypto';
import { database } from '../db/client.js';
import { classifyDatabaseError } from '../db/errors.js';
import { checkStorableText, InputError } from './errors.js';

export const SCOPES = ['ingest', 'read', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

export const KEY_PREFIX = 'mk_';
const SECRET_BYTES = 32;
/** base64url of 32 bytes, unpadded. */
const SECRET_LENGTH = 43;
const ID_SECRET_CHARS = 8;
const KEY_PATTERN = new RegExp(`^${KEY_PREFIX}[A-Za-z0-9_-]{${SECRET_LENGTH}}$`);
export const NAME_MAX_LENGTH = 100;
/** last_used_at is written at most this often per key: a write per request would double the cost of reads. */
export const LAST_USED_RESOLUTION_MS = 60_000;

export interface ApiKeyInfo {
  /** Public id, e.g. `mk_Ab3dE9xQ`. */
  id: string;
  name: string;
  scopes: Scope[];
  createdAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

/** A key that authenticated a request. */
export interface Caller {
  /** The key's public id; null for an anonymous caller (authentication off). */
  keyId: string | null;
  name: string | null;
  scopes: readonly Scope[];
}

/** Every scope: what an anonymous caller may do while authentication is off. */
export const ANONYMOUS: Caller = { keyId: null, name: null, scopes: SCOPES };

/** `admin` implies `ingest` and `read`. */
export function hasScope(scopes: readonly Scope[], needed: Scope): boolean {
  return scopes.includes(needed) || scopes.includes('admin');
}

export function isScope(value: string): value is Scope {
  return (SCOPES as readonly string[]).includes(value);
}

/** True when `value` has the shape of a key this service issues (checked before any database lookup). */
export function looksLikeApiKey(value: string): boolean {
  return KEY_PATTERN.test(value);
}

/** SHA-256 of the key, as hex: passed to SQL as text and decoded there (both database drivers agree on text). */
export function hashKey(key: string): string {
  return crypto.createHash('sha256').update(key, 'utf8').digest('hex');
}

function checkName(name: string): string {
  const trimmed = name.trim();
  if (trimmed.length === 0) throw new InputError('name must not be blank', 'name');
  if ([...trimmed].length > NAME_MAX_LENGTH)
    throw new InputError(`name must be at most ${NAME_MAX_LENGTH} characters`, 'name');
  // biome-ignore lint/suspicious/noControlCharactersInRegex: rejecting control characters is the point.
  if (/[\u0000-\u001f\u007f]/.test(trimmed)) throw new InputError('name must not contain control characters', 'name');
  return checkStorableText(trimmed, 'name');
}

function checkScopes(scopes: readonly string[]): Scope[] {
  if (scopes.length === 0) throw new InputError(`give at least one scope: ${SCOPES.join(', ')}`, 'scopes');
  const unknown = scopes.filter((s) => !isScope(s));
  if (unknown.length > 0) {
    throw new InputError(
      `unknown scope ${unknown.map((s) => JSON.stringify(s)).join(', ')}; scopes are ${SCOPES.join(', ')}`,
      'scopes',
    );
  }
  return SCOPES.filter((s) => scopes.includes(s));
}

interface ApiKeyRow {
  id: string;
  name: string;
  scopes: string[] | null;
  createdAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

function toInfo(row: ApiKeyRow): ApiKeyInfo {
  return { ...row, scopes: (row.scopes ?? []).filter(isScope) };
}

export interface CreatedApiKey {
  /** The key itself: shown to its owner once, never stored. */
  key: string;
  info: ApiKeyInfo;
}

/** Databases this process created a key in. */
const databasesWithKeys = new WeakSet<object>();

/** True when this process created a key in the connected database: the auth policy switches on without asking it. */
export function apiKeyCreatedInThisProcess(): boolean {
  return databasesWithKeys.has(database());
}

export async function createApiKey(input: { name: string; scopes: readonly string[] }): Promise<CreatedApiKey> {
  const name = checkName(input.name);
  const scopes = checkScopes(input.scopes);
  const prisma = database().prisma;
  // Two keys sharing their first 8 characters (48 bits) is unlikely but possible: the primary key catches it; draw
  // again.
  for (let attempt = 0; ; attempt++) {
    const key = KEY_PREFIX + crypto.randomBytes(SECRET_BYTES).toString('base64url');
    const id = key.slice(0, KEY_PREFIX.length + ID_SECRET_CHARS);
    const [row] = await prisma.$queryRaw<ApiKeyRow[]>`
      INSERT INTO api_keys (id, name, secret_hash, scopes)
      VALUES (${id}, ${name}, decode(${hashKey(key)}, 'hex'), ${scopes}::text[])
      ON CONFLICT DO NOTHING
      RETURNING id, name, scopes, created_at AS "createdAt", last_used_at AS "lastUsedAt", revoked_at AS "revokedAt"`;
    if (row) {
      databasesWithKeys.add(database());
      return { key, info: toInfo(row) };
    }
    if (attempt >= 5) throw new Error('Could not draw an unused API key id');
  }
}

/** Every key, newest first, revoked ones included (their rows are kept). */
export async function listApiKeys(): Promise<ApiKeyInfo[]> {
  const rows = await database().prisma.$queryRaw<ApiKeyRow[]>`
    SELECT id, name, scopes, created_at AS "createdAt", last_used_at AS "lastUsedAt", revoked_at AS "revokedAt"
    FROM api_keys ORDER BY created_at DESC, id`;
  return rows.map(toInfo);
}

export interface RevokeResult {
  info: ApiKeyInfo;
  /** False when the key had been revoked before (its revocation time is kept). */
  revokedNow: boolean;
}

/** Revokes a key by its public id; null when there is no such key. Revoking twice keeps the first time. */
export async function revokeApiKey(id: string): Promise<RevokeResult | null> {
  checkStorableText(id, 'id');
  const prisma = database().prisma;
  const [updated] = await prisma.$queryRaw<ApiKeyRow[]>`
    UPDATE api_keys SET revoked_at = now() WHERE id = ${id} AND revoked_at IS NULL
    RETURNING id, name, scopes, created_at AS "createdAt", last_used_at AS "lastUsedAt", revoked_at AS "revokedAt"`;
  if (updated) return { info: toInfo(updated), revokedNow: true };
  const [existing] = await prisma.$queryRaw<ApiKeyRow[]>`
    SELECT id, name, scopes, created_at AS "createdAt", last_used_at AS "lastUsedAt", revoked_at AS "revokedAt"
    FROM api_keys WHERE id = ${id}`;
  return existing ? { info: toInfo(existing), revokedNow: false } : null;
}

/** True once any key was ever created (revoked keys count: revoking the last key must not open the service). */
export async function anyApiKeyExists(): Promise<boolean> {
  // On the driver, as the per-request lookup: the service's start-up check then does not load Prisma's query engine
  // into a process whose requests never use it.
  const [row] = await database().queryDirect<{ present: boolean }>(
    'SELECT EXISTS (SELECT 1 FROM api_keys) AS present',
    [],
  );
  return row?.present === true;
}

const lastUsedWrites = new Set<string>();

/**
 * The lookup behind every request: one probe of the unique index on secret_hash. It runs on the driver as a prepared
 * statement (`queryDirect`), not through Prisma's `$queryRaw`, whose argument conversion, interpreter and result
 * mapping cost more CPU than the probe itself.
 */
const AUTHENTICATE_SQL = `
  SELECT id, name, scopes,
    (last_used_at IS NULL OR last_used_at < now() - $2::int * interval '1 second') AS stale
  FROM api_keys WHERE secret_hash = decode($1, 'hex') AND revoked_at IS NULL`;

/** See Config.apiKeyOutageGraceMs. */
let outageGraceMs = 0;

/** The callers of keys the database confirmed, by key hash, with when: used only while it cannot be reached. */
const verified = new Map<string, { caller: Caller; at: number }>();
/** Bound on `verified`: keys are few; this only keeps a flood of distinct valid keys from growing it without end. */
const VERIFIED_MAX = 10_000;

/** How long a verified key stays good while the database is unreachable (API_KEY_OUTAGE_GRACE_MS); 0 = not at all. */
export function configureApiKeyOutageGrace(ms: number): void {
  outageGraceMs = ms;
  verified.clear();
}

/**
 * The caller a key belongs to, or null for an unknown or revoked key. Asked of the database on every request, so a
 * revocation (from another process, too) takes effect on the next one. While the database cannot be reached, a key it
 * confirmed within API_KEY_OUTAGE_GRACE_MS is still taken: the queued mode of ingestMetrics needs no database, and a
 * database outage must not turn into refused ingestion. Records the use at most once a minute per key.
 */
export async function authenticateApiKey(key: string, hash: string = hashKey(key)): Promise<Caller | null> {
  if (!looksLikeApiKey(key)) return null;
  try {
    const caller = await lookUpApiKey(hash);
    if (caller && outageGraceMs > 0) {
      if (verified.size >= VERIFIED_MAX && !verified.has(hash)) verified.clear();
      verified.set(hash, { caller, at: performance.now() });
    } else verified.delete(hash);
    return caller;
  } catch (error) {
    const remembered = verified.get(hash);
    if (
      remembered &&
      performance.now() - remembered.at <= outageGraceMs &&
      classifyDatabaseError(error)?.kind === 'unavailable'
    )
      return remembered.caller;
    throw error;
  }
}

async function lookUpApiKey(hash: string): Promise<Caller | null> {
  const db = database();
  const [row] = await db.queryDirect<{ id: string; name: string; scopes: string[] | null; stale: boolean }>(
    AUTHENTICATE_SQL,
    [hash, LAST_USED_RESOLUTION_MS / 1000],
    'api_key_authenticate',
  );
  if (!row) return null;
  if (row.stale && !lastUsedWrites.has(row.id)) {
    // One write in flight per key: a burst of requests at the minute's turn writes once.
    lastUsedWrites.add(row.id);
    try {
      await db.queryDirect('UPDATE api_keys SET last_used_at = now() WHERE id = $1', [row.id], 'api_key_last_used');
    } finally {
      lastUsedWrites.delete(row.id);
    }
  }
  return { keyId: row.id, name: row.name, scopes: (row.scopes ?? []).filter(isScope) };
}
