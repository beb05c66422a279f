// Boots a guest under qemu (software emulation: no KVM for BIOS guests on
// these machines) with its serial console on stdout, collects what it
// prints, and makes sure no qemu outlives its test.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import type { Fixture } from './fixture.js';

export interface GuestDisk {
  /** A block device or image file, opened raw, or an NBD URI (qemu's built-in NBD client). */
  path: string;
  /**
   * Writes go to a throwaway overlay and the disk is opened read-only: a boot
   * that only checks a disk changes nothing on it (and a DPSR drive kept
   * read-only by BLKROSET can still be booted).
   */
  snapshot?: boolean;
  /** The firmware's boot order: lowest first. */
  bootIndex?: number;
}

export interface BootOptions {
  disks: GuestDisk[];
  /** fw_cfg entries the guest reads under /sys/firmware/qemu_fw_cfg/by_name/. */
  fwCfg?: Record<string, string>;
  /** Killed after this long, whatever it printed. */
  timeoutMs: number;
  /** Killed as soon as the console matches this (a boot loader's failure: no need to wait out the timeout). */
  stopOn?: RegExp;
  /** The first time the console matches this is reported (epoch ms). */
  watchFor?: RegExp;
  /** Boot this kernel and initramfs directly (qemu -kernel), not the first disk's boot loader. */
  kernel?: { vmlinuz: string; initrd: string; append: string };
  /** Guest memory (default 256 MiB). */
  memoryMiB?: number;
}

export interface BootResult {
  serial: string;
  /** qemu's exit status (0 after the guest powered off), null when killed. */
  exitCode: number | null;
  timedOut: boolean;
  stoppedOn: boolean;
  startedAt: number;
  endedAt: number;
  /** When the console first matched `watchFor` (epoch ms), if it did. */
  watchedAt: number | null;
}

// Nothing qemu adds by default is needed: no NIC (its iPXE ROM costs seconds), no VGA.
const BASE_ARGS = ['-nodefaults', '-nographic', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
  '-machine', 'pc,accel=tcg', '-m', '256', '-smp', '1'];

function driveArgs(disks: GuestDisk[]): string[] {
  return disks.flatMap((d, i) => {
    // cache=none: O_DIRECT on the host device, so a guest write reaches the loop device's block layer at once.
    // An NBD URI (nbd://, nbd+unix://) is read by qemu's own NBD client: no host file to open directly.
    const local = !/^nbds?(\+unix)?:\/\//.test(d.path);
    const drive = [`file=${d.path}`, 'format=raw', 'if=none', `id=disk${i}`, ...(local ? ['cache=none', 'aio=threads'] : [])];
    if (d.snapshot) drive.push('snapshot=on');
    const device = ['virtio-blk-pci', `drive=disk${i}`];
    if (d.bootIndex !== undefined) device.push(`bootindex=${d.bootIndex}`);
    return ['-drive', drive.join(','), '-device', device.join(',')];
  });
}

/**
 * Waits (synchronously: cleanup runs in exit handlers too) until a killed
 * qemu has closed its disks, so the loop devices it held can be detached.
 * A zombie has closed them; Node reaps it later.
 */
function waitGone(pid: number, timeoutMs = 5000): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline; Atomics.wait(nap, 0, 0, 20)) {
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return;
    }
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z')) return;
  }
}

/** Boots until the guest powers off (qemu exits), `stopOn` matches or the timeout. */
export function bootGuest(fx: Fixture, opts: BootOptions): Promise<BootResult> {
  const args = [...BASE_ARGS, ...driveArgs(opts.disks)];
  if (opts.kernel) args.push('-kernel', opts.kernel.vmlinuz, '-initrd', opts.kernel.initrd, '-append', opts.kernel.append);
  if (opts.memoryMiB) args.push('-m', String(opts.memoryMiB)); // the last -m wins
  for (const [name, value] of Object.entries(opts.fwCfg ?? {})) args.push('-fw_cfg', `name=${name},string=${value}`);
  const startedAt = Date.now();
  const child = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  fx.defer('kill qemu', () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    waitGone(child.pid!);
  });
  let out = '';
  let watchedAt: number | null = null;
  let stoppedOn = false;
  let timedOut = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, opts.timeoutMs);
    const take = (d: Buffer) => {
      out += d.toString('latin1');
      if (watchedAt === null && opts.watchFor?.test(out)) watchedAt = Date.now();
      if (!stoppedOn && opts.stopOn?.test(out)) { stoppedOn = true; child.kill('SIGKILL'); }
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    child.on('error', (err) => { clearTimeout(timer); reject(err); });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ serial: out, exitCode: code, timedOut, stoppedOn, startedAt, endedAt: Date.now(), watchedAt });
    });
  });
}

/** The last `lines` lines of a console, for an assertion message. */
export function serialTail(serial: string, lines = 25): string {
  // eslint-disable-next-line no-control-regex
  return serial.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').split(/\r?\n/).slice(-lines).join('\n');
}
