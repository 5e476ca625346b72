/**
 * The databases the benchmark talks to directly, behind one small interface: a PostgreSQL server through `pg`
 * (COPY FROM STDIN with pg-copy-streams), or PGlite (COPY FROM '/dev/blob').
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { PGlite } from '@electric-sql/pglite';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';

export interface BenchSql {
  query<Row = Record<string, unknown>>(text: string, params?: unknown[]): Promise<Row[]>;
  /** COPY `chunks` (COPY text format) into `table` in one stream. */
  copyIn(table: string, columns: string, chunks: Iterable<string>): Promise<void>;
  /** Flushes dirty pages, so one measurement does not pay for the previous one's writes; a no-op where unsupported. */
  checkpoint(): Promise<void>;
  close(): Promise<void>;
}

pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export async function connectPostgres(url: string): Promise<BenchSql> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  let canCheckpoint = true;
  return {
    async query<Row>(text: string, params?: unknown[]) {
      return (await client.query(text, params)).rows as Row[];
    },
    async copyIn(table, columns, chunks) {
      await pipeline(
        Readable.from(chunks, { objectMode: false }),
        client.query(copyFrom(`COPY ${table} (${columns}) FROM STDIN`)),
      );
    },
    async checkpoint() {
      if (!canCheckpoint) return;
      try {
        await client.query('CHECKPOINT');
      } catch {
        canCheckpoint = false; // not a superuser (nor pg_checkpoint): measure without it
      }
    },
    async close() {
      await client.end();
    },
  };
}

/** PGlite in this process: each COPY gets its rows as one blob (PGlite has no STDIN), sent in slices of `sliceBytes`. */
export function wrapPglite(db: PGlite, sliceBytes = 32 * 1024 * 1024): BenchSql {
  return {
    async query<Row>(text: string, params?: unknown[]) {
      return (await db.query(text, params)).rows as Row[];
    },
    async copyIn(table, columns, chunks) {
      let parts: string[] = [];
      let size = 0;
      const flush = async () => {
        if (parts.length === 0) return;
        await db.query(`COPY ${table} (${columns}) FROM '/dev/blob'`, [], { blob: new Blob(parts) });
        parts = [];
        size = 0;
      };
      for (const chunk of chunks) {
        parts.push(chunk);
        size += chunk.length;
        if (size >= sliceBytes) await flush();
      }
      await flush();
    },
    async checkpoint() {
      await db.exec('CHECKPOINT');
    },
    async close() {
      await db.close();
    },
  };
}
