#!/usr/bin/env bash
# guest.sh: a real Debian 12 (bookworm) guest under qemu (TCG) that a test
# drives with scripts, boot after boot, through a 9p share (no console parser).
#
#   guest.sh build DIR
#       Build the guest once into DIR (skipped when DIR/root.img exists):
#       DIR/root.img (raw ext4, no partition table, 3 GiB sparse),
#       DIR/vmlinuz, DIR/initrd.img (the guest's own, extracted from its /boot),
#       DIR/build.log, DIR/info (kernel version, node version, build time).
#       The root has systemd, udev, kmod, linux-image-amd64, initramfs-tools,
#       e2fsprogs, xfsprogs, util-linux, fdisk, libbpf1, libelf1, zlib1g,
#       liburing2, libnbd0, rsync, bpftool, and the host's /usr/bin/node as
#       /usr/local/bin/node (Debian 12's nodejs is 18; dpsr's addon is built for
#       the host's node). Root has no password; ttyS0 logs root in. No network.
#       initramfs-tools in the guest: MODULES=dep, COMPRESSLEVEL=1 (Debian's
#       MODULES=most + zstd -9 took over 6 min per update-initramfs under TCG
#       once a hook adds node). The initrd in DIR was made at build time (most).
#       Rebuild: rm DIR/root.img.
#
#   guest.sh run DIR HOSTDIR [extra qemu args...]
#       Boot the guest once and return when it powers off (or at the timeout).
#       - The root disk is HOSTDIR/overlay.qcow2, a copy-on-write overlay over
#         DIR/root.img made on the first run for this HOSTDIR and kept, so the
#         guest's changes survive from one boot to the next while the cached
#         image stays clean. A fresh HOSTDIR is a fresh guest. It is /dev/vda.
#       - Extra args go to qemu as they are, e.g. more disks (vdb, vdc, ... in
#         order): -drive file=src.img,if=virtio,format=raw
#         or NVMe: -drive file=x.img,if=none,id=n0,format=raw -device nvme,serial=dpsr0,drive=n0
#       - HOSTDIR is shared with the guest as 9p tag host0, mounted at
#         /mnt/host by guest-hostshare.service (after multi-user.target) at each
#         boot, which then runs /mnt/host/boot.sh if present (bash, cwd
#         /mnt/host, env GUEST_BOOT=N, stdout+stderr to HOSTDIR/out/boot-N.log,
#         exit status to HOSTDIR/out/boot-N.rc) and, if /mnt/host/poweroff
#         exists, `systemctl poweroff` (a clean shutdown). boot.sh may power
#         off or reboot itself (-no-reboot: a reboot ends qemu too).
#       - N counts this HOSTDIR's boots (1, 2, ...); the serial console goes to
#         HOSTDIR/out/console-N.log, qemu's stderr to HOSTDIR/out/qemu-N.err.
#       - qemu: -accel tcg -cpu max -m 2048 -smp 2 -nographic -no-reboot -nic none,
#         -kernel DIR/vmlinuz -initrd INITRD -append 'root=/dev/vda rw console=ttyS0 panic=-1 ...'.
#       Environment:
#         GUEST_TIMEOUT  seconds before qemu is killed (default 300): exit 124
#         GUEST_INITRD   initrd to boot (default: HOSTDIR/initrd.img when it
#                        exists, so a guest can export its own rebuilt initrd,
#                        e.g. after update-initramfs; else DIR/initrd.img)
#         GUEST_APPEND   more kernel command line
#         GUEST_MEM, GUEST_SMP  (default 2048, 2)
#         GUEST_FATAL    console regex that ends the boot at once, exit 3
#                        (default: emergency mode, kernel panic; '' = off)
#       Exit: 0 the guest powered off (or rebooted) by itself; 124 timeout;
#       3 a GUEST_FATAL line on the console (stderr: it and the FAILED lines);
#       else qemu's status. stderr: one line with the boot's wall time.
#
#   guest.sh shell DIR HOSTDIR [extra qemu args...]
#       The same boot with the serial console on this terminal (debugging).
#
# Host needs: mmdebstrap, qemu-system-x86, qemu-utils (tools/setup.sh installs them).
# Measured on the 2-core host, TCG (qemu 7.2, guest kernel 6.1.0-57):
#   build 3 min (mmdebstrap ~2.5 min, mkfs.ext4 -d); a boot reaches boot.sh
#   ~20-24 s after qemu starts, an empty boot.sh + poweroff is ~30 s wall;
#   node starts in ~1.5 s in the guest, a dpsr command takes 2-5 s;
#   update-initramfs with dpsr's hook (node inside) ~105 s.
# In the guest: hostname "guest" (images cached by older versions of this file:
#   "dpsrguest"), no D-Bus: systemctl works (private socket), systemd-run
#   and hostnamectl do not; run a test command in a sandbox by writing
#   /run/systemd/system/X.service and `systemctl start X`. An NVMe disk shows
#   as /dev/nvme0n1 with /dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_SERIAL.
set -uo pipefail

