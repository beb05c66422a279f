// dpsr as a user runs it: a real Debian 12 guest (systemd 252, its udevd and
// kernel) under qemu, `dpsr install` as the README says, a source disk mounted
// from fstab by UUID and paired with a DPSR drive, then rebooted three times:
// after a clean shutdown (the shutdown hook leaves a record, dpsr-boot.service
// resumes with no gap and the sync compares nothing), after the host mounted
// the source read-write while the guest was down (changed-offline, a compare),
// and after qemu was killed (unclean-shutdown, a compare); the disks are
// checked equal (dpsr verify in the guest, sha256 on the host). What
// the guest saw comes back through the 9p share (tests/helpers/guest.ts).
// Disks: vda the guest's root, vdb the source (GPT, one ext4 partition), vdc
// the DPSR drive. The guest is built once (4-7 min, cached); under software
// emulation the first boot takes about 6 min (update-initramfs, the full
// copy), the others about 2.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { Fixture, freshCliFixture, runDpsr, runDpsrOk, sh, sha256Of } from './helpers/fixture.js';
import { type BootOutcome, type GuestImage, bootOnce, guestImage, packDpsr } from './helpers/guest.js';
import { fillSystemRoot, withMounted } from './helpers/boot-image.js';
import { faultDisk } from './helpers/fault-disk.js';
import { bootGuest, serialTail } from './helpers/qemu.js';

const BOOT_TIMEOUT_S = 1500; // a bound, not a wait: a boot returns when the guest powers off (boot 1, update-initramfs with node inside, took 10-15 min at load 10 here)
const SOURCE_MiB = 96;
const DRIVE_MiB = SOURCE_MiB + 16;

let fx: Fixture;
let image: GuestImage;
let host: string;
const boots: BootOutcome[] = [];

// Shell the boot scripts share: results as KEY=value lines for the test; polls, not sleeps.
const PRELUDE = String.raw`set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
R=/mnt/host/out/results-$GUEST_BOOT.txt
r() { echo "$1=$2" >>"$R"; }
# waitfor SECONDS CMD...: until CMD succeeds (checked twice a second), at most SECONDS.
waitfor() { local end=$(( $(date +%s) + $1 )); shift; until "$@"; do [ "$(date +%s)" -ge "$end" ] && return 1; sleep 0.5; done; }
# The persistent-storage links that lead to the DPSR drive or its partitions.
drive_links() {
	for l in /dev/disk/by-uuid/* /dev/disk/by-label/* /dev/disk/by-partuuid/* /dev/disk/by-partlabel/*; do
		[ -e "$l" ] || continue
		case "$(readlink -f "$l")" in /dev/vdc | /dev/vdc[0-9]*) printf '%s ' "$l" ;; esac
	done
}
prop() { udevadm info -q property "$1" 2>/dev/null | sed -n "s/^$2=//p"; }
# What udev made of the drive after an event: links, blkid's probe, the probe's verdict, the read-only flag.
hidden_state() {
	udevadm settle
	r "$1.driveLinks" "$(drive_links)"
	r "$1.fsType" "$(prop /dev/vdc ID_FS_TYPE)$(prop /dev/vdc1 ID_FS_TYPE)$(prop /dev/vdc ID_PART_TABLE_UUID)"
	r "$1.hidden" "$(prop /dev/vdc DPSR_HIDDEN)$(prop /dev/vdc1 DPSR_HIDDEN)"
	r "$1.readOnly" "$(blockdev --getro /dev/vdc)"
	r "$1.sourceLink" "$(readlink -f "/dev/disk/by-uuid/$(cat /mnt/host/source-uuid)")"
}
# The daemon's unit once it is settled (active, or failed).
unit_settled() { case "$(systemctl is-active dpsr)" in active | failed) return 0 ;; esac; return 1; }
compare_done() { dpsr status data --json >/run/dpsr-test-status.json 2>/dev/null && ! grep -qE '"state":"(needs-compare|syncing|copying)"' /run/dpsr-test-status.json; }
`;

