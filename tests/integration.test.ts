// System integration: the udev probe on real DPSR drives made by `dpsr pair`
// (and the udev rule run by the real udevadm with systemd's own rules, in a
// private mount namespace), install/uninstall into a temporary root checked
// by systemd-analyze verify, the initramfs hook, the failure hook and the
// metrics file.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { PROBE_PATH, decideProbe, isRecordedSource, rootDeviceNames, type ProbeFacts } from '../src/drive/udev-probe.js';
import { systemDisks } from '../src/devices/in-use.js';
import { openDirect } from '../src/io/direct-io.js';
import { writeLabel, type DriveLabel } from '../src/drive/label.js';
import { native } from '../src/base/native.js';
import { wrapperScript } from '../src/cli/commands/install.js';
import { hookEnvironment, runFailureHook, type HookEvent } from '../src/daemon/failure-hook.js';
import { escapeLabelValue, renderMetrics, writeMetricsFile, type MetricsSnapshot, type PairMetrics } from '../src/daemon/metrics.js';
import { type DeviceIdentity, matchRecordedSource } from '../src/devices/identity.js';
import { DPSR_BIN, Fixture, eachTestFreshCli, runDpsr, sh, sha256Of } from './helpers/fixture.js';
import { LocalDevice } from '../src/io/local-device.js';

const io = (fd: number) => new LocalDevice(fd);

const HOME = path.resolve(path.dirname(DPSR_BIN), '..');
let fx: Fixture;
let env: NodeJS.ProcessEnv;
eachTestFreshCli(test, (f) => ({ fx, env } = f));

const dpsr = (...args: string[]) => runDpsr(env, args, 60_000);
const have = (cmd: string) => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

/** The compiled probe's KEY=value lines (what udev runs) as a map; asserts it exited 0 and printed nothing on stderr. */
function probe(dev: string, ...flags: string[]): Record<string, string> {
  const r = spawnSync(PROBE_PATH, [...flags, dev], { encoding: 'utf8' });
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stderr, '');
  const props: Record<string, string> = {};
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const m = line.match(/^([A-Z_]+)=(.*)$/);
    assert.ok(m, `not KEY=value: ${line}`);
    props[m![1]] = m![2];
  }
  return props;
}

const readOnly = (dev: string) => sh('blockdev', ['--getro', dev]).trim() === '1';
const setWritable = (dev: string) => sh('blockdev', ['--setrw', dev]);

/** A DPSR drive of a 32 MiB ext4 source, made by `dpsr pair`. */
function pairedLoops(name = 'itest'): { source: string; drive: string } {
  const source = fx.loop(32);
  fx.mkfs(source, 'ext4');
  const drive = fx.loop(40);
  const r = dpsr('pair', source, drive, '--name', name, '--reserve', '4M');
  assert.is(r.status, 0, r.stderr);
  return { source, drive };
}

const HIDING = ['UDISKS_IGNORE', 'UDISKS_AUTO', 'UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG', 'DPSR_HIDDEN'];

// ---- the decision (pure) ----

const facts = (f: Partial<ProbeFacts>): ProbeFacts => ({ pairName: 'sys', labelOnParent: false, sourcePresent: true, holdsRoot: false, ...f });

test('decision: a DPSR drive whose source is present is hidden and made read-only', () => {
  const d = decideProbe(facts({}));
  assert.is(d.setReadOnly, true);
  assert.equal(d.properties, {
    DPSR_DRIVE: '1', DPSR_PAIR: 'sys', DPSR_SOURCE_PRESENT: '1',
    DPSR_HIDDEN: '1', UDISKS_IGNORE: '1', UDISKS_AUTO: '0', UDISKS_PRESENTATION_HIDE: '1', UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG: '1',
  });
  assert.equal(decideProbe(null), { properties: {}, setReadOnly: false });
});

test('decision: the disk the running system booted from is never hidden nor made read-only, source present or not', () => {
  for (const sourcePresent of [true, false]) {
    for (const labelOnParent of [true, false]) {
      const d = decideProbe(facts({ holdsRoot: true, sourcePresent, labelOnParent }));
      assert.is(d.setReadOnly, false);
      assert.is(d.properties.DPSR_BOOTED, '1');
      for (const k of HIDING) assert.is(d.properties[k], undefined, k);
    }
  }
});

test('decision: before / is mounted (initramfs), a drive without its source is left alone; with it, hidden', () => {
  const absent = decideProbe(facts({ holdsRoot: null, sourcePresent: false }));
  assert.is(absent.setReadOnly, false, 'it may be the disk about to become /');
  assert.is(absent.properties.DPSR_SOURCE_PRESENT, '0');
  for (const k of HIDING) assert.is(absent.properties[k], undefined, k);
  const present = decideProbe(facts({ holdsRoot: null, sourcePresent: true }));
  assert.is(present.properties.UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG, '1');
  assert.is(present.setReadOnly, true);
  // Once / is known to be elsewhere, a drive without its source is still protected.
  assert.is(decideProbe(facts({ holdsRoot: false, sourcePresent: false })).setReadOnly, true);
});

test('decision: a partition of a DPSR drive is hidden, but only the labelled disk is made read-only', () => {
  const d = decideProbe(facts({ labelOnParent: true }));
  assert.is(d.properties.UDISKS_IGNORE, '1');
  assert.is(d.setReadOnly, false);
});

