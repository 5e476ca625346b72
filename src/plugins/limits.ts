/**
 * Limits on what one operation may ask, all enforced before execution (so before any SQL):
 *
 * - tokens (while parsing), depth, aliases and directives (while validating): graphql-armor's rules, with errors that
 *   carry a code and the limit;
 * - cost (after validation, when the variables are known): the most objects the answer can hold, see `operationCost`;
 * - "Did you mean ...?" hints can be removed from every error (graphql-armor's own plugin removes them from validation
 *   errors only, not from the variables' coercion errors, nor the enum-value form).
 */
import { maxAliasesPlugin } from '@escape.tech/graphql-armor-max-aliases';
import { maxDepthPlugin } from '@escape.tech/graphql-armor-max-depth';
import { maxDirectivesPlugin } from '@escape.tech/graphql-armor-max-directives';
import { maxTokensPlugin } from '@escape.tech/graphql-armor-max-tokens';
import {
  type DocumentNode,
  type FragmentDefinitionNode,
  GraphQLError,
  type GraphQLNamedType,
  type GraphQLSchema,
  getNamedType,
  getNullableType,
  isCompositeType,
  isInterfaceType,
  isListType,
  isObjectType,
  Kind,
  type OperationDefinitionNode,
  type SelectionSetNode,
  type ValidationContext,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { findOperation, fragmentsOf, rawArgument } from './operation.js';

export interface QueryLimits {
  maxDepth: number;
  maxAliases: number;
  maxTokens: number;
  maxDirectives: number;
  maxCost: number;
}

/**
 * A refused operation. `spec: true`: like any invalid operation, 400 for clients that accept
 * application/graphql-response+json, 200 for plain application/json ones (the GraphQL over HTTP specification).
 */
function limitError(message: string, code: string, limit: number, found: number | undefined): GraphQLError {
  return new GraphQLError(message, {
    extensions: { code, limit, ...(found === undefined ? {} : { found }), http: { status: 400, spec: true } },
  });
}

/** graphql-armor reports "..., found N."; its number is kept, its wording replaced by ours. */
function foundIn(error: GraphQLError): number | undefined {
  const match = /found (\d+)/.exec(error.message);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

/** Turns one of armor's rejections into our error, reported as a validation error (or thrown while parsing). */
function reject(code: string, limit: number, describe: (found: number | undefined) => string) {
  return (context: ValidationContext | null, armorError: GraphQLError) => {
    const found = foundIn(armorError);
    const error = limitError(describe(found), code, limit, found);
    if (context) context.reportError(error);
    else throw error;
  };
}

type ArmorRejection = ReturnType<typeof reject>;
type ArmorPlugin = (options: { n: number; propagateOnRejection: boolean; onReject: ArmorRejection[] }) => unknown;

/** One armor limit, refused in our words (never propagated: the rejection is reported as our error). */
function armor(plugin: ArmorPlugin, n: number, code: string, describe: (found: number | undefined) => string): Plugin {
  return plugin({ n, propagateOnRejection: false, onReject: [reject(code, n, describe)] }) as Plugin;
}

/** Armor's depth, aliases, directives and tokens limits. */
export function armorPlugins(limits: QueryLimits): Plugin[] {
  return [
    armor(
      maxTokensPlugin,
      limits.maxTokens,
      'TOKEN_LIMIT_EXCEEDED',
      () =>
        `The query text has more than ${limits.maxTokens} tokens, the most this service parses. ` +
        'Send large inputs as variables, not literals.',
    ),
    armor(
      maxDepthPlugin,
      limits.maxDepth,
      'DEPTH_LIMIT_EXCEEDED',
      (found) =>
        `The operation nests selections ${found ?? 'too many'} levels deep; at most ${limits.maxDepth} are allowed.`,
    ),
    armor(
      maxAliasesPlugin,
      limits.maxAliases,
      'ALIAS_LIMIT_EXCEEDED',
      (found) => `The operation uses ${found ?? 'too many'} aliases; at most ${limits.maxAliases} are allowed.`,
    ),
    armor(
      maxDirectivesPlugin,
      limits.maxDirectives,
      'DIRECTIVE_LIMIT_EXCEEDED',
      (found) => `The operation uses ${found ?? 'too many'} directives; at most ${limits.maxDirectives} are allowed.`,
    ),
  ];
}

/**
 * The cost of an operation: the most objects its answer can hold. Each selected field of object type counts 1 (scalars
 * count 0: how many there are per object is bounded by the schema and by the alias limit); the sub-selection of a field
 * with a `first` argument (a page) counts `first` times — the value from the literal, the variables, or the default
 * page size declared on the field (`extensions: { page }`). A list without `first` counts its sub-selection at the
 * list's server-side maximum, declared on the field (`extensions: { listMax }`: a number, or the name of a limit such
 * as `maxStatGroups`), else DEFAULT_LIST_MAX times. graphql-armor's cost rule cannot see variables (`first: $n` counts
 * 1), so this one replaces it.
 *
 * A full page of `metrics(first: 1000)` with every field costs 1 + 1000 x (edges, node, pageInfo) = 3,001: it fits the
 * default budget of 5,000, a second one in the same operation does not. Introspection fields are not counted.
 */
export function operationCost(
  schema: GraphQLSchema,
  document: DocumentNode,
  operation: OperationDefinitionNode,
  variables: Readonly<Record<string, unknown>> | null | undefined,
  listLimits: ListLimits,
): number {
  const fragments = fragmentsOf(document);
  // A fragment's cost does not depend on where it is spread: computed once, so fan-out cannot make this exponential.
  const fragmentCosts = new Map<string, number>();
  const pageSize = (raw: unknown, declared: unknown): number => {
    const page = pageLimits(declared);
    if (typeof raw !== 'number' || !Number.isFinite(raw) || raw < 0) return page.defaultFirst;
    // Past the page limit the field refuses the request itself, with a message about `first` that is clearer than cost.
    return Math.min(Math.floor(raw), page.maxFirst + 1);
  };

  const costOf = (selectionSet: SelectionSetNode, parentType: GraphQLNamedType | undefined): number => {
    let total = 0;
    for (const selection of selectionSet.selections) {
      if (selection.kind === Kind.FIELD) {
        const name = selection.name.value;
        if (name.startsWith('__') || !(isObjectType(parentType) || isInterfaceType(parentType))) continue;
        const field = parentType.getFields()[name];
        if (!field) continue;
        const type = getNamedType(field.type);
        if (!isCompositeType(type)) continue;
        let children = selection.selectionSet ? costOf(selection.selectionSet, type) : 0;
        if (field.args.some((a) => a.name === 'first')) {
          const { present, value } = rawArgument(selection, 'first', operation, variables);
          const fallback = field.args.find((a) => a.name === 'first')?.defaultValue;
          children *= pageSize(present ? value : fallback, field.extensions?.page);
        } else if (isListType(getNullableType(field.type))) {
          children *= listMax(field.extensions?.listMax, listLimits);
        }
        total += 1 + children;
      } else if (selection.kind === Kind.INLINE_FRAGMENT) {
        const type = selection.typeCondition ? schema.getType(selection.typeCondition.name.value) : parentType;
        total += costOf(selection.selectionSet, type ?? undefined);
      } else {
        total += fragmentCost(fragments.get(selection.name.value));
      }
    }
    return total;
  };
  const fragmentCost = (fragment: FragmentDefinitionNode | undefined): number => {
    if (!fragment) return 0;
    const known = fragmentCosts.get(fragment.name.value);
    if (known !== undefined) return known;
    fragmentCosts.set(fragment.name.value, 0); // cycles are invalid (validation ran), but never loop
    const cost = costOf(fragment.selectionSet, schema.getType(fragment.typeCondition.name.value) ?? undefined);
    fragmentCosts.set(fragment.name.value, cost);
    return cost;
  };
  return costOf(operation.selectionSet, schema.getRootType(operation.operation) ?? undefined);
}

/** The server-side limits a list field may name as its maximum length (`extensions: { listMax: 'maxStatGroups' }`). */
export interface ListLimits {
  maxStatGroups: number;
}

/** What a list without `first` and without a declared maximum counts as. */
export const DEFAULT_LIST_MAX = 100;

/** A paged field's sizes, declared on it: `extensions: { page: { defaultFirst, maxFirst } }`. */
interface PageLimits {
  defaultFirst: number;
  maxFirst: number;
}

function pageLimits(declared: unknown): PageLimits {
  const page = declared as Partial<PageLimits> | undefined;
  if (typeof page?.defaultFirst === 'number' && typeof page.maxFirst === 'number') {
    return { defaultFirst: page.defaultFirst, maxFirst: page.maxFirst };
  }
  return { defaultFirst: DEFAULT_LIST_MAX, maxFirst: DEFAULT_LIST_MAX };
}

function listMax(declared: unknown, limits: ListLimits): number {
  if (typeof declared === 'number') return declared;
  if (typeof declared === 'string' && Object.hasOwn(limits, declared)) return limits[declared as keyof ListLimits];
  return DEFAULT_LIST_MAX;
}

/** The cost check: the error for an operation past `maxCost` with these variables, else null (see security.ts). */
export function costLimit(maxCost: number, listLimits: ListLimits) {
  return (args: {
    schema: GraphQLSchema;
    document: DocumentNode;
    operationName?: string | null;
    variableValues?: Readonly<Record<string, unknown>> | null;
  }): GraphQLError | null => {
    const operation = findOperation(args.document, args.operationName);
    if (!operation) return null;
    const cost = operationCost(args.schema, args.document, operation, args.variableValues, listLimits);
    if (cost <= maxCost) return null;
    return limitError(
      `The operation could return ${cost} objects; at most ${maxCost} are allowed. A page of \`first: n\` counts ` +
        `n times ` +
        'its selection: ask for smaller pages, fewer pages in one operation, or fewer nested objects.',
      'COST_LIMIT_EXCEEDED',
      maxCost,
      cost,
    );
  };
}

/** graphql-js hints: `Did you mean "x"?`, `Did you mean "x" or "y"?`, `Did you mean the enum value "X"?`. */
const SUGGESTION = /\s*Did you mean [^?]*\?/;
const SUGGESTIONS = new RegExp(SUGGESTION.source, 'g');

/** Removes "Did you mean" hints (which reveal the schema's names) from every error of every result. */
export function useBlockFieldSuggestions(): Plugin {
  return {
    onExecutionResult({ result, setResult }) {
      if (!result || Symbol.asyncIterator in result || !result.errors?.length) return;
      if (!result.errors.some((e) => SUGGESTION.test(e.message))) return;
      setResult({
        ...result,
        errors: result.errors.map((e) => {
          if (!SUGGESTION.test(e.message)) return e;
          return new GraphQLError(e.message.replace(SUGGESTIONS, ''), {
            nodes: e.nodes,
            source: e.source,
            positions: e.positions,
            path: e.path,
            originalError: e.originalError,
            extensions: e.extensions,
          });
        }),
      });
    },
  };
}

/** A header a browser cannot add cross-site without a CORS preflight. */
export const CSRF_HEADER = 'x-graphql-yoga-csrf';
