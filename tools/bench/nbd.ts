// A DPSR drive on an NBD export, over loopback (nbdkit's file plugin on a
// unix socket, images in /dev/shm so the disks are not what is measured):
//   1. the full copy (`dpsr pair`) against `nbdcopy` of the same device to
//      the same export, in alternating rounds: throughput ratio (goal >= 0.9);
//   2. an incremental sync after 1% of the source was written (scattered
//      64 KiB writes) against a full `nbdcopy`: time ratio;
//   3. a full copy whose server is killed halfway (strace at an exact write):
//      bytes sent by the sync that finishes it, against the disk's size.
// Run: node dist/tools/bench/nbd.js [--gib N] [--rounds N]   (root)
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/base/native.js';
import { run, scratchSpace } from './scratch.js';

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const MiB = 1 << 20;
const gib = arg('gib', 4);
const rounds = arg('rounds', 3);
const bytes = gib * 1024 * MiB;
const RESERVE_MIB = 256;
const bin = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../bin/dpsr.js');
const napMs = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const now = () => performance.now();

const { dir, cleanups } = scratchSpace('dpsr-bench-nbd-', '/dev/shm');

const env = {
  ...process.env,
  DPSR_STATE_DIR: path.join(dir, 'state'), DPSR_SOCKET: path.join(dir, 'dpsr.sock'), DPSR_LOCK: path.join(dir, 'owner.lock'),
  DPSR_BPF_DIR: `/sys/fs/bpf/dpsr-bench-nbd-${process.pid}`, DPSR_CONFIG: '/nonexistent',
};
cleanups.push(() => { if (fs.existsSync(env.DPSR_BPF_DIR)) native().detach(env.DPSR_BPF_DIR); });