test('the recorded source: the probe answers as matchRecordedSource, the kernel name deciding only when no identity was recorded', () => {
  const id = (o: Partial<DeviceIdentity>) => ({ name: 'sda', sizeSectors: 100, wwid: null, serial: null, loopBackingFile: null, ...o }) as DeviceIdentity;
  const rec = (o: object) => ({ path: '/dev/sda', name: 'sda', sizeSectors: 100, serial: null, wwid: null, loopBackingFile: null, ...o });
  assert.ok(isRecordedSource(rec({ wwid: 'naa.1' }), id({ wwid: 'naa.1', name: 'sdc' })));
  assert.not.ok(isRecordedSource(rec({ wwid: 'naa.1' }), id({ wwid: 'naa.2', serial: 'S' })));
  assert.not.ok(isRecordedSource(rec({ wwid: 'naa.1' }), id({ wwid: 'naa.1', sizeSectors: 101 })));
  assert.ok(isRecordedSource(rec({ serial: 'S1' }), id({ serial: 'S1', name: 'sdz' })));
  assert.not.ok(isRecordedSource(rec({ loopBackingFile: '/a.img' }), id({ loopBackingFile: '/b.img' })));
  assert.ok(isRecordedSource(rec({}), id({})));
  assert.not.ok(isRecordedSource(rec({}), id({ name: 'sdb' })));
  assert.not.ok(isRecordedSource(rec({ wwid: 'naa.1', serial: 'S1' }), id({ wwid: 'naa.1', serial: 'S2' })), 'every identity recorded must match');
  const values = { wwid: [null, 'naa.1', 'naa.2'], serial: [null, 'S1', 'S2'], loopBackingFile: [null, '/a.img'], sizeSectors: [100, 101] };
  for (const w of values.wwid) for (const s of values.serial) for (const l of values.loopBackingFile) for (const n of values.sizeSectors) {
    const recorded = rec({ wwid: 'naa.1', serial: s === 'S2' ? null : 'S1', loopBackingFile: l === null ? '/a.img' : null });
    for (const r of [recorded, rec({})]) {
      const candidate = id({ wwid: w, serial: s, loopBackingFile: l, sizeSectors: n });
      const { verdict } = matchRecordedSource(r, candidate);
      const expected = verdict === 'unproven' ? candidate.name === r.name : verdict === 'same';
      assert.is(isRecordedSource(r, candidate), expected, `${JSON.stringify(r)} vs ${JSON.stringify(candidate)}: ${verdict}`);
    }
  }
});

test('the devices / is on: what pair refuses as the system disk, and the partition or dm device itself', () => {
  const roots = rootDeviceNames();
  if (roots === null) assert.unreachable('/ is on no block device here');
  assert.ok(systemDisks().size > 0);
  for (const d of systemDisks()) assert.ok(roots!.has(d), `${d} in ${[...roots!]}`);
  const num = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === '/').pop()!.split(' ')[2];
  if (!num.startsWith('0:')) assert.ok(roots!.has(path.basename(fs.realpathSync(`/sys/dev/block/${num}`))));
});

// ---- the probe on real devices ----

test('probe: a paired drive is recognised, made read-only on "add" and hidden while its source is present; the source is not', () => {
  const { source, drive } = pairedLoops();
  const before = [sha256Of(source), sha256Of(drive)];
  setWritable(drive);
  const change = probe(drive);
  assert.is(change.DPSR_DRIVE, '1');
  assert.is(change.DPSR_PAIR, 'itest');
  assert.is(change.DPSR_SOURCE_PRESENT, '1');
  for (const k of HIDING) assert.ok(change[k] !== undefined, k);
  assert.is(readOnly(drive), false, 'a "change" event does not touch the read-only flag');
  const cli = dpsr('udev-probe', drive);
  assert.equal([cli.status, cli.stdout], [0, Object.entries(change).map(([k, v]) => `${k}=${v}\n`).join('')], 'dpsr udev-probe says what the probe says');
  const add = probe(drive, '--set-readonly');
  assert.equal(add, change);
  assert.is(readOnly(drive), true, 'made read-only on "add"');
  assert.equal(probe(source, '--set-readonly'), {}, 'the source is no DPSR drive');
  assert.is(readOnly(source), false);
  assert.equal([sha256Of(source), sha256Of(drive)], before, 'the probe only reads');
});

test('probe: without its source the drive is not hidden; after unpair it is nothing', () => {
  const { source, drive } = pairedLoops();
  // The loop driver reports its backing file by its current name: renamed, the source is gone for the probe.
  const backing = sh('cat', [`/sys/block/${path.basename(source)}/loop/backing_file`]).trim();
  fs.renameSync(backing, `${backing}.away`);
  fx.defer('rename back', () => { if (fs.existsSync(`${backing}.away`)) fs.renameSync(`${backing}.away`, backing); });
  const away = probe(drive);
  assert.is(away.DPSR_DRIVE, '1');
  assert.is(away.DPSR_SOURCE_PRESENT, '0');
  for (const k of HIDING) assert.is(away[k], undefined, k);
  fs.renameSync(`${backing}.away`, backing);
  assert.is(probe(drive).DPSR_SOURCE_PRESENT, '1');

  const r = dpsr('unpair', 'itest');
  assert.is(r.status, 0, r.stderr);
  assert.equal(probe(drive, '--set-readonly'), {});
  assert.is(readOnly(drive), false);
});

