#!/usr/bin/env bash
# Try bucketfs: build it, start a local SeaweedFS with a sample bucket on 127.0.0.1, mount the
# bucket, list and read it, then unmount and stop the server. `--keep` leaves both running and
# prints how to stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
. tests/setup.sh
keep=false
[ "${1:-}" = "--keep" ] && keep=true

cargo build --release
bin="$PWD/target/release/bucketfs"
work="$(mktemp -d /tmp/bucketfs-demo.XXXXXX)"
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret AWS_REGION=us-east-1
. tests/weed.sh
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
  fusermount3 -u "$mnt" 2>/dev/null || true
  weed_stop
  rm -rf "$work"
  true
}
$keep || trap cleanup EXIT

weed_start "$work" sample "hello.txt=Hello from bucketfs!
" "docs/readme.md=# A sample bucket
" "photos/2026/beach.txt=(imagine a photo)
"
weed_pid=$WEED_PID
endpoint=$WEED_ENDPOINT

"$bin" sample "$mnt" --endpoint-url "$endpoint" --force-path-style
echo "== ls -lR $mnt"
ls -lR "$mnt"
echo "== cat $mnt/hello.txt"
cat "$mnt/hello.txt"
if $keep; then
  echo "Mounted at $mnt (server pid $weed_pid). Stop with: fusermount3 -u $mnt; kill $weed_pid"
fi
