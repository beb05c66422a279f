// Builds a small bootable system disk from Debian packages only: an MBR with
// one ext4 partition holding Debian's kernel, a busybox initramfs, extlinux,
// and an init that prints a marker and its state file on the serial console,
// optionally writes a new state value handed in by qemu, and powers off.
// The kernel and initramfs are cached per package versions and recipe
// (/var/cache/dpsr-test-boot); the disk itself is made fresh in each test.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { type Fixture, sh } from './fixture.js';

export const BOOT_CACHE_DIR = process.env.DPSR_TEST_BOOT_CACHE ?? '/var/cache/dpsr-test-boot';
export const SYSTEM_DISK_MiB = 160;
/** Printed by the root file system's init once the system is up. */
export const BOOTED_MARKER = 'DPSR-TEST-BOOTED';
/** The fw_cfg entry through which a test hands the guest a new state value to write. */
export const NEW_STATE_FW_CFG = 'opt/dpsr/state';

const MBR_BIN = '/usr/lib/syslinux/mbr/mbr.bin';
const BUSYBOX = '/bin/busybox';

// Debian's kernel builds these as modules. Listed by need; the load order
// comes from `modinfo -F depends` (the .deb ships no modules.dep).
const WANTED_MODULES = [
  'virtio_pci', 'virtio_blk', // the disks qemu gives the guest
  'crc32c_generic', 'ext4', // ext4 asks the crypto API for crc32c by name: no modprobe to load it
  'edd', // the BIOS's view of the boot disk (int13 0x80 -> its PCI device)
  'qemu_fw_cfg', // the new state value, handed in by the test without touching the disk
];

// The initramfs's /init. Both disks of a pair carry the same UUIDs, so the
// root cannot be found by UUID alone: with the DPSR drive attached, two
// partitions match. The one stable reference to the disk the machine booted
// from is the firmware's: EDD reports BIOS drive 0x80 with its PCI device,
// and the root is the partition with the root UUID on that disk. Without
// that reference it mounts a UUID only if exactly one partition carries it,
// and refuses to guess otherwise.
const INITRAMFS_INIT = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "DPSR-TEST-FAILED initramfs: $*"; poweroff -f; }
for m in $(cat /modules/order); do insmod /modules/$m.ko || fail "insmod $m"; done
uuid=$(sed -n 's/.*root=UUID=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
[ -n "$uuid" ] || fail "no root=UUID= on the kernel command line"
want=$(echo $uuid | tr -d - | tr A-F a-f)
# busybox-static has no blkid: an ext4 superblock starts at byte 1024, its UUID at 1024 + 0x68.
ext4_uuid() { dd if=$1 bs=8 skip=141 count=2 2>/dev/null | hexdump -ve '1/1 "%02x"'; }
candidates=""
for try in 1 2 3 4 5 6 7 8 9 10; do
	for p in /sys/class/block/*; do
		[ -f $p/partition ] && [ "$(ext4_uuid /dev/\${p##*/})" = "$want" ] && candidates="$candidates /dev/\${p##*/}"
	done
	[ -n "$candidates" ] && break
	sleep 0.3
done
count=$(echo $candidates | wc -w)
[ "$count" -gt 0 ] || fail "no partition carries root UUID $uuid"
bootdisk=""
pci=$(readlink -f /sys/firmware/edd/int13_dev80/pci_dev 2>/dev/null)
if [ -n "$pci" ]; then
	for b in /sys/block/*; do
		case "$(readlink -f $b/device)" in "$pci"/*) bootdisk=\${b##*/} ;; esac
	done