test('probe: a partition of a whole-disk DPSR drive is recognised and hidden (it carries the source\'s UUIDs)', () => {
  const { disk, parts } = fx.partitionedLoop(48, [16, 16]);
  fx.mkfs(parts[0], 'ext4');
  const drive = fx.loop(56);
  const r = dpsr('pair', disk, drive, '--name', 'whole', '--reserve', '4M');
  assert.is(r.status, 0, r.stderr);
  sh('partx', ['-a', drive]);
  fx.defer(`partx -d ${drive}`, () => sh('partx', ['-d', drive]));
  setWritable(drive);
  const p1 = probe(`${drive}p1`, '--set-readonly');
  assert.is(p1.DPSR_DRIVE, '1');
  assert.is(p1.DPSR_PAIR, 'whole');
  assert.is(p1.UDEV_DISABLE_PERSISTENT_STORAGE_BLKID_FLAG, '1');
  assert.is(readOnly(drive), false, 'only the labelled disk is made read-only, and only by its own event');
  assert.equal(probe(parts[0]), {}, 'the source\'s partition is not hidden');
});

test('probe: reads the label as label.ts writes it: the newest slot wins; a torn slot or an implausible label is nothing', () => {
  const dev = fx.loop(8);
  const label: Omit<DriveLabel, 'seq' | 'updatedMs'> = {
    pairName: 'one', pairId: 'p1', source: { path: '/dev/none', name: 'none-such', sizeSectors: 1, serial: null, wwid: null, loopBackingFile: null },
    dataSectors: 1, reservedSectors: 1, image: 'none', imageTimeMs: null, lastGoodTimeMs: null, journal: 'none', journalSeq: 0,
  };
  const fd = openDirect(dev, true);
  try {
    writeLabel(io(fd), label, 0); // seq 1: the last 4 KiB
    assert.equal(probe(dev), { DPSR_DRIVE: '1', DPSR_PAIR: 'one', DPSR_SOURCE_PRESENT: '0' });
    writeLabel(io(fd), { ...label, pairName: 'two' }, 1); // seq 2: the 4 KiB before
    assert.is(probe(dev).DPSR_PAIR, 'two');
    // A torn newest slot: the other one holds.
    const buf = native().alignedBuffer(4096, 4096);
    const slot0 = 8 * 1024 * 1024 - 8192;
    fs.readSync(fd, buf, 0, 4096, slot0);
    buf[100] ^= 0xff;
    fs.writeSync(fd, buf, 0, 4096, slot0);
    assert.is(probe(dev).DPSR_PAIR, 'one');
    for (const pairName of ['bad name', 'x'.repeat(65), 'ok\u0000', '-dash']) {
      writeLabel(io(fd), { ...label, pairName }, 5);
      assert.equal(probe(dev), {}, JSON.stringify(pairName));
    }
    writeLabel(io(fd), { ...label, source: { ...label.source, sizeSectors: 1.5 } }, 7);
    assert.equal(probe(dev), {}, 'a size that is no integer');
  } finally {
    fs.closeSync(fd);
  }
});

test('probe: errors and strangers print nothing and exit 0', () => {
  assert.equal(probe('/dev/no-such-device'), {});
  assert.equal(probe(fx.image('plain.img', 1)), {});
  const blank = fx.loop(8);
  assert.equal(probe(blank, '--set-readonly'), {});
  assert.is(readOnly(blank), false);
});

// ---- the udev rule, run by the real udevadm ----

test('rule: runs the probe on add (read-only) and change, and sorts before 60-persistent-storage.rules', () => {
  const rule = fs.readFileSync(path.join(HOME, 'packaging/60-dpsr.rules'), 'utf8');
  assert.match(rule, /^ACTION=="add", IMPORT\{program\}="\/usr\/local\/sbin\/dpsr-udev-probe --set-readonly \$devnode"$/m);
  assert.match(rule, /^ACTION=="change", IMPORT\{program\}="\/usr\/local\/sbin\/dpsr-udev-probe \$devnode"$/m);
  assert.ok(['60-dpsr.rules', '60-persistent-storage.rules'].sort()[0] === '60-dpsr.rules');
});

/**
 * `udevadm test` (systemd 252 has no `udevadm verify`) runs every rule file,
 * ours among systemd's own, and creates the links: so it runs in a private
 * mount namespace, over a private /dev, /run and /usr/local/sbin.
 */
