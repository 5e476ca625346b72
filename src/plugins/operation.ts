/**
 * What the security plugins need to know about an operation before it runs: its root fields (through fragments),
 * and the raw value of an argument, read from the literal or from the request's variables without coercing them
 * (coercing a 5,000-record batch twice would double the cost of ingestion).
 */
import {
  type ArgumentNode,
  type DocumentNode,
  type FieldNode,
  type FragmentDefinitionNode,
  GraphQLError,
  getOperationAST,
  Kind,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type ValueNode,
} from 'graphql';

export function findOperation(
  document: DocumentNode,
  operationName: string | null | undefined,
): OperationDefinitionNode | null {
  return getOperationAST(document, operationName ?? undefined) ?? null;
}

export function fragmentsOf(document: DocumentNode): Map<string, FragmentDefinitionNode> {
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const definition of document.definitions) {
    if (definition.kind === Kind.FRAGMENT_DEFINITION) fragments.set(definition.name.value, definition);
  }
  return fragments;
}

/**
 * The root fields an operation selects, fragments included; @skip/@include are ignored (a field that may run counts).
 */
export function rootFields(document: DocumentNode, operation: OperationDefinitionNode): FieldNode[] {
  const fragments = fragmentsOf(document);
  const fields: FieldNode[] = [];
  const seen = new Set<string>();
  const walk = (selectionSet: SelectionSetNode) => {
    for (const selection of selectionSet.selections) {
      if (selection.kind === Kind.FIELD) fields.push(selection);
      else if (selection.kind === Kind.INLINE_FRAGMENT) walk(selection.selectionSet);
      else if (!seen.has(selection.name.value)) {
        seen.add(selection.name.value);
        const fragment = fragments.get(selection.name.value);
        if (fragment) walk(fragment.selectionSet);
      }
    }
  };
  walk(operation.selectionSet);
  return fields;
}

/**
 * An argument's value as the client sent it: the literal, or the variable's raw JSON value (or its default).
 * `undefined` when the argument is absent or unresolvable; execution reports any type error later.
 */
export function rawArgument(
  field: FieldNode,
  name: string,
  operation: OperationDefinitionNode,
  variables: Readonly<Record<string, unknown>> | null | undefined,
): { present: boolean; value: unknown } {
  const argument: ArgumentNode | undefined = field.arguments?.find((a) => a.name.value === name);
  if (!argument) return { present: false, value: undefined };
  return { present: true, value: rawValue(argument.value, operation, variables) };
}

function rawValue(
  node: ValueNode,
  operation: OperationDefinitionNode,
  variables: Readonly<Record<string, unknown>> | null | undefined,
): unknown {
  switch (node.kind) {
    case Kind.VARIABLE: {
      const name = node.name.value;
      if (variables && Object.hasOwn(variables, name)) return variables[name];
      const definition = operation.variableDefinitions?.find((d) => d.variable.name.value === name);
      return definition?.defaultValue ? rawValue(definition.defaultValue, operation, variables) : undefined;
    }
    case Kind.INT:
      return Number.parseInt(node.value, 10);
    case Kind.FLOAT:
      return Number.parseFloat(node.value);
    case Kind.STRING:
    case Kind.ENUM:
      return node.value;
    case Kind.BOOLEAN:
      return node.value;
    case Kind.NULL:
      return null;
    case Kind.LIST:
      return node.values.map((v) => rawValue(v, operation, variables));
    case Kind.OBJECT:
      // Only the shape matters here (a list's length); the fields' values are not needed.
      return {};
  }
}

/** A GraphQL error with a code, extra extensions, and the HTTP status (and headers) Yoga should answer with. */
export function httpError(
  message: string,
  code: string,
  status: number,
  extra: Record<string, unknown> = {},
  headers?: Record<string, string>,
): GraphQLError {
  return new GraphQLError(message, {
    extensions: { code, ...extra, http: { status, ...(headers ? { headers } : {}) } },
  });
}
