#!/usr/bin/env bash
# Builds the offline QEMU test image of the sftpgw appliance from Debian packages only:
#   image/out/vmlinuz            the Debian kernel (linux-image-amd64), as installed in /boot
#   image/out/vmlinux-pvh        the same kernel decompressed, booted through its PVH entry
#   image/out/initramfs.cpio.gz  busybox (busybox-static), the kernel modules the box needs and
#                                their dependencies, the release sftpgw binary and the shared
#                                libraries it needs, mke2fs/e2fsck, socat (the sd-notify
#                                listener), the Buildroot overlay's configuration and scripts,
#                                and this directory's rootfs/ (init scripts that stand in for
#                                systemd)
#   image/out/manifest.txt       what went in: kernel version, module load order, binary sizes
#
# The image boots with `-kernel vmlinuz -initrd initramfs.cpio.gz` (image/run-qemu.sh); the root
# file system stays in RAM, the spool lives on an emulated NVMe drive (formatted on first boot).
#
# Usage: image/build.sh
# Environment:
#   SFTPGW_BIN     the sftpgw binary (default: target/release/sftpgw of this repository, or
#                  $CARGO_TARGET_DIR/release/sftpgw); it is stripped into the image
#   KERNEL_VERSION a kernel installed under /lib/modules (default: the newest one with a
#                  /boot/vmlinuz-*)
#   OUT            output directory (default image/out)
#   INSTALL_DEPS=0 do not apt-get install missing packages (default: install them)
#   SFTPGW_OPS_PASSWORD_HASH  the ops user's password as a SHA-512 crypt hash (default: the
#                  hash of the documented default password, sftpgw-ops)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
overlay="$repo/buildroot/board/sftpgw/rootfs-overlay"
out=${OUT:-$here/out}

die() {
	printf 'image/build.sh: %s\n' "$*" >&2
	exit 1
}

# The kernel modules the box needs; everything they depend on (modules.dep, softdeps such as
# ext4's crc32c) is added by `modprobe --show-depends` of the same kernel.
#   virtio_pci, virtio_net  the LAN card (QEMU user-mode networking)
#   nvme                    the spool drive
#   ext4, crc32c            the spool's file system and its metadata checksums
#   i6300esb                the hardware watchdog QEMU emulates
#   qemu_fw_cfg             how the host provisions the configuration (opt/sftpgw/config)
# The ops user's documented default password (docs/OPERATIONS.md); a real box's firmware sets
# its own.
OPS_PASSWORD_DEFAULT=sftpgw-ops

MODULES="virtio_pci virtio_net nvme ext4 crc32c i6300esb qemu_fw_cfg"

# The CA certificates the S3 client trusts for HTTPS endpoints (rustls-native-certs reads this
# file; the Buildroot package selects BR2_PACKAGE_CA_CERTIFICATES for the same reason).
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# Debian packages the image is made of, and the command each one provides.
declare -A PACKAGE_OF=(
	[/bin/busybox]=busybox-static
	[/sbin/mke2fs]=e2fsprogs
	[/sbin/e2fsck]=e2fsprogs
	[/usr/bin/socat]=socat
	[/usr/bin/install]=coreutils
	[/usr/bin/cpio]=cpio
	[/usr/bin/strip]=binutils
	[/sbin/modprobe]=kmod
	[/usr/bin/xz]=xz-utils
)

install_missing() {
	local need=() path
	for path in "${!PACKAGE_OF[@]}"; do
		[ -x "$path" ] || need+=("${PACKAGE_OF[$path]}")
	done
	if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then
		need+=(linux-image-amd64)
	fi
	[ -r "$CA_BUNDLE" ] || need+=(ca-certificates)
	[ "${#need[@]}" -eq 0 ] && return 0
	[ "${INSTALL_DEPS:-1}" = 1 ] || die "missing packages: ${need[*]} (INSTALL_DEPS=0)"
	echo "installing: ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
}

find_kernel() {
	if [ -n "${KERNEL_VERSION:-}" ]; then
		echo "$KERNEL_VERSION"
		return
	fi
	local v best=""
	for v in /boot/vmlinuz-*; do
		v=${v#/boot/vmlinuz-}
		[ -d "/lib/modules/$v" ] || continue
		if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n1)" = "$v" ]; then
			best=$v
		fi
	done
	[ -n "$best" ] || die "no kernel with modules in /boot and /lib/modules"
	echo "$best"
}