// Boot 1: the source, dpsr installed and enabled as the README says, the pair, a sync by the daemon.
const BOOT1 = String.raw`
printf 'label: gpt\nstart=2048, name=data\n' | sfdisk -q /dev/vdb
udevadm settle
mkfs.ext4 -q -L data /dev/vdb1
uuid=$(blkid -s UUID -o value /dev/vdb1)
echo "$uuid" >/mnt/host/source-uuid
echo "UUID=$uuid /data ext4 defaults 0 2" >>/etc/fstab
mkdir -p /data && systemctl daemon-reload && mount /data && r mounted "$(findmnt -n -o SOURCE /data)"
head -c 8M /dev/urandom >/data/before && sync

mkdir -p /opt/dpsr && tar -C /opt/dpsr -xf /mnt/host/dpsr.tar
node /opt/dpsr/bin/dpsr.js install >/mnt/host/out/install.log 2>&1; r install "$?"
systemctl daemon-reload && systemctl enable --now dpsr
udevadm control --reload && udevadm trigger --subsystem-match=block --action=change
update-initramfs -u >/mnt/host/out/initramfs.log 2>&1; r initramfs "$?"
cp "/boot/initrd.img-$(uname -r)" /mnt/host/initrd.img
lsinitramfs /mnt/host/initrd.img >/run/dpsr-test-initramfs.txt
r initramfsProbe "$(grep -c '^usr/local/sbin/dpsr-udev-probe$' /run/dpsr-test-initramfs.txt)"
r initramfsRule "$(grep -c 'lib/udev/rules.d/60-dpsr.rules$' /run/dpsr-test-initramfs.txt)"
r initramfsNode "$(grep -c '^usr/local/bin/node$' /run/dpsr-test-initramfs.txt)"
r initramfsPremount "$(grep -c '^scripts/local-premount/dpsr$' /run/dpsr-test-initramfs.txt)"
r initramfsBytes "$(stat -c %s /mnt/host/initrd.img)"
waitfor 120 unit_settled; r active "$(systemctl is-active dpsr)"

# dpsr pair takes tracking itself (it does not go through the daemon): the daemon stops meanwhile.
systemctl stop dpsr
dpsr pair /dev/vdb /dev/vdc --name data --reserve 16M >/mnt/host/out/pair.log 2>&1; r pair "$?"
systemctl start dpsr; waitfor 120 unit_settled; r activeAfterPair "$(systemctl is-active dpsr)"
waitfor 60 test -b /dev/vdc1; hidden_state paired

# The installed probe under systemd-udevd's own [Service] settings, and node there as the control.
{
	echo '[Service]'; echo 'Type=oneshot'
	systemctl cat systemd-udevd.service | sed -n '/^\[Service\]/,/^\[/p' |
		grep -E '^[A-Za-z]+=' | grep -vE '^(Type|Exec[A-Za-z]*|Sockets|Restart[A-Za-z]*|WatchdogSec|Delegate|OOMScoreAdjust|KillMode|TasksMax)='
	echo 'ExecStart=/bin/sh -c "/usr/local/sbin/dpsr-udev-probe /dev/vdc; echo PROBE_EXIT=$$?; /usr/local/bin/node -e 0; echo NODE_EXIT=$$?"'
	echo 'StandardOutput=file:/mnt/host/out/udevd-sandbox.log'
	echo 'StandardError=inherit'
} >/run/systemd/system/dpsr-test-udevd-sandbox.service
cp /run/systemd/system/dpsr-test-udevd-sandbox.service /mnt/host/out/
systemctl daemon-reload && systemctl start dpsr-test-udevd-sandbox.service
r udevdKilledProbes "$(journalctl -b -u systemd-udevd | grep -c 'dpsr-udev-probe.*\(terminated by signal\|failed\)')"

head -c 8M /dev/urandom >/data/after-pair && sync
dpsr sync data --json >/mnt/host/out/sync-1.json 2>/mnt/host/out/sync-1.err; r sync "$?"
# Written after the last sync: what the first sync after the clean reboot copies, with nothing compared.
head -c 4M /dev/urandom >/data/after-sync && sync
`;

