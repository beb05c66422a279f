#!/usr/bin/env bash
# Installs what dpsr needs on Debian/Ubuntu (as root), the npm dependencies,
# and builds everything. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "setup: run as root (apt-get and BPF need it)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
packages=(
	clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev   # BPF object, skeleton, addon
	liburing-dev                                           # the addon's batched I/O (io_uring)
	libnbd-dev                                             # the addon's NBD client: a DPSR drive on an NBD export
	make g++ python3                                       # node-gyp
	util-linux fdisk e2fsprogs xfsprogs kmod fio strace    # devices, file systems; tests and benchmarks (strace: exact kill points)
	lvm2 cryptsetup-bin btrfs-progs dosfstools             # signatures the pair checks warn about; vfat tools
	rsync attr acl                                        # restore keeps xattrs and ACLs; tests check them
	nbdkit nbdkit-plugin-python libnbd-bin fuse3           # fault tests: a disk that fails chosen reads (nbdkit, nbdfuse, loop)
	systemd udev initramfs-tools-core python3-prometheus-client   # unit, rule, initramfs hook and metrics checks
	groff-base man-db                                      # the manual page: rendered and checked by the tests, read with man
	qemu-system-x86 busybox-static extlinux syslinux-common cpio   # boot tests: a real system disk booted under qemu
	mmdebstrap qemu-utils                                  # the guest test: a Debian 12 guest with systemd and udevd (tools/guest.sh)
	git pkg-config libgcrypt20-dev libxxhash-dev           # tools/bench/peer.ts builds its peer, blocksync-fast, from source
	cockpit-ws cockpit-bridge chromium fonts-dejavu-core   # the Cockpit page (packaging/cockpit) and its browser test (headless chromium)
)
echo "setup: apt-get install ${packages[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "setup: npm ci"
npm ci --no-audit --no-fund
bash tools/build.sh
