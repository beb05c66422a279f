#!/usr/bin/env node
// Entry point for the built CLI (npm run build first).
import('../dist/src/cli.js').then((cli) => cli.main(process.argv.slice(2)));
