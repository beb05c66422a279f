// Multi-range discards on a real NVMe queue: the block layer merges
// discard bios that need not be contiguous into one request when the queue
// takes several discard segments (blk_try_merge: ELEVATOR_DISCARD_MERGE;
// bio_attempt_discard_merge), which loop devices never do. One boot of the
// guest (tests/helpers/guest.ts): an emulated NVMe disk (the source, xfs
// mounted with online discard) paired with a virtio DPSR drive; many small
// files written and synced, every other one deleted, synced again; then the
// drive must equal the source, and no discard record may touch a kept file.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ExtentSet } from '../src/base/extents.js';
import { Fixture, sh } from './helpers/fixture.js';
import { type BootOutcome, bootOnce, guestImage, packDpsr } from './helpers/guest.js';

const BOOT_TIMEOUT_S = 900; // a bound, not a wait: the boot returns when the guest powers off
const SOURCE_MiB = 384; // mkfs.xfs wants more than ~300 MB
const RESERVE_MiB = 64; // the journal holds the files' writes (~24 MiB) in one sync
const DRIVE_MiB = SOURCE_MiB + RESERVE_MiB;
const FILES = 3000;

let fx: Fixture;
let host: string;
let images: string[];
let b: BootOutcome;

// Results as KEY=value lines; waits poll a condition, never sleep a fixed time.
const SCRIPT = String.raw`set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
R=/mnt/host/out/results-$GUEST_BOOT.txt
O=/mnt/host/out
r() { echo "$1=$2" >>"$R"; }
waitfor() { local end=$(( $(date +%s) + $1 )); shift; until "$@"; do [ "$(date +%s)" -ge "$end" ] && return 1; sleep 0.5; done; }
dpsr() { node /opt/dpsr/bin/dpsr.js "$@"; }
# /sys/block/X/stat: discard I/Os and discard merges (Documentation/block/stat.rst fields 12, 13).
discards() { awk '{print $12 " " $13}' /sys/block/nvme0n1/stat; }

mkdir -p /opt/dpsr && tar -C /opt/dpsr -xf /mnt/host/dpsr.tar
r maxDiscardSegments "$(cat /sys/block/nvme0n1/queue/max_discard_segments)"
r scheduler "$(cat /sys/block/nvme0n1/queue/scheduler)"
mkfs.xfs -q -f /dev/nvme0n1 || exit 1
dpsr pair /dev/nvme0n1 /dev/vdb --name src --reserve ${RESERVE_MiB}M >$O/pair.log 2>&1; r pair "$?"
mkdir -p /src && mount -o discard /dev/nvme0n1 /src || exit 1
node -e 'const fs = require("fs"), c = require("crypto");
	for (let i = 0; i < ${FILES}; i++) fs.writeFileSync("/src/f" + i, c.randomBytes(4096 * (1 + i % 3)));'
sync
dpsr sync src --json >$O/sync-1.json 2>$O/sync-1.err; r sync1 "$?"
filefrag -v -b512 /src/f* >$O/extents.txt; r filefrag "$?"

dpsr watch /dev/nvme0n1 --json >$O/watch.jsonl 2>$O/watch.err &
watcher=$!
waitfor 60 grep -q watching $O/watch.err; r watching "$?"
r discardsBefore "$(discards)"
for ((i = 1; i < ${FILES}; i += 2)); do echo /src/f$i; done | xargs rm
sync
# Unmounting waits for xfs's online discards to complete (xfs_log_quiesce:
# xfs_extent_busy_wait_all), so the sync below sees them all.
umount /src; r umount "$?"
r discardsAfter "$(discards)"
dpsr sync src --json >$O/sync-2.json 2>$O/sync-2.err; r sync2 "$?"
kill -TERM $watcher; waitfor 60 eval '! kill -0 $watcher 2>/dev/null'; r watchExit "$?"
dpsr status src --json >$O/status.json 2>&1
size=$(blockdev --getsize64 /dev/nvme0n1)
cmp -n "$size" /dev/nvme0n1 /dev/vdb >$O/cmp.txt 2>&1; r cmp "$?"
`;

interface Extent { file: number; start: number; end: number }

/** filefrag -v -b512 output: each file's physical extents in 512-byte sectors, end exclusive. */
function parseExtents(text: string): Extent[] {
  const out: Extent[] = [];
  let file = -1;
  for (const line of text.split('\n')) {
    const name = line.match(/^File size of \/src\/f(\d+) /);
    if (name) { file = Number(name[1]); continue; }
    const m = line.match(/^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):/);
    if (m && file >= 0) out.push({ file, start: Number(m[1]), end: Number(m[2]) + 1 });
  }
  return out;
}

