//! `bucketfs status` against real mounts: upload progress through a throttled proxy,
//! `--wait` after success and after a failed commit, and the socket's permissions.

mod common;

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MIB: usize = 1 << 20;

fn status(args: &[&str]) -> Output {
    Command::new(bucketfs_bin())
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run bucketfs status")
}

fn status_json(m: &Mount) -> Value {
    let out = status(&["--json", m.path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
}

fn list(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

#[test]
fn status_shows_an_upload_in_flight_and_wait_returns_once_it_is_committed() {
    let b = Bucket::new("status-progress");
    let p = proxy();
    let m = Mount::new(&b.name, "status-progress", &["--endpoint-url", &p.endpoint]);
    // 200 MiB at 20 MB/s: about ten seconds of uploading to watch.
    p.throttle(20_000_000);
    let path = m.path.join("big.bin");
    let data = pseudo_random(MIB, 3);
    let writer = std::thread::spawn(move || {
        let mut f = fs::File::create(&path).unwrap();
        for _ in 0..200 {
            f.write_all(&data).unwrap();
        }
        drop(f); // close: commits, waiting for the last parts
    });
    let mut sent_seen: Vec<u64> = Vec::new();
    let mut total_seen = None;
    while !writer.is_finished() {
        let v = status_json(&m);
        assert_eq!(v["mountpoint"], m.path.to_str().unwrap());
        assert_eq!(v["source"], b.name.as_str());
        if let Some(u) = list(&v, "uploads").iter().find(|u| u["path"] == "big.bin") {
            let sent = u["bytes_sent"].as_u64().unwrap();
            let written = u["bytes_written"].as_u64().unwrap();
            assert!(sent <= written, "{u}");
            assert!(written <= 200 * MIB as u64, "{u}");
            assert!(u["parts_done"].as_u64().is_some(), "{u}");
            if sent_seen.last() != Some(&sent) {
                sent_seen.push(sent);
            }
            if let Some(t) = u["bytes_total"].as_u64() {
                total_seen = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    writer.join().unwrap();
    assert!(
        sent_seen.len() >= 3 && sent_seen.windows(2).all(|w| w[0] < w[1]),
        "bytes sent should be seen growing: {sent_seen:?}"
    );
    assert_eq!(total_seen, Some(200 * MIB as u64), "the total once closing");
    let v = status_json(&m);
    assert!(list(&v, "uploads").is_empty(), "{v}");
    assert!(list(&v, "pending").is_empty(), "{v}");
    assert_eq!(b.size("big.bin"), Some(200 * MIB as u64));

    // A file open with changes not yet committed is pending; --wait returns once it closes.
    p.throttle(0);
    let mut open = fs::File::create(m.path.join("open.txt")).unwrap();
    open.write_all(b"not yet").unwrap();
    let v = status_json(&m);
    let pending = list(&v, "pending");
    assert_eq!(pending.len(), 1, "{v}");
    assert_eq!(pending[0]["path"], "open.txt");
    let mount = m.path.to_str().unwrap().to_string();
    let waiter = std::thread::spawn(move || status(&["--wait", &mount]));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !waiter.is_finished(),
        "--wait returned while a file was pending"
    );
    drop(open);
    let out = within(Duration::from_secs(30), "status --wait", move || {
        waiter.join().unwrap()
    });
    assert!(
        out.status.success(),
        "--wait after a good commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.get("open.txt"), b"not yet");

    // Plain output (not a terminal): the mount and "nothing pending".
    let out = status(&[m.path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&b.name) && text.contains("nothing pending"),
        "{text}"
    );
    // Without a mount point: every bucketfs mount, this one among them.
    let out = status(&["--json"]);
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        list(&all, "mounts")
            .iter()
            .any(|v| v["mountpoint"] == m.path.to_str().unwrap()),
        "{all}"
    );
}

#[test]
fn bytes_of_a_part_count_as_they_go_out() {
    let b = Bucket::new("status-part");
    let p = proxy();
    let m = Mount::new(&b.name, "status-part", &["--endpoint-url", &p.endpoint]);
    // 1 MB/s: the first 8 MiB part takes about eight seconds to go out.
    p.throttle(1_000_000);
    let mut f = fs::File::create(m.path.join("slow.bin")).unwrap();
    f.write_all(&pseudo_random(9 * MIB, 5)).unwrap();
    let part = 8 * MIB as u64;
    let mut within_part: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let v = status_json(&m);
        let Some(u) = list(&v, "uploads")
            .into_iter()
            .find(|u| u["path"] == "slow.bin")
        else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if u["parts_done"].as_u64() != Some(0) {
            break;
        }
        let sent = u["bytes_sent"].as_u64().unwrap();
        if sent > 0 && sent < part && within_part.last() != Some(&sent) {
            within_part.push(sent);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        within_part.len() >= 3 && within_part.windows(2).all(|w| w[0] < w[1]),
        "bytes sent should grow within the first part: {within_part:?}"
    );
    p.throttle(0);
    drop(f);
    assert_eq!(b.size("slow.bin"), Some(9 * MIB as u64));
}

#[test]
fn status_wait_fails_naming_a_file_whose_commit_failed() {
    let b = Bucket::new("status-fail");
    let p = proxy();
    let m = Mount::new(&b.name, "status-fail", &["--endpoint-url", &p.endpoint]);
    let mut f = fs::File::create(m.path.join("doomed.bin")).unwrap();
    f.write_all(&pseudo_random(MIB, 9)).unwrap();
    let waiter = Command::new(bucketfs_bin())
        .args(["status", "--wait"])
        .arg(&m.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    p.kill();
    let closed = within(
        Duration::from_secs(300),
        "close against a dead server",
        move || {
            let fd = f.into_raw_fd();
            // SAFETY: `fd` was just taken out of the `File`, which no longer closes it.
            unsafe { libc::close(fd) }
        },
    );
    assert_ne!(closed, 0, "close() must fail with the server gone");
    let out = within(Duration::from_secs(60), "status --wait", move || {
        waiter.wait_with_output().unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("commit failed: doomed.bin"), "{err}");
    p.revive();
}

#[test]
fn another_user_cannot_read_the_status_socket() {
    let b = Bucket::new("status-perm");
    let m = Mount::new(&b.name, "status-perm", &[]);
    fs::write(m.path.join("secret-name.txt"), b"x").unwrap();
    let mut f = fs::File::create(m.path.join("pending-name.txt")).unwrap();
    f.write_all(b"y").unwrap();
    // The socket is the daemon's (root's here) and private.
    let sockets: Vec<_> = fs::read_dir("/run/bucketfs")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .collect();
    assert!(!sockets.is_empty());
    for s in &sockets {
        assert_eq!(s.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
    let started = Instant::now();
    let out = Command::new(bucketfs_bin())
        .args(["status", "--json"])
        .arg(&m.path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        !stdout.contains("pending-name") && !stderr.contains("pending-name"),
        "{stdout}{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(f);
}

/// A loopback address with a port free for `--metrics-addr`.
fn free_metrics_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

/// The body of `GET http://addr/metrics`.
fn scrape(addr: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to --metrics-addr");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// The samples of metric `name` in Prometheus text: (labels, value).
fn samples(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match key.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            (metric == name).then(|| (labels.to_string(), value.parse().unwrap()))
        })
        .collect()
}

/// The label `key`'s value in `labels` (`a="x",b="y"`).
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or("")
}

/// The HTTP request an S3 operation is, as the proxy counts them.
fn proxy_class(operation: &str) -> &'static str {
    match operation {
        "HeadObject" | "HeadBucket" => "head",
        "ListObjectsV2" => "list",
        "GetObject" => "get",
        "PutObject" | "UploadPart" | "CopyObject" | "UploadPartCopy" => "put",
        "CreateMultipartUpload" | "CompleteMultipartUpload" | "DeleteObjects" => "post",
        "DeleteObject" | "AbortMultipartUpload" => "delete",
        other => panic!("an operation the test does not know: {other}"),
    }
}

#[test]
fn metrics_count_the_requests_the_server_saw() {
    use std::sync::atomic::Ordering::SeqCst;
    let b = Bucket::new("status-metrics");
    b.put("old.txt", b"there before");
    let p = proxy();
    let addr = free_metrics_addr();
    let m = Mount::new(
        &b.name,
        "status-metrics",
        &[
            "--endpoint-url",
            &p.endpoint,
            "-o",
            &format!("metrics_addr={addr}"),
        ],
    );
    // A known workload: create (small and multipart), read, list, rename, delete, and a miss.
    fs::write(m.path.join("small.txt"), b"hello").unwrap();
    fs::write(m.path.join("big.bin"), pseudo_random(20 * MIB, 4)).unwrap();
    assert_eq!(fs::read(m.path.join("old.txt")).unwrap(), b"there before");
    let names = fs::read_dir(&m.path).unwrap().count();
    assert_eq!(names, 3);
    fs::rename(m.path.join("small.txt"), m.path.join("moved.txt")).unwrap();
    fs::remove_file(m.path.join("big.bin")).unwrap();
    assert!(fs::metadata(m.path.join("no-such-file")).is_err());
    // Background work (read-ahead) settles: the proxy's count stops moving.
    let mut last = u64::MAX;
    assert!(eventually(Duration::from_secs(30), || {
        let now = p.counts().total();
        std::mem::replace(&mut last, now) == now
    }));
    // The state gauges and cache counters are refreshed every second.
    std::thread::sleep(Duration::from_millis(1500));

    let text = scrape(&addr);
    let requests = samples(&text, "bucketfs_s3_requests_total");
    assert!(!requests.is_empty(), "{text}");
    let mut by_class = std::collections::BTreeMap::<&str, u64>::new();
    for (labels, value) in &requests {
        *by_class
            .entry(proxy_class(label(labels, "operation")))
            .or_default() += *value as u64;
    }
    let c = p.counts();
    let seen = [
        ("head", c.head.load(SeqCst)),
        ("list", c.list.load(SeqCst)),
        ("get", c.get.load(SeqCst)),
        ("put", c.put.load(SeqCst)),
        ("post", c.post.load(SeqCst)),
        ("delete", c.delete.load(SeqCst)),
    ];
    for (class, n) in seen {
        assert_eq!(
            by_class.get(class).copied().unwrap_or(0),
            n,
            "{class} requests: /metrics says {by_class:?}, the proxy saw {seen:?}"
        );
    }
    assert!(
        c.post.load(SeqCst) >= 2,
        "the 20 MiB file is a multipart upload"
    );
    // Every request has a latency; bytes went both ways.
    let latencies: f64 = samples(&text, "bucketfs_s3_request_duration_seconds_count")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(latencies as u64, c.total(), "{text}");
    let sent = samples(&text, "bucketfs_s3_bytes_sent_total");
    assert!(sent[0].1 >= (20 * MIB) as f64, "{sent:?}");
    // FUSE operations by kind, and the miss as ENOENT.
    let ops = samples(&text, "bucketfs_fuse_operations_total");
    for op in [
        "lookup",
        "create",
        "write",
        "read",
        "readdirplus",
        "rename",
        "unlink",
    ] {
        assert!(
            ops.iter().any(|(l, v)| label(l, "op") == op && *v >= 1.0),
            "no {op} in {ops:?}"
        );
    }
    let errors = samples(&text, "bucketfs_fuse_errors_total");
    assert!(
        errors
            .iter()
            .any(|(l, _)| label(l, "op") == "lookup" && label(l, "errno") == "ENOENT"),
        "{errors:?}"
    );
    for gauge in [
        "bucketfs_cache_misses_total",
        "bucketfs_metadata_inodes",
        "bucketfs_metadata_bytes",
    ] {
        let v = samples(&text, gauge);
        assert!(v.len() == 1 && v[0].1 >= 1.0, "{gauge}: {v:?}");
    }
    // `bucketfs status` counts the same requests.
    let v = status_json(&m);
    let total: u64 = list(&v["s3"], "requests")
        .iter()
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, c.total(), "{v}");
}

#[test]
fn a_metrics_address_in_use_fails_the_mount_with_a_clear_message() {
    let b = Bucket::new("status-metrics-busy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let path = mount_point("status-metrics-busy");
    let out = bucketfs_command(&b.name, &path, &["--metrics-addr", &addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {addr}")),
        "{err}"
    );
    assert!(!is_mounted(&path));
}

/// `ls -l` asks every entry for its SELinux label and its ACL. A file without them answers
/// EOPNOTSUPP (ENODATA for other names), which `ls` takes as "this filesystem has none" and
/// stops asking: a few questions for the whole listing, not two per entry. A label or ACL
/// that was set still reads back.
#[test]
fn ls_l_asks_for_labels_and_acls_once_not_per_entry() {
    let b = Bucket::new("status-ls-xattr");
    let keys: Vec<String> = (0..500).map(|i| format!("many/f{i:03}")).collect();
    b.put_many(&keys, b"x");
    let addr = free_metrics_addr();
    let m = Mount::new(
        &b.name,
        "status-ls-xattr",
        &["-o", &format!("metrics_addr={addr}")],
    );
    let getxattrs = || -> f64 {
        samples(&scrape(&addr), "bucketfs_fuse_operations_total")
            .iter()
            .filter(|(l, _)| label(l, "op") == "getxattr")
            .map(|(_, v)| v)
            .sum()
    };
    let before = getxattrs();
    let out = Command::new("ls")
        .arg("-l")
        .arg(m.path.join("many"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 501, "a total line and 500 entries");
    let asked = getxattrs() - before;
    assert!(
        (1.0..=6.0).contains(&asked),
        "ls -l of 500 entries sent {asked} getxattr requests (two per entry: 1,000)"
    );

    // What is set reads back; what is not: EOPNOTSUPP for these families, ENODATA for others.
    let f = m.path.join("many/f000");
    let script = r#"import errno, os, struct, sys
f = sys.argv[1]
for name, code in [("system.posix_acl_access", errno.EOPNOTSUPP),
                   ("security.selinux", errno.EOPNOTSUPP), ("user.none", errno.ENODATA)]:
    try:
        os.getxattr(f, name)
        raise SystemExit(name + " answered")
    except OSError as e:
        assert e.errno == code, (name, e)
# user::rw- user:1000:rw- group::r-- mask::rw- other::r--
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in
    [(1, 6, 0xFFFFFFFF), (2, 6, 1000), (4, 4, 0xFFFFFFFF), (0x10, 6, 0xFFFFFFFF), (0x20, 4, 0xFFFFFFFF)])
os.setxattr(f, "system.posix_acl_access", acl)
os.setxattr(f, "security.bucketfs-test", b"label")
assert os.getxattr(f, "system.posix_acl_access") == acl
assert os.getxattr(f, "security.bucketfs-test") == b"label"
assert sorted(os.listxattr(f)) == ["security.bucketfs-test", "system.posix_acl_access"], os.listxattr(f)
os.removexattr(f, "security.bucketfs-test")
try:
    os.getxattr(f, "security.bucketfs-test")
    raise SystemExit("removed label answered")
except OSError as e:
    assert e.errno == errno.EOPNOTSUPP, e
print("ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