fi
root=""
via=""
if [ -n "$bootdisk" ]; then
	for c in $candidates; do
		disk=$(basename $(readlink -f /sys/class/block/\${c##*/}/..))
		[ "$disk" = "$bootdisk" ] && root=$c && via=edd
	done
	[ -n "$root" ] || fail "the boot disk $bootdisk has no partition with root UUID $uuid"
elif [ "$count" -eq 1 ]; then
	root=$candidates
	via=uuid
else
	fail "$count partitions carry root UUID $uuid and the boot disk is unknown: refusing to guess"
fi
echo "DPSR-TEST-ROOT dev=$root bootdisk=$bootdisk candidates=$count via=$via"
mount -t ext4 $root /root || fail "mount $root"
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
`;

// The system's /sbin/init. Without /etc (as after a failed upgrade) it does
// not come up. Given a new state value through fw_cfg, it writes it and syncs
// before powering off, so the change reaches the host's disk like any write.
const SYSTEM_INIT = `#!/bin/busybox sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
off() { busybox mount -o remount,ro / ; busybox poweroff -f; }
[ -f /etc/os-release ] || { echo "DPSR-TEST-FAILED init: /etc/os-release is missing"; off; }
echo "${BOOTED_MARKER} state=$(busybox cat /var/lib/state)"
new=/sys/firmware/qemu_fw_cfg/by_name/${NEW_STATE_FW_CFG}/raw
if [ -r $new ]; then
	busybox cat $new > /var/lib/state.new && busybox mv /var/lib/state.new /var/lib/state && busybox sync
	echo "DPSR-TEST-WROTE state=$(busybox cat /var/lib/state)"
fi
off
`;

export interface BootPieces {
  kernel: string;
  initramfs: string;
  /** What the cache key was made of, for the test's log. */
  recipe: string;
  /** How long making them took now (0 when they came from the cache). */
  builtMs: number;
}

export function aptVersion(pkg: string): string {
  const m = sh('apt-cache', ['show', '--no-all-versions', pkg]).match(/^Version: (\S+)/m);
  if (!m) throw new Error(`apt-cache show ${pkg}: no version (run apt-get update)`);
  return m[1];
}

/** The versioned kernel package the linux-image-amd64 metapackage points at now. */
export function kernelPackage(): string {
  const m = sh('apt-cache', ['depends', '--no-recommends', '--no-suggests', 'linux-image-amd64']).match(/Depends: (linux-image-\S+)/);
  if (!m) throw new Error('apt-cache depends linux-image-amd64: no kernel package (run apt-get update)');
  return m[1];
}

function installedVersion(pkg: string): string {
  try {
    return sh('dpkg-query', ['-W', '-f=${Version}', pkg]).trim();
  } catch {
    throw new Error(`${pkg} is not installed: apt-get install ${pkg}`);
  }
}

/** Module names in an order where each comes after everything it depends on. */
function loadOrder(moduleDir: string, wanted: string[]): string[] {
  const files = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, e.name);
      if (e.isDirectory()) walk(full);
      else if (e.name.endsWith('.ko')) files.set(e.name.slice(0, -3).replace(/-/g, '_'), full);
    }
  };
  walk(moduleDir);
  const order: string[] = [];
  const visit = (name: string, chain: string[]) => {
    if (order.includes(name)) return;
    if (chain.includes(name)) throw new Error(`module dependency cycle: ${[...chain, name].join(' -> ')}`);
    const file = files.get(name);
    if (!file) throw new Error(`kernel module ${name} not found under ${moduleDir} (built in? compressed?)`);
    const deps = sh('modinfo', ['-F', 'depends', file]).trim();
    for (const dep of deps ? deps.split(',') : []) visit(dep.replace(/-/g, '_'), [...chain, name]);
    order.push(name);
  };
  for (const name of wanted) visit(name, []);
  return order.map((n) => files.get(n)!);
}

/** Downloads the kernel .deb, unpacks it and writes kernel + initramfs into `out`. */
function buildPieces(kernelPkg: string, out: string): void {
  const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'dpsr-boot-build-'));
  try {
    // As root, apt-get download into a directory _apt cannot enter warns and works; keep it quiet.
    execFileSync('apt-get', ['download', '-qq', '-o', 'APT::Sandbox::User=root', kernelPkg], { cwd: scratch, stdio: ['ignore', 'ignore', 'pipe'] });
    const deb = fs.readdirSync(scratch).find((f) => f.endsWith('.deb'));
    if (!deb) throw new Error(`apt-get download ${kernelPkg}: no .deb`);
    const root = path.join(scratch, 'pkg');
    sh('dpkg-deb', ['-x', path.join(scratch, deb), root]);
    fs.rmSync(path.join(scratch, deb));
    const vmlinuz = fs.readdirSync(path.join(root, 'boot')).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new Error(`${kernelPkg}: no /boot/vmlinuz-*`);
    const release = vmlinuz.slice('vmlinuz-'.length);
    const modules = loadOrder(path.join(root, 'lib/modules', release), WANTED_MODULES);

    const ird = path.join(scratch, 'initramfs');
    for (const d of ['bin', 'dev', 'proc', 'sys', 'root', 'modules']) fs.mkdirSync(path.join(ird, d), { recursive: true });
    fs.copyFileSync(BUSYBOX, path.join(ird, 'bin/busybox'));
    fs.chmodSync(path.join(ird, 'bin/busybox'), 0o755);
    for (const m of modules) fs.copyFileSync(m, path.join(ird, 'modules', path.basename(m)));
    fs.writeFileSync(path.join(ird, 'modules/order'), `${modules.map((m) => path.basename(m, '.ko')).join('\n')}\n`);
    fs.writeFileSync(path.join(ird, 'init'), INITRAMFS_INIT, { mode: 0o755 });
    fs.mkdirSync(out, { recursive: true });
    sh('sh', ['-c', `cd "${ird}" && find . | cpio -o -H newc --quiet | gzip -6 > "${path.join(out, 'initramfs.gz')}"`]);
    fs.copyFileSync(path.join(root, 'boot', vmlinuz), path.join(out, 'vmlinuz'));
    fs.writeFileSync(path.join(out, 'modules'), `${modules.map((m) => path.basename(m)).join(' ')}\n`);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
}

function checkTools(): void {
  for (const [file, pkg] of [[BUSYBOX, 'busybox-static'], [MBR_BIN, 'syslinux-common']] as const) {
    if (!fs.existsSync(file)) throw new Error(`${file} missing: apt-get install ${pkg}`);
  }
  for (const [cmd, pkg] of [['extlinux', 'extlinux'], ['cpio', 'cpio'], ['qemu-system-x86_64', 'qemu-system-x86']]) {
    try { sh('sh', ['-c', `command -v ${cmd}`]); } catch { throw new Error(`${cmd} not found: apt-get install ${pkg}`); }
  }
}

/**
 * The kernel and initramfs, from the cache when a build with the same
 * package versions and recipe exists, else built now (CI: always).
 */
export function bootPieces(): BootPieces {
  checkTools();
  const kernelPkg = kernelPackage();
  const recipe = `${kernelPkg}=${aptVersion(kernelPkg)} busybox-static=${installedVersion('busybox-static')}`;
  const key = crypto.createHash('sha256').update(recipe).update(INITRAMFS_INIT).update(WANTED_MODULES.join())
    .digest('hex').slice(0, 16);
  const dir = path.join(BOOT_CACHE_DIR, key);
  const pieces = { kernel: path.join(dir, 'vmlinuz'), initramfs: path.join(dir, 'initramfs.gz'), recipe };
  if (fs.existsSync(pieces.kernel) && fs.existsSync(pieces.initramfs)) return { ...pieces, builtMs: 0 };
  const started = Date.now();
  fs.mkdirSync(BOOT_CACHE_DIR, { recursive: true });
  // Built beside, renamed into place: a concurrent or killed build never leaves half a cache entry.
  const tmp = fs.mkdtempSync(path.join(BOOT_CACHE_DIR, `.${key}-`));
  try {
    buildPieces(kernelPkg, tmp);
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      if (!fs.existsSync(pieces.kernel)) throw err; // else another process won the race: use its entry
    }
    // A new key means new package versions or a new recipe: the older entries will not be asked for again.
    for (const old of fs.readdirSync(BOOT_CACHE_DIR)) {
      if (old !== key && !old.startsWith('.')) fs.rmSync(path.join(BOOT_CACHE_DIR, old), { recursive: true, force: true });
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { ...pieces, builtMs: Date.now() - started };
}

export interface SystemDisk {
  dev: string;
  /** The root partition's node on the host (partx -a). */
  rootPart: string;
  rootUuid: string;
  /** The data a pair copies: the whole loop device. */
  bytes: number;
}

/** The test system's files (busybox, /sbin/init, /etc, the state file) into a mounted root file system. */
export function fillSystemRoot(mnt: string, state: string): void {
  for (const d of ['bin', 'sbin', 'etc', 'dev', 'proc', 'sys', 'run', 'var/lib']) fs.mkdirSync(path.join(mnt, d), { recursive: true });
  fs.copyFileSync(BUSYBOX, path.join(mnt, 'bin/busybox'));
  fs.chmodSync(path.join(mnt, 'bin/busybox'), 0o755);
  fs.writeFileSync(path.join(mnt, 'sbin/init'), SYSTEM_INIT, { mode: 0o755 });
  fs.writeFileSync(path.join(mnt, 'etc/os-release'), 'PRETTY_NAME="dpsr boot test system"\nID=dpsr-test\n');
  fs.writeFileSync(path.join(mnt, 'etc/hostname'), 'dpsr-test\n');
  fs.writeFileSync(path.join(mnt, 'var/lib/state'), state);
}

/**
 * A bootable system disk on a new loop device: MBR boot code, one bootable
 * ext4 partition with the kernel, initramfs, extlinux, busybox, /sbin/init,
 * /etc and the state file.
 */
export function makeSystemDisk(fx: Fixture, pieces: BootPieces, state: string, sizeMiB = SYSTEM_DISK_MiB): SystemDisk {
  const dev = fx.loop(sizeMiB);
  sh('sfdisk', ['--quiet', dev], { input: 'label: dos\nstart=2048, type=83, bootable\n' });
  sh('partx', ['-a', dev]);
  fx.defer(`partx -d ${dev}`, () => sh('partx', ['-d', dev]));
  const rootPart = `${dev}p1`;
  // extlinux 6.04 reads neither 64-bit block numbers nor checksummed metadata: this stays ext4
  // (extents, journal, flex_bg) with the two features it cannot follow turned off.
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^64bit,^metadata_csum', '-L', 'system', rootPart]);
  const rootUuid = sh('blkid', ['-s', 'UUID', '-o', 'value', rootPart]).trim();
  const mnt = fx.mount(rootPart);
  try {
    fillSystemRoot(mnt, state);
    fs.mkdirSync(path.join(mnt, 'boot'));
    fs.copyFileSync(pieces.kernel, path.join(mnt, 'boot/vmlinuz'));
    fs.copyFileSync(pieces.initramfs, path.join(mnt, 'boot/initramfs.gz'));
    // panic=-1: a kernel that panics reboots at once, and qemu -no-reboot then exits.
    // no_timer_check: under TCG on a loaded host the IO-APIC timer check can miss its ticks and
    // panic ("IO-APIC + timer doesn't work"), as a revert.test boot did at load 8.
    fs.writeFileSync(path.join(mnt, 'boot/extlinux.conf'), [
      // No SERIAL line: with no VGA, SeaBIOS already sends the loader's screen to the serial port.
      'DEFAULT system', 'PROMPT 0', 'TIMEOUT 0', 'LABEL system',
      '  LINUX /boot/vmlinuz', '  INITRD /boot/initramfs.gz',
      `  APPEND root=UUID=${rootUuid} console=ttyS0,115200 panic=-1 no_timer_check quiet`, '',
    ].join('\n'));
    sh('extlinux', ['--install', path.join(mnt, 'boot')]);
  } finally {
    sh('umount', [mnt]);
  }
  sh('dd', [`if=${MBR_BIN}`, `of=${dev}`, 'bs=440', 'count=1', 'conv=notrunc', 'status=none']);
  return { dev, rootPart, rootUuid, bytes: sizeMiB * 1024 * 1024 };
}

/** Mounts a partition, runs `fn` on the mount point, unmounts (the writes reach the disk through its loop device). */
export function withMounted<T>(fx: Fixture, part: string, fn: (mnt: string) => T): T {
  const mnt = fx.mount(part);
  try {
    return fn(mnt);
  } finally {
    sh('umount', [mnt]);
  }
}