function udevadmTest(devs: string[]): Array<Record<string, string>> {
  const dir = fs.mkdtempSync(path.join(fx.dir, 'udev-'));
  fs.copyFileSync(PROBE_PATH, path.join(dir, 'dpsr-udev-probe'));
  const nodes = ['/dev/null', '/dev/zero', '/dev/urandom', '/dev/random', ...devs];
  const script = `set -e
mkdir "$D/dev"; cp -a ${nodes.join(' ')} "$D/dev/"
mount -t tmpfs none /run; mkdir -p /run/udev/rules.d; cp "$R" /run/udev/rules.d/
mount -t tmpfs none /usr/local/sbin; cp -p "$D/dpsr-udev-probe" /usr/local/sbin/
mount --bind "$D/dev" /dev
for d in ${devs.map((d) => path.basename(d)).join(' ')}; do udevadm test --action=add /sys/class/block/$d 2>"$D/$d.log"; echo ---; done`;
  const out = execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script],
    { encoding: 'utf8', env: { ...process.env, D: dir, R: path.join(HOME, 'packaging/60-dpsr.rules') } });
  const logs = devs.map((d) => fs.readFileSync(path.join(dir, `${path.basename(d)}.log`), 'utf8'));
  for (const log of logs) {
    const ours = log.split('\n').filter((l) => l.includes('60-dpsr.rules'));
    assert.ok(ours.some((l) => l.includes("Importing properties from results of '/usr/local/sbin/dpsr-udev-probe --set-readonly")), log);
    for (const l of ours) assert.not.match(l, /invalid|error|failed/i, l); // udevadm reports a bad key or value so
    assert.not.match(log, /dpsr-udev-probe.*(failed|returned [1-9])/, log);
  }
  return out.split('---\n').slice(0, devs.length).map((block) =>
    Object.fromEntries(block.split('\n').filter((l) => /^[A-Z_]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])));
}

test('rule: with systemd\'s rules, the source gets the by-uuid link and its copy none; the copy is made read-only', () => {
  if (!have('udevadm') || !fs.existsSync('/lib/udev/rules.d/60-persistent-storage.rules')) {
    console.log('  (udevadm or 60-persistent-storage.rules missing: apt-get install udev)');
    assert.unreachable('udev is not installed');
  }
  const { source, drive } = pairedLoops();
  const uuid = sh('blkid', ['-p', '-s', 'UUID', '-o', 'value', source]).trim();
  setWritable(drive);
  const [src, drv] = udevadmTest([source, drive]);
  assert.ok((src.DEVLINKS ?? '').split(' ').includes(`/dev/disk/by-uuid/${uuid}`), `source links: ${src.DEVLINKS}`);
  assert.is(src.DPSR_DRIVE, undefined);
  assert.is(drv.DPSR_DRIVE, '1', JSON.stringify(drv));
  assert.is(drv.UDISKS_IGNORE, '1');
  assert.is(drv.ID_FS_UUID, undefined, 'not probed by blkid');
  assert.not.ok((drv.DEVLINKS ?? '').includes('by-uuid'), `drive links: ${drv.DEVLINKS}`);
  assert.is(readOnly(drive), true);
  assert.is(fs.existsSync('/dev/disk/by-uuid'), false, 'nothing leaked out of the namespace');
});

// ---- install / uninstall ----

/** Every file under a directory with its sha256, to prove a refusal wrote nothing. */
function treeHash(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out[path.relative(dir, p)] = e.isSymbolicLink() ? `-> ${fs.readlinkSync(p)}` : sha256Of(p);
    }
  };
  walk(dir);
  return out;
}

