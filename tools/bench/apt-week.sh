#!/bin/bash
# What a Debian 12 system disk writes in an `apt upgrade` and in days of use,
# measured by dpsr itself: a bookworm root (mmdebstrap) on an ext4 source loop
# device paired with a DPSR drive loop, then in a chroot the upgrade (the point
# release's packages to bookworm-security and bookworm-updates) and N simulated
# days, with `dpsr status --json` dirtyBytes after each step, the kernel's
# sectors written (/sys/block/loopN/stat), `dpsr watch --json` logs of every
# write (distinct bytes per step, and how much of it is ext4's own journal) and
# the final sync's copiedBytes. See tools/bench/README.md.
#
#   bash tools/bench/apt-week.sh [--profile server|desktop] [--days N] [--size GIB]
#        [--fs-journal MIB] [--reserve SIZE] [--root-cache DIR] [--out DIR] [--keep]
#
# Root; needs mmdebstrap, fio, e2fsprogs and a built dpsr (bash tools/build.sh).
# Leaves nothing behind (loops, mounts, pinned programs, images) unless --keep.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DPSR="$REPO/bin/dpsr.js"
IO="$REPO/dist/tools/bench/apt-week-io.js"

PROFILE=server DAYS=7 SIZE_GIB=12 FS_JOURNAL_MIB=1024 RESERVE=6G
ROOT_CACHE=/var/cache/dpsr-bench OUT="" KEEP=0
# A day's rates (see README): journal lines, browser session-store writes and HTTP cache.
LOG_LINES=${LOG_LINES:-40000} SESSION_WRITES=${SESSION_WRITES:-1920} CACHE_MIB=${CACHE_MIB:-200}
MIRROR=${MIRROR:-http://deb.debian.org/debian} SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --size) SIZE_GIB=$2; shift 2 ;;
    --fs-journal) FS_JOURNAL_MIB=$2; shift 2 ;;
    --reserve) RESERVE=$2; shift 2 ;;
    --root-cache) ROOT_CACHE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "apt-week.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "apt-week: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
for t in mmdebstrap fio mkfs.ext4 debugfs losetup chroot node; do command -v $t >/dev/null || die "missing $t"; done
[ -f "$IO" ] && [ -f "$DPSR" ] || die "build first: bash tools/build.sh"

case "$PROFILE" in
  server) PKGS=systemd-sysv,udev,kmod,linux-image-amd64,firmware-linux-free,initramfs-tools,openssh-server,sudo,locales,ca-certificates,curl,wget,rsync,man-db,logrotate,cron,bash-completion,vim-tiny,less ;;
  desktop) PKGS=systemd-sysv,udev,kmod,linux-image-amd64,firmware-linux-free,initramfs-tools,openssh-server,sudo,locales,ca-certificates,curl,wget,rsync,man-db,logrotate,cron,bash-completion,vim-tiny,less,xfce4,xfce4-terminal,lightdm,network-manager,firefox-esr,chromium,libreoffice-writer,libreoffice-calc,fonts-dejavu ;;
  *) die "--profile server or desktop" ;;
esac

W=$(mktemp -d /var/tmp/dpsr-apt-week.XXXXXX)
OUT=${OUT:-$W/out}
mkdir -p "$OUT"
R=$W/root
PIN=/sys/fs/bpf/dpsr-bench-aptweek-$$
export DPSR_STATE_DIR=$W/state DPSR_SOCKET=$W/dpsr.sock DPSR_LOCK=$W/owner.lock DPSR_CONFIG=$W/none.toml DPSR_BPF_DIR=$PIN
SRC="" DRV="" JOURNALD="" WATCH=""

