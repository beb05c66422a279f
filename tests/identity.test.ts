// Device identity on real loop devices: the same device stays the same; a
// re-attach, another backing file or a re-created one are told apart.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fs from 'node:fs';
import { resolveBlockDevice } from '../src/devices/devices.js';
import { hasHardwareIdentity, identify, identityChanges, type DeviceIdentity } from '../src/devices/identity.js';
import { Fixture, loopBackingFile, sh } from './helpers/fixture.js';

let fx: Fixture;
test.before.each(() => {
  fx = new Fixture();
});
test.after.each(() => fx.cleanup());

const sleep = (ms: number) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const backingOf = loopBackingFile;
const attach = (img: string, dev?: string) => fx.attach(img, dev);

function detach(dev: string): void {
  sh('losetup', ['-d', dev]);
  for (let i = 0; i < 50 && backingOf(dev) !== null; i++) sleep(20);
}

const idOf = (dev: string) => identify(resolveBlockDevice(dev));

test('a loop device: backing file, inode, offset and diskseq; no hardware identity', () => {
  const img = fx.image('a.img', 16);
  const dev = attach(img);
  const id = idOf(dev);
  assert.is(id.path, dev);
  assert.is(id.name, dev.replace('/dev/', ''));
  assert.is(id.disk, id.name);
  assert.is(id.isPartition, false);
  assert.is(id.sizeSectors, 16 * 2048);
  assert.is(id.logicalBlockBytes, 512);
  assert.is(id.loopBackingFile, img);
  const st = fs.statSync(img, { bigint: true });
  assert.ok(id.loopBackingInode !== null && id.loopBackingInode.endsWith(`:${st.ino}`), `inode ${id.loopBackingInode} vs ${st.ino}`);
  assert.is(id.loopOffset, 0);
  assert.type(id.diskseq, 'number');
  assert.is(id.wwid, null);
  assert.is(id.serial, null);
  assert.is(id.partUuid, null);
  assert.is(hasHardwareIdentity(id), false);
});

test('the same loop, identified twice: no changes', () => {
  const dev = attach(fx.image('a.img', 16));
  assert.equal(identityChanges(idOf(dev), idOf(dev)), []);
});

test('detach and re-attach the same image on the same loop number: the diskseq change is reported', () => {
  const img = fx.image('a.img', 16);
  const dev = attach(img);
  const before = idOf(dev);
  detach(dev);
  attach(img, dev);
  const after = idOf(dev);
  assert.is(after.loopBackingFile, img);
  assert.is(after.loopBackingInode, before.loopBackingInode);
  assert.ok(after.diskseq! > before.diskseq!);
  const changes = identityChanges(before, after);
  assert.is(changes.length, 1, changes.join('; '));
  assert.match(changes[0], /disk sequence number changed from \d+ to \d+/);
});

