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
