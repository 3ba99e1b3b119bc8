#!/usr/bin/env bash
# The CSI node plugin's figures (as root): publish-to-ready time of a volume (median of 20) and
# the plugin's RSS with 10 volumes published, and how long a rolling update's new plugin takes to
# take those 10 over, against SeaweedFS on 127.0.0.1. Prints one JSON
# line (tests/bench/csi.rs); docs/benchmarks.md records it with this command.
#   bash tests/bench/csi.sh [--publishes N] [--volumes N]
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/setup.sh
. tests/weed.sh
cargo build --release --bin bucketfs --example csi-bench
export AWS_ACCESS_KEY_ID=csi-bench AWS_SECRET_ACCESS_KEY=csi-bench-secret AWS_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
work=$(mktemp -d /tmp/csi-bench.XXXXXX)
cleanup() {
  # Whatever a failed run left mounted goes first (targets, then the daemons' mounts): never
  # rm -r through a live mount.
  awk -v w="$work/" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r |
    xargs -r -n1 umount -l
  weed_stop
  rm -rf "$work"
}
trap cleanup EXIT
weed_start "$work/weed" csi-bench README=bench
target/release/examples/csi-bench --bucketfs target/release/bucketfs \
  --endpoint "$WEED_ENDPOINT" --bucket csi-bench --dir "$work/csi" "$@"
