// dpsr demo: a loop-backed disk, tracked with the real programs, a small
// workload, and what was seen set against what was written. Leaves nothing.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkTrackable, resolveBlockDevice } from '../devices.js';
import { type Settings } from '../defaults.js';
import { ExtentSet } from '../extents.js';
import { native } from '../native.js';
import { checkTrackingSupport } from '../preflight.js';
import { Tracker } from '../tracker.js';
import { KernelTracking } from '../tracking.js';

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

const fmtExtents = (s: ExtentSet, max = 6) => {
  const a = s.toArray();
  const shown = a.slice(0, max).map(([x, y]) => `[${x}, ${y})`).join(' ');
  return a.length > max ? `${shown} … (${a.length} extents)` : shown || '(none)';
};

export async function demoCommand(settings: Settings, log: (line: string) => void = console.log): Promise<boolean> {
  checkTrackingSupport(settings.kernelBtfPath);
  const cleanups: Array<() => void> = [];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-demo-'));
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  let ok = true;
  try {
    const img = path.join(dir, 'system.img');
    fs.closeSync(fs.openSync(img, 'w'));
    fs.truncateSync(img, 256 << 20);
    const loop = run('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
    cleanups.push(() => run('losetup', ['-d', loop]));
    const dev = resolveBlockDevice(loop);
    checkTrackable(dev);
    log(`1. system drive: ${loop} (256 MiB loop device over ${img})`);

    // A private pin directory: the demo never touches real tracking.
    const pinDir = `/sys/fs/bpf/dpsr-demo-${process.pid}`;
    const kt = KernelTracking.open({ pinDir });
    cleanups.push(() => { kt.close(); native().detach(pinDir); });
    const tracker = Tracker.start(kt, { ownerLockPath: path.join(dir, 'owner.lock') });
    cleanups.push(() => tracker.abandon());
    const range = await tracker.track(dev, 'demo');
    log(`2. tracking ${loop}: BPF programs attached at block_rq_issue/block_rq_complete, pinned in ${pinDir}`);

    const written = new ExtentSet();
    const fd = fs.openSync(loop, fs.constants.O_WRONLY | fs.constants.O_DIRECT);
    const buf = native().alignedBuffer(256 << 10, 4096);
    buf.fill(0xd5);
    for (const [sector, sectors] of [[0, 8], [2048, 128], [100_000, 24], [300_000, 8], [524_000, 288]]) {
      fs.writeSync(fd, buf, 0, sectors * 512, sector * 512);
      written.add(sector, sector + sectors);
    }
    fs.closeSync(fd);
    await tracker.cycle();
    const exact = range.dirty.toArray().join() === written.toArray().join();
    log(`3. five O_DIRECT writes at known offsets:\n     written: ${fmtExtents(written)}\n     seen:    ${fmtExtents(range.dirty)}  ${exact ? '= exact' : '≠ MISMATCH'}`);
    ok &&= exact;

    range.dirty.clear();
    run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loop]);
    const mnt = fs.mkdtempSync(path.join(dir, 'mnt-'));
    run('mount', [loop, mnt]);
    cleanups.push(() => { try { run('umount', [mnt]); } catch { /* already unmounted */ } });
    for (let i = 0; i < 20; i++) fs.writeFileSync(path.join(mnt, `file${i}`), Buffer.alloc(64 << 10, i));
    run('sync', ['-f', mnt]);
    const frag = run('filefrag', ['-e', path.join(mnt, 'file7')]);
    const blockSectors = Number(frag.match(/blocks of (\d+) bytes/)?.[1] ?? 4096) / 512;
    const m = frag.match(/^\s*0:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/m);
    run('umount', [mnt]);
    await tracker.cycle();
    log(`4. mkfs.ext4, mount, 20 files of 64 KiB, sync, umount: ${range.dirty.count} dirty extents, ${(range.dirty.totalSectors / 2048).toFixed(1)} MiB of 256 MiB`);
    if (m) {
      const [s, e] = [Number(m[1]) * blockSectors, (Number(m[2]) + 1) * blockSectors];
      const covered = range.dirty.covers(s, e);
      log(`     file7's blocks [${s}, ${e}) ${covered ? 'are covered' : 'are NOT covered'}`);
      ok &&= covered;
    }

    const verdict = (await tracker.reconcile()).get(range);
    log(`5. reconciliation with the kernel's own count (/sys/block/${dev.disk}/stat): ${verdict?.kind}${range.gaps.length ? `; gaps: ${range.gaps.map((g) => g.cause).join(', ')}` : '; no gaps'}`);
    ok &&= verdict?.kind === 'exact' || verdict?.kind === 'busy';
    const rs = kt.ringStats(0);
    log(`6. ring: ${rs.records} records delivered, ${rs.drops} dropped`);
    await tracker.stop();
    log(ok ? 'demo: every write was seen. (Sync, verify and status arrive with pairing.)' : 'demo: MISMATCH between writes and tracking');
    return ok;
  } finally {
    for (const fn of cleanups.reverse()) {
      try { fn(); } catch (err) { log(`cleanup: ${(err as Error).message}`); }
    }
  }
}
