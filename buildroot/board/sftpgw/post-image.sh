#!/usr/bin/env bash
# Buildroot post-image script of the sftpgw appliance: assembles sftpgw.img (layout in
# genimage.cfg) in the images directory.
#   $1  the images directory (also in BINARIES_DIR)
#   $2  "qemu": also put start-qemu.sh there (BR2_ROOTFS_POST_SCRIPT_ARGS of the QEMU defconfig)
# Runs from the top of the Buildroot tree, with HOST_DIR, BUILD_DIR and BINARIES_DIR set.
set -euo pipefail

# Size of the data file system in the image; on first boot systemd-repart grows its partition
# to the end of the disk and systemd-growfs the file system with it.
DATA_FS_SIZE=256M

board_dir=$(cd "$(dirname "$0")" && pwd)
images_dir=${1:?usage: post-image.sh IMAGES_DIR [qemu]}
flavour=${2:-}
esp_boot="$images_dir/efi-part/EFI/BOOT"

# GRUB (built by Buildroot as EFI/BOOT/bootx64.efi) reads its configuration next to itself.
install -D -m 0644 "$board_dir/grub.cfg" "$esp_boot/grub.cfg"
# The environment block in which an updater records the slot to boot (grub-editenv).
if [ -x "$HOST_DIR/bin/grub-editenv" ]; then
	rm -f "$esp_boot/grubenv"
	"$HOST_DIR/bin/grub-editenv" "$esp_boot/grubenv" set sftpgw_slot=a
fi

# An empty data file system; the label is how /etc/fstab finds it. Its root belongs to root:
# sftpgw-setup.service creates the directories of the daemon's user on first boot. No blocks
# reserved for root (-m 0): only the spool writes here, and its own watermarks keep it from
# filling the disk; 5 % of a large drive would be lost otherwise.
rm -f "$images_dir/data.ext4"
"$HOST_DIR/sbin/mkfs.ext4" -q -L sftpgw-data -m 0 -E root_owner=0:0 \
	"$images_dir/data.ext4" "$DATA_FS_SIZE"

support/scripts/genimage.sh -c "$board_dir/genimage.cfg"

if [ "$flavour" = qemu ]; then
	install -m 0755 "$board_dir/qemu/start-qemu.sh" "$images_dir/start-qemu.sh"
fi
