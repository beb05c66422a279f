// Fuzzed command lines for every dpsr command, from a seed: random and
// boundary values (negative, huge, 0, NaN, empty, unicode, overlong paths,
// unknown flags) for its options and arguments, among them the test pair's
// own name and devices. Each line is judged: an exit status from the table
// (never a signal or a hang), one line on stderr when it fails, never a stack
// trace, and for a usage error (2) or a refusal (3) not one sector written to
// either device (the kernel's write counts, which see every write).
import path from 'node:path';
import { runDpsr, writtenSectors } from './fixture.js';
import { mulberry32 } from './seeded-random.js';

/** What the lines may name: a pair, its devices, a scratch folder (never a device outside the test). */
export interface FuzzTarget { pair: string; source: string; drive: string; dir: string }

// Commands that end by themselves (not daemon, watch or demo), and not boot, which writes /run/dpsr.
const COMMANDS = ['pair', 'unpair', 'sync', 'status', 'verify', 'diff', 'restore', 'rollback', 'recover', 'history', 'revert',
  'shutdown', 'udev-probe', 'install', 'uninstall', 'man', 'frob', ''];
const OPTIONS = ['--name', '--force', '--reserve', '--no-reserve', '--history', '--insecure', '--all', '--json', '--no-freeze', '--quiet-period',
  '--timeout', '--in-place', '--point', '-l', '--long', '--max-age', '--drive', '--source', '--yes', '--dry-run', '--to', '--overwrite',
  '--content', '--partition', '--whole', '--onto', '--in-partition', '--at', '--drop', '--drop-newer', '--exit-code', '--root', '--help', '--version',
  '--', '-', '--bogus', '-x', '--reserve=', '--timeout=-1', '--quiet-period=NaN'];

function values(t: FuzzTarget): string[] {
  return ['', ' ', '0', '-0', '-1', '1', '-5s', '1e309', '-1e309', 'NaN', 'Infinity', '99999999999999999999', '18446744073709551616', '0x10', '3.5',
    '1Q', '8M', '1T', '10m', '2h ago', 'yesterday', '1970-01-01', '9999-12-31T23:59:59Z', 'all', t.pair, `${t.pair}x`, 'no-such-pair', '../../etc',
    'ünïcödé', '名前', '\u202e', 'x'.repeat(5000), `/${'a'.repeat(255)}/${'b'.repeat(4096)}`, '/nonexistent', '/dev/null', '/dev/zero', t.dir,
    path.join(t.dir, 'missing'), t.source, t.drive, `${t.source}p1`, '%s%n', '$(id)', '\n', 'a\tb', 'nbd://127.0.0.1:1/x', 'nbd+unix:///x?socket=/nonexistent'];
}

/** `perCommand` command lines for each command, from `seed`. */
export function fuzzCommandLines(seed: number, perCommand: number, t: FuzzTarget): string[][] {
  const random = mulberry32(seed);
  const pick = <T>(a: readonly T[]) => a[Math.floor(random() * a.length)];
  const vals = values(t);
  const lines: string[][] = [];
  COMMANDS.forEach((command, c) => {
    for (let i = 0; i < perCommand; i++) {
      const args = command ? [command] : [];
      for (let n = Math.floor(random() * 6); n > 0; n--) args.push(random() < 0.45 ? pick(OPTIONS) : pick(vals));
      // Never the real system: install and uninstall get a root of their own.
      if (command === 'install' || command === 'uninstall') args.push('--root', path.join(t.dir, `root-${c}-${i}`));
      lines.push(args);
    }
  });
  return lines;
}

export interface FuzzTally { cases: number; byStatus: Map<number, number>; problems: string[] }

export const newTally = (): FuzzTally => ({ cases: 0, byStatus: new Map(), problems: [] });

/** Runs one command line and judges it; what is wrong goes to `tally.problems`. */
export function runFuzzCase(env: NodeJS.ProcessEnv, args: string[], t: FuzzTarget, tally: FuzzTally): void {
  const before = [writtenSectors(t.source), writtenSectors(t.drive)];
  const r = runDpsr(env, args, 60_000);
  const written = [writtenSectors(t.source) - before[0], writtenSectors(t.drive) - before[1]];
  const shown = JSON.stringify(args).slice(0, 200);
  const problem = (what: string) => tally.problems.push(`${shown}: ${what}: exit ${r.status}: ${r.stderr.slice(0, 400)}`);
  tally.cases++;
  tally.byStatus.set(r.status ?? -1, (tally.byStatus.get(r.status ?? -1) ?? 0) + 1);
  if (r.status === null || r.status < 0 || r.status > 4) return void problem('a signal, a timeout or an exit status outside the table');
  if (/\n\s+at .*:\d+:\d+/.test(r.stderr)) return void problem('a stack trace');
  // A bare `dpsr` prints its usage, as git and systemctl do: the one answer that is not one line.
  const usage = args.length === 0 && r.status === 2 && r.stderr.startsWith('Usage: dpsr');
  if (r.status !== 0 && !usage && r.stderr.trim().split('\n').length !== 1) return void problem('not one line');
  if ((r.status === 2 || r.status === 3) && (written[0] !== 0 || written[1] !== 0)) problem(`refused, yet ${written[0]} + ${written[1]} sectors written`);
}

/** "exit 0: 12, exit 2: 80, ..." */
export const describeTally = (t: FuzzTally) => [...t.byStatus].sort((a, b) => a[0] - b[0]).map(([s, n]) => `exit ${s}: ${n}`).join(', ');
