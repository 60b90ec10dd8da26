#!/bin/sh
# Boots the sftpgw image built by sftpgw_qemu_x86_64_defconfig the way a box boots: UEFI
# (OVMF, built alongside), GRUB, the image as an NVMe drive, a virtio network card, an
# i6300esb hardware watchdog that resets the machine, the serial console on this terminal.
# The image is used in place: what the box writes to /data stays in sftpgw.img.
#
# Usage: start-qemu.sh            (next to sftpgw.img and OVMF.fd)
# Environment:
#   SFTPGW_SFTP_PORT  host port forwarded to the box's SFTP port 22 (default 2222)
#   SFTPGW_KVM=1      use KVM instead of TCG (KVM hangs on some of the project's machines)
# The box reaches the host as 10.0.2.2, the placeholder S3 endpoint of the default
# configuration. Quit with Ctrl-a x.
set -eu

images_dir=$(cd "$(dirname "$0")" && pwd)
sftp_port=${SFTPGW_SFTP_PORT:-2222}

if [ "${SFTPGW_KVM:-0}" = 1 ]; then
	accel="-accel kvm -cpu host"
else
	accel="-accel tcg"
fi

# q35's own ICH9 TCO watchdog keeps its "no reboot" strap set, so iTCO_wdt does not take it
# and the i6300esb is /dev/watchdog0, the one systemd pets.
# shellcheck disable=SC2086 # $accel is several words on purpose
exec qemu-system-x86_64 \
	-M q35 -m 1024 -smp 2 $accel \
	-global ICH9-LPC.noreboot=true \
	-bios "$images_dir/OVMF.fd" \
	-drive file="$images_dir/sftpgw.img",if=none,id=nvme0,format=raw,cache=none \
	-device nvme,drive=nvme0,serial=sftpgw0 \
	-netdev user,id=lan,hostfwd=tcp::"$sftp_port"-:22 \
	-device virtio-net-pci,netdev=lan \
	-device i6300esb -action watchdog=reset \
	-nographic -serial mon:stdio
