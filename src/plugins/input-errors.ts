/**
 * A request whose variables do not fit their types (a string for an Int, a decimal for a SafeInt, a missing required
 * variable) is refused by graphql-js before anything runs, with a message that names the variable and the place in it,
 * but with no `extensions.code`. README promises a code on every error a client can fix: these get BAD_USER_INPUT, as
 * the API's own argument errors do. (A literal of the wrong type in the query text is a validation error and already
 * carries GRAPHQL_VALIDATION_FAILED.)
 *
 * graphql-js answers `{ errors }` without `data` exactly when it refused the request before running it (the variables,
 * or which operation to run); an answer with `data`, even `data: null`, comes from execution and is left alone.
 */
import { type ExecutionResult, GraphQLError } from 'graphql';
import { isAsyncIterable, type Plugin } from 'graphql-yoga';

function withCode(result: ExecutionResult): ExecutionResult | undefined {
  if ('data' in result || !result.errors?.some((error) => error.extensions?.code === undefined)) return undefined;
  return {
    ...result,
    errors: result.errors.map((error) =>
      error.extensions?.code !== undefined
        ? error
        : new GraphQLError(error.message, {
            nodes: error.nodes,
            source: error.source,
            positions: error.positions,
            path: error.path,
            originalError: error.originalError,
            extensions: { ...error.extensions, code: 'BAD_USER_INPUT' },
          }),
    ),
  };
}

/** See the module comment. */
export function useInputErrorCodes(): Plugin {
  return {
    onExecute() {
      return {
        onExecuteDone({ result, setResult }) {
          if (isAsyncIterable(result)) return;
          const coded = withCode(result);
          if (coded) setResult(coded);
        },
      };
    },
    onSubscribe() {
      return {
        onSubscribeResult({ result, setResult }) {
          if (isAsyncIterable(result)) return;
          const coded = withCode(result);
          if (coded) setResult(coded);
        },
      };
    },
  };
}