test('install into a root: units (systemd-analyze verify clean), shutdown hook, rule, probe, hook, wrapper, example config; uninstall removes exactly that', () => {
  const root = fs.mkdtempSync(path.join(fx.dir, 'root-'));
  fs.mkdirSync(path.join(root, 'etc/initramfs-tools'), { recursive: true });
  const dry = dpsr('install', '--root', root, '--dry-run');
  assert.is(dry.status, 0, dry.stderr);
  assert.match(dry.stdout, /would write .*dpsr\.service/);
  assert.equal(treeHash(root), {}, 'a dry run writes nothing');

  const r = dpsr('install', '--root', root);
  assert.is(r.status, 0, r.stderr);
  assert.match(r.stdout, /systemctl enable --now dpsr/);
  assert.match(r.stdout, /update-initramfs -u/);
  const at = (p: string) => path.join(root, p);
  assert.is(fs.readFileSync(at('etc/systemd/system/dpsr.service'), 'utf8'), fs.readFileSync(path.join(HOME, 'packaging/dpsr.service'), 'utf8'));
  assert.is(fs.statSync(at('usr/local/sbin/dpsr')).mode & 0o777, 0o755);
  assert.is(fs.statSync(at('etc/initramfs-tools/hooks/dpsr')).mode & 0o777, 0o755);
  assert.is(fs.statSync(at('etc/initramfs-tools/scripts/local-premount/dpsr')).mode & 0o777, 0o755);
  assert.is(fs.readFileSync(at('etc/systemd/system/dpsr-boot.service'), 'utf8'), fs.readFileSync(path.join(HOME, 'packaging/dpsr-boot.service'), 'utf8'));
  assert.is(fs.statSync(at('usr/lib/systemd/system-shutdown/dpsr')).mode & 0o777, 0o755, 'systemd-shutdown runs it');
  assert.ok(fs.existsSync(at('etc/udev/rules.d/60-dpsr.rules')));
  assert.equal(fs.readFileSync(at('usr/local/sbin/dpsr-udev-probe')), fs.readFileSync(PROBE_PATH), 'a copy of the built probe');
  assert.is(fs.statSync(at('usr/local/sbin/dpsr-udev-probe')).mode & 0o777, 0o755);
  assert.match(fs.readFileSync(at('etc/dpsr/dpsr.toml'), 'utf8'), /^# on_failure = /m);
  assert.is(fs.readFileSync(at('usr/local/share/man/man8/dpsr.8'), 'utf8'), dpsr('man').stdout, 'the manual page');
  // The wrapper runs this dpsr.
  const v = spawnSync(at('usr/local/sbin/dpsr'), ['--version'], { encoding: 'utf8' });
  assert.is(v.status, 0, v.stderr);
  assert.match(v.stdout, /^\d+\.\d+\.\d+/);

  // systemd-analyze resolves ExecStart= and ExecReload= inside the root: give it the kill a Debian system has.
  fs.mkdirSync(at('bin'));
  for (const b of ['kill', 'sh']) {
    fs.copyFileSync(`/bin/${b}`, at(`bin/${b}`));
    fs.chmodSync(at(`bin/${b}`), 0o755);
  }
  const verify = spawnSync('systemd-analyze', ['verify', `--root=${root}`, at('etc/systemd/system/dpsr.service'), at('etc/systemd/system/dpsr-boot.service')], { encoding: 'utf8' });
  assert.is(verify.status, 0, verify.stderr);
  assert.is(`${verify.stdout}${verify.stderr}`.trim(), '', 'verify is clean');

  // Again: nothing changes. The admin's config is never overwritten.
  fs.writeFileSync(at('etc/dpsr/dpsr.toml'), 'tick = "2s"\n');
  const again = dpsr('install', '--root', root);
  assert.is(again.status, 0, again.stderr);
  assert.match(again.stdout, /unchanged .*dpsr\.service/);
  assert.match(again.stdout, /kept .*dpsr\.toml/);

  // Enabled: uninstall refuses, removing nothing.
  const link = at('etc/systemd/system/sysinit.target.wants/dpsr.service');
  fs.mkdirSync(path.dirname(link), { recursive: true });
  fs.symlinkSync('/etc/systemd/system/dpsr.service', link);
  const before = treeHash(root);
  const enabled = dpsr('uninstall', '--root', root);
  assert.is(enabled.status, 3);
  assert.match(enabled.stderr, /systemctl disable --now dpsr/);
  assert.equal(treeHash(root), before);
  fs.rmSync(link);

  // A changed rule is left; everything else install wrote goes; config and state stay.
  fs.appendFileSync(at('etc/udev/rules.d/60-dpsr.rules'), '# mine\n');
  const u = dpsr('uninstall', '--root', root);
  assert.is(u.status, 0, u.stderr);
  assert.match(u.stdout, /left .*60-dpsr\.rules: changed/);
  for (const p of ['usr/local/sbin/dpsr', 'usr/local/sbin/dpsr-udev-probe', 'etc/systemd/system/dpsr.service', 'etc/systemd/system/dpsr-boot.service',
    'usr/lib/systemd/system-shutdown/dpsr', 'etc/initramfs-tools/hooks/dpsr', 'etc/initramfs-tools/scripts/local-premount/dpsr',
    'usr/local/share/man/man8/dpsr.8', 'var/lib/dpsr/install-manifest.json']) {
    assert.not.ok(fs.existsSync(at(p)), p);
  }
  assert.is(fs.readFileSync(at('etc/dpsr/dpsr.toml'), 'utf8'), 'tick = "2s"\n');
  assert.ok(fs.existsSync(at('etc/udev/rules.d/60-dpsr.rules')));
  assert.is(dpsr('uninstall', '--root', root).status, 3, 'nothing left to uninstall');
});

test('the manual page: clean roff (groff -ww), every command and every option of --help in it, the exit statuses', () => {
  const roff = dpsr('man');
  assert.is(roff.status, 0, roff.stderr);
  const page = path.join(fx.dir, 'dpsr.8');
  fs.writeFileSync(page, roff.stdout);
  const lint = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', page], { encoding: 'utf8' });
  assert.is(lint.status, 0, lint.stderr);
  assert.is(lint.stderr, '', 'groff warns of nothing');
  const text = sh('groff', ['-man', '-Tascii', '-P', '-cbou', page]);
  assert.match(text, /^NAME\n\s+dpsr\s+-\s+keep\s+a\s+second\s+disk/m);
  const commands = [...dpsr('--help').stdout.matchAll(/^ {2}([a-z-]+) /gm)].map((m) => m[1]).filter((c) => c !== 'help');
  assert.ok(commands.length >= 14, commands.join(' '));
  for (const c of commands) {
    assert.match(text, new RegExp(`^ {3}dpsr ${c}$`, 'm'), `a section for dpsr ${c}`);
    const options = [...dpsr(c, '--help').stdout.matchAll(/^ {2}(?:-\w, )?(--[a-z-]+)/gm)].map((m) => m[1]).filter((o) => o !== '--help');
    const section = text.slice(text.search(new RegExp(`^ {3}dpsr ${c}$`, 'm'))).split(/^ {3}dpsr [a-z-]+$/m)[1] ?? '';
    for (const o of options) assert.ok(section.includes(o), `dpsr ${c} ${o} in the manual`);
  }
  for (const code of ['0', '1', '2', '3', '4']) assert.match(text.split(/^EXIT STATUS$/m)[1] ?? '', new RegExp(`^ {7}${code} `, 'm'));
});

test('install refuses to overwrite a file it did not write (exit 3, nothing written)', () => {
  const root = fs.mkdtempSync(path.join(fx.dir, 'root-'));
  fs.mkdirSync(path.join(root, 'etc/systemd/system'), { recursive: true });
  fs.writeFileSync(path.join(root, 'etc/systemd/system/dpsr.service'), '[Service]\nExecStart=/bin/true\n');
  const before = treeHash(root);
  const r = dpsr('install', '--root', root);
  assert.is(r.status, 3);
  assert.match(r.stderr, /dpsr\.service exists and was not written by dpsr install/);
  assert.not.match(r.stderr.trim(), /\n/, 'one line');
  assert.equal(treeHash(root), before);
});

test('the initramfs hook puts the rule, the compiled probe, node and dpsr into the image; the probe and dpsr run there from its files alone', () => {
  if (!fs.existsSync('/usr/share/initramfs-tools/hook-functions')) {
    assert.unreachable('initramfs-tools-core is not installed (apt-get install initramfs-tools-core)');
  }
  const { drive } = pairedLoops();
  const dest = fs.mkdtempSync(path.join(fx.dir, 'initramfs-'));
  // The hook reads the installed probe and rule at their fixed paths: run it where they exist, in a namespace.
  const stage = fs.mkdtempSync(path.join(fx.dir, 'stage-'));
  fs.copyFileSync(PROBE_PATH, path.join(stage, 'dpsr-udev-probe'));
  // The usr-merged layout mkinitramfs makes before it runs the hooks.
  for (const d of ['bin', 'lib', 'lib64', 'sbin']) {
    fs.mkdirSync(path.join(dest, 'usr', d), { recursive: true });
    fs.symlinkSync(`usr/${d}`, path.join(dest, d));
  }
  fs.writeFileSync(path.join(stage, 'dpsr'), wrapperScript(process.execPath, HOME), { mode: 0o755 });
  const script = `set -e
mount -t tmpfs none /usr/local/sbin; cp -p "$S/dpsr-udev-probe" "$S/dpsr" /usr/local/sbin/
mkdir -p /etc/udev/rules.d; mount -t tmpfs none /etc/udev/rules.d; cp "$R" /etc/udev/rules.d/
DESTDIR="$DEST" verbose=n sh "$H"`;
  execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], {
    encoding: 'utf8',
    env: { ...process.env, S: stage, R: path.join(HOME, 'packaging/60-dpsr.rules'), DEST: dest, H: path.join(HOME, 'packaging/initramfs-hook') },
  });
  const inImage = (p: string) => fs.existsSync(path.join(dest, p)) || fs.existsSync(path.join(dest, 'usr', p));
  for (const p of ['/usr/local/sbin/dpsr-udev-probe', '/lib/udev/rules.d/60-dpsr.rules']) assert.ok(inImage(p), `${p} in the image`);
  for (const p of [process.execPath, '/usr/local/sbin/dpsr', `${HOME}/bin/dpsr.js`, `${HOME}/addon/build/Release/dpsr.node`]) assert.ok(inImage(p), `${p} in the image`);
  assert.not.ok(inImage(`${HOME}/node_modules/uvu`), 'no development dependency in the image');
  // The probe, run inside the image's files alone (a chroot with /dev, /proc and /sys).
  const chroot = `set -e
for d in dev proc sys; do mkdir -p "$DEST/$d"; mount --rbind /$d "$DEST/$d"; done
chroot "$DEST" /usr/local/sbin/dpsr-udev-probe "$DEV"
chroot "$DEST" "$NODE" "$HOME_/bin/dpsr.js" status --drive "$DEV"`; // what the wrapper runs (an initramfs has its own /bin/sh)
  const out = execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', chroot],
    { encoding: 'utf8', env: { PATH: process.env.PATH, DEST: dest, DEV: drive, NODE: process.execPath, HOME_: HOME } });
  assert.match(out, /^DPSR_DRIVE=1$/m);
  assert.match(out, /^DPSR_PAIR=itest$/m);
  assert.match(out, /itest/, `dpsr status --drive ran in the image's files alone: ${out}`);
});

