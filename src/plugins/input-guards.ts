/**
 * Inputs that graphql-js or its libraries mishandle, each found by test/fuzz.test.ts, refused here as the client
 * mistakes they are (BAD_USER_INPUT, HTTP 400) instead of surfacing as unexpected errors:
 *
 * - variables nested thousands of levels deep overflow the stack in graphql-js' input coercion (RangeError);
 * - graphql-scalars interpolates a rejected input into its message, and an object whose `toString` is not a function
 *   makes that interpolation throw a TypeError (refused by the scalars themselves: src/schema/builder.ts);
 * - a subscription whose root fields are all left out by @skip/@include crashes graphql-js 16 (validation counts at
 *   most one root field, not at least one).
 */
import {
  type DocumentNode,
  type FragmentDefinitionNode,
  GraphQLError,
  getOperationAST,
  Kind,
  type OperationDefinitionNode,
  type SelectionNode,
  type SelectionSetNode,
  type ValueNode,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';

type Variables = Readonly<Record<string, unknown>> | null | undefined;

function literalBoolean(value: ValueNode, operation: OperationDefinitionNode, variables: Variables): unknown {
  if (value.kind === Kind.BOOLEAN) return value.value;
  if (value.kind !== Kind.VARIABLE) return undefined;
  const name = value.name.value;
  if (variables && Object.hasOwn(variables, name)) return variables[name];
  const fallback = operation.variableDefinitions?.find(
    (definition) => definition.variable.name.value === name,
  )?.defaultValue;
  return fallback?.kind === Kind.BOOLEAN ? fallback.value : undefined;
}

/** False only when @skip(if: true) or @include(if: false) certainly leaves the selection out. */
function included(node: SelectionNode, operation: OperationDefinitionNode, variables: Variables): boolean {
  for (const directive of node.directives ?? []) {
    const name = directive.name.value;
    if (name !== 'skip' && name !== 'include') continue;
    const argument = directive.arguments?.find((arg) => arg.name.value === 'if');
    const value = argument ? literalBoolean(argument.value, operation, variables) : undefined;
    if ((name === 'skip' && value === true) || (name === 'include' && value === false)) return false;
  }
  return true;
}

function selectsAField(
  selectionSet: SelectionSetNode,
  operation: OperationDefinitionNode,
  fragments: ReadonlyMap<string, FragmentDefinitionNode>,
  variables: Variables,
  seen: Set<string>,
): boolean {
  return selectionSet.selections.some((selection) => {
    if (!included(selection, operation, variables)) return false;
    if (selection.kind === Kind.FIELD) return true;
    if (selection.kind === Kind.INLINE_FRAGMENT)
      return selectsAField(selection.selectionSet, operation, fragments, variables, seen);
    const name = selection.name.value;
    const fragment = fragments.get(name);
    if (!fragment || seen.has(name)) return !fragment; // an unknown fragment: let validation report it
    seen.add(name);
    return selectsAField(fragment.selectionSet, operation, fragments, variables, seen);
  });
}

export function subscriptionSelectsNothing(
  document: DocumentNode,
  operationName: string | null | undefined,
  variables: Variables,
): boolean {
  const operation = getOperationAST(document, operationName ?? undefined);
  if (operation?.operation !== 'subscription') return false;
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const definition of document.definitions) {
    if (definition.kind === Kind.FRAGMENT_DEFINITION) fragments.set(definition.name.value, definition);
  }
  return !selectsAField(operation.selectionSet, operation, fragments, variables, new Set());
}

/**
 * Deepest nesting of objects and lists the variables may have. A MetricFilter at its own limit of 8 AND/OR/NOT levels
 * needs about 20; graphql-js overflows the stack in the thousands.
 */
export const MAX_VARIABLES_DEPTH = 64;

/**
 * The nesting depth of a JSON value, walked without recursion (the value may be deeper than the stack). Only objects
 * and lists are stacked, with their depths in a parallel stack: an ingest batch's variables are ~10,000 values, and a
 * pair allocated per value showed in the ingestion profile.
 */
export function jsonDepth(value: unknown, stopAbove: number): number {
  if (typeof value !== 'object' || value === null) return 0;
  let deepest = 0;
  const nodes: object[] = [value];
  const depths: number[] = [1];
  while (nodes.length > 0) {
    const node = nodes.pop() as object;
    const depth = depths.pop() as number;
    if (depth > deepest) {
      deepest = depth;
      if (deepest > stopAbove) return deepest;
    }
    if (Array.isArray(node)) {
      for (let i = 0; i < node.length; i++) {
        const child: unknown = node[i];
        if (typeof child === 'object' && child !== null) {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    } else {
      for (const key in node) {
        if (!Object.hasOwn(node, key)) continue;
        const child: unknown = (node as Record<string, unknown>)[key];
        if (typeof child === 'object' && child !== null) {
          nodes.push(child);
          depths.push(depth + 1);
        }
      }
    }
  }
  return deepest;
}

function badInput(message: string) {
  return new GraphQLError(message, { extensions: { code: 'BAD_USER_INPUT', http: { status: 400 } } });
}

/** Whether request variables nest deeper than `maxDepth` (the check behind useVariablesDepthLimit). */
export function variablesTooDeep(variables: unknown, maxDepth = MAX_VARIABLES_DEPTH): boolean {
  return typeof variables === 'object' && variables !== null && jsonDepth(variables, maxDepth + 1) > maxDepth + 1;
}

export function useVariablesDepthLimit(maxDepth = MAX_VARIABLES_DEPTH): Plugin {
  return {
    onParams({ params, setResult }) {
      if (variablesTooDeep(params.variables, maxDepth)) {
        setResult({
          errors: [
            badInput(
              `The variables nest objects and lists more than ${maxDepth} levels deep, the most this service accepts.`,
            ),
          ],
        });
      }
    },
  };
}

export function useEmptySubscriptionGuard(): Plugin {
  return {
    onSubscribe({ args, setResultAndStopExecution }) {
      if (subscriptionSelectsNothing(args.document, args.operationName, args.variableValues)) {
        setResultAndStopExecution({
          errors: [
            badInput(
              'This subscription selects no field (each is left out by @skip or @include): select one, e.g. ' +
                'metricIngested.',
            ),
          ],
        });
      }
    },
  };
}
