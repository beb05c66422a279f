// dpsr demo: two loop-backed disks, an ext4 source, pair, a workload,
// incremental syncs (what each copied against the disk size), verification
// with cmp and fsck -n on the DPSR drive, status; then everything is removed,
// also on Ctrl-C. Runs in its own state directory, lock and pin directory.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Settings } from '../../base/defaults.js';
import { native } from '../../base/native.js';
import { checkTrackingSupport } from '../../kernel/preflight.js';
import { pairCommand } from './pair.js';
import { statusCommand } from './status.js';
import { describeSync, syncCommand } from './sync.js';
import { unpairCommand } from './unpair.js';

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const MiB = 1 << 20;

export async function demoCommand(base: Settings, log: (line: string) => void = console.log): Promise<boolean> {
  checkTrackingSupport(base.kernelBtfPath);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-demo-'));
  const settings: Settings = {
    ...base,
    stateDir: path.join(dir, 'state'),
    socketPath: path.join(dir, 'dpsr.sock'),
    ownerLockPath: path.join(dir, 'owner.lock'),
    pinDir: `/sys/fs/bpf/dpsr-demo-${process.pid}`,
  };
  const cleanups: Array<() => void> = [() => fs.rmSync(dir, { recursive: true, force: true })];
  const cleanup = () => {
    for (const fn of cleanups.splice(0).reverse()) {
      try { fn(); } catch (err) { log(`cleanup: ${(err as Error).message}`); }
    }
  };
  const onSignal = () => { cleanup(); process.exit(130); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const quiet = () => {}; // the demo prints its own summary lines
  try {
    const attach = (name: string, bytes: number) => {
      const img = path.join(dir, name);
      fs.closeSync(fs.openSync(img, 'w'));
      fs.truncateSync(img, bytes);
      const dev = run('losetup', ['-f', '--show', '--direct-io=on', img]).trim();
      cleanups.push(() => run('losetup', ['-d', dev]));
      return dev;
    };
    const sourceBytes = 256 * MiB;
    const source = attach('system.img', sourceBytes);
    const drive = attach('dpsr-drive.img', sourceBytes + 64 * MiB);
    cleanups.push(() => { if (fs.existsSync(settings.pinDir)) native().detach(settings.pinDir); });
    run('mkfs.ext4', ['-q', '-F', source]);
    log(`1. system drive ${source} (256 MiB, ext4) and DPSR drive ${drive} (256 MiB + 64 MiB reserved tail)`);

    const mnt = fs.mkdtempSync(path.join(dir, 'mnt-'));
    const mount = () => {
      run('mount', [source, mnt]);
      cleanups.push(() => { try { run('umount', [mnt]); } catch { /* not mounted */ } });
    };
    mount();
    for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(mnt, `doc${i}.bin`), crypto.randomBytes(256 << 10));
    run('umount', [mnt]);

    const pair = await pairCommand({ source, drive, name: 'demo', force: false, noReserve: false, reserveBytes: 64 * MiB }, settings, quiet);
    log(`2. dpsr pair: full copy of ${source} to ${drive}; tracking every write from now on`);
    const sync = async (step: string) => {
      const [report] = await syncCommand({ name: 'demo', all: false, json: false, quietMs: 300 }, settings, quiet);
      log(`${step} ${describeSync(report)}`);
    };
    await sync('3. first sync:');

    const workloads: Array<[string, () => void]> = [
      ['wrote 8 new files of 256 KiB', () => { for (let i = 0; i < 8; i++) fs.writeFileSync(path.join(mnt, `new${i}.bin`), crypto.randomBytes(256 << 10)); }],
      ['changed 4 KiB in 10 files', () => {
        for (let i = 0; i < 10; i++) {
          const fd = fs.openSync(path.join(mnt, `doc${i}.bin`), 'r+');
          fs.writeSync(fd, crypto.randomBytes(4096), 0, 4096, 64 << 10);
          fs.closeSync(fd);
        }
      }],
      ['deleted 12 files, appended to a log', () => {
        for (let i = 20; i < 32; i++) fs.rmSync(path.join(mnt, `doc${i}.bin`));
        fs.appendFileSync(path.join(mnt, 'app.log'), 'upgrade finished\n'.repeat(1000));
      }],
    ];
    let step = 4;
    // A live, busy file system: synced while mounted and being written, under a freeze.
    // The writer is another process: a frozen file system blocks its writers.
    mount();
    const busy = spawn('sh', ['-c', `while :; do dd if=/dev/urandom of=${mnt}/busy.log bs=64k count=1 oflag=append conv=notrunc,fsync status=none; done`],
      { detached: true, stdio: 'ignore' });
    const stopBusy = () => new Promise((resolve) => {
      if (busy.exitCode !== null || busy.signalCode !== null) return resolve(null);
      busy.on('exit', resolve);
      process.kill(-busy.pid!, 'SIGKILL'); // the shell and its dd
    });
    cleanups.push(() => { try { process.kill(-busy.pid!, 'SIGKILL'); } catch { /* gone */ } });
    try {
      await new Promise((r) => setTimeout(r, 300));
      await sync(`${step++}. mounted and being written (64 KiB appends with fsync, nonstop), synced live:`);
    } finally {
      await stopBusy();
    }
    for (let i = 0; i < 50; i++) {
      try { run('umount', [mnt]); break; } catch { await new Promise((r) => setTimeout(r, 100)); } // dd may still hold the file a moment
    }
    for (const [what, work] of workloads) {
      mount();
      work();
      run('umount', [mnt]);
      await sync(`${step++}. ${what}, unmounted, synced:`);
    }

    const cmp = (() => { try { run('cmp', ['-n', String(sourceBytes), source, drive]); return true; } catch { return false; } })();
    log(`${step++}. cmp of the first 256 MiB: ${cmp ? 'identical' : 'DIFFERENT'}`);
    const fsck = (() => { try { run('fsck.ext4', ['-n', '-f', drive]); return true; } catch { return false; } })();
    log(`${step++}. fsck.ext4 -n on the DPSR drive: ${fsck ? 'clean' : 'ERRORS'}`);
    log(`${step++}. dpsr status:`);
    const status = await statusCommand({ name: 'demo', json: false }, settings, (l) => log(`   ${l}`));
    await unpairCommand({ name: 'demo' }, settings, quiet);
    const ok = cmp && fsck && status === 0;
    log(ok ? 'demo: done; everything it made is removed.' : 'demo: FAILED (see above)');
    return ok;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    cleanup();
  }
}
