/**
 * How operations are executed. Yoga's default executor (@graphql-tools/executor) copies every variable value into
 * null-prototype objects and then coerces the copies with graphql-js; graphql-js's coercion itself builds a
 * dictionary-mode object, a path entry per field and a spread copy per input object: for an ingestMetrics batch, the
 * largest item of the request's CPU. For a page of records, graphql-js's execution (a resolver call, a path entry and a
 * completion step per field, results in null-prototype objects that JSON.stringify serializes on its slow path) is
 * the largest item the service adds to the SQL.
 *
 * So operations run through graphql-jit, which compiles an operation once (cached per parsed document) into
 * JavaScript, variable coercion and result building included:
 * - ingestMetrics: the batch's variables are coerced by compiled code. Only when the variables are invalid (graphql-jit
 *   then returns errors and has run nothing) is the operation run again by graphql-js, whose messages name the record
 *   and field at fault (`records[2].timestamp`), as the API documents.
 * - the read fields (metrics, metric, metricStats, userSummary): compiled against a copy of the schema in which
 *   MetricFilter is a scalar. graphql-jit generates coercion code for a variable's whole input type, unrolling nested
 *   input types; on a recursive one (MetricFilter's AND/OR/NOT) it never finishes and exhausts the heap. So graphql-js
 *   coerces the variables first (with its own messages, as before: invalid variables are answered by graphql-js), and
 *   the compiled query takes MetricFilter values as graphql-js coerced them.
 * Everything else (introspection, API-key administration, operations mixing other fields) runs on graphql-js's own
 * `execute`, without Yoga's copies. Subscriptions keep Yoga's executor.
 */

import { MapperKind, mapSchema } from '@graphql-tools/utils';
import {
  BREAK,
  type DocumentNode,
  type ExecutionArgs,
  type ExecutionResult,
  execute,
  GraphQLScalarType,
  type GraphQLSchema,
  getVariableValues,
  isInputObjectType,
  Kind,
  type OperationDefinitionNode,
  type TypeNode,
  type VariableDefinitionNode,
  valueFromAST,
  visit,
} from 'graphql';
import { type CompiledQuery, compileQuery, isCompiledQuery } from 'graphql-jit';
import type { Plugin } from 'graphql-yoga';
import { findOperation } from './operation.js';

/** Mutation fields whose operations are compiled: those that take large input lists. */
const COMPILED_MUTATION_FIELDS = new Set(['ingestMetrics']);
/** Query fields whose operations are compiled: the reads clients repeat. */
const COMPILED_QUERY_FIELDS = new Set(['metrics', 'metric', 'metricStats', 'userSummary', '__typename']);

/** Input object types a compiled operation's variables may have as they are; others are opaque in the compiled copy. */
const COMPILED_INPUT_TYPES = new Set(['UserMetricInput']);
/** The recursive input type: a scalar in the schema copy the read fields are compiled against. */
const OPAQUE_INPUT_TYPES = new Set(['MetricFilter']);

function namedType(type: TypeNode): string {
  return type.kind === Kind.NAMED_TYPE ? type.name.value : namedType(type.type);
}

/**
 * The schema copy for compiled reads: MetricFilter becomes a scalar of the same name whose values pass through as
 * graphql-js coerced them (variables) or as graphql-js coerces a literal against the real type.
 */
const opaqueCopies = new WeakMap<GraphQLSchema, GraphQLSchema>();
function withOpaqueFilters(schema: GraphQLSchema): GraphQLSchema {
  let copy = opaqueCopies.get(schema);
  if (!copy) {
    copy = mapSchema(schema, {
      [MapperKind.TYPE]: (type) => {
        if (!isInputObjectType(type) || !OPAQUE_INPUT_TYPES.has(type.name)) return type;
        return new GraphQLScalarType({
          name: type.name,
          parseValue: (value) => value,
          parseLiteral: (ast, variables) => valueFromAST(ast, type, variables),
          serialize: (value) => value,
        });
      },
    });
    opaqueCopies.set(schema, copy);
  }
  return copy;
}

