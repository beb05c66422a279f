// A real Debian 12 guest (systemd, udevd, its own kernel and initramfs) under
// qemu, built by tools/guest.sh and cached per package versions and recipe
// (/var/cache/dpsr-test-guest); built from scratch when the cache has no
// entry (CI: always). A test drives it by scripts on a 9p share, boot after
// boot, and reads what the guest left there.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { aptVersion, kernelPackage } from './boot-image.js';
import { DPSR_BIN, sh } from './fixture.js';

export const GUEST_CACHE_DIR = '/var/cache/dpsr-test-guest';
const HOME = path.resolve(path.dirname(DPSR_BIN), '..');
const GUEST_SH = path.join(HOME, 'tools/guest.sh');

export interface GuestImage {
  dir: string;
  recipe: string;
  /** How long building took now (0: from the cache). */
  builtMs: number;
}

/** The guest image, from the cache when one with the same recipe exists, else built now (about 3-7 min). */
export function guestImage(): GuestImage {
  // What decides the image: the script, the packages that matter here (as the archive has them now), and the node copied in.
  const recipe = [kernelPackage(), 'systemd', 'udev', 'initramfs-tools'].map((p) => `${p}=${aptVersion(p)}`).concat(
    `node=${process.version}`).join(' ');
  const key = crypto.createHash('sha256').update(recipe).update(fs.readFileSync(GUEST_SH)).digest('hex').slice(0, 16);
  const dir = path.join(GUEST_CACHE_DIR, key);
  if (fs.existsSync(path.join(dir, 'root.img'))) return { dir, recipe, builtMs: 0 };
  const started = Date.now();
  fs.mkdirSync(GUEST_CACHE_DIR, { recursive: true });
  // Built beside, renamed into place: a killed build never leaves half an entry.
  const tmp = fs.mkdtempSync(path.join(GUEST_CACHE_DIR, `.${key}-`));
  try {
    const r = spawnSync('bash', [GUEST_SH, 'build', tmp], { encoding: 'utf8', timeout: 20 * 60_000 });
    if (r.status !== 0) throw new Error(`tools/guest.sh build: exit ${r.status}: ${r.stderr.trim().split('\n').slice(-3).join(' / ')}`);
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      if (!fs.existsSync(path.join(dir, 'root.img'))) throw err; // else another process won the race
    }
    for (const old of fs.readdirSync(GUEST_CACHE_DIR)) {
      if (old !== key && !old.startsWith('.')) fs.rmSync(path.join(GUEST_CACHE_DIR, old), { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { dir, recipe, builtMs: Date.now() - started };
}

/** The runtime files of this dpsr tree (no dev dependencies, no tests), as a tar the guest unpacks. */
export function packDpsr(tarFile: string): void {
  const lock = JSON.parse(fs.readFileSync(path.join(HOME, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const modules = Object.entries(lock.packages)
    .filter(([p, info]) => p.startsWith('node_modules/') && !info.dev && fs.existsSync(path.join(HOME, p)))
    .map(([p]) => p);
  sh('tar', ['-C', HOME, '-cf', tarFile, 'bin', 'package.json', 'packaging', 'dist/src', 'addon/build/Release/dpsr.node', 'build/probe', ...modules]);
}

export interface BootOutcome {
  /** guest.sh's exit: 0 the guest powered off by itself, 3 emergency mode or a panic, 124 timeout. */
  status: number | null;
  /** What guest.sh said (the boot's wall time, what failed). */
  stderr: string;
  /** The boot script's output. */
  log: string;
  /** KEY=value lines the boot script wrote to out/results-N.txt. */
  results: Record<string, string>;
  wallMs: number;
}

/**
 * Boots the guest once with `script` as the share's boot.sh (run after
 * multi-user.target), and returns when it has powered off (or guest.sh
 * killed it: `env` may give GUEST_FATAL, what on the console makes it kill qemu). `hostDir` is the
 * share and keeps the guest's disk overlay from one boot to the next.
 */
export function bootOnce(image: GuestImage, hostDir: string, script: string, qemuArgs: string[], timeoutS: number, env: Record<string, string> = {}): BootOutcome {
  fs.writeFileSync(path.join(hostDir, 'boot.sh'), script);
  fs.writeFileSync(path.join(hostDir, 'poweroff'), '');
  const n = Number(fs.existsSync(path.join(hostDir, 'bootnum')) ? fs.readFileSync(path.join(hostDir, 'bootnum'), 'utf8') : 0) + 1;
  const started = Date.now();
  // guest.sh kills qemu at its own timeout, and on TERM; spawnSync's is a last resort.
  const r = spawnSync('bash', [GUEST_SH, 'run', image.dir, hostDir, ...qemuArgs], {
    encoding: 'utf8', env: { PATH: process.env.PATH, GUEST_TIMEOUT: String(timeoutS), ...env }, timeout: (timeoutS + 60) * 1000,
  });
  const read = (f: string) => (fs.existsSync(path.join(hostDir, 'out', f)) ? fs.readFileSync(path.join(hostDir, 'out', f), 'utf8') : '');
  const results = Object.fromEntries(read(`results-${n}.txt`).split('\n').filter((l) => l.includes('='))
    .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  return { status: r.status, stderr: r.stderr, log: read(`boot-${n}.log`), results, wallMs: Date.now() - started };
}
