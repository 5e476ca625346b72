/** The Pothos schema builder: plugins and scalars only; the types live in schema/. */
import SchemaBuilder from '@pothos/core';
import { DateTimeResolver, SafeIntResolver } from 'graphql-scalars';
import type { RequestContext } from './context.js';
import { refusingObjects } from './input-guards.js';

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

// Wrapped: graphql-scalars would throw a TypeError (HTTP 500) on an object whose toString is not a function.
builder.addScalarType('DateTime', refusingObjects(DateTimeResolver));
builder.addScalarType('SafeInt', refusingObjects(SafeIntResolver));

builder.queryType({});
builder.mutationType({});
builder.subscriptionType({});
