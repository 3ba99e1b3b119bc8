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