# ---- cleanup: every mount, process, pin and loop this script made, also on failure ----
chroot_umount() {
  local m
  for m in run/lock run dev/pts dev sys/fs/cgroup sys proc; do mountpoint -q "$R/$m" && umount "$R/$m"; done
  return 0
}
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && { for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done; }; return 0; }
cleanup() {
  set +e
  stop_pid "$WATCH"; stop_pid "$JOURNALD"
  chroot_umount
  mountpoint -q "$R" && umount "$R"
  [ -d "$PIN" ] && node -e "import('$REPO/dist/src/base/native.js').then((m) => m.native().detach('$PIN'))"
  local d
  for d in "$SRC" "$DRV"; do
    [ -n "$d" ] || continue
    case "$(cat /sys/block/${d#/dev/}/loop/backing_file 2>/dev/null)" in
      "$W"/*) blockdev --setrw "$d"; losetup -d "$d" ;;
    esac
  done
  if [ "$KEEP" = 1 ]; then say "kept $W"
  elif [ "$OUT" = "$W/out" ]; then rm -rf "$W/src.img" "$W/drv.img" "$W/root" "$W/state" "$W/owner.lock"
  else rm -rf "$W"; fi
  say "results in $OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dpsr() { node "$DPSR" "$@"; }
in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive HOME=/root "$@"; }
chroot_mount() {
  mount -t proc proc "$R/proc" && mount -t sysfs sys "$R/sys" && mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" && mount --bind /dev "$R/dev" && mount -t devpts devpts "$R/dev/pts" -o newinstance,ptmxmode=0666 \
    && mount -t tmpfs tmpfs "$R/run" -o mode=0755,size=256m && mkdir -p "$R/run/lock" || die "chroot mounts"
  cp /etc/resolv.conf "$R/run/resolv.conf"
}
# journald as at boot (it needs a cgroup file system): runtime under /run, then flushed to /var/log/journal (systemd-journal-flush.service).
start_journald() {
  chroot "$R" /lib/systemd/systemd-journald >>"$OUT/journald.log" 2>&1 &
  JOURNALD=$!
  for _ in $(seq 100); do [ -S "$R/run/systemd/journal/stdout" ] && break; sleep 0.1; done
  [ -S "$R/run/systemd/journal/stdout" ] || die "journald did not start (see $OUT/journald.log)"
  in_root journalctl --flush >>"$OUT/journald.log" 2>&1
}
stop_journald() { stop_pid "$JOURNALD"; JOURNALD=""; }
# A reboot: every process stopped, the file system unmounted (ext4's journal starts over) and mounted again.
reboot_source() {
  stop_journald; chroot_umount; umount "$R" || die "umount $R"
  mount "$SRC" "$R" || die "mount $SRC"
  chroot_mount; start_journald
}

LOOP=""
sectors_written() { awk '{print $7}' "/sys/block/$LOOP/stat"; }
dirty() { dpsr status pw --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).pairs[0].dirtyBytes))'; }
# One line per step: cumulative dirtyBytes since the last sync, sectors written since then, seconds.
T0=0 W0=0
mark() { sync -f "$R"; printf '%s\t%s\t%s\t%s\n' "$1" "$(dirty)" "$(( ($(sectors_written) - W0) * 512 ))" "$(( SECONDS - T0 ))" | tee -a "$OUT/steps.tsv" >&2; }
baseline() { T0=$SECONDS; W0=$(sectors_written); }
# node itself in the background (not a function: $! would be a subshell, and killing it leaves node running).
start_watch() { node "$DPSR" watch "$SRC" --json >"$OUT/watch-$1.jsonl" 2>>"$OUT/watch.err" & WATCH=$!; sleep 2; }
stop_watch() { sync -f "$R"; sleep 1; stop_pid "$WATCH"; WATCH=""; }
sync_json() { dpsr sync pw --json >"$OUT/sync-$1.json" || die "sync $1 failed: $(cat "$OUT/sync-$1.json")"; }

# ---- the root (cached as a tarball: the same bookworm point release every run) ----
mkdir -p "$ROOT_CACHE"
TAR=$ROOT_CACHE/bookworm-$PROFILE.tar
if [ ! -s "$TAR" ]; then
  say "mmdebstrap bookworm ($PROFILE, point release only) -> $TAR"
  mmdebstrap --variant=standard --mode=root --include="$PKGS" \
    --customize-hook='echo aptweek >"$1/etc/hostname"' \
    bookworm "$TAR.partial.tar" "deb $MIRROR bookworm main" >"$OUT/mmdebstrap.log" 2>&1 || die "mmdebstrap failed: $(tail -n 5 "$OUT/mmdebstrap.log")"
  mv "$TAR.partial.tar" "$TAR"
fi

say "source ${SIZE_GIB} GiB ext4 (journal ${FS_JOURNAL_MIB} MiB), DPSR drive + $RESERVE"
truncate -s "${SIZE_GIB}G" "$W/src.img"
SRC=$(losetup -f --show --direct-io=on "$W/src.img") || die "losetup"
LOOP=${SRC#/dev/}
mkfs.ext4 -q -F -J size="$FS_JOURNAL_MIB" -E lazy_itable_init=0,lazy_journal_init=0 "$SRC" || die "mkfs"
mkdir -p "$R" && mount "$SRC" "$R" || die "mount"
tar -xpf "$TAR" -C "$R" --numeric-owner --xattrs --xattrs-include='*' || die "untar"
chroot "$R" systemd-machine-id-setup >/dev/null 2>&1 || die "machine-id" # journald needs one
rm -f "$R/etc/resolv.conf" && ln -s /run/resolv.conf "$R/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d" && chmod 755 "$R/usr/sbin/policy-rc.d" # no service starts in the chroot
mkdir -p "$R/var/log/journal" "$R/home/user/.mozilla/firefox/p.default"
chroot_mount
in_root apt-get update -q >"$OUT/apt-update-0.log" 2>&1 || die "apt-get update"
start_journald
sync -f "$R"

# The journal of ext4 (inode 8): its sectors on the source, to tell its writes from the rest.
# Its extents (at most 128 MiB each) follow each other; the span also covers its one extent tree block.
JRANGE=$(debugfs -R 'stat <8>' "$SRC" 2>/dev/null | tr ',' '\n' | sed -n 's/.*([0-9]*-[0-9]*): *\([0-9]*\)-\([0-9]*\).*/\1 \2/p' \
  | awk 'NR == 1 || $1 < a { a = $1 } NR == 1 || $2 > b { b = $2 } END { if (NR) print a, b }')
[ -n "$JRANGE" ] || die "cannot find ext4's journal on $SRC"
read -r JA JB <<<"$JRANGE"
REGION="$((JA * 8)):$(((JB + 1) * 8))"

say "pair and first sync (full copy of ${SIZE_GIB} GiB)"
drv_bytes=$(( SIZE_GIB * 1024 * 1024 * 1024 + $(node -e "import('$REPO/dist/src/base/units.js').then((u) => console.log(u.parseSize('$RESERVE')))") ))
truncate -s "$drv_bytes" "$W/drv.img"
DRV=$(losetup -f --show --direct-io=on "$W/drv.img") || die "losetup"
dpsr pair "$SRC" "$DRV" --name pw --reserve "$RESERVE" >"$OUT/pair.log" 2>&1 || die "pair: $(cat "$OUT/pair.log")"
sync_json 0
printf 'step\tdirtyBytes\tsectorBytesWritten\tseconds\n' >"$OUT/steps.tsv"
{
  echo "profile=$PROFILE size_gib=$SIZE_GIB fs_journal_mib=$FS_JOURNAL_MIB reserve=$RESERVE days=$DAYS"
  echo "log_lines=$LOG_LINES session_writes=$SESSION_WRITES cache_mib=$CACHE_MIB ext4_journal_sectors=$REGION"
  echo "root: $(du -sh --exclude=proc --exclude=sys --exclude=dev --exclude=run "$R" 2>/dev/null | cut -f1) used; $(in_root dpkg-query -W | wc -l) packages; kernel $(ls "$R/lib/modules")"
} >"$OUT/setup.txt"

# ---- the upgrade: bookworm's point release -> bookworm-security and bookworm-updates ----
say "upgrade"
baseline
start_watch upgrade
cat >"$R/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
EOF
in_root apt update -q >"$OUT/apt-update.log" 2>&1 || die "apt update"
mark upgrade:apt-update
in_root apt list --upgradable >"$OUT/upgradable.txt" 2>/dev/null
in_root apt-get -s -o Debug::NoLocking=1 upgrade --with-new-pkgs >"$OUT/upgrade-plan.txt" 2>&1
# The kernel first (a new ABI package, its modules and initramfs), then the browsers, then the rest.
in_root apt -y -o Dpkg::Options::=--force-confold install --only-upgrade linux-image-amd64 >"$OUT/apt-kernel.log" 2>&1 || die "kernel upgrade: $(tail -n 5 "$OUT/apt-kernel.log")"
mark upgrade:kernel
if [ "$PROFILE" = desktop ]; then
  in_root apt -y -o Dpkg::Options::=--force-confold install --only-upgrade firefox-esr chromium >"$OUT/apt-browsers.log" 2>&1 || die "browser upgrade"
  mark upgrade:browsers
fi
in_root apt -y -o Dpkg::Options::=--force-confold upgrade >"$OUT/apt-upgrade.log" 2>&1 || die "upgrade: $(tail -n 5 "$OUT/apt-upgrade.log")"
mark upgrade:rest
stop_watch
in_root dpkg-query -W >"$OUT/packages-after.txt"
sync_json upgrade

# ---- the days: a reboot, journald, daily timers, a list refresh (and a browser) ----
WEEK_W0=$(sectors_written)
baseline
for d in $(seq "$DAYS"); do
  say "day $d"
  reboot_source
  start_watch "day$d"
  # Boot and the day's log: LOG_LINES lines through journald (systemd-cat: the stdout stream of a service).
  seq "$LOG_LINES" | awk -v d="$d" '{printf "day %d: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0) seq=%d\n", d, $1}' \
    | in_root systemd-cat -t dpsr-day
  in_root journalctl --sync
  mark "day$d:journal"
  # apt's daily list refresh (apt-daily.service, PackageKit): the security and updates lists fetched anew.
  rm -f "$R"/var/lib/apt/lists/*security* "$R"/var/lib/apt/lists/*updates*
  in_root apt-get update -q >>"$OUT/apt-daily.log" 2>&1
  mark "day$d:apt-lists"
  # The daily timers of a Debian 12 system: logrotate, man-db, dpkg-db-backup.
  in_root logrotate /etc/logrotate.conf >>"$OUT/timers.log" 2>&1
  in_root mandb --quiet >>"$OUT/timers.log" 2>&1
  in_root /usr/libexec/dpkg/dpkg-db-backup >>"$OUT/timers.log" 2>&1
  mark "day$d:timers"
  if [ "$PROFILE" = desktop ]; then
    P=$R/home/user/.mozilla/firefox/p.default
    node "$IO" browser "$P" --day "$d" --session-writes "$SESSION_WRITES" --cache-mib "$CACHE_MIB" >>"$OUT/browser.log"
    # SQLite with a WAL (places, cookies, favicons): 4 KiB pages, a commit (fsync) every 8 pages.
    fio --name=places --directory="$P" --filename=places.sqlite-wal --size=32m --rw=randwrite --bs=4k --fsync=8 \
      --number_ios=20000 --randseed="$d" --output="$OUT/fio-day$d.txt" >/dev/null 2>&1
    mark "day$d:browser"
  fi
  if [ "$d" = 7 ]; then
    # fstrim.timer, weekly: data-less discards of the free space.
    fstrim -v "$R" >>"$OUT/timers.log" 2>&1
    mark "day$d:fstrim"
  fi
  stop_watch
done
sync_json week

# ---- summary ----
node - "$OUT" "$REGION" "$IO" "$DAYS" <<'EOF'
const fs = require('fs');
const { execFileSync } = require('child_process');
const [out, region, io, days] = process.argv.slice(2);
const M = (b) => (b / 1048576).toFixed(1);
const steps = fs.readFileSync(`${out}/steps.tsv`, 'utf8').trim().split('\n').slice(1).map((l) => l.split('\t'));
const sync = (n) => JSON.parse(fs.readFileSync(`${out}/sync-${n}.json`, 'utf8')).syncs[0];
const w = (logs) => JSON.parse(execFileSync('node', [io, 'distinct', ...logs, '--region', region], { encoding: 'utf8' }));
const lines = [];
lines.push(fs.readFileSync(`${out}/setup.txt`, 'utf8').trim());
lines.push('', 'step\tdirty MiB (since the sync)\tkernel MiB written\ts');
for (const [s, d, k, t] of steps) lines.push(`${s}\t${M(+d)}\t${M(+k)}\t${t}`);
for (const n of ['upgrade', 'week']) {
  const r = sync(n);
  lines.push(`sync after ${n}: copiedBytes ${r.copiedBytes} (${M(r.copiedBytes)} MiB), journaled ${r.journaled}, ${r.durationMs} ms`);
}
const logs = ['upgrade', ...Array.from({ length: +days }, (_, i) => `day${i + 1}`)];
lines.push('', 'dpsr watch: MiB written / distinct (all), of which ext4 journal written / distinct');
for (const set of [...logs.map((l) => [l]), ...(+days > 1 ? [logs.slice(1)] : [])]) {
  const r = w(set.map((l) => `${out}/watch-${l}.jsonl`));
  const x = r.write ?? { writtenBytes: 0, distinctBytes: 0, regionWrittenBytes: 0, regionDistinctBytes: 0 };
  const dis = r.discard ? `; discards ${M(r.discard.distinctBytes)} MiB` : '';
  lines.push(`${set.length > 1 ? `days 1-${days}` : set[0]}\t${M(x.writtenBytes)} / ${M(x.distinctBytes)}\tjournal ${M(x.regionWrittenBytes)} / ${M(x.regionDistinctBytes)}${dis}\tdrops ${r.drops}`);
}
fs.writeFileSync(`${out}/summary.txt`, lines.join('\n') + '\n');
console.log(lines.join('\n'));
EOF