test('the initramfs script runs dpsr boot on the root\'s state before the root is mounted and keeps what it said; dpsr-boot.service then only prints that, and judges when the initramfs did not', () => {
  const root = fx.loop(16);
  fx.mkfs(root, 'ext4');
  const mnt = fx.mount(root);
  fs.mkdirSync(path.join(mnt, 'var/lib/dpsr'), { recursive: true });
  fs.writeFileSync(path.join(mnt, 'var/lib/dpsr/state.mdb'), '');
  fx.unmount(mnt);
  // The unit's command as systemd runs it ($$ is a $ there).
  const execStart = fs.readFileSync(path.join(HOME, 'packaging/dpsr-boot.service'), 'utf8').match(/^ExecStart=(.*)$/m)![1].replaceAll('$$', '$');
  // In a namespace: a private /run (the initramfs's, moved to the system), and a dpsr that says what it was run with and exits RC.
  const script = `set -e
mount -t tmpfs none /run; mount -t tmpfs none /usr/local/sbin
printf '#!/bin/sh\\necho "ran: dpsr $* on $DPSR_STATE_DIR"; echo "data: resumed, no gap"; exit $RC\\n' >/usr/local/sbin/dpsr
printf '#!/bin/sh\\n' >/usr/local/sbin/dpsr-udev-probe
chmod 755 /usr/local/sbin/dpsr /usr/local/sbin/dpsr-udev-probe
ROOT="$ROOTDEV" sh "$PREMOUNT"
echo "mounted after: $(findmnt -n -o TARGET "$ROOTDEV" || true)"
echo "-- the unit:"
sh -c "$EXEC" || echo "exit $?"`;
  const run = (rc: number) => execFileSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], {
    encoding: 'utf8', env: { PATH: process.env.PATH, RC: String(rc), ROOTDEV: root, PREMOUNT: path.join(HOME, 'packaging/initramfs-premount'), EXEC: execStart },
  });
  const judged = run(0).split('-- the unit:\n');
  assert.match(judged[0], /^dpsr-initramfs: ran: dpsr boot --wait 10s on \/run\/dpsr-root\/var\/lib\/dpsr$/m, judged[0]);
  assert.match(judged[0], /^dpsr-initramfs: data: resumed, no gap$/m);
  assert.match(judged[0], /^mounted after: $/m, 'the root is unmounted again');
  assert.is(judged[1], 'ran: dpsr boot --wait 10s on /run/dpsr-root/var/lib/dpsr\ndata: resumed, no gap\n', 'the unit prints what the initramfs said, and runs no dpsr');
  const failed = run(1).split('-- the unit:\n');
  assert.match(failed[0], /^dpsr-initramfs: ran: dpsr boot/m);
  assert.is(failed[1], 'ran: dpsr boot on \ndata: resumed, no gap\nexit 1\n', 'dpsr boot failed in the initramfs: the unit judges');
});

