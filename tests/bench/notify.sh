#!/usr/bin/env bash
# Notification figures (issue 11) on moto's server, as root: PUT-to-visible latency over 200
# changes, and S3 requests of repeated `ls -l` of 10,000 entries with and without
# --notify-queue. Builds bucketfs in release and writes its section of docs/benchmarks.md.
#   bash tests/bench/notify.sh [--out FILE]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/setup.sh
cargo build --release --bin bucketfs
exec "$(dirname "$BUCKETFS_MOTO")/python" tests/bench/notify.py \
  --moto "$BUCKETFS_MOTO" --bucketfs "$PWD/target/release/bucketfs" \
  --command "bash tests/bench/notify.sh $*" "$@"