test.before(() => {
  fx = new Fixture();
  const image = guestImage();
  console.log(`  guest (${image.recipe}): ${image.builtMs > 0 ? `built in ${(image.builtMs / 1000).toFixed(0)} s` : 'from the cache'}`);
  host = fs.mkdtempSync(path.join(fx.dir, 'share-'));
  packDpsr(path.join(host, 'dpsr.tar'));
  images = ['source.img', 'drive.img'].map((f) => path.join(fx.dir, f));
  sh('truncate', ['-s', `${SOURCE_MiB}M`, images[0]]);
  sh('truncate', ['-s', `${DRIVE_MiB}M`, images[1]]);
  b = bootOnce(image, host, SCRIPT, [
    '-drive', `file=${images[0]},if=none,id=n0,format=raw,discard=unmap`, '-device', 'nvme,serial=dpsr0,drive=n0',
    '-drive', `file=${images[1]},if=virtio,format=raw,discard=unmap`,
  ], BOOT_TIMEOUT_S);
  console.log(`  boot: ${(b.wallMs / 1000).toFixed(0)} s, ${JSON.stringify(b.results)}`);
});
test.after(() => fx.cleanup());

const out = (name: string) => {
  const f = path.join(host, 'out', name);
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
};

function results(): Record<string, string> {
  assert.is(b.status, 0, `guest.sh exit ${b.status}: ${b.stderr}\n${b.log.slice(-2000)}`);
  return b.results;
}

test('the guest\'s NVMe queue merges discards: several segments allowed, discard merges counted', () => {
  const r = results();
  assert.ok(Number(r.maxDiscardSegments) > 1, `max_discard_segments ${r.maxDiscardSegments}`);
  const [ios0, merges0] = r.discardsBefore.split(' ').map(Number);
  const [ios1, merges1] = r.discardsAfter.split(' ').map(Number);
  console.log(`  deleting ${FILES / 2} files: ${ios1 - ios0} discard requests, ${merges1 - merges0} discard merges`);
  assert.ok(merges1 - merges0 > 0, `no discard was merged: ${JSON.stringify(r)}`);
});

test('every discard record lies in a deleted file\'s extents or free space, none in a kept file', () => {
  const r = results();
  assert.equal([r.pair, r.filefrag, r.watching, r.umount, r.watchExit], ['0', '0', '0', '0', '0'], `${JSON.stringify(r)}\n${out('pair.log')}`);
  const extents = parseExtents(out('extents.txt'));
  assert.is(new Set(extents.map((e) => e.file)).size, FILES, 'filefrag listed every file');
  const kept = extents.filter((e) => e.file % 2 === 0).sort((a, c) => a.start - c.start);
  const records = out('watch.jsonl').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as
    { op?: string; event?: string; start: number; end: number });
  assert.not.ok(records.some((x) => x.event), `drops or unknown writes: ${records.filter((x) => x.event).slice(0, 3).map((x) => JSON.stringify(x))}`);
  const discards = records.filter((x) => x.op === 'discard');
  assert.ok(discards.length > 0, 'discards were recorded');
  const wrong = discards.filter((d) => kept.some((e) => e.start < d.end && d.start < e.end));
  assert.is(wrong.length, 0, `${wrong.length} of ${discards.length} discard records overlap kept files, e.g. ${JSON.stringify(wrong.slice(0, 3))}`);
  const deleted = extents.filter((e) => e.file % 2 === 1);
  const recorded = new ExtentSet();
  for (const d of discards) recorded.add(d.start, d.end);
  const missed = deleted.filter((e) => !recorded.covers(e.start, e.end));
  assert.is(missed.length, 0, `${missed.length} of ${deleted.length} deleted files' extents were never recorded as discarded, e.g. ${JSON.stringify(missed.slice(0, 3))}`);
});

test('the DPSR drive equals the source after the sync, in the guest and on the host; no gap', () => {
  const r = results();
  assert.equal([r.sync1, r.sync2], ['0', '0'], `${out('sync-1.err')}${out('sync-2.err')}`);
  assert.is(r.cmp, '0', `in the guest: ${out('cmp.txt')}`);
  const onHost = spawnSync('cmp', ['-n', String(SOURCE_MiB * 2 ** 20), images[0], images[1]], { encoding: 'utf8' });
  assert.is(onHost.status, 0, `on the host: ${onHost.stdout}${onHost.stderr}`);
  const st = JSON.parse(out('status.json')).pairs[0];
  assert.equal(st.gapsSinceSync ?? [], [], JSON.stringify(st));
});

test.run();