// Every boot after the first: what dpsr-boot.service said, and how long it took.
const BOOT_UNIT = String.raw`
r bootUnit "$(systemctl is-active dpsr-boot)"
r bootSaid "$(journalctl -b -u dpsr-boot -o cat | grep -m1 '^data: ')"
t0=$(systemctl show dpsr-boot -p ExecMainStartTimestampMonotonic --value); t1=$(systemctl show dpsr-boot -p ExecMainExitTimestampMonotonic --value)
r bootUnitMs "$(( (t1 - t0) / 1000 ))"
r fsckRootAfter "$(systemctl show systemd-remount-fs -p After --value | grep -c dpsr-boot)"
`;

// Boots 2 and 3: nothing is run by hand before the checks of the unit.
const REBOOT = BOOT_UNIT + String.raw`
waitfor 180 unit_settled
r active "$(systemctl is-active dpsr)"
r restarts "$(systemctl show dpsr -p NRestarts --value)"
r defaultTarget "$(systemctl is-active "$(systemctl get-default)")"
r data "$(findmnt -n -o SOURCE /data)"
hidden_state boot
waitfor 900 compare_done; r compared "$?"
dpsr status data --json >"/mnt/host/out/status-$GUEST_BOOT.json"
r identityChanged "$(journalctl -b -u dpsr | grep -c identity-changed)"
r driveSectorsRead "$(awk '{print $3}' /sys/block/vdc/stat)"
r sourceSectorsRead "$(awk '{print $3}' /sys/block/vdb/stat)"
`;

const BOOT2_MORE = String.raw`
head -c 4M /dev/urandom >/data/boot-2 && sync
dpsr status data --json >/mnt/host/out/status-before-sync-2.json
dpsr sync data --json >/mnt/host/out/sync-2.json 2>/mnt/host/out/sync-2.err; r sync "$?"
udevadm trigger --subsystem-match=block --action=change; hidden_state change
udevadm trigger --subsystem-match=block --action=add; hidden_state add
umount /data && mount /data; r remounted "$(findmnt -n -o SOURCE /data)"
# Hot-plug: the drive's PCI device goes and is found again (new events, a new diskseq).
pci=$(readlink -e /sys/block/vdc/device/..) && [ -e "$pci/remove" ] && echo 1 >"$pci/remove"
waitfor 60 test ! -e /sys/block/vdc; r unplugged "$?"
echo 1 >/sys/bus/pci/rescan; waitfor 60 test -b /dev/vdc1; r replugged "$?"
hidden_state hotplug
`;

// Boot 3 (after the host mounted the source): synced unmounted and verified, then written, and qemu killed
// (guest.sh, at this line on the console): no shutdown record.
const KILL = String.raw`
umount /data
dpsr sync data --json >/mnt/host/out/sync-3.json 2>/mnt/host/out/sync-3.err; r sync "$?"
dpsr verify data --json >/mnt/host/out/verify-3.json 2>&1; r verify "$?"
mount /data
head -c 4M /dev/urandom >/data/boot-3 && sync
sync; echo DPSR-TEST-KILL-QEMU >/dev/console
sleep 600
`;
const KILL_ENV = { GUEST_FATAL: 'DPSR-TEST-KILL-QEMU' };

// Boot 4: a gap (unclean-shutdown), compared in the background; then the source is unmounted and synced,
// so that the host can compare both disks whole once the guest is off.
const AFTER_GAP = BOOT_UNIT + String.raw`
waitfor 180 unit_settled
r data "$(findmnt -n -o SOURCE /data)"
waitfor 900 compare_done; r compared "$?"
dpsr status data --json >"/mnt/host/out/status-$GUEST_BOOT.json"
umount /data
dpsr sync data --json >"/mnt/host/out/sync-$GUEST_BOOT.json" 2>"/mnt/host/out/sync-$GUEST_BOOT.err"; r sync "$?"
`;

