"""Notification figures on moto's server (S3 notifications, SQS): how long a change made with a
plain S3 client takes to show on a mount, and what repeated `ls -l` of a large directory costs
in S3 requests with and without notifications. Run by tests/bench/notify.sh (as root); writes
its section of docs/benchmarks.md between the notify markers.

Workloads:
- visible: 200 changes (100 new objects, 100 overwrites of them with another length) put with
  boto3; after each, `os.stat` on the mount every 5 ms until the name (or its new size) shows.
  Figures: p50, p99 and max of the time from the PUT's return to the stat that shows it.
- ls-10k: `ls -l` of a 10,000-entry directory 10 times over a minute (every 6 s), with
  `--notify-queue` (TTL 1 h by default) and without (TTL 5 s, the default); S3 requests
  counted by a proxy in front of moto that sees only the mount's S3 traffic.
"""

import argparse
import datetime
import os
import re
import socket
import subprocess
import sys
import threading
import time

import boto3

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BEGIN = "<!-- notify:begin -->"
END = "<!-- notify:end -->"
REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /\S* HTTP/1\.1\r\n")


def log(*parts):
    print("notify-bench:", *parts, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CountingProxy:
    """Forwards TCP from a loopback port to moto and counts HTTP request lines sent to it."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.count = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self.pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self.pipe, args=(server, client, False), daemon=True).start()

    def pipe(self, src, dst, counting):
        tail = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if counting:
                    seen = tail + data
                    with self.lock:
                        self.count += len(REQUEST_LINE.findall(seen)) - len(REQUEST_LINE.findall(tail))
                    tail = seen[-256:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self):
        with self.lock:
            n, self.count = self.count, 0
        return n


class Moto:
    def __init__(self, binary, workdir):
        self.port = free_port()
        self.log = open(os.path.join(workdir, "moto.log"), "w")
        self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        kw = dict(endpoint_url=self.endpoint, region_name="us-east-1",
                  aws_access_key_id="bench", aws_secret_access_key="bench")
        self.s3 = boto3.client("s3", **kw)
        self.sqs = boto3.client("sqs", **kw)
        for _ in range(300):
            try:
                self.s3.list_buckets()
                return
            except Exception:
                time.sleep(0.2)
        sys.exit("notify-bench: moto did not start")

    def queue(self, name, bucket):
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [
                {"Id": name, "QueueArn": arn,
                 "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]})
        return url

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Mount:
    def __init__(self, binary, bucket, path, endpoint, moto, extra):
        os.makedirs(path, exist_ok=True)
        self.path = path
        env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1", AWS_ENDPOINT_URL_SQS=moto.endpoint,
                   AWS_EC2_METADATA_DISABLED="true")
        env.pop("AWS_PROFILE", None)
        cmd = [binary, bucket, path, "--endpoint-url", endpoint, "--force-path-style",
               "--log-file", path + ".log"] + extra
        subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL)

    def stop(self):
        subprocess.run(["fusermount3", "-u", self.path], check=False)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def visible(moto, binary, workdir):
    bucket = "visible"
    moto.s3.create_bucket(Bucket=bucket)
    url = moto.queue("visible", bucket)
    m = Mount(binary, bucket, os.path.join(workdir, "mnt-visible"), moto.endpoint, moto,
              ["--notify-queue", url])
    try:
        os.listdir(m.path)
        delays = []
        for i in range(200):
            n = i // 2
            key = f"k{n:03d}"
            body = b"x" * (n + 1) if i % 2 == 0 else b"y" * (n + 1000)
            moto.s3.put_object(Bucket=bucket, Key=key, Body=body)
            t0 = time.monotonic()
            path = os.path.join(m.path, key)
            while True:
                try:
                    if os.stat(path).st_size == len(body):
                        break
                except FileNotFoundError:
                    pass
                if time.monotonic() - t0 > 60:
                    sys.exit(f"notify-bench: change {i} not visible after 60 s")
                time.sleep(0.005)
            delays.append(time.monotonic() - t0)
        return {"p50": percentile(delays, 50), "p99": percentile(delays, 99),
                "max": max(delays), "n": len(delays)}
    finally:
        m.stop()


def listing_cost(moto, binary, workdir, notify):
    bucket = "ls10k-notify" if notify else "ls10k-ttl"
    moto.s3.create_bucket(Bucket=bucket)
    for i in range(10_000):
        moto.s3.put_object(Bucket=bucket, Key=f"big/f{i:05d}", Body=b"x")
    extra = []
    if notify:
        extra = ["--notify-queue", moto.queue(bucket, bucket)]
    proxy = CountingProxy(moto.port)
    m = Mount(binary, bucket, os.path.join(workdir, f"mnt-{bucket}"),
              f"http://127.0.0.1:{proxy.port}", moto, extra)
    try:
        proxy.take()
        per_listing = []
        for i in range(10):
            start = time.monotonic()
            out = subprocess.run(["ls", "-l", os.path.join(m.path, "big")],
                                 capture_output=True, check=True).stdout
            assert out.count(b"\n") == 10_001, out[:200]
            per_listing.append(proxy.take())
            time.sleep(max(0.0, 6 - (time.monotonic() - start)))
        return {"requests": per_listing, "total": sum(per_listing)}
    finally:
        m.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--moto", required=True)
    parser.add_argument("--bucketfs", required=True)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--command", default="bash tests/bench/notify.sh")
    args = parser.parse_args()
    workdir = os.path.join(ROOT, "target", "bench", "notify")
    os.makedirs(workdir, exist_ok=True)
    revision = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                              capture_output=True, text=True).stdout.strip()
    moto = Moto(args.moto, workdir)
    try:
        log("visible: 200 changes")
        vis = visible(moto, args.bucketfs, workdir)
        log("ls-10k with notifications")
        with_notify = listing_cost(moto, args.bucketfs, workdir, True)
        log("ls-10k without")
        without = listing_cost(moto, args.bucketfs, workdir, False)
    finally:
        moto.stop()
    ms = lambda s: f"{s * 1000:.0f} ms"
    body = f"""## Notifications (issue 11), on moto

Command: `{args.command.strip()}` (bucketfs {revision}, release build; moto's S3 and SQS on
127.0.0.1; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC).

| Figure | Value |
|---|---|
| PUT to visible on a mount with `--notify-queue`, p50 ({vis['n']} changes: new objects and overwrites) | {ms(vis['p50'])} |
| the same, p99 | {ms(vis['p99'])} |
| the same, max | {ms(vis['max'])} |
| S3 requests, `ls -l` of 10,000 entries 10 times over a minute, with notifications (per listing) | {with_notify['total']} ({', '.join(map(str, with_notify['requests']))}) |
| the same without (default 5 s TTL) | {without['total']} ({', '.join(map(str, without['requests']))}) |

The latency is the time from the PUT's return to the first `stat` (polled every 5 ms) showing
the new name or size: moto queues the event as the PUT returns, the mount's long poll returns
it, the mount forgets the name and tells the kernel, and the next `stat` looks it up (a HEAD).
On AWS, S3's own delivery (typically under a second) comes on top.
"""
    text = open(args.out).read() if os.path.exists(args.out) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{body}{END}{rest.split(END, 1)[1]}"
    else:
        text = f"{text.rstrip()}\n\n{BEGIN}\n{body}{END}\n"
    with open(args.out, "w") as f:
        f.write(text)
    log(f"wrote {args.out}")
    print(body)


if __name__ == "__main__":
    main()
