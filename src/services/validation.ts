/**
 * The rules one metric record must meet to be stored. Shared by the GraphQL API and the bulk importer, so both accept
 * and reject exactly the same records with the same messages.
 */

/** A record as a client sends it (GraphQL has already checked the types). */
export interface MetricRecordInput {
  eventId?: string | null;
  userId: string;
  sessionId: string;
  /** Unix time in seconds. */
  timestamp: number;
  /** Seconds. */
  talkedTime: number;
  microphoneUsed: boolean;
  speakerUsed: boolean;
  voiceSentiment?: string | null;
}

export type RejectionCode =
  | 'BLANK'
  | 'TOO_LONG'
  | 'INVALID_CHARACTER'
  | 'TIMESTAMP_TOO_OLD'
  | 'TIMESTAMP_IN_FUTURE'
  | 'TIMESTAMP_IN_MILLISECONDS'
  | 'OUT_OF_RANGE';

export interface FieldProblem {
  field: keyof MetricRecordInput;
  code: RejectionCode;
  message: string;
}

export const LIMITS = {
  idMaxLength: 255,
  eventIdMaxLength: 255,
  voiceSentimentMaxLength: 50,
  talkedTimeMax: 86_400,
  /** 2000-01-01T00:00:00Z. */
  timestampMin: 946_684_800,
  /** How far past the server's clock a timestamp may be, in seconds. */
  timestampFutureSkew: 86_400,
} as const;

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
    problems.push({ field, code: 'INVALID_CHARACTER', message: `${field} contains a NUL character (\\u0000), which cannot be stored` });
  } else if (!value.isWellFormed()) {
    problems.push({
      field,
      code: 'INVALID_CHARACTER',
      message: `${field} contains an unpaired UTF-16 surrogate, which is not valid Unicode text`,
    });
  }
}

/** Every problem of one record (empty when it is valid). `nowSeconds` is the server's clock. */
export function validateRecord(record: MetricRecordInput, nowSeconds: number): FieldProblem[] {
  const problems: FieldProblem[] = [];
  if (record.eventId !== undefined && record.eventId !== null) {
    checkText(problems, 'eventId', record.eventId, LIMITS.eventIdMaxLength, true);
  }
  checkText(problems, 'userId', record.userId, LIMITS.idMaxLength, true);
  checkText(problems, 'sessionId', record.sessionId, LIMITS.idMaxLength, true);

  const latest = nowSeconds + LIMITS.timestampFutureSkew;
  const ts = record.timestamp;
  if (ts < LIMITS.timestampMin || ts > latest) {
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
  if (record.talkedTime < 0 || record.talkedTime > LIMITS.talkedTimeMax) {
    problems.push({
      field: 'talkedTime',
      code: 'OUT_OF_RANGE',
      message: `talkedTime ${record.talkedTime} is outside 0..${LIMITS.talkedTimeMax} seconds`,
    });
  }
  if (record.voiceSentiment !== undefined && record.voiceSentiment !== null) {
    checkText(problems, 'voiceSentiment', record.voiceSentiment, LIMITS.voiceSentimentMaxLength, false);
  }
  return problems;
}
