#!/usr/bin/env bash
# The benchmark suite (as root): installs what it needs (tests/setup.sh, then fio, s3fs, rclone
# and matplotlib), builds bucketfs and bench-raw in release, and runs tests/bench/bench.py, which
# starts SeaweedFS on 127.0.0.1, seeds it and runs every workload on raw S3, bucketfs, s3fs and
# rclone mount. Full run: writes docs/benchmarks.md and docs/benchmarks.png (about an hour).
#   bash tests/bench/run.sh                 full run, median of 3
#   bash tests/bench/run.sh --quick         CI smoke run (minutes): target/bench/benchmarks-quick.md
#   bash tests/bench/run.sh --only seq-read-1,ls-10k --systems raw,bucketfs
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/setup.sh

missing=()
command -v fio >/dev/null || missing+=(fio)
command -v s3fs >/dev/null || missing+=(s3fs)
command -v rclone >/dev/null || missing+=(rclone)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

venv="$CACHE_DIR/bench-venv"
[ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import matplotlib' 2>/dev/null ||
  venv_install "$venv" "matplotlib==3.10.7"

cargo build --release --bin bucketfs --example bench-raw
command=(bash tests/bench/run.sh "$@")
exec "$venv/bin/python" tests/bench/bench.py --weed "$BUCKETFS_WEED" --command "${command[*]}" "$@"
