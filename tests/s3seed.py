#!/usr/bin/env python3
"""Creates a bucket and puts small objects on an S3 endpoint, with only the standard library
(SigV4, path-style). Used by tests/demo.sh to seed the sample bucket.

usage: s3seed.py ENDPOINT BUCKET KEY=TEXT [KEY=TEXT ...]   (credentials from AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY; region us-east-1)
       s3seed.py ENDPOINT BUCKET --count-uploads   (prints the multipart uploads in progress)
       s3seed.py ENDPOINT BUCKET --exists KEY   (prints "exists" or "none")
"""
import datetime
import hashlib
import hmac
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def request(endpoint, method, path, body=b"", query=""):
    """Sends one signed request; returns the status and the body. `query` is already
    canonical (`name=value` pairs, sorted)."""
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    region, now = "us-east-1", datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    host = urllib.parse.urlparse(endpoint).netloc
    path = urllib.parse.quote(path, safe="/~")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, path, query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    k = sign(sign(sign(sign(("AWS4" + secret).encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]
    url = endpoint + path + (f"?{query}" if query else "")
    req = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def main():
    endpoint, bucket, items = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3:]
    if len(items) == 2 and items[0] == "--exists":
        # Whether one object exists (HEAD).
        try:
            status, _ = request(endpoint, "HEAD", f"/{bucket}/{items[1]}")
            print("exists" if status == 200 else "none")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            print("none")
        return
    if items == ["--count-uploads"]:
        _, body = request(endpoint, "GET", f"/{bucket}", query="uploads=")
        print(body.count(b"<Upload>"))
        return
    try:
        request(endpoint, "PUT", f"/{bucket}")
    except urllib.error.HTTPError as e:
        if e.code != 409:  # BucketAlreadyOwnedByYou
            raise
    for item in items:
        key, _, text = item.partition("=")
        request(endpoint, "PUT", f"/{bucket}/{key}", text.encode())


if __name__ == "__main__":
    main()
