// Restoring a 1 GiB folder (many files of mixed sizes) out of the DPSR
// drive's image: `dpsr restore --to` against what a person would do by
// hand, a read-only loop mount of the image and `cp -a`, side by side, in
// alternating rounds. Each run starts from cold caches for the image (a new
// loop device with direct I/O, a new mount) and ends with the destination's
// data on disk (syncfs), which is counted.
// Run: node dist/tools/bench/restore.js [--mib N] [--rounds N]
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/base/native.js';
import { run, scratchSpace } from './scratch.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const MiB = 1 << 20;
const folderMiB = arg('mib', 1024);
const rounds = arg('rounds', 2);
const now = () => performance.now();
const { dir, cleanups, cleanup, attach } = scratchSpace('dpsr-bench-restore-');
const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');

/** Sizes of a mixed tree: mostly small files, some medium, a few large, adding up to `total` bytes. */
function fileSizes(total: number): number[] {
  const sizes: number[] = [];
  let left = total;
  for (let i = 0; left > 0; i++) {
    const kind = i % 100;
    const size = kind < 80 ? 4096 + (i * 7919) % (60 * 1024) // 80%: 4-64 KiB
      : kind < 98 ? 256 * 1024 + (i * 104729) % (3 * MiB) // 18%: 0.25-3.25 MiB
        : 32 * MiB; // 2%: 32 MiB
    sizes.push(Math.min(size, left));
    left -= size;
  }
  return sizes;
}

function makeFolder(root: string): { files: number; bytes: number } {
  const sizes = fileSizes(folderMiB * MiB);
  const chunk = crypto.randomBytes(4 * MiB); // incompressible, reused at shifting offsets
  sizes.forEach((size, i) => {
    const sub = path.join(root, `d${i % 37}`, `e${i % 5}`);
    fs.mkdirSync(sub, { recursive: true });
    const fd = fs.openSync(path.join(sub, `f${i}.bin`), 'w');
    for (let done = 0; done < size;) {
      const off = (i * 4099 + done) % (2 * MiB);
      const n = Math.min(size - done, chunk.length - off);
      done += fs.writeSync(fd, chunk, off, n);
    }
    fs.closeSync(fd);
  });
  return { files: sizes.length, bytes: sizes.reduce((a, b) => a + b, 0) };
}

function timed(fn: () => void): number {
  const t = now();
  fn();
  return (now() - t) / 1000;
}

async function main(): Promise<void> {
  const sourceMiB = Math.ceil(folderMiB * 1.3) + 128;
  const source = attach('source.img', sourceMiB * MiB);
  const drive = attach('drive.img', (sourceMiB + 64) * MiB);
  const target = attach('target.img', (folderMiB * 2 + 256) * MiB); // the destination: its own file system, so syncfs flushes only ours
  const env = {
    ...process.env,
    DPSR_STATE_DIR: path.join(dir, 'state'), DPSR_SOCKET: path.join(dir, 'dpsr.sock'), DPSR_LOCK: path.join(dir, 'owner.lock'),
    DPSR_BPF_DIR: `/sys/fs/bpf/dpsr-bench-restore-${process.pid}`, DPSR_CONFIG: '/nonexistent',
  };
  cleanups.push(() => { if (fs.existsSync(env.DPSR_BPF_DIR)) native().detach(env.DPSR_BPF_DIR); });
  const dpsr = (...args: string[]) => {
    const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`dpsr ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const mountDir = (name: string) => {
    const m = path.join(dir, name);
    fs.mkdirSync(m);
    return m;
  };

  console.log(`# dpsr restore benchmark: a ${folderMiB} MiB folder, ext4 on loop devices over files in ${os.tmpdir()} (direct I/O), ${rounds} rounds`);
  console.log(`# command: node ${path.relative(process.cwd(), process.argv[1])} ${process.argv.slice(2).join(' ')}`);
  run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', source]);
  run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', target]);
  const src = mountDir('source');
  run('mount', ['-o', 'noatime', source, src]);
  cleanups.push(() => run('umount', [src]));
  const made = makeFolder(path.join(src, 'data'));
  console.log(`# folder: ${made.files} files, ${(made.bytes / MiB).toFixed(0)} MiB`);
  execFileSync('sync', ['-f', src]); // on disk before the copy: the sync's frozen final pass stays small
  dpsr('pair', source, drive, '--name', 'bench', '--reserve', '64M');
  const image = JSON.parse(dpsr('sync', 'bench', '--json')).syncs[0].image;
  if (image !== 'point-in-time') throw new Error(`the sync made a ${image} image`);
  cleanups.push(() => { spawnSync(process.execPath, [bin, 'unpair', 'bench'], { env }); });
  const dst = mountDir('target');
  run('mount', [target, dst]);
  cleanups.push(() => run('umount', [dst]));
  const manual = mountDir('manual');

  const byDpsr = () => timed(() => {
    dpsr('restore', 'bench', 'data', '--to', path.join(dst, 'dpsr'));
    execFileSync('sync', ['-f', dst]);
  });
  const byHand = () => timed(() => {
    const loop = run('losetup', ['-r', '-f', '--show', '--direct-io=on', '--sizelimit', String(sourceMiB * MiB), drive]).trim();
    try {
      run('mount', ['-o', 'ro,noload', loop, manual]);
      try {
        run('cp', ['-a', path.join(manual, 'data'), path.join(dst, 'cp')]);
      } finally {
        run('umount', [manual]);
      }
    } finally {
      run('losetup', ['-d', loop]);
    }
    execFileSync('sync', ['-f', dst]);
  });
  const clear = () => {
    fs.rmSync(path.join(dst, 'dpsr'), { recursive: true, force: true });
    fs.rmSync(path.join(dst, 'cp'), { recursive: true, force: true });
    execFileSync('sync', ['-f', dst]);
  };

  const results: Array<{ dpsr: number; cp: number }> = [];
  for (let r = 0; r < rounds; r++) {
    clear();
    const cp = byHand(); // alternate which goes first
    clear();
    const d = byDpsr();
    if (r === 0) {
      // Same result both ways.
      byHand();
      const diff = spawnSync('diff', ['-r', '--no-dereference', path.join(dst, 'dpsr/data'), path.join(dst, 'cp')], { encoding: 'utf8' });
      if (diff.status !== 0) throw new Error(`dpsr restore and cp -a differ: ${diff.stdout.slice(0, 500)}`);
    }
    results.push({ dpsr: d, cp });
    const rate = (s: number) => (made.bytes / MiB / s).toFixed(0);
    console.log(`round ${r + 1}: dpsr restore --to ${d.toFixed(2)} s (${rate(d)} MiB/s) | mount -o ro,noload + cp -a ${cp.toFixed(2)} s (${rate(cp)} MiB/s) | dpsr/cp ${(d / cp).toFixed(2)}`);
  }
  const mean = (f: (x: (typeof results)[0]) => number) => results.reduce((a, x) => a + f(x), 0) / results.length;
  const summary = { folderMiB, files: made.files, rounds, dpsrSeconds: mean((x) => x.dpsr), cpSeconds: mean((x) => x.cp), dpsrOverCp: mean((x) => x.dpsr / x.cp) };
  console.log(`summary: dpsr restore takes ${summary.dpsrOverCp.toFixed(2)}x the time of a manual read-only mount and cp -a (mean of ${rounds})`);
  console.log(`BENCH_JSON ${JSON.stringify(summary)}`);
}

main().then(cleanup, (err) => { console.error(err); cleanup(); process.exit(1); });