/** Whether an argument's value is a list or object literal with a variable somewhere inside it. */
function variableInsideLiteral(operation: OperationDefinitionNode): boolean {
  let found = false;
  visit(operation, {
    Argument(node) {
      if (node.value.kind === Kind.OBJECT || node.value.kind === Kind.LIST) {
        visit(node.value, {
          Variable() {
            found = true;
            return BREAK;
          },
        });
      }
      return found ? BREAK : undefined;
    },
  });
  return found;
}

interface Compiled {
  query: CompiledQuery;
  /** The operation's variables, for graphql-js's coercion of the opaque ones. */
  variableDefinitions: readonly VariableDefinitionNode[];
  /** Variables graphql-js coerces before the compiled query runs (their type is opaque to it). */
  coercedFirst: string[];
}

/** Compiled operations per parsed document (Yoga's parser cache hands out the same document for the same text). */
const compiled = new WeakMap<DocumentNode, Map<string, Compiled | null>>();

/** The compiled form of the operation, when it is one we compile: all its root fields listed above, no directives. */
function compile(args: ExecutionArgs): Compiled | null {
  const operation = findOperation(args.document, args.operationName);
  if (!operation || (operation.operation !== 'query' && operation.operation !== 'mutation')) return null;
  const allowed = operation.operation === 'query' ? COMPILED_QUERY_FIELDS : COMPILED_MUTATION_FIELDS;
  const fields = operation.selectionSet.selections;
  if (
    fields.length === 0 ||
    !fields.every((s) => s.kind === Kind.FIELD && allowed.has(s.name.value) && !s.directives?.length)
  ) {
    return null;
  }
  // graphql-jit hands a literal's parseLiteral no variables: a variable inside an input object literal
  // (`where: { userId: { equals: $v } }`) would be read as absent. graphql-js runs those.
  if (variableInsideLiteral(operation)) return null;
  const coercedFirst: string[] = [];
  const variableDefinitions = operation.variableDefinitions ?? [];
  for (const definition of variableDefinitions) {
    const type = args.schema.getType(namedType(definition.type));
    if (!isInputObjectType(type) || COMPILED_INPUT_TYPES.has(type.name)) continue;
    if (operation.operation === 'query' && OPAQUE_INPUT_TYPES.has(type.name))
      coercedFirst.push(definition.variable.name.value);
    else return null;
  }
  const schema = operation.operation === 'query' ? withOpaqueFilters(args.schema) : args.schema;
  const attempt = compileQuery(schema, args.document, args.operationName ?? undefined);
  return isCompiledQuery(attempt) ? { query: attempt, variableDefinitions, coercedFirst } : null;
}

function compiledFor(args: ExecutionArgs): Compiled | null {
  let perDocument = compiled.get(args.document);
  if (!perDocument) {
    perDocument = new Map();
    compiled.set(args.document, perDocument);
  }
  const key = args.operationName ?? '';
  let entry = perDocument.get(key);
  if (entry === undefined) {
    entry = compile(args);
    perDocument.set(key, entry);
  }
  return entry;
}

function isPromiseLike<T>(value: T | Promise<T>): value is Promise<T> {
  return typeof (value as Promise<T>)?.then === 'function';
}

/**
 * The variables the compiled query takes: as sent, except those of an opaque type, which graphql-js coerces (all of
 * the operation's variables, so that its checks and messages are the ones clients have always had). Null when they
 * are invalid: graphql-js then answers.
 */
function variablesFor(args: ExecutionArgs, entry: Compiled): Record<string, unknown> | null | undefined {
  if (entry.coercedFirst.length === 0) return args.variableValues ?? undefined;
  const coerced = getVariableValues(args.schema, entry.variableDefinitions, args.variableValues ?? {});
  if (coerced.errors) return null;
  const variables: Record<string, unknown> = { ...args.variableValues };
  for (const name of entry.coercedFirst) {
    if (Object.hasOwn(coerced.coerced, name)) variables[name] = coerced.coerced[name];
  }
  return variables;
}

/** Runs the operation: compiled when it is one of those above, else graphql-js's `execute`. */
function executeOperation(args: ExecutionArgs): ExecutionResult | Promise<ExecutionResult> {
  const entry = compiledFor(args);
  if (!entry) return execute(args);
  const variables = variablesFor(args, entry);
  if (variables === null) return execute(args);
  const result = entry.query.query(args.rootValue, args.contextValue, variables) as
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
