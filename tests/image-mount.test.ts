// locate (src/restore/image-mount.ts): which file system a PATH names and where PATH is in it, from
// injected surroundings (the source, its mounts, the partition tables); no devices.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { BlockDevice } from '../src/devices/devices.js';
import { UsageError } from '../src/base/errors.js';
import { type ImagePartition, type LocatedPair, type SourceMount, type Surroundings, locate } from '../src/restore/image-mount.js';
import type { MountEntry } from '../src/devices/mounts.js';

const MIB = 1 << 20;
const partitionPair: LocatedPair = { name: 'data', dataSectors: 2048 * 100, source: { isPartition: true, sizeSectors: 2048 * 100 } };
const diskPair: LocatedPair = { name: 'system', dataSectors: 2048 * 300, source: { isPartition: false, sizeSectors: 2048 * 300 } };
const disk: BlockDevice = {
  path: '/dev/sdx', name: 'sdx', major: 8, minor: 16, disk: 'sdx', diskDev: (8 << 20) | 16, isPartition: false,
  startSector: 0, sizeSectors: 2048 * 300, logicalBlockBytes: 512,
};
// The image's and the source's tables: an ESP without a file system blkid knows, then ext4 at 101 MiB.
const imageParts: ImagePartition[] = [
  { number: 1, startBytes: MIB, sizeBytes: 100 * MIB, fsType: null },
  { number: 2, startBytes: 101 * MIB, sizeBytes: 199 * MIB, fsType: 'ext4' },
];

function mount(mountPoint: string, more: Partial<SourceMount> = {}): SourceMount {
  return { mountPoint, root: '/', fsType: 'ext4', readOnly: false, partition: null, ...more };
}

function entry(mountPoint: string, source: string): MountEntry {
  return { devNum: '8:16', mountPoint, root: '/', source, fsType: 'ext4', readOnly: false, superReadOnly: false };
}

function around(more: Partial<Surroundings> = {}): Surroundings {
  const mounts = more.mounts ?? [];
  return {
    dev: disk, mounts, allMounts: mounts.map((m) => entry(m.mountPoint, '/dev/sdx')),
    imageParts: () => imageParts, sourceParts: () => imageParts, ...more,
  };
}

function usageError(fn: () => unknown, why: RegExp): void {
  try {
    fn();
    assert.unreachable('located');
  } catch (err) {
    assert.instance(err, UsageError);
    assert.match((err as Error).message, why);
  }
}

test('an absolute path under the mount of a partition pair names a file inside its file system, read through that mount', () => {
  const a = around({ mounts: [mount('/srv/data')] });
  const loc = locate(partitionPair, '/srv/data/home/me/notes', undefined, a);
  assert.equal(loc, {
    partition: null,
    image: { offsetBytes: 0, sizeBytes: 100 * MIB },
    relPath: 'home/me/notes',
    source: { device: '/dev/sdx', offsetBytes: 0, sizeBytes: 100 * MIB, mount: { mountPoint: '/srv/data', fsType: 'ext4', readOnly: false }, otherMounts: [] },
  });
  assert.is(locate(partitionPair, '/srv/data', undefined, a).relPath, '', 'the mount point is the root');
});

test('a path relative to the root of an unmounted file system is taken as it is, with no mount on the source side', () => {
  const loc = locate(partitionPair, 'etc/fstab/', undefined, around());
  assert.is(loc.relPath, 'etc/fstab');
  assert.is(loc.source?.mount, null);
  assert.is(locate(partitionPair, undefined, undefined, around()).relPath, '', 'no PATH: the root');
});

test('a bind mount of a subdirectory maps its paths back to the file system, and is not taken for the root mount', () => {
  const loc = locate(partitionPair, '/home/me/notes', undefined, around({ mounts: [mount('/home', { root: '/users' })] }));
  assert.is(loc.relPath, 'users/me/notes');
  assert.is(loc.source?.mount, null);
  assert.equal(loc.source?.otherMounts, ['/home']);
});

test('a path on another file system mounted deeper under the source is refused, naming that file system', () => {
  const a = around({ mounts: [mount('/')], allMounts: [entry('/', '/dev/sdx'), entry('/home', '/dev/sdy1')] });
  usageError(() => locate(partitionPair, '/home/me', undefined, a), /\/home\/me is on \/dev\/sdy1 \(mounted on \/home\), not on pair data's source/);
  assert.is(locate(partitionPair, '/etc/fstab', undefined, a).relPath, 'etc/fstab');
});

test('an absolute path outside the mounted file system is refused rather than read relative to its root', () => {
  usageError(() => locate(partitionPair, '/etc/fstab', undefined, around({ mounts: [mount('/srv/data')] })), /mounted on \/srv\/data/);
});

test('a relative path cannot climb above the root of the file system with ..', () => {
  assert.is(locate(partitionPair, 'etc/../../x', undefined, around()).relPath, 'x');
  assert.is(locate(partitionPair, '../..', undefined, around()).relPath, '');
});

test('a whole-disk pair with one file system among its partitions uses it, at its offsets on both disks', () => {
  const sourceParts = [{ number: 2, startBytes: 102 * MIB, sizeBytes: 198 * MIB }];
  const loc = locate(diskPair, 'etc/fstab', undefined, around({ sourceParts: () => sourceParts }));
  assert.is(loc.partition, 2);
  assert.equal(loc.image, { offsetBytes: 101 * MIB, sizeBytes: 199 * MIB });
  assert.equal([loc.source?.offsetBytes, loc.source?.sizeBytes], [102 * MIB, 198 * MIB]);
});

test('a whole-disk pair with several file systems needs --in-partition or a path under a mount', () => {
  const two: ImagePartition[] = [{ ...imageParts[0], fsType: 'vfat' }, imageParts[1]];
  usageError(() => locate(diskPair, 'etc', undefined, around({ imageParts: () => two })), /partitions 1 \(vfat\), 2 \(ext4\): name one with --in-partition N/);
  assert.is(locate(diskPair, 'EFI', 1, around({ imageParts: () => two })).partition, 1);
  const mounted = around({ imageParts: () => two, mounts: [mount('/boot/efi', { partition: 1, fsType: 'vfat' })] });
  const loc = locate(diskPair, '/boot/efi/EFI/debian', undefined, mounted);
  assert.equal([loc.partition, loc.relPath, loc.source?.mount?.mountPoint], [1, 'EFI/debian', '/boot/efi']);
});

test('--in-partition must agree with the mount a path is under, name a partition the image has, and fits whole-disk pairs only', () => {
  const a = around({ mounts: [mount('/', { partition: 2 })] });
  usageError(() => locate(diskPair, '/etc', 1, a), /\/etc is on partition 2 \(mounted on \/\), not partition 1/);
  usageError(() => locate(diskPair, 'etc', 7, around()), /has no partition 7 \(it has 1, 2\)/);
  usageError(() => locate(partitionPair, 'etc', 1, around()), /its image is one file system/);
});

test('a whole-disk image without a partition table is one file system over the whole data area', () => {
  const loc = locate(diskPair, 'etc', undefined, around({ imageParts: () => [] }));
  assert.equal([loc.partition, loc.image], [null, { offsetBytes: 0, sizeBytes: 300 * MIB }]);
});

test('with the source gone or without that partition, the image is still located and the source side is null', () => {
  assert.is(locate(partitionPair, 'etc', undefined, around({ dev: null })).source, null);
  assert.is(locate(diskPair, 'etc', undefined, around({ sourceParts: () => [] })).source, null);
});

test.run();