// ---- the failure hook ----

const event: HookEvent = { pair: 'data', kind: 'sync-failed', reason: 'not quiescent: "x" $HOME `y`', atMs: Date.UTC(2025, 0, 2, 3, 4, 5) };

test('failure hook: a shell command line with the event in its environment and as JSON on stdin', async () => {
  const out = path.join(fx.dir, 'hook.out');
  const r = await runFailureHook(`env | grep ^DPSR_ | sort > '${out}'; cat >> '${out}'`, event, 10_000);
  assert.equal({ status: r.status, error: r.error }, { status: 0, error: null });
  const lines = fs.readFileSync(out, 'utf8').trim().split('\n');
  assert.equal(lines.slice(0, 4), [
    'DPSR_EVENT=sync-failed', 'DPSR_PAIR=data', `DPSR_REASON=${event.reason}`, 'DPSR_TIME=2025-01-02T03:04:05.000Z',
  ]);
  assert.equal(JSON.parse(lines[4]), { pair: 'data', event: 'sync-failed', reason: event.reason, time: '2025-01-02T03:04:05.000Z', atMs: event.atMs });
  assert.equal(hookEnvironment(event).DPSR_REASON, event.reason, 'passed as is, no shell expansion');
});

test('failure hook: a failing, missing or hanging hook is reported, never thrown; a timeout kills what it started', async () => {
  const failed = await runFailureHook('echo "smtp refused" >&2; exit 7', event, 10_000);
  assert.is(failed.status, 7);
  assert.match(failed.error!, /exited 7: smtp refused/);
  const missing = await runFailureHook('/no/such/alert-command', event, 10_000);
  assert.is(missing.status, 127);
  // A 1 MiB reason: too big for one environment variable (cut there), and more than a pipe holds for a hook that never reads it.
  const big = 'x'.repeat(1 << 20);
  assert.ok(hookEnvironment({ ...event, reason: big }).DPSR_REASON.length < 5000);
  const ignoresStdin = await runFailureHook('exit 0', { ...event, reason: big }, 10_000);
  assert.is(ignoresStdin.status, 0, ignoresStdin.error ?? '');
  const reads = await runFailureHook('[ "$(wc -c)" -gt 1048576 ]', { ...event, reason: big }, 10_000);
  assert.is(reads.status, 0, reads.error ?? 'the whole reason on stdin');

  // Exited, but a background child holds its output open: reported at the timeout with its exit status, the child left running.
  const bgFile = path.join(fx.dir, 'bg.pid');
  const bg = await runFailureHook(`sleep 30 & echo $! > '${bgFile}'; exit 3`, event, 300);
  assert.is(bg.status, 3);
  const bgPid = Number(fs.readFileSync(bgFile, 'utf8'));
  assert.not.throws(() => process.kill(bgPid, 0), 'a background child is left running');
  process.kill(bgPid, 'SIGKILL');

  const pidFile = path.join(fx.dir, 'child.pid');
  const started = Date.now();
  const hung = await runFailureHook(`sleep 60 & echo $! > '${pidFile}'; wait`, event, 300);
  assert.ok(Date.now() - started < 5000, 'returned at the timeout');
  assert.is(hung.status, null);
  assert.match(hung.error!, /killed after 300 ms/);
  const child = Number(fs.readFileSync(pidFile, 'utf8'));
  await new Promise((r) => setTimeout(r, 100));
  // Dead, or a zombie left to a PID 1 that does not reap.
  const state = fs.existsSync(`/proc/${child}/stat`) ? fs.readFileSync(`/proc/${child}/stat`, 'utf8').replace(/^.*\) /, '')[0] : 'gone';
  assert.ok(state === 'gone' || state === 'Z', `the hook's own child was killed too (state ${state})`);
});