function dpsr(...args: string[]): string {
  const r = spawnSync(process.execPath, [bin, ...args], { env, encoding: 'utf8', maxBuffer: 64 * MiB });
  if (r.status !== 0) throw new Error(`dpsr ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function image(name: string, size: number): string {
  const f = path.join(dir, name);
  fs.closeSync(fs.openSync(f, 'w'));
  fs.truncateSync(f, size);
  return f;
}

/** nbdkit over `img` on a unix socket, optionally under a prefix (strace); stopped by stop() or the cleanups. */
function serve(img: string, sock: string, prefix: string[] = [], extra: string[] = []): { uri: string; stop(): void; child: ChildProcess } {
  fs.rmSync(sock, { force: true });
  const child = spawn(prefix[0] ?? 'nbdkit', [...prefix.slice(1), ...(prefix.length ? ['nbdkit'] : []), '-f', '--unix', sock, ...extra, 'file', img],
    { detached: true, stdio: 'ignore' });
  const stop = () => {
    try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ }
    for (const deadline = Date.now() + 10_000; spawnSync('pgrep', ['-g', String(child.pid)]).status === 0 && Date.now() < deadline;) napMs(20);
  };
  cleanups.push(stop);
  for (const deadline = Date.now() + 20_000; !fs.existsSync(sock); napMs(20)) if (Date.now() > deadline) throw new Error('nbdkit did not start');
  return { uri: `nbd+unix:///?socket=${sock}`, stop, child };
}

function timed(fn: () => void): number {
  const t = now();
  fn();
  return (now() - t) / 1000;
}

const best = (xs: number[]) => Math.min(...xs);
const mibps = (b: number, s: number) => `${(b / MiB / s).toFixed(0)} MiB/s`;

async function main(): Promise<void> {
  const srcImg = image('source.img', bytes);
  // Incompressible data, written once: both copies read the same bytes.
  run('dd', ['if=/dev/urandom', `of=${srcImg}`, `bs=${4 * MiB}`, `count=${bytes / (4 * MiB)}`, 'conv=notrunc', 'status=none']);
  const source = run('losetup', ['-f', '--show', '--direct-io=on', srcImg]).trim();
  cleanups.push(() => { run('blockdev', ['--setrw', source]); run('losetup', ['-d', source]); });
  const exportImg = image('export.img', bytes + RESERVE_MIB * MiB);
  const sock = path.join(dir, 'nbd.sock');
  const server = serve(exportImg, sock);

  console.log(`nbd bench: ${gib} GiB source (loop over /dev/shm), export: nbdkit file plugin over /dev/shm on a unix socket; load: ${fs.readFileSync('/proc/loadavg', 'utf8').trim()}`);
  // 1. Full copy, alternating: dpsr pair (then unpair) and nbdcopy of the same device to the same export.
  const dpsrS: number[] = [];
  const nbdcopyS: number[] = [];
  for (let r = 0; r < rounds; r++) {
    fs.truncateSync(exportImg, 0); // blank again: pair would refuse an export carrying data without --force
    fs.truncateSync(exportImg, bytes + RESERVE_MIB * MiB);
    dpsrS.push(timed(() => dpsr('pair', source, server.uri, '--name', 'bench', '--reserve', `${RESERVE_MIB}M`)));
    dpsr('unpair', 'bench');
    nbdcopyS.push(timed(() => run('nbdcopy', [source, server.uri])));
    console.log(`  round ${r + 1}: dpsr pair ${dpsrS[r].toFixed(2)} s (${mibps(bytes, dpsrS[r])}), nbdcopy ${nbdcopyS[r].toFixed(2)} s (${mibps(bytes, nbdcopyS[r])})`);
  }
  const fullRatio = best(nbdcopyS) / best(dpsrS);

  // 2. 1% written (scattered 64 KiB direct writes), one incremental sync, against a full nbdcopy.
  fs.truncateSync(exportImg, 0);
  fs.truncateSync(exportImg, bytes + RESERVE_MIB * MiB);
  dpsr('pair', source, server.uri, '--name', 'bench', '--reserve', `${RESERVE_MIB}M`);
  const syncS: number[] = [];
  const copied: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const writes = Math.floor((bytes / 100) / (64 * 1024));
    const fd = fs.openSync(source, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
    const buf = native().alignedBuffer(64 * 1024, 4096);
    for (let i = 0; i < writes; i++) {
      buf.writeUInt32LE((r << 24) ^ i, 0);
      fs.writeSync(fd, buf, 0, buf.length, Math.floor(((i * 2654435761) % (bytes / (64 * 1024)))) * 64 * 1024);
    }
    fs.closeSync(fd);
    let report: { copiedBytes: number } = { copiedBytes: 0 };
    syncS.push(timed(() => { report = JSON.parse(dpsr('sync', 'bench', '--json', '--quiet-period', '0')).syncs[0]; }));
    copied.push(report.copiedBytes);
    console.log(`  round ${r + 1}: sync of 1% ${syncS[r].toFixed(2)} s (copied ${(report.copiedBytes / MiB).toFixed(1)} MiB)`);
  }
  const syncRatio = best(syncS) / best(nbdcopyS);

  // 3. The server killed halfway through a full copy (its pwrite number N, 2 MiB each), restarted: what the next sync sends.
  dpsr('unpair', 'bench');
  server.stop();
  fs.truncateSync(exportImg, 0);
  fs.truncateSync(exportImg, bytes + RESERVE_MIB * MiB);
  const killAt = Math.floor(bytes / 2 / (2 * MiB)) + 2;
  const dying = serve(exportImg, sock, ['strace', '-f', '-qq', '-o', '/dev/null', '-e', 'trace=pwrite64', '-e', `inject=pwrite64:signal=SIGKILL:when=${killAt}`], ['--threads=1']);
  const r = spawnSync(process.execPath, [bin, 'pair', source, dying.uri, '--name', 'bench', '--reserve', `${RESERVE_MIB}M`], { env, encoding: 'utf8' });
  if (r.status === 0) throw new Error('the pair was not interrupted');
  dying.stop();
  const again = serve(exportImg, sock);
  const resumed = JSON.parse(dpsr('sync', 'bench', '--json', '--quiet-period', '0')).syncs[0] as { fullCopyBytes: number; copiedBytes: number; comparedBytes: number };
  const exact = spawnSync('cmp', ['-n', String(bytes), source, exportImg]).status === 0;
  again.stop();
  const sentAfter = resumed.fullCopyBytes + resumed.copiedBytes;

  console.log('');
  console.log(`full copy:        dpsr pair ${mibps(bytes, best(dpsrS))}  vs  nbdcopy ${mibps(bytes, best(nbdcopyS))}  ratio ${fullRatio.toFixed(2)} (goal >= 0.9; best of ${rounds})`);
  console.log(`incremental 1%:   dpsr sync ${best(syncS).toFixed(2)} s  vs  full nbdcopy ${best(nbdcopyS).toFixed(2)} s  ratio ${syncRatio.toFixed(3)} (copied ${(Math.max(...copied) / MiB).toFixed(1)} MiB of ${(bytes / 100 / MiB).toFixed(1)} MiB written)`);
  console.log(`after a drop:     sent ${(sentAfter / MiB).toFixed(0)} MiB  vs  disk ${(bytes / MiB).toFixed(0)} MiB  ratio ${(sentAfter / bytes).toFixed(2)} (killed at write ${killAt} of ${bytes / (2 * MiB)}; compared ${(resumed.comparedBytes / MiB).toFixed(0)} MiB; exact: ${exact})`);
  console.log(`load after: ${fs.readFileSync('/proc/loadavg', 'utf8').trim()}`);
}

main().catch((err) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 1;
});
