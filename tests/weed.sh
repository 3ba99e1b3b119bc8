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
  local attempt base
  for attempt in 1 2 3 4 5; do
    base=$(weed_free_base) || { echo "no free ports for SeaweedFS" >&2; return 1; }
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
    # A port taken between the check and SeaweedFS's bind (another program's outgoing
    # connection, say): start again on other ports. Anything else is a real failure.
    weed_stop
    grep -q "Port allocation failed" "$dir/weed.log" || break
    echo "SeaweedFS could not take its ports (attempt $attempt); trying others" >&2
  done
  echo "SeaweedFS did not come up; its log ends with:" >&2
  tail -n 20 "$dir/weed.log" "$dir/seed.err" >&2
  return 1
}

# A port base with base..base+4 and SeaweedFS's gRPC ports (+10000) free, all below the
# kernel's ephemeral range so that no outgoing connection takes one after the check.
weed_free_base() {
  python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
top = min(low, 65535) - 10005
for _ in range(400):
    base = random.randrange(10000, max(top, 10001)) // 10 * 10
    ok = True
    for port in [base + i for i in range(5)] + [base + 10000 + i for i in range(5)]:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            ok = False
        finally:
            s.close()
        if not ok:
            break
    if ok:
        print(base)
        raise SystemExit(0)
raise SystemExit(1)
PY
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