// ---- metrics ----

function pairMetrics(o: Partial<PairMetrics> = {}): PairMetrics {
  return {
    pair: 'system', imageTimeMs: 1_700_000_000_000, imageConsistent: true, dirtyBytes: 4096, suspectBytes: 0,
    syncedBytesTotal: 1 << 30, syncsTotal: 12, syncsFailedTotal: 1, lastSyncDurationMs: 1500, lastSyncEndMs: 1_700_000_001_500,
    freeze: { count: 11, sumMs: 330, p50Ms: 25, p99Ms: 80 }, ringDropsTotal: 0, malformedRecordsTotal: 3, reconcileShortfallSectorsTotal: 16,
    gapsTotal: { reboot: 1, drops: 2 }, scrubMismatchesTotal: 0, driveUnreachableSinceMs: null, ...o,
  };
}

test('metrics: Prometheus text with HELP and TYPE, per pair, label values escaped', () => {
  const snap: MetricsSnapshot = { atMs: 1_700_000_030_000, pairs: [pairMetrics(), pairMetrics({ pair: 'we"ird\\na\nme', driveUnreachableSinceMs: 1_700_000_010_000, imageTimeMs: null, lastSyncDurationMs: null, lastSyncEndMs: null, freeze: { count: 0, sumMs: 0, p50Ms: null, p99Ms: null }, gapsTotal: {} })] };
  const text = renderMetrics(snap);
  assert.ok(text.endsWith('\n'));
  const lines = text.split('\n');
  assert.ok(lines.includes('# TYPE dpsr_rpo_seconds gauge'));
  assert.ok(lines.includes('dpsr_rpo_seconds{pair="system"} 30'));
  assert.ok(lines.includes('dpsr_image_timestamp_seconds{pair="system"} 1700000000'));
  assert.ok(lines.includes('dpsr_freeze_duration_seconds{pair="system",quantile="0.99"} 0.08'));
  assert.ok(lines.includes('dpsr_freeze_duration_seconds_count{pair="system"} 11'));
  assert.ok(lines.includes('dpsr_gaps_total{pair="system",cause="drops"} 2'));
  assert.ok(lines.includes('dpsr_synced_bytes_total{pair="system"} 1073741824'));
  assert.ok(lines.includes('dpsr_malformed_records_total{pair="system"} 3'));
  assert.ok(lines.includes('dpsr_drive_unreachable_seconds{pair="system"} 0'));
  assert.ok(lines.includes('dpsr_drive_unreachable_seconds{pair="we\\"ird\\\\na\\nme"} 20'), 'its server away for 20 s');
  assert.ok(lines.includes('dpsr_image_consistent{pair="we\\"ird\\\\na\\nme"} 1'));
  assert.not.ok(text.includes('dpsr_rpo_seconds{pair="we'), 'no image: no RPO sample');
  assert.is(escapeLabelValue('a\\b"c\nd'), 'a\\\\b\\"c\\nd');
  for (const l of lines.filter((x) => x && !x.startsWith('#'))) assert.match(l, /^dpsr_[a-z_]+\{pair="(?:[^"\\]|\\.)*"(?:,[a-z]+="[^"]*")?\} -?[0-9.e+]+$/, l);

  // An independent parser, where installed (Debian python3-prometheus-client).
  const py = spawnSync('/usr/bin/python3', ['-c', `import sys
from prometheus_client.parser import text_string_to_metric_families as parse
fams = list(parse(sys.stdin.read()))
print(len(fams), sum(len(f.samples) for f in fams), [s.labels['pair'] for f in fams for s in f.samples if f.name == 'dpsr_image_consistent'])`],
  { input: text, encoding: 'utf8' });
  if (py.status === 0) assert.is(py.stdout.trim(), `17 ${lines.filter((x) => x && !x.startsWith('#')).length} ['system', 'we"ird\\\\na\\nme']`);
  else console.log(`  (no prometheus_client to cross-check: ${py.stderr.trim().split('\n').pop()})`);
});

test('metrics file: written whole by rename, readable by the collector whatever the umask', () => {
  const dir = fs.mkdtempSync(path.join(fx.dir, 'textfile-'));
  const file = path.join(dir, 'dpsr.prom');
  const old = process.umask(0o077);
  try {
    writeMetricsFile(file, { atMs: Date.now(), pairs: [pairMetrics()] });
    writeMetricsFile(file, { atMs: Date.now(), pairs: [pairMetrics({ dirtyBytes: 8192 })] });
  } finally {
    process.umask(old);
  }
  assert.equal(fs.readdirSync(dir), ['dpsr.prom'], 'no temporary file left');
  assert.is(fs.statSync(file).mode & 0o777, 0o644);
  assert.match(fs.readFileSync(file, 'utf8'), /^dpsr_dirty_bytes\{pair="system"\} 8192$/m);
});

test.run();