find_binary() {
	if [ -n "${SFTPGW_BIN:-}" ]; then
		echo "$SFTPGW_BIN"
		return
	fi
	local c
	for c in "${CARGO_TARGET_DIR:-$repo/target}/release/sftpgw" "$repo/target/release/sftpgw"; do
		if [ -x "$c" ]; then
			echo "$c"
			return
		fi
	done
	die "no release binary: build it (cargo build --release) or set SFTPGW_BIN"
}

# Copies an ELF program to the same path in the image, with every shared library ldd lists
# (at the paths ldd resolves them to, the dynamic loader included).
add_program() {
	local src=$1 dst=${2:-$1} lib
	mkdir -p "$root/$(dirname "$dst")"
	# Never write through a link: the staging tree's links point at absolute paths, which on
	# the build machine are the host's own files.
	rm -f "$root/$dst"
	cp -L "$src" "$root/$dst"
	# ldd prints "name => /path (addr)" for libraries and "/path (addr)" for the loader.
	for lib in $(ldd "$src" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
		if [ ! -e "$root/$lib" ]; then
			mkdir -p "$root/$(dirname "$lib")"
			cp -L "$lib" "$root/$lib"
		fi
	done
}

install_missing
kver=$(find_kernel)
bin=$(find_binary)
[ -r "/boot/vmlinuz-$kver" ] || die "/boot/vmlinuz-$kver is missing"
echo "kernel $kver, sftpgw from $bin"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,var,data,root}
chmod 1777 "$root/tmp"
# The kernel opens /dev/console of the initramfs for PID 1 before anything mounts devtmpfs.
mknod -m 0600 "$root/dev/console" c 5 1 || die "mknod failed: build the image as root"
mknod -m 0666 "$root/dev/null" c 1 3
ln -s ../run "$root/var/run"
mkdir -p "$root/var/log"

# Programs busybox lacks: ext4 with the features of e2fsprogs' defaults (busybox mke2fs only
# makes ext2), the boot-time check, a receiver of sd-notify datagrams, and `install -o -g` for
# the Buildroot overlay's prepare-data.
add_program /sbin/mke2fs
ln -sf mke2fs "$root/sbin/mkfs.ext4"
add_program /sbin/e2fsck
ln -sf e2fsck "$root/sbin/fsck.ext4"
add_program /usr/bin/socat
add_program /usr/bin/install
cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"

# The gateway, stripped (the release profile keeps line tables for backtraces on the build
# machine; the box does not need them).
mkdir -p "$root/usr/bin"
strip -o "$work/sftpgw" "$bin"
add_program "$work/sftpgw" /usr/bin/sftpgw
chmod 0755 "$root/usr/bin/sftpgw"
install -D -m 0644 "$CA_BUNDLE" "$root$CA_BUNDLE"

# busybox and a link for each of its applets that no real program above already provides
# (where the applet list says it belongs). Made after the programs, so that nothing is ever
# copied onto one of these links: they point at /bin/busybox, on the build machine the host's.
add_program /bin/busybox # busybox-static: no libraries; a dynamic busybox brings its own
for applet in $(/bin/busybox --list-full); do
	[ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
# PID 1 is busybox init (it reads /etc/inittab): /init is what the kernel runs from an initramfs.
ln -s /bin/busybox "$root/init"

# Kernel modules, in load order, with their dependencies; the list drives rcS's insmod loop
# (busybox modprobe does not read softdeps).
modlist="$root/etc/sftpgw/modules"
mkdir -p "$root/etc/sftpgw"
: >"$modlist"
for m in $MODULES; do
	modprobe -S "$kver" --show-depends "$m" | while read -r kind path _; do
		[ "$kind" = insmod ] || continue
		grep -qxF "$path" "$modlist" && continue
		mkdir -p "$root/$(dirname "$path")"
		cp "$path" "$root/$path"
		printf '%s\n' "$path" >>"$modlist"
	done
done
# Compressed modules (newer Debian kernels) would need busybox's insmod to decompress them.
if grep -qv '\.ko$' "$modlist"; then
	die "compressed modules are not supported: $(grep -v '\.ko$' "$modlist" | head -n1)"
fi
# modules.dep for the subset, so busybox modprobe works on the console too.
cp "/lib/modules/$kver/modules.builtin" "/lib/modules/$kver/modules.builtin.modinfo" \
	"/lib/modules/$kver/modules.order" "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"

# The Buildroot overlay, where it makes sense without systemd: the default configuration, the
# first-boot preparation of /data, the ops user's login shell (the console menu), and the
# daemon's unit (the
# supervisor reads ExecStart=, WatchdogSec=, RestartSec= and RestartPreventExitStatus= from it,
# so the two cannot drift apart).
install -D -m 0644 "$overlay/etc/sftpgw/sftpgw.toml" "$root/etc/sftpgw/sftpgw.toml"
install -D -m 0755 "$overlay/usr/libexec/sftpgw/prepare-data" "$root/usr/libexec/sftpgw/prepare-data"
install -D -m 0755 "$overlay/usr/bin/sftpgw-console" "$root/usr/bin/sftpgw-console"
install -D -m 0644 "$overlay/usr/lib/systemd/system.conf.d/50-sftpgw-watchdog.conf" \
	"$root/usr/lib/systemd/system.conf.d/50-sftpgw-watchdog.conf"
install -D -m 0644 "$overlay/usr/lib/systemd/system/sftpgw.service" \
	"$root/usr/lib/systemd/system/sftpgw.service"

# This image's own files: inittab, rcS, the supervisor, the DHCP hook, users, profile.
cp -a "$here/rootfs/." "$root/"
# The ops user's password (the Buildroot image takes it from users.table or
# SFTPGW_OPS_PASSWORD_HASH the same way). busybox login checks SHA-512 crypt hashes.
ops_hash=${SFTPGW_OPS_PASSWORD_HASH:-$(/bin/busybox mkpasswd -m sha512 "$OPS_PASSWORD_DEFAULT")}
case $ops_hash in
'$6$'*) ;;
*) die "SFTPGW_OPS_PASSWORD_HASH is not a SHA-512 crypt hash (mkpasswd -m sha512)" ;;
esac
sed -i "s|@OPS_PASSWORD_HASH@|$ops_hash|" "$root/etc/shadow"
chmod 0600 "$root/etc/shadow"

