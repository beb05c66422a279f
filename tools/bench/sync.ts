// Cost follows change: on a 4 GiB source with 1% changed in random 4 KiB
// writes, `dpsr sync` against (a) a full compare-and-copy of the devices and
// (b) a full dd copy, side by side; and the full copy of `dpsr pair` against
// dd between the same devices. Run: node dist/tools/bench/sync.js [--gib N] [--rounds N]
import os from 'node:os';
import path from 'node:path';
import { compareExtents } from '../../src/io/copy.js';
import { openLocalDevice } from '../../src/io/local-device.js';
import { ExtentSet } from '../../src/base/extents.js';
import { run, scratchSpace, benchSettings } from './scratch.js';
import { pairCommand } from '../../src/cli/commands/pair.js';
import { syncCommand } from '../../src/cli/commands/sync.js';
import { unpairCommand } from '../../src/cli/commands/unpair.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const GiB = 1 << 30, MiB = 1 << 20;
const sizeGiB = arg('gib', 4);
const rounds = arg('rounds', 2);
const now = () => performance.now();
const { dir, cleanups, cleanup, attach } = scratchSpace('dpsr-bench-sync-');

/** 1% of the device in random 4 KiB O_DIRECT writes (fio, so the writes are real block I/O). */
function changeOnePercent(dev: string, seed: number): number {
  const bytes = Math.round(sizeGiB * GiB * 0.01 / 4096) * 4096;
  run('fio', ['--name=change', `--filename=${dev}`, '--rw=randwrite', '--bs=4k', '--direct=1', '--ioengine=libaio',
    '--iodepth=16', `--io_size=${bytes}`, `--randseed=${seed}`, '--norandommap', '--output=/dev/null']);
  return bytes;
}

function dd(src: string, dst: string): number {
  run('blockdev', ['--setrw', dst]);
  const t = now();
  run('dd', [`if=${src}`, `of=${dst}`, 'bs=4M', `count=${sizeGiB * 256}`, 'iflag=direct', 'oflag=direct', 'status=none']);
  return (now() - t) / 1000;
}

async function main(): Promise<void> {
  const source = attach('source.img', sizeGiB * GiB);
  const drive = attach('drive.img', sizeGiB * GiB + 64 * MiB);
  const settings = benchSettings(dir, 'sync', cleanups);
  console.log(`# dpsr sync benchmark: ${sizeGiB} GiB loop devices over files in ${os.tmpdir()} (direct I/O), ${rounds} rounds`);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);
  run('fio', ['--name=fill', `--filename=${source}`, '--rw=write', '--bs=4M', '--direct=1', '--ioengine=libaio', '--iodepth=4',
    `--size=${sizeGiB}G`, '--refill_buffers', '--output=/dev/null']);

  // Full copy: dd vs dpsr pair, between the same devices.
  const ddFullSeconds = dd(source, drive);
  const t = now();
  await pairCommand({ source, drive, name: 'bench', force: true, noReserve: false, reserveBytes: 64 * MiB }, settings, () => {});
  const pairSeconds = (now() - t) / 1000;
  await syncCommand({ name: 'bench', all: false, json: false, quietMs: 0 }, settings, () => {});
  const mbps = (s: number) => (sizeGiB * 1024) / s;
  console.log(`full copy: dd ${mbps(ddFullSeconds).toFixed(0)} MiB/s, dpsr pair ${mbps(pairSeconds).toFixed(0)} MiB/s: ratio ${(ddFullSeconds / pairSeconds).toFixed(3)} (target >= 0.90)`);

  const results: Array<{ sync: number; copied: number; written: number; compare: number; ddCopy: number }> = [];
  for (let r = 0; r < rounds; r++) {
    // (1) dpsr sync after 1% changed.
    const written = changeOnePercent(source, 1000 + r * 3);
    let t0 = now();
    const [rep] = await syncCommand({ name: 'bench', all: false, json: false, quietMs: 0 }, settings, () => {});
    const sync = (now() - t0) / 1000;
    // (2) what a tool without tracking must do: read both devices whole, write what differs.
    changeOnePercent(source, 1001 + r * 3);
    const src = openLocalDevice(source, false), dst = openLocalDevice(drive, true);
    dst.setReadOnly(false);
    t0 = now();
    await compareExtents(src, dst, ExtentSet.from([[0, sizeGiB * GiB / 512]]), { limitSectors: sizeGiB * GiB / 512, write: true });
    const compare = (now() - t0) / 1000;
    src.close();
    dst.close();
    // (3) or copy it all.
    changeOnePercent(source, 1002 + r * 3);
    const ddCopy = dd(source, drive);
    // The compare and dd wrote the drive behind dpsr's back: a sync with no change of its own brings tracking in line.
    await syncCommand({ name: 'bench', all: false, json: false, quietMs: 0 }, settings, () => {});
    results.push({ sync, copied: rep.copiedBytes, written, compare, ddCopy });
    console.log(`round ${r + 1}: 1% changed (${(written / MiB).toFixed(1)} MiB in 4 KiB writes): dpsr sync ${sync.toFixed(2)} s ` +
      `(copied ${(rep.copiedBytes / MiB).toFixed(1)} MiB) | full compare-and-copy ${compare.toFixed(2)} s | dd full copy ${ddCopy.toFixed(2)} s | ` +
      `compare/sync ${(compare / sync).toFixed(1)}x, dd/sync ${(ddCopy / sync).toFixed(1)}x`);
  }
  await unpairCommand({ name: 'bench' }, settings, () => {});
  const mean = (f: (x: (typeof results)[0]) => number) => results.reduce((a, x) => a + f(x), 0) / results.length;
  const summary = {
    sizeGiB, rounds,
    pairVsDdThroughput: ddFullSeconds / pairSeconds,
    syncSeconds: mean((x) => x.sync), compareSeconds: mean((x) => x.compare), ddSeconds: mean((x) => x.ddCopy),
    compareOverSync: mean((x) => x.compare / x.sync), ddOverSync: mean((x) => x.ddCopy / x.sync),
    copiedOverWritten: mean((x) => x.copied / x.written),
  };
  console.log(`summary: incremental sync ${summary.compareOverSync.toFixed(1)}x faster than a full compare (target >= 50x), ` +
    `${summary.ddOverSync.toFixed(1)}x faster than dd; copied/written ${summary.copiedOverWritten.toFixed(2)}; ` +
    `full copy at ${(100 * summary.pairVsDdThroughput).toFixed(0)}% of dd (target >= 90%)`);
  console.log(`BENCH_JSON ${JSON.stringify(summary)}`);
}

process.env.UV_THREADPOOL_SIZE ??= '32'; // as bin/dpsr.js does, before the pool's first use
main().then(cleanup, (err) => { console.error(err); cleanup(); process.exit(1); });
