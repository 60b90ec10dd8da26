#!/usr/bin/env bash
# Buildroot post-build script of the sftpgw appliance: finishes the root file system before it
# is packed. Buildroot runs it on every `make`, so each step is idempotent.
#   $1  the target directory (also in TARGET_DIR)
set -euo pipefail

die() {
	printf 'post-build: %s\n' "$*" >&2
	exit 1
}

target_dir=${1:?usage: post-build.sh TARGET_DIR}
fstab="$target_dir/etc/fstab"

# The data partition, found by its file system label, at /data (an empty mount point on the
# read-only root). nofail: a missing or broken data partition must not stop the boot, so the
# console can still show why; sftpgw.service requires /data and stays down. errors=remount-ro:
# on a file system error stop writing instead of spooling onto a damaged file system.
# x-systemd.growfs: grow the file system once systemd-repart has grown the partition.
data_line="LABEL=sftpgw-data /data ext4 defaults,noatime,nofail,errors=remount-ro,x-systemd.growfs,x-systemd.device-timeout=30s 0 2"
mkdir -p "$target_dir/data"
if ! grep -q '^LABEL=sftpgw-data[[:space:]]' "$fstab"; then
	printf '%s\n' "$data_line" >>"$fstab"
fi

# The root file system must stay read-only (BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW unset):
# everything that changes lives on /data, or in RAM.
grep -Eq '^/dev/root[[:space:]]+/[[:space:]]+[^[:space:]]+[[:space:]]+ro[[:space:],]' "$fstab" ||
	die "/ is not mounted read-only in $fstab: unset BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW"

# agetty prints /etc/issue, then /etc/issue.d/*.issue: this link brings in the status banner
# that /usr/libexec/sftpgw/status-banner writes to RAM.
mkdir -p "$target_dir/etc/issue.d"
ln -sfn /run/sftpgw-banner/sftpgw.issue "$target_dir/etc/issue.d/50-sftpgw.issue"

# The ops user's login shell is the console menu (board/sftpgw/users.table); login programs
# and chsh accept only shells listed here.
console_shell=/usr/bin/sftpgw-console
grep -qxF "$console_shell" "$target_dir/etc/shells" 2>/dev/null ||
	printf '%s\n' "$console_shell" >>"$target_dir/etc/shells"

# The ops password: the documented default from users.table, unless this build is given a
# SHA-512 crypt hash (`mkpasswd -m sha512`) in SFTPGW_OPS_PASSWORD_HASH, as production
# firmware must be: the root file system is read-only, so the firmware fixes the password.
if [ -n "${SFTPGW_OPS_PASSWORD_HASH:-}" ]; then
	case $SFTPGW_OPS_PASSWORD_HASH in
	'$6$'*) ;;
	*) die "SFTPGW_OPS_PASSWORD_HASH is not a SHA-512 crypt hash (\$6\$...): use mkpasswd -m sha512" ;;
	esac
	grep -q '^ops:' "$target_dir/etc/shadow" || die "no ops user in /etc/shadow (users.table)"
	hash_sed=$(printf '%s' "$SFTPGW_OPS_PASSWORD_HASH" | sed 's/[\/&]/\\&/g')
	sed -i "s/^ops:[^:]*:/ops:$hash_sed:/" "$target_dir/etc/shadow"
fi

# Where sftpgw-usb@.service mounts a USB stick for the console's diagnostics bundle (the
# root file system is read-only at run time).
mkdir -p "$target_dir/media/usb"