# Sanity: every program runs with the libraries the image carries (the loader in the image,
# not the host's search path).
for p in /usr/bin/sftpgw /usr/bin/socat /sbin/mke2fs /usr/bin/install; do
	"$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/lib/x86_64-linux-gnu" \
		--list "$root$p" | grep -q 'not found' && die "$p: a library is missing"
done
"$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/lib/x86_64-linux-gnu" \
	"$root/usr/bin/sftpgw" --version >/dev/null || die "the sftpgw binary does not run"

mkdir -p "$out"
cp "/boot/vmlinuz-$kver" "$out/vmlinuz.new"
# The same kernel, decompressed here: QEMU boots an ELF vmlinux with a PVH entry note
# (CONFIG_PVH) directly, which saves the guest decompressing the bzImage's payload (xz: seconds
# under TCG). Made when the bzImage carries an xz payload and the result has the note.
rm -f "$out/vmlinux-pvh"
xz_offset=$(LC_ALL=C grep -m1 -obUa $'\xfd7zXZ' "/boot/vmlinuz-$kver" | cut -d: -f1 || true)
# (Files, not pipes: xz stops reading at the end of its stream, and pipefail would count
# the writer's SIGPIPE as a failure.)
if [ -n "$xz_offset" ] &&
	tail -c +"$((xz_offset + 1))" "/boot/vmlinuz-$kver" >"$work/payload.xz" &&
	xz -dc --single-stream "$work/payload.xz" >"$work/vmlinux" 2>/dev/null &&
	readelf -n "$work/vmlinux" 2>/dev/null >"$work/notes" &&
	grep -q 'Xen .*(0x00000012)' "$work/notes"; then
	mv "$work/vmlinux" "$out/vmlinux-pvh.new"
	mv -f "$out/vmlinux-pvh.new" "$out/vmlinux-pvh"
fi
# Owned by root in the archive whoever builds it; newc is the format the kernel unpacks.
(cd "$root" && find . -print0 | LC_ALL=C sort -z |
	cpio --null --create --format=newc --owner=0:0 --quiet) | gzip -6 -n >"$out/initramfs.cpio.gz.new"
mv -f "$out/vmlinuz.new" "$out/vmlinuz"
mv -f "$out/initramfs.cpio.gz.new" "$out/initramfs.cpio.gz"

{
	echo "kernel: $kver (/boot/vmlinuz-$kver)"
	if [ -e "$out/vmlinux-pvh" ]; then
		echo "kernel, decompressed for a PVH boot: vmlinux-pvh ($(stat -c %s "$out/vmlinux-pvh") bytes)"
	fi
	echo "busybox: $(/bin/busybox --help 2>&1 | head -n1)"
	echo "sftpgw: $bin ($(stat -c %s "$root/usr/bin/sftpgw") bytes stripped)"
	echo "initramfs: $(stat -c %s "$out/initramfs.cpio.gz") bytes gzip, $(du -sb "$root" | cut -f1) bytes unpacked"
	echo "modules (load order):"
	sed 's/^/  /' "$modlist"
} >"$out/manifest.txt"
cat "$out/manifest.txt"
