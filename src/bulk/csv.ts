/**
 * CSV as RFC 4180 writes it, read and written a record at a time: files of any size stream through in constant memory.
 *
 * Reading keeps one distinction CSV can make that a plain split cannot: an unquoted empty field is `null` (no value),
 * a quoted empty field (`""`) is the empty string. The exporter writes null and "" that way, so a round trip keeps them
 * apart.
 *
 * Hand-written rather than csv-parse / csv-stringify: csv-parse tells a quoted empty field from an unquoted one only
 * through a cast function, called with a fresh context object for every field, and both libraries do several times
 * the work per field of the code below; the importer and the exporter were measurably slower with them (figures in
 * bench/README.md, "CSV and progress libraries").
 */

/** Splits text arriving in chunks into lines, counting them from 1. Lines keep a trailing `\r` (CRLF files). */
export class LineSplitter {
  private carry = '';
  private nextLine = 1;

  /** Calls `onLine` for every complete line in `chunk` (plus what was carried over from the previous chunk). */
  push(chunk: string, onLine: (text: string, line: number) => void): void {
    let start = 0;
    let newline = chunk.indexOf('\n');
    if (newline === -1) {
      this.carry += chunk;
      return;
    }
    const first = this.carry + chunk.slice(0, newline);
    this.carry = '';
    onLine(first, this.nextLine++);
    start = newline + 1;
    for (newline = chunk.indexOf('\n', start); newline !== -1; newline = chunk.indexOf('\n', start)) {
      onLine(chunk.slice(start, newline), this.nextLine++);
      start = newline + 1;
    }
    this.carry = chunk.slice(start);
  }

  /** The last line, when the text does not end with a newline. */
  end(onLine: (text: string, line: number) => void): void {
    if (this.carry !== '') onLine(this.carry, this.nextLine++);
    this.carry = '';
  }
}

export interface CsvRecord {
  /** The line the record starts on (a quoted field may continue it over several lines). */
  line: number;
  /** Field values; `null` for an unquoted empty field. */
  fields: (string | null)[];
}

export interface CsvSyntaxError {
  line: number;
  message: string;
  /** The record's text as read, for the rejected-lines file. */
  text: string;
}

/** The most text one record may span: a record still open past this is reported as an unterminated quote. */
const MAX_RECORD_CHARS = 1 << 20;

type Parsed =
  | { ok: true; fields: (string | null)[] }
  | { ok: false; open: true }
  | { ok: false; open: false; message: string };

/** Parses one record's text. `open`: a quoted field is still open at the end (the record goes on on the next line). */
function parseRecord(text: string): Parsed {
  if (!text.includes('"')) {
    const parts = text.split(',');
    return { ok: true, fields: parts.map((p) => (p === '' ? null : p)) };
  }
  const fields: (string | null)[] = [];
  let i = 0;
  const n = text.length;
  for (;;) {
    if (text.charCodeAt(i) === 34 /* " */) {
      let value = '';
      let from = i + 1;
      for (;;) {
        const quote = text.indexOf('"', from);
        if (quote === -1) return { ok: false, open: true };
        value += text.slice(from, quote);
        if (text.charCodeAt(quote + 1) === 34) {
          value += '"';
          from = quote + 2;
          continue;
        }
        i = quote + 1;
        break;
      }
      fields.push(value);
      if (i === n) return { ok: true, fields };
      if (text.charCodeAt(i) !== 44 /* , */) {
        return { ok: false, open: false, message: `field ${fields.length} has characters after its closing quote` };
      }
      i++;
    } else {
      const comma = text.indexOf(',', i);
      const end = comma === -1 ? n : comma;
      const value = text.slice(i, end);
      fields.push(value === '' ? null : value);
      if (comma === -1) return { ok: true, fields };
      i = comma + 1;
    }
    if (i === n) {
      fields.push(null);
      return { ok: true, fields };
    }
  }
}

/** Reads CSV records from lines (see LineSplitter). Blank lines between records are skipped. */
export class CsvReader {
  private pending: string | undefined;
  private pendingLine = 0;

  /** Feeds one line; calls `onRecord` when it completes a record, `onError` when the record cannot be read. */
  line(
    raw: string,
    line: number,
    onRecord: (record: CsvRecord) => void,
    onError: (error: CsvSyntaxError) => void,
  ): void {
    if (this.pending === undefined) {
      if (raw === '' || raw === '\r') return;
      this.pendingLine = line;
    }
    // Inside a quoted field the line break is part of the value: it is kept as written (\n or \r\n).
    const joined = this.pending === undefined ? raw : `${this.pending}\n${raw}`;
    const text = joined.endsWith('\r') ? joined.slice(0, -1) : joined;
    const parsed = parseRecord(text);
    if (parsed.ok) {
      this.pending = undefined;
      onRecord({ line: this.pendingLine, fields: parsed.fields });
      return;
    }
    if (parsed.open) {
      if (text.length > MAX_RECORD_CHARS) {
        this.pending = undefined;
        const message = `a quoted field is not closed within ${MAX_RECORD_CHARS} characters`;
        onError({ line: this.pendingLine, message, text: text.slice(0, 1000) });
        return;
      }
      this.pending = joined;
      return;
    }
    this.pending = undefined;
    onError({ line: this.pendingLine, message: parsed.message, text });
  }

  /** At the end of the input: a record still open is an error. */
  end(onError: (error: CsvSyntaxError) => void): void {
    if (this.pending !== undefined) {
      const message = 'the file ends inside a quoted field (a closing " is missing)';
      onError({ line: this.pendingLine, message, text: this.pending.slice(0, 1000) });
      this.pending = undefined;
    }
  }
}

/** One CSV field: quoted when it must be, `""` for the empty string, nothing at all for null. */
export function csvField(value: string | number | boolean | null): string {
  if (value === null) return '';
  if (typeof value !== 'string') return String(value);
  if (value === '') return '""';
  if (/[",\r\n]/.test(value) || value.trim() !== value) return `"${value.replaceAll('"', '""')}"`;
  return value;
}
