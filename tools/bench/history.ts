// Restore points: a journaled sync with history on against the same sync
// with history off, side by side in one run (two pairs over equal sources,
// the same random 4 KiB changes, synced in alternating order; the drives'
// image files written whole first, so no sync allocates them), and the bytes
// each wrote to its DPSR drive (the kernel's count) against the bytes
// changed. Goal (issue 20): time <= 1.3x, bytes written <= 2x changed + the
// journal's own. Then a file restored from the point --points syncs back
// against the same file from the current image (an ext4 pair of its own,
// best of 3 each), and the history space used per MiB changed.
// --history-mib N makes the history region smaller than the rounds' undo (default: room for all), so
// the ring wraps and each sync first drops the oldest points for its record's space.
// Run: node dist/tools/bench/history.js [--mib N] [--rounds N] [--percent P] [--points N (0: skip)] [--history-mib N]
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { run, scratchSpace, benchSettings } from './scratch.js';
import { pairCommand } from '../../src/cli/commands/pair.js';
import { syncCommand } from '../../src/cli/commands/sync.js';
import { unpairCommand } from '../../src/cli/commands/unpair.js';
import { restoreCommand } from '../../src/cli/commands/restore.js';
import { readHistoryOf } from '../../src/restore/restore-points.js';
import { heldBytes } from '../../src/drive/history-region.js';
import { Store } from '../../src/state/store.js';
import type { Settings } from '../../src/base/defaults.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const MiB = 1 << 20;
const sizeMiB = arg('mib', 1024);
const rounds = arg('rounds', 4);
const percent = arg('percent', 2);
const pointsBack = arg('points', 10);
const now = () => performance.now();
const loadNow = () => os.loadavg().map((x) => x.toFixed(2)).join(' ');
const { dir, cleanups, cleanup, attach } = scratchSpace('dpsr-bench-history-');

/** Sectors the kernel counted as written to a device. */
const writtenSectors = (dev: string) => Number(fs.readFileSync(`/sys/class/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[6]);

/** `percent` of the device in random 4 KiB O_DIRECT writes, the same on every device given the same seed. */
function change(dev: string, seed: number): number {
  const bytes = Math.round((sizeMiB * MiB * percent) / 100 / 4096) * 4096;
  run('fio', ['--name=change', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
    '--iodepth=16', `--io_size=${bytes}`, `--randseed=${seed}`, '--randrepeat=0', '--norandommap', '--output=/dev/null']);
  return bytes;
}

async function main(): Promise<void> {
  const settings = benchSettings(dir, 'history', cleanups);
  const journal = Math.max(64, Math.ceil((sizeMiB * percent) / 100) * 4);
  const history = arg('history-mib', journal * rounds);
  const pairs = {
    on: { source: attach('on-source.img', sizeMiB * MiB), drive: attach('on-drive.img', (sizeMiB + journal + history + 1) * MiB), history },
    off: { source: attach('off-source.img', sizeMiB * MiB), drive: attach('off-drive.img', (sizeMiB + journal + 1) * MiB), history: 0 },
  };
  console.log(`# dpsr history benchmark: two ${sizeMiB} MiB sources (loop over files in ${os.tmpdir()}, direct I/O), ` +
    `${percent}% changed per round in 4 KiB writes, ${rounds} rounds; journal ${journal} MiB, history ${history} MiB`);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);
  console.log(`# load at the start: ${loadNow()}`);
  const fill = (dev: string) => run('fio', ['--name=fill', `--filename=${dev}`, '--rw=write', '--bs=4M', '--direct=1', '--ioengine=libaio', '--iodepth=4',
    '--size=100%', '--refill_buffers', '--output=/dev/null']);
  for (const [name, p] of Object.entries(pairs)) {
    fill(p.source);
    // Written whole first, as a disk is: else the history region's first writes also allocate the sparse file's blocks.
    fill(p.drive);
    await pairCommand({ source: p.source, drive: p.drive, name, force: true, noReserve: false, reserveBytes: journal * MiB,
      historyBytes: p.history ? p.history * MiB : 0 }, settings, () => {});
    await syncCommand({ name, all: false, json: false, quietMs: 0 }, settings, () => {});
  }
  const rows: Array<{ on: number; off: number; onUndo: number; onWritten: number; offWritten: number; changed: number }> = [];
  for (let r = 0; r < rounds; r++) {
    const changed = change(pairs.on.source, 7000 + r);
    change(pairs.off.source, 7000 + r);
    const seconds: Record<string, number> = {};
    const written: Record<string, number> = {};
    const undoSeconds: Record<string, number> = {};
    for (const name of r % 2 === 0 ? ['on', 'off'] : ['off', 'on']) {
      const drive = pairs[name as 'on' | 'off'].drive;
      const w0 = writtenSectors(drive);
      const t0 = now();
      const [report] = await syncCommand({ name, all: false, json: false, quietMs: 0 }, settings, () => {});
      seconds[name] = (now() - t0) / 1000;
      undoSeconds[name] = report.undoMs / 1000;
      written[name] = (writtenSectors(drive) - w0) * 512;
    }
    rows.push({ on: seconds.on, off: seconds.off, onUndo: undoSeconds.on, onWritten: written.on, offWritten: written.off, changed });
    console.log(`round ${r + 1}: ${(changed / MiB).toFixed(1)} MiB changed: sync with history ${seconds.on.toFixed(2)} s, without ${seconds.off.toFixed(2)} s ` +
      `(${(seconds.on / seconds.off).toFixed(2)}x; the undo's index entry after the commit ${undoSeconds.on.toFixed(2)} s of it); written to the drive ${(written.on / MiB).toFixed(1)} vs ${(written.off / MiB).toFixed(1)} MiB ` +
      `(${(written.on / changed).toFixed(2)}x vs ${(written.off / changed).toFixed(2)}x changed)`);
  }
  for (const name of Object.keys(pairs)) await unpairCommand({ name }, settings, () => {});
  const best = (f: (x: (typeof rows)[0]) => number) => Math.min(...rows.map(f));
  const mean = (f: (x: (typeof rows)[0]) => number) => rows.reduce((a, x) => a + f(x), 0) / rows.length;
  // Each round's pair of syncs ran back to back: the median of their ratios shrugs off a round the machine's load spoiled.
  const median = (f: (x: (typeof rows)[0]) => number) => {
    const v = rows.map(f).sort((a, b) => a - b);
    return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
  };
  const summary = {
    sizeMiB, rounds, percent,
    timeRatioBest: best((x) => x.on) / best((x) => x.off), timeRatioMedian: median((x) => x.on / x.off), timeRatioMean: mean((x) => x.on / x.off),
    undoShareMean: mean((x) => x.onUndo / x.on),
    writtenOverChangedOn: mean((x) => x.onWritten / x.changed), writtenOverChangedOff: mean((x) => x.offWritten / x.changed),
  };
  console.log(`summary: with history, sync time ${summary.timeRatioBest.toFixed(2)}x (best of each) / ${summary.timeRatioMedian.toFixed(2)}x (median of rounds) / ${summary.timeRatioMean.toFixed(2)}x (mean of rounds) ` +
    `of without (goal <= 1.3x), the undo after the commit ${(summary.undoShareMean * 100).toFixed(0)}% of a sync with history (mean); written ${summary.writtenOverChangedOn.toFixed(2)}x changed with history, ${summary.writtenOverChangedOff.toFixed(2)}x without ` +
    `(goal with history <= 2x + the journal's own, i.e. about 3x)`);
  console.log(`# load at the end of the rounds: ${loadNow()}`);
  const restore = pointsBack > 0 ? await restoreFromPoints(settings) : null;
  console.log(`BENCH_JSON ${JSON.stringify({ ...summary, restore })}`);
}