test('another backing file on the same loop number: backing file and inode changes are reported', () => {
  const img1 = fx.image('one.img', 16);
  const img2 = fx.image('two.img', 16);
  const dev = attach(img1);
  const before = idOf(dev);
  detach(dev);
  attach(img2, dev);
  const after = idOf(dev);
  assert.is(after.path, before.path);
  assert.is(after.minor, before.minor);
  const changes = identityChanges(before, after).join('\n');
  assert.match(changes, /loop backing file changed from '.*one\.img' to '.*two\.img'/);
  assert.match(changes, /loop backing file is another file \(device:inode/);
  assert.match(changes, /disk sequence number changed/);
  assert.not.match(changes, /size|device number/);
});

test('a re-created file of the same name is caught by its inode', () => {
  const img = fx.image('same.img', 16);
  const dev = attach(img);
  const before = idOf(dev);
  detach(dev);
  // A new image moved over the old name (a plain delete and create may get
  // the freed inode number back: only the diskseq tells that re-attach).
  fs.renameSync(fx.image('new.img', 16), img);
  attach(img, dev);
  const after = idOf(dev);
  assert.is(after.loopBackingFile, before.loopBackingFile);
  assert.is.not(after.loopBackingInode, before.loopBackingInode);
  assert.match(identityChanges(before, after).join('\n'), /loop backing file is another file/);
});

test('a deleted backing file still has its inode (from the loop driver, not the name)', () => {
  const img = fx.image('gone.img', 16);
  const dev = attach(img);
  const before = idOf(dev);
  fs.rmSync(img);
  fx.image('gone.img', 16); // a new file takes the name; the loop still reads the old one
  const after = idOf(dev);
  assert.is(after.loopBackingFile, `${img} (deleted)`);
  assert.is(after.loopBackingInode, before.loopBackingInode);
});

test('a loop offset and a size change are reported', () => {
  const img = fx.image('off.img', 16);
  const dev = attach(img);
  const before = idOf(dev);
  detach(dev);
  sh('losetup', ['-o', String(1024 * 1024), dev, img]);
  fx.defer(`losetup -d ${dev}`, () => { if (backingOf(dev) === img) sh('losetup', ['-d', dev]); });
  const after = idOf(dev);
  assert.is(after.loopOffset, 1024 * 1024);
  const changes = identityChanges(before, after).join('\n');
  assert.match(changes, /size changed from 32768 to 30720 sectors/);
  assert.match(changes, /loop offset changed from 0 to 1048576 bytes/);
});

test('identified against its record: no probe within the same attach, a full one after a re-attach', () => {
  const img = fx.image('a.img', 16);
  const dev = attach(img);
  sh('mkfs.ext4', ['-q', dev]);
  const recorded = idOf(dev);
  assert.ok(recorded.contentUuid);
  sh('mkfs.ext4', ['-q', '-F', dev]); // new UUID, same attach: only compared across reboots
  const fresh = idOf(dev);
  assert.is.not(fresh.contentUuid, recorded.contentUuid);
  const known = identify(resolveBlockDevice(dev), recorded);
  assert.equal(known, { ...fresh, contentUuid: recorded.contentUuid }, 'the sysfs fields read anew, the probed ones carried over');
  assert.equal(identityChanges(recorded, known), []);
  detach(dev);
  attach(img, dev);
  const again = identify(resolveBlockDevice(dev), recorded);
  assert.is(again.contentUuid, fresh.contentUuid, 'a new attach is probed in full');
  assert.match(identityChanges(recorded, again).join('\n'), /disk sequence number changed/);
});

test('a partition: PART_ENTRY_UUID, start; a re-made partition table is reported', () => {
  const { disk, parts } = fx.partitionedLoop(32, [8, 8]);
  const p2 = idOf(parts[1]);
  assert.is(p2.isPartition, true);
  assert.is(p2.disk, disk.replace('/dev/', ''));
  assert.match(p2.partUuid ?? '', /^[0-9a-f-]{36}$/i);
  assert.is(p2.loopBackingFile, idOf(disk).loopBackingFile);
  assert.equal(identityChanges(p2, idOf(parts[1])), []);
  // A new table where partition 2 starts elsewhere (same loop, same diskseq).
  sh('partx', ['-d', disk]);
  sh('sfdisk', ['--quiet', disk], { input: 'label: gpt\nsize=4MiB\nsize=8MiB\n' });
  sh('partx', ['-a', disk]);
  const now = idOf(parts[1]);
  const changes = identityChanges(p2, now).join('\n');
  assert.match(changes, /partition start moved from sector 18432 to 10240/);
  assert.match(changes, /partition UUID changed/);
  assert.not.match(changes, /disk sequence/);
});

test('the disk a partition is on', () => {
  const { disk, parts } = fx.partitionedLoop(32, [8]);
  const d = idOf(disk);
  const p = idOf(parts[0]);
  assert.is(p.diskDev, d.diskDev);
  assert.is(p.diskseq, d.diskseq);
  assert.is(p.startSector, 2048);
  assert.is(p.sizeSectors, 8 * 2048);
  const changes = identityChanges(d, p).join('\n');
  assert.match(changes, /was a whole disk, is now a partition/);
  assert.match(changes, /device number changed/);
});

test('what survives a reboot is read: the partition table UUID of a disk, the content UUID, the boot id', () => {
  const { disk, parts } = fx.partitionedLoop(32, [8]);
  fx.mkfs(parts[0], 'ext4');
  const d = idOf(disk);
  const p = idOf(parts[0]);
  assert.is(d.ptUuid, sh('blkid', ['-p', '-s', 'PTUUID', '-o', 'value', disk]).trim());
  assert.is(d.contentUuid, null, 'a partitioned disk holds no file system itself');
  assert.is(p.ptUuid, null, 'a partition has its entry UUID instead');
  assert.is(p.contentUuid, sh('blkid', ['-p', '-s', 'UUID', '-o', 'value', parts[0]]).trim());
  assert.is(d.bootId, fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim());
  const blank = idOf(attach(fx.image('blank.img', 8)));
  assert.equal([blank.ptUuid, blank.contentUuid], [null, null]);
});

// Pure comparisons of recorded identities (no device needed).
const base: DeviceIdentity = {
  path: '/dev/sdb', name: 'sdb', disk: 'sdb', major: 8, minor: 16, diskDev: (8 << 20) | 16,
  isPartition: false, startSector: 0, sizeSectors: 1 << 21, logicalBlockBytes: 512,
  diskseq: 7, wwid: 'naa.5000c500a1b2c3d4', serial: 'ZA1B2C3', loopBackingFile: null,
  loopBackingInode: null, loopOffset: null, partUuid: null,
};

test('a renamed node alone is no change; a new device number is noted', () => {
  assert.equal(identityChanges(base, { ...base, path: '/dev/disk/by-id/x', name: 'sdb' }), []);
  const moved = identityChanges(base, { ...base, path: '/dev/sdc', name: 'sdc', minor: 32, diskDev: (8 << 20) | 32 });
  assert.equal(moved, ['device number changed from 8:16 to 8:32']);
});

test('WWID, serial, sector size and a vanished diskseq are changes', () => {
  const c = identityChanges(base, { ...base, wwid: 'naa.1', serial: null, logicalBlockBytes: 4096, diskseq: null });
  assert.equal(c, [
    'logical sector size changed from 512 to 4096 bytes',
    'disk sequence number changed from 7 to none (re-attached, new media or reboot)',
    "WWID changed from 'naa.5000c500a1b2c3d4' to 'naa.1'",
    "serial number changed from 'ZA1B2C3' to none",
  ]);
  // A kernel without diskseq recorded nothing to compare.
  assert.equal(identityChanges({ ...base, diskseq: null }, { ...base, diskseq: 9 }), []);
});

// A virtio disk: no WWID, no serial; a new diskseq at every boot.
const virtio: DeviceIdentity = {
  ...base, path: '/dev/vdb', name: 'vdb', disk: 'vdb', major: 254, minor: 16, diskDev: (254 << 20) | 16,
  wwid: null, serial: null, diskseq: 2, bootId: 'boot-1', ptUuid: null, contentUuid: '0f3a8e4c-77a5-4b43-9b0e-2f4cbbd2a1d1',
};
const nextBoot = (o: Partial<DeviceIdentity> = {}): DeviceIdentity => ({ ...virtio, bootId: 'boot-2', diskseq: 9, ...o });

test('across a reboot, a disk without a serial keeps its identity: the new diskseq is no change', () => {
  assert.equal(identityChanges(virtio, nextBoot()), []);
  const table = { ...virtio, ptUuid: 'c0ffee00', contentUuid: null };
  assert.equal(identityChanges(table, nextBoot({ ptUuid: 'c0ffee00', contentUuid: null })), []);
  // Nothing but its size, path and device number to go by (a blank disk): that is what it is.
  const blank = { ...virtio, contentUuid: null };
  assert.equal(identityChanges(blank, nextBoot({ contentUuid: null })), []);
});

test('across a reboot, a disk without a serial that holds other UUIDs is reported; a new device number only when nothing else tells it apart', () => {
  assert.equal(identityChanges(virtio, nextBoot({ contentUuid: '11111111-2222-4333-8444-555555555555' })), [
    "file system UUID changed from '0f3a8e4c-77a5-4b43-9b0e-2f4cbbd2a1d1' to '11111111-2222-4333-8444-555555555555' (since the last boot)",
  ]);
  const table = { ...virtio, ptUuid: 'c0ffee00', contentUuid: null };
  assert.equal(identityChanges(table, nextBoot({ ptUuid: 'deadbeef', contentUuid: null })), [
    "partition table UUID changed from 'c0ffee00' to 'deadbeef' (since the last boot)",
  ]);
  // Its UUIDs are the same: the same disk, probed in another order.
  assert.equal(identityChanges(virtio, nextBoot({ minor: 32, diskDev: (254 << 20) | 32 })), []);
  assert.equal(identityChanges({ ...base, bootId: 'boot-1' }, { ...base, bootId: 'boot-2', diskseq: 9, minor: 32, diskDev: (8 << 20) | 32 }), [], 'the same serial and WWID');
  const blank = { ...virtio, contentUuid: null };
  assert.equal(identityChanges(blank, nextBoot({ contentUuid: null, minor: 32, diskDev: (254 << 20) | 32 })), ['device number changed from 254:16 to 254:32']);
  assert.match(identityChanges(virtio, nextBoot({ sizeSectors: 1 << 20 })).join('\n'), /size changed/);
});

test('within one boot a new diskseq is a change and new UUIDs are not (a mkfs on the source was tracked)', () => {
  assert.equal(identityChanges(virtio, { ...virtio, contentUuid: null, ptUuid: 'c0ffee00' }), []);
  assert.match(identityChanges(virtio, { ...virtio, diskseq: 3 }).join('\n'), /disk sequence number changed from 2 to 3/);
  // A record from before boot ids were kept is compared as within one boot: the stricter way.
  const old = { ...virtio, bootId: undefined, ptUuid: undefined, contentUuid: undefined };
  assert.match(identityChanges(old, nextBoot()).join('\n'), /disk sequence number changed from 2 to 9/);
});

test('a disk with a serial needs no UUIDs across a reboot', () => {
  const sata = { ...base, bootId: 'boot-1', contentUuid: 'a' };
  assert.equal(identityChanges(sata, { ...sata, bootId: 'boot-2', diskseq: 30, contentUuid: 'b' }), []);
  assert.match(identityChanges(sata, { ...sata, bootId: 'boot-2', serial: 'OTHER' }).join('\n'), /serial number changed/);
});

test('hasHardwareIdentity: a WWID or a serial number', () => {
  assert.is(hasHardwareIdentity(base), true);
  assert.is(hasHardwareIdentity({ ...base, wwid: null }), true);
  assert.is(hasHardwareIdentity({ ...base, serial: null }), true);
  assert.is(hasHardwareIdentity({ ...base, wwid: null, serial: null }), false);
});

test('the running system disk: a serial number where sysfs has one (read only)', () => {
  const src = sh('findmnt', ['-n', '-o', 'SOURCE', '/']).trim();
  if (!src.startsWith('/dev/') || !fs.statSync(src).isBlockDevice()) return;
  const id = idOf(src);
  const files = [`/sys/block/${id.disk}/device/serial`, `/sys/block/${id.disk}/serial`];
  const raw = files.map((f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim() : '')).find((s) => s !== '');
  if (raw) {
    assert.is(id.serial, raw);
    assert.is(hasHardwareIdentity(id), true);
  }
  assert.is(id.loopBackingFile, null);
  assert.equal(identityChanges(id, idOf(src)), []);
});

test.run();
