/** The Pothos schema builder: plugins and scalars only; the types live in schema/. */
import SchemaBuilder from '@pothos/core';
import { GraphQLError, GraphQLScalarType } from 'graphql';
import { DateTimeResolver, SafeIntResolver } from 'graphql-scalars';
import type { RequestContext } from '../context.js';

export const builder = new SchemaBuilder<{
  Context: RequestContext;
  DefaultFieldNullability: false;
  DefaultInputFieldRequiredness: false;
  Scalars: {
    DateTime: { Input: Date; Output: Date | string };
    SafeInt: { Input: number; Output: number | bigint };
  };
}>({
  defaultFieldNullability: false,
});

/**
 * DateTime answers as the ISO text JSON would make of graphql-scalars' Date (`toISOString`), not as the Date: the
 * same output, and JSON.stringify stays on its fast path (a Date costs a toJSON call per value).
 */
const DateTimeAsText = new GraphQLScalarType({
  ...DateTimeResolver.toConfig(),
  serialize(value) {
    // graphql-scalars checks the value (an invalid Date or text is refused with its error) and gives a Date.
    const date: unknown = DateTimeResolver.serialize(value);
    return date instanceof Date ? date.toISOString() : date;
  },
});

/** A graphql-scalars scalar that refuses objects and functions before its own parseValue sees them. */
function refusingObjects(scalar: GraphQLScalarType): GraphQLScalarType {
  const config = scalar.toConfig();
  return new GraphQLScalarType({
    ...config,
    parseValue(value) {
      if ((typeof value === 'object' && value !== null && !(value instanceof Date)) || typeof value === 'function') {
        throw new GraphQLError(`${config.name} cannot represent an object or a list.`);
      }
      return config.parseValue ? config.parseValue(value) : value;
    },
  });
}

// Wrapped: graphql-scalars would throw a TypeError (HTTP 500) on an object whose toString is not a function.
builder.addScalarType('DateTime', refusingObjects(DateTimeAsText));
builder.addScalarType('SafeInt', refusingObjects(SafeIntResolver));

builder.queryType({});
builder.mutationType({});
builder.subscriptionType({});
