/**
 * How operations are executed. Yoga's default executor (@graphql-tools/executor) copies every variable value into
 * null-prototype objects and then coerces the copies with graphql-js; graphql-js's coercion itself builds a
 * dictionary-mode object, a path entry per field and a spread copy per input object. For an ingestMetrics batch of
 * 1,000 records, that variable handling was the largest item of the request's CPU profile, larger than the SQL insert
 * (bench/README.md).
 *
 * So:
 * - ingestMetrics operations run through graphql-jit, which compiles the operation once (cached per parsed document)
 *   into JavaScript, variable coercion included: the same batch coerces ~8x faster. Only when the variables are
 *   invalid (graphql-jit then returns errors and has run nothing) is the operation run again by graphql-js, whose
 *   messages name the record and field at fault (`records[2].timestamp`), as the API documents.
 * - every other operation runs on graphql-js's own `execute`, without the copies. Queries are not compiled: graphql-jit
 *   cannot compile an operation whose variables have a recursive input type such as MetricFilter (see below).
 * Subscriptions keep Yoga's executor.
 */
import {
  type DocumentNode,
  type ExecutionArgs,
  type ExecutionResult,
  Kind,
  type OperationDefinitionNode,
  type TypeNode,
  execute,
  isInputObjectType,
} from 'graphql';
import { type CompiledQuery, compileQuery, isCompiledQuery } from 'graphql-jit';
import type { Plugin } from 'graphql-yoga';

/** Root fields whose operations are compiled: those that take large input lists. */
const COMPILED_ROOT_FIELDS = new Set(['ingestMetrics']);

/**
 * Input object types a compiled operation's variables may have. graphql-jit generates coercion code for every variable
 * type, unrolling nested input types; on a recursive one (MetricFilter's AND/OR/NOT) the compilation never ends and
 * exhausts the heap (seen when queries were compiled too). So only these flat types are compiled.
 */
const COMPILED_INPUT_TYPES = new Set(['UserMetricInput']);

function namedType(type: TypeNode): string {
  return type.kind === Kind.NAMED_TYPE ? type.name.value : namedType(type.type);
}

/** Compiled operations per parsed document (Yoga's parser cache hands out the same document for the same text). */
const compiled = new WeakMap<DocumentNode, Map<string, CompiledQuery | null>>();

function selectedOperation(document: DocumentNode, operationName: string | null | undefined): OperationDefinitionNode | undefined {
  const operations = document.definitions.filter((d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION);
  if (operationName == null) return operations.length === 1 ? operations[0] : undefined;
  return operations.find((o) => o.name?.value === operationName);
}

/** The compiled form of the operation, when it is one we compile (a mutation whose root fields are all listed). */
function compiledFor(args: ExecutionArgs): CompiledQuery | null {
  const key = args.operationName ?? '';
  let perDocument = compiled.get(args.document);
  if (!perDocument) {
    perDocument = new Map();
    compiled.set(args.document, perDocument);
  }
  const cached = perDocument.get(key);
  if (cached !== undefined) return cached;
  let result: CompiledQuery | null = null;
  const operation = selectedOperation(args.document, args.operationName);
  const fields = operation?.selectionSet.selections ?? [];
  const eligible =
    operation?.operation === 'mutation' &&
    fields.length > 0 &&
    fields.every((s) => s.kind === Kind.FIELD && COMPILED_ROOT_FIELDS.has(s.name.value) && !s.directives?.length) &&
    (operation.variableDefinitions ?? []).every((v) => {
      const type = args.schema.getType(namedType(v.type));
      return !isInputObjectType(type) || COMPILED_INPUT_TYPES.has(type.name);
    });
  if (eligible) {
    const attempt = compileQuery(args.schema, args.document, args.operationName ?? undefined);
    if (isCompiledQuery(attempt)) result = attempt;
  }
  perDocument.set(key, result);
  return result;
}

function isPromiseLike<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as Promise<T>)?.then === 'function';
}

function executeOperation(args: ExecutionArgs): ExecutionResult | Promise<ExecutionResult> {
  const query = compiledFor(args);
  if (!query) return execute(args);
  const result = query.query(args.rootValue, args.contextValue, args.variableValues) as
    | ExecutionResult
    | Promise<ExecutionResult>;
  // No `data` at all: the variables were refused before anything ran, so graphql-js can run it to word the errors.
  const settle = (r: ExecutionResult) => ('data' in r ? r : execute(args));
  return isPromiseLike(result) ? result.then(settle) : settle(result);
}

/** The plugin: see the module comment. */
export function useFastExecute(): Plugin {
  return {
    onExecute({ setExecuteFn }) {
      setExecuteFn(executeOperation);
    },
  };
}
