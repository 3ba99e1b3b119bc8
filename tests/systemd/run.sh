#!/usr/bin/env bash
# bucketfs under mount(8), fstab and systemd, for real (needs root and /dev/fuse; /dev/autofs for
# the automount steps, which a kernel without autofs cannot run: they are then reported as not
# tested, loudly, and the .mount unit is started directly instead):
#  1. `mount -t fuse.bucketfs` and an fstab line + `mount PATH` on this machine (fstab restored);
#  2. systemd as PID 1 in systemd-nspawn (a Debian bookworm minbase root, built once with
#     debootstrap and cached under ~/.cache/bucketfs), with bucketfs installed there from the
#     Debian package (.ci/package: binary, units, man page, completions): `systemd-analyze
#     verify` of the installed units, `man -w bucketfs`, the installed .mount/.automount pair
#     with a drop-in naming the bucket (armed, mounted on first access, unmounted when idle,
#     stopped), an fstab x-systemd.automount line, and the installed Type=notify template.
# All against SeaweedFS on 127.0.0.1 (the container shares the host network). Every step runs
# under `timeout`; the EXIT trap unmounts, stops the container and the server, and cleans up.
# usage: tests/systemd/run.sh [BUCKETFS_BINARY]   (for step 1; default target/debug/bucketfs,
# built if missing). Step 2 builds the package (a release build) and installs that.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/setup.sh
. tests/weed.sh

