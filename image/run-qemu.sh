#!/usr/bin/env bash
# Boots the QEMU test image (image/build.sh) like a box: the spool on an emulated NVMe drive
# backed by a raw file (cache=none: writes reach the file when the guest flushes, as on a
# drive with a volatile cache), a virtio LAN card on QEMU user networking with the SFTP port
# forwarded to 127.0.0.1, an i6300esb hardware watchdog that resets the machine, and the
# serial console (ttyS0) on this terminal. The guest reaches the host's loopback as 10.0.2.2.
#
# Usage: image/run-qemu.sh [extra qemu arguments...]
# Environment:
#   SFTPGW_IMAGE_DIR   where vmlinuz and initramfs.cpio.gz are (default image/out)
#   SFTPGW_DISK        the spool drive, a raw file (default image/out/spool.img, created with
#                      SFTPGW_DISK_SIZE, default 1G, if missing; formatted on the first boot)
#   SFTPGW_SFTP_PORT   host port forwarded to the box's SFTP port 22 (default 2222)
#   SFTPGW_CONFIG      a sftpgw.toml handed to the box through fw_cfg (opt/sftpgw/config); on
#                      boot it replaces /data/sftpgw/sftpgw.toml (default: none, the box keeps
#                      what it has, or the Buildroot overlay's default on first boot)
#   SFTPGW_SERIAL      QEMU -serial argument (default mon:stdio; Ctrl-a x quits). For a
#                      socket: unix:/tmp/sftpgw-serial,server=on,wait=off
#   SFTPGW_APPEND      extra kernel command line (e.g. sftpgw.watchdog_sec=10)
#   SFTPGW_KVM=1       use KVM instead of TCG (KVM hangs on some of the project's machines)
#   SFTPGW_BZIMAGE=1   boot vmlinuz (the bzImage as Debian ships it) even where build.sh made
#                      vmlinux-pvh (the same kernel, decompressed: boots faster under TCG)
#   SFTPGW_PRINT=1     print the command instead of running it
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image_dir=${SFTPGW_IMAGE_DIR:-$here/out}
disk=${SFTPGW_DISK:-$image_dir/spool.img}
sftp_port=${SFTPGW_SFTP_PORT:-2222}
serial=${SFTPGW_SERIAL:-mon:stdio}

for f in vmlinuz initramfs.cpio.gz; do
	[ -r "$image_dir/$f" ] || {
		echo "run-qemu.sh: $image_dir/$f missing: run image/build.sh first" >&2
		exit 1
	}
done
kernel=$image_dir/vmlinux-pvh
if [ "${SFTPGW_BZIMAGE:-0}" = 1 ] || [ ! -r "$kernel" ]; then
	kernel=$image_dir/vmlinuz
fi
if [ ! -e "$disk" ]; then
	truncate -s "${SFTPGW_DISK_SIZE:-1G}" "$disk"
fi

if [ "${SFTPGW_KVM:-0}" = 1 ]; then
	accel=(-accel kvm -cpu host)
else
	accel=(-accel tcg -cpu max)
fi

provision=()
if [ -n "${SFTPGW_CONFIG:-}" ]; then
	provision=(-fw_cfg "name=opt/sftpgw/config,file=$SFTPGW_CONFIG")
fi

# Kernel messages go to the serial console until rcS quietens them; `quiet` keeps the boot
# short (every byte on an emulated UART costs time under TCG). panic=5: a dead PID 1 reboots.
append="console=ttyS0,115200 quiet panic=5 ${SFTPGW_APPEND:-}"

# shellcheck disable=SC2054 # commas inside QEMU option values, not array separators
cmd=(
	qemu-system-x86_64
	-machine q35 -m 1024 -smp 2 "${accel[@]}"
	# q35's own ICH9 TCO watchdog would reboot on its own; the i6300esb is the box's watchdog.
	-global ICH9-LPC.noreboot=true
	-kernel "$kernel" -initrd "$image_dir/initramfs.cpio.gz" -append "$append"
	-drive "file=$disk,if=none,id=spool,format=raw,cache=none"
	-device nvme,drive=spool,serial=sftpgw-spool
	# romfile=: no iPXE option ROM (the kernel is loaded directly; it only costs boot time).
	-netdev "user,id=lan,hostfwd=tcp:127.0.0.1:$sftp_port-:22"
	-device virtio-net-pci,netdev=lan,romfile=
	-device i6300esb -action watchdog=reset
	"${provision[@]}"
	-nographic -serial "$serial"
	"$@"
)
if [ "${SFTPGW_PRINT:-0}" = 1 ]; then
	printf '%q ' "${cmd[@]}"
	echo
	exit 0
fi
exec "${cmd[@]}"
