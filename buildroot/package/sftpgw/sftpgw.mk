################################################################################
#
# sftpgw
#
################################################################################

# Must equal the version in Cargo.toml: scripts/make-source-archive.sh
# refuses to pack otherwise.
SFTPGW_VERSION = 0.1.0
# The source is this repository. It is not fetched with the local site
# method, because Buildroot vendors the crates of a cargo package only
# in its download step, which local sources skip; the build then runs
# cargo --offline and fails. Instead scripts/make-source-archive.sh
# packs the repository with its crates vendored (VENDOR/, as Buildroot
# names it, so the cargo download step leaves the archive alone) into
# dl/, and writes its hash into sftpgw.hash. See docs/FIRMWARE.md.
SFTPGW_SITE = $(BR2_EXTERNAL_SFTPGW_PATH)/dl
SFTPGW_SITE_METHOD = file
# Named by us, not by Buildroot's default for cargo packages (which
# carries the version of Buildroot's own vendoring format).
SFTPGW_SOURCE = sftpgw-$(SFTPGW_VERSION)-vendored.tar.gz
SFTPGW_LICENSE = Apache-2.0

# A fixed uid and gid: the spool on /data outlives firmware updates,
# so its owner must not change when other packages add users.
# The field-ops login of the serial console (ops, whose shell is the
# console menu) is a board user: board/sftpgw/users.table.
define SFTPGW_USERS
	sftpgw 900 sftpgw 900 * - - - sftpgw transfer gateway
endef

$(eval $(cargo-package))