say() { echo "guest.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 2; }

need_tools() {
  local pk=()
  command -v mmdebstrap >/dev/null || pk+=(mmdebstrap)
  command -v qemu-img >/dev/null || pk+=(qemu-utils)
  command -v qemu-system-x86_64 >/dev/null || pk+=(qemu-system-x86)
  [ ${#pk[@]} = 0 ] || die "missing ${pk[*]}: run tools/setup.sh (or apt-get install ${pk[*]})"
}

# The service that runs a test's boot.sh from the 9p share, at every boot.
hostshare_script() {
  cat <<'EOF'
#!/bin/bash
# guest-hostshare: mount the host's 9p share (tag host0) at /mnt/host, run
# /mnt/host/boot.sh (output to /mnt/host/out/boot-N.log), power off if
# /mnt/host/poweroff exists. Installed by guest.sh.
M=/mnt/host
mkdir -p $M
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
if ! mountpoint -q $M; then
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host0 $M || { echo "guest-hostshare: no 9p share host0"; exit 0; }
fi
mkdir -p $M/out
n=$(cat $M/bootnum 2>/dev/null || echo 0)
echo "guest-hostshare: boot $n, $(cut -d' ' -f1 /proc/uptime)s since the kernel started" >$M/out/hostshare-$n.log
if [ -f $M/boot.sh ]; then
  ( cd $M && GUEST_BOOT=$n bash $M/boot.sh ) >$M/out/boot-$n.log 2>&1
  echo $? >$M/out/boot-$n.rc
fi
sync
if [ -e $M/poweroff ]; then
  echo "guest-hostshare: poweroff at $(cut -d' ' -f1 /proc/uptime)s" >>$M/out/hostshare-$n.log
  systemctl --no-block poweroff
fi
exit 0
EOF
}

hostshare_unit() {
  cat <<'EOF'
[Unit]
Description=guest.sh: run the host's boot.sh from the 9p share host0
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/guest-hostshare
StandardOutput=journal+console
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
}

cmd_build() {
  local dir=$1
  [ -n "$dir" ] || die "usage: guest.sh build DIR"
  mkdir -p "$dir" || die "cannot make $dir"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/root.img" ] && [ -f "$dir/vmlinuz" ] && [ -f "$dir/initrd.img" ]; then
    say "build: $dir/root.img exists (cached; rm it to rebuild)"; return 0
  fi
  need_tools
  local t0=$SECONDS rootfs=$dir/rootfs log=$dir/build.log
  rm -rf "$rootfs" "$dir/root.img.tmp"
  [ -x /usr/bin/node ] || die "no /usr/bin/node on the host"
  local tmp; tmp=$(mktemp -d /var/tmp/guestsh.XXXXXX)
  hostshare_script >"$tmp/guest-hostshare"
  hostshare_unit >"$tmp/guest-hostshare.service"
  say "build: mmdebstrap bookworm into $rootfs (log $log)"
  # shellcheck disable=SC2016
  mmdebstrap --variant=minbase --mode=root \
    --include=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,e2fsprogs,xfsprogs,util-linux,fdisk,mount,libbpf1,libelf1,zlib1g,liburing2,libnbd0,libstdc++6,rsync,bpftool,procps,less,zstd \
    --customize-hook='chroot "$1" passwd -d root' \
    --customize-hook='echo guest >"$1/etc/hostname"; printf "127.0.0.1 localhost\n127.0.1.1 guest\n" >"$1/etc/hosts"' \
    --customize-hook='printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" >"$1/etc/fstab"' \
    --customize-hook='mkdir -p "$1/etc/systemd/system/serial-getty@ttyS0.service.d"; printf "[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200,57600,38400,9600 %%I \$TERM\n" >"$1/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"' \
    --customize-hook="install -m 0755 $tmp/guest-hostshare \"\$1/usr/local/sbin/guest-hostshare\"; install -m 0644 $tmp/guest-hostshare.service \"\$1/etc/systemd/system/guest-hostshare.service\"" \
    --customize-hook='mkdir -p "$1/etc/systemd/system/multi-user.target.wants"; ln -sf /etc/systemd/system/guest-hostshare.service "$1/etc/systemd/system/multi-user.target.wants/guest-hostshare.service"' \
    --customize-hook='for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer dpkg-db-backup.timer; do ln -sf /dev/null "$1/etc/systemd/system/$t"; done' \
    --customize-hook='install -m 0755 /usr/bin/node "$1/usr/local/bin/node"' \
    --customize-hook='sed -i "s/^MODULES=.*/MODULES=dep/; s/^#* *COMPRESSLEVEL=.*//" "$1/etc/initramfs-tools/initramfs.conf"; echo COMPRESSLEVEL=1 >>"$1/etc/initramfs-tools/initramfs.conf"' \
    --customize-hook='mkdir -p "$1/mnt/host"' \
    bookworm "$rootfs" >"$log" 2>&1 || { rm -rf "$tmp"; die "mmdebstrap failed: $(tail -n 5 "$log")"; }
  rm -rf "$tmp"
  local kver; kver=$(ls "$rootfs/lib/modules" | sort -V | tail -n 1)
  [ -n "$kver" ] && [ -f "$rootfs/boot/vmlinuz-$kver" ] && [ -f "$rootfs/boot/initrd.img-$kver" ] \
    || die "no kernel/initrd in $rootfs/boot"
  for m in 9p 9pnet_virtio virtio_blk nvme ext4; do
    find "$rootfs/lib/modules/$kver" -name "$m.ko*" | grep -q . || grep -qw "$m" "$rootfs/lib/modules/$kver/modules.builtin" \
      || die "guest kernel $kver has no $m module"
  done
  cp "$rootfs/boot/vmlinuz-$kver" "$dir/vmlinuz" && cp "$rootfs/boot/initrd.img-$kver" "$dir/initrd.img" || die "copy kernel"
  local nodev; nodev=$(chroot "$rootfs" /usr/local/bin/node --version 2>&1) || die "node does not run in the guest root: $nodev"
  say "build: mkfs.ext4 -d (3 GiB sparse)"
  truncate -s 3G "$dir/root.img.tmp"
  mkfs.ext4 -q -F -L guestroot -E lazy_itable_init=0,lazy_journal_init=0 -d "$rootfs" "$dir/root.img.tmp" >>"$log" 2>&1 \
    || die "mkfs.ext4 -d failed: $(tail -n 3 "$log")"
  rm -rf "$rootfs"
  mv "$dir/root.img.tmp" "$dir/root.img"
  printf 'kernel=%s\nnode=%s\nbuilt=%s\nbuild_seconds=%s\n' "$kver" "$nodev" "$(date -Is)" $((SECONDS - t0)) >"$dir/info"
  say "build: done in $((SECONDS - t0)) s (kernel $kver, node $nodev)"
}

QPID=
kill_qemu() { [ -n "$QPID" ] && kill -9 "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null; QPID=; }

cmd_run() {
  local mode=$1 dir=${2:-} host=${3:-}
  [ -n "$dir" ] && [ -n "$host" ] || die "usage: guest.sh run DIR HOSTDIR [qemu args...]"
  shift 3
  [ -f "$dir/root.img" ] || die "no $dir/root.img: run guest.sh build $dir first"
  need_tools
  dir=$(cd "$dir" && pwd)
  mkdir -p "$host/out" || die "cannot make $host/out"
  host=$(cd "$host" && pwd)
  local ov=$host/overlay.qcow2
  if [ ! -f "$ov" ]; then
    qemu-img create -q -f qcow2 -F raw -b "$dir/root.img" "$ov" || die "qemu-img create overlay"
  fi
  local n; n=$(( $(cat "$host/bootnum" 2>/dev/null || echo 0) + 1 ))
  echo "$n" >"$host/bootnum"
  local initrd=${GUEST_INITRD:-}
  if [ -z "$initrd" ]; then
    if [ -f "$host/initrd.img" ]; then initrd=$host/initrd.img; else initrd=$dir/initrd.img; fi
  fi
  local log=$host/out/console-$n.log err=$host/out/qemu-$n.err
  # no_timer_check: TCG on a loaded host can miss the IO-APIC timer check's ticks (a panic).
  local append="root=/dev/vda rw console=ttyS0 panic=-1 no_timer_check ${GUEST_APPEND:-}"
  local q=(qemu-system-x86_64 -accel tcg -cpu max -machine pc -m "${GUEST_MEM:-2048}" -smp "${GUEST_SMP:-2}"
    -nographic -no-reboot -nic none
    -kernel "$dir/vmlinuz" -initrd "$initrd" -append "$append"
    -drive "file=${ov//,/,,},if=virtio,format=qcow2"
    -virtfs "local,path=${host//,/,,},mount_tag=host0,security_model=none"
    "$@")
  local t0; t0=$(date +%s%N)
  if [ "$mode" = shell ]; then
    "${q[@]}"; return $?
  fi
  trap 'kill_qemu' EXIT
  trap 'kill_qemu; exit 130' INT TERM
  "${q[@]}" -serial "file:$log" -monitor none </dev/null >/dev/null 2>"$err" &
  QPID=$!
  local limit=${GUEST_TIMEOUT:-300} rc=0 fatal=${GUEST_FATAL-'You are in emergency mode|Give root password for maintenance|Kernel panic - not syncing'} hit=
  while kill -0 "$QPID" 2>/dev/null; do
    if [ $(( ($(date +%s%N) - t0) / 1000000000 )) -ge "$limit" ]; then
      kill_qemu; rc=124; break
    fi
    if [ -n "$fatal" ] && hit=$(tr -d '\r' <"$log" | grep -m1 -aE "$fatal"); then
      sleep 3; kill_qemu; rc=3; break
    fi
    sleep 0.5
  done
  if [ -n "$QPID" ]; then wait "$QPID"; rc=$?; QPID=; fi
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ $rc = 124 ]; then
    say "boot $n: TIMEOUT after ${limit}s (console $log); tail:"
    tr -d '\r' <"$log" | tail -n 8 | sed 's/^/  /' >&2
  elif [ $rc = 3 ]; then
    say "boot $n: stopped after $((ms / 1000))s: console says '$hit'; what failed:"
    tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;]*m//g' | grep -aE 'FAILED|Dependency failed|EXT4-fs \(|error' | head -n 8 | sed 's/^/  /' >&2
  else
    say "boot $n: qemu exited rc=$rc after $((ms / 1000)).$(printf %03d $((ms % 1000)))s (console $log)"
    [ $rc = 0 ] || sed 's/^/  qemu: /' "$err" | head -n 5 >&2
  fi
  echo "$ms" >"$host/out/wall-$n.ms"
  return $rc
}

case ${1:-} in
  build) cmd_build "${2:-}" ;;
  run) shift; cmd_run run "$@" ;;
  shell) shift; cmd_run shell "$@" ;;
  *) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