/** After boot 4 (the guest off): [source, the drive's image] hashes. */
const hashes: Record<number, [string, string]> = {};

test.before(() => {
  fx = new Fixture();
  image = guestImage();
  console.log(`  guest (${image.recipe}): ${image.builtMs > 0 ? `built in ${(image.builtMs / 1000).toFixed(0)} s` : 'from the cache'}`);
  host = fs.mkdtempSync(path.join(fx.dir, 'share-'));
  packDpsr(path.join(host, 'dpsr.tar'));
  const images = ['source.img', 'drive.img'].map((f) => path.join(fx.dir, f));
  sh('truncate', ['-s', `${SOURCE_MiB}M`, images[0]]);
  sh('truncate', ['-s', `${DRIVE_MiB}M`, images[1]]);
  const disks = images.flatMap((f) => ['-drive', `file=${f},if=virtio,format=raw`]);
  const started = Date.now();
  const sourceHashes = (n: number) => { hashes[n] = [sha256Of(images[0], SOURCE_MiB << 20), sha256Of(images[1], SOURCE_MiB << 20)]; };
  const plan: Array<{ script: string; env?: Record<string, string>; expect: number; after?: (n: number) => void }> = [
    { script: PRELUDE + BOOT1, expect: 0 },
    {
      script: PRELUDE + REBOOT + BOOT2_MORE, expect: 0,
      after: () => {
        // Another system mounts the source read-write while this one is down.
        const mnt = fx.mount(images[0], ['-o', `loop,offset=${2048 * 512}`]);
        fs.writeFileSync(path.join(mnt, 'offline'), 'written while the guest was down');
        fx.unmount(mnt);
      },
    },
    { script: PRELUDE + REBOOT + KILL, env: KILL_ENV, expect: 3 },
    { script: PRELUDE + AFTER_GAP, expect: 0, after: sourceHashes },
  ];
  for (const [i, step] of plan.entries()) {
    const b = bootOnce(image, host, step.script, disks, BOOT_TIMEOUT_S, step.env);
    boots.push(b);
    console.log(`  boot ${i + 1}: ${(b.wallMs / 1000).toFixed(0)} s, ${JSON.stringify(b.results)}`);
    if (b.status !== step.expect) break; // the tests say what went wrong
    step.after?.(i + 1);
  }
  console.log(`  ${boots.length} boots: ${((Date.now() - started) / 1000).toFixed(0)} s`);
});
test.after(() => fx.cleanup());

/** The boot's outcome, asserting the guest came up and powered off by itself (boot 3: was killed). */
function boot(n: number): BootOutcome {
  const b = boots[n - 1];
  assert.ok(b, `boot ${n} did not happen (an earlier boot failed)`);
  assert.is(b.status, n === 3 ? 3 : 0, `boot ${n}: guest.sh exit ${b.status}: ${b.stderr}\n${b.log.slice(-2000)}`);
  return b;
}
const out = (name: string) => fs.readFileSync(path.join(host, 'out', name), 'utf8');

test('dpsr install, enable and update-initramfs as the README says; the pair is made while the daemon is stopped', () => {
  const r = boot(1).results;
  assert.equal([r.mounted, r.install, r.initramfs, r.active, r.pair, r.activeAfterPair], ['/dev/vdb1', '0', '0', 'active', '0', 'active'],
    `${JSON.stringify(r)}\n${out('pair.log')}`);
  assert.is(r.initramfsProbe, '1', 'the initramfs holds the probe where the rule runs it');
  assert.ok(Number(r.initramfsRule) >= 1, 'the initramfs holds the rule');
  assert.is(r.initramfsNode, '1', 'the initramfs holds node');
  assert.is(r.initramfsPremount, '1', 'the initramfs runs dpsr before the root is mounted');
  console.log(`  initramfs with dpsr: ${(Number(r.initramfsBytes) / 2 ** 20).toFixed(1)} MiB`);
});