/** One run of fn, in seconds. */
async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = now();
  await fn();
  return (now() - t0) / 1000;
}

/**
 * An ext4 pair: a 16 MiB file rewritten before each of pointsBack + 1 syncs (with 16 MiB of other churn), then
 * that file restored from pointsBack points back and from the current image, in turns, best of 3 each.
 */
async function restoreFromPoints(settings: Settings) {
  const mib = 256;
  const historyMiB = (pointsBack + 2) * 40;
  const source = attach('rp-source.img', mib * MiB);
  const drive = attach('rp-drive.img', (mib + 64 + historyMiB + 1) * MiB);
  run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  const mnt = fs.mkdtempSync(path.join(dir, 'mnt-'));
  run('mount', [source, mnt]);
  cleanups.push(() => run('umount', [mnt]));
  await pairCommand({ source, drive, name: 'rp', force: true, noReserve: false, reserveBytes: 64 * MiB, historyBytes: historyMiB * MiB }, settings, () => {});
  const gens: number[] = [];
  let changed = 0;
  for (let g = 0; g <= pointsBack; g++) {
    fs.writeFileSync(path.join(mnt, 'f.bin'), crypto.randomBytes(16 * MiB));
    fs.writeFileSync(path.join(mnt, `churn-${g % 4}.bin`), crypto.randomBytes(16 * MiB));
    changed += 32 * MiB;
    const r = await syncCommand({ name: 'rp', all: false, json: false, quietMs: 0 }, settings, () => {});
    gens.push(r[0].generation);
  }
  const store = Store.open(settings.stateDir);
  const pair = store.pair('rp')!;
  await store.close();
  const usedBytes = readHistoryOf(pair).points.reduce((n, p) => n + heldBytes(p), 0);
  const at = String(gens[0]);
  const restoreTo = (name: string, atPoint?: string) => restoreCommand({
    name: 'rp', paths: ['f.bin'], to: path.join(dir, name), overwrite: true, content: false, dryRun: false, force: false, json: false, at: atPoint,
  }, settings, () => {});
  let current = Infinity;
  let back = Infinity;
  for (let i = 0; i < 3; i++) { // in turns: the machine's load moves
    current = Math.min(current, await timed(() => restoreTo(`cur-${i}`)));
    back = Math.min(back, await timed(() => restoreTo(`back-${i}`, at)));
  }
  await unpairCommand({ name: 'rp' }, settings, () => {});
  const result = { pointsBack, currentSeconds: current, backSeconds: back, ratio: back / current, historyUsedPerMiBChanged: usedBytes / changed };
  console.log(`restore of a 16 MiB file: from ${pointsBack} points back ${back.toFixed(2)} s, from the current image ${current.toFixed(2)} s ` +
    `(${result.ratio.toFixed(2)}x, best of 3 each); history used ${(usedBytes / MiB).toFixed(1)} MiB for ${(changed / MiB).toFixed(0)} MiB changed ` +
    `(${result.historyUsedPerMiBChanged.toFixed(2)} MiB per MiB)`);
  return result;
}

process.env.UV_THREADPOOL_SIZE ??= '32';
main().then(cleanup, (err) => { console.error(err); cleanup(); process.exit(1); });
