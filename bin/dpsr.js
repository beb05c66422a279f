#!/usr/bin/env node
// Entry point for the built CLI (npm run build first).
// Scattered extents copy fastest with many I/Os in flight; Node's fs runs them
// on libuv's pool, 4 threads unless set before its first use.
process.env.UV_THREADPOOL_SIZE ??= '32';
import('../dist/src/cli/cli.js').then((cli) => cli.main(process.argv.slice(2)));