test('after each reboot the unit is active without anyone running dpsr, and the guest reaches its default target', () => {
  for (const n of [2, 3]) {
    const r = boot(n).results;
    assert.is(r.active, 'active', `boot ${n}: ${JSON.stringify(r)}`);
    assert.is(r.restarts, '0', `boot ${n}: the unit started at the first attempt`);
    assert.is(r.defaultTarget, 'active', `boot ${n}`);
  }
});

test('the udev probe runs inside systemd-udevd\'s own sandbox, where node aborts', () => {
  const log = out('udevd-sandbox.log');
  assert.match(out('dpsr-test-udevd-sandbox.service'), /^MemoryDenyWriteExecute=yes$/m, 'the sandbox is udevd\'s');
  assert.match(log, /^DPSR_DRIVE=1$/m, log);
  assert.match(log, /^DPSR_HIDDEN=1$/m, log);
  assert.match(log, /^PROBE_EXIT=0$/m);
  assert.not.match(log, /^NODE_EXIT=0$/m, `node runs there after all: the premise changed\n${log}`);
  assert.is(boot(1).results.udevdKilledProbes, '0', 'udevd ran the rule\'s probe without a crash');
});

test('no udev event gives the DPSR drive a by-uuid, by-label or by-partuuid link or a file system type: pairing, boot, trigger, hot-plug', () => {
  const states: Array<[number, string]> = [[1, 'paired'], [2, 'boot'], [2, 'change'], [2, 'add'], [2, 'hotplug'], [3, 'boot']];
  for (const [n, tag] of states) {
    const r = boot(n).results;
    const what = `boot ${n}, ${tag}: ${JSON.stringify(r)}`;
    assert.is(r[`${tag}.driveLinks`], '', what);
    assert.is(r[`${tag}.fsType`], '', `${what}: blkid ran on the copy (LVM, md, btrfs could pick it)`);
    assert.is(r[`${tag}.hidden`], '11', what);
    assert.is(r[`${tag}.readOnly`], '1', what);
    assert.is(r[`${tag}.sourceLink`], '/dev/vdb1', `${what}: by-uuid names the source`);
  }
  assert.is(boot(2).results.unplugged, '0', 'the drive went away at the hot-unplug');
  assert.is(boot(2).results.replugged, '0', 'the drive came back after the hot-plug');
});

test('fstab\'s UUID= mounts the source, never the copy, at boot and when mounted again', () => {
  for (const n of [2, 3]) assert.is(boot(n).results.data, '/dev/vdb1', `boot ${n}`);
  assert.is(boot(2).results.remounted, '/dev/vdb1');
});

test('the identity of both disks survives a reboot: no identity-changed gap, neither logged nor in status', () => {
  for (const n of [2, 3]) {
    const r = boot(n).results;
    assert.is(r.compared, '0', `boot ${n}: the background compare finished`);
    assert.is(r.identityChanged, '0', `boot ${n}`);
    const st = JSON.parse(out(`status-${n}.json`)).pairs[0];
    const causes = (st.gapsSinceSync ?? []).map((g: { cause: string }) => g.cause);
    assert.not.ok(causes.includes('identity-changed'), `boot ${n}: ${JSON.stringify(st.gapsSinceSync)}`);
    console.log(`  boot ${n}: read since boot: drive ${Number(r.driveSectorsRead) / 2048} MiB, source ${Number(r.sourceSectorsRead) / 2048} MiB (of ${SOURCE_MiB} MiB); gaps: ${causes.join(', ')}`);
  }
});

test('a sync by the daemon freezes the mounted source (freezeMs reported)', () => {
  for (const n of [1, 2]) {
    assert.is(boot(n).results.sync, '0', out(`sync-${n}.err`));
    const report = JSON.parse(out(`sync-${n}.json`)).syncs[0];
    assert.ok(report.sourceMounted.length > 0, `boot ${n}: ${JSON.stringify(report)}`);
    assert.type(report.freezeMs, 'number', `boot ${n}: ${JSON.stringify(report)}`);
  }
});

