#!/usr/bin/env node
// Runs every built test file in its own process (uvu prints a summary per
// file), then one plain closing line for CI: "N passed, N failed, N skipped".
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const testDir = path.join(root, 'dist/tests');
const only = process.argv.slice(2);
const files = fs.readdirSync(testDir)
  .filter((f) => f.endsWith('.test.js'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort();

// The tests set every DPSR_* variable they depend on: none may come from the
// caller's shell (DPSR_TEST_* are the suite's own knobs). LC_ALL=C: tools' messages are matched.
const env = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1', LC_ALL: 'C' };
for (const name of Object.keys(env)) if (name.startsWith('DPSR_') && !name.startsWith('DPSR_TEST_')) delete env[name];

let passed = 0, failed = 0, skipped = 0;
const strip = (s) => s.replace(/\x1b\[[0-9;]*m/g, '');
const num = (out, label) => Number((out.match(new RegExp(`${label}:\\s+(\\d+)`)) || [])[1] || 0);

for (const file of files) {
  const started = Date.now();
  console.log(`\n# ${file}`);
  const res = spawnSync(process.execPath, ['--expose-gc', path.join(testDir, file)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env,
    encoding: 'utf8',
    // A bound, not a wait: the guest test builds its guest (4-7 min on CI) and boots it four times.
    timeout: 40 * 60 * 1000,
  });
  const out = strip(res.stdout || '');
  process.stdout.write(out);
  const total = num(out, 'Total'), ok = num(out, 'Passed'), skip = num(out, 'Skipped');
  if (!/Total:/.test(out)) {
    console.log(`# ${file}: no summary (exit ${res.status}, signal ${res.signal}): counted as 1 failed`);
    failed += 1;
    continue;
  }
  passed += ok;
  skipped += skip;
  failed += Math.max(0, total - ok - skip);
  if (res.status !== 0 && total - ok - skip === 0) failed += 1; // crashed after its summary
  console.log(`# ${file}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
