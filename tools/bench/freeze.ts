// Point-in-time syncs of a busy mounted file system: freeze durations
// (median, p99, max) while a writer keeps 50 MB/s going; and what the redo
// journal costs: the same small generations synced through the journal and
// written in place, side by side.
// Run: node dist/tools/bench/freeze.js [--syncs N] [--rate MBps]
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Settings } from '../../src/base/defaults.js';
import { run, scratchSpace, benchSettings } from './scratch.js';
import { pairCommand } from '../../src/cli/commands/pair.js';
import { unpairCommand } from '../../src/cli/commands/unpair.js';
import { closeSession, openSession } from '../../src/state/session.js';
import { syncPair } from '../../src/sync/sync.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const syncs = arg('syncs', 20);
const rateMBps = arg('rate', 50);
const MiB = 1 << 20;
const { dir, cleanups, cleanup, attach } = scratchSpace('dpsr-bench-freeze-');

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];

async function syncOnce(settings: Settings, name: string, opts: { journal?: boolean }) {
  const s = await openSession(settings);
  try {
    return await syncPair(s, name, { quietMs: 0, ...opts });
  } finally {
    await closeSession(s);
  }
}

async function main(): Promise<void> {
  const settings = benchSettings(dir, 'freeze', cleanups);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);

  // 1. Freeze durations under a steady writer.
  const source = attach('source.img', 1024 * MiB);
  const drive = attach('drive.img', 1024 * MiB + 512 * MiB);
  run('mkfs.ext4', ['-q', '-F', source]);
  const mnt = fs.mkdtempSync(path.join(dir, 'mnt-'));
  run('mount', [source, mnt]);
  cleanups.push(() => { if (fs.readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} `)) run('umount', [mnt]); });
  await pairCommand({ source, drive, name: 'live', force: false, noReserve: false, reserveBytes: 512 * MiB }, settings, () => {});
  const writer = spawn('fio', ['--name=w', `--filename=${mnt}/busy`, '--size=256M', '--rw=randwrite', '--bs=64k',
    '--ioengine=psync', '--direct=1', '--thread', `--rate=${rateMBps}m`, '--time_based', '--runtime=3600', '--output=/dev/null']);
  cleanups.push(() => writer.kill('SIGKILL'));
  await new Promise((r) => setTimeout(r, 2000));
  const freezes: number[] = [];
  const images: string[] = [];
  for (let i = 0; i < syncs; i++) {
    const r = await syncOnce(settings, 'live', {});
    if (r.freezeMs !== null) freezes.push(r.freezeMs);
    images.push(r.image);
    await new Promise((res) => setTimeout(res, 500));
  }
  await new Promise((resolve) => { writer.on('exit', resolve); writer.kill('SIGKILL'); });
  const pointInTime = images.filter((x) => x === 'point-in-time').length;
  console.log(`freeze while writing ${rateMBps} MB/s (${syncs} syncs, ${pointInTime} point-in-time): median ${pct(freezes, 50).toFixed(1)} ms, ` +
    `p99 ${pct(freezes, 99).toFixed(1)} ms, max ${Math.max(...freezes).toFixed(1)} ms (target p99 < 100 ms)`);
  await unpairCommand({ name: 'live' }, settings, () => {});

  // 2. The journal's cost: small generations (4 MiB in 64 KiB writes) through the journal vs in place.
  run('umount', [mnt]);
  await pairCommand({ source, drive, name: 'raw', force: true, noReserve: false, reserveBytes: 512 * MiB }, settings, () => {});
  await syncOnce(settings, 'raw', {});
  const times: Record<'journal' | 'direct', number[]> = { journal: [], direct: [] };
  for (let i = 0; i < 6; i++) {
    const mode = i % 2 === 0 ? 'journal' : 'direct';
    run('fio', ['--name=c', `--filename=${source}`, '--rw=randwrite', '--bs=64k', '--direct=1', '--ioengine=libaio', '--iodepth=8',
      '--io_size=4M', `--randseed=${i + 7}`, '--output=/dev/null']);
    const r = await syncOnce(settings, 'raw', { journal: mode === 'journal' });
    if (r.journaled !== (mode === 'journal')) throw new Error(`expected a ${mode} sync`);
    times[mode].push(r.durationMs);
  }
  const med = (xs: number[]) => pct(xs, 50);
  console.log(`journal cost (4 MiB generations, alternated): journal ${med(times.journal).toFixed(0)} ms, in place ${med(times.direct).toFixed(0)} ms: ` +
    `ratio ${(med(times.journal) / med(times.direct)).toFixed(2)} (target <= 1.5)`);
  await unpairCommand({ name: 'raw' }, settings, () => {});
  console.log(`BENCH_JSON ${JSON.stringify({ rateMBps, syncs, freezes, journalMs: times.journal, directMs: times.direct })}`);
}

process.env.UV_THREADPOOL_SIZE ??= '32';
main().then(cleanup, (err) => { console.error(err); cleanup(); process.exit(1); });
