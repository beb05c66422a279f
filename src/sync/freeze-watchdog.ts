// The freeze watchdog: a separate process that thaws the given file systems
// when its deadline passes or when dpsr dies (EOF on its stdin), so a file
// system is never left frozen. It writes nothing to any file system; it
// reports on its stdout, a pipe. File systems that cannot freeze (vfat) were
// remounted read-only instead: it makes them writable again too.
// Usage: node freeze-watchdog.js DEADLINE_MS MOUNT... [--ro MOUNT...]
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { native } from '../base/native.js';

const [deadlineArg, ...rest] = process.argv.slice(2);
const roAt = rest.indexOf('--ro');
const mounts = roAt < 0 ? rest : rest.slice(0, roAt);
const readOnlyMounts = roAt < 0 ? [] : rest.slice(roAt + 1);
const deadlineMs = Number(deadlineArg);
// Open before anything is frozen: opening a directory on a frozen file system works, but why risk it.
const fds = mounts.map((m) => fs.openSync(m, 'r'));
let done = false;

function thawAll(reason: string): void {
  if (done) return;
  done = true;
  const thawed: string[] = [];
  fds.forEach((fd, i) => {
    try {
      native().fiThaw(fd);
      thawed.push(mounts[i]);
    } catch {
      // EINVAL: it was not frozen (dpsr thawed it already)
    }
  });
  for (const m of readOnlyMounts) {
    try {
      execFileSync('mount', ['-o', 'remount,rw', m], { stdio: 'ignore' });
      thawed.push(m);
    } catch {
      // gone or already writable
    }
  }
  try {
    fs.writeSync(1, `${JSON.stringify({ event: 'thawed', reason, thawed })}\n`);
  } catch {
    // the parent is gone
  }
  process.exit(0);
}

process.stdin.on('data', (d) => {
  if (d.toString().includes('thawed')) { // the parent thawed: nothing left to do
    done = true;
    try { fs.writeSync(1, `${JSON.stringify({ event: 'released' })}\n`); } catch { /* parent gone */ }
    process.exit(0);
  }
});
process.stdin.on('end', () => thawAll('dpsr-exited'));
process.stdin.on('error', () => thawAll('dpsr-exited'));
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => thawAll(sig));
setTimeout(() => thawAll('deadline'), deadlineMs);
fs.writeSync(1, `${JSON.stringify({ event: 'ready' })}\n`);
