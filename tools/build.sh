#!/usr/bin/env bash
# Builds everything: the BPF object and its skeleton, the addon, the udev probe, the TypeScript.
# Usage: tools/build.sh [bpf|addon|probe|ts]...   (default: all, in that order)
set -euo pipefail
cd "$(dirname "$0")/.."
out=build/bpf

need() { # command, Debian package
	command -v "$1" >/dev/null 2>&1 && return 0
	echo "build: $1 not found: install the Debian package $2 (apt-get install $2)" >&2
	exit 1
}

build_bpf() {
	need clang clang
	need bpftool bpftool
	[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "build: libbpf headers not found: install libbpf-dev" >&2; exit 1; }
	[ -r /sys/kernel/btf/vmlinux ] || { echo "build: /sys/kernel/btf/vmlinux missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y" >&2; exit 1; }
	mkdir -p "$out"
	echo "  BTF      $out/vmlinux.h"
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h.tmp"
	mv "$out/vmlinux.h.tmp" "$out/vmlinux.h"
	echo "  BPF      $out/dpsr.bpf.o"
	local arch
	arch=$(uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
	clang -target bpf -O2 -g -Wall -Werror -D__TARGET_ARCH_"$arch" \
		-I"$out" -Ibpf -c bpf/dpsr.bpf.c -o "$out/dpsr.bpf.o"
	echo "  LINK     $out/dpsr.o"
	bpftool gen object "$out/dpsr.o" "$out/dpsr.bpf.o"
	echo "  SKEL     $out/dpsr.skel.h"
	bpftool gen skeleton "$out/dpsr.o" name dpsr > "$out/dpsr.skel.h.tmp"
	mv "$out/dpsr.skel.h.tmp" "$out/dpsr.skel.h"
}

build_addon() {
	[ -f /usr/include/bpf/libbpf.h ] || { echo "build: libbpf.h not found: install libbpf-dev" >&2; exit 1; }
	[ -f /usr/include/gelf.h ] || { echo "build: gelf.h not found: install libelf-dev" >&2; exit 1; }
	[ -f "$out/dpsr.skel.h" ] || build_bpf
	local nodedir=()
	[ -f /usr/include/node/node_api.h ] && nodedir=(--nodedir=/usr)
	echo "  ADDON    addon/build/Release/dpsr.node"
	(cd addon && ../node_modules/.bin/node-gyp rebuild "${nodedir[@]}" --loglevel=warn >/dev/null)
}

build_probe() {
	need cc gcc
	mkdir -p build/probe
	echo "  CC       build/probe/dpsr-udev-probe"
	cc -O2 -Wall -Wextra -Werror -o build/probe/dpsr-udev-probe probe/udev-probe.c probe/label.c probe/json.c probe/sha256.c -lm
}

build_ts() {
	echo "  TSC      dist/"
	node_modules/.bin/tsc -p .
}

[ -d node_modules ] || { echo "build: run npm ci first" >&2; exit 1; }
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(bpf addon probe ts)
for step in "${steps[@]}"; do "build_$step"; done
