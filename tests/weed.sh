# SeaweedFS on 127.0.0.1 for the shell scripts (demo, systemd checks). Source it after
# tests/setup.sh, then:
#   weed_start DIR BUCKET KEY=TEXT...   starts `weed mini` with data in DIR, waits until it answers
#                                       and seeds BUCKET; sets WEED_PID and WEED_ENDPOINT
#   weed_stop                           stops it (TERM, then KILL after 10 s)
# Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.

weed_start() {
  local dir=$1 bucket=$2
  shift 2
  mkdir -p "$dir"
  cat > "$dir/identities.json" <<JSON
{"identities":[{"name":"test","credentials":[{"accessKey":"$AWS_ACCESS_KEY_ID","secretKey":"$AWS_SECRET_ACCESS_KEY"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
  local base=$(( 30000 + RANDOM % 2000 * 10 ))
  "$BUCKETFS_WEED" mini -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.port=$base -volume.port=$((base + 1)) -filer.port=$((base + 2)) \
    -s3.port=$((base + 3)) -admin.port=$((base + 4)) -s3.config="$dir/identities.json" \
    >"$dir/weed.log" 2>&1 &
  WEED_PID=$!
  WEED_ENDPOINT="http://127.0.0.1:$((base + 3))"
  local _
  for _ in $(seq 1 240); do
    if python3 "$(dirname "${BASH_SOURCE[0]}")/s3seed.py" "$WEED_ENDPOINT" "$bucket" "$@" 2>"$dir/seed.err"; then
      return 0
    fi
    kill -0 "$WEED_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "SeaweedFS did not come up; its log ends with:" >&2
  tail -n 20 "$dir/weed.log" "$dir/seed.err" >&2
  return 1
}

weed_stop() {
  [ -n "${WEED_PID:-}" ] || return 0
  kill "$WEED_PID" 2>/dev/null || true
  local _
  for _ in $(seq 1 50); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$WEED_PID" 2>/dev/null || true
  wait "$WEED_PID" 2>/dev/null || true
  WEED_PID=""
}
