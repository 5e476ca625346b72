import { defineConfig } from 'prisma/config';

// Used by the Prisma CLI (generate, studio, and migrate where Prisma's engines exist).
// The service itself reads its configuration from src/config.ts.
export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  datasource: { url: process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres' },
});
