#!/usr/bin/env python3
"""The benchmark suite: every workload on the raw S3 baseline, bucketfs, s3fs and rclone mount,
against the same local SeaweedFS, in one run. Run it through tests/bench/run.sh, which installs
the tools and builds the release binaries first.

What it does, in order:
1. starts a SeaweedFS for reads and seeds it through the S3 API (bench-raw): four big objects,
   directories of 1k/10k/100k entries, a tree of small files;
2. for each system and each workload: a fresh mount (a fresh server too, for writes, because
   SeaweedFS keeps deleted data on disk until it is restarted), caches dropped, the workload
   timed, then the daemon's peak RSS (VmHWM), its CPU time and the server's request counters
   read, and the mount taken down; the median of the runs is kept;
3. writes the Markdown table (between markers, so the hand-written text around it stays) and a
   PNG chart, plus every run in JSON.

Requests are the server's own counters (SeaweedFS_s3_request_total), by type; SeaweedFS counts
a HEAD as a GET, so "GET" is GETs plus HEADs.
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RAW = os.path.join(ROOT, "target", "release", "examples", "bench-raw")
BUCKETFS = os.path.join(ROOT, "target", "release", "bucketfs")
BUCKET = "bench"
KEY_ID, SECRET = "benchkey", "benchsecret"
MiB, GiB = 1 << 20, 1 << 30

SCALES = {
    "full": dict(big=2 * GiB, big4=2 * GiB, rand_seconds=30, write=2 * GiB, write4=GiB,
                 ls=[1000, 10000, 100000], small=2000, redirects=1000, tree_dirs=50,
                 tree_files=1000, find_keys=1_000_000, runs=3, timeout=900),
    "quick": dict(big=256 * MiB, big4=128 * MiB, rand_seconds=5, write=256 * MiB, write4=64 * MiB,
                  ls=[1000, 10000], small=200, redirects=200, tree_dirs=5, tree_files=200,
                  find_keys=10_000, runs=1, timeout=240),
}

# Files in each directory of the find-* tree (1,000,000 keys: 10,000 directories).
FIND_PER_DIR = 100

# Shell-redirect creates write this many bytes each: a typical small config or log file.
REDIRECT_SIZE = 4096


class NotApplicable(Exception):
    """A workload that has no meaning for a system (the raw client keeps no metadata)."""

SYSTEMS = ["raw", "bucketfs", "s3fs", "rclone-off", "rclone-full"]
LABELS = {"raw": "raw S3 (bench-raw)", "bucketfs": "bucketfs", "s3fs": "s3fs",
          "rclone-off": "rclone (cache off)", "rclone-full": "rclone (cache full)"}


def log(*parts):
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def human(n):
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# Processes and the server


def clean_env(extra=None):
    """The environment every system runs with: no CA-bundle or proxy settings of this machine,
    the benchmark's credentials."""
    env = {k: v for k, v in os.environ.items()
           if not re.search(r"CA_BUNDLE|CA_CERTS|SSL_CERT|PROXY|^AWS_|^RCLONE_", k, re.I)}
    env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION="us-east-1",
               AWS_EC2_METADATA_DISABLED="true")
    env.update(extra or {})
    return env


