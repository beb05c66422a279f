// What a reboot costs a pair: with a clean shutdown (`dpsr shutdown`, then
// `dpsr boot`) against one without (a crash: the whole source is compared).
// A "reboot" on loop devices over images in /dev/shm: the pinned programs
// removed, the loop devices detached, removed and attached again over the
// same files (fresh counters, as after a boot), another boot id. Per round:
// the time of `dpsr shutdown` and of `dpsr boot` (each a whole CLI run, node's
// start included, beside `dpsr --version` for that start alone), and what the
// first sync after the reboot read from both disks (the kernel's read
// counters) and copied, until the pair is clean.
// Run: node dist/tools/bench/reboot.js [--gib N] [--rounds N] [--dir D]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const arg = (name: string, dflt: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const GiB = 1 << 30, MiB = 1 << 20;
const sizeGiB = Number(arg('gib', '1'));
const rounds = Number(arg('rounds', '3'));
process.env.TMPDIR = arg('dir', '/dev/shm');
const { run, scratchSpace, benchSettings } = await import('./scratch.js');
const { native } = await import('../../src/base/native.js');
const { dir, cleanups, attach } = scratchSpace('dpsr-bench-reboot-');
const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');
const settings = benchSettings(dir, 'reboot', cleanups);
const bootIdFile = path.join(dir, 'boot_id');
const env = {
  ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DPSR_'))),
  DPSR_STATE_DIR: settings.stateDir, DPSR_SOCKET: settings.socketPath, DPSR_LOCK: settings.ownerLockPath,
  DPSR_BPF_DIR: settings.pinDir, DPSR_CONFIG: settings.configPath, DPSR_BOOT_ID_FILE: bootIdFile,
};

/** Runs the CLI; its wall time in ms and its stdout. */
function dpsr(...args: string[]): { ms: number; out: string } {
  const t = performance.now();
  const r = spawnSync(process.execPath, [BIN, ...args], { env, encoding: 'utf8' });
  const ms = performance.now() - t;
  if (r.status !== 0 && args[0] !== 'shutdown') throw new Error(`dpsr ${args.join(' ')}: exit ${r.status}: ${r.stderr}`);
  return { ms, out: r.stdout };
}

const sectorsRead = (dev: string) => Number(fs.readFileSync(`/sys/block/${path.basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[2]);

/** The loop device detached, removed and attached again over its file: its counters start at zero. */
const freshLoop = (dev: string) => run('python3', [path.resolve(path.dirname(BIN), '../tools/fresh-loop.py'), dev]);

function reboot(devs: string[], n: number): void {
  native().detach(settings.pinDir);
  devs.forEach(freshLoop);
  fs.writeFileSync(bootIdFile, `bench-boot-${n}\n`);
}

/** 0.1% of the source in scattered 64 KiB direct writes. */
function change(dev: string, seed: number): number {
  const bytes = Math.round((sizeGiB * GiB * 0.001) / (64 << 10)) * (64 << 10);
  run('fio', ['--name=change', `--filename=${dev}`, '--rw=randwrite', '--bs=64k', '--direct=1', '--ioengine=libaio',
    '--iodepth=16', `--io_size=${bytes}`, `--randseed=${seed}`, '--output=/dev/null']);
  return bytes;
}

const source = attach('source.img', sizeGiB * GiB);
// A journal as big as the source: after a crash the sync compares it all, and a compare must fit the journal.
const drive = attach('drive.img', 2 * sizeGiB * GiB + 128 * MiB);
fs.writeFileSync(bootIdFile, 'bench-boot-0\n');
console.log(`# dpsr reboot benchmark: ${sizeGiB} GiB loop devices over files in ${dir} (direct I/O), ${rounds} rounds`);
run('fio', ['--name=fill', `--filename=${source}`, '--rw=write', '--bs=4M', '--direct=1', '--ioengine=libaio', '--iodepth=4',
  `--size=${sizeGiB}G`, '--refill_buffers', '--output=/dev/null']);
dpsr('pair', source, drive, '--name', 'bench', '--force', '--reserve', `${sizeGiB * 1024 + 64}M`);
let boot = 0;
for (let r = 0; r < rounds; r++) {
  for (const clean of [true, false]) {
    dpsr('sync', 'bench', '--quiet-period', '0');
    const changed = change(source, 100 + r * 2 + (clean ? 0 : 1));
    const down = clean ? dpsr('shutdown', '--json') : null;
    const recorded = down ? JSON.parse(down.out).shutdown[0].recorded : false;
    reboot([drive, source], ++boot);
    const node = dpsr('--version').ms;
    const up = dpsr('boot', '--json');
    const verdict = JSON.parse(up.out).boot[0];
    const before = [sectorsRead(source), sectorsRead(drive)];
    const sync = JSON.parse(dpsr('sync', 'bench', '--json', '--quiet-period', '0').out).syncs[0];
    const read = [sectorsRead(source) - before[0], sectorsRead(drive) - before[1]].map((s) => s * 512);
    console.log(`round ${r + 1} ${clean ? 'clean ' : 'crash '}: ${(changed / MiB).toFixed(1)} MiB changed; ` +
      (down ? `shutdown ${down.ms.toFixed(0)} ms (recorded ${recorded}); ` : 'no shutdown; ') +
      `boot ${up.ms.toFixed(0)} ms (node alone ${node.toFixed(0)} ms) ${verdict.resumed ? 'resumed' : verdict.cause}; ` +
      `first sync read source ${(read[0] / MiB).toFixed(1)} MiB + drive ${(read[1] / MiB).toFixed(1)} MiB, ` +
      `compared ${(sync.comparedBytes / MiB).toFixed(1)} MiB, copied ${(sync.copiedBytes / MiB).toFixed(1)} MiB`);
  }
}
