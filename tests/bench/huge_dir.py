#!/usr/bin/env python3
"""The memory of one huge directory: a bucket whose directory d/ holds N keys (2,000,000 by
default), served by a synthetic S3 endpoint on 127.0.0.1 that answers HeadBucket, HeadObject
(404) and ListObjectsV2 pages computed on the fly (no server could be seeded with millions of
keys in minutes). bucketfs (release build) mounts it; `ls -f d | wc -l` reads the directory
once; the daemon's peak RSS (VmHWM) and the entries counted are printed as a Markdown row.

usage: sudo python3 tests/bench/huge_dir.py [--keys N] [--bin target/release/bucketfs]
       [-- extra bucketfs options]
"""
import argparse
import http.server
import os
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

PAGE = 1000


def key(i):
    return "d/f%08d" % i


class Bucket(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    keys = 0
    lists = 0

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        path = urllib.parse.urlparse(self.path).path
        if path.strip("/") == "b":
            self.reply(200, headers=[("x-amz-bucket-region", "us-east-1")])
        else:
            self.reply(404)

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        if url.path.strip("/") != "b" or q.get("list-type") != ["2"]:
            self.reply(404)
            return
        Bucket.lists += 1
        prefix = q.get("prefix", [""])[0]
        start = 0
        token = q.get("continuation-token", [None])[0]
        if token:
            start = int(token)
        else:
            after = q.get("start-after", [None])[0]
            if after and after.startswith("d/f"):
                start = int(after[3:]) + 1
        limit = min(int(q.get("max-keys", ["1000"])[0]), PAGE)
        contents, prefixes, nxt = [], [], None
        if prefix == "":
            prefixes = ["d/"]
        elif prefix == "d/":
            end = min(start + limit, Bucket.keys)
            contents = [key(i) for i in range(start, end)]
            if end < Bucket.keys:
                nxt = str(end)
        elif prefix.startswith("d/f"):
            # A lookup's LIST of `name/`: nothing below a file.
            pass
        parts = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 "<Name>b</Name><Prefix>%s</Prefix><KeyCount>%d</KeyCount>"
                 % (prefix, len(contents) + len(prefixes)),
                 "<MaxKeys>%d</MaxKeys><Delimiter>/</Delimiter>" % limit,
                 "<IsTruncated>%s</IsTruncated>" % ("true" if nxt else "false")]
        if nxt:
            parts.append("<NextContinuationToken>%s</NextContinuationToken>" % nxt)
        for k in contents:
            parts.append("<Contents><Key>%s</Key><LastModified>2026-01-01T00:00:00.000Z"
                         "</LastModified><ETag>&quot;e&quot;</ETag><Size>1</Size>"
                         "<StorageClass>STANDARD</StorageClass></Contents>" % k)
        for p in prefixes:
            parts.append("<CommonPrefixes><Prefix>%s</Prefix></CommonPrefixes>" % p)
        parts.append("</ListBucketResult>")
        self.reply(200, "".join(parts).encode(), [("Content-Type", "application/xml")])


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def vm_hwm(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=2_000_000)
    ap.add_argument("--bin", default="target/release/bucketfs")
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    Bucket.keys = args.keys
    server = Server(("127.0.0.1", 0), Bucket)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = "http://127.0.0.1:%d" % server.server_address[1]
    work = tempfile.mkdtemp(prefix="bucketfs-huge-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    env = dict(os.environ, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s",
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    subprocess.run([args.bin, "b", mnt, "--endpoint-url", endpoint, "--force-path-style",
                    "--staging-dir", os.path.join(work, "staging")] + args.extra,
                   env=env, check=True)
    try:
        pid = int(subprocess.check_output(["pgrep", "-n", "-f", " b " + mnt]).split()[0])
        start = time.time()
        count = subprocess.check_output("ls -f %s/d | wc -l" % mnt, shell=True).decode().strip()
        took = time.time() - start
        print("| keys | entries seen | ls -f time | daemon peak RSS | LISTs |")
        print("|---|---|---|---|---|")
        print("| %d | %d | %.1f s | %d MiB | %d |"
              % (args.keys, int(count) - 2, took, vm_hwm(pid), Bucket.lists))
    finally:
        subprocess.run(["fusermount3", "-u", mnt])
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
