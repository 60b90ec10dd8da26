#!/usr/bin/env bash
# Packs this repository, with every crate of Cargo.lock vendored, into the source archive that
# the Buildroot package sftpgw builds from, and writes the archive's hash into the package.
#
# Why: Buildroot vendors the crates of a cargo package only in its download step, and a package
# whose source is a local directory (site method "local", or <PKG>_OVERRIDE_SRCDIR) skips that
# step; its build, `cargo build --offline`, then finds no crates. So this script does the
# vendoring, once, on a machine with internet access, and the package takes the archive with the
# "file" site method. The crates go to VENDOR/, the name Buildroot's cargo download step looks
# for to recognise an archive that is already vendored (it then leaves the archive untouched,
# so the hash written here is the one Buildroot checks).
#
# Usage: buildroot/scripts/make-source-archive.sh [--worktree] [--offline]
#   --worktree  pack the files as they are in the work tree (tracked ones, with uncommitted
#               changes, and new ones that are not ignored) instead of the last commit
#   --offline   let `cargo vendor` take crates from cargo's local cache only
#
# Needs git, cargo (only to copy crate sources: `cargo vendor`), GNU tar, gzip and sha256sum.
# Writes buildroot/dl/sftpgw-<version>-vendored.tar.gz and buildroot/package/sftpgw/sftpgw.hash.
# The archive is reproducible: the same commit gives the same bytes, hence the same hash, with
# the same tar and gzip. buildroot/ itself is not packed: the crate does not need it, and a new
# hash committed there then does not change the archive it describes.
set -euo pipefail

die() {
  printf 'make-source-archive: %s\n' "$*" >&2
  exit 1
}

worktree=no
offline=()
for arg in "$@"; do
  case "$arg" in
    --worktree) worktree=yes ;;
    --offline) offline=(--offline) ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

for tool in git cargo tar gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done

br_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repo=$(git -C "$br_dir" rev-parse --show-toplevel)
# Paths below are relative to the top of the repository; this one keeps buildroot/ out.
not_buildroot=':(exclude)buildroot'

# The version of the [package] table of Cargo.toml, which the package's .mk must repeat.
version=$(sed -n '/^\[package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml" |
  head -n 1)
[ -n "$version" ] || die "no version in the [package] table of $repo/Cargo.toml"
mk_version=$(sed -n 's/^SFTPGW_VERSION = //p' "$br_dir/package/sftpgw/sftpgw.mk")
[ "$version" = "$mk_version" ] ||
  die "Cargo.toml says version $version but sftpgw.mk says $mk_version: make them equal"

# The top directory in the archive, and the archive's name (SFTPGW_SOURCE in sftpgw.mk).
name="sftpgw-$version"
out_dir="$br_dir/dl"
archive="$out_dir/$name-vendored.tar.gz"
hash_file="$br_dir/package/sftpgw/sftpgw.hash"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$work/$name"
mkdir "$src"

# 1. The sources.
if [ "$worktree" = yes ]; then
  # ls-files also lists tracked files deleted in the work tree: keep only those that exist.
  git -C "$repo" ls-files -z --cached --others --exclude-standard -- . "$not_buildroot" |
    while IFS= read -r -d '' path; do
      if [ -e "$repo/$path" ] || [ -L "$repo/$path" ]; then
        printf '%s\0' "$path"
      fi
    done |
    tar -C "$repo" --null --no-recursion -T - -cf - |
    tar -C "$src" -xf -
  origin="the work tree at $(git -C "$repo" describe --always --dirty)"
else
  git -C "$repo" archive --format=tar HEAD -- . "$not_buildroot" | tar -C "$src" -xf -
  origin="commit $(git -C "$repo" rev-parse HEAD)"
fi
[ -f "$src/Cargo.lock" ] || die "Cargo.lock is not committed: the build needs it (--locked)"

# 2. The crates, and the cargo configuration that points the build at them.
if [ -f "$src/.cargo/config.toml" ] && grep -q '^\[source' "$src/.cargo/config.toml"; then
  die ".cargo/config.toml already replaces sources; merge the vendoring by hand"
fi
(cd "$src" && cargo vendor --locked ${offline[@]+"${offline[@]}"} VENDOR) >"$work/vendor.toml"
grep -q 'directory = "VENDOR"' "$work/vendor.toml" ||
  die "cargo vendor did not print the expected source replacement"
mkdir -p "$src/.cargo"
if [ -f "$src/.cargo/config.toml" ]; then
  printf '\n' >>"$src/.cargo/config.toml"
fi
cat "$work/vendor.toml" >>"$src/.cargo/config.toml"

# 3. One archive, byte for byte the same for the same input: entries sorted, owner and mode
# normalised, every time stamp that of the last commit that changed what is packed (the GNU
# format has no extended headers carrying the time of packing), gzip without name or time.
mtime=$(git -C "$repo" log -1 --format=%ct HEAD -- . "$not_buildroot")
mkdir -p "$out_dir"
tar -C "$work" --format=gnu --sort=name --mtime="@$mtime" \
  --owner=0 --group=0 --numeric-owner --mode='go=u,go-w' \
  -cf - "$name" | gzip -9 -n >"$archive.tmp"
mv -f "$archive.tmp" "$archive"

# 4. The hash Buildroot checks the archive against.
sum=$(sha256sum "$archive" | cut -d ' ' -f 1)
cat >"$hash_file" <<EOF
# Locally calculated by scripts/make-source-archive.sh from
# $origin
sha256  $sum  ${archive##*/}
EOF

printf 'wrote %s\n  (%s; sha256 %s)\nupdated %s\n' \
  "$archive" "$origin" "$sum" "$hash_file"
printf 'A build directory of the same version is not refreshed by itself: run\n'
printf '  make sftpgw-dirclean all\nin the Buildroot output directory.\n'
