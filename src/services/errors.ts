/**
 * A request the client can fix: the message says what and where, and reaches the client as it is
 * (GraphQL error code BAD_USER_INPUT). Every other error is unexpected and masked.
 */
export class InputError extends Error {
  readonly code: string = 'BAD_USER_INPUT';
  constructor(
    message: string,
    /** The argument or input path at fault, e.g. `where.AND[1].userId.in`. */
    readonly path: string,
  ) {
    super(message);
    this.name = 'InputError';
  }
}

/**
 * Longest client text repeated in an answer: twice the longest valid eventId in UTF-16 units, so a valid one comes back
 * whole.
 */
export const ECHO_MAX = 512;

/**
 * Client text cut for repeating in an answer: at most ECHO_MAX characters, then a marker with how many were left out,
 * so that an answer is never more than a small multiple of its request.
 */
export function clipEcho(text: string, max = ECHO_MAX): string {
  if (text.length <= max) return text;
  // Never cut between the two halves of a surrogate pair.
  const end = text.charCodeAt(max - 1) >= 0xd800 && text.charCodeAt(max - 1) <= 0xdbff ? max - 1 : max;
  return `${text.slice(0, end)}…[${text.length - end} more characters]`;
}

/**
 * Refuses text that cannot reach PostgreSQL as a parameter: a NUL character, or an unpaired UTF-16 surrogate (not
 * Unicode). `argument` names the argument or input path in the error.
 */
export function checkStorableText(value: string, argument: string): string {
  if (value.includes('\0'))
    throw new InputError(`${argument} contains a NUL character (\\u0000), which is not allowed`, argument);
  if (!value.isWellFormed())
    throw new InputError(
      `${argument} contains an unpaired UTF-16 surrogate, which is not valid Unicode text`,
      argument,
    );
  return value;
}
