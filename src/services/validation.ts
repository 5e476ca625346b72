/**
 * The rules one metric record must meet to be stored. Shared by the GraphQL API and the bulk importer, so both accept
 * and reject exactly the same records with the same messages.
 */
import { partitionSettings } from './partitions.js';
import { LIMITS, type MetricRecordInput, RECORD_FIELDS } from './record.js';

// The bulk tools import these from here.
export { LIMITS, type MetricRecordInput } from './record.js';

export type RejectionCode =
  | 'BLANK'
  | 'TOO_LONG'
  | 'INVALID_CHARACTER'
  | 'TIMESTAMP_TOO_OLD'
  | 'TIMESTAMP_PAST_RETENTION'
  | 'TIMESTAMP_IN_FUTURE'
  | 'TIMESTAMP_IN_MILLISECONDS'
  | 'OUT_OF_RANGE';

export interface FieldProblem {
  field: keyof MetricRecordInput;
  code: RejectionCode;
  message: string;
}

/** Length in Unicode code points, as PostgreSQL counts characters (a UTF-16 surrogate pair is one). */
export function codePointLength(value: string): number {
  let pairs = 0;
  for (let i = 0; i < value.length; i++) {
    const unit = value.charCodeAt(i);
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < value.length) {
      const next = value.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        pairs++;
        i++;
      }
    }
  }
  return value.length - pairs;
}

function checkText(
  problems: FieldProblem[],
  field: FieldProblem['field'],
  value: string,
  maxLength: number,
  required: boolean,
): void {
  // Code points never outnumber UTF-16 units, so only long strings need counting.
  if (value.length > maxLength && codePointLength(value) > maxLength) {
    problems.push({
      field,
      code: 'TOO_LONG',
      message: `${field} is ${codePointLength(value)} characters long; at most ${maxLength} are allowed`,
    });
  } else if (required && value.trim() === '') {
    problems.push({
      field,
      code: 'BLANK',
      message: `${field} must not be empty or only whitespace (1 to ${maxLength} characters)`,
    });
  }
  if (value.includes('\0')) {
    problems.push({
      field,
      code: 'INVALID_CHARACTER',
      message: `${field} contains a NUL character (\\u0000), which cannot be stored`,
    });
  } else if (!value.isWellFormed()) {
    problems.push({
      field,
      code: 'INVALID_CHARACTER',
      message: `${field} contains an unpaired UTF-16 surrogate, which is not valid Unicode text`,
    });
  }
}

function checkTimestamp(problems: FieldProblem[], ts: number, nowSeconds: number): void {
  const latest = nowSeconds + LIMITS.timestampFutureSkew;
  const { retentionDays } = partitionSettings();
  // A record past the retention horizon would be stored only to be dropped at the next maintenance run.
  const horizon = retentionDays > 0 ? nowSeconds - retentionDays * 86_400 : LIMITS.timestampMin;
  if (ts >= LIMITS.timestampMin && ts < horizon) {
    problems.push({
      field: 'timestamp',
      code: 'TIMESTAMP_PAST_RETENTION',
      message: `timestamp ${ts} is older than the ${retentionDays} days of RETENTION_DAYS (oldest kept: ${horizon})`,
    });
    return;
  }
  if (ts >= LIMITS.timestampMin && ts <= latest) return;
  const asSeconds = Math.floor(ts / 1000);
  if (ts > latest && asSeconds >= LIMITS.timestampMin && asSeconds <= latest) {
    problems.push({
      field: 'timestamp',
      code: 'TIMESTAMP_IN_MILLISECONDS',
      message: `timestamp ${ts} looks like milliseconds; send unix time in seconds (${asSeconds})`,
    });
  } else if (ts < LIMITS.timestampMin) {
    problems.push({
      field: 'timestamp',
      code: 'TIMESTAMP_TOO_OLD',
      message: `timestamp ${ts} is before 2000-01-01T00:00:00Z (${LIMITS.timestampMin}); send unix time in seconds`,
    });
  } else {
    problems.push({
      field: 'timestamp',
      code: 'TIMESTAMP_IN_FUTURE',
      message: `timestamp ${ts} is more than 24 hours ahead of the server's clock (latest allowed now: ${latest})`,
    });
  }
}

function checkTalkedTime(problems: FieldProblem[], talkedTime: number): void {
  if (talkedTime >= 0 && talkedTime <= LIMITS.talkedTimeMax) return;
  problems.push({
    field: 'talkedTime',
    code: 'OUT_OF_RANGE',
    message: `talkedTime ${talkedTime} is outside 0..${LIMITS.talkedTimeMax} seconds`,
  });
}

/** Every problem of one record (empty when it is valid), in the fields' order. `nowSeconds` is the server's clock. */
export function validateRecord(record: MetricRecordInput, nowSeconds: number): FieldProblem[] {
  const problems: FieldProblem[] = [];
  for (const field of RECORD_FIELDS) {
    if (field.kind === 'text') {
      const value = record[field.name];
      if (value !== undefined && value !== null)
        checkText(problems, field.name, value, field.maxLength, field.blankRefused);
    } else if (field.name === 'timestamp') checkTimestamp(problems, record.timestamp, nowSeconds);
    else if (field.name === 'talkedTime') checkTalkedTime(problems, record.talkedTime);
  }
  return problems;
}