const console_ = (n: number) => fs.readFileSync(path.join(host, 'out', `console-${n}.log`), 'utf8').replace(/\r/g, '');
const gaps = (n: number) => (JSON.parse(out(`status-${n}.json`)).pairs[0].gapsSinceSync ?? []).map((g: { cause: string }) => g.cause);

test('a clean shutdown runs the installed hook: a shutdown record for the pair', () => {
  for (const n of [1, 2]) {
    boot(n);
    const said = console_(n).match(/dpsr-shutdown: data: .*/g) ?? [];
    assert.match(said.join('\n'), /dpsr-shutdown: data: shutdown record written/, `boot ${n}: ${said.join('\n')}\n${console_(n).slice(-1500)}`);
    console.log(`  boot ${n}: shutdown hook ${console_(n).match(/dpsr-shutdown: took (\d+) ms/)?.[1]} ms`);
  }
});

/** Where initramfs-tools checks the root (fsck), or else where it has mounted it (local-bottom follows the mount). */
const rootChecked = (c: string) => c.search(/Will now check root file system|Running \/scripts\/local-bottom/);

test('the initramfs runs dpsr boot before the root is checked and mounted: resumed at boot 2, changed-offline at 3, unclean-shutdown at 4', () => {
  const said = [2, 3, 4].map((n) => console_(n).match(/dpsr-initramfs: data: .*/)?.[0] ?? `boot ${n}: nothing:\n${console_(n).slice(-3000)}`);
  assert.match(said[0], /data: resumed, no gap/);
  assert.match(said[1], /data: gap \(changed-offline\)/);
  assert.match(said[2], /data: gap \(unclean-shutdown\)/);
  for (const n of [2, 3, 4]) {
    const c = console_(n);
    const judged = c.indexOf('dpsr-initramfs: data:');
    assert.ok(judged >= 0 && judged < rootChecked(c), `boot ${n}: judged before the root was checked and mounted`);
    console.log(`  boot ${n}: dpsr boot in the initramfs ${c.match(/dpsr-initramfs: dpsr boot took (\d+) ms/)?.[1]} ms`);
  }
});

test('after a clean reboot dpsr-boot.service resumes with no gap, before the root is remounted; the sync copies what was written, compares nothing', () => {
  const r = boot(2).results;
  assert.is(r.bootUnit, 'active', JSON.stringify(r));
  assert.match(r.bootSaid, /^data: resumed, no gap/);
  assert.is(r.fsckRootAfter, '1', 'systemd-remount-fs is ordered after dpsr-boot');
  assert.equal(gaps(2), [], 'no gap in status');
  for (const n of [2, 3, 4]) console.log(`  boot ${n}: dpsr-boot.service ${boot(n).results.bootUnitMs} ms`);
  const before = JSON.parse(out('status-before-sync-2.json')).pairs[0];
  const report = JSON.parse(out('sync-2.json')).syncs[0];
  assert.is(report.comparedBytes, 0, JSON.stringify(report));
  // 4 MiB written after boot 1's sync and 4 MiB in boot 2, with their file-system metadata: nothing of the rest.
  assert.ok(report.copiedBytes >= 8 << 20 && report.copiedBytes <= before.dirtyBytes + (4 << 20), `${JSON.stringify(report)} (status before: ${before.dirtyBytes} dirty)`);
  console.log(`  boot 2: first sync after the clean reboot copied ${report.copiedBytes} bytes (status said ${before.dirtyBytes} dirty), compared ${report.comparedBytes}`);
});

test('the source mounted read-write by another system while down: a gap (changed-offline), compared; equal afterwards', () => {
  const r = boot(3).results;
  assert.match(r.bootSaid, /^data: gap \(changed-offline\)/, JSON.stringify(r));
  assert.ok(gaps(3).includes('changed-offline'), gaps(3).join());
  assert.is(r.sync, '0', out('sync-3.err'));
  assert.is(r.verify, '0', out('verify-3.json'));
  assert.ok(JSON.parse(out('verify-3.json')).equal);
});

