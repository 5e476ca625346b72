# syntax=docker/dockerfile:1
#
# The metrics service: `docker build -t metrics-service .`, or `docker compose up --build` (docker-compose.yml).
# test/docker-files.test.ts checks this file against package.json, src/ and src/config.ts.
#
# Node 24 (an LTS line, supported until April 2028) on Debian bookworm, slim variant. Prisma 7 supports
# ^20.19 || ^22.12 || >=24.0 and package.json asks >=20.19; 22 would reach end of life in April 2027.
# Only the major is pinned so that rebuilding picks up Node and Debian security fixes.
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: all dependencies, generated Prisma client, TypeScript compiled to dist/ -----------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false

# Dependencies first, so that editing src/ reuses this layer. `npm ci` runs the root postinstall
# (`node scripts/prisma.mjs generate`), which needs the Prisma config and schema. Nothing relies on
# dependencies' own install scripts (npm may or may not run them).
COPY package.json package-lock.json prisma.config.ts ./
COPY scripts/prisma.mjs ./scripts/prisma.mjs
COPY prisma/schema.prisma ./prisma/schema.prisma
RUN --mount=type=cache,target=/root/.npm \
    npm ci

# `npm run build` (scripts/build.mjs) regenerates the client into src/generated, compiles src/ (generated client
# included) to dist/, and makes GraphiQL's minified, compressed files once (dist/graphiql/, ~15 s). dist/cli/main.js
# is the one entry point of the tools: executable, linked as `metrics-service`.
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/build.mjs
COPY src/ ./src/
RUN npm run build \
 && chmod +x dist/cli/main.js

# ---- runtime: production dependencies, dist/ and the migrations; runs as `node` ----------------------------------
FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=4000

# Production dependencies only. --omit=optional as well: prisma (the CLI) and typescript are optional peer
# dependencies of @prisma/client, so npm would otherwise install them (about 250 MB) although nothing at run time
# needs them; the generated client only needs @prisma/client/runtime. --ignore-scripts: the root postinstall
# would run the Prisma CLI, and the client is already compiled into dist/generated.
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm \
    npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund \
 && mkdir -p /app/.data \
 && chown node:node /app/.data

# Code and migrations stay owned by root (read-only to the service). dist/db/migrations.js finds the migrations
# at ../../prisma/migrations, i.e. /app/prisma/migrations.
COPY --from=build /app/dist ./dist
COPY prisma/ ./prisma/
# The tools: `metrics-service keys create ...` on PATH, and the npm scripts README names (`npm run keys -- list`),
# which run dist/cli/main.js through scripts/cli.mjs (no sources here, so never tsx). examples/ for README's import.
COPY scripts/cli.mjs scripts/build.mjs ./scripts/
COPY examples/ ./examples/
RUN ln -s /app/dist/cli/main.js /usr/local/bin/metrics-service

# The embedded database (used when DATABASE_URL is unset) lives in DATA_DIR, by default ./.data = /app/.data.
VOLUME ["/app/.data"]

USER node
EXPOSE 4000

# No curl in slim images: node's fetch. Exit 0 only for a 2xx from /health within 4 s.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 4000) + '/health', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# node itself is PID 1 (not npm, not a shell): SIGTERM/SIGINT reach src/main.ts, which drains requests in flight for
# up to SHUTDOWN_TIMEOUT_MS and exits. The service starts no child processes, so there are no zombies to reap and
# no init (tini) is needed.
CMD ["node", "dist/main.js"]