def free_base():
    """A port base with base..base+5 and the gRPC ports SeaweedFS adds (+10000) free, all below
    the kernel's usual ephemeral range (32768 and up), where outgoing connections take ports."""
    for _ in range(200):
        base = 12000 + random.randrange(0, 1000) * 10
        ports = [base + i for i in range(6)] + [base + 10000 + i for i in range(6)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for SeaweedFS")


class Weed:
    """`weed mini` on 127.0.0.1 with its data in DIR and Prometheus metrics on."""

    def __init__(self, weed, workdir):
        self.dir = workdir
        os.makedirs(workdir, exist_ok=True)
        config = os.path.join(workdir, "identities.json")
        with open(config, "w") as f:
            json.dump({"identities": [{"name": "bench", "credentials": [
                {"accessKey": KEY_ID, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
        # A port found free can be taken before weed binds it (its gRPC ports lie in the
        # ephemeral range): a start that dies at once is retried on other ports.
        for attempt in range(3):
            if self.start(weed, workdir, config):
                return
            log(f"SeaweedFS exited at start (attempt {attempt + 1}); log: {self.log_tail()}")
        raise RuntimeError(f"SeaweedFS exited at start three times; see {workdir}/weed.log")

    def start(self, weed, workdir, config):
        """Starts weed on free ports; False if it exits before it serves."""
        base = free_base()
        self.endpoint = f"http://127.0.0.1:{base + 3}"
        self.metrics = f"http://127.0.0.1:{base + 5}/metrics"
        self.log = open(os.path.join(workdir, "weed.log"), "w")
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={workdir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.port={base}",
             f"-volume.port={base + 1}", f"-filer.port={base + 2}", f"-s3.port={base + 3}",
             f"-admin.port={base + 4}", f"-metricsPort={base + 5}", f"-s3.config={config}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=clean_env())
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                return False
            try:
                raw(self, "make-bucket")
                return True
            except RuntimeError:
                if time.time() > deadline:
                    raise RuntimeError(f"SeaweedFS did not come up; see {workdir}/weed.log")
                time.sleep(0.5)

    def log_tail(self):
        try:
            with open(os.path.join(self.dir, "weed.log")) as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return "(none)"

    def requests(self):
        """Requests so far to the benchmark bucket, by type (GET includes HEAD)."""
        counts = {}
        with urllib.request.urlopen(self.metrics, timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                m = re.match(r'SeaweedFS_s3_request_total\{bucket="([^"]*)",code="(\d+)",'
                             r'type="([A-Z]+)"\} (\S+)', line)
                if m and m.group(1) == BUCKET:
                    counts[m.group(3)] = counts.get(m.group(3), 0) + int(float(m.group(4)))
        return counts

    def stop(self):
        self.proc.terminate()
        wait_or_kill(self.proc, 20)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_or_kill(proc, seconds):
    """Waits for a child we started; kills it (by its PID, nothing else) after `seconds`."""
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def raw(server, *args, timeout=None):
    """Runs bench-raw against `server`; returns its JSON line and leaves its peak RSS (KiB) and
    CPU seconds in RAW_USAGE."""
    global RAW_USAGE
    cmd = [RAW, "--endpoint", server.endpoint, "--bucket", BUCKET, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=clean_env())
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            if proc.returncode == -signal.SIGKILL:
                raise RuntimeError(f"timed out after {timeout} s: bench-raw {' '.join(args)}")
            raise RuntimeError(f"bench-raw {' '.join(args)}: {err.read().decode().strip()[-500:]}")
        if args[0] != "count":  # polls between workload steps are not the workload
            RAW_USAGE = (usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
        lines = out.read().decode().strip().splitlines()
    return json.loads(lines[-1]) if lines else None


RAW_USAGE = (0, 0.0)
REVISION = "unknown"  # git describe of the tree that was built, read at start
BUCKETFS_OPTIONS = []  # --bucketfs-options: extra options for tuning experiments
# The layout directory of root's default disk cache, emptied before each cold bucketfs mount.
DEFAULT_DISK_CACHE = "/var/cache/bucketfs/v2"


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def proc_stats(pid):
    """(peak RSS in KiB, CPU seconds) of a live process, its threads included."""
    hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return hwm, (int(fields[11]) + int(fields[12])) / ticks


def rss_now(pid):
    """Resident set size (KiB) of a live process now."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


class Mount:
    """A fresh mount of one system on one server; the daemon runs in the foreground as our
    child so that its PID, peak RSS and CPU time are known."""

    def __init__(self, system, server, workdir, warm=False, keep_cache=False, no_xattr=False,
                 metadata=False):
        """`warm`: each system with its disk cache on (bucketfs --disk-cache, s3fs use_cache;
        rclone's cache modes are the systems themselves). `keep_cache`: over the cache
        directory a previous mount left (a remount). `no_xattr`: extended attributes off
        (bucketfs --no-xattr; s3fs without use_xattr and rclone serve none anyway).
        `metadata`: what the system keeps of listings across remounts (bucketfs
        --metadata-cache; s3fs and rclone keep none)."""
        self.system, self.server, self.workdir, self.warm = system, server, workdir, warm
        self.metadata = metadata
        self.path = os.path.join(workdir, "mnt")
        self.cache = os.path.join(workdir, "cache")
        os.makedirs(self.path, exist_ok=True)
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        os.makedirs(self.cache, exist_ok=True)
        env = clean_env()
        if system == "bucketfs":
            cmd = [BUCKETFS, BUCKET, self.path, "--foreground", "--endpoint-url",
                   server.endpoint, "--force-path-style", "--staging-dir",
                   os.path.join(self.cache, "staging"), "--log-level", "warn"]
            if warm:
                cmd += ["--disk-cache", os.path.join(self.cache, "disk"),
                        "--disk-cache-size", str(8 * GiB)]
            elif not keep_cache:
                # The disk cache is on by default, in root's /var/cache/bucketfs: a cold run
                # starts it empty, never with what an earlier run left there.
                shutil.rmtree(DEFAULT_DISK_CACHE, ignore_errors=True)
            if no_xattr:
                cmd.append("--no-xattr")
            if metadata:
                cmd += ["--metadata-cache", os.path.join(self.cache, "meta")]
            cmd += BUCKETFS_OPTIONS
        elif system == "s3fs":
            passwd = os.path.join(workdir, "s3fs.passwd")
            with open(os.open(passwd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(f"{KEY_ID}:{SECRET}\n")
            options = f"url={server.endpoint},use_path_request_style,passwd_file={passwd}"
            if warm:
                options += f",use_cache={self.cache}"
            cmd = ["s3fs", BUCKET, self.path, "-f", "-o", options]
        else:
            mode = system.split("-", 1)[1]
            env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Other",
                       RCLONE_CONFIG_BENCH_ENDPOINT=server.endpoint,
                       RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=KEY_ID,
                       RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=SECRET,
                       RCLONE_CONFIG=os.path.join(workdir, "rclone.conf"))
            cmd = ["rclone", "mount", f"bench:{BUCKET}", self.path, "--vfs-cache-mode", mode,
                   "--cache-dir", self.cache]
        self.log = open(os.path.join(workdir, f"{system}.log"), "a")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        while not mounted(self.path):
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise RuntimeError(f"{system} did not mount; see {self.log.name}")
            time.sleep(0.05)

    def stats(self):
        return proc_stats(self.proc.pid)

    def remount(self):
        """The same system mounted again over the cache this mount leaves behind."""
        self.close(keep_cache=True)
        return Mount(self.system, self.server, self.workdir, self.warm, keep_cache=True,
                     metadata=self.metadata)

    def close(self, keep_cache=False):
        if mounted(self.path):
            if subprocess.run(["fusermount3", "-u", self.path], capture_output=True).returncode:
                time.sleep(1)
                subprocess.run(["fusermount3", "-u", "-z", self.path], capture_output=True)
        wait_or_kill(self.proc, 60)
        self.log.close()
        if not keep_cache:
            shutil.rmtree(self.cache, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_cmd(cmd, timeout, cwd=None):
    """Runs a workload command; returns (seconds, stdout)."""
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s: {cmd[0]}")
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}...: exit {proc.returncode}: "
                           f"{proc.stderr.decode().strip()[-300:]}")
    return seconds, proc.stdout


def fio(files, timeout, **options):
    """fio with one job per file (psync, aggregated); returns its JSON read/write summary."""
    cmd = ["fio", "--output-format=json", "--ioengine=psync", "--group_reporting"]
    cmd += [f"--{k}" if v is True else f"--{k}={v}" for k, v in options.items()]
    for i, path in enumerate(files):
        cmd += [f"--name=job{i}", f"--filename={path}"]
    _, out = run_cmd(cmd, timeout)
    job = json.loads(out[out.index(b"{"):])["jobs"][0]
    return job


def wait_for_objects(server, prefix, count, size, timeout):
    """Polls the server until `count` objects of `size` bytes in total exist under prefix:
    a write counts once it is in the bucket, not when a cache on disk took it."""
    deadline = time.monotonic() + timeout
    while True:
        got = raw(server, "count", prefix)
        if got["ops"] >= count and got["bytes"] >= size:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {got['ops']} objects, {got['bytes']} bytes under "
                               f"{prefix} after {timeout} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Workloads: each returns a dict with `value` (the headline figure) and optionally `bytes`


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = dict(SCALES["quick" if args.quick else "full"])
        if args.runs:
            self.scale["runs"] = args.runs
        self.work = args.workdir
        self.weed = args.weed
        self.read_server = None
        self.small_src = os.path.join("/dev/shm", f"bucketfs-bench-{os.getpid()}-small")
        self.redirect_src = os.path.join("/dev/shm", f"bucketfs-bench-{os.getpid()}-redirect")
        self.results = {}

    # --- workload table: name -> (unit, higher_is_better, server kind, function)
    def workloads(self):
        s = self.scale
        table = [
            ("seq-read-1", "MiB/s", True, "read", self.seq_read_1),
            ("seq-read-4", "MiB/s", True, "read", self.seq_read_4),
            ("rand-read-4k", "IOPS", True, "read", lambda m, r: self.rand_read(m, "4k")),
            ("rand-read-256k", "IOPS", True, "read", lambda m, r: self.rand_read(m, "256k")),
            ("rand-read-4k-cold-default", "IOPS", True, "read", self.rand_read_cold_default),
            ("rand-read-4k-warm", "IOPS", True, "read", self.rand_read_warm),
            ("seq-read-warm", "MiB/s", True, "read", self.seq_read_warm),
            ("seq-write", "MiB/s", True, "write", self.seq_write),
            ("write-4x", "MiB/s", True, "write", self.write_4),
            ("ttfb", "ms", False, "read", self.ttfb),
        ]
        for n in s["ls"]:
            table.append((f"ls-{n // 1000}k", "s", False, "read",
                          lambda m, r, n=n: self.ls(m, n)))
        n = max(s["ls"])
        table.append((f"ls-{n // 1000}k-xattr", "x", False, "read",
                      lambda m, r, n=n: self.ls_xattr(m, n)))
        table += [
            ("cp-in", "s", False, "write", self.cp_in),
            ("rm-r", "s", False, "write", self.rm_r),
            ("cp-out", "s", False, "read", self.cp_out),
            ("redirects", "s", False, "write", self.redirects),
            ("creates-default-ttl", "s", False, "write", self.creates_default_ttl),
            ("meta-rss", "%", False, "read", self.meta_rss),
            (f"find-{self.find_label()}", "s", False, "read", self.find_tree),
            (f"remount-find-{self.find_label()}", "s", False, "read", self.remount_find),
        ]
        return table

    def seed(self, names):
        """Seeds what the chosen workloads read."""
        s = self.scale
        log("seeding the read server")
        server = self.read_server
        if names & {"seq-read-1", "rand-read-4k", "rand-read-256k", "ttfb", "rand-read-4k-warm",
                    "seq-read-warm"}:
            raw(server, "put", "--size", str(s["big"]), "big/0.bin")
        if "rand-read-4k-cold-default" in names:
            raw(server, "put", "--size", str(self.cold_size()), "big/cold.bin")
        if "seq-read-4" in names:
            raw(server, "put", "--size", str(s["big4"]), *[f"big4/{i}.bin" for i in range(4)])
        for n in s["ls"]:
            if not names & {f"ls-{n // 1000}k", f"ls-{n // 1000}k-xattr"}:
                continue
            raw(server, "put-many", "--count", str(n), "--min", "0", "--max", "1024",
                "--concurrency", "64", f"ls/{n // 1000}k/f")
        rng = random.Random(7)
        os.makedirs(self.small_src, exist_ok=True)
        for i in range(s["small"]):
            sub = os.path.join(self.small_src, f"d{i % 10}")
            os.makedirs(sub, exist_ok=True)
            with open(os.path.join(sub, f"f{i:05}.dat"), "wb") as f:
                f.write(rng.randbytes(rng.randint(4 << 10, 64 << 10)))
        raw(server, "put-dir", "--concurrency", "32", self.small_src, "small/")
        self.small_bytes = sum(os.path.getsize(os.path.join(d, f))
                               for d, _, fs in os.walk(self.small_src) for f in fs)
        os.makedirs(self.redirect_src, exist_ok=True)
        for i in range(s["redirects"]):
            with open(os.path.join(self.redirect_src, f"f{i}"), "wb") as f:
                f.write(b"x" * REDIRECT_SIZE)
        if names & {f"find-{self.find_label()}", f"remount-find-{self.find_label()}"}:
            raw(server, "put-many", "--count", str(s["find_keys"]), "--per-dir", str(FIND_PER_DIR),
                "--min", "0", "--max", "64", "--concurrency", "64", "find/",
                timeout=24 * 3600)
        if "meta-rss" in names:
            for tree in (1, 2):
                for d in range(s["tree_dirs"]):
                    raw(server, "put-many", "--count", str(s["tree_files"]), "--min", "0",
                        "--max", "64", "--concurrency", "64", f"meta/t{tree}/d{d:02}/f")

    # --- the workloads; `m` is a Mount or None (raw), `r` the run number
    def seq_read_1(self, m, r):
        s = self.scale
        if m is None:
            out = raw(self.read_server, "get", "big/0.bin", timeout=s["timeout"])
            return dict(value=out["bytes"] / MiB / out["seconds"], bytes=out["bytes"])
        job = fio([f"{m.path}/big/0.bin"], s["timeout"], rw="read", bs="256k",
                  size=s["big"], readonly=True)
        return dict(value=job["read"]["bw_bytes"] / MiB, bytes=job["read"]["io_bytes"])

    def seq_read_4(self, m, r):
        s = self.scale
        keys = [f"big4/{i}.bin" for i in range(4)]
        if m is None:
            out = raw(self.read_server, "get", *keys, timeout=s["timeout"])
            return dict(value=out["bytes"] / MiB / out["seconds"], bytes=out["bytes"])
        job = fio([f"{m.path}/{k}" for k in keys], s["timeout"], rw="read", bs="256k",
                  size=s["big4"], readonly=True)
        return dict(value=job["read"]["bw_bytes"] / MiB, bytes=job["read"]["io_bytes"])

    def rand_read(self, m, bs):
        s = self.scale
        if m is None:
            out = raw(self.read_server, "rand-read", "--bs", bs, "--seconds",
                      str(s["rand_seconds"]), "big/0.bin", timeout=s["timeout"])
            return dict(value=out["iops"], bytes=out["bytes"])
        job = fio([f"{m.path}/big/0.bin"], s["timeout"], rw="randread", bs=bs, size=s["big"],
                  readonly=True, time_based=1, runtime=s["rand_seconds"], norandommap=1, direct=1)
        return dict(value=job["read"]["iops"], bytes=job["read"]["io_bytes"])

    def cold_size(self):
        return min(GiB, self.scale["big"])

    def rand_read_cold_default(self, m, r):
        """Random 4 KiB reads of a 1 GiB object (quick: the big object's size) for 10 s on a
        fresh mount at default options, caches dropped (issue 27's harness: bucketfs fills its
        disk cache in the background, s3fs its local file)."""
        s, size = self.scale, self.cold_size()
        seconds = min(10, s["rand_seconds"])
        if m is None:
            out = raw(self.read_server, "rand-read", "--bs", "4k", "--seconds", str(seconds),
                      "big/cold.bin", timeout=s["timeout"])
            return dict(value=out["iops"], bytes=out["bytes"])
        job = fio([f"{m.path}/big/cold.bin"], s["timeout"], rw="randread", bs="4k", size=size,
                  readonly=True, time_based=1, runtime=seconds, norandommap=1, direct=1)
        return dict(value=job["read"]["iops"], bytes=job["read"]["io_bytes"])

    def local_copy(self):
        """A local file of the big object's size on the disk the caches use, caches dropped:
        the physical limit of the warm workloads (their "raw" figure)."""
        path = os.path.join(self.work, "local-big.bin")
        if not os.path.exists(path) or os.path.getsize(path) != self.scale["big"]:
            run_cmd(["dd", "if=/dev/urandom", f"of={path}", "bs=1M",
                     f"count={self.scale['big'] // MiB}", "status=none"], self.scale["timeout"])
        drop_caches()
        return path

    def warm_up(self, m):
        """Reads the big object whole through the mount (what fills the caches)."""
        run_cmd(["cat", f"{m.path}/big/0.bin"], self.scale["timeout"])

    def rand_read_warm(self, m, r):
        """Random 4 KiB reads (the rand-read-4k job) after the object was read whole on the
        same mount: each system with its disk cache."""
        s = self.scale
        if m is None:
            path = self.local_copy()
        else:
            self.warm_up(m)
            path = f"{m.path}/big/0.bin"
        job = fio([path], s["timeout"], rw="randread", bs="4k", size=s["big"], readonly=True,
                  time_based=1, runtime=s["rand_seconds"], norandommap=1, direct=1)
        return dict(value=job["read"]["iops"], bytes=job["read"]["io_bytes"])

    def seq_read_warm(self, m, r):
        """The seq-read-1 job after the object was read whole and the system remounted over
        its cache, the machine's caches dropped: reading from the disk cache."""
        s = self.scale
        if m is None:
            path = self.local_copy()
        else:
            self.warm_up(m)
            m2 = m.remount()
            m.__dict__.update(m2.__dict__)  # the caller's guard now holds the new mount
            drop_caches()
            path = f"{m.path}/big/0.bin"
        job = fio([path], s["timeout"], rw="read", bs="256k", size=s["big"], readonly=True)
        return dict(value=job["read"]["bw_bytes"] / MiB, bytes=job["read"]["io_bytes"])

    def seq_write(self, m, r):
        s = self.scale
        key = f"write/seq-{r}.bin"
        if m is None:
            out = raw(self.server, "put", "--size", str(s["write"]), key, timeout=s["timeout"])
            return dict(value=out["bytes"] / MiB / out["seconds"], bytes=out["bytes"])
        start = time.monotonic()
        fio([f"{m.path}/{key}"], s["timeout"], rw="write", bs="256k", size=s["write"],
            end_fsync=1, fallocate="none", create_on_open=1)
        wait_for_objects(self.server, key, 1, s["write"], s["timeout"])
        return dict(value=s["write"] / MiB / (time.monotonic() - start), bytes=s["write"])

    def write_4(self, m, r):
        s = self.scale
        keys = [f"write/par-{r}-{i}.bin" for i in range(4)]
        if m is None:
            out = raw(self.server, "put", "--size", str(s["write4"]), *keys,
                      timeout=s["timeout"])
            return dict(value=out["bytes"] / MiB / out["seconds"], bytes=out["bytes"])
        start = time.monotonic()
        fio([f"{m.path}/{k}" for k in keys], s["timeout"], rw="write", bs="256k",
            size=s["write4"], end_fsync=1, fallocate="none", create_on_open=1)
        wait_for_objects(self.server, f"write/par-{r}-", 4, 4 * s["write4"], s["timeout"])
        return dict(value=4 * s["write4"] / MiB / (time.monotonic() - start),
                    bytes=4 * s["write4"])

    def ttfb(self, m, r):
        if m is None:
            out = raw(self.read_server, "ttfb", "big/0.bin")
        else:
            out = json.loads(run_cmd([RAW, "ttfb-file", f"{m.path}/big/0.bin"], 60)[1])
        return dict(value=out["seconds"] * 1000)

    def ls(self, m, n):
        prefix = f"ls/{n // 1000}k/"
        timeout = self.scale["timeout"]
        if m is None:
            out = raw(self.read_server, "list", prefix, timeout=timeout)
            if out["entries"] != n:
                raise RuntimeError(f"listed {out['entries']} of {n}")
            return dict(value=out["seconds"])
        seconds, out = run_cmd(["ls", "-l", f"{m.path}/{prefix}"], timeout)
        lines = out.count(b"\n") - 1
        if lines != n:
            raise RuntimeError(f"ls -l showed {lines} of {n} entries")
        return dict(value=seconds)

    def ls_xattr(self, m, n):
        """`ls -l` of the ls tree of `n` entries at default options, as a ratio to the same on
        a fresh mount with extended attributes off: what `ls -l`'s per-entry label and ACL
        questions cost (issue 27's target: 1.2x). Both mounts' requests are counted."""
        if m is None:
            raise NotApplicable("a raw client serves no extended attributes")
        on = self.ls(m, n)["value"]
        with Mount(m.system, m.server, m.workdir + "-noxattr", no_xattr=True) as plain:
            drop_caches()
            off = self.ls(plain, n)["value"]
        log(f"ls-xattr: {on:.3f} s with xattrs, {off:.3f} s without")
        return dict(value=on / off, xattr_s=on, no_xattr_s=off)

    def cp_in(self, m, r):
        s = self.scale
        prefix = f"in-{r}/"
        if m is None:
            out = raw(self.server, "put-dir", self.small_src, prefix, timeout=s["timeout"])
            return dict(value=out["seconds"], bytes=out["bytes"])
        start = time.monotonic()
        run_cmd(["cp", "-r", self.small_src, f"{m.path}/in-{r}"], s["timeout"])
        wait_for_objects(self.server, prefix, s["small"], self.small_bytes, s["timeout"])
        return dict(value=time.monotonic() - start, bytes=self.small_bytes)

    def rm_r(self, m, r):
        s = self.scale
        prefix = f"in-{r}/"
        if m is None:
            out = raw(self.server, "delete-tree", prefix, timeout=s["timeout"])
        else:
            start = time.monotonic()
            run_cmd(["rm", "-r", f"{m.path}/in-{r}"], s["timeout"])
            out = dict(seconds=time.monotonic() - start)
        left = raw(self.server, "count", prefix)
        if left["ops"]:
            raise RuntimeError(f"{left['ops']} objects left under {prefix}")
        return dict(value=out["seconds"])

    def cp_out(self, m, r):
        s = self.scale
        dest = os.path.join("/dev/shm", f"bucketfs-bench-{os.getpid()}-out")
        shutil.rmtree(dest, ignore_errors=True)
        try:
            if m is None:
                out = raw(self.read_server, "get-tree", "small/", dest, timeout=s["timeout"])
                seconds = out["seconds"]
            else:
                seconds, _ = run_cmd(["cp", "-r", f"{m.path}/small", dest], s["timeout"])
            got = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dest)
                      for f in fs)
            if got != self.small_bytes:
                raise RuntimeError(f"copied {got} of {self.small_bytes} bytes")
        finally:
            shutil.rmtree(dest, ignore_errors=True)
        return dict(value=seconds, bytes=self.small_bytes)

    def redirects(self, m, r):
        """`printf > f` of 4 KiB files in a new directory, one after another, until every object
        is in the bucket; raw: the same PUTs made one at a time."""
        s = self.scale
        prefix = f"redir-{r}/"
        n = s["redirects"]
        if m is None:
            out = raw(self.server, "put-dir", "--concurrency", "1", self.redirect_src, prefix,
                      timeout=s["timeout"])
            return dict(value=out["seconds"], bytes=out["bytes"])
        start = time.monotonic()
        script = (f'x=$(head -c {REDIRECT_SIZE} /dev/zero | tr "\\0" x); mkdir {m.path}/redir-{r} '
                  f'&& cd {m.path}/redir-{r} && i=0; while [ $i -lt {n} ]; do '
                  f'printf %s "$x" > f$i || exit 1; i=$((i+1)); done')
        run_cmd(["sh", "-c", script], s["timeout"])
        wait_for_objects(self.server, prefix + "f", n, n * REDIRECT_SIZE, s["timeout"])
        return dict(value=time.monotonic() - start, bytes=n * REDIRECT_SIZE)

    def creates_default_ttl(self, m, r):
        """The files of `redirects`, written at the default metadata TTL by a loop paced to
        outlive it (a 1 s pause every 50 files): what new names cost once the directory's
        listing has expired (the requests besides the PUTs are the figure to read)."""
        if m is None:
            raise NotApplicable("a raw client keeps no metadata")
        s = self.scale
        prefix = f"ttl-{r}/"
        n = s["redirects"]
        start = time.monotonic()
        script = (f'x=$(head -c {REDIRECT_SIZE} /dev/zero | tr "\\0" x); mkdir {m.path}/ttl-{r} '
                  f'&& cd {m.path}/ttl-{r} && i=0; while [ $i -lt {n} ]; do '
                  f'printf %s "$x" > f$i || exit 1; i=$((i+1)); '
                  f'[ $((i % 50)) -ne 0 ] || sleep 1; done')
        run_cmd(["sh", "-c", script], s["timeout"])
        wait_for_objects(self.server, prefix + "f", n, n * REDIRECT_SIZE, s["timeout"])
        return dict(value=time.monotonic() - start, bytes=n * REDIRECT_SIZE)

    def find_label(self):
        n = self.scale["find_keys"]
        return f"{n // 1_000_000}m" if n >= 1_000_000 else f"{n // 1000}k"

    def find_tree(self, m, r):
        """`find -type f | wc -l` over `find_keys` keys, 100 in each directory of a two-level
        tree, on a fresh mount; raw: a flat ListObjectsV2 walk of the same prefix (the target:
        within 1.3x of it)."""
        n = self.scale["find_keys"]
        timeout = self.scale["timeout"]
        if m is None:
            out = raw(self.read_server, "list", "--flat", "find/", timeout=timeout)
            if out["entries"] != n:
                raise RuntimeError(f"listed {out['entries']} of {n}")
            return dict(value=out["seconds"])
        seconds, out = run_cmd(["sh", "-c", f"find {m.path}/find -type f | wc -l"], timeout)
        if int(out.strip() or 0) != n:
            raise RuntimeError(f"find saw {out.strip()} of {n} files")
        result = dict(value=seconds)
        if m.system == "bucketfs":
            # What the daemon holds once the walk is done: its RSS now and its own estimate of
            # the metadata (`--metadata-memory` bounds that), with the paths it knows.
            result["rss_now_kib"] = rss_now(m.proc.pid)
            status = subprocess.run([BUCKETFS, "status", "--json", m.path], capture_output=True,
                                    text=True, timeout=60)
            if status.returncode == 0:
                meta = json.loads(status.stdout).get("metadata", {})
                result["meta"] = {k: meta.get(k) for k in ("inodes", "bytes", "shed")}
            log(f"after the walk: RSS {result['rss_now_kib'] // 1024} MiB, "
                f"metadata {result.get('meta')}")
        return result

    def remount_find(self, m, r):
        """The find-* walk after a remount: a first walk on a fresh mount, then the system
        mounted again over what it keeps (bucketfs --metadata-cache), the machine's caches
        dropped, and the walk timed again; its requests are recorded apart. raw: the flat
        walk, as for find-*."""
        if m is None:
            return self.find_tree(None, r)
        cold = self.find_tree(m, r)
        m2 = m.remount()
        m.__dict__.update(m2.__dict__)  # the caller's guard now holds the new mount
        drop_caches()
        before = m.server.requests()
        result = self.find_tree(m, r)
        # The revalidation runs behind the walk: its requests count once they are done.
        time.sleep(5)
        after = m.server.requests()
        result["cold_seconds"] = cold["value"]
        result["remount_requests"] = {k: after.get(k, 0) - before.get(k, 0) for k in after
                                      if after.get(k, 0) != before.get(k, 0)}
        return result

    def meta_rss(self, m, r):
        """Growth of the daemon's peak RSS from walking a second tree after the kernel dropped
        the first (`find` and `ls -lR` of each; caches dropped between): metadata memory follows
        what the kernel holds, or it grows with every path ever seen."""
        if m is None:
            raise NotApplicable("a raw client keeps no metadata")
        timeout = self.scale["timeout"]

        def walk(tree):
            run_cmd(["find", f"{m.path}/meta/t{tree}"], timeout)
            run_cmd(["ls", "-lR", f"{m.path}/meta/t{tree}"], timeout)
            return m.stats()[0]

        def held(when):
            # What the daemon holds (bucketfs: its own count and estimate), for the log.
            if m.system == "bucketfs":
                status = subprocess.run([BUCKETFS, "status", "--json", m.path],
                                        capture_output=True, text=True, timeout=60)
                if status.returncode == 0:
                    meta = json.loads(status.stdout).get("metadata", {})
                    log(f"meta-rss {when}: RSS {rss_now(m.proc.pid) // 1024} MiB, "
                        f"{meta.get('inodes')} inodes, {meta.get('listed_entries')} listed, "
                        f"{meta.get('bytes', 0) // 1024} KiB of metadata")

        first = walk(1)
        held("after the first tree")
        drop_caches()
        # The kernel queues the FORGETs of the dropped inodes; give the daemon time to take them.
        time.sleep(2)
        held("after dropping caches")
        second = walk(2)
        held("after the second tree")
        log(f"meta-rss: peak RSS {first // 1024} MiB after the first tree, "
            f"{second // 1024} MiB after the second")
        return dict(value=(second / first - 1) * 100, rss_first_kib=first)

    # --- the loop
    def measure(self, system, name, kind, func, run):
        """One cold run: fresh mount, caches dropped, the workload, the daemon's figures."""
        server = self.read_server if kind == "read" else self.server
        workdir = os.path.join(self.work, "mnt-" + system)
        if system == "raw":
            drop_caches()
            before = server.requests()
            result = func(None, run)
            result["rss_kib"], result["cpu"] = RAW_USAGE
        else:
            with Mount(system, server, workdir, warm=name.endswith("-warm"),
                       metadata=name.startswith("remount-")) as m:
                drop_caches()
                before = server.requests()
                result = func(m, run)
                result["rss_kib"], result["cpu"] = m.stats()
        after = server.requests()
        result["requests"] = {k: after.get(k, 0) - before.get(k, 0) for k in after
                              if after.get(k, 0) != before.get(k, 0)}
        return result

    def run(self):
        os.makedirs(self.work, exist_ok=True)
        self.read_server = Weed(self.weed, os.path.join(self.work, "weed-read"))
        self.server = None
        try:
            table = [w for w in self.workloads()
                     if not self.args.only or w[0] in self.args.only.split(",")]
            self.seed({w[0] for w in table})
            systems = [s for s in SYSTEMS
                       if not self.args.systems or s in self.args.systems.split(",")]
            for system in systems:
                for name, unit, _, kind, func in table:
                    self.run_workload(system, name, kind, func)
        finally:
            if self.server:
                self.server.stop()
            self.read_server.stop()
            shutil.rmtree(self.small_src, ignore_errors=True)
            shutil.rmtree(self.redirect_src, ignore_errors=True)
        return table, systems

    def run_workload(self, system, name, kind, func):
        # Writes start on an empty server: SeaweedFS frees deleted data only at restart.
        # rm-r deletes what cp-in wrote, so it keeps cp-in's server.
        if kind == "write" and name != "rm-r":
            if self.server:
                self.server.stop()
            self.server = Weed(self.weed, os.path.join(self.work, "weed-write"))
        runs = []
        for run in range(self.scale["runs"]):
            try:
                if name == "rm-r" and not self.results.get("cp-in", {}).get(system):
                    raise RuntimeError("needs cp-in")
                result = self.measure(system, name, kind, func, run)
            except NotApplicable as e:
                log(f"{system} {name}: not applicable ({e})")
                runs.append(dict(na=str(e)))
                break
            except RuntimeError as e:
                log(f"{system} {name} run {run + 1}: FAILED: {e}")
                runs.append(dict(error=str(e)))
                break
            log(f"{system} {name} run {run + 1}: {result['value']:.3f} "
                f"(rss {result['rss_kib'] // 1024} MiB, cpu {result['cpu']:.2f} s, "
                f"requests {result['requests']})")
            runs.append(result)
        self.results.setdefault(name, {})[system] = runs


# ---------------------------------------------------------------------------------------------
# Report


def median_of(runs, field):
    values = [r[field] for r in runs if field in r]
    return statistics.median(values) if values and len(values) == len(runs) else None


def versions():
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"
    return {
        "bucketfs": f"{first_line([BUCKETFS, '--version'])} (commit {REVISION})"
                    + (f", options {' '.join(BUCKETFS_OPTIONS)}" if BUCKETFS_OPTIONS else ""),
        "SeaweedFS": first_line([os.environ.get("BUCKETFS_WEED", "weed"), "version"]),
        "s3fs": first_line(["s3fs", "--version"]),
        "rclone": first_line(["rclone", "version"]),
        "fio": first_line(["fio", "--version"]),
        "kernel": platform.release(),
    }


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    return f"{os.cpu_count()} CPUs ({model}), {mem} GiB RAM, Linux {platform.release()}"


def not_applicable(runs):
    return bool(runs) and all("na" in r for r in runs)


def fmt(value, unit, runs=None):
    if value is None:
        return "n/a" if runs and not_applicable(runs) else "failed"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.0f} {unit}"


def speed_ratio(a, b, higher):
    """How many times faster a is than b (>1: a is faster)."""
    if a is None or b is None or a == 0 or b == 0:
        return None
    return a / b if higher else b / a


def report(bench, table, systems, command, started):
    s = bench.scale
    res = bench.results
    peers = [p for p in systems if p not in ("raw", "bucketfs")]
    lines = [
        f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC, in {bench.elapsed / 60:.0f} "
        f"minutes{' (quick mode: smaller sizes, one run; figures not comparable)' if bench.args.quick else ''}.",
        "",
        f"- Machine: {machine()}; server, daemons and workloads share it.",
    ]
    lines += [f"- {k}: {v}" for k, v in versions().items()]
    lines += [
        f"- Sizes: sequential read of one {human(s['big'])} object (1 stream) and of four "
        f"{human(s['big4'])} objects (4 streams), fio bs=256k; random reads over the "
        f"{human(s['big'])} object for {s['rand_seconds']} s (fio, psync, one job, "
        f"O_DIRECT); rand-read-4k-cold-default: the same 4 KiB reads over a "
        f"{human(min(GiB, s['big']))} object for {min(10, s['rand_seconds'])} s; every system "
        f"at its default options (bucketfs: its default disk cache, emptied first); "
        f"sequential write of {human(s['write'])} and 4 concurrent writes of "
        f"{human(s['write4'])} with fsync at the end, counted until the objects are in the "
        f"bucket; `ls -l` of {', '.join(str(n) for n in s['ls'])} entries; "
        f"ls-{max(s['ls']) // 1000}k-xattr: `ls -l` of the largest at default options over "
        f"the same on a fresh mount with xattrs off (`--no-xattr`; s3fs without `use_xattr` "
        f"and rclone serve none: the same mount twice); `cp -r` of "
        f"{s['small']} files of 4-64 KiB in 10 directories; redirects: {s['redirects']} "
        f"`printf %s \"$x\" > f$i` of 4 KiB in a new directory, timed until every object is "
        f"stored (raw: the same PUTs one at a time); creates-default-ttl: the same files at "
        f"the default metadata TTL with a 1 s pause every 50, so the loop outlives the TTL "
        f"(read its requests besides the PUTs); meta-rss: growth of the daemon's peak RSS "
        f"from `find` + `ls -lR` of a second tree of {s['tree_dirs']} x {s['tree_files']} "
        f"objects after the same over a first tree and dropping caches; "
        f"remount-find-{bench.find_label()}: find-{bench.find_label()} again after a remount "
        f"over what the system keeps (bucketfs `--metadata-cache`), caches dropped; median of {s['runs']} "
        f"cold run(s), each on a fresh mount after `echo 3 > /proc/sys/vm/drop_caches`.",
        f"- Warm workloads (`-warm`): each system with its disk cache (bucketfs `--disk-cache`, "
        f"s3fs `use_cache`, rclone `--vfs-cache-mode`), the {human(s['big'])} object first read "
        f"whole with `cat`; rand-read-4k-warm then runs the rand-read-4k job on the same mount; "
        f"seq-read-warm remounts over the cache, drops the machine's caches and runs the "
        f"seq-read-1 job. Their \"raw\" figure is the same fio job on a local file of that size "
        f"on the disk the caches use, caches dropped (the physical limit), not S3. Their "
        f"requests include the warming read.",
        "",
        "### Absolute figures (median)",
        "",
        "| Workload | " + " | ".join(LABELS[x] for x in systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for name, unit, higher, _, _ in table:
        row = [fmt(median_of(res[name][x], "value"), unit, res[name][x]) for x in systems]
        arrow = "higher is better" if higher else "lower is better"
        lines.append(f"| {name} ({arrow}) | " + " | ".join(row) + " |")
    if "bucketfs" in systems:
        lines += ["", "### bucketfs compared (times as fast; above 1.00 is faster)", "",
                  "| Workload | vs raw S3 | " + " | ".join(f"vs {LABELS[p]}" for p in peers) + " |",
                  "|---|" + "---:|" * (1 + len(peers))]
        for name, unit, higher, _, _ in table:
            ours = median_of(res[name]["bucketfs"], "value")
            if unit in ("%", "x"):  # a growth or a ratio, not a speed: see the absolute figures
                ours = None
            cells = []
            for other in ["raw"] + peers:
                ratio = speed_ratio(ours, median_of(res[name].get(other, []), "value"), higher)
                cells.append("n/a" if ratio is None else f"{ratio:.2f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Peak RSS of the daemon (MiB) and its CPU seconds per GiB moved", "",
              "| Workload | " + " | ".join(LABELS[x] for x in systems) + " |",
              "|---|" + "---:|" * len(systems)]
    for name, unit, higher, _, _ in table:
        cells = []
        for x in systems:
            runs = res[name][x]
            rss = median_of(runs, "rss_kib")
            cpu = median_of(runs, "cpu")
            moved = median_of(runs, "bytes")
            if rss is None:
                cells.append("n/a" if not_applicable(runs) else "failed")
                continue
            cell = f"{rss / 1024:.0f} MiB"
            if moved and cpu is not None:
                cell += f", {cpu / (moved / GiB):.2f} s/GiB"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Raw S3's RSS is that of the `bench-raw` process; its CPU time is the "
              "client's, where the others' is the daemon's alone.", "",
              "### S3 requests per workload (median run; GET includes HEAD)", "",
              "| Workload | " + " | ".join(LABELS[x] for x in systems) + " |",
              "|---|" + "---|" * len(systems)]
    for name, unit, higher, _, _ in table:
        cells = []
        for x in systems:
            runs = [r for r in res[name][x] if "requests" in r]
            if not runs:
                cells.append("n/a" if not_applicable(res[name][x]) else "failed")
                continue
            mid = sorted(runs, key=lambda r: r["value"])[len(runs) // 2]
            req = mid["requests"]
            cells.append(", ".join(f"{k} {req[k]:,}" for k in sorted(req)) or "0")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    failures = [f"- {x} {name}: {r['error']}" for name in res for x in res[name]
                for r in res[name][x] if "error" in r]
    if failures:
        lines += ["", "### Failed runs", ""] + failures
    lines += ["", "![bucketfs and its peers relative to raw S3](benchmarks.png)"
              if not bench.args.quick else f"![chart]({os.path.basename(bench.chart)})"]
    return "\n".join(lines) + "\n"


def chart(bench, table, systems, path):
    """Grouped bars: each system's speed relative to the raw baseline, per workload."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return
    shown = [x for x in systems if x != "raw"]
    table = [w for w in table if w[1] != "%"]  # growth figures have no speed to compare
    names = [w[0] for w in table]
    fig, ax = plt.subplots(figsize=(13, 5.5))
    width = 0.8 / max(len(shown), 1)
    for i, x in enumerate(shown):
        heights = []
        for name, unit, higher, _, _ in table:
            r = speed_ratio(median_of(bench.results[name][x], "value"),
                            median_of(bench.results[name].get("raw", []), "value"), higher)
            heights.append(r or 0)
        ax.bar([j + i * width for j in range(len(names))], heights, width, label=LABELS[x])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks([j + width * (len(shown) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("speed relative to raw S3 (1 = raw; log scale)")
    ax.set_title("Each workload's speed relative to the raw S3 client (higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    log(f"chart: {path}")


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_markdown(path, body, standalone):
    if standalone or not os.path.exists(path):
        text = f"# Benchmarks\n\n{BEGIN}\n{body}{END}\n"
    else:
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            text = f"{head}{BEGIN}\n{body}{END}{rest.split(END, 1)[1]}"
        else:
            text = f"{text.rstrip()}\n\n{BEGIN}\n{body}{END}\n"
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (CI smoke)")
    parser.add_argument("--only", help="comma-separated workloads")
    parser.add_argument("--systems", help="comma-separated systems: " + ",".join(SYSTEMS))
    parser.add_argument("--out", help="Markdown file (default docs/benchmarks.md, or "
                        "target/bench/benchmarks-quick.md with --quick)")
    parser.add_argument("--bucketfs-options", default="",
                        help="extra bucketfs options (experiments; the report names them)")
    parser.add_argument("--runs", type=int, help="runs per workload (default 3, quick 1)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "target", "bench", "work"))
    parser.add_argument("--weed", default=os.environ.get("BUCKETFS_WEED", "weed"))
    parser.add_argument("--command", default="bash tests/bench/run.sh")
    parser.add_argument("--bucketfs-bin", help="another bucketfs binary (an older build, to "
                        "compare in the same conditions); the report names it")
    args = parser.parse_args()
    global REVISION, BUCKETFS
    REVISION = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip() or "unknown"
    if args.bucketfs_bin:
        BUCKETFS = os.path.abspath(args.bucketfs_bin)
        REVISION = f"binary {BUCKETFS}"
    BUCKETFS_OPTIONS.extend(args.bucketfs_options.split())
    if os.geteuid() != 0:
        sys.exit("bench: run as root (drop_caches and FUSE mounts for every peer)")
    out = args.out or (os.path.join(ROOT, "target", "bench", "benchmarks-quick.md") if args.quick
                       else os.path.join(ROOT, "docs", "benchmarks.md"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    bench = Bench(args)
    bench.chart = os.path.splitext(out)[0] + ".png"
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    table, systems = bench.run()
    bench.elapsed = time.monotonic() - t0
    with open(os.path.join(os.path.dirname(out), "results.json"), "w") as f:
        json.dump(bench.results, f, indent=1)
    write_markdown(out, report(bench, table, systems, args.command, started),
                   standalone=args.quick)
    chart(bench, table, systems, bench.chart)
    failed = [name for name in bench.results for x in bench.results[name]
              if any("error" in r for r in bench.results[name][x]) and x in ("raw", "bucketfs")]
    if failed:
        sys.exit(f"bench: raw or bucketfs failed on {', '.join(sorted(set(failed)))}")


if __name__ == "__main__":
    main()
