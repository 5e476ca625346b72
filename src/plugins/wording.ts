/**
 * The framework's own refusals (Yoga's CSRF prevention, body limit and query-string parser, envelop's introspection
 * rule) in this service's words and codes, and every error message bounded: the rules stay theirs, the answers read
 * like ours.
 */
import { GraphQLError } from 'graphql';
import { isAsyncIterable, type Plugin } from 'graphql-yoga';
import { clipEcho, ECHO_MAX } from '../services/errors.js';
import { CSRF_HEADER } from './limits.js';

/** Longest error message an answer carries; longer ones quote client text (graphql-js' coercion errors do). */
const MESSAGE_MAX = 2 * ECHO_MAX;

/** JSON.parse's reason, without the excerpt of the text that V8 (and whatwg-node) may append: `, "<text>" ...`. */
export function jsonSyntaxReason(message: string): string {
  const excerpt = message.indexOf(', "');
  return clipEcho(excerpt >= 0 ? message.slice(0, excerpt) : message, 120);
}

function withHttp(error: GraphQLError, message: string, extensions: Record<string, unknown>): GraphQLError {
  return new GraphQLError(message, {
    nodes: error.nodes,
    path: error.path,
    extensions: { ...extensions, http: error.extensions.http },
  });
}

export function useFrameworkErrorsInOurWords(options: { maxBodyBytes: number }): Plugin {
  const reword = (error: GraphQLError): GraphQLError => {
    const code = error.extensions?.code;
    if (code === 'REQUEST_ENTITY_TOO_LARGE') {
      return withHttp(
        error,
        `The request body is larger than ${options.maxBodyBytes} bytes, the most this service accepts. Send ` +
          `smaller batches.`,
        {
          code: 'PAYLOAD_TOO_LARGE',
          limit: options.maxBodyBytes,
        },
      );
    }
    if (error.message === 'Required CSRF header(s) not present') {
      return withHttp(
        error,
        'This request could come from another site without the browser asking first (a GET, or a form content type). ' +
          `Send a JSON body with \`Content-Type: application/json\`, or add the header \`${CSRF_HEADER}: 1\`.`,
        { code: 'CSRF_PREVENTED' },
      );
    }
    if (code === 'BAD_REQUEST' && error.message === 'POST body sent invalid JSON.') {
      const original = error.extensions.originalError as { message?: unknown } | undefined;
      const reason = typeof original?.message === 'string' ? jsonSyntaxReason(original.message) : undefined;
      return withHttp(error, `The request body is not valid JSON${reason ? `: ${reason}` : ''}.`, {
        code: 'BAD_REQUEST',
      });
    }
    if (/^GraphQL introspection has been disabled/.test(error.message)) {
      return withHttp(error, 'Introspection is disabled on this service (`__schema` and `__type`).', {
        code: 'INTROSPECTION_DISABLED',
      });
    }
    if (error.message.length > MESSAGE_MAX) {
      return new GraphQLError(clipEcho(error.message, MESSAGE_MAX), {
        nodes: error.nodes,
        path: error.path,
        originalError: error.originalError,
        extensions: error.extensions,
      });
    }
    return error;
  };
  const rewordAll = <R extends { errors?: readonly GraphQLError[] }>(result: R): R => {
    if (!result.errors?.length) return result;
    const errors = result.errors.map(reword);
    return errors.every((error, i) => error === result.errors?.[i]) ? result : { ...result, errors };
  };
  return {
    onResultProcess({ result, setResult }) {
      if (isAsyncIterable(result)) return;
      setResult(Array.isArray(result) ? result.map(rewordAll) : rewordAll(result));
    },
  };
}
