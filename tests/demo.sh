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
cat > "$work/identities.json" <<JSON
{"identities":[{"name":"demo","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
base=$(( 30000 + RANDOM % 2000 * 10 ))
"$BUCKETFS_WEED" mini -dir="$work" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.port=$base -volume.port=$((base + 1)) -filer.port=$((base + 2)) \
  -s3.port=$((base + 3)) -admin.port=$((base + 4)) -s3.config="$work/identities.json" \
  >"$work/weed.log" 2>&1 &
weed_pid=$!
endpoint="http://127.0.0.1:$((base + 3))"
mnt="$work/mnt"
mkdir -p "$mnt"
cleanup() {
  fusermount3 -u "$mnt" 2>/dev/null || true
  kill "$weed_pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$weed_pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$weed_pid" 2>/dev/null || true
  wait "$weed_pid" 2>/dev/null || true
  rm -rf "$work"
  true
}
$keep || trap cleanup EXIT

seeded=false
for _ in $(seq 1 240); do
  if python3 tests/s3seed.py "$endpoint" sample "hello.txt=Hello from bucketfs!
" "docs/readme.md=# A sample bucket
" "photos/2026/beach.txt=(imagine a photo)
" 2>"$work/seed.err"; then
    seeded=true
    break
  fi
  kill -0 "$weed_pid" 2>/dev/null || break
  sleep 0.5
done
if ! $seeded; then
  echo "demo: SeaweedFS did not come up; its log ends with:" >&2
  tail -n 20 "$work/weed.log" "$work/seed.err" >&2
  exit 1
fi

"$bin" sample "$mnt" --endpoint-url "$endpoint" --force-path-style
echo "== ls -lR $mnt"
ls -lR "$mnt"
echo "== cat $mnt/hello.txt"
cat "$mnt/hello.txt"
if $keep; then
  echo "Mounted at $mnt (server pid $weed_pid). Stop with: fusermount3 -u $mnt; kill $weed_pid"
fi
