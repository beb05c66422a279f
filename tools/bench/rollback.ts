// Rollback against a full restore: on a 4 GiB source with 1% changed in scattered 64 KiB
// writes, `dpsr rollback` (tracked) against `dd bs=4M oflag=direct` of the whole image from
// the DPSR drive, side by side in each round; and once, a rollback without tracker history
// (--drive: compares the whole source). Loop devices over images in /dev/shm, so the disks
// are not what is measured. Run: node dist/tools/bench/rollback.js [--gib N] [--rounds N] [--dir D]
import path from 'node:path';
import { rollbackCommand } from '../../src/cli/commands/rollback.js';
import { pairCommand } from '../../src/cli/commands/pair.js';
import { syncCommand } from '../../src/cli/commands/sync.js';
import { unpairCommand } from '../../src/cli/commands/unpair.js';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const GiB = 1 << 30, MiB = 1 << 20;
const sizeGiB = Number(arg('gib', '4'));
const rounds = Number(arg('rounds', '3'));
process.env.UV_THREADPOOL_SIZE ??= '32'; // as bin/dpsr.js does, before the pool's first use
process.env.TMPDIR = arg('dir', '/dev/shm'); // scratchSpace makes its images under os.tmpdir()
const { run, scratchSpace, benchSettings } = await import('./scratch.js');
const { dir, cleanups, cleanup, attach } = scratchSpace('dpsr-bench-rollback-');
const now = () => performance.now();
const quiet = () => {};

/** 1% of the device in scattered 64 KiB O_DIRECT writes, none twice (fio's random map). */
function changeOnePercent(dev: string, seed: number): number {
  const bytes = Math.round((sizeGiB * GiB * 0.01) / (64 << 10)) * (64 << 10);
  run('fio', ['--name=change', `--filename=${dev}`, '--rw=randwrite', '--bs=64k', '--direct=1', '--ioengine=libaio',
    '--iodepth=16', `--io_size=${bytes}`, `--randseed=${seed}`, '--output=/dev/null']);
  return bytes;
}

/** The whole image back with dd, as one would without dpsr. */
function ddRestore(drive: string, source: string): number {
  const t = now();
  run('dd', [`if=${drive}`, `of=${source}`, 'bs=4M', `count=${sizeGiB * 256}`, 'oflag=direct', 'status=none']);
  return (now() - t) / 1000;
}

async function main(): Promise<void> {
  const source = attach('source.img', sizeGiB * GiB);
  const drive = attach('drive.img', sizeGiB * GiB + 64 * MiB);
  const settings = benchSettings(dir, 'rollback', cleanups);
  console.log(`# dpsr rollback benchmark: ${sizeGiB} GiB loop devices over files in ${dir} (direct I/O), ${rounds} rounds`);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);
  run('fio', ['--name=fill', `--filename=${source}`, '--rw=write', '--bs=4M', '--direct=1', '--ioengine=libaio', '--iodepth=4',
    `--size=${sizeGiB}G`, '--refill_buffers', '--output=/dev/null']);
  await pairCommand({ source, drive, name: 'bench', force: true, noReserve: false, reserveBytes: 64 * MiB }, settings, quiet);
  await syncCommand({ name: 'bench', all: false, json: false, quietMs: 0 }, settings, quiet);
  const rollback = () => rollbackCommand({ name: 'bench', yes: true, dryRun: false, json: false }, settings, quiet);

  const results: Array<{ changed: number; rollback: number; written: number; dd: number }> = [];
  for (let r = 0; r < rounds; r++) {
    const changed = changeOnePercent(source, 2000 + r * 2);
    let t = now();
    const rep = await rollback();
    const seconds = (now() - t) / 1000;
    if (rep.notClean) console.log(`  (round ${r + 1}: rollback not settled: ${rep.notClean})`);
    changeOnePercent(source, 2001 + r * 2);
    const dd = ddRestore(drive, source);
    t = now();
    const settled = await rollback(); // dd rewrote the whole source: the tracker holds it all dirty until a rollback settles it
    const settle = (now() - t) / 1000;
    results.push({ changed, rollback: seconds, written: rep.writtenBytes, dd });
    console.log(`round ${r + 1}: 1% changed (${(changed / MiB).toFixed(1)} MiB in 64 KiB writes): dpsr rollback ${seconds.toFixed(2)} s ` +
      `(wrote ${(rep.writtenBytes / MiB).toFixed(1)} MiB) | dd full restore ${dd.toFixed(2)} s | dd/rollback ${(dd / seconds).toFixed(1)}x ` +
      `(a rollback after dd, writing it all: ${settle.toFixed(2)} s${settled.notClean ? `; not settled: ${settled.notClean}` : ''})`);
  }

  // No tracker history (a rescue shell): read both sides in full, write the differences.
  const changed = changeOnePercent(source, 3000);
  const t = now();
  const cmp = await rollbackCommand({ drive, yes: true, dryRun: false, json: false }, settings, quiet);
  const compareSeconds = (now() - t) / 1000;
  await rollback(); // settles what the compare wrote
  console.log(`no history (--drive): compare rollback ${compareSeconds.toFixed(2)} s, wrote ${(cmp.writtenBytes / MiB).toFixed(1)} MiB for ` +
    `${(changed / MiB).toFixed(1)} MiB changed`);
  await unpairCommand({ name: 'bench' }, settings, quiet);

  const mean = (f: (x: (typeof results)[0]) => number) => results.reduce((a, x) => a + f(x), 0) / results.length;
  const summary = {
    sizeGiB, rounds,
    rollbackSeconds: mean((x) => x.rollback), ddSeconds: mean((x) => x.dd), ddOverRollback: mean((x) => x.dd / x.rollback),
    writtenOverChanged: mean((x) => x.written / x.changed), compareSeconds, compareWrittenBytes: cmp.writtenBytes,
  };
  console.log(`summary: rollback ${summary.rollbackSeconds.toFixed(2)} s vs dd ${summary.ddSeconds.toFixed(2)} s: ` +
    `${summary.ddOverRollback.toFixed(1)}x faster; wrote/changed ${summary.writtenOverChanged.toFixed(2)}; ` +
    `without history (compare) ${compareSeconds.toFixed(2)} s`);
  console.log(`BENCH_JSON ${JSON.stringify(summary)}`);
}

main().then(cleanup, (err) => { console.error(err); cleanup(); process.exit(1); });