fail() { echo "systemd checks: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
[ "$(id -u)" -eq 0 ] || fail "needs root (mount, systemd-nspawn)"
[ -e /dev/fuse ] || fail "/dev/fuse is missing"
autofs=true
if [ ! -e /dev/autofs ]; then
  autofs=false
  echo "systemd checks: NOT TESTED on this machine: .automount and x-systemd.automount (the kernel has no autofs: no /dev/autofs, none in /proc/filesystems)" >&2
fi

bin="$(realpath "${1:-target/debug/bucketfs}")"
[ -x "$bin" ] || cargo build
# v2: with man-db, for `man -w`.
rootfs="$CACHE_DIR/nspawn-bookworm-v2"
mirror="${BUCKETFS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(mktemp -d /tmp/bucketfs-systemd.XXXXXX)"
machine="bucketfs-test-$$"
export AWS_ACCESS_KEY_ID=systemd-test AWS_SECRET_ACCESS_KEY=systemd-test-secret AWS_REGION=us-east-1
content="hello from systemd"
fstab_backup=""
linked=false
nspawn_pid=""
new_cgroups=()
for top in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
  for name in payload supervisor; do
    [ -d "$top" ] && [ ! -e "$top/$name" ] && new_cgroups+=("$top/$name")
  done
done

cleanup() {
  local rc=$? m left
  set +e
  [ -n "$fstab_backup" ] && cp "$fstab_backup" /etc/fstab
  if $linked; then
    rm -f /usr/local/bin/bucketfs
    [ -e "$work/bucketfs.orig" ] || [ -L "$work/bucketfs.orig" ] && mv "$work/bucketfs.orig" /usr/local/bin/bucketfs
  fi
  for m in "$work"/mnt-*; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  if [ "$rc" -ne 0 ] && [ -n "${pid1:-}" ]; then
    echo "--- the container's journal (last lines)" >&2
    timeout 20 nsenter -t "$pid1" -a journalctl -n 40 --no-pager >&2
  fi
  if [ -n "$nspawn_pid" ]; then
    kill -TERM "$nspawn_pid" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  rm -rf "/run/systemd/nspawn/propagate/$machine"
  # Empty cgroups nspawn leaves behind; their last processes may take a moment to go.
  for _ in $(seq 1 50); do
    for m in "${new_cgroups[@]}"; do
      [ -d "$m" ] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    left=0
    for m in "${new_cgroups[@]}"; do [ -d "$m" ] && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
  weed_stop
  if [ "$rc" -ne 0 ]; then
    echo "--- container console (last lines)" >&2
    tail -n 30 "$work/nspawn.log" 2>/dev/null >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Waits until "$@" succeeds, at most $1 seconds.
until_ok() {
  local limit=$1 _
  shift
  for _ in $(seq 1 $((limit * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}

# The pid of the bucketfs daemon serving mount point $1 on this machine.
daemon_of() {
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' '\n' < "$p/cmdline" 2>/dev/null | { read -r a0 && [[ "$a0" == *bucketfs ]] && grep -qxF "$1"; }; then
      echo "${p#/proc/}"
      return 0
    fi
  done
  return 1
}
gone() { ! kill -0 "$1" 2>/dev/null; }

weed_start "$work/weed" sample "docs/readme.md=$content"
endpoint=$WEED_ENDPOINT
opts="force_path_style,endpoint_url=$endpoint,region=us-east-1"

step "mount -t fuse.bucketfs on this machine"
# mount(8) drops PATH for its helpers, so the shell mount.fuse3 starts finds bucketfs on the
# default path only: link it into /usr/local/bin for the test (the trap restores what was there).
mkdir -p "$work/mnt-t" "$work/mnt-fstab"
if [ -e /usr/local/bin/bucketfs ] || [ -L /usr/local/bin/bucketfs ]; then
  mv /usr/local/bin/bucketfs "$work/bucketfs.orig"
fi
linked=true
ln -s "$bin" /usr/local/bin/bucketfs
timeout 60 mount -t fuse.bucketfs -o "$opts" sample:docs/ "$work/mnt-t"
[ "$(findmnt -n -o FSTYPE "$work/mnt-t")" = fuse.bucketfs ] || fail "mount -t: not a fuse.bucketfs mount"
[ "$(timeout 30 cat "$work/mnt-t/readme.md")" = "$content" ] || fail "mount -t: wrong bytes"
pid="$(daemon_of "$work/mnt-t")" || fail "mount -t: no daemon found"
timeout 30 umount "$work/mnt-t"
until_ok 10 gone "$pid" || fail "mount -t: the daemon did not exit after umount"

step "an fstab line and mount PATH"
fstab_backup="$work/fstab.orig"
cp /etc/fstab "$fstab_backup"
echo "sample:docs/ $work/mnt-fstab fuse.bucketfs noauto,_netdev,$opts 0 0" >> /etc/fstab
timeout 60 mount "$work/mnt-fstab"
[ "$(timeout 30 cat "$work/mnt-fstab/readme.md")" = "$content" ] || fail "fstab: wrong bytes"
timeout 30 umount "$work/mnt-fstab"
cp "$fstab_backup" /etc/fstab
fstab_backup=""
cmp -s /etc/fstab "$work/fstab.orig" || fail "/etc/fstab not restored"

step "the container root ($rootfs)"
if [ ! -e "$rootfs/.complete" ]; then
  command -v debootstrap >/dev/null || apt_install debootstrap
  rm -rf "$rootfs.tmp"
  timeout 900 debootstrap --variant=minbase \
    --include=systemd,systemd-sysv,dbus,fuse3,ca-certificates,man-db bookworm "$rootfs.tmp" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  touch "$rootfs.tmp/.complete"
  rm -rf "$rootfs"
  mv "$rootfs.tmp" "$rootfs"
fi

step "the Debian package (.ci/package)"
deb="$(timeout 1800 bash .ci/package | tail -n 1)" || fail "building the package"
[ -f "$deb" ] || fail "no package at '$deb'"
mkdir -p "$work/deb"
cp "$deb" "$work/deb/bucketfs.deb"

step "boot systemd in systemd-nspawn"
timeout 900 systemd-nspawn -D "$rootfs" --boot --register=no --keep-unit --volatile=overlay \
  --bind=/dev/fuse $($autofs && echo --bind=/dev/autofs) \
  --bind-ro="$work/deb:/usr/local/share/bucketfs-deb" -M "$machine" --console=passive \
  > "$work/nspawn.log" 2>&1 &
nspawn_pid=$!
pid1=""
for _ in $(seq 1 100); do
  # timeout -> systemd-nspawn -> the container's systemd
  pid1="$(pgrep -P "$(pgrep -P "$nspawn_pid" -x systemd-nspawn || echo 0)" -x systemd || true)"
  [ -n "$pid1" ] && break
  sleep 0.1
done
[ -n "$pid1" ] || fail "no systemd in the container"
cx() { timeout 60 nsenter -t "$pid1" -a "$@"; }
state=""
for _ in $(seq 1 60); do
  state="$(cx systemctl is-system-running --wait 2>/dev/null || true)"
  case "$state" in running|degraded) break ;; esac
  sleep 0.5
done
case "$state" in running|degraded) ;; *) fail "container systemd not up: $state" ;; esac
# The filesystem types mounted at $1 in the container, from the mount table: findmnt PATH would
# touch the path, and every touch restarts the automount's idle timer.
fstypes() { cx findmnt -n -r -o TARGET,FSTYPE | awk -v t="$1" '$1 == t { print $2 }'; }
mounted() { fstypes "$1" | grep -qx fuse.bucketfs; }
unmounted() { ! mounted "$1"; }
daemons() { cx sh -c 'cat /proc/[0-9]*/comm 2>/dev/null' | grep -cx bucketfs || true; }
no_daemons() { [ "$(daemons)" = 0 ]; }

step "dpkg -i the package; what it installed"
cx dpkg -i /usr/local/share/bucketfs-deb/bucketfs.deb > "$work/dpkg.log" 2>&1 ||
  { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
[ "$(cx sh -c 'command -v bucketfs')" = /usr/bin/bucketfs ] || fail "bucketfs is not /usr/bin/bucketfs"
cx bucketfs --version | grep -q "^bucketfs $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1) (" ||
  fail "bucketfs --version: $(cx bucketfs --version)"
[ "$(cx man -w bucketfs)" = /usr/share/man/man8/bucketfs.8.gz ] || fail "man -w bucketfs: $(cx man -w bucketfs 2>&1)"
cx sh -c 'man bucketfs 2>/dev/null' | grep -q "metrics.addr" || fail "man bucketfs lacks the options"
for f in /lib/systemd/system/bucketfs@.service /lib/systemd/system/mnt-data.mount \
  /lib/systemd/system/mnt-data.automount /usr/share/bash-completion/completions/bucketfs \
  /usr/share/zsh/vendor-completions/_bucketfs /usr/share/doc/bucketfs/SYSTEMD.md; do
  cx test -s "$f" || fail "the package did not install $f"
done
cx dpkg -s bucketfs | grep -q '^Depends:.*fuse3' || fail "the package does not depend on fuse3"

step "systemd-analyze verify of the installed units (any output fails)"
cx sh -c 'mkdir -p /run/verify && cp /lib/systemd/system/bucketfs@.service \
  /lib/systemd/system/mnt-data.mount /lib/systemd/system/mnt-data.automount /run/verify/ &&
  mv /run/verify/bucketfs@.service /run/verify/bucketfs@mnt-data.service'
out="$(cx sh -c 'cd /run/verify && systemd-analyze verify ./*' 2>&1)" || fail "verify: $out"
[ -z "$out" ] || fail "systemd-analyze verify printed: $out"

step "systemd-analyze security of the installed service: exposure 5.0 or lower"
out="$(cx systemd-analyze security --offline=true /run/verify/bucketfs@mnt-data.service 2>&1)" ||
  fail "security: $out"
level="$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
[ -n "$level" ] || fail "no exposure level in: $out"
awk -v l="$level" 'BEGIN { exit !(l <= 5.0) }' || fail "exposure $level > 5.0: $out"
echo "exposure level $level"

step "the .mount and .automount units"
cx sh -c "mkdir -p /root/.aws && umask 077 && printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
  $AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY > /root/.aws/credentials"
# The installed units, with drop-ins as docs/SYSTEMD.md says: the bucket, and a short idle time.
cx sh -c "mkdir -p /etc/systemd/system/mnt-data.mount.d /etc/systemd/system/mnt-data.automount.d &&
  printf '[Mount]\nWhat=sample:docs/\nOptions=_netdev,$opts\n' > /etc/systemd/system/mnt-data.mount.d/test.conf &&
  printf '[Automount]\nTimeoutIdleSec=3\n' > /etc/systemd/system/mnt-data.automount.d/test.conf"
cx systemctl daemon-reload
[ -z "$(cx sh -c 'ls /etc/systemd/system/*.mount /etc/systemd/system/*.automount 2>/dev/null')" ] ||
  fail "units copied into /etc: the test must use the installed ones"

if $autofs; then
  step ".automount: armed, mounted on first access, unmounted when idle"
  cx systemctl start mnt-data.automount
  [ "$(cx systemctl is-active mnt-data.automount)" = active ] || fail "automount not active"
  [ "$(fstypes /mnt/data)" = autofs ] || fail "no autofs placeholder at /mnt/data"
  ! mounted /mnt/data || fail "mounted before any access"
  [ "$(daemons)" = 0 ] || fail "a daemon runs before any access"
  [ "$(cx cat /mnt/data/readme.md)" = "$content" ] || fail "automount: wrong bytes at first access"
  mounted /mnt/data || fail "first access did not mount fuse.bucketfs"
  until_ok 30 unmounted /mnt/data || fail "idle timeout did not unmount"
  until_ok 10 no_daemons || fail "the daemon did not exit after the idle unmount"

  [ "$(cx cat /mnt/data/readme.md)" = "$content" ] || fail "second access"
  mounted /mnt/data || fail "second access did not mount"
else
  step ".mount started directly (no autofs)"
  cx systemctl start mnt-data.mount
  mounted /mnt/data || fail ".mount started but /mnt/data is not mounted"
  [ "$(cx cat /mnt/data/readme.md)" = "$content" ] || fail ".mount: wrong bytes"
fi
step "systemctl stop unmounts"
cx systemctl stop mnt-data.mount
! mounted /mnt/data || fail "still mounted after systemctl stop"
until_ok 10 no_daemons || fail "the daemon did not exit after systemctl stop"

if $autofs; then
  step "an fstab x-systemd.automount line"
  cx sh -c "echo 'sample:docs/ /mnt/fstab fuse.bucketfs _netdev,x-systemd.automount,x-systemd.idle-timeout=3,$opts 0 0' >> /etc/fstab"
  cx systemctl daemon-reload
  cx systemctl start mnt-fstab.automount
  [ "$(fstypes /mnt/fstab)" = autofs ] || fail "fstab: no autofs placeholder"
  ! mounted /mnt/fstab || fail "fstab: mounted before any access"
  [ "$(cx cat /mnt/fstab/readme.md)" = "$content" ] || fail "fstab automount: wrong bytes"
  mounted /mnt/fstab || fail "fstab: first access did not mount"
  until_ok 30 unmounted /mnt/fstab || fail "fstab: idle timeout did not unmount"

fi

step "the Type=notify template service is active only once the mount is live"
cx sh -c "mkdir -p /etc/bucketfs && umask 077 && cat > /etc/bucketfs/mnt-svc.env" <<ENV
BUCKETFS_SOURCE=sample:docs/
BUCKETFS_OPTIONS=--endpoint-url $endpoint --force-path-style --region us-east-1
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
ENV
cx systemctl daemon-reload
cx systemctl start bucketfs@mnt-svc.service
mounted /mnt/svc || fail "service started but /mnt/svc is not mounted yet"
[ "$(cx systemctl is-active bucketfs@mnt-svc.service)" = active ] || fail "service not active"
[ "$(cx cat /mnt/svc/readme.md)" = "$content" ] || fail "service: wrong bytes"
# A write in place goes through a staging file in the unit's CacheDirectory (0700), which the
# sandbox leaves writable; the mount is seen outside the service.
cx sh -c 'printf hello > /mnt/svc/written.txt && printf XY | dd of=/mnt/svc/written.txt bs=1 seek=1 conv=notrunc status=none'
[ "$(cx cat /mnt/svc/written.txt)" = hXYlo ] || fail "service: a write in place: $(cx cat /mnt/svc/written.txt)"
[ "$(cx stat -c %a /var/cache/bucketfs)" = 700 ] || fail "CacheDirectory is not 0700"
[ "$(cx stat -c %a /var/cache/bucketfs/staging)" = 700 ] || fail "the staging directory is not 0700"

step "systemctl reload hands the mount to a new daemon; a file open across it reads on"
old_pid="$(cx systemctl show -p MainPID --value bucketfs@mnt-svc.service)"
held="$(cx sh -c 'exec 3</mnt/svc/readme.md && systemctl reload bucketfs@mnt-svc.service && cat <&3')" ||
  fail "systemctl reload failed: $(cx journalctl -u bucketfs@mnt-svc.service --no-pager | tail -5)"
[ "$held" = "$content" ] || fail "a file open across the takeover read: $held"
new_pid="$(cx systemctl show -p MainPID --value bucketfs@mnt-svc.service)"
[ "$new_pid" != "$old_pid" ] && [ "$new_pid" != 0 ] || fail "the main pid did not change: $old_pid -> $new_pid"
[ "$(cx systemctl is-active bucketfs@mnt-svc.service)" = active ] || fail "not active after reload"
[ "$(cx cat /mnt/svc/readme.md)" = "$content" ] || fail "after reload: wrong bytes"

step "kill -9 of the daemon mid-work: systemd restarts it, and it resumes the live mount from its fd store"
main_pid="$(cx systemctl show -p MainPID --value bucketfs@mnt-svc.service)"
[ -n "$main_pid" ] && [ "$main_pid" != 0 ] || fail "no main pid for the service"
cx sh -c 'rm -rf /tmp/src && mkdir -p /tmp/src && for i in $(seq 1 500); do echo "file $i" > /tmp/src/f$i; done'
# Under way at the kill: cp -r of 500 small files, a 200 MiB write by one program (dd, fed
# slowly through a pipe: one open, one close) and a reader of a file opened before. Nobody may
# see ENOTCONN; the write's next call fails with EIO and nothing is published under its name.
cx sh -c "exec 3</mnt/svc/readme.md
  (cp -r /tmp/src /mnt/svc/copy 2>/tmp/cp.err; echo \$? > /tmp/cp.rc) &
  ( (for i in \$(seq 1 200); do head -c 1048576 /dev/zero || exit; sleep 0.05; done |
     dd of=/mnt/svc/big.bin bs=1M iflag=fullblock status=none) 2>/tmp/big.err; echo \$? > /tmp/big.rc) &
  sleep 1.5; kill -KILL $main_pid; wait; cat <&3 > /tmp/held.out 2>&1; true" ||
  fail "the programs did not finish: cp: $(cx cat /tmp/cp.err) write: $(cx cat /tmp/big.err)
$(cx journalctl -u bucketfs@mnt-svc.service --no-pager | tail -15)"
new_main() { p="$(cx systemctl show -p MainPID --value bucketfs@mnt-svc.service)"; [ "$p" != "$main_pid" ] && [ "$p" != 0 ] &&
  [ "$(cx systemctl is-active bucketfs@mnt-svc.service)" = active ]; }
until_ok 30 new_main || fail "after SIGKILL the service did not come back: $(cx journalctl -u bucketfs@mnt-svc.service --no-pager | tail -5)"
resumed() { cx journalctl -u bucketfs@mnt-svc.service --no-pager | grep -q "resumed the mount after the previous daemon died"; }
until_ok 10 resumed ||
  fail "the new daemon did not resume the mount: $(cx journalctl -u bucketfs@mnt-svc.service --no-pager | tail -8)"
! cx grep -l "Transport endpoint" /tmp/cp.err /tmp/big.err || fail "a program saw ENOTCONN: $(cx cat /tmp/cp.err /tmp/big.err)"
[ "$(cx cat /tmp/held.out)" = "$content" ] || fail "a file open across the crash read: $(cx cat /tmp/held.out)"
[ "$(cx cat /tmp/big.rc)" != 0 ] || fail "the write cut by the crash reported no error"
cx grep -q "Input/output error" /tmp/big.err || fail "the write cut by the crash: not EIO: $(cx cat /tmp/big.err)"
[ "$(python3 tests/s3seed.py "$endpoint" sample --exists docs/big.bin)" = none ] ||
  fail "a half-written object was published under the name"
uploads_gone() { [ "$(python3 tests/s3seed.py "$endpoint" sample --count-uploads)" = 0 ]; }
until_ok 20 uploads_gone || fail "the dead daemon's multipart upload was not aborted"
# Every copied file in the bucket is whole; with cp's success, all of them.
cx sh -c 'cd /mnt/svc/copy && for f in *; do cmp -s "$f" "/tmp/src/$f" || { echo "$f differs"; exit 1; }; done' ||
  fail "a copied file in the bucket is not what was written"
if [ "$(cx cat /tmp/cp.rc)" = 0 ]; then
  [ "$(cx sh -c 'ls /mnt/svc/copy | wc -l')" = 500 ] || fail "cp -r succeeded but files are missing"
else
  # A file opened in the last moments before the crash (after the last saved state) fails
  # with EIO, never EBADF (docs/RESTART.md).
  echo "   cp -r reported: $(cx head -3 /tmp/cp.err)"
  ! cx grep -q "Bad file descriptor" /tmp/cp.err || fail "cp -r saw EBADF after the crash"
fi
[ "$(cx cat /mnt/svc/readme.md)" = "$content" ] || fail "after the restart: wrong bytes"
cx systemctl stop bucketfs@mnt-svc.service
! mounted /mnt/svc || fail "service stopped but still mounted"
until_ok 10 no_daemons || fail "the daemon did not exit at systemctl stop"

step "a service for a missing bucket fails instead of turning active"
cx sh -c "sed 's|^BUCKETFS_SOURCE=.*|BUCKETFS_SOURCE=no-such-bucket|' /etc/bucketfs/mnt-svc.env > /etc/bucketfs/mnt-bad.env"
if cx systemctl start bucketfs@mnt-bad.service 2>/dev/null; then fail "a missing bucket started"; fi
[ "$(cx systemctl is-active bucketfs@mnt-bad.service)" != active ] || fail "missing bucket: active"
cx journalctl -u bucketfs@mnt-bad.service --no-pager | grep -q "no-such-bucket" ||
  fail "the journal does not name the missing bucket"
cx systemctl stop bucketfs@mnt-bad.service 2>/dev/null || true

echo "systemd checks: all passed"