test('qemu killed: the next boot is a gap (unclean-shutdown), compared in the background; the disks are equal afterwards', () => {
  assert.not.match(console_(3), /dpsr-shutdown:/, 'no shutdown hook ran');
  const r = boot(4).results;
  assert.match(r.bootSaid, /^data: gap \(unclean-shutdown\)/, JSON.stringify(r));
  assert.is(r.compared, '0');
  assert.ok(gaps(4).includes('unclean-shutdown'), gaps(4).join());
  assert.is(r.sync, '0', out('sync-4.err'));
  assert.is(hashes[4][0], hashes[4][1], 'sha256 of the source and the drive\'s image');
});

test('the DPSR drive booted right after a sync failed between its commit and the end of its writes: the initramfs applies the committed transaction before the root is mounted and says so; the system comes up with the synced state', async () => {
  boot(1); // its update-initramfs made the initramfs with dpsr's hook and script (host/initrd.img)
  const { fx: f, env } = freshCliFixture();
  try {
    const SRC_MiB = 24;
    const srcBytes = SRC_MiB << 20;
    const source = f.loop(SRC_MiB);
    sh('mkfs.ext4', ['-q', '-F', '-L', 'system', source]);
    const uuid = sh('blkid', ['-s', 'UUID', '-o', 'value', source]).trim();
    withMounted(f, source, (mnt) => fillSystemRoot(mnt, 'synced-before'));
    const drive = faultDisk(f, SRC_MiB + 10);
    runDpsrOk(env, ['pair', source, drive.dev, '--name', 'system', '--reserve', '8M']);
    runDpsrOk(env, ['sync', 'system', '--quiet-period', '0.2']);
    withMounted(f, source, (mnt) => {
      fs.writeFileSync(path.join(mnt, 'var/lib/state'), 'committed');
      fs.writeFileSync(path.join(mnt, 'var/lib/more'), crypto.randomBytes(4 << 20));
    });
    // The in-place writes of the second half of the image fail: the transaction is committed, the image half-applied.
    drive.fail({ write: [[srcBytes / 2, srcBytes]] });
    const failed = runDpsr(env, ['sync', 'system', '--quiet-period', '0.2']);
    drive.heal();
    assert.is(failed.status, 1, failed.stderr);
    const st = runDpsr(env, ['status', '--drive', drive.dev]);
    assert.is(st.status, 4, `status --drive: a committed sync not completely applied: ${st.stdout}`);
    const synced = sha256Of(source);
    assert.is.not(sha256Of(drive.image, srcBytes), synced, 'the image is not the synced one yet');

    // The source is gone: the machine boots its DPSR drive alone, with the initramfs the guest made.
    const b = await bootGuest(f, {
      disks: [{ path: drive.image }], timeoutMs: BOOT_TIMEOUT_S * 1000, memoryMiB: 1024,
      kernel: { vmlinuz: path.join(image.dir, 'vmlinuz'), initrd: path.join(host, 'initrd.img'), append: `root=UUID=${uuid} ro console=ttyS0 panic=-1` },
      watchFor: /DPSR-TEST-BOOTED/, stopOn: /Kernel panic|DPSR-TEST-FAILED|\(initramfs\) $/m,
    });
    const c = b.serial.replace(/\r/g, '');
    const applied = c.search(/dpsr-initramfs: \/dev\/vda: applied journal transaction \d+ of pair system/);
    assert.ok(applied >= 0, `the initramfs applied the committed transaction and said so:\n${serialTail(b.serial, 60)}`);
    assert.ok(applied < rootChecked(c), 'before the root was checked and mounted');
    assert.match(c, /DPSR-TEST-BOOTED state=committed/, serialTail(b.serial, 40));
    assert.is(sha256Of(drive.image, srcBytes), synced, 'the drive holds the synced image, sector for sector');
    console.log(`  ${c.match(/dpsr-initramfs: \/dev\/vda: applied .*/)?.[0]}; booted in ${((b.watchedAt! - b.startedAt) / 1000).toFixed(0)} s`);
  } finally {
    f.cleanup();
  }
});

test.run();
